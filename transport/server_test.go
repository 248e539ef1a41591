package transport_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/transport"
	"github.com/tally-dev/tally/transport/apitest"
)

var (
	secret     = []byte("test-secret-0123456789abcdef")
	adminToken = "admin-token-xyz"
	t0         = time.Date(2026, 11, 14, 9, 30, 0, 0, time.UTC)
	period     = domain.Period{Start: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), End: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
)

// fakeAccounts records calls and answers with canned values, or with what a
// test sets in the function fields.
type fakeAccounts struct {
	mu    sync.Mutex
	calls []string

	createSession   func(ctx context.Context, userID string, in domain.NewSession, key string) (domain.Session, error)
	getSession      func(ctx context.Context, userID, sessionID string) (domain.Session, error)
	listSessions    func(ctx context.Context, userID string, limit int, after *domain.Cursor) ([]domain.Session, error)
	prepareUpload   func(ctx context.Context, userID, sessionID string, sizeMB float64) (domain.Session, domain.Plan, error)
	usage           func(ctx context.Context, userID string) (domain.Report, error)
	putUser         func(ctx context.Context, userID string, plan *string, anchor *time.Time) (domain.User, domain.Report, error)
	getUser         func(ctx context.Context, userID string) (domain.User, domain.Report, error)
	resetUsage      func(ctx context.Context, userID string) (domain.Report, error)
	completeSession func(ctx context.Context, sessionID string, seconds int64) (domain.Session, error)
	failSession     func(ctx context.Context, sessionID string) (domain.Session, error)
	listUserEvents  func(ctx context.Context, userID string, limit int, after *domain.EventCursor) ([]domain.UserEvent, error)

	origins []domain.Origin // of the admin changes, in call order
}

var _ domain.Accounts = (*fakeAccounts)(nil)

func (f *fakeAccounts) record(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

// origin records who an admin change is made by.
func (f *fakeAccounts) origin(by domain.Origin) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.origins = append(f.origins, by)
}

func (f *fakeAccounts) Origins() []domain.Origin {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.origins)
}

func (f *fakeAccounts) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func session(id, userID string) domain.Session {
	return domain.Session{
		ID: id, UserID: userID, Title: "Weekly sync", Language: "en-US", STTProvider: "google",
		Status: domain.StatusCreated, PeriodStart: period.Start, CreatedAt: t0, UpdatedAt: t0,
	}
}

func report(userID string, plan domain.Plan, u domain.Usage) domain.Report {
	return domain.Report{UserID: userID, Plan: plan, Period: period, Usage: u}
}

func freePlan() domain.Plan { p, _ := domain.DefaultCatalog().Plan("free"); return p }

func (f *fakeAccounts) CreateSession(ctx context.Context, userID string, in domain.NewSession, key string) (domain.Session, error) {
	f.record("CreateSession %s %s/%s/%s key=%q", userID, in.Title, in.Language, in.STTProvider, key)
	if f.createSession != nil {
		return f.createSession(ctx, userID, in, key)
	}
	s := session("s-1", userID)
	s.Title, s.Language, s.STTProvider = in.Title, in.Language, in.STTProvider
	return s, nil
}

func (f *fakeAccounts) GetSession(ctx context.Context, userID, sessionID string) (domain.Session, error) {
	f.record("GetSession %s %s", userID, sessionID)
	if f.getSession != nil {
		return f.getSession(ctx, userID, sessionID)
	}
	return session(sessionID, userID), nil
}

func (f *fakeAccounts) ListSessions(ctx context.Context, userID string, limit int, after *domain.Cursor) ([]domain.Session, error) {
	f.record("ListSessions %s %d %v", userID, limit, after != nil)
	if f.listSessions != nil {
		return f.listSessions(ctx, userID, limit, after)
	}
	return nil, nil
}

func (f *fakeAccounts) PrepareUpload(ctx context.Context, userID, sessionID string, sizeMB float64) (domain.Session, domain.Plan, error) {
	f.record("PrepareUpload %s %s %v", userID, sessionID, sizeMB)
	if f.prepareUpload != nil {
		return f.prepareUpload(ctx, userID, sessionID, sizeMB)
	}
	s := session(sessionID, userID)
	s.Status = domain.StatusUploading
	return s, freePlan(), nil
}

func (f *fakeAccounts) Usage(ctx context.Context, userID string) (domain.Report, error) {
	f.record("Usage %s", userID)
	if f.usage != nil {
		return f.usage(ctx, userID)
	}
	return report(userID, freePlan(), domain.Usage{Sessions: 3, Seconds: 125}), nil
}

func (f *fakeAccounts) PutUser(ctx context.Context, by domain.Origin, userID string, plan *string, anchor *time.Time) (domain.User, domain.Report, error) {
	f.record("PutUser %s %v %v", userID, deref(plan), anchor)
	f.origin(by)
	if f.putUser != nil {
		return f.putUser(ctx, userID, plan, anchor)
	}
	p, _ := domain.DefaultCatalog().Plan(deref(plan))
	return domain.User{ID: userID, Plan: p.Name, BillingAnchor: period.Start, CreatedAt: t0, UpdatedAt: t0},
		report(userID, p, domain.Usage{}), nil
}

func (f *fakeAccounts) GetUser(ctx context.Context, userID string) (domain.User, domain.Report, error) {
	f.record("GetUser %s", userID)
	if f.getUser != nil {
		return f.getUser(ctx, userID)
	}
	return domain.User{ID: userID, Plan: "free", BillingAnchor: period.Start, CreatedAt: t0, UpdatedAt: t0},
		report(userID, freePlan(), domain.Usage{Sessions: 1}), nil
}

func (f *fakeAccounts) ResetUsage(ctx context.Context, by domain.Origin, userID string) (domain.Report, error) {
	f.record("ResetUsage %s", userID)
	f.origin(by)
	if f.resetUsage != nil {
		return f.resetUsage(ctx, userID)
	}
	r := report(userID, freePlan(), domain.Usage{})
	r.Period = domain.PeriodAt(t0, t0)
	return r, nil
}

func (f *fakeAccounts) CompleteSession(ctx context.Context, by domain.Origin, sessionID string, seconds int64) (domain.Session, error) {
	f.record("CompleteSession %s %d", sessionID, seconds)
	f.origin(by)
	if f.completeSession != nil {
		return f.completeSession(ctx, sessionID, seconds)
	}
	s := session(sessionID, "u1")
	s.Status, s.DurationSeconds = domain.StatusCompleted, &seconds
	return s, nil
}

func (f *fakeAccounts) FailSession(ctx context.Context, by domain.Origin, sessionID string) (domain.Session, error) {
	f.record("FailSession %s", sessionID)
	f.origin(by)
	if f.failSession != nil {
		return f.failSession(ctx, sessionID)
	}
	s := session(sessionID, "u1")
	s.Status = domain.StatusFailed
	return s, nil
}

func (f *fakeAccounts) ListUserEvents(ctx context.Context, userID string, limit int, after *domain.EventCursor) ([]domain.UserEvent, error) {
	f.record("ListUserEvents %s %d %v", userID, limit, after)
	if f.listUserEvents != nil {
		return f.listUserEvents(ctx, userID, limit, after)
	}
	return []domain.UserEvent{}, nil
}

