package actors

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// heldReads blocks LoadUserUsage (what a usage request re-reads) while
// hold is armed, until release is closed.
type heldReads struct {
	persistence.Store
	hold    atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (h *heldReads) LoadUserUsage(ctx context.Context, userID string, periodStart time.Time) (domain.User, persistence.Counters, error) {
	if h.hold.Load() {
		h.entered <- struct{}{}
		<-h.release
	}
	return h.Store.LoadUserUsage(ctx, userID, periodStart)
}

// A request that reaches a shard while the user's actor is stopping is
// held and replayed to the respawned actor, never sent to the stopping one
// (protoactor drops what a stopped actor still had queued). Unlike
// TestPassivationLosesNoMessage, which needs a request to meet a stopping
// actor by chance, this orders everything itself: the actor is kept busy
// on a store read, the shard seals its route and queues the passivate
// behind that read, and only then is the next request sent — through the
// shard, since the route is sealed. Released, the actor finishes the read,
// takes the passivate and stops; the request must still be answered.
func TestRequestBehindPassivationIsReplayed(t *testing.T) {
	store := &heldReads{Store: openSQLite(t), entered: make(chan struct{}), release: make(chan struct{})}
	svc, err := New(Options{Store: store, Catalog: domain.DefaultCatalog(), Shards: 1,
		IdleTimeout: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	for i := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if _, err := svc.Usage(ctx, "behind"); err != nil { // the actor is live
			cancel()
			t.Fatalf("round %d, before: %v", i, err)
		}
		store.hold.Store(true)
		store.release = make(chan struct{})
		busy := make(chan error, 1)
		go func() { _, err := svc.Usage(ctx, "behind"); busy <- err }()
		<-store.entered // the actor is inside the store read
		store.hold.Store(false)
		// No request since the last scan (as the shard's scan would have
		// recorded it), and a sweep from far in the future finds the actor
		// idle, seals its route and queues the passivate behind the read.
		if r := svc.routes.get("behind"); r != nil {
			r.touched.Store(false)
		}
		// A shard stops at most passivateBatch actors per sweep, in map
		// order, and the earlier rounds' cold users are idle too: sweep
		// until this one's turn has come (bounded, never a hang).
		for deadline := time.Now().Add(10 * time.Second); svc.routes.get("behind") != nil; {
			if time.Now().After(deadline) {
				cancel()
				t.Fatalf("round %d: the idle actor's route was never sealed", i)
			}
			svc.system.Root.Send(svc.shards[0], &sweep{now: time.Now().Add(2 * time.Hour), scan: true})
			time.Sleep(time.Millisecond)
		}
		// The request, enqueued at the shard now (the route is sealed);
		// then a cold user's request through the same shard, answered
		// only after the shard has handled the first (one mailbox, in
		// order) — by holding it while the actor is stopping.
		m := &getUsage{user: "behind", call: newCall(time.Now().Add(5 * time.Second))}
		svc.send("behind", userHash("behind"), m)
		if _, err := svc.Usage(ctx, fmt.Sprintf("cold-%d", i)); err != nil {
			cancel()
			t.Fatal(err)
		}
		close(store.release)
		if err := <-busy; err != nil {
			cancel()
			t.Fatalf("round %d: the request the actor was busy with: %v", i, err)
		}
		var err error
		select {
		case r := <-m.reply():
			err = r.err
		case <-ctx.Done():
			err = ctx.Err()
		}
		cancel()
		if err != nil {
			t.Fatalf("round %d: the request behind a passivation was not answered: %v", i, err)
		}
	}
}

// A user whose route has a request between looking the route up and
// enqueueing its message is not passivated: sealing fails, and the shard
// tries again on a later sweep. Were the actor asked to stop anyway, that
// message could land behind the passivate message and be dropped with the
// stopped actor. The test holds the route open itself (as such a request
// does) and orders the sweep before a cold user's request through the same
// shard, so it knows when the sweep has been handled.
func TestRouteInUseIsNotSealed(t *testing.T) {
	svc, err := New(Options{Store: openSQLite(t), Catalog: domain.DefaultCatalog(), Shards: 1,
		IdleTimeout: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := svc.Usage(ctx, "busy"); err != nil {
		t.Fatal(err)
	}
	r := svc.routes.get("busy")
	if r == nil || !r.enter() {
		t.Fatal("no open route to a live actor")
	}
	// The request has been between enter and its send since before the
	// last scan: only the seal can keep the actor from passivating.
	r.touched.Store(false)
	sweepThenSync := func(i int) {
		t.Helper()
		svc.system.Root.Send(svc.shards[0], &sweep{now: time.Now().Add(2 * time.Hour), scan: true})
		if _, err := svc.Usage(ctx, fmt.Sprintf("cold-%d", i)); err != nil { // through the shard, after the sweep
			t.Fatal(err)
		}
	}
	sweepThenSync(1)
	if svc.routes.get("busy") != r || r.senders.Load() != 1 {
		t.Fatalf("route sealed or dropped (senders %d) while a request was sending through it", r.senders.Load())
	}
	r.leave()
	r.touched.Store(false)
	sweepThenSync(2)
	if svc.routes.get("busy") != nil || r.senders.Load() != -1 {
		t.Fatalf("an idle actor's route was not sealed and dropped (senders %d)", r.senders.Load())
	}
	if _, err := svc.Usage(ctx, "busy"); err != nil {
		t.Fatalf("after passivation: %v", err)
	}
}
