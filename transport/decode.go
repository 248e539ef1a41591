package transport

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/tally-dev/tally/domain"
)

// maxBodyBytes is the largest request body accepted: 64 KiB.
const maxBodyBytes = 64 << 10

var errTooLarge = &domain.Error{Code: domain.CodeTooLarge, Message: "the request body is over 64 KiB"}

// readBody reads the whole body into buf, refusing more than maxBodyBytes
// without reading further.
func readBody(c *gin.Context, buf *bytes.Buffer) error {
	if c.Request.ContentLength > maxBodyBytes {
		return errTooLarge
	}
	if c.Request.Body == nil {
		return nil
	}
	if _, err := buf.ReadFrom(http.MaxBytesReader(c.Writer, c.Request.Body, maxBodyBytes)); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return errTooLarge
		}
		if readTimedOut(err) {
			return &domain.Error{Code: domain.CodeRequestTimeout, Message: "the request body did not arrive within the server's read timeout", Err: err}
		}
		return &domain.Error{Code: domain.CodeBadRequest, Message: "could not read the request body", Err: err}
	}
	return nil
}

// readTimedOut reports whether a body read failed on the connection's read
// deadline (the server's ReadTimeout): the client stalled, which is neither
// a malformed request nor a bug.
func readTimedOut(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}

// bodyBuffers are reused between requests: a body is only read to be
// decoded (decoded strings are copies), and reading each into a fresh
// slice was a large share of the bytes allocated per over-limit answer
// (docs/performance.md).
var bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// withBody reads the body into a pooled buffer and hands it to f; the
// buffer is reused once f returns, so f must not keep it.
func withBody(c *gin.Context, f func([]byte) error) error {
	buf := bodyBuffers.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= 16<<10 { // a rare big body is not kept around
			bodyBuffers.Put(buf)
		}
	}()
	if err := readBody(c, buf); err != nil {
		return err
	}
	return f(buf.Bytes())
}

// decodeBody reads the body and decodes it strictly into v.
func decodeBody(c *gin.Context, v any) error {
	return withBody(c, func(b []byte) error { return decodeJSON(b, v) })
}

// decodeEmptyBody accepts an absent body or an empty object: the endpoints
// that take no input still refuse input they would silently ignore.
func decodeEmptyBody(c *gin.Context) error {
	return withBody(c, func(b []byte) error {
		if len(bytes.TrimSpace(b)) == 0 {
			return nil
		}
		return decodeJSON(b, &struct{}{})
	})
}

func badRequest(format string, args ...any) error {
	return &domain.Error{Code: domain.CodeBadRequest, Message: fmt.Sprintf(format, args...)}
}

// The decoder's options. Both refuse members no field is named after
// (RejectUnknownMembers) and, by the v2 decoder's defaults, match names
// exactly — `TITLE` is not `title` — and refuse a name given twice in an
// object at any depth, where encoding/json matched names regardless of
// case and let the last duplicate win, so that `{"TITLE":"a","title":"b"}`
// was a create titled "b". The strict one also refuses text that is not
// valid Unicode: invalid UTF-8 bytes and unpaired \ud800–\udfff escapes,
// which any decoder that accepts them turns into U+FFFD, so that the
// service would keep, and answer with, something other than what the
// client sent. The lenient one accepts such text; it is only used to tell
// a body whose one fault is its text (a 422 naming each field) from a
// malformed one (a 400).
var (
	decodeStrict      = json.JoinOptions(json.RejectUnknownMembers(true))
	decodeLenientText = json.JoinOptions(json.RejectUnknownMembers(true), jsontext.AllowInvalidUTF8(true))
)

// decodeJSON decodes exactly one JSON object into v: malformed JSON, a top
// level that is not an object, anything after the object, unknown fields,
// fields whose names differ from the schema's only by case, duplicate
// names (in nested objects too) and wrong types are 400s. Values are
// checked afterwards (422).
func decodeJSON(data []byte, v any) error {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return badRequest("the request body must be a JSON object")
	}
	err := json.Unmarshal(trimmed, v, decodeStrict)
	if err == nil {
		return nil
	}
	if _, ok := errors.AsType[*jsontext.SyntacticError](err); ok {
		// Text that is not valid Unicode is a syntactic error to the
		// strict decoder; if that was all, the lenient one decodes it.
		// Otherwise its error is the structural fault, found past any
		// such text.
		if err = json.Unmarshal(trimmed, v, decodeLenientText); err == nil {
			return invalidText(trimmed)
		}
	}
	return jsonError(err, v)
}

