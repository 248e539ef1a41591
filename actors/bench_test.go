package actors_test

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/tally-dev/tally/actors"
	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// memStore answers from memory, so that benchmarks measure the actors, not
// a database. Only what the benchmarked paths call is implemented.
type memStore struct {
	persistence.Store
	anchor time.Time
}

func (m memStore) EnsureUser(_ context.Context, id string, _ time.Time) (domain.User, error) {
	return domain.User{ID: id, Plan: "free", BillingAnchor: m.anchor, Version: 1}, nil
}

func (m memStore) LoadUsage(context.Context, string, time.Time) (persistence.Counters, error) {
	return persistence.Counters{Usage: domain.Usage{Sessions: 10}, Version: 10}, nil
}

func (m memStore) LoadUserUsage(ctx context.Context, id string, start time.Time) (domain.User, persistence.Counters, error) {
	u, _ := m.EnsureUser(ctx, id, m.anchor)
	c, err := m.LoadUsage(ctx, id, start)
	return u, c, err
}
func (m memStore) EnsureUsersUsage(ctx context.Context, loads []persistence.UserLoad) ([]persistence.UserLoaded, error) {
	out := make([]persistence.UserLoaded, len(loads))
	for i, l := range loads {
		u, _ := m.EnsureUser(ctx, l.ID, l.Now)
		c, _ := m.LoadUsage(ctx, l.ID, u.Period(l.Now).Start)
		out[i] = persistence.UserLoaded{User: u, Period: u.Period(l.Now), Counters: c}
	}
	return out, nil
}

func (m memStore) PruneIdempotencyKeys(context.Context, time.Time) (int64, error) { return 0, nil }

// BenchmarkActorRoundTrip measures a request answered from memory:
//   - usage: a read through the shard to the user's actor and back (the
//     actor hop every create takes);
//   - over-limit: a create by a user at the limit, which after the actor's
//     first refusal is answered from the reject board without the hop.
//
// The cluster/ cases are the same on a cluster node that owns every
// partition (Options.Ownership): what checking ownership costs.
func BenchmarkActorRoundTrip(b *testing.B) {
	users := make([]string, 1000)
	for u := range users {
		users[u] = fmt.Sprintf("u%d", u)
	}
	roundTrips(b, "", newService(b, memStore{anchor: time.Now().Add(-time.Hour)}, time.Hour), users)
	own := &fakeOwnership{}
	for p := range domain.Partitions {
		own.set(domain.Partition(p), 1)
	}
	cluster, err := actors.New(actors.Options{Store: memStore{anchor: time.Now().Add(-time.Hour)}, Catalog: domain.DefaultCatalog(),
		IdleTimeout: time.Hour, Shards: 4, RequestTimeout: 30 * time.Second, Logger: slog.New(slog.DiscardHandler), Ownership: own})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cluster.Close)
	roundTrips(b, "cluster/", cluster, users)
}

func roundTrips(b *testing.B, prefix string, svc *actors.Service, users []string) {
	ctx := context.Background()
	b.Run(prefix+"usage", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, err := svc.Usage(ctx, users[i%len(users)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	})
	b.Run(prefix+"over-limit", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				_, err := svc.CreateSession(ctx, users[i%len(users)], in, "")
				if domain.ErrorCode(err) != domain.CodeSessionLimit {
					b.Fatalf("got %v", err)
				}
				i++
			}
		})
	})
}

// BenchmarkActorMemory reports the heap held per live user actor (with
// its shard's bookkeeping), the figure behind "≤ 2 KB per active user".
func BenchmarkActorMemory(b *testing.B) {
	const users = 100000
	for i := 0; i < b.N; i++ {
		svc := newService(b, memStore{anchor: time.Now().Add(-time.Hour)}, time.Hour)
		ctx := context.Background()
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for u := 0; u < users; u++ {
			if _, err := svc.Usage(ctx, fmt.Sprintf("user-%07d", u)); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if n := svc.LiveActors(); n != users {
			b.Fatalf("%d live actors, want %d", n, users)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/users, "heap-bytes/actor")
		svc.Close()
	}
}