func deref(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type checker struct {
	name string
	err  error
	wait bool // block, ignoring the context
}

func (c checker) Name() string { return c.name }

// optionalChecker is a dependency the service runs without (Redis).
type optionalChecker struct{ checker }

func (optionalChecker) Optional() bool { return true }
func (c checker) Check(ctx context.Context) error {
	if c.wait {
		time.Sleep(3 * time.Second)
	}
	return c.err
}

// env is one server under test.
type env struct {
	t        *testing.T
	h        http.Handler
	accounts *fakeAccounts
	clock    *clock
	logs     *testenv.LockedBuffer
	registry *prometheus.Registry
	v        *apitest.Validator
}

func newEnv(t *testing.T, tweak ...func(*transport.Options)) *env {
	t.Helper()
	e := &env{
		t: t, accounts: &fakeAccounts{}, clock: &clock{t: t0}, logs: &testenv.LockedBuffer{},
		registry: prometheus.NewRegistry(), v: apitest.NewValidator(t),
	}
	opts := transport.Options{
		Accounts:      e.accounts,
		Catalog:       domain.DefaultCatalog(),
		JWTSecret:     secret,
		AdminToken:    adminToken,
		UploadBaseURL: "https://uploads.example.com/base/",
		Providers:     []string{"google", "assemblyai"},
		Logger:        slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registry:      e.registry,
		Now:           e.clock.Now,
	}
	for _, f := range tweak {
		f(&opts)
	}
	h, err := transport.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	e.h = h
	return e
}

func (e *env) token(userID string) string {
	e.t.Helper()
	tok, err := transport.IssueToken(secret, userID, time.Hour, e.clock.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// do sends one request through the handler; the answer is checked against
// openapi.yaml.
func (e *env) do(method, path, token string, body any, headers ...string) *apitest.Response {
	e.t.Helper()
	req, err := apitest.NewRequest(method, "http://tally.test"+path, token, body, headers...)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.v.Serve(e.t, e.h, req)
}

// detail decodes an error body.
type errBody struct {
	Detail struct {
		Error        string              `json:"error"`
		Message      string              `json:"message"`
		Fields       []domain.FieldError `json:"fields"`
		Plan         *string             `json:"plan"`
		CurrentUsage *int64              `json:"current_usage"`
	} `json:"detail"`
}

func wantError(t *testing.T, r *apitest.Response, status int, code string) errBody {
	t.Helper()
	var b errBody
	r.Decode(t, &b)
	if r.Status != status || b.Detail.Error != code {
		t.Fatalf("got %d %s, want %d %s; body %s", r.Status, b.Detail.Error, status, code, r.Body)
	}
	return b
}

func fieldNames(b errBody) []string {
	var out []string
	for _, f := range b.Detail.Fields {
		out = append(out, f.Field)
	}
	return out
}

var validCreate = map[string]string{"title": "Weekly sync", "language": "en-US", "stt_provider": "google"}

func TestCreateSession(t *testing.T) {
	e := newEnv(t)
	r := e.do("POST", "/api/v1/sessions", e.token("alice@example.com"), validCreate, "Idempotency-Key", "k-123")
	if r.Status != 200 {
		t.Fatalf("status %d: %s", r.Status, r.Body)
	}
	want := `{"id":"s-1","user_id":"alice@example.com","title":"Weekly sync","language":"en-US","stt_provider":"google","status":"created","duration_seconds":null,"created_at":"2026-11-14T09:30:00Z","updated_at":"2026-11-14T09:30:00Z"}`
	if string(r.Body) != want {
		t.Errorf("body\n got %s\nwant %s", r.Body, want)
	}
	if got := e.accounts.Calls(); !reflect.DeepEqual(got, []string{`CreateSession alice@example.com Weekly sync/en-US/google key="k-123"`}) {
		t.Errorf("calls %q", got)
	}
	if got := metricValue(t, e.registry, "tally_admissions_total", "outcome", "admitted"); got != 1 {
		t.Errorf("admitted = %v, want 1", got)
	}
}

func TestCreateSessionLimits(t *testing.T) {
	for _, tc := range []struct {
		err     *domain.LimitExceededError
		want    string
		outcome string
	}{
		{
			&domain.LimitExceededError{Code: domain.CodeSessionLimit, Plan: "free", Usage: 10, Limit: 10, Period: period},
			`{"detail":{"error":"session_limit_exceeded","message":"Session limit exceeded: 10","plan":"free","current_usage":10,"limit":10,"period_start":"2026-11-01T00:00:00Z","resets_at":"2026-12-01T00:00:00Z"}}`,
			"session_limit_exceeded",
		},
		{
			&domain.LimitExceededError{Code: domain.CodeTranscriptionLimit, Plan: "student", Usage: 501, Limit: 500, Period: period},
			`{"detail":{"error":"transcription_limit_exceeded","message":"Total minutes limit exceeded: 500","plan":"student","current_usage":501,"limit":500,"period_start":"2026-11-01T00:00:00Z","resets_at":"2026-12-01T00:00:00Z"}}`,
			"transcription_limit_exceeded",
		},
	} {
		t.Run(tc.outcome, func(t *testing.T) {
			e := newEnv(t)
			e.accounts.createSession = func(context.Context, string, domain.NewSession, string) (domain.Session, error) {
				// Wrapped, as a layer in between might: still a 403.
				return domain.Session{}, fmt.Errorf("admitting: %w", tc.err)
			}
			r := e.do("POST", "/api/v1/sessions", e.token("u1"), validCreate)
			if r.Status != 403 || string(r.Body) != tc.want {
				t.Fatalf("got %d %s\nwant 403 %s", r.Status, r.Body, tc.want)
			}
			if got := metricValue(t, e.registry, "tally_admissions_total", "outcome", tc.outcome); got != 1 {
				t.Errorf("%s = %v, want 1", tc.outcome, got)
			}
		})
	}
}

func TestErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		status int
		code   string
	}{
		{"idempotency conflict", domain.Errorf(domain.CodeIdempotencyConflict, "Idempotency-Key reused with another body"), 409, "idempotency_conflict"},
		{"unavailable", domain.Unavailable("postgres", errors.New("dial tcp: connection refused")), 503, "unavailable"},
		{"timeout", domain.Errorf(domain.CodeTimeout, "accounting did not answer in time"), 504, "timeout"},
		{"deadline", fmt.Errorf("waiting for actor: %w", context.DeadlineExceeded), 504, "timeout"},
		{"unknown", errors.New("pq: secret table users_v2 is corrupt"), 500, "internal"},
		{"internal code", &domain.Error{Code: domain.CodeInternal, Message: "leaky detail"}, 500, "internal"},
		{"unmapped code", &domain.Error{Code: "made_up", Message: "leaky detail"}, 500, "internal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.accounts.createSession = func(context.Context, string, domain.NewSession, string) (domain.Session, error) {
				return domain.Session{}, tc.err
			}
			r := e.do("POST", "/api/v1/sessions", e.token("u1"), validCreate)
			b := wantError(t, r, tc.status, tc.code)
			if got := r.Header.Get("Retry-After"); (tc.status == 503) != (got == "1") {
				t.Errorf("Retry-After = %q for %d", got, tc.status)
			}
			if tc.status == 500 {
				if b.Detail.Message != "internal error" {
					t.Errorf("message %q leaks", b.Detail.Message)
				}
				if !strings.Contains(e.logs.String(), tc.err.Error()) {
					t.Errorf("the real error is not logged: %s", e.logs.String())
				}
			}
			if got := metricValue(t, e.registry, "tally_admissions_total", "outcome", "error"); got != 1 {
				t.Errorf("error outcome = %v, want 1", got)
			}
		})
	}
}

