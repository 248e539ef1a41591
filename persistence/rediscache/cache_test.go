package rediscache_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/persistence/rediscache"
)

// realCache is a Cache on the machine's Redis under a private prefix.
func realCache(t *testing.T) (*rediscache.Cache, redis.UniversalClient) {
	t.Helper()
	addr, prefix := testenv.Redis(t)
	client := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = client.Close() })
	c := rediscache.New(client, prefix, nil, nil)
	t.Cleanup(c.Close)
	return c, client
}

func counters(s, sec, v int64) persistence.Counters {
	return persistence.Counters{Version: v, Usage: domain.Usage{Sessions: s, Seconds: sec}}
}

var period = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

func TestSetNeverMovesBackwards(t *testing.T) {
	c, _ := realCache(t)
	ctx := context.Background()
	if _, ok, err := c.Get(ctx, "u1", period); err != nil || ok {
		t.Fatalf("empty cache: ok=%v err=%v", ok, err)
	}
	if wrote, err := c.Set(ctx, "u1", period, counters(3, 60, 3)); err != nil || !wrote {
		t.Fatalf("first set: wrote=%v err=%v", wrote, err)
	}
	// An older version (a reordered or retried write) is refused.
	if wrote, err := c.Set(ctx, "u1", period, counters(2, 0, 2)); err != nil || wrote {
		t.Fatalf("older set: wrote=%v err=%v", wrote, err)
	}
	// The same version again (a client retry) changes nothing.
	if wrote, err := c.Set(ctx, "u1", period, counters(99, 99, 3)); err != nil || wrote {
		t.Fatalf("same-version set: wrote=%v err=%v", wrote, err)
	}
	got, ok, err := c.Get(ctx, "u1", period)
	if err != nil || !ok || got != counters(3, 60, 3) {
		t.Fatalf("Get = %+v ok=%v err=%v, want sessions 3 seconds 60 version 3", got, ok, err)
	}
}

// Concurrent writers with shuffled versions leave the newest version.
func TestConcurrentPutsConvergeOnNewest(t *testing.T) {
	c, _ := realCache(t)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for v := int64(1); v <= 200; v++ {
				if v%8 == int64(w) {
					c.Put("hot", period, counters(v, v*10, v))
				}
			}
		}(w)
	}
	wg.Wait()
	want := counters(200, 2000, 200)
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, ok, err := c.Get(context.Background(), "hot", period)
		if err == nil && ok && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Get = %+v ok=%v err=%v, want %+v", got, ok, err, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Writes flushed together (one script call for the batch) are still
// compare-and-set key by key: a stale one among fresh ones changes nothing.
func TestBatchedPutsKeepEachKeysNewest(t *testing.T) {
	c, _ := realCache(t)
	ctx := context.Background()
	if wrote, err := c.Set(ctx, "u1", period, counters(3, 60, 3)); err != nil || !wrote {
		t.Fatalf("set: wrote=%v err=%v", wrote, err)
	}
	c.Put("u1", period, counters(2, 0, 2)) // stale
	for u := 2; u <= 40; u++ {
		c.Put(fmt.Sprintf("u%d", u), period, counters(int64(u), 0, int64(u)))
	}
	deadline := time.Now().Add(5 * time.Second)
	for u := 2; u <= 40; u++ {
		for {
			got, ok, err := c.Get(ctx, fmt.Sprintf("u%d", u), period)
			if err == nil && ok && got == counters(int64(u), 0, int64(u)) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("u%d: Get = %+v ok=%v err=%v", u, got, ok, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if got, ok, err := c.Get(ctx, "u1", period); err != nil || !ok || got != counters(3, 60, 3) {
		t.Fatalf("u1 after a stale batched write: %+v ok=%v err=%v", got, ok, err)
	}
}

// Keys of different users and periods do not collide.
func TestKeysArePerUserAndPeriod(t *testing.T) {
	mr := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer client.Close()
	c := rediscache.New(client, "p:", nil, nil)
	defer c.Close()
	ctx := context.Background()
	next := period.AddDate(0, 1, 0)
	for _, k := range []struct {
		user string
		p    time.Time
		v    int64
	}{{"a", period, 1}, {"a", next, 2}, {"b", period, 3}} {
		if _, err := c.Set(ctx, k.user, k.p, counters(k.v, 0, k.v)); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []struct {
		user string
		p    time.Time
		v    int64
	}{{"a", period, 1}, {"a", next, 2}, {"b", period, 3}} {
		got, ok, err := c.Get(ctx, k.user, k.p)
		if err != nil || !ok || got.Version != k.v {
			t.Errorf("%s@%s: got %+v ok=%v err=%v, want version %d", k.user, k.p, got, ok, err, k.v)
		}
	}
	if ttl := mr.TTL(c.Key("a", period)); ttl <= 0 {
		t.Errorf("key has no TTL (%v): stale periods would pile up", ttl)
	}
}

// A cache whose Redis is down neither blocks nor panics the caller.
func TestPutWithRedisDownDoesNotBlock(t *testing.T) {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 50 * time.Millisecond})
	defer client.Close()
	c := rediscache.New(client, "p:", nil, nil)
	done := make(chan struct{})
	go func() {
		for i := int64(0); i < 20000; i++ {
			c.Put("u", period, counters(i, 0, i))
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Put blocked while Redis is unreachable")
	}
	c.Close()
	if err := c.Check(context.Background()); err == nil {
		t.Fatal("Check succeeded against an unreachable Redis")
	}
}
