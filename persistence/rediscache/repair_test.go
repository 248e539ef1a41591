package rediscache_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/persistence/rediscache"
)

// truth stands in for the store: the counters Postgres holds.
type truth []persistence.UsageRow

func (t truth) ScanUsage(ctx context.Context, after time.Time, fn func(persistence.UsageRow) error) error {
	for _, r := range t {
		if r.PeriodEnd.After(after) {
			if err := fn(r); err != nil {
				return err
			}
		}
	}
	return nil
}

func rows(n int, version int64) truth {
	start := time.Now().UTC().Truncate(time.Microsecond).Add(-time.Hour)
	var t truth
	for i := 0; i < n; i++ {
		t = append(t, persistence.UsageRow{
			UserID: fmt.Sprintf("u%d", i), PeriodStart: start, PeriodEnd: start.AddDate(0, 1, 0),
			Counters: persistence.Counters{Usage: domain.Usage{Sessions: int64(i % 10), Seconds: int64(i)}, Version: version},
		})
	}
	return t
}

func waitConverged(t *testing.T, c *rediscache.Cache, want truth) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		bad := 0
		var sample string
		for _, r := range want {
			got, ok, err := c.Get(context.Background(), r.UserID, r.PeriodStart)
			if err != nil || !ok || got != r.Counters {
				bad++
				sample = fmt.Sprintf("%s: got %+v ok=%v err=%v, want %+v", r.UserID, got, ok, err, r.Counters)
			}
		}
		if bad == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d counters not re-seeded, e.g. %s", bad, len(want), sample)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Redis killed and restarted empty: the watcher notices (new run_id, no
// epoch marker) and re-seeds every current counter from the store.
func TestWatchReseedsAfterRestartEmpty(t *testing.T) {
	addr, kill := testenv.StartRedis(t)
	client := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer client.Close()
	c := rediscache.New(client, "w:", nil, nil)
	defer c.Close()
	src := rows(2500, 7)
	c.Watch(src, 100*time.Millisecond)
	waitConverged(t, c, src) // the start-up seed

	kill()
	port := addr[len("127.0.0.1:"):]
	testenv.RestartRedisOnPort(t, port)
	waitConverged(t, c, src)
}

// A flush (same server, same run_id) is noticed by the missing epoch
// marker; a stale value (a replica that missed writes) is moved forward.
func TestWatchRepairsFlushAndStaleValues(t *testing.T) {
	addr, _ := testenv.StartRedis(t)
	client := redis.NewClient(&redis.Options{Addr: addr})
	defer client.Close()
	c := rediscache.New(client, "w:", nil, nil)
	defer c.Close()
	src := rows(100, 5)
	c.Watch(src, 100*time.Millisecond)
	waitConverged(t, c, src)

	if err := client.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, c, src)

	// Rewind one key behind the store, as a promoted replica would hold it,
	// then make the watcher see a new identity by deleting the marker.
	r := src[3]
	if err := client.HSet(context.Background(), c.Key(r.UserID, r.PeriodStart), "s", 0, "sec", 0, "v", 1).Err(); err != nil {
		t.Fatal(err)
	}
	if err := client.Del(context.Background(), "w:cache:epoch").Err(); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, c, src)
}