// The core bounds each call's time (actors/budget.go); a call that ran out
// of it, however it reports that, is a 504.
func TestAccountsTimeoutIs504(t *testing.T) {
	for name, err := range map[string]error{
		"coded":      &domain.Error{Code: domain.CodeTimeout, Message: "the user's accounting did not answer in time"},
		"from a ctx": context.DeadlineExceeded,
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			e.accounts.usage = func(context.Context, string) (domain.Report, error) { return domain.Report{}, err }
			r := e.do("GET", "/api/v1/usage", e.token("u1"), nil)
			wantError(t, r, 504, "timeout")
		})
	}
}

func TestPanicIs500(t *testing.T) {
	e := newEnv(t)
	e.accounts.usage = func(context.Context, string) (domain.Report, error) { panic("boom") }
	r := e.do("GET", "/api/v1/usage", e.token("u1"), nil)
	b := wantError(t, r, 500, "internal")
	if b.Detail.Message != "internal error" || !strings.Contains(e.logs.String(), "boom") {
		t.Errorf("message %q; logs %s", b.Detail.Message, e.logs.String())
	}
}

func TestCreateSessionDecoding(t *testing.T) {
	big := `{"title":"` + strings.Repeat("a", 64<<10) + `","language":"en","stt_provider":"google"}`
	for _, tc := range []struct {
		name   string
		body   string
		status int
		code   string
	}{
		{"empty", ``, 400, "bad_request"},
		{"malformed", `{"title":`, 400, "bad_request"},
		{"syntax", `{"title" "x"}`, 400, "bad_request"},
		{"array", `[]`, 400, "bad_request"},
		{"null", `null`, 400, "bad_request"},
		{"unknown field", `{"title":"a","language":"en","stt_provider":"google","plan":"pro"}`, 400, "bad_request"},
		{"trailing object", `{"title":"a","language":"en","stt_provider":"google"}{}`, 400, "bad_request"},
		{"trailing garbage", `{"title":"a","language":"en","stt_provider":"google"} x`, 400, "bad_request"},
		{"wrong type", `{"title":5,"language":"en","stt_provider":"google"}`, 400, "bad_request"},
		{"too large", big, 413, "payload_too_large"},
		{"trailing whitespace ok", `{"title":"a","language":"en","stt_provider":"google"}` + " \n", 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			r := e.do("POST", "/api/v1/sessions", e.token("u1"), tc.body)
			if tc.status == 200 {
				if r.Status != 200 {
					t.Fatalf("status %d: %s", r.Status, r.Body)
				}
				return
			}
			wantError(t, r, tc.status, tc.code)
			if calls := e.accounts.Calls(); len(calls) != 0 {
				t.Errorf("Accounts called: %q", calls)
			}
		})
	}
}

// A body over the limit without a Content-Length is cut off while reading.
func TestBodyLimitWithoutContentLength(t *testing.T) {
	e := newEnv(t)
	body := `{"title":"` + strings.Repeat("a", 70<<10) + `"}`
	req := httptest.NewRequest("POST", "/api/v1/sessions", io.MultiReader(strings.NewReader(body)))
	req.ContentLength = -1
	req.Header.Set("Authorization", "Bearer "+e.token("u1"))
	r := e.v.Serve(t, e.h, req)
	wantError(t, r, 413, "payload_too_large")
}

func TestCreateSessionValidation(t *testing.T) {
	e := newEnv(t)
	r := e.do("POST", "/api/v1/sessions", e.token("u1"), `{"title":"","language":"english please","stt_provider":"whisper"}`,
		"Idempotency-Key", strings.Repeat("k", 256))
	b := wantError(t, r, 422, "validation_failed")
	if got, want := fieldNames(b), []string{"title", "language", "stt_provider", "Idempotency-Key"}; !reflect.DeepEqual(got, want) {
		t.Errorf("fields %v, want %v", got, want)
	}
	r = e.do("POST", "/api/v1/sessions", e.token("u1"), `{}`)
	b = wantError(t, r, 422, "validation_failed")
	if got, want := fieldNames(b), []string{"title", "language", "stt_provider"}; !reflect.DeepEqual(got, want) {
		t.Errorf("fields of {} %v, want %v", got, want)
	}
	if calls := e.accounts.Calls(); len(calls) != 0 {
		t.Errorf("Accounts called: %q", calls)
	}
	r = e.do("POST", "/api/v1/sessions", e.token("u1"), validCreate, "Idempotency-Key", strings.Repeat("k", 255))
	if r.Status != 200 {
		t.Errorf("a 255-character key: %d %s", r.Status, r.Body)
	}
}

func TestGetSession(t *testing.T) {
	e := newEnv(t)
	completed := session("s-9", "u1")
	d := int64(95)
	completed.Status, completed.DurationSeconds = domain.StatusCompleted, &d
	e.accounts.getSession = func(_ context.Context, userID, id string) (domain.Session, error) {
		if id == "s-9" && userID == "u1" {
			return completed, nil
		}
		return domain.Session{}, domain.ErrNotFound
	}
	r := e.do("GET", "/api/v1/sessions/s-9", e.token("u1"), nil)
	var s map[string]any
	r.Decode(t, &s)
	if r.Status != 200 || s["duration_seconds"] != float64(95) || s["status"] != "completed" {
		t.Fatalf("got %d %s", r.Status, r.Body)
	}
	wantError(t, e.do("GET", "/api/v1/sessions/s-9", e.token("u2"), nil), 404, "not_found")
	n := len(e.accounts.Calls())
	// Ids that cannot exist never reach Accounts.
	for _, id := range []string{strings.Repeat("x", 129), "a%20b", "%C3%A9"} {
		wantError(t, e.do("GET", "/api/v1/sessions/"+id, e.token("u1"), nil), 404, "not_found")
	}
	if got := len(e.accounts.Calls()); got != n {
		t.Errorf("invalid ids reached Accounts: %q", e.accounts.Calls()[n:])
	}
}

