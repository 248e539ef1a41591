package transport_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
)

// unsafeText is one string per kind of character no store should keep,
// written as a Go string (raw bytes, for the header and the raw-body cases).
var unsafeText = []struct{ name, s string }{
	{"NUL", "x\x00"},
	{"U+0001", "a\x01b"},
	{"U+001F", "a\x1f"},
	{"DEL", "a\x7f"},
	{"U+0085 (C1)", "a\u0085b"},
	{"U+202E (RLO)", "\u202efdp.exe"},
	{"U+2066 (LRI)", "a\u2066b"},
}

// safeText must pass wherever text is checked.
var safeText = []struct{ name, s string }{
	{"tab", "a\tb"},
	{"unicode", "Réunion 会议 🎉"},
	{"RLM", "שלום\u200f!"},
}

// jsonString encodes s as a JSON string, escaping every control character,
// so that the body is well-formed JSON whatever s holds (raw bytes that are
// not UTF-8 are written as they are).
func jsonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20:
			fmt.Fprintf(&b, `\u%04x`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func createBody(title, language, provider string) string {
	return `{"title":` + jsonString(title) + `,"language":` + jsonString(language) + `,"stt_provider":` + jsonString(provider) + `}`
}

// wantFields checks a 422 that names exactly fields.
func wantFields(t *testing.T, b errBody, fields ...string) {
	t.Helper()
	if got := fieldNames(b); !reflect.DeepEqual(got, fields) {
		t.Errorf("fields %v, want %v (%+v)", got, fields, b.Detail.Fields)
	}
	for _, f := range b.Detail.Fields {
		if f.Message == "" {
			t.Errorf("field %s has no message", f.Field)
		}
	}
}

func TestCreateRefusesUnsafeText(t *testing.T) {
	cases := append(unsafeText, struct{ name, s string }{"invalid UTF-8", "a\xffb"}, struct{ name, s string }{"truncated UTF-8", "a\xe4\xbc"})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			for _, field := range []string{"title", "language", "stt_provider"} {
				in := map[string]string{"title": "Weekly sync", "language": "en-US", "stt_provider": "google"}
				in[field] = tc.s
				r := e.do("POST", "/api/v1/sessions", e.token("u1"), createBody(in["title"], in["language"], in["stt_provider"]))
				wantFields(t, wantError(t, r, 422, "validation_failed"), field)
			}
			// Every bad field is named at once.
			r := e.do("POST", "/api/v1/sessions", e.token("u1"), createBody(tc.s, tc.s, "google"))
			wantFields(t, wantError(t, r, 422, "validation_failed"), "title", "language")
			if calls := e.accounts.Calls(); len(calls) != 0 {
				t.Errorf("Accounts called: %q", calls)
			}
		})
	}
}

// The message says which character was refused, so that a client can fix
// its input without guessing.
func TestUnsafeTextMessageNamesTheCharacter(t *testing.T) {
	e := newEnv(t)
	r := e.do("POST", "/api/v1/sessions", e.token("u1"), createBody("x\x00", "en-US", "google"))
	b := wantError(t, r, 422, "validation_failed")
	if len(b.Detail.Fields) != 1 || !strings.Contains(b.Detail.Fields[0].Message, "U+0000") {
		t.Errorf("fields %+v: the message should name U+0000", b.Detail.Fields)
	}
}

func TestCreateAcceptsSafeText(t *testing.T) {
	for _, tc := range safeText {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.do("POST", "/api/v1/sessions", e.token("u1"), createBody(tc.s, "en-US", "google"))
			if r.Status != 200 {
				t.Fatalf("%d %s", r.Status, r.Body)
			}
			var s struct {
				Title string `json:"title"`
			}
			r.Decode(t, &s)
			if s.Title != tc.s {
				t.Errorf("title %q, want %q", s.Title, tc.s)
			}
		})
	}
}

