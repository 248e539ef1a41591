package apitest_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/transport"
	"github.com/tally-dev/tally/transport/apitest"
)

// recorder is a testing.TB that collects failures instead of failing, so
// that the validator's own failures can be asserted.
type recorder struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}
func (r *recorder) Fatalf(format string, args ...any) { r.Errorf(format, args...) }

func (r *recorder) failures() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.errs
}

const session = `{"id":"s-1","user_id":"u1","title":"t","language":"en","stt_provider":"google","status":"created","duration_seconds":null,"created_at":"2026-11-14T09:30:00Z","updated_at":"2026-11-14T09:30:00.123Z"}`

func TestValidatorCatchesMismatches(t *testing.T) {
	v := apitest.NewValidator(t)
	jsonHeader := func(extra ...string) http.Header {
		h := http.Header{"Content-Type": {"application/json; charset=utf-8"}, "X-Request-Id": {"abc"}}
		for i := 0; i < len(extra); i += 2 {
			h.Set(extra[i], extra[i+1])
		}
		return h
	}
	get := httptest.NewRequest("GET", "/api/v1/sessions/s-1", nil)
	for _, tc := range []struct {
		name   string
		req    *http.Request
		status int
		header http.Header
		body   string
		ok     bool
	}{
		{"valid", get, 200, jsonHeader(), session, true},
		{"missing field", get, 200, jsonHeader(), strings.Replace(session, `"duration_seconds":null,`, "", 1), false},
		{"extra field", get, 200, jsonHeader(), strings.Replace(session, `"id":"s-1",`, `"id":"s-1","x":1,`, 1), false},
		{"bad enum", get, 200, jsonHeader(), strings.Replace(session, `"created",`, `"new",`, 1), false},
		{"not UTC", get, 200, jsonHeader(), strings.Replace(session, `09:30:00Z`, `10:30:00+01:00`, 1), false},
		{"not a timestamp", get, 200, jsonHeader(), strings.Replace(session, `2026-11-14T09:30:00Z`, `yesterday`, 1), false},
		{"year 0000", get, 200, jsonHeader(), strings.Replace(session, `2026-11-14T09:30:00Z`, `0000-11-14T09:30:00Z`, 1), false},
		{"year 0001", get, 200, jsonHeader(), strings.Replace(session, `2026-11-14T09:30:00Z`, `0001-01-01T00:00:00Z`, 1), true},
		{"year 10000", get, 200, jsonHeader(), strings.Replace(session, `2026-11-14T09:30:00Z`, `10000-01-01T00:00:00Z`, 1), false},
		{"comma before the fraction", get, 200, jsonHeader(), strings.Replace(session, `09:30:00Z`, `09:30:00,5Z`, 1), false},
		{"no request id", get, 200, http.Header{"Content-Type": {"application/json"}}, session, false},
		{"wrong content type", get, 200, jsonHeader("Content-Type", "text/html"), session, false},
		{"undocumented status", get, 418, jsonHeader(), `{"detail":{"error":"bad_request","message":"x"}}`, false},
		{"error body", get, 404, jsonHeader(), `{"detail":{"error":"not_found","message":"not found"}}`, true},
		{"wrong error code for status", get, 404, jsonHeader(), `{"detail":{"error":"conflict","message":"x"}}`, false},
		{"503 without Retry-After", get, 503, jsonHeader(), `{"detail":{"error":"unavailable","message":"x"}}`, false},
		{"503 with Retry-After", get, 503, jsonHeader("Retry-After", "1"), `{"detail":{"error":"unavailable","message":"x"}}`, true},
		{"500 leaking", get, 500, jsonHeader(), `{"detail":{"error":"internal","message":"pq: relation users"}}`, false},
		{"limit without plan", httptest.NewRequest("POST", "/api/v1/sessions", nil), 403, jsonHeader(),
			`{"detail":{"error":"session_limit_exceeded","message":"Session limit exceeded: 10"}}`, false},
		{"validation without fields", httptest.NewRequest("POST", "/api/v1/sessions", nil), 422, jsonHeader(),
			`{"detail":{"error":"validation_failed","message":"invalid"}}`, false},
		{"unknown path", httptest.NewRequest("GET", "/api/v2/x", nil), 200, jsonHeader(), `{}`, false},
		{"unknown method", httptest.NewRequest("DELETE", "/api/v1/sessions/s-1", nil), 200, jsonHeader(), session, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{TB: t}
			ok := v.Check(rec, tc.req, tc.status, tc.header, []byte(tc.body))
			if ok != tc.ok || ok != (len(rec.failures()) == 0) {
				t.Errorf("Check = %v, want %v; failures %q", ok, tc.ok, rec.failures())
			}
		})
	}
}

