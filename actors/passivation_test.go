package actors

import (
	"context"
	"log/slog"
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
		// A sweep from far in the future finds the actor idle and asks it
		// to passivate; the usage request queues right behind it.
		svc.system.Root.Send(svc.shards[0], &sweep{now: time.Now().Add(2 * time.Hour), scan: true})
		_, err := svc.Usage(ctx, "behind")
		cancel()
		if err != nil {
			t.Fatalf("round %d: the request behind a passivation was not answered: %v", i, err)
		}
	}
}
