package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/persistence/sqlite"
)

// loadCountingStore counts the store reads cold actors make, and holds the
// first EnsureUsersUsage call until release is closed.
type loadCountingStore struct {
	persistence.Store
	batches, loads, ensureUser, loadUsage atomic.Int64
	first                                 sync.Once
	firstLen                              atomic.Int64 // loads in the held first call
	entered, release                      chan struct{}
}

func (s *loadCountingStore) EnsureUsersUsage(ctx context.Context, loads []persistence.UserLoad) ([]persistence.UserLoaded, error) {
	s.batches.Add(1)
	s.loads.Add(int64(len(loads)))
	s.first.Do(func() {
		s.firstLen.Store(int64(len(loads)))
		close(s.entered)
		<-s.release
	})
	return s.Store.EnsureUsersUsage(ctx, loads)
}

func (s *loadCountingStore) EnsureUser(ctx context.Context, id string, now time.Time) (domain.User, error) {
	s.ensureUser.Add(1)
	return s.Store.EnsureUser(ctx, id, now)
}

func (s *loadCountingStore) LoadUsage(ctx context.Context, id string, start time.Time) (persistence.Counters, error) {
	s.loadUsage.Add(1)
	return s.Store.LoadUsage(ctx, id, start)
}

func openSQLite(t *testing.T) persistence.Store {
	t.Helper()
	store, err := sqlite.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	if err := store.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return store
}

// N cold users activated together are loaded in batches: the first actor's
// load starts at once (no timer), the others queue behind it and share
// ceil((N-k)/loaderMaxBatch) more calls, k being the loads the first call
// took — instead of 2N round trips
// (EnsureUser, then LoadUsage, per actor).
func TestColdActorsShareLoads(t *testing.T) {
	const n = 600
	cs := &loadCountingStore{Store: openSQLite(t), entered: make(chan struct{}), release: make(chan struct{})}
	svc, err := New(Options{Store: cs, Catalog: domain.DefaultCatalog(), Shards: 4, RequestTimeout: 2 * time.Minute,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	in := domain.NewSession{Title: "t", Language: "en", STTProvider: "google"}

	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err := svc.CreateSession(ctx, fmt.Sprintf("cold-%03d", i), in, "")
			errs <- err
		})
	}
	// Hold the first load until every other cold actor has queued its own.
	// The first call may already hold several (those queued before the
	// loader woke up).
	<-cs.entered
	first := int(cs.firstLen.Load())
	deadline := time.Now().Add(30 * time.Second)
	for len(svc.deps.loader.queue) < n-first {
		if time.Now().After(deadline) {
			close(cs.release)
			t.Fatalf("only %d of %d cold actors queued a load within 30s (%d in the first call)", len(svc.deps.loader.queue), n-first, first)
		}
		time.Sleep(time.Millisecond)
	}
	close(cs.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	want := 1 + (n-first+loaderMaxBatch-1)/loaderMaxBatch
	if got := cs.batches.Load(); got != int64(want) || cs.loads.Load() != n {
		t.Fatalf("%d loads in %d calls, want %d in %d", cs.loads.Load(), got, n, want)
	}
	if e, l := cs.ensureUser.Load(), cs.loadUsage.Load(); e != 0 || l != 0 {
		t.Fatalf("cold actors also called EnsureUser %d and LoadUsage %d times", e, l)
	}
	t.Logf("%d cold users: %d store reads (one by one: %d)", n, cs.batches.Load(), 2*n)
	for _, id := range []string{"cold-000", "cold-599"} {
		rep, err := svc.Usage(context.Background(), id)
		if err != nil || rep.Usage.Sessions != 1 {
			t.Fatalf("%s: usage %+v, %v; want 1 session", id, rep.Usage, err)
		}
	}
}

// faultyLoads makes EnsureUsersUsage fail, panic or hang on demand.
type faultyLoads struct {
	persistence.Store
	mode  atomic.Int32 // 0 pass, 1 fail, 2 panic, 3 hang until unblock (ignoring ctx)
	calls atomic.Int64
	hang  chan struct{}
}

func (f *faultyLoads) EnsureUsersUsage(ctx context.Context, loads []persistence.UserLoad) ([]persistence.UserLoaded, error) {
	f.calls.Add(1)
	switch f.mode.Load() {
	case 1:
		return nil, domain.Unavailable("database", errors.New("injected: connection refused"))
	case 2:
		panic("injected loader panic")
	case 3:
		<-f.hang
		return nil, domain.Unavailable("database", errors.New("injected: hung"))
	}
	return f.Store.EnsureUsersUsage(ctx, loads)
}

// A failed or panicking batch answers every actor waiting on it with the
// error — 503 for a store failure, 500 for a bug — and the next load works.
func TestLoaderFailureAnswersEveryWaiter(t *testing.T) {
	fs := &faultyLoads{Store: openSQLite(t)}
	l := newLoader(fs, nil)
	t.Cleanup(l.close)
	for _, tc := range []struct {
		mode int32
		code domain.Code
	}{{1, domain.CodeUnavailable}, {2, domain.CodeInternal}} {
		fs.mode.Store(tc.mode)
		var wg sync.WaitGroup
		codes := make([]domain.Code, 20)
		for i := range codes {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				_, err := l.load(ctx, fmt.Sprintf("u%d", i), time.Now())
				codes[i] = domain.ErrorCode(err)
			})
		}
		wg.Wait()
		for i, c := range codes {
			if c != tc.code {
				t.Fatalf("mode %d: waiter %d got code %q, want %q", tc.mode, i, c, tc.code)
			}
		}
	}
	fs.mode.Store(0)
	got, err := l.load(context.Background(), "after", time.Now())
	if err != nil || got.User.ID != "after" || got.User.Version != 1 {
		t.Fatalf("after the failures: %+v, %v", got, err)
	}
}

// A store that hangs (even one ignoring its context) holds no actor past its
// deadline: the wait ends with a 503, and a cold user's create is answered.
func TestLoaderHangEndsAtTheDeadline(t *testing.T) {
	fs := &faultyLoads{Store: openSQLite(t), hang: make(chan struct{})}
	svc, err := New(Options{Store: fs, Catalog: domain.DefaultCatalog(), Shards: 2, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	t.Cleanup(func() { close(fs.hang) }) // runs first: lets the loader finish before Close
	fs.mode.Store(3)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = svc.CreateSession(ctx, "stuck", domain.NewSession{Title: "t", Language: "en", STTProvider: "google"}, "")
	if code := domain.ErrorCode(err); code != domain.CodeUnavailable && code != domain.CodeTimeout {
		t.Fatalf("create with a hung load: %v, want unavailable or timeout", err)
	}
	// The actor is free again: its next request waits (behind the hung
	// batch) only until its own deadline too.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	_, err = svc.Usage(ctx2, "stuck")
	if code := domain.ErrorCode(err); code != domain.CodeUnavailable && code != domain.CodeTimeout {
		t.Fatalf("usage with a hung load: %v, want unavailable or timeout", err)
	}
}