func TestListSessions(t *testing.T) {
	e := newEnv(t)
	var all []domain.Session
	for i := range 5 {
		s := session(fmt.Sprintf("s-%d", i), "u1")
		s.CreatedAt = t0.Add(-time.Duration(i) * time.Millisecond * 1500)
		all = append(all, s)
	}
	var gotAfter []*domain.Cursor
	e.accounts.listSessions = func(_ context.Context, _ string, limit int, after *domain.Cursor) ([]domain.Session, error) {
		gotAfter = append(gotAfter, after)
		rest := all
		if after != nil {
			i := slices.IndexFunc(all, func(s domain.Session) bool { return s.ID == after.ID })
			if !all[i].CreatedAt.Equal(after.CreatedAt) {
				t.Errorf("cursor time %v, want %v", after.CreatedAt, all[i].CreatedAt)
			}
			rest = all[i+1:]
		}
		return rest[:min(limit, len(rest))], nil
	}
	type page struct {
		Items []struct {
			ID string `json:"id"`
		} `json:"items"`
		NextCursor *string `json:"next_cursor"`
	}
	var ids []string
	path := "/api/v1/sessions?limit=2"
	for pages := 0; ; pages++ {
		if pages > 3 {
			t.Fatal("paging does not end")
		}
		r := e.do("GET", path, e.token("u1"), nil)
		var p page
		r.Decode(t, &p)
		if r.Status != 200 {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
		for _, it := range p.Items {
			ids = append(ids, it.ID)
		}
		if p.NextCursor == nil {
			break
		}
		path = "/api/v1/sessions?limit=2&cursor=" + url.QueryEscape(*p.NextCursor)
	}
	if want := []string{"s-0", "s-1", "s-2", "s-3", "s-4"}; !reflect.DeepEqual(ids, want) {
		t.Errorf("ids %v, want %v", ids, want)
	}
	if got := e.accounts.Calls()[0]; got != "ListSessions u1 3 false" {
		t.Errorf("first call %q: the page size plus one tells whether there is more", got)
	}

	r := e.do("GET", "/api/v1/sessions", e.token("u1"), nil)
	if r.Status != 200 || !strings.Contains(string(r.Body), `"next_cursor":null`) {
		t.Errorf("default page: %d %s", r.Status, r.Body)
	}
	if got := e.accounts.Calls()[len(e.accounts.Calls())-1]; got != "ListSessions u1 21 false" {
		t.Errorf("default limit call %q", got)
	}

	e.accounts.listSessions = nil // empty list
	r = e.do("GET", "/api/v1/sessions", e.token("u1"), nil)
	if string(r.Body) != `{"items":[],"next_cursor":null}` {
		t.Errorf("empty list %s", r.Body)
	}

	for _, q := range []string{"limit=0", "limit=101", "limit=abc", "limit=", "cursor=%21%21", "cursor=", "cursor=" + strings.Repeat("A", 600),
		"cursor=bm90IGEgY3Vyc29y"} {
		r := e.do("GET", "/api/v1/sessions?"+q, e.token("u1"), nil)
		b := wantError(t, r, 422, "validation_failed")
		if f := fieldNames(b); len(f) != 1 || !strings.HasPrefix(q, f[0]+"=") {
			t.Errorf("%s: fields %v", q, f)
		}
	}
}

func TestUploadURL(t *testing.T) {
	e := newEnv(t)
	r := e.do("POST", "/api/v1/sessions/s-1/upload-url", e.token("u1"), `{"filename":"my talk #1.mp3","file_size_mb":12.5}`)
	var out struct {
		UploadURL string `json:"upload_url"`
		ExpiresAt string `json:"expires_at"`
	}
	r.Decode(t, &out)
	if r.Status != 200 {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	if !strings.HasPrefix(out.UploadURL, "https://uploads.example.com/base/s-1/my%20talk%20%231.mp3?expires=") {
		t.Errorf("url %s", out.UploadURL)
	}
	if out.ExpiresAt != "2026-11-14T09:45:00Z" {
		t.Errorf("expires_at %s", out.ExpiresAt)
	}
	g, err := transport.VerifyUploadURL(transport.UploadKey(secret), out.UploadURL, e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if g.SessionID != "s-1" || g.Filename != "my talk #1.mp3" || g.SizeMB != 12.5 || !g.ExpiresAt.Equal(t0.Add(15*time.Minute)) {
		t.Errorf("grant %+v", g)
	}
	if got := e.accounts.Calls(); !reflect.DeepEqual(got, []string{"PrepareUpload u1 s-1 12.5"}) {
		t.Errorf("calls %q", got)
	}

	r = e.do("POST", "/api/v1/sessions/s-1/upload-url", e.token("u1"), `{"filename":"../x","file_size_mb":0}`)
	b := wantError(t, r, 422, "validation_failed")
	if got := fieldNames(b); !reflect.DeepEqual(got, []string{"filename", "file_size_mb"}) {
		t.Errorf("fields %v", got)
	}
	for _, name := range []string{"", ".", "..", "a\\b", "a\x00b", "tab\there", strings.Repeat("é", 256)} {
		body, _ := json.Marshal(map[string]any{"filename": name, "file_size_mb": 1})
		b := wantError(t, e.do("POST", "/api/v1/sessions/s-1/upload-url", e.token("u1"), body), 422, "validation_failed")
		if got := fieldNames(b); !reflect.DeepEqual(got, []string{"filename"}) {
			t.Errorf("%q: fields %v", name, got)
		}
	}
	b = wantError(t, e.do("POST", "/api/v1/sessions/s-1/upload-url", e.token("u1"), `{}`), 422, "validation_failed")
	if got := fieldNames(b); !reflect.DeepEqual(got, []string{"filename", "file_size_mb"}) {
		t.Errorf("fields of {} %v", got)
	}
	wantError(t, e.do("POST", "/api/v1/sessions/s-1/upload-url", e.token("u1"), `{"filename":"a","file_size_mb":"1"}`), 400, "bad_request")

	e.accounts.prepareUpload = func(context.Context, string, string, float64) (domain.Session, domain.Plan, error) {
		return domain.Session{}, domain.Plan{}, &domain.LimitExceededError{Code: domain.CodeFileSizeLimit, Plan: "free", Usage: 61, Limit: 60, Period: period}
	}
	r = e.do("POST", "/api/v1/sessions/s-1/upload-url", e.token("u1"), `{"filename":"a.wav","file_size_mb":60.2}`)
	want := `{"detail":{"error":"file_size_limit_exceeded","message":"File size limit exceeded: 60 MB","plan":"free","current_usage":61,"limit":60,"period_start":"2026-11-01T00:00:00Z","resets_at":"2026-12-01T00:00:00Z"}}`
	if r.Status != 403 || string(r.Body) != want {
		t.Errorf("got %d %s\nwant %s", r.Status, r.Body, want)
	}
	e.accounts.prepareUpload = func(context.Context, string, string, float64) (domain.Session, domain.Plan, error) {
		return domain.Session{}, domain.Plan{}, domain.ErrNotFound
	}
	wantError(t, e.do("POST", "/api/v1/sessions/s-2/upload-url", e.token("u1"), `{"filename":"a.wav","file_size_mb":1}`), 404, "not_found")
}

func TestUsage(t *testing.T) {
	e := newEnv(t)
	r := e.do("GET", "/api/v1/usage", e.token("u1"), nil)
	want := `{"user_id":"u1","plan":"free","period_start":"2026-11-01T00:00:00Z","period_end":"2026-12-01T00:00:00Z",` +
		`"sessions":{"used":3,"limit":10,"remaining":7},"minutes":{"used":2,"used_seconds":125,"limit":120,"remaining":118},"max_file_size_mb":60}`
	if r.Status != 200 || string(r.Body) != want {
		t.Errorf("got %d %s\nwant %s", r.Status, r.Body, want)
	}
	ent, _ := domain.DefaultCatalog().Plan("enterprise")
	e.accounts.usage = func(context.Context, string) (domain.Report, error) {
		return report("u1", ent, domain.Usage{Sessions: 1000, Seconds: 1e6}), nil
	}
	r = e.do("GET", "/api/v1/usage", e.token("u1"), nil)
	want = `{"user_id":"u1","plan":"enterprise","period_start":"2026-11-01T00:00:00Z","period_end":"2026-12-01T00:00:00Z",` +
		`"sessions":{"used":1000,"limit":-1,"remaining":null},"minutes":{"used":16666,"used_seconds":1000000,"limit":-1,"remaining":null},"max_file_size_mb":500}`
	if r.Status != 200 || string(r.Body) != want {
		t.Errorf("unlimited: got %d %s\nwant %s", r.Status, r.Body, want)
	}
	// Over the limit (a completion may push usage past it): remaining is 0.
	e.accounts.usage = func(context.Context, string) (domain.Report, error) {
		return report("u1", freePlan(), domain.Usage{Sessions: 10, Seconds: 130 * 60}), nil
	}
	r = e.do("GET", "/api/v1/usage", e.token("u1"), nil)
	if !strings.Contains(string(r.Body), `"sessions":{"used":10,"limit":10,"remaining":0},"minutes":{"used":130,"used_seconds":7800,"limit":120,"remaining":0}`) {
		t.Errorf("over limit: %s", r.Body)
	}
}

func TestPlans(t *testing.T) {
	e := newEnv(t)
	r := e.do("GET", "/api/v1/plans", "", nil)
	want := `{"plans":[` +
		`{"name":"enterprise","max_sessions":-1,"max_total_minutes":-1,"max_file_size_mb":500},` +
		`{"name":"free","max_sessions":10,"max_total_minutes":120,"max_file_size_mb":60},` +
		`{"name":"pro","max_sessions":-1,"max_total_minutes":1200,"max_file_size_mb":200},` +
		`{"name":"student","max_sessions":100,"max_total_minutes":500,"max_file_size_mb":100}]}`
	if r.Status != 200 || string(r.Body) != want {
		t.Errorf("got %d %s\nwant %s", r.Status, r.Body, want)
	}
}

func TestAdminUsers(t *testing.T) {
	e := newEnv(t)
	r := e.do("PUT", "/admin/v1/users/alice@example.com", adminToken, `{"plan":"pro","billing_anchor":"2026-01-31T10:00:00+02:00"}`)
	if r.Status != 200 {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	if got := e.accounts.Calls()[0]; got != "PutUser alice@example.com pro 2026-01-31 08:00:00 +0000 UTC" {
		t.Errorf("call %q: the anchor must arrive in UTC", got)
	}
	var u struct {
		ID    string         `json:"id"`
		Plan  string         `json:"plan"`
		Usage map[string]any `json:"usage"`
	}
	r.Decode(t, &u)
	if u.ID != "alice@example.com" || u.Plan != "pro" || u.Usage["plan"] != "pro" {
		t.Errorf("user %s", r.Body)
	}
	r = e.do("PUT", "/admin/v1/users/bob", adminToken, `{"plan":"student"}`)
	if r.Status != 200 || e.accounts.Calls()[1] != "PutUser bob student <nil>" {
		t.Errorf("%d %s %q", r.Status, r.Body, e.accounts.Calls())
	}
	r = e.do("PUT", "/admin/v1/users/bob", adminToken, `{"plan":"student","billing_anchor":null}`)
	if r.Status != 200 {
		t.Errorf("null anchor: %d %s", r.Status, r.Body)
	}

	for _, tc := range []struct {
		path, body string
		fields     []string
	}{
		{"/admin/v1/users/bob", `{}`, []string{"plan"}},
		{"/admin/v1/users/bob", `{"plan":"gold"}`, []string{"plan"}},
		{"/admin/v1/users/bob", `{"plan":"pro","billing_anchor":"yesterday"}`, []string{"billing_anchor"}},
		// Its first period would end in year 10000, not a valid date-time.
		{"/admin/v1/users/bob", `{"plan":"pro","billing_anchor":"9999-12-31T00:00:00Z"}`, []string{"billing_anchor"}},
		{"/admin/v1/users/bob", `{"plan":"pro","billing_anchor":"9999-12-01T00:00:00Z"}`, []string{"billing_anchor"}},
		{"/admin/v1/users/b%20b", `{"plan":"pro"}`, []string{"id"}},
		{"/admin/v1/users/" + strings.Repeat("u", 129), `{"plan":"x"}`, []string{"id", "plan"}},
	} {
		b := wantError(t, e.do("PUT", tc.path, adminToken, tc.body), 422, "validation_failed")
		if got := fieldNames(b); !reflect.DeepEqual(got, tc.fields) {
			t.Errorf("%s %s: fields %v, want %v", tc.path, tc.body, got, tc.fields)
		}
	}
	wantError(t, e.do("PUT", "/admin/v1/users/bob", adminToken, `{"plan":"pro","extra":1}`), 400, "bad_request")

	r = e.do("GET", "/admin/v1/users/bob", adminToken, nil)
	var got struct {
		ID            string `json:"id"`
		BillingAnchor string `json:"billing_anchor"`
		Usage         struct {
			Sessions struct {
				Used int `json:"used"`
			} `json:"sessions"`
		} `json:"usage"`
	}
	r.Decode(t, &got)
	if r.Status != 200 || got.ID != "bob" || got.BillingAnchor != "2026-11-01T00:00:00Z" || got.Usage.Sessions.Used != 1 {
		t.Errorf("get user %d %s", r.Status, r.Body)
	}
	e.accounts.getUser = func(context.Context, string) (domain.User, domain.Report, error) {
		return domain.User{}, domain.Report{}, domain.ErrNotFound
	}
	wantError(t, e.do("GET", "/admin/v1/users/nobody", adminToken, nil), 404, "not_found")
	b := wantError(t, e.do("GET", "/admin/v1/users/no%20body", adminToken, nil), 422, "validation_failed")
	if f := fieldNames(b); !reflect.DeepEqual(f, []string{"id"}) {
		t.Errorf("fields %v", f)
	}
}

func TestResetUsage(t *testing.T) {
	e := newEnv(t)
	for _, body := range []any{nil, "", "{}", " {} "} {
		r := e.do("POST", "/admin/v1/users/bob/reset-usage", adminToken, body)
		var u struct {
			PeriodStart string `json:"period_start"`
		}
		r.Decode(t, &u)
		if r.Status != 200 || u.PeriodStart != "2026-11-14T09:30:00Z" {
			t.Errorf("body %q: %d %s", body, r.Status, r.Body)
		}
	}
	wantError(t, e.do("POST", "/admin/v1/users/bob/reset-usage", adminToken, `{"now":true}`), 400, "bad_request")
	wantError(t, e.do("POST", "/admin/v1/users/bob/reset-usage", adminToken, `[]`), 400, "bad_request")
	wantError(t, e.do("POST", "/admin/v1/users/b!b/reset-usage", adminToken, nil), 422, "validation_failed")
}

func TestCompleteAndFail(t *testing.T) {
	e := newEnv(t)
	r := e.do("POST", "/admin/v1/sessions/s-1/complete", adminToken, `{"duration_seconds":600}`)
	var s struct {
		Status          string `json:"status"`
		DurationSeconds *int64 `json:"duration_seconds"`
	}
	r.Decode(t, &s)
	if r.Status != 200 || s.Status != "completed" || s.DurationSeconds == nil || *s.DurationSeconds != 600 {
		t.Errorf("%d %s", r.Status, r.Body)
	}
	for _, body := range []string{`{}`, `{"duration_seconds":-1}`, `{"duration_seconds":86401}`, `{"duration_seconds":null}`} {
		b := wantError(t, e.do("POST", "/admin/v1/sessions/s-1/complete", adminToken, body), 422, "validation_failed")
		if f := fieldNames(b); !reflect.DeepEqual(f, []string{"duration_seconds"}) {
			t.Errorf("%s: fields %v", body, f)
		}
	}
	for _, body := range []string{``, `{"duration_seconds":1.5}`, `{"duration_seconds":"60"}`, `{"duration_seconds":1e30}`} {
		wantError(t, e.do("POST", "/admin/v1/sessions/s-1/complete", adminToken, body), 400, "bad_request")
	}
	for _, body := range []string{`{"duration_seconds":0}`, `{"duration_seconds":86400}`} {
		if r := e.do("POST", "/admin/v1/sessions/s-1/complete", adminToken, body); r.Status != 200 {
			t.Errorf("%s: %d %s", body, r.Status, r.Body)
		}
	}
	e.accounts.completeSession = func(context.Context, string, int64) (domain.Session, error) {
		return domain.Session{}, domain.Errorf(domain.CodeConflict, "session already completed with another duration")
	}
	wantError(t, e.do("POST", "/admin/v1/sessions/s-1/complete", adminToken, `{"duration_seconds":5}`), 409, "conflict")
	wantError(t, e.do("POST", "/admin/v1/sessions/"+strings.Repeat("s", 129)+"/complete", adminToken, `{"duration_seconds":5}`), 404, "not_found")

	for _, body := range []any{nil, `{}`} {
		r = e.do("POST", "/admin/v1/sessions/s-1/fail", adminToken, body)
		r.Decode(t, &s)
		if r.Status != 200 || s.Status != "failed" || s.DurationSeconds != nil {
			t.Errorf("fail %q: %d %s", body, r.Status, r.Body)
		}
	}
	wantError(t, e.do("POST", "/admin/v1/sessions/s-1/fail", adminToken, `{"reason":"x"}`), 400, "bad_request")
	e.accounts.failSession = func(context.Context, string) (domain.Session, error) { return domain.Session{}, domain.ErrNotFound }
	wantError(t, e.do("POST", "/admin/v1/sessions/s-404/fail", adminToken, nil), 404, "not_found")
}

func TestUserAuthRejections(t *testing.T) {
	e := newEnv(t)
	now := e.clock.Now()
	exp := now.Add(time.Hour).Unix()
	sign := func(header, payload string, key []byte) string {
		return signRaw(t, header, payload, key)
	}
	valid := e.token("u1")
	parts := strings.Split(valid, ".")
	tampered := parts[0] + "." + b64(`{"sub":"admin","exp":`+fmt.Sprint(exp)+`}`) + "." + parts[2]
	expired, _ := transport.IssueToken(secret, "u1", time.Minute, now.Add(-2*time.Minute))
	otherKey, _ := transport.IssueToken([]byte("another-secret"), "u1", time.Hour, now)

	for name, authz := range map[string]string{
		"no header":          "",
		"basic":              "Basic dTE6cGFzcw==",
		"empty bearer":       "Bearer ",
		"garbage":            "Bearer not.a.jwt",
		"alg none":           "Bearer " + b64(`{"alg":"none","typ":"JWT"}`) + "." + b64(`{"sub":"u1","exp":`+fmt.Sprint(exp)+`}`) + ".",
		"wrong key":          "Bearer " + otherKey,
		"expired":            "Bearer " + expired,
		"no exp":             "Bearer " + sign(`{"alg":"HS256","typ":"JWT"}`, `{"sub":"u1"}`, secret),
		"no sub":             "Bearer " + sign(`{"alg":"HS256","typ":"JWT"}`, `{"exp":`+fmt.Sprint(exp)+`}`, secret),
		"empty sub":          "Bearer " + sign(`{"alg":"HS256","typ":"JWT"}`, `{"sub":"","exp":`+fmt.Sprint(exp)+`}`, secret),
		"numeric sub":        "Bearer " + sign(`{"alg":"HS256","typ":"JWT"}`, `{"sub":42,"exp":`+fmt.Sprint(exp)+`}`, secret),
		"bad sub, wrong key": "Bearer " + sign(`{"alg":"HS256","typ":"JWT"}`, `{"sub":"u\u0000","exp":`+fmt.Sprint(exp)+`}`, []byte("another-secret")),
		"bad sub, expired":   "Bearer " + sign(`{"alg":"HS256","typ":"JWT"}`, `{"sub":"u\u0000","exp":`+fmt.Sprint(now.Add(-time.Minute).Unix())+`}`, secret),
		"HS384":              "Bearer " + sign(`{"alg":"HS384","typ":"JWT"}`, `{"sub":"u1","exp":`+fmt.Sprint(exp)+`}`, secret),
		"not yet valid":      "Bearer " + sign(`{"alg":"HS256","typ":"JWT"}`, `{"sub":"u1","exp":`+fmt.Sprint(exp)+`,"nbf":`+fmt.Sprint(exp-60)+`}`, secret),
		"tampered":           "Bearer " + tampered,
		"admin token":        "Bearer " + adminToken,
		"token no scheme":    valid,
	} {
		t.Run(name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/api/v1/usage", nil)
			if authz != "" {
				req.Header.Set("Authorization", authz)
			}
			r := e.v.Serve(t, e.h, req)
			wantError(t, r, 401, "unauthorized")
			if r.Header.Get("WWW-Authenticate") == "" {
				t.Error("no WWW-Authenticate header")
			}
		})
	}
	if calls := e.accounts.Calls(); len(calls) != 0 {
		t.Errorf("Accounts called for rejected tokens: %q", calls)
	}
	// The same valid token passes, with the scheme in any case.
	for _, scheme := range []string{"Bearer", "bearer", "BEARER"} {
		req := httptest.NewRequest("GET", "/api/v1/usage", nil)
		req.Header.Set("Authorization", scheme+" "+valid)
		if r := e.v.Serve(t, e.h, req); r.Status != 200 {
			t.Errorf("%s: %d %s", scheme, r.Status, r.Body)
		}
	}
}

// A verified token is cached, but its expiry is still checked every time.
func TestCachedTokenExpires(t *testing.T) {
	e := newEnv(t)
	tok, _ := transport.IssueToken(secret, "u1", time.Minute, e.clock.Now())
	if r := e.do("GET", "/api/v1/usage", tok, nil); r.Status != 200 {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	e.clock.Add(59 * time.Second)
	if r := e.do("GET", "/api/v1/usage", tok, nil); r.Status != 200 {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	e.clock.Add(time.Second)
	b := wantError(t, e.do("GET", "/api/v1/usage", tok, nil), 401, "unauthorized")
	if b.Detail.Message != "token is expired" {
		t.Errorf("message %q", b.Detail.Message)
	}
}

func TestAdminAuth(t *testing.T) {
	e := newEnv(t)
	wantError(t, e.do("GET", "/admin/v1/users/bob", e.token("bob"), nil), 403, "forbidden")
	wantError(t, e.do("POST", "/admin/v1/sessions/s-1/complete", e.token("bob"), `{"duration_seconds":1}`), 403, "forbidden")
	wantError(t, e.do("GET", "/admin/v1/users/bob", "", nil), 401, "unauthorized")
	wantError(t, e.do("GET", "/admin/v1/users/bob", adminToken+"x", nil), 401, "unauthorized")
	wantError(t, e.do("GET", "/admin/v1/users/bob", adminToken[:len(adminToken)-1], nil), 401, "unauthorized")
	expired, _ := transport.IssueToken(secret, "bob", time.Minute, e.clock.Now().Add(-time.Hour))
	wantError(t, e.do("GET", "/admin/v1/users/bob", expired, nil), 401, "unauthorized")
	wantError(t, e.do("GET", "/api/v1/sessions/s-1", adminToken, nil), 401, "unauthorized")
	if calls := e.accounts.Calls(); len(calls) != 0 {
		t.Errorf("Accounts called: %q", calls)
	}
}

// The public listener serves liveness, a bare readiness and the OpenAPI
// document; the metrics are the ops listener's (ops_test.go).
func TestOpsEndpoints(t *testing.T) {
	e := newEnv(t, func(o *transport.Options) {
		o.Checkers = []transport.Checker{checker{name: "postgres"}, checker{name: "redis"}}
	})
	r := e.do("GET", "/healthz", "", nil)
	if r.Status != 200 || string(r.Body) != `{"status":"ok"}` {
		t.Errorf("healthz %d %s", r.Status, r.Body)
	}
	r = e.do("GET", "/readyz", "", nil)
	if r.Status != 200 || string(r.Body) != `{"status":"ready"}` {
		t.Errorf("readyz %d %s", r.Status, r.Body)
	}
	r = e.do("GET", "/openapi.yaml", "", nil)
	if r.Status != 200 || r.Header.Get("Content-Type") != "application/yaml" || !bytes.Equal(r.Body, transport.OpenAPI()) {
		t.Errorf("openapi.yaml %d %s", r.Status, r.Header.Get("Content-Type"))
	}
}

// The Prometheus page (process internals, per-route traffic) is not the
// public listener's to serve any more.
func TestPublicMetricsIsNotServed(t *testing.T) {
	e := newEnv(t)
	e.do("POST", "/api/v1/sessions", e.token("u1"), validCreate)
	rec := httptest.NewRecorder() // not through e.do: openapi.yaml rightly has no /metrics
	e.h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 404 || rec.Body.String() != `{"detail":{"error":"not_found","message":"no such route"}}` {
		t.Errorf("public /metrics: %d %s", rec.Code, rec.Body)
	}
}

// The public /readyz says ready or not, nothing more: no check names, no
// driver errors (which name hosts and ports behind the service), and it
// logs why for the operator. A stuck checker still cannot hold it past its
// timeout.
func TestReadyzFailing(t *testing.T) {
	const dialErr = "dial tcp 127.0.0.1:1: connect: connection refused"
	e := newEnv(t, func(o *transport.Options) {
		o.Checkers = []transport.Checker{
			checker{name: "postgres", err: errors.New(dialErr)},
			checker{name: "redis"},
			checker{name: "stuck", wait: true},
		}
	})
	start := time.Now()
	r := e.do("GET", "/readyz", "", nil)
	if took := time.Since(start); took > 2900*time.Millisecond {
		t.Errorf("readyz took %v; a stuck checker must not hold it past its timeout", took)
	}
	want := `{"detail":{"error":"unavailable","message":"not ready"}}`
	if r.Status != 503 || string(r.Body) != want || r.Header.Get("Retry-After") != "1" {
		t.Errorf("got %d %s (Retry-After %q)\nwant 503 %s", r.Status, r.Body, r.Header.Get("Retry-After"), want)
	}
	for _, secret := range []string{dialErr, "127.0.0.1", "postgres", "stuck", "timeout"} {
		if bytes.Contains(r.Body, []byte(secret)) {
			t.Errorf("public /readyz tells %q: %s", secret, r.Body)
		}
	}
	if logs := e.logs.String(); !strings.Contains(logs, `"msg":"not ready"`) || !strings.Contains(logs, dialErr) {
		t.Errorf("the failing check is not logged:\n%s", logs)
	}
}

// Redis down keeps the instance in rotation: Tally admits exactly from
// Postgres without it. The public answer is plain "ready"; "degraded" and
// the Redis error are the ops listener's (TestOpsReadyzDetail).
func TestReadyzDegradedWhenOnlyOptionalFails(t *testing.T) {
	e := newEnv(t, func(o *transport.Options) {
		o.Checkers = []transport.Checker{
			checker{name: "postgres"},
			optionalChecker{checker{name: "redis", err: errors.New("dial tcp 127.0.0.1:6379: connection refused")}},
		}
	})
	r := e.do("GET", "/readyz", "", nil)
	if want := `{"status":"ready"}`; r.Status != 200 || string(r.Body) != want {
		t.Errorf("got %d %s\nwant 200 %s", r.Status, r.Body, want)
	}
	e = newEnv(t, func(o *transport.Options) {
		o.Checkers = []transport.Checker{
			checker{name: "postgres", err: errors.New("down")},
			optionalChecker{checker{name: "redis"}},
		}
	})
	if r := e.do("GET", "/readyz", "", nil); r.Status != 503 {
		t.Errorf("store down: %d %s, want 503", r.Status, r.Body)
	}
}

func TestRequestIDAndAccessLog(t *testing.T) {
	e := newEnv(t)
	r := e.do("GET", "/api/v1/usage", e.token("u1"), nil, "X-Request-Id", "req-42.a:b")
	if got := r.Header.Get("X-Request-Id"); got != "req-42.a:b" {
		t.Errorf("request id %q", got)
	}
	r = e.do("GET", "/api/v1/usage", e.token("u1"), nil, "X-Request-Id", "bad id\x7f")
	generated := r.Header.Get("X-Request-Id")
	if generated == "" || strings.Contains(generated, "bad") {
		t.Errorf("insane request id echoed or none generated: %q", generated)
	}
	var found int
	for line := range strings.SplitSeq(strings.TrimSpace(e.logs.String()), "\n") {
		var l map[string]any
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("log line is not JSON: %s", line)
		}
		if l["msg"] != "http request" {
			continue
		}
		found++
		if l["method"] != "GET" || l["route"] != "/api/v1/usage" || l["status"] != float64(200) || l["user_id"] != "u1" {
			t.Errorf("access log line %s", line)
		}
		if _, ok := l["latency_ms"].(float64); !ok {
			t.Errorf("no latency in %s", line)
		}
		if id := l["request_id"]; id != "req-42.a:b" && id != generated {
			t.Errorf("request id %v in %s", id, line)
		}
	}
	if found != 2 {
		t.Errorf("%d access log lines, want 2", found)
	}
}

func TestUnknownRoute(t *testing.T) {
	e := newEnv(t)
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/nope", nil))
	if rec.Code != 404 || rec.Body.String() != `{"detail":{"error":"not_found","message":"no such route"}}` {
		t.Errorf("%d %s", rec.Code, rec.Body)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	base := transport.Options{
		Accounts: &fakeAccounts{}, Catalog: domain.DefaultCatalog(), JWTSecret: secret, AdminToken: adminToken,
		UploadBaseURL: "http://127.0.0.1:8080/uploads", Providers: []string{"google"},
	}
	if _, err := transport.New(base); err != nil {
		t.Fatalf("valid options: %v", err)
	}
	for name, tweak := range map[string]func(*transport.Options){
		"no accounts":     func(o *transport.Options) { o.Accounts = nil },
		"no catalog":      func(o *transport.Options) { o.Catalog = nil },
		"no secret":       func(o *transport.Options) { o.JWTSecret = nil },
		"no admin token":  func(o *transport.Options) { o.AdminToken = "" },
		"no providers":    func(o *transport.Options) { o.Providers = nil },
		"relative base":   func(o *transport.Options) { o.UploadBaseURL = "/uploads" },
		"base with query": func(o *transport.Options) { o.UploadBaseURL = "http://x/u?a=1" },
		"dup checkers":    func(o *transport.Options) { o.Checkers = []transport.Checker{checker{name: "a"}, checker{name: "a"}} },
		"same registry twice": func(o *transport.Options) {
			o.Registry = prometheus.NewRegistry()
			if _, err := transport.New(*o); err != nil {
				t.Fatal(err)
			}
		},
	} {
		o := base
		tweak(&o)
		if _, err := transport.New(o); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
}

// plainMetric is the value of an unlabelled counter or gauge.
func plainMetric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func metricValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return -1
}

func TestMaxInFlight(t *testing.T) {
	e := newEnv(t, func(o *transport.Options) { o.MaxInFlight = 1 })
	entered, release := make(chan struct{}), make(chan struct{})
	e.accounts.usage = func(context.Context, string) (domain.Report, error) {
		close(entered)
		<-release
		return report("u1", freePlan(), domain.Usage{}), nil
	}
	tok := e.token("u1")
	done := make(chan *apitest.Response)
	go func() { done <- e.do("GET", "/api/v1/usage", tok, nil) }()
	<-entered
	r := e.do("GET", "/api/v1/sessions/s-1", tok, nil)
	wantError(t, r, 503, "unavailable")
	if r.Header.Get("Retry-After") != "1" {
		t.Error("no Retry-After")
	}
	wantSecureHeaders(t, "a shed 503", r)
	// Shed before any work: not even the token is looked at.
	wantError(t, e.do("POST", "/api/v1/sessions", "not-a-token", map[string]string{"title": "t"}), 503, "unavailable")
	if got := plainMetric(t, e.registry, "tally_http_shed_total"); got != 2 {
		t.Errorf("tally_http_shed_total = %v, want 2", got)
	}
	if got := plainMetric(t, e.registry, "tally_http_in_flight"); got != 1 {
		t.Errorf("tally_http_in_flight = %v while one request is held, want 1", got)
	}
	// Ops endpoints are never shed: probes must see the process.
	if r := e.do("GET", "/healthz", "", nil); r.Status != 200 {
		t.Errorf("healthz %d", r.Status)
	}
	close(release)
	if r := <-done; r.Status != 200 {
		t.Errorf("first request %d %s", r.Status, r.Body)
	}
	if r := e.do("GET", "/api/v1/sessions/s-1", tok, nil); r.Status != 200 {
		t.Errorf("after release %d %s", r.Status, r.Body)
	}
}

// wantSecureHeaders checks that a response forbids content sniffing and
// caching (answers carry a user's usage and sessions).
func wantSecureHeaders(t *testing.T, what string, r *apitest.Response) {
	t.Helper()
	if got := r.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("%s: X-Content-Type-Options %q, want nosniff", what, got)
	}
	if got := r.Header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("%s: Cache-Control %q, want no-store", what, got)
	}
}

// Every kind of answer carries the headers: a success, a client error, an
// auth failure, an ops endpoint.
func TestResponsesForbidSniffingAndCaching(t *testing.T) {
	e := newEnv(t)
	e.accounts.usage = func(context.Context, string) (domain.Report, error) {
		return report("u1", freePlan(), domain.Usage{}), nil
	}
	tok := e.token("u1")
	wantSecureHeaders(t, "200", e.do("GET", "/api/v1/usage", tok, nil))
	wantSecureHeaders(t, "422", e.do("POST", "/api/v1/sessions", tok, map[string]string{"title": ""}))
	wantSecureHeaders(t, "401", e.do("GET", "/api/v1/usage", "", nil))
	wantSecureHeaders(t, "/healthz", e.do("GET", "/healthz", "", nil))
}

// A token whose exp lies further ahead than the service's maximum lifetime
// (TALLY_JWT_MAX_TTL; 24h by default) is refused — a leaked long-lived
// token would otherwise outlive every rotation — while one within it is
// accepted, on first sight and from the cache alike.
func TestLongLivedTokensAreRefused(t *testing.T) {
	e := newEnv(t)
	e.accounts.usage = func(context.Context, string) (domain.Report, error) {
		return report("u1", freePlan(), domain.Usage{}), nil
	}
	for _, ttl := range []time.Duration{25 * time.Hour, 876000 * time.Hour} {
		tok, err := transport.IssueToken(secret, "u1", ttl, e.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		b := wantError(t, e.do("GET", "/api/v1/usage", tok, nil), 401, "unauthorized")
		if !strings.Contains(b.Detail.Message, "TALLY_JWT_MAX_TTL") {
			t.Errorf("ttl %s: message %q does not name the bound", ttl, b.Detail.Message)
		}
	}
	tok, err := transport.IssueToken(secret, "u1", 23*time.Hour, e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // verified, then from the cache
		if r := e.do("GET", "/api/v1/usage", tok, nil); r.Status != 200 {
			t.Fatalf("a 23h token: %d %s", r.Status, r.Body)
		}
	}
}

// With TALLY_JWT_ISSUER and TALLY_JWT_AUDIENCE set, a token signed with the
// right secret is still refused unless its iss is the issuer and its aud
// names the audience: the same secret may sign tokens for other services.
func TestIssuerAndAudienceAreChecked(t *testing.T) {
	e := newEnv(t, func(o *transport.Options) { o.JWTIssuer, o.JWTAudience = "https://id.example.com", "tally" })
	e.accounts.usage = func(context.Context, string) (domain.Report, error) {
		return report("u1", freePlan(), domain.Usage{}), nil
	}
	sign := func(iss string, aud ...string) string {
		t.Helper()
		now := e.clock.Now()
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
			Subject: "u1", Issuer: iss, Audience: aud,
			IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)),
		}).SignedString(secret)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	if r := e.do("GET", "/api/v1/usage", sign("https://id.example.com", "billing", "tally"), nil); r.Status != 200 {
		t.Fatalf("right issuer and audience: %d %s", r.Status, r.Body)
	}
	// What `tally token` issues under that configuration passes too.
	tok, err := transport.IssueTokenFor(secret, "u1", time.Hour, e.clock.Now(), "https://id.example.com", "tally")
	if err != nil {
		t.Fatal(err)
	}
	if r := e.do("GET", "/api/v1/usage", tok, nil); r.Status != 200 {
		t.Fatalf("IssueTokenFor: %d %s", r.Status, r.Body)
	}
	for name, tok := range map[string]string{
		"no iss or aud":  e.token("u1"),
		"another issuer": sign("https://evil.example.com", "tally"),
		"no audience":    sign("https://id.example.com"),
		"another aud":    sign("https://id.example.com", "billing"),
	} {
		if r := e.do("GET", "/api/v1/usage", tok, nil); r.Status != 401 {
			t.Errorf("%s: %d %s, want 401", name, r.Status, r.Body)
		}
	}
}