// invalidText is the answer to a well-formed body with strings that are
// not valid Unicode: the fields that hold them are named (422, in body
// order), like any other value no store should keep. Keys are known
// fields by now (the lenient decode succeeded).
func invalidText(data []byte) error {
	bad := badRequest("the request body must be UTF-8")
	dec := jsontext.NewDecoder(bytes.NewReader(data), decodeLenientText)
	if tok, err := dec.ReadToken(); err != nil || tok.Kind() != '{' {
		return bad
	}
	var f fieldErrors
	for dec.PeekKind() == '"' {
		key, err := dec.ReadToken()
		if err != nil {
			return bad
		}
		name := key.String() // the token is void after the next read
		raw, err := dec.ReadValue()
		if err != nil {
			return bad
		}
		switch {
		case !utf8.Valid(raw):
			f.add(name, "must be valid UTF-8")
		case !raw.IsValid():
			f.add(name, `must not contain an unpaired surrogate escape (\ud800 to \udfff)`)
		}
	}
	if len(f) == 0 {
		return bad
	}
	return f.err()
}

// jsonError turns the decoder's errors into client messages that name the
// problem without echoing Go types. v is what was decoded into, for the
// names of its fields.
func jsonError(err error, v any) error {
	if se, ok := errors.AsType[*jsontext.SyntacticError](err); ok {
		switch {
		case se.Err == jsontext.ErrDuplicateName:
			if parent := se.JSONPointer.Parent(); parent != "" {
				return badRequest("duplicate field %q in %q", se.JSONPointer.LastToken(), string(parent))
			}
			return badRequest("duplicate field %q", se.JSONPointer.LastToken())
		case errors.Is(se.Err, io.ErrUnexpectedEOF):
			return badRequest("malformed JSON: unexpected end of input")
		}
		return badRequest("malformed JSON at byte %d: %v", se.ByteOffset, se.Err)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return badRequest("malformed JSON: unexpected end of input")
	}
	if se, ok := errors.AsType[*json.SemanticError](err); ok {
		name := fieldName(se.JSONPointer)
		switch {
		case se.Err == json.ErrUnknownName:
			if known, ok := sameButCase(v, name); ok {
				return badRequest("unknown field %q: field names are case-sensitive; did you mean %q?", name, known)
			}
			return badRequest("unknown field %q", name)
		case se.JSONPointer == "":
			return badRequest("the request body must be a JSON object")
		case se.GoType != nil:
			return badRequest("field %q must be %s", name, jsonKind(se.GoType))
		}
	}
	return badRequest("malformed JSON")
}

// fieldName is a member's name at the top level, else its JSON Pointer
// (RFC 6901): the request bodies are flat objects.
func fieldName(p jsontext.Pointer) string {
	if p.Parent() == "" {
		return p.LastToken()
	}
	return string(p)
}

// sameButCase returns the field of the struct v points to whose JSON name
// equals name but for case: the likely intent of a client that sent it.
func sameButCase(v any, name string) (string, bool) {
	t := reflect.TypeOf(v)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return "", false
	}
	for i := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if tag != "" && tag != "-" && strings.EqualFold(tag, name) {
			return tag, true
		}
	}
	return "", false
}

func jsonKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer in range"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "a boolean"
	default:
		return "an object"
	}
}

// fieldErrors collects invalid fields across several checks, so that one
// 422 lists every problem of a request.
type fieldErrors []domain.FieldError

func (f *fieldErrors) add(field, message string) {
	*f = append(*f, domain.FieldError{Field: field, Message: message})
}

// merge appends the fields of a validation error; other errors are
// returned for the caller to answer as they are.
func (f *fieldErrors) merge(err error) error {
	if err == nil {
		return nil
	}
	if de, ok := errors.AsType[*domain.Error](err); ok && de.Code == domain.CodeValidation {
		*f = append(*f, de.Fields...)
		return nil
	}
	return err
}

func (f fieldErrors) err() error {
	if len(f) == 0 {
		return nil
	}
	return &domain.Error{Code: domain.CodeValidation, Message: "invalid request", Fields: f}
}

// completeRequest is the body of POST /admin/v1/sessions/{id}/complete.
type completeRequest struct {
	DurationSeconds *int64 `json:"duration_seconds"`
}

func (r completeRequest) validate(f *fieldErrors) {
	if r.DurationSeconds == nil {
		f.add("duration_seconds", "is required")
		return
	}
	_ = f.merge(domain.ValidateDuration(*r.DurationSeconds))
}

// uploadRequest is the body of POST /api/v1/sessions/{id}/upload-url.
type uploadRequest struct {
	Filename   *string  `json:"filename"`
	FileSizeMB *float64 `json:"file_size_mb"`
}

func (r uploadRequest) validate(f *fieldErrors) {
	if r.Filename == nil {
		f.add("filename", "is required")
	} else if err := domain.CheckText(*r.Filename); err != nil {
		f.add("filename", err.Error())
	} else if !validFilename(*r.Filename) {
		f.add("filename", `must be 1 to 255 characters without '/', '\', control characters, and not "." or ".."`)
	}
	if r.FileSizeMB == nil {
		f.add("file_size_mb", "is required")
	} else {
		_ = f.merge(domain.ValidateFileSize(*r.FileSizeMB))
	}
}