func TestUploadFilenameRefusesUnsafeText(t *testing.T) {
	e := newEnv(t)
	for _, tc := range append(unsafeText, struct{ name, s string }{"invalid UTF-8", "a\xff.wav"}) {
		body := `{"filename":` + jsonString(tc.s) + `,"file_size_mb":1}`
		r := e.do("POST", "/api/v1/sessions/s-1/upload-url", e.token("u1"), body)
		b := wantError(t, r, 422, "validation_failed")
		if got := fieldNames(b); !reflect.DeepEqual(got, []string{"filename"}) {
			t.Errorf("%s: fields %v", tc.name, got)
		}
	}
	if calls := e.accounts.Calls(); len(calls) != 0 {
		t.Errorf("Accounts called: %q", calls)
	}
	for _, tc := range safeText {
		if tc.name == "tab" {
			continue // a filename has no control character at all, tab included
		}
		body := `{"filename":` + jsonString(tc.s+".wav") + `,"file_size_mb":1}`
		if r := e.do("POST", "/api/v1/sessions/s-1/upload-url", e.token("u1"), body); r.Status != 200 {
			t.Errorf("%s: %d %s", tc.name, r.Status, r.Body)
		}
	}
}

func TestIdempotencyKeyRefusesUnsafeText(t *testing.T) {
	e := newEnv(t)
	for _, tc := range append(unsafeText, struct{ name, s string }{"invalid UTF-8", "k\xff"}, struct{ name, s string }{"tab", "k\tk"}) {
		// Set on the request directly: an HTTP client would refuse to
		// send some of these, but a raw connection can.
		req := httptest.NewRequest("POST", "/api/v1/sessions", strings.NewReader(createBody("t", "en-US", "google")))
		req.Header.Set("Authorization", "Bearer "+e.token("u1"))
		req.Header["Idempotency-Key"] = []string{tc.s}
		r := e.v.Serve(t, e.h, req)
		b := wantError(t, r, 422, "validation_failed")
		if got := fieldNames(b); !reflect.DeepEqual(got, []string{"Idempotency-Key"}) {
			t.Errorf("%s: fields %v", tc.name, got)
		}
	}
	if calls := e.accounts.Calls(); len(calls) != 0 {
		t.Errorf("Accounts called: %q", calls)
	}
}

// An authentic, unexpired token whose sub cannot be a user id is a bad
// value, answered 422 naming `sub` on every user path; on admin paths it is
// a user token like any other (403). Forged or expired ones stay 401
// (TestUserAuthRejections).
func TestTokenSubValidation(t *testing.T) {
	e := newEnv(t)
	exp := e.clock.Now().Add(time.Hour).Unix()
	subs := []struct{ name, json string }{
		{"space and bang", `"bad user!"`},
		{"129 characters", `"` + strings.Repeat("u", 129) + `"`},
		{"tab", `"u\t1"`},
		{"invalid UTF-8", "\"u\xff\""}, // the JSON decoder makes it U+FFFD: still not a user id
	}
	for _, tc := range unsafeText {
		enc, _ := json.Marshal(tc.s)
		subs = append(subs, struct{ name, json string }{tc.name, string(enc)})
	}
	paths := []struct{ method, path, body string }{
		{"GET", "/api/v1/usage", ""},
		{"GET", "/api/v1/sessions", ""},
		{"GET", "/api/v1/sessions/s-1", ""},
		{"POST", "/api/v1/sessions", createBody("t", "en-US", "google")},
		{"POST", "/api/v1/sessions/s-1/upload-url", `{"filename":"a.wav","file_size_mb":1}`},
	}
	for _, sub := range subs {
		tok := signRaw(t, `{"alg":"HS256","typ":"JWT"}`, `{"sub":`+sub.json+`,"exp":`+fmt.Sprint(exp)+`}`, secret)
		for _, p := range paths {
			var body any
			if p.body != "" {
				body = p.body
			}
			r := e.do(p.method, p.path, tok, body)
			b := wantError(t, r, 422, "validation_failed")
			if got := fieldNames(b); !reflect.DeepEqual(got, []string{"sub"}) {
				t.Errorf("sub %s, %s %s: fields %v", sub.name, p.method, p.path, got)
			}
		}
		wantError(t, e.do("GET", "/admin/v1/users/bob", tok, nil), 403, "forbidden")
	}
	if calls := e.accounts.Calls(); len(calls) != 0 {
		t.Errorf("Accounts called: %q", calls)
	}
}

