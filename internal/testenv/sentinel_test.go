package testenv_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-dev/tally/internal/testenv"
)

// TestSentinelFailoverPromotesTheReplica kills the primary and checks that
// a failover client goes on writing, on the promoted replica, with the data
// that was replicated before the kill; then that the killed node rejoins as
// a replica, so that a second failover can promote it back.
func TestSentinelFailoverPromotesTheReplica(t *testing.T) {
	c := testenv.StartSentinelCluster(t)
	ctx := t.Context()
	client := c.Client(t)

	first, err := c.MasterAddr(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Set(ctx, "before", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// WAIT makes the write replicated before the kill: what this test
	// checks is the promotion, not Redis's (known) loss of unreplicated
	// writes.
	if n, err := client.Wait(ctx, 1, 5*time.Second).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT 1: %d replicas, %v", n, err)
	}

	start := time.Now()
	killed := c.KillMaster(t)
	if killed != first {
		t.Fatalf("KillMaster killed %s, the primary was %s", killed, first)
	}
	second := c.WaitForFailover(t, killed, 20*time.Second)
	t.Logf("failover %s -> %s took %s", killed, second, time.Since(start).Round(time.Millisecond))
	if second == killed {
		t.Fatalf("WaitForFailover returned the killed primary %s", killed)
	}

	mustRoundTrip(ctx, t, client, "after")
	if v, err := client.Get(ctx, "before").Result(); err != nil || v != "1" {
		t.Fatalf("replicated key after failover: %q, %v", v, err)
	}

	c.RestartKilled(t)
	start = time.Now()
	again := c.KillMaster(t)
	third := c.WaitForFailover(t, again, 20*time.Second)
	t.Logf("second failover %s -> %s took %s", again, third, time.Since(start).Round(time.Millisecond))
	if third != first {
		t.Fatalf("second failover promoted %s, want the restarted %s", third, first)
	}
	mustRoundTrip(ctx, t, client, "after-second")
}

// mustRoundTrip writes and reads a key through the failover client, giving
// it a few seconds to notice the new primary (its pooled connections to the
// dead one fail first).
func mustRoundTrip(ctx context.Context, t *testing.T, client *redis.Client, key string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := client.Set(ctx, key, "1", 0).Err()
		if err == nil {
			var v string
			if v, err = client.Get(ctx, key).Result(); err == nil && v != "1" {
				err = fmt.Errorf("read back %q", v)
			}
		}
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("write %s through the failover client: %v", key, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
