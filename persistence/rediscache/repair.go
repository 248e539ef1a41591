package rediscache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/persistence"
)

// Source is where re-seeding reads the truth from (the Store).
type Source interface {
	ScanUsage(ctx context.Context, after time.Time, fn func(persistence.UsageRow) error) error
}

// seedBatch is how many counters one script call of a re-seed carries: a
// Lua call blocks Redis while it runs, so a call is kept short
// (docs/performance.md).
const seedBatch = 1000

// Watch re-seeds Redis from src whenever Redis may have lost writes: at
// start, when it answers again after failing, when its identity changes (a
// restart, or a Sentinel failover to a replica that may have missed the last
// acknowledged writes — measured here: all of them, in a partition), and
// when the epoch marker written after the last seed is gone (a flush). It
// polls every `every` until Close. Re-seeding writes with the same versioned
// compare-and-set as every other write, so it can only move counters forward
// to what Postgres holds.
func (c *Cache) Watch(src Source, every time.Duration) {
	c.stopped.Add(1)
	go func() {
		defer c.stopped.Done()
		var lastID string
		need := true // Redis may hold stale counters from before this process
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			ctx, cancel := context.WithTimeout(c.ctx, 2*time.Second)
			id, epochOK, err := c.identity(ctx)
			cancel()
			switch {
			case err != nil:
				need = true // unreachable now; whatever it holds when back is suspect
			default:
				if (lastID != "" && id != lastID) || !epochOK || c.writeFailed.Swap(false) {
					need = true
				}
				lastID = id
				if need {
					if err := c.Reseed(c.ctx, src); err != nil {
						c.log.Warn("re-seeding redis from the store failed; will retry", "err", err)
					} else {
						need = false
					}
				}
			}
			select {
			case <-c.done:
				return
			case <-t.C:
			}
		}
	}()
}

func (c *Cache) epochKey() string { return c.prefix + "cache:epoch" }

// identity names the Redis server currently answering: its run_id (a new
// one after a restart or a failover) and whether the epoch marker of the
// last re-seed is still there. miniredis has no INFO server section; there
// the epoch marker alone tells a flush.
func (c *Cache) identity(ctx context.Context) (id string, epochOK bool, err error) {
	pipe := c.client.Pipeline()
	info := pipe.Info(ctx, "server")
	epoch := pipe.Exists(ctx, c.epochKey())
	_, _ = pipe.Exec(ctx)
	if err := epoch.Err(); err != nil {
		return "", false, err
	}
	if s, err := info.Result(); err == nil {
		for _, line := range strings.Split(s, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "run_id:"); ok {
				id = v
			}
		}
	}
	return id, epoch.Val() == 1, nil
}

// Reseed writes the counters of every recent period from src to Redis, then
// sets the epoch marker. Safe to run concurrently with normal writes and
// with other processes' re-seeds.
func (c *Cache) Reseed(ctx context.Context, src Source) error {
	start := time.Now()
	var (
		batch   []persistence.UsageRow
		written int
	)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		keys := make([]string, len(batch))
		values := make([]persistence.Counters, len(batch))
		for i, r := range batch {
			keys[i] = c.Key(r.UserID, r.PeriodStart)
			values[i] = r.Counters
		}
		n, err := c.casMany(ctx, keys, values)
		if err != nil {
			return err
		}
		written += n
		batch = batch[:0]
		return nil
	}
	// Every period whose key may still live in Redis (keys expire ttl after
	// their last write), not only the current ones: a completion can still
	// add minutes to a session's past period.
	err := src.ScanUsage(ctx, time.Now().Add(-ttl), func(r persistence.UsageRow) error {
		batch = append(batch, r)
		if len(batch) >= seedBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		c.reseeds.WithLabelValues("error").Inc()
		return err
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	if err := c.client.Set(ctx, c.epochKey(), hex.EncodeToString(b), 0).Err(); err != nil {
		c.reseeds.WithLabelValues("error").Inc()
		return err
	}
	c.reseeds.WithLabelValues("ok").Inc()
	c.log.Info("re-seeded redis counters from the store", "corrected", written, "took", time.Since(start).String())
	return nil
}

func newReseedMetric() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tally_cache_reseeds_total",
		Help: "Re-seeds of the Redis counters from the store (after Redis restarts, failovers, flushes or write errors), by result.",
	}, []string{"result"})
}