// A credential over 8 KiB is refused before it is parsed, even when it is a
// validly signed token; one of 8 KiB is served.
func TestLongTokenRefused(t *testing.T) {
	e := newEnv(t)
	exp := e.clock.Now().Add(time.Hour).Unix()
	token := func(pad int) string {
		return signRaw(t, `{"alg":"HS256","typ":"JWT"}`, `{"sub":"u1","exp":`+fmt.Sprint(exp)+`,"pad":"`+strings.Repeat("p", pad)+`"}`, secret)
	}
	// Base64 grows by 4 characters per 3 bytes: find the largest token
	// within the bound and the smallest above it.
	pad := 0
	for len(token(pad+1)) <= 8<<10 {
		pad++
	}
	atLimit, over := token(pad), token(pad+1)
	if len(atLimit) > 8<<10 || len(atLimit) < 8<<10-3 || len(over) <= 8<<10 {
		t.Fatalf("token lengths %d and %d do not straddle 8 KiB", len(atLimit), len(over))
	}
	if r := e.do("GET", "/api/v1/usage", atLimit, nil); r.Status != 200 {
		t.Errorf("a %d-byte token: %d %s", len(atLimit), r.Status, r.Body)
	}
	b := wantError(t, e.do("GET", "/api/v1/usage", over, nil), 401, "unauthorized")
	if !strings.Contains(b.Detail.Message, "8 KiB") {
		t.Errorf("message %q", b.Detail.Message)
	}
	long := strings.Repeat("a", 8<<10+1)
	wantError(t, e.do("GET", "/admin/v1/users/bob", long, nil), 401, "unauthorized")
	wantError(t, e.do("GET", "/admin/v1/users/bob", over, nil), 401, "unauthorized")
	if calls := e.accounts.Calls(); len(calls) != 1 {
		t.Errorf("Accounts calls %q, want only the served one", calls)
	}
}

// timeoutReader is a body that stalls until the connection's read deadline.
type timeoutReader struct{ sent bool }

func (r *timeoutReader) Read(p []byte) (int, error) {
	if !r.sent {
		r.sent = true
		p[0] = '{'
		return 1, nil
	}
	return 0, &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
}

