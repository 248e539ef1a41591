package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/app"
	"github.com/tally-dev/tally/config"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/transport"
	"github.com/tally-dev/tally/transport/apitest"
)

const (
	testSecret = "acceptance-test-jwt-secret-0123456789"
	testAdmin  = "acceptance-test-admin-token-0123456789"
)

// backend is one way of running Tally that the acceptance suite covers.
type backend struct {
	name string
	env  func(t *testing.T) map[string]string
}

// backends: the real services (Postgres + Redis on this machine) and the
// embedded defaults of `make run`.
var backends = []backend{
	{"postgres+redis", postgresEnv},
	{"embedded", embeddedEnv},
}

func baseEnv() map[string]string {
	return map[string]string{
		"TALLY_HTTP_ADDR":       "127.0.0.1:0",
		"TALLY_JWT_SECRET":      testSecret,
		"TALLY_ADMIN_TOKEN":     testAdmin,
		"TALLY_UPLOAD_BASE_URL": "https://uploads.example.test/u",
		"TALLY_LOG_LEVEL":       "warn",
		// The bursts here fire up to 1 000 creates at once at one process
		// and count exact outcomes; past the default in-flight bound some
		// would be shed (503), as designed. Shedding has tests of its own.
		"TALLY_MAX_IN_FLIGHT": "4096",
	}
}

// postgresEnv runs against a fresh database on the machine's Postgres and a
// private key prefix on its Redis.
func postgresEnv(t *testing.T) map[string]string {
	env := baseEnv()
	env["TALLY_DATABASE_URL"] = testenv.PostgresURL(t)
	addr, prefix := testenv.Redis(t)
	env["TALLY_REDIS_URL"] = testenv.RedisURL(addr)
	env["TALLY_REDIS_KEY_PREFIX"] = prefix
	return env
}

// embeddedEnv runs the embedded store and the in-process Redis.
func embeddedEnv(t *testing.T) map[string]string {
	env := baseEnv()
	env["TALLY_DATA_DIR"] = t.TempDir()
	return env
}

// server is one Tally instance serving its API and its ops listener on
// loopback ports.
type server struct {
	URL    string // the API listener
	OpsURL string // the ops listener: /metrics, the detailed /readyz
	App    *app.App
}

func startServer(t *testing.T, env map[string]string) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startServerOn(t, env, ln)
}

// startServerOn is startServer on a listener the caller opened (a cluster
// node must know its own address before it starts, to advertise it).
func startServerOn(t *testing.T, env map[string]string, ln net.Listener) *server {
	t.Helper()
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	log := slog.New(slog.NewJSONHandler(testWriter{t}, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("app.New: %v", err)
	}
	opsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, ln, opsLn) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
		a.Close()
	})
	return &server{URL: "http://" + ln.Addr().String(), OpsURL: "http://" + opsLn.Addr().String(), App: a}
}

// opsGet reads path from s's ops listener. openapi.yaml describes the API
// listener only, so the answer is not checked against it.
func opsGet(t *testing.T, s *server, path string) response {
	t.Helper()
	resp, err := http.Get(s.OpsURL + path)
	if err != nil {
		t.Fatalf("GET %s%s: %v", s.OpsURL, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s%s: %v", s.OpsURL, path, err)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: body}
}

// testWriter sends the service's logs to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// client calls a Tally over HTTP and checks every response against the
// OpenAPI document. A 500 fails the test: it is never a right answer.
type client struct {
	t     *testing.T
	http  *http.Client
	check *apitest.Validator
}

func newClient(t *testing.T) *client {
	tr := &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 512}
	t.Cleanup(tr.CloseIdleConnections)
	return &client{t: t, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}, check: apitest.NewValidator(t)}
}

type response struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("decode %s: %v", r.Body, err)
	}
}

// do sends one request. It is safe for concurrent use; failures are
// reported with t.Errorf so goroutines can call it.
func (c *client) do(method, url, token string, body any, header ...string) response {
	var rd io.Reader
	var raw []byte
	if body != nil {
		switch b := body.(type) {
		case string:
			raw = []byte(b)
		default:
			var err error
			if raw, err = json.Marshal(b); err != nil {
				c.t.Errorf("marshal: %v", err)
				return response{}
			}
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		c.t.Errorf("request: %v", err)
		return response{}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Errorf("%s %s: %v", method, url, err)
		return response{}
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Errorf("%s %s: read body: %v", method, url, err)
	}
	if resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusGatewayTimeout {
		c.t.Errorf("%s %s: %d %s (a 500 is a bug)", method, url, resp.StatusCode, out)
	}
	if body != nil {
		req.Body = io.NopCloser(bytes.NewReader(raw))
	}
	c.check.Check(c.t, req, resp.StatusCode, resp.Header, out)
	return response{Status: resp.StatusCode, Header: resp.Header, Body: out}
}

func (c *client) token(user string) string {
	tok, err := transport.IssueToken([]byte(testSecret), user, time.Hour, time.Now())
	if err != nil {
		c.t.Fatal(err)
	}
	return tok
}

var newSessionBody = map[string]string{"title": "Weekly sync", "language": "en-US", "stt_provider": "google"}

// create asks s to create a session for user.
func (c *client) create(s *server, user string, header ...string) response {
	return c.do(http.MethodPost, s.URL+"/api/v1/sessions", c.token(user), newSessionBody, header...)
}

func (c *client) admin(method string, s *server, path string, body any) response {
	return c.do(method, s.URL+path, testAdmin, body)
}

// errorBody is the contract's error shape.
type errorBody struct {
	Detail struct {
		Error        string `json:"error"`
		Message      string `json:"message"`
		Plan         string `json:"plan"`
		CurrentUsage *int64 `json:"current_usage"`
		Limit        *int64 `json:"limit"`
		PeriodStart  string `json:"period_start"`
		ResetsAt     string `json:"resets_at"`
	} `json:"detail"`
}

type sessionBody struct {
	ID              string `json:"id"`
	UserID          string `json:"user_id"`
	Status          string `json:"status"`
	DurationSeconds *int64 `json:"duration_seconds"`
}

type usageBody struct {
	UserID      string `json:"user_id"`
	Plan        string `json:"plan"`
	PeriodStart string `json:"period_start"`
	PeriodEnd   string `json:"period_end"`
	Sessions    struct {
		Used      int64  `json:"used"`
		Limit     int64  `json:"limit"`
		Remaining *int64 `json:"remaining"`
	} `json:"sessions"`
	Minutes struct {
		Used        int64  `json:"used"`
		UsedSeconds int64  `json:"used_seconds"`
		Limit       int64  `json:"limit"`
		Remaining   *int64 `json:"remaining"`
	} `json:"minutes"`
}

func (c *client) usage(s *server, user string) usageBody {
	c.t.Helper()
	r := c.do(http.MethodGet, s.URL+"/api/v1/usage", c.token(user), nil)
	if r.Status != http.StatusOK {
		c.t.Fatalf("usage: %d %s", r.Status, r.Body)
	}
	var u usageBody
	r.json(c.t, &u)
	return u
}
