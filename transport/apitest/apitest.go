// Package apitest checks HTTP exchanges against Tally's OpenAPI document
// (transport/openapi.yaml), so that every test that talks to the service
// also proves the document right. A response whose status is not documented
// for its operation, whose headers or body do not match the schema, or a
// request to a path the document does not describe, fails the test.
//
// Typical use against a running server:
//
//	c := apitest.NewClient(t, srv.URL)
//	r := c.MustCall(http.MethodPost, "/api/v1/sessions", token, map[string]string{"title": "x", …})
//	if r.Status != http.StatusOK { … }
//
// Against a handler, without a listener:
//
//	v := apitest.NewValidator(t)
//	r := v.Serve(t, handler, httptest.NewRequest(…))
//
// All checks report with tb.Errorf, never tb.Fatalf, so they are safe to use
// from the many goroutines of a concurrency test.
package apitest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/transport"
)

// load parses and validates the document once per test binary: the router
// and document are read-only afterwards and shared by every Validator.
var load = sync.OnceValues(func() (routers.Router, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(transport.OpenAPI())
	if err != nil {
		return nil, fmt.Errorf("parsing openapi.yaml: %w", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("openapi.yaml is not a valid OpenAPI document: %w", err)
	}
	// The legacy router matches paths only, whatever host the test server
	// listens on.
	doc.Servers = nil
	return legacy.NewRouter(doc)
})

// Validator checks requests and responses against the document.
type Validator struct {
	router routers.Router
	opts   *openapi3filter.Options
}

// NewValidator returns a validator of the embedded document; it fails the
// test if the document itself is invalid.
func NewValidator(tb testing.TB) *Validator {
	tb.Helper()
	v, err := newValidator()
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

func newValidator() (*Validator, error) {
	router, err := load()
	if err != nil {
		return nil, err
	}
	return &Validator{
		router: router,
		opts: &openapi3filter.Options{
			// An answer with a status the operation does not list is a
			// contract violation, not something to let through.
			IncludeResponseStatus: true,
			MultiError:            true,
			AuthenticationFunc:    openapi3filter.NoopAuthenticationFunc,
			SchemaValidationOptions: []openapi3.SchemaValidationOption{
				openapi3.WithStringFormatValidator("date-time", utcTimestamp{}),
			},
		},
	}, nil
}

// utcTimestamp enforces the contract's "timestamps are RFC 3339 strings in UTC" (docs/contract.md)
// on every date-time the service sends: strictly RFC 3339 (the v2 JSON decoder's time.Time, not
// time.Parse, which takes an offset of +24:00 or a comma before the fraction), and within years
// 0001–9999 (domain.Writable).
type utcTimestamp struct{}

func (utcTimestamp) Validate(s string) error {
	var t time.Time
	q, err := jsontext.AppendQuote(nil, s)
	if err == nil {
		err = jsonv2.Unmarshal(q, &t)
	}
	if err != nil {
		return fmt.Errorf("not an RFC 3339 timestamp: %v", err)
	}
	if !strings.HasSuffix(s, "Z") {
		return fmt.Errorf("timestamp %q is not in UTC (Z)", s)
	}
	if !domain.Writable(t) {
		return fmt.Errorf("timestamp %q is outside years 0001 to 9999", s)
	}
	return nil
}

// route finds the document's operation for req.
func (v *Validator) route(req *http.Request) (*routers.Route, map[string]string, error) {
	route, params, err := v.router.FindRoute(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s is not an operation of openapi.yaml: %w", req.Method, req.URL.Path, err)
	}
	return route, params, nil
}

// Validate checks one response to req against the document and returns
// what does not match, or nil. Only req's method, URL and headers are read.
func (v *Validator) Validate(req *http.Request, status int, header http.Header, body []byte) error {
	route, params, err := v.route(req)
	if err != nil {
		return err
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request: req, PathParams: params, Route: route, Options: v.opts,
		},
		Status:  status,
		Header:  header,
		Options: v.opts,
	}
	in.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		return fmt.Errorf("%s %s → %d does not match openapi.yaml: %w\nbody: %s",
			req.Method, req.URL.Path, status, err, abbreviate(body))
	}
	return nil
}

// ValidateRequest checks a request (with its body) against the document.
// Responses are always checked; use this where a test means to send only
// requests the document allows, e.g. to prove the documented request
// schemas accept what real clients send.
func (v *Validator) ValidateRequest(req *http.Request, body []byte) error {
	route, params, err := v.route(req)
	if err != nil {
		return err
	}
	r := req.Clone(context.Background())
	r.Body = io.NopCloser(bytes.NewReader(body))
	in := &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route, Options: v.opts}
	if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
		return fmt.Errorf("request %s %s does not match openapi.yaml: %w", req.Method, req.URL.Path, err)
	}
	return nil
}

