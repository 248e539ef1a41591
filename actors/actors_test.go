package actors_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tally-dev/tally/actors"
	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/persistence/sqlite"
)

func openStore(t testing.TB) persistence.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

func newService(t testing.TB, store persistence.Store, idle time.Duration) *actors.Service {
	t.Helper()
	// Tests bound each call with their own (shorter) context deadline.
	svc, err := actors.New(actors.Options{Store: store, Catalog: domain.DefaultCatalog(), IdleTimeout: idle, Shards: 4,
		RequestTimeout: 30 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	return svc
}

var in = domain.NewSession{Title: "t", Language: "en", STTProvider: "google"}

// testAdmin is who the tests' admin changes are made by.
var testAdmin = domain.Origin{Admin: "actors-test", RequestID: "req-actors-test"}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Users' actors are passivated and respawned continually while requests
// keep arriving: every request must still be answered (none dropped behind
// a Poison), and the counts must be exact. docs/decisions/0003 records 10–13 lost per
// 5 s with a naive Poison; this pattern must lose none.
func TestPassivationLosesNoMessage(t *testing.T) {
	store := openStore(t)
	svc := newService(t, store, time.Millisecond) // sweep every 10 ms
	const users, rounds = 8, 40
	for u := 0; u < users; u++ {
		if _, _, err := svc.PutUser(ctxFor(t, 5*time.Second), testAdmin, fmt.Sprintf("p%d", u), ptr("enterprise"), nil); err != nil {
			t.Fatal(err)
		}
	}
	var admitted, answered atomic.Int64
	var minLive atomic.Int64
	minLive.Store(1 << 30)
	stop := make(chan struct{})
	go func() { // watch passivation happen
		for {
			select {
			case <-stop:
				return
			default:
			}
			if n := svc.LiveActors(); n < minLive.Load() {
				minLive.Store(n)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	var wg sync.WaitGroup
	for u := 0; u < users; u++ {
		for g := 0; g < 3; g++ {
			wg.Add(1)
			go func(u, g int) {
				defer wg.Done()
				user := fmt.Sprintf("p%d", u)
				for r := 0; r < rounds; r++ {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					var err error
					if g == 0 {
						_, err = svc.Usage(ctx, user)
					} else {
						_, err = svc.CreateSession(ctx, user, in, "")
						if err == nil {
							admitted.Add(1)
						}
					}
					cancel()
					if err != nil {
						t.Errorf("%s round %d: %v (a message lost in passivation times out)", user, r, err)
						return
					}
					answered.Add(1)
					if r%5 == 0 {
						time.Sleep(15 * time.Millisecond) // long enough to be swept
					}
				}
			}(u, g)
		}
	}
	wg.Wait()
	close(stop)
	if got, want := answered.Load(), int64(users*3*rounds); got != want {
		t.Fatalf("answered %d of %d", got, want)
	}
	if minLive.Load() >= users {
		t.Fatalf("actors were never passivated during the run (min live %d): the test proved nothing", minLive.Load())
	}
	var total int64
	for u := 0; u < users; u++ {
		rep, err := svc.Usage(ctxFor(t, 5*time.Second), fmt.Sprintf("p%d", u))
		if err != nil {
			t.Fatal(err)
		}
		total += rep.Usage.Sessions
	}
	if total != admitted.Load() {
		t.Fatalf("store counts %d sessions, callers were told %d", total, admitted.Load())
	}
}

func TestIdleActorsArePassivated(t *testing.T) {
	svc := newService(t, openStore(t), 2*time.Second)
	for u := 0; u < 50; u++ {
		if _, err := svc.Usage(ctxFor(t, 5*time.Second), fmt.Sprintf("idle%d", u)); err != nil {
			t.Fatal(err)
		}
	}
	if n := svc.LiveActors(); n != 50 {
		t.Fatalf("live actors after touching 50 users: %d", n)
	}
	deadline := time.Now().Add(15 * time.Second)
	for svc.LiveActors() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("idle actors still live: %d", svc.LiveActors())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// faultyStore wraps a store to make Admit panic or hang on demand.
type faultyStore struct {
	persistence.Store
	panics atomic.Int32
	hang   atomic.Bool
}

func (f *faultyStore) Admit(ctx context.Context, reqs []persistence.AdmitRequest) ([]persistence.AdmitResult, error) {
	if f.panics.Add(-1) >= 0 {
		panic("injected store panic")
	}
	if f.hang.Load() {
		<-ctx.Done()
		return nil, domain.Unavailable("database", ctx.Err())
	}
	return f.Store.Admit(ctx, reqs)
}

// A panic inside a user's actor answers the caller with an internal error
// at once (not a timeout) and the next request works on reloaded state.
func TestPanicAnswersAndRecovers(t *testing.T) {
	fs := &faultyStore{Store: openStore(t)}
	svc := newService(t, fs, time.Minute)
	if _, err := svc.CreateSession(ctxFor(t, 5*time.Second), "crashy", in, ""); err != nil {
		t.Fatal(err)
	}
	fs.panics.Store(1)
	start := time.Now()
	_, err := svc.CreateSession(ctxFor(t, 5*time.Second), "crashy", in, "")
	if domain.ErrorCode(err) != domain.CodeInternal || time.Since(start) > 2*time.Second {
		t.Fatalf("after a panic: %v after %s, want an internal error at once", err, time.Since(start))
	}
	if _, err := svc.CreateSession(ctxFor(t, 5*time.Second), "crashy", in, ""); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	rep, err := svc.Usage(ctxFor(t, 5*time.Second), "crashy")
	if err != nil || rep.Usage.Sessions != 2 {
		t.Fatalf("usage %+v err %v, want 2 sessions", rep.Usage, err)
	}
}

// A store that does not answer within the request's deadline yields a 503
// or 504 code, never a hang and never an admission.
func TestDeadlineBoundsTheWait(t *testing.T) {
	fs := &faultyStore{Store: openStore(t)}
	svc := newService(t, fs, time.Minute)
	fs.hang.Store(true)
	start := time.Now()
	_, err := svc.CreateSession(ctxFor(t, 200*time.Millisecond), "slow", in, "")
	code := domain.ErrorCode(err)
	if code != domain.CodeUnavailable && code != domain.CodeTimeout {
		t.Fatalf("got %v, want unavailable or timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("waited %s past a 200ms deadline", d)
	}
	fs.hang.Store(false)
	rep, err := svc.Usage(ctxFor(t, 5*time.Second), "slow")
	if err != nil || rep.Usage.Sessions != 0 {
		t.Fatalf("usage %+v err %v, want nothing admitted", rep.Usage, err)
	}
}

// The service's request timeout bounds a call whose context has no
// deadline (the HTTP edge sets none): a hung store yields an answer in
// time, not a wait for as long as the store hangs.
func TestRequestTimeoutBoundsACallWithoutDeadline(t *testing.T) {
	fs := &faultyStore{Store: openStore(t)}
	svc, err := actors.New(actors.Options{Store: fs, Catalog: domain.DefaultCatalog(), Shards: 2,
		RequestTimeout: 300 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	if _, err := svc.Usage(ctxFor(t, 5*time.Second), "bounded"); err != nil {
		t.Fatal(err)
	}
	fs.hang.Store(true)
	start := time.Now()
	_, err = svc.CreateSession(context.Background(), "bounded", in, "")
	if code := domain.ErrorCode(err); code != domain.CodeUnavailable && code != domain.CodeTimeout {
		t.Fatalf("got %v, want unavailable or timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("answered after %s with a 300ms request timeout", d)
	}
}

// Plan changes go through the user's actor: the very next admission uses
// the new plan, and usage so far is kept.
func TestPlanChangeAppliesToNextAdmission(t *testing.T) {
	svc := newService(t, openStore(t), time.Minute)
	ctx := ctxFor(t, 10*time.Second)
	for i := 0; i < 10; i++ {
		if _, err := svc.CreateSession(ctx, "up", in, ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := svc.CreateSession(ctx, "up", in, ""); domain.ErrorCode(err) != domain.CodeSessionLimit {
		t.Fatalf("11th on free: %v", err)
	}
	if _, _, err := svc.PutUser(ctx, testAdmin, "up", ptr("student"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.CreateSession(ctx, "up", in, ""); err != nil {
		t.Fatalf("after upgrade: %v", err)
	}
	if _, _, err := svc.PutUser(ctx, testAdmin, "up", ptr("no-such-plan"), nil); domain.ErrorCode(err) != domain.CodeValidation {
		t.Fatalf("unknown plan: %v", err)
	}
}

// An anchor whose periods RFC 3339 cannot write is refused by the core,
// whoever calls it, and changes nothing.
func TestPutUserRefusesAnUnwritableAnchor(t *testing.T) {
	svc := newService(t, openStore(t), time.Minute)
	ctx := ctxFor(t, 10*time.Second)
	for _, a := range []time.Time{
		time.Date(9999, 12, 15, 0, 0, 0, 0, time.UTC),
		time.Date(0, 12, 31, 0, 0, 0, 0, time.UTC),
	} {
		if _, _, err := svc.PutUser(ctx, testAdmin, "anchored", ptr("student"), &a); domain.ErrorCode(err) != domain.CodeValidation {
			t.Errorf("anchor %v: %v, want a validation error", a, err)
		}
	}
	if _, _, err := svc.GetUser(ctx, "anchored"); !errors.Is(err, domain.ErrNotFound) {
		t.Fatalf("a refused PUT created the user: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

// recordingCache keeps the last counters put for each user.
type recordingCache struct {
	mu  sync.Mutex
	put map[string]persistence.Counters
}

func (r *recordingCache) Put(userID string, _ time.Time, c persistence.Counters) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.put == nil {
		r.put = make(map[string]persistence.Counters)
	}
	r.put[userID] = c
}

func (r *recordingCache) last(userID string) (persistence.Counters, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.put[userID]
	return c, ok
}

// lostReplyStore commits an admission and then reports a broken connection,
// as when the COMMIT reply is lost: the outcome is unknown to the caller
// although the row is committed.
type lostReplyStore struct {
	persistence.Store
	lose atomic.Int32
}

func (l *lostReplyStore) Admit(ctx context.Context, reqs []persistence.AdmitRequest) ([]persistence.AdmitResult, error) {
	res, err := l.Store.Admit(ctx, reqs)
	if err == nil && l.lose.Add(-1) >= 0 {
		return nil, domain.Unavailable("database", errors.New("read tcp: connection reset by peer (after COMMIT)"))
	}
	return res, err
}

// A lost COMMIT reply is resolved by looking the outcome up, never by
// guessing: the committed admission is answered 200, and a retry with the
// same Idempotency-Key is counted once (invariant 5).
func TestLostCommitReplyIsResolvedByLookup(t *testing.T) {
	for _, key := range []string{"retry-key-1", ""} {
		name := "with key"
		if key == "" {
			name = "without key"
		}
		t.Run(name, func(t *testing.T) {
			ls := &lostReplyStore{Store: openStore(t)}
			cache := &recordingCache{}
			svc, err := actors.New(actors.Options{Store: ls, Cache: cache, Catalog: domain.DefaultCatalog(), IdleTimeout: time.Minute,
				Shards: 4, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(svc.Close)
			user := "lost-" + strings.ReplaceAll(name, " ", "-")
			ls.lose.Store(1)
			first, err := svc.CreateSession(ctxFor(t, 5*time.Second), user, in, key)
			if err != nil {
				t.Fatalf("lost reply: %v; the committed admission must be found and answered", err)
			}
			// The cache heard of the commit without waiting for the user's
			// next request (which may never come).
			if c, ok := cache.last(user); !ok || c.Sessions != 1 {
				t.Fatalf("cache holds %+v (ok %v) after the resolved commit; want 1 session", c, ok)
			}
			if key != "" {
				again, err := svc.CreateSession(ctxFor(t, 5*time.Second), user, in, key)
				if err != nil || again.ID != first.ID {
					t.Fatalf("retry: %+v %v, want the same session %s", again, err, first.ID)
				}
			}
			rep, err := svc.Usage(ctxFor(t, 5*time.Second), user)
			if err != nil || rep.Usage.Sessions != 1 {
				t.Fatalf("usage %+v %v, want exactly 1 session", rep.Usage, err)
			}
		})
	}
}

func TestIdempotencyKeySemantics(t *testing.T) {
	svc := newService(t, openStore(t), time.Minute)
	ctx := ctxFor(t, 20*time.Second)

	a, err := svc.CreateSession(ctx, "idem", in, "k1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := svc.CreateSession(ctx, "idem", in, "k1")
	if err != nil || b.ID != a.ID {
		t.Fatalf("replay: %+v %v, want session %s", b, err, a.ID)
	}
	other := in
	other.Title = "another body"
	if _, err := svc.CreateSession(ctx, "idem", other, "k1"); domain.ErrorCode(err) != domain.CodeIdempotencyConflict {
		t.Fatalf("same key, other body: %v, want idempotency_conflict", err)
	}
	// The same key for another user is another request.
	c, err := svc.CreateSession(ctx, "idem-2", in, "k1")
	if err != nil || c.ID == a.ID {
		t.Fatalf("other user's key: %+v %v", c, err)
	}
	// Fill the quota; a keyed 403 replays as the same 403 even after an upgrade.
	for i := 0; i < 9; i++ {
		if _, err := svc.CreateSession(ctx, "idem", in, ""); err != nil {
			t.Fatal(err)
		}
	}
	_, err = svc.CreateSession(ctx, "idem", in, "k-full")
	var le *domain.LimitExceededError
	if !errors.As(err, &le) || le.Usage != 10 {
		t.Fatalf("at the limit: %v", err)
	}
	if _, _, err := svc.PutUser(ctx, testAdmin, "idem", ptr("student"), nil); err != nil {
		t.Fatal(err)
	}
	_, err = svc.CreateSession(ctx, "idem", in, "k-full")
	var le2 *domain.LimitExceededError
	if !errors.As(err, &le2) || *le2 != *le {
		t.Fatalf("replayed 403: %v, want the first answer %v", err, le)
	}
	if _, err := svc.CreateSession(ctx, "idem", in, "k-new"); err != nil {
		t.Fatalf("a new key after the upgrade: %v", err)
	}
	rep, _ := svc.Usage(ctx, "idem")
	if rep.Usage.Sessions != 11 {
		t.Fatalf("sessions %d, want 11 (replays count nothing)", rep.Usage.Sessions)
	}
}

// Ten concurrent requests with one key: one session, ten identical answers.
func TestSameKeyConcurrently(t *testing.T) {
	svc := newService(t, openStore(t), time.Minute)
	var wg sync.WaitGroup
	ids := make([]string, 10)
	for i := range ids {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s, err := svc.CreateSession(ctxFor(t, 10*time.Second), "conc", in, "same")
			if err != nil {
				t.Errorf("request %d: %v", i, err)
			}
			ids[i] = s.ID
		}(i)
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("different sessions for one key: %v", ids)
		}
	}
	rep, _ := svc.Usage(ctxFor(t, 5*time.Second), "conc")
	if rep.Usage.Sessions != 1 {
		t.Fatalf("sessions %d, want 1", rep.Usage.Sessions)
	}
}

// countingStore counts Admit calls (transactions) and their sizes.
type countingStore struct {
	persistence.Store
	calls, reqs atomic.Int64
	failNext    atomic.Int32 // fail this many Admit calls before the store sees them
}

func (c *countingStore) Admit(ctx context.Context, reqs []persistence.AdmitRequest) ([]persistence.AdmitResult, error) {
	if c.failNext.Add(-1) >= 0 {
		return nil, domain.Unavailable("database", errors.New("injected: connection refused"))
	}
	c.calls.Add(1)
	c.reqs.Add(int64(len(reqs)))
	return c.Store.Admit(ctx, reqs)
}

// One hot user with many concurrent creates: the actor keeps several
// admissions in flight, so they share transactions (pipelining + group
// commit), and every one is answered after its commit.
func TestHotUserIsPipelined(t *testing.T) {
	cs := &countingStore{Store: openStore(t)}
	svc := newService(t, cs, time.Minute)
	if _, _, err := svc.PutUser(ctxFor(t, 5*time.Second), testAdmin, "hot", ptr("enterprise"), nil); err != nil {
		t.Fatal(err)
	}
	const n = 400
	var wg sync.WaitGroup
	ids := make(chan string, n)
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < n/32; j++ {
				s, err := svc.CreateSession(ctxFor(t, 10*time.Second), "hot", in, "")
				if err != nil {
					t.Error(err)
					return
				}
				ids <- s.ID
			}
		}()
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		seen[id] = true
	}
	rep, err := svc.Usage(ctxFor(t, 5*time.Second), "hot")
	if err != nil || rep.Usage.Sessions != int64(len(seen)) || len(seen) != n/32*32 {
		t.Fatalf("usage %+v err %v, %d distinct sessions answered", rep.Usage, err, len(seen))
	}
	if calls, reqs := cs.calls.Load(), cs.reqs.Load(); calls >= reqs {
		t.Fatalf("%d transactions for %d admissions: no batching happened", calls, reqs)
	} else {
		t.Logf("%d admissions in %d transactions (%.1f per commit)", reqs, calls, float64(reqs)/float64(calls))
	}
}

// A reservation is released when its write fails: with one session left and
// the first write failing (nothing committed), the failed request gets a
// 503 and exactly one later request is admitted.
func TestFailedWriteReleasesReservation(t *testing.T) {
	cs := &countingStore{Store: openStore(t)}
	svc := newService(t, cs, time.Minute)
	ctx := ctxFor(t, 10*time.Second)
	for i := 0; i < 9; i++ {
		if _, err := svc.CreateSession(ctx, "rel", in, ""); err != nil {
			t.Fatal(err)
		}
	}
	cs.failNext.Store(1)
	var wg sync.WaitGroup
	var ok, limited, unavailable atomic.Int32
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := svc.CreateSession(ctxFor(t, 10*time.Second), "rel", in, "")
			switch domain.ErrorCode(err) {
			case "":
				ok.Add(1)
			case domain.CodeSessionLimit:
				limited.Add(1)
			case domain.CodeUnavailable:
				unavailable.Add(1)
			default:
				t.Errorf("unexpected %v", err)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 1 || unavailable.Load() != 1 || limited.Load() != 6 {
		t.Fatalf("ok %d, unavailable %d, limited %d; want 1, 1, 6", ok.Load(), unavailable.Load(), limited.Load())
	}
	rep, _ := svc.Usage(ctx, "rel")
	if rep.Usage.Sessions != 10 {
		t.Fatalf("sessions %d, want 10", rep.Usage.Sessions)
	}
}

// slowAdmitStore holds every Admit for a while, so that requests pile up
// behind an admission in flight.
type slowAdmitStore struct {
	persistence.Store
	delay time.Duration
}

func (s *slowAdmitStore) Admit(ctx context.Context, reqs []persistence.AdmitRequest) ([]persistence.AdmitResult, error) {
	time.Sleep(s.delay)
	return s.Store.Admit(ctx, reqs)
}

// Creates parked behind a reservation are decided again when the writer
// admits the reserved one and answers it itself (no admitDone message):
// the settled log wakes the actor. With one session left and the commit
// held up, eight concurrent creates give one 201 and seven 403s, each
// well before its deadline — not seven timeouts.
func TestParkedCreatesWakeOnADirectAnswer(t *testing.T) {
	svc := newService(t, &slowAdmitStore{Store: openStore(t), delay: 100 * time.Millisecond}, time.Minute)
	for i := 0; i < 9; i++ {
		if _, err := svc.CreateSession(ctxFor(t, 5*time.Second), "parked", in, ""); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	var ok, limited atomic.Int32
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := svc.CreateSession(ctxFor(t, 3*time.Second), "parked", in, "")
			switch domain.ErrorCode(err) {
			case "":
				ok.Add(1)
			case domain.CodeSessionLimit:
				limited.Add(1)
			default:
				t.Errorf("unexpected %v", err)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 1 || limited.Load() != 7 {
		t.Fatalf("ok %d, limited %d; want 1 and 7", ok.Load(), limited.Load())
	}
}