// A body cut off by the read deadline is the client's delay, not a bug and
// not a malformed request: 408, and the connection is not kept.
func TestBodyReadTimeoutIs408(t *testing.T) {
	e := newEnv(t)
	for _, p := range []struct{ path, token string }{
		{"/api/v1/sessions", e.token("u1")},
		{"/api/v1/sessions/s-1/upload-url", e.token("u1")},
		{"/admin/v1/users/bob/reset-usage", adminToken},
	} {
		req := httptest.NewRequest("POST", p.path, &timeoutReader{})
		req.ContentLength = 100
		req.Header.Set("Authorization", "Bearer "+p.token)
		r := e.v.Serve(t, e.h, req)
		wantError(t, r, 408, "request_timeout")
		if r.Header.Get("Connection") != "close" {
			t.Errorf("%s: Connection %q, want close", p.path, r.Header.Get("Connection"))
		}
	}
	// Any other read failure is still the client's: a 400.
	req := httptest.NewRequest("POST", "/api/v1/sessions", io.MultiReader(strings.NewReader("{"), errReader{}))
	req.Header.Set("Authorization", "Bearer "+e.token("u1"))
	wantError(t, e.v.Serve(t, e.h, req), 400, "bad_request")
	if calls := e.accounts.Calls(); len(calls) != 0 {
		t.Errorf("Accounts called: %q", calls)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

// Admin paths' user ids are held to the user-id alphabet, which admits
// none of the characters CheckText refuses: 422 naming `id`.
func TestAdminUserIDRefusesUnsafeText(t *testing.T) {
	e := newEnv(t)
	for _, id := range []string{"u%00", "u%01", "u%7F", "u%C2%85", "u%E2%80%AE", "u%E2%81%A6", "u%FF", "u%09"} {
		for _, r := range []struct{ method, path, body string }{
			{"GET", "/admin/v1/users/" + id, ""},
			{"PUT", "/admin/v1/users/" + id, `{"plan":"pro"}`},
			{"POST", "/admin/v1/users/" + id + "/reset-usage", ""},
		} {
			var body any
			if r.body != "" {
				body = r.body
			}
			b := wantError(t, e.do(r.method, r.path, adminToken, body), 422, "validation_failed")
			if got := fieldNames(b); !reflect.DeepEqual(got, []string{"id"}) {
				t.Errorf("%s %s: fields %v", r.method, r.path, got)
			}
		}
	}
	if calls := e.accounts.Calls(); len(calls) != 0 {
		t.Errorf("Accounts called: %q", calls)
	}
}

// Field names are matched exactly and given once. encoding/json matched
// them regardless of case and let the last duplicate win, so that
// {"TITLE":"upper",…,"title":"x"} was a 200 creating "x", and a client's
// typo or a proxy's rewrite changed what was stored without a word. Each
// body here is refused with a 400 naming the key, on every endpoint that
// takes a body, before Accounts hears of it — with the headers every
// answer carries.
func TestDuplicateAndCaseVariantKeysAreRefused(t *testing.T) {
	e := newEnv(t)
	user := e.token("u1")
	for _, ep := range []struct {
		method, path, token string
		key, value, rest    string // a valid body: {"key":value,rest}
	}{
		{"POST", "/api/v1/sessions", user, "title", `"x"`, `"language":"en","stt_provider":"google"`},
		{"POST", "/api/v1/sessions/s-1/upload-url", user, "filename", `"a.wav"`, `"file_size_mb":1`},
		{"PUT", "/admin/v1/users/bob", adminToken, "plan", `"pro"`, `"billing_anchor":"2026-11-01T00:00:00Z"`},
		{"POST", "/admin/v1/sessions/s-1/complete", adminToken, "duration_seconds", `60`, ``},
	} {
		member := func(name string) string { return `"` + name + `":` + ep.value }
		obj := func(members ...string) string {
			return "{" + strings.Join(slices.DeleteFunc(members, func(m string) bool { return m == "" }), ",") + "}"
		}
		upper := strings.ToUpper(ep.key)
		title := strings.ToUpper(ep.key[:1]) + ep.key[1:]
		escaped := fmt.Sprintf(`\u%04x`, ep.key[0]) + ep.key[1:] // the same name, spelled otherwise
		valid := obj(member(ep.key), ep.rest)
		for _, tc := range []struct {
			name, body string
			says       []string // the message names these
		}{
			{"duplicate", obj(member(ep.key), ep.rest, member(ep.key)),
				[]string{`duplicate field "` + ep.key + `"`}},
			{"duplicate, escaped", obj(member(ep.key), ep.rest, member(escaped)),
				[]string{`duplicate field "` + ep.key + `"`}},
			{"upper case", obj(member(upper), ep.rest),
				[]string{`unknown field "` + upper + `"`, `did you mean "` + ep.key + `"`}},
			{"title case", obj(member(title), ep.rest),
				[]string{`unknown field "` + title + `"`, `did you mean "` + ep.key + `"`}},
			{"case variant before the name", obj(member(upper), member(ep.key), ep.rest),
				[]string{`unknown field "` + upper + `"`}},
			{"case variant after the name", obj(member(ep.key), ep.rest, member(title)),
				[]string{`unknown field "` + title + `"`}},
		} {
			n := len(e.accounts.Calls())
			r := e.do(ep.method, ep.path, ep.token, tc.body)
			b := wantError(t, r, 400, "bad_request")
			for _, s := range tc.says {
				if !strings.Contains(b.Detail.Message, s) {
					t.Errorf("%s %s, %s %s: message %q does not say %s", ep.method, ep.path, tc.name, tc.body, b.Detail.Message, s)
				}
			}
			wantSecureHeaders(t, ep.path+" "+tc.name, r)
			if calls := e.accounts.Calls(); len(calls) != n {
				t.Errorf("%s %s, %s: Accounts called: %q", ep.method, ep.path, tc.name, calls[n:])
			}
		}
		// The valid body itself is served: the refusals are about the keys.
		if r := e.do(ep.method, ep.path, ep.token, valid); r.Status != 200 {
			t.Errorf("%s %s %s: %d %s", ep.method, ep.path, valid, r.Status, r.Body)
		}
	}
}

// A name given twice in a nested object is refused too, wherever it is: no
// request body has a nested object, but the duplicate is what the client
// is told about, and where.
func TestDuplicateKeyInNestedObjectIsRefused(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct{ body, says string }{
		{`{"title":{"a":1,"a":2},"language":"en","stt_provider":"google"}`, `duplicate field "a" in "/title"`},
		{`{"title":"x","language":[{"b":1},{"a":1,"a":2}],"stt_provider":"google"}`, `duplicate field "a" in "/language/1"`},
		{`{"title":"x","language":"en","stt_provider":{"o":{"x":{},"x":{}}}}`, `duplicate field "x" in "/stt_provider/o"`},
	} {
		r := e.do("POST", "/api/v1/sessions", e.token("u1"), tc.body)
		b := wantError(t, r, 400, "bad_request")
		if !strings.Contains(b.Detail.Message, tc.says) {
			t.Errorf("%s: message %q, want it to say %s", tc.body, b.Detail.Message, tc.says)
		}
		wantSecureHeaders(t, tc.body, r)
	}
	if calls := e.accounts.Calls(); len(calls) != 0 {
		t.Errorf("Accounts called: %q", calls)
	}
}

// The endpoints without input refuse any member, whatever its case.
func TestEmptyBodyEndpointsRefuseEveryKey(t *testing.T) {
	e := newEnv(t)
	for _, path := range []string{"/admin/v1/users/bob/reset-usage", "/admin/v1/sessions/s-1/fail"} {
		for _, body := range []string{`{"a":1}`, `{"a":1,"a":1}`, `{"":1}`} {
			r := e.do("POST", path, adminToken, body)
			b := wantError(t, r, 400, "bad_request")
			if !strings.Contains(b.Detail.Message, "unknown field") {
				t.Errorf("%s %s: message %q", path, body, b.Detail.Message)
			}
			wantSecureHeaders(t, path, r)
		}
	}
	if calls := e.accounts.Calls(); len(calls) != 0 {
		t.Errorf("Accounts called: %q", calls)
	}
}

// A \ud800–\udfff escape without its pair is well-formed JSON but no text:
// every decoder that takes it stores U+FFFD instead, so the service would
// keep, and answer with, something other than what was sent. Like invalid
// UTF-8 it is a 422 naming each field that holds one; a proper pair is text
// like any other.
func TestUnpairedSurrogateEscapesAreRefused(t *testing.T) {
	e := newEnv(t)
	for _, s := range []string{`\ud800`, `a\udbffb`, `\udc00`, `\ud83c\u0041`, `\udf89\ud83c`} {
		body := `{"title":"` + s + `","language":"en","stt_provider":"google"}`
		b := wantError(t, e.do("POST", "/api/v1/sessions", e.token("u1"), body), 422, "validation_failed")
		wantFields(t, b, "title")
		if m := b.Detail.Fields[0].Message; !strings.Contains(m, "surrogate") {
			t.Errorf("%s: message %q", s, m)
		}
		body = `{"filename":"` + s + `.wav","file_size_mb":1}`
		wantFields(t, wantError(t, e.do("POST", "/api/v1/sessions/s-1/upload-url", e.token("u1"), body), 422, "validation_failed"), "filename")
	}
	// Every such field at once, next to one with invalid UTF-8.
	body := "{\"title\":\"\\ud800\",\"language\":\"e\xffn\",\"stt_provider\":\"\\udfff\"}"
	wantFields(t, wantError(t, e.do("POST", "/api/v1/sessions", e.token("u1"), body), 422, "validation_failed"),
		"title", "language", "stt_provider")
	if calls := e.accounts.Calls(); len(calls) != 0 {
		t.Errorf("Accounts called: %q", calls)
	}
	// A structural fault after such text is still the 400 it would be.
	body = `{"title":"\ud800","language":"en","stt_provider":"google","title":"x"}`
	wantError(t, e.do("POST", "/api/v1/sessions", e.token("u1"), body), 400, "bad_request")

	r := e.do("POST", "/api/v1/sessions", e.token("u1"), `{"title":"party \ud83c\udf89","language":"en","stt_provider":"google"}`)
	if r.Status != 200 {
		t.Fatalf("a surrogate pair: %d %s", r.Status, r.Body)
	}
	var created struct {
		Title string `json:"title"`
	}
	r.Decode(t, &created)
	if created.Title != "party 🎉" {
		t.Errorf("title %q, want the pair decoded", created.Title)
	}
}

// A billing anchor is answered back, and so is every period it starts: an
// anchor is taken only when it is strictly RFC 3339 and both it and every
// period end are writable as RFC 3339 in UTC — years 0001 to 9999
// (domain.ValidateAnchor). Every answer is checked by apitest, which holds
// each date-time to the same rule.
func TestBillingAnchorEdges(t *testing.T) {
	e := newEnv(t)
	e.accounts.putUser = func(_ context.Context, id string, plan *string, anchor *time.Time) (domain.User, domain.Report, error) {
		u := domain.User{ID: id, Plan: *plan, BillingAnchor: *anchor, CreatedAt: t0, UpdatedAt: t0}
		p, _ := domain.DefaultCatalog().Plan(*plan)
		return u, domain.Report{UserID: id, Plan: p, Period: u.Period(e.clock.Now())}, nil
	}
	for _, tc := range []struct {
		anchor string
		ok     bool
		utc    string // the anchor Accounts gets, when ok
	}{
		{"9999-11-30T23:59:59.999999999Z", true, "9999-11-30T23:59:59.999999999Z"},
		{"9999-11-30T00:00:00Z", true, "9999-11-30T00:00:00Z"},
		{"9999-12-01T00:59:59+01:00", true, "9999-11-30T23:59:59Z"},
		{"9999-12-01T00:00:00Z", false, ""},
		{"9999-11-30T23:00:00-01:00", false, ""}, // 9999-12-01T00:00:00Z
		{"9999-12-31T23:59:59-01:00", false, ""}, // year 10000 in UTC
		{"0001-01-01T00:00:00Z", true, "0001-01-01T00:00:00Z"},
		{"0001-01-01T00:00:00-00:01", true, "0001-01-01T00:01:00Z"},
		{"0001-01-01T00:00:00+00:01", false, ""}, // year 0000 in UTC
		{"0000-06-01T00:00:00Z", false, ""},
		{"10000-01-01T00:00:00Z", false, ""},
		{"2026-11-01T00:00:00+23:59", true, "2026-10-31T00:01:00Z"},
		// Not RFC 3339, though time.Parse takes them.
		{"2026-11-01T00:00:00+24:00", false, ""},
		{"2026-11-01T00:00:00+00:60", false, ""},
		{"2026-11-01T00:00:00,5Z", false, ""},
		{"2026-11-01T0:00:00Z", false, ""},
	} {
		n := len(e.accounts.Calls())
		r := e.do("PUT", "/admin/v1/users/bob", adminToken, `{"plan":"pro","billing_anchor":"`+tc.anchor+`"}`)
		if !tc.ok {
			wantFields(t, wantError(t, r, 422, "validation_failed"), "billing_anchor")
			if calls := e.accounts.Calls(); len(calls) != n {
				t.Errorf("%s: Accounts called: %q", tc.anchor, calls[n:])
			}
			continue
		}
		if r.Status != 200 {
			t.Errorf("%s: %d %s", tc.anchor, r.Status, r.Body)
			continue
		}
		want, _ := time.Parse(time.RFC3339Nano, tc.utc)
		if got, wantCall := e.accounts.Calls()[n], "PutUser bob pro "+want.String(); got != wantCall {
			t.Errorf("%s: call %q, want %q", tc.anchor, got, wantCall)
		}
		var u struct {
			BillingAnchor string `json:"billing_anchor"`
		}
		r.Decode(t, &u)
		if u.BillingAnchor != tc.utc {
			t.Errorf("%s: billing_anchor %q, want %q", tc.anchor, u.BillingAnchor, tc.utc)
		}
	}
}

// A cursor names a position by a time encodeCursor wrote: UTC, RFC 3339,
// a year from 0001 to 9999. Any other time — one whose offset puts it in
// year 10000 or 0000, or that only a lax parser takes — is a 422 naming
// cursor, never a position handed to Accounts.
func TestCursorTimeMustBeWritable(t *testing.T) {
	e := newEnv(t)
	cursor := func(ts string) string { return base64.RawURLEncoding.EncodeToString([]byte(ts + "|s-1")) }
	for _, ts := range []string{
		"9999-12-31T23:59:59-01:00",
		"0001-01-01T00:00:00+01:00",
		"0000-06-01T00:00:00Z",
		"2026-11-14T09:30:00+00:00",
		"2026-11-14T10:30:00+01:00",
		"2026-11-14T09:30:00,5Z",
		"2026-11-14T09:30:00.500Z",
	} {
		r := e.do("GET", "/api/v1/sessions?cursor="+cursor(ts), e.token("u1"), nil)
		wantFields(t, wantError(t, r, 422, "validation_failed"), "cursor")
	}
	if calls := e.accounts.Calls(); len(calls) != 0 {
		t.Errorf("Accounts called: %q", calls)
	}
	for _, ts := range []string{"9999-12-31T23:59:59.999999999Z", "0001-01-01T00:00:00Z", "2026-11-14T09:30:00.5Z"} {
		if r := e.do("GET", "/api/v1/sessions?cursor="+cursor(ts), e.token("u1"), nil); r.Status != 200 {
			t.Errorf("%s: %d %s", ts, r.Status, r.Body)
		}
	}
}