// Check is Validate reporting through tb.Errorf. It reports whether the
// response matched.
func (v *Validator) Check(tb testing.TB, req *http.Request, status int, header http.Header, body []byte) bool {
	tb.Helper()
	if err := v.Validate(req, status, header, body); err != nil {
		tb.Errorf("%v", err)
		return false
	}
	return true
}

// CheckResponse reads resp's body, checks the exchange, and puts the body
// back so the caller can still read it. It returns the body.
func (v *Validator) CheckResponse(tb testing.TB, resp *http.Response) []byte {
	tb.Helper()
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		tb.Errorf("reading the response to %s %s: %v", resp.Request.Method, resp.Request.URL.Path, err)
		return body
	}
	v.Check(tb, resp.Request, resp.StatusCode, resp.Header, body)
	return body
}

// Serve runs req through h in-process and checks the answer.
func (v *Validator) Serve(tb testing.TB, h http.Handler, req *http.Request) *Response {
	tb.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	res := rec.Result()
	body := rec.Body.Bytes()
	v.Check(tb, req, res.StatusCode, res.Header, body)
	return &Response{Status: res.StatusCode, Header: res.Header, Body: body}
}

// Transport wraps next (nil: http.DefaultTransport) so that every response
// that passes through it is checked; hand it to any http.Client.
func (v *Validator) Transport(tb testing.TB, next http.RoundTripper) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	return &checkingTransport{v: v, tb: tb, next: next}
}

type checkingTransport struct {
	v    *Validator
	tb   testing.TB
	next http.RoundTripper
}

func (t *checkingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	t.tb.Helper()
	t.v.CheckResponse(t.tb, resp)
	return resp, nil
}

// Response is a checked answer, read in full.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Decode unmarshals the body into out, reporting a failure with tb.Errorf.
func (r *Response) Decode(tb testing.TB, out any) bool {
	tb.Helper()
	if err := json.Unmarshal(r.Body, out); err != nil {
		tb.Errorf("decoding %d response %s: %v", r.Status, abbreviate(r.Body), err)
		return false
	}
	return true
}

// ErrorCode returns detail.error of an error body, or "" for any other body.
func (r *Response) ErrorCode() string {
	var e struct {
		Detail struct {
			Error string `json:"error"`
		} `json:"detail"`
	}
	_ = json.Unmarshal(r.Body, &e)
	return e.Detail.Error
}

// Client sends requests to a running service and checks every answer.
type Client struct {
	BaseURL   string // e.g. httptest.Server.URL, without a trailing slash
	HTTP      *http.Client
	Validator *Validator
	tb        testing.TB
}

// NewClient returns a client of the service at baseURL whose every
// response is checked against the document.
func NewClient(tb testing.TB, baseURL string) *Client {
	tb.Helper()
	return &Client{
		BaseURL:   strings.TrimRight(baseURL, "/"),
		HTTP:      &http.Client{Timeout: 30 * time.Second},
		Validator: NewValidator(tb),
		tb:        tb,
	}
}

// Do sends req and checks the answer. A transport error (connection
// refused, reset…) is returned, since fault tests expect some; a response
// that does not match the document fails the test.
func (c *Client) Do(req *http.Request) (*Response, error) {
	c.tb.Helper()
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading the response to %s %s: %w", req.Method, req.URL.Path, err)
	}
	c.Validator.Check(c.tb, req, resp.StatusCode, resp.Header, body)
	return &Response{Status: resp.StatusCode, Header: resp.Header, Body: body}, nil
}

// Call sends method path (relative to BaseURL, query included) with a
// bearer token (none when empty) and a JSON body: nil sends no body, a
// []byte or string is sent as it is, anything else is marshalled. headers
// are name, value pairs.
func (c *Client) Call(method, path, token string, body any, headers ...string) (*Response, error) {
	c.tb.Helper()
	req, err := NewRequest(method, c.BaseURL+path, token, body, headers...)
	if err != nil {
		return nil, err
	}
	return c.Do(req)
}

// MustCall is Call that stops the test on a transport error. Like
// tb.Fatal, call it only from the test's own goroutine.
func (c *Client) MustCall(method, path, token string, body any, headers ...string) *Response {
	c.tb.Helper()
	r, err := c.Call(method, path, token, body, headers...)
	if err != nil {
		c.tb.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

// NewRequest builds a request the way Call sends it: JSON body (nil: none;
// []byte or string: as is; else marshalled), optional bearer token, and
// name, value header pairs.
func NewRequest(method, url, token string, body any, headers ...string) (*http.Request, error) {
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		r = bytes.NewReader(b)
	case string:
		r = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			return nil, fmt.Errorf("encoding the request body: %w", err)
		}
		r = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if len(headers)%2 != 0 {
		return nil, fmt.Errorf("headers must be name, value pairs; got %d strings", len(headers))
	}
	for i := 0; i < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	return req, nil
}

func abbreviate(b []byte) string {
	const max = 2000
	if len(b) > max {
		return string(b[:max]) + "…"
	}
	return string(b)
}
