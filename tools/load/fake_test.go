package load

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	fakeSecret = "fake-tally-jwt-secret-0123456789"
	fakeAdmin  = "fake-tally-admin-token-0123456789"
	fakeLimit  = 10
	fakePeriod = "2026-11-01T00:00:00Z"
)

// fakeTally imitates the parts of Tally that `tally load` talks to: the
// admin PUT, creates admitting the first fakeLimit per user and refusing
// the rest with 403, usage and session GETs. Its knobs make it break an
// invariant on purpose, so that the tests can show verification notices.
type fakeTally struct {
	t *testing.T

	// overAdmit admits this many creates per user beyond the limit.
	overAdmit int
	// lose makes GET of the user's first session answer 404.
	lose string
	// undercount makes usage report this many sessions fewer than admitted.
	undercount int
	// fail500Every answers 500 to every n-th create (after admitting it,
	// like a bug in the answer path would).
	fail500Every int64
	// stallFirst makes the first create of the run sleep this long.
	stallFirst time.Duration
	// chunked writes create answers in two flushed pieces (chunked encoding).
	chunked bool
	// closeEvery answers every n-th create with Connection: close.
	closeEvery int64

	mu       sync.Mutex
	plans    map[string]string
	used     map[string]int
	sessions map[string]string // id → user
	first    map[string]string // user → its first session id
	tokens   map[string]string // token → user (verified once)

	puts, creates atomic.Int64
	stalled       atomic.Bool
}

func newFake(t *testing.T) *fakeTally {
	return &fakeTally{t: t, plans: map[string]string{}, used: map[string]int{},
		sessions: map[string]string{}, first: map[string]string{}, tokens: map[string]string{}}
}

// start serves the fake until the test ends.
func (f *fakeTally) start() *httptest.Server {
	srv := httptest.NewServer(f.handler())
	f.t.Cleanup(srv.Close)
	return srv
}

// handler routes the fake's endpoints; several servers may share one fake,
// as the nodes of a cluster share one store.
func (f *fakeTally) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /admin/v1/users/{id}", f.putUser)
	mux.HandleFunc("POST /api/v1/sessions", f.create)
	mux.HandleFunc("GET /api/v1/sessions/{id}", f.getSession)
	mux.HandleFunc("GET /api/v1/usage", f.usage)
	return mux
}

func (f *fakeTally) user(w http.ResponseWriter, r *http.Request) (string, bool) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		http.Error(w, `{"detail":{"error":"unauthorized"}}`, http.StatusUnauthorized)
		return "", false
	}
	f.mu.Lock()
	sub, ok := f.tokens[tok]
	f.mu.Unlock()
	if ok {
		return sub, true
	}
	var claims jwt.RegisteredClaims
	_, err := jwt.ParseWithClaims(tok, &claims, func(*jwt.Token) (any, error) { return []byte(fakeSecret), nil },
		jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired())
	if err != nil {
		http.Error(w, `{"detail":{"error":"unauthorized"}}`, http.StatusUnauthorized)
		return "", false
	}
	f.mu.Lock()
	f.tokens[tok] = claims.Subject
	f.mu.Unlock()
	return claims.Subject, true
}

func (f *fakeTally) putUser(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+fakeAdmin {
		http.Error(w, `{"detail":{"error":"unauthorized"}}`, http.StatusUnauthorized)
		return
	}
	var in struct {
		Plan string `json:"plan"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Plan == "" {
		http.Error(w, `{"detail":{"error":"bad_request"}}`, http.StatusBadRequest)
		return
	}
	id := r.PathValue("id")
	f.puts.Add(1)
	f.mu.Lock()
	f.plans[id] = in.Plan
	used := f.used[id]
	f.mu.Unlock()
	fmt.Fprintf(w, `{"id":%q,"plan":%q,"usage":{"period_start":%q,"sessions":{"used":%d,"limit":%d}}}`, id, in.Plan, fakePeriod, used, fakeLimit)
}

func (f *fakeTally) create(w http.ResponseWriter, r *http.Request) {
	user, ok := f.user(w, r)
	if !ok {
		return
	}
	var in struct {
		Title, Language, STTProvider string
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Title == "" {
		http.Error(w, `{"detail":{"error":"bad_request"}}`, http.StatusBadRequest)
		return
	}
	n := f.creates.Add(1)
	if f.stallFirst > 0 && f.stalled.CompareAndSwap(false, true) {
		time.Sleep(f.stallFirst)
	}
	if f.closeEvery > 0 && n%f.closeEvery == 0 {
		w.Header().Set("Connection", "close")
	}
	w.Header().Set("Content-Type", "application/json")
	f.mu.Lock()
	if f.used[user] >= fakeLimit+f.overAdmit {
		used := f.used[user]
		f.mu.Unlock()
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, `{"detail":{"error":"session_limit_exceeded","message":"Session limit exceeded: %d","current_usage":%d}}`, fakeLimit, used)
		return
	}
	f.used[user]++
	id := fmt.Sprintf("%s-s%d", user, f.used[user])
	f.sessions[id] = user
	if f.first[user] == "" {
		f.first[user] = id
	}
	f.mu.Unlock()
	if f.fail500Every > 0 && n%f.fail500Every == 0 {
		http.Error(w, `{"detail":{"error":"internal"}}`, http.StatusInternalServerError)
		return
	}
	body := fmt.Sprintf(`{"id":%q,"user_id":%q,"title":%q,"status":"created","duration_seconds":null}`, id, user, in.Title)
	if f.chunked {
		half := len(body) / 2
		fmt.Fprint(w, body[:half])
		w.(http.Flusher).Flush()
		fmt.Fprint(w, body[half:])
		return
	}
	fmt.Fprint(w, body)
}

func (f *fakeTally) getSession(w http.ResponseWriter, r *http.Request) {
	user, ok := f.user(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	f.mu.Lock()
	owner, found := f.sessions[id]
	lost := f.lose == user && f.first[user] == id
	f.mu.Unlock()
	if !found || owner != user || lost {
		http.Error(w, `{"detail":{"error":"not_found"}}`, http.StatusNotFound)
		return
	}
	fmt.Fprintf(w, `{"id":%q,"user_id":%q}`, id, user)
}

func (f *fakeTally) usage(w http.ResponseWriter, r *http.Request) {
	user, ok := f.user(w, r)
	if !ok {
		return
	}
	f.mu.Lock()
	used := max(f.used[user]-f.undercount, 0)
	f.mu.Unlock()
	fmt.Fprintf(w, `{"user_id":%q,"period_start":%q,"sessions":{"used":%d,"limit":%d,"remaining":%d}}`, user, fakePeriod, used, fakeLimit, max(fakeLimit-used, 0))
}

// usedBy is what the fake counted for user.
func (f *fakeTally) usedBy(user string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.used[user]
}

// fakeConfig is a short closed-loop run against the fake.
func fakeConfig(url string) Config {
	return Config{
		URL:         url,
		Secret:      fakeSecret,
		AdminToken:  fakeAdmin,
		Users:       20,
		Concurrency: 8,
		Requests:    500,
		Timeout:     5 * time.Second,
	}
}
