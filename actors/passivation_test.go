package actors

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
)

// A request that reaches a shard right after it asked the user's actor to
// passivate is held and replayed to the respawned actor, never sent to the
// stopping one (protoactor drops what a stopped actor still had queued).
// Unlike TestPassivationLosesNoMessage, which needs a request to meet a
// stopping actor by chance, this orders the two itself: one sender, one
// shard, the passivating sweep first and the request right behind it.
func TestRequestBehindPassivationIsReplayed(t *testing.T) {
	svc, err := New(Options{Store: openSQLite(t), Catalog: domain.DefaultCatalog(), Shards: 1,
		IdleTimeout: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if _, err := svc.Usage(ctx, "behind"); err != nil { // the actor is live
			cancel()
			t.Fatalf("round %d, before: %v", i, err)
		}
		// No request since the last scan (as the shard's scan would have
		// recorded it), and a sweep from far in the future finds the
		// actor idle, seals its
		// route and asks it to passivate; the usage request, sent as soon
		// as the route is sealed, reaches the shard right behind it.
		if r := svc.routes.get("behind"); r != nil {
			r.touched.Store(false)
		}
		svc.system.Root.Send(svc.shards[0], &sweep{now: time.Now().Add(2 * time.Hour), scan: true})
		for svc.routes.get("behind") != nil {
			runtime.Gosched()
		}
		_, err := svc.Usage(ctx, "behind")
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
