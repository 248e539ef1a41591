package actors

import (
	"context"
	"errors"
	"hash/fnv"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/persistence/sqlite"
)

func TestRejectBoardExpiresAndClears(t *testing.T) {
	b := newRejectBoard()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	full := errors.New("full")
	if _, err := b.get("u", t0); err != nil {
		t.Fatalf("empty board: %v", err)
	}
	b.post("u", full, t0.Add(time.Second), 0)
	if _, err := b.get("u", t0.Add(time.Second-time.Nanosecond)); err != full {
		t.Fatalf("before until: %v", err)
	}
	if _, err := b.get("other", t0); err != nil {
		t.Fatalf("other user: %v", err)
	}
	if _, err := b.get("u", t0.Add(time.Second)); err != nil {
		t.Fatalf("at until: %v", err)
	}
	// A later post replaces the earlier one, with the epoch it was
	// decided under.
	full1 := &domain.LimitExceededError{Code: domain.CodeSessionLimit, Plan: "free", Usage: 10, Limit: 10}
	full2 := *full1
	full2.Usage = 11
	b.post("v", full1, t0.Add(time.Second), 3)
	b.post("v", &full2, t0.Add(2*time.Second), 4)
	if epoch, got := b.get("v", t0.Add(time.Second)); got != &full2 || epoch != 4 {
		t.Fatalf("after a second post: %v under epoch %d", got, epoch)
	}
	b.clear("v")
	b.post("u", full, t0.Add(time.Hour), 0)
	b.clear("u")
	if _, err := b.get("u", t0); err != nil || b.len() != 0 {
		t.Fatalf("after clear: %v, %d entries", err, b.len())
	}
}

// A user over its limit is posted on the board by its actor (so the next
// over-limit creates skip the actor hop), only for as long as the actor
// would itself answer from memory, and an admin change through the service
// takes the posting down before it is answered.
func TestOverLimitIsPostedUntilTheUserChanges(t *testing.T) {
	store, err := sqlite.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	if err := store.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	svc, err := New(Options{Store: store, Catalog: domain.DefaultCatalog(), Shards: 2,
		Now: func() time.Time { return now }, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in := domain.NewSession{Title: "t", Language: "en", STTProvider: "google"}
	for range 10 {
		if _, err := svc.CreateSession(ctx, "full", in, ""); err != nil {
			t.Fatal(err)
		}
	}
	_, err = svc.CreateSession(ctx, "full", in, "")
	if domain.ErrorCode(err) != domain.CodeSessionLimit {
		t.Fatalf("11th on free: %v", err)
	}
	_, posted := svc.deps.rejects.get("full", now)
	if domain.ErrorCode(posted) != domain.CodeSessionLimit {
		t.Fatalf("rejection not posted: %v", posted)
	}
	if _, err := svc.deps.rejects.get("full", now.Add(rejectFreshness)); err != nil {
		t.Fatalf("posting outlives the actor's own freshness bound: %v", err)
	}
	if _, err := svc.CreateSession(ctx, "full", in, ""); domain.ErrorCode(err) != domain.CodeSessionLimit {
		t.Fatalf("12th on free: %v", err)
	}
	if _, _, err := svc.PutUser(ctx, testAdmin, "full", ptrTo("student"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.deps.rejects.get("full", now); err != nil {
		t.Fatalf("posting survived a plan change: %v", err)
	}
	if _, err := svc.CreateSession(ctx, "full", in, ""); err != nil {
		t.Fatalf("after upgrade: %v", err)
	}
}

// testAdmin is who the tests' admin changes are made by.
var testAdmin = domain.Origin{Admin: "actors-test", RequestID: "req-actors-test"}

func ptrTo[T any](v T) *T { return &v }

// userHash is FNV-1a written out; it must stay the library's, so that
// shards and writers keep the distribution measured with it.
func TestUserHashIsFNV1a(t *testing.T) {
	for _, id := range []string{"", "a", "alice", "load-3803b213-9999", "ünïcødé"} {
		h := fnv.New32a()
		_, _ = h.Write([]byte(id))
		if got, want := userHash(id), h.Sum32(); got != want {
			t.Errorf("userHash(%q) = %d, want %d", id, got, want)
		}
	}
}

// A refusal is answered from memory only while the store confirmed the
// actor's counters within rejectFreshness: a plan upgrade made through
// another process (here: straight in the shared store) is seen once that
// window has passed, and the next create is admitted. Without the rule,
// the actor would keep refusing a user who has paid for more.
func TestRefusalFromMemoryExpiresAfterAChangeElsewhere(t *testing.T) {
	store := openSQLite(t)
	var clock atomic.Int64
	start := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	clock.Store(start.UnixNano())
	svc, err := New(Options{Store: store, Catalog: domain.DefaultCatalog(), Shards: 2,
		Now: func() time.Time { return time.Unix(0, clock.Load()).UTC() }, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in := domain.NewSession{Title: "t", Language: "en", STTProvider: "google"}
	for range 10 {
		if _, err := svc.CreateSession(ctx, "elsewhere", in, ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := svc.CreateSession(ctx, "elsewhere", in, ""); domain.ErrorCode(err) != domain.CodeSessionLimit {
		t.Fatalf("11th on free: %v", err)
	}
	// Another process upgrades the user: this actor is not told.
	if _, err := store.PutUser(ctx, persistence.UserChange{ID: "elsewhere", Plan: ptrTo("student"), Now: start, By: testAdmin}); err != nil {
		t.Fatal(err)
	}
	clock.Store(start.Add(rejectFreshness + time.Millisecond).UnixNano())
	if _, err := svc.CreateSession(ctx, "elsewhere", in, ""); err != nil {
		t.Fatalf("create %v after an upgrade made elsewhere: %v; the refusal from memory outlived its freshness", rejectFreshness, err)
	}
}