func TestValidateRequest(t *testing.T) {
	v := apitest.NewValidator(t)
	req := func(body string) *http.Request {
		r := httptest.NewRequest("POST", "/api/v1/sessions", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Authorization", "Bearer x")
		return r
	}
	if err := v.ValidateRequest(req(""), []byte(`{"title":"t","language":"en-US","stt_provider":"google"}`)); err != nil {
		t.Errorf("valid request: %v", err)
	}
	if err := v.ValidateRequest(req(""), []byte(`{"title":"t","language":"en-US","stt_provider":"google","x":1}`)); err == nil {
		t.Error("unknown field accepted")
	}
}

// fakeAccounts answers every call with a fixed session or report.
type fakeAccounts struct{}

func (fakeAccounts) CreateSession(_ context.Context, u string, in domain.NewSession, _ string) (domain.Session, error) {
	now := time.Now()
	return domain.Session{ID: "s-1", UserID: u, Title: in.Title, Language: in.Language, STTProvider: in.STTProvider,
		Status: domain.StatusCreated, CreatedAt: now, UpdatedAt: now}, nil
}
func (fakeAccounts) GetSession(context.Context, string, string) (domain.Session, error) {
	return domain.Session{}, domain.ErrNotFound
}
func (fakeAccounts) ListSessions(context.Context, string, int, *domain.Cursor) ([]domain.Session, error) {
	return nil, nil
}
func (fakeAccounts) PrepareUpload(context.Context, string, string, float64) (domain.Session, domain.Plan, error) {
	return domain.Session{}, domain.Plan{}, domain.ErrNotFound
}
func (fakeAccounts) Usage(context.Context, string) (domain.Report, error) {
	return domain.Report{}, domain.Unavailable("postgres", nil)
}
func (fakeAccounts) PutUser(context.Context, domain.Origin, string, *string, *time.Time) (domain.User, domain.Report, error) {
	return domain.User{}, domain.Report{}, domain.ErrNotFound
}
func (fakeAccounts) GetUser(context.Context, string) (domain.User, domain.Report, error) {
	return domain.User{}, domain.Report{}, domain.ErrNotFound
}
func (fakeAccounts) ResetUsage(context.Context, domain.Origin, string) (domain.Report, error) {
	return domain.Report{}, domain.ErrNotFound
}
func (fakeAccounts) CompleteSession(context.Context, domain.Origin, string, int64) (domain.Session, error) {
	return domain.Session{}, domain.ErrNotFound
}
func (fakeAccounts) FailSession(context.Context, domain.Origin, string) (domain.Session, error) {
	return domain.Session{}, domain.ErrNotFound
}
func (fakeAccounts) ListUserEvents(context.Context, string, int, *domain.EventCursor) ([]domain.UserEvent, error) {
	return nil, domain.ErrNotFound
}

func TestClientAgainstServer(t *testing.T) {
	secret := []byte("s3cret")
	h, err := transport.New(transport.Options{
		Accounts: fakeAccounts{}, Catalog: domain.DefaultCatalog(), JWTSecret: secret, AdminToken: "adm",
		UploadBaseURL: "http://127.0.0.1/uploads", Providers: []string{"google"},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	tok, err := transport.IssueToken(secret, "u1", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}

	c := apitest.NewClient(t, srv.URL)
	r := c.MustCall("POST", "/api/v1/sessions", tok, map[string]string{"title": "t", "language": "en", "stt_provider": "google"}, "Idempotency-Key", "k1")
	var s struct {
		ID string `json:"id"`
	}
	if r.Status != 200 || !r.Decode(t, &s) || s.ID != "s-1" {
		t.Errorf("create: %d %s", r.Status, r.Body)
	}
	if r := c.MustCall("GET", "/api/v1/usage", tok, nil); r.Status != 503 || r.ErrorCode() != "unavailable" {
		t.Errorf("usage: %d %s", r.Status, r.Body)
	}
	if r := c.MustCall("GET", "/api/v1/plans", "", nil); r.Status != 200 {
		t.Errorf("plans: %d %s", r.Status, r.Body)
	}

	// The RoundTripper form checks whatever client uses it, from any goroutine.
	hc := &http.Client{Transport: c.Validator.Transport(t, nil)}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			resp, err := hc.Get(srv.URL + "/healthz")
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
		})
	}
	wg.Wait()

	// And it reports a response that breaks the contract.
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status":"ok"}`)) // no X-Request-Id
	}))
	defer bad.Close()
	rec := &recorder{TB: t}
	rc := apitest.NewClient(rec, bad.URL)
	if _, err := rc.Call("GET", "/healthz", "", nil); err != nil {
		t.Fatal(err)
	}
	if len(rec.failures()) != 1 || !strings.Contains(rec.failures()[0], "X-Request-Id") {
		t.Errorf("failures %q", rec.failures())
	}
}