// validFilename keeps the name a single, harmless path segment of the
// upload URL: "." and ".." would climb out of the session's directory.
func validFilename(name string) bool {
	if n := utf8.RuneCountInString(name); n < 1 || n > 255 || !utf8.ValidString(name) || name == "." || name == ".." {
		return false
	}
	for _, r := range name {
		if r == '/' || r == '\\' || unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// putUserRequest is the body of PUT /admin/v1/users/{id}.
type putUserRequest struct {
	Plan          *string `json:"plan"`
	BillingAnchor *string `json:"billing_anchor"`
}

// validate checks the plan against the catalog and parses the anchor.
func (r putUserRequest) validate(catalog *domain.Catalog, f *fieldErrors) (anchor *time.Time) {
	switch {
	case r.Plan == nil:
		f.add("plan", "is required")
	default:
		if _, ok := catalog.Plan(*r.Plan); !ok {
			f.add("plan", "must be one of: "+strings.Join(catalog.Names(), ", "))
		}
	}
	if r.BillingAnchor != nil {
		t, ok := parseRFC3339(*r.BillingAnchor)
		if !ok {
			f.add("billing_anchor", "must be an RFC 3339 timestamp such as 2026-11-01T00:00:00Z")
			return nil
		}
		if err := domain.ValidateAnchor(t); err != nil {
			_ = f.merge(err) // a validation error: merged, never returned
			return nil
		}
		t = t.UTC()
		anchor = &t
	}
	return anchor
}

// parseRFC3339 parses s strictly as RFC 3339. time.Parse and
// Time.UnmarshalText also take what RFC 3339 does not allow — an offset of
// +24:00 or +00:60, a comma before the fraction, a one-digit hour: Go 1.26
// ships its strict checks disabled — and the v2 JSON decoder's time.Time
// makes those checks, so a string goes through it.
func parseRFC3339(s string) (time.Time, bool) {
	var t time.Time
	q, err := jsontext.AppendQuote(nil, s)
	if err != nil || json.Unmarshal(q, &t) != nil {
		return time.Time{}, false
	}
	return t, true
}

// maxIdempotencyKey bounds the Idempotency-Key header (docs/contract.md, "Validation": ≤ 255 bytes).
const maxIdempotencyKey = 255

// validateIdempotencyKey accepts an absent key or 1–255 visible ASCII
// characters: the key is stored and compared byte for byte.
func validateIdempotencyKey(key string, f *fieldErrors) {
	if len(key) > maxIdempotencyKey {
		f.add("Idempotency-Key", "must be at most 255 characters")
		return
	}
	for i := 0; i < len(key); i++ {
		if key[i] < '!' || key[i] > '~' {
			f.add("Idempotency-Key", "must be visible ASCII characters")
			return
		}
	}
}

// List paging.
const (
	defaultListLimit = 20
	maxListLimit     = 100
	maxCursorLen     = 512
)

// listParams parses ?limit= and ?cursor=.
func listParams(c *gin.Context, f *fieldErrors) (limit int, after *domain.Cursor) {
	limit = defaultListLimit
	if raw, ok := c.GetQuery("limit"); ok {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > maxListLimit {
			f.add("limit", "must be an integer from 1 to 100")
		} else {
			limit = n
		}
	}
	if raw, ok := c.GetQuery("cursor"); ok {
		cur, err := decodeCursor(raw)
		if err != nil {
			f.add("cursor", "must be a next_cursor returned by this endpoint")
		} else {
			after = &cur
		}
	}
	return limit, after
}

// encodeCursor makes the opaque next_cursor: base64url of
// "<created_at RFC3339Nano>|<id>" of the last item of a page.
func encodeCursor(s domain.Session) string {
	return base64.RawURLEncoding.EncodeToString([]byte(s.CreatedAt.UTC().Format(time.RFC3339Nano) + "|" + s.ID))
}

func decodeCursor(raw string) (domain.Cursor, error) {
	if raw == "" || len(raw) > maxCursorLen {
		return domain.Cursor{}, errors.New("bad cursor length")
	}
	b, err := base64.RawURLEncoding.DecodeString(raw)
	if err != nil {
		return domain.Cursor{}, err
	}
	ts, id, ok := strings.Cut(string(b), "|")
	if !ok || !validSessionID(id) {
		return domain.Cursor{}, errors.New("bad cursor")
	}
	// Only what encodeCursor writes: a Writable instant in UTC, written
	// as timestamp writes it. A time with an offset could name an instant
	// in year 10000 or 0000, which no next_cursor can hold.
	t, ok := parseRFC3339(ts)
	if !ok || !domain.Writable(t) || timestamp(t) != ts {
		return domain.Cursor{}, errors.New("bad cursor time")
	}
	return domain.Cursor{CreatedAt: t.UTC(), ID: id}, nil
}

// validSessionID: session ids are opaque, but never longer than 128
// characters of the user-id alphabet; anything else cannot exist (404).
func validSessionID(id string) bool { return domain.ValidUserID(id) }
