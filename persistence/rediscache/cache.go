// Package rediscache keeps a copy of each user's period counters in Redis.
//
// Redis is a cache that can fail: it loses acknowledged writes on a Sentinel
// failover and may come back empty. So nothing here ever decides an
// admission, and every write is a versioned compare-and-set (a Lua script)
// rather than a blind INCR: a client retry, a reordered write or a replay of
// an old value can never move a counter backwards or count twice. The
// counters' version is the Postgres usage row's version.
package rediscache

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/tally-dev/tally/persistence"
)

// casManyScript stores (sessions, seconds, version) under each key only
// when the version is newer than the stored one: KEYS are the counters'
// keys, ARGV holds (sessions, seconds, version) per key, in order, then the
// TTL in milliseconds. It returns, per key, 1 when it wrote and 0 when the
// stored value was as new or newer. A flushed batch is one call (one EVAL
// per key hashed the script's text every time). Not for Redis Cluster
// (keys of several slots), which Tally does not use.
var casManyScript = redis.NewScript(`
local ttl = ARGV[#ARGV]
local out = {}
for i, key in ipairs(KEYS) do
  local b = (i - 1) * 3
  local cur = redis.call('HGET', key, 'v')
  if cur and tonumber(cur) >= tonumber(ARGV[b + 3]) then
    out[i] = 0
  else
    redis.call('HSET', key, 's', ARGV[b + 1], 'sec', ARGV[b + 2], 'v', ARGV[b + 3])
    redis.call('PEXPIRE', key, ttl)
    out[i] = 1
  end
end
return out
`)

// casMany writes counters under keys with casManyScript and returns how
// many were written (the rest were stale).
func (c *Cache) casMany(ctx context.Context, keys []string, counters []persistence.Counters) (written int, err error) {
	args := make([]any, 0, 3*len(keys)+1)
	for _, v := range counters {
		args = append(args, v.Sessions, v.Seconds, v.Version)
	}
	args = append(args, ttl.Milliseconds())
	// Run is EVALSHA, falling back to EVAL when a fresh or promoted Redis
	// does not know the script yet.
	res, err := casManyScript.Run(ctx, c.client, keys, args...).Int64Slice()
	if err != nil {
		return 0, err
	}
	if len(res) != len(keys) {
		return 0, fmt.Errorf("redis: counter script answered %d results for %d keys", len(res), len(keys))
	}
	for _, n := range res {
		if n == 1 {
			written++
		}
	}
	return written, nil
}

// ttl keeps a period's counters a little longer than the longest period.
const ttl = 40 * 24 * time.Hour

// queueSize bounds the writes waiting for Redis; beyond it writes are
// dropped (and counted): the next write for the same key carries a newer
// version and repairs the entry, and a reader never believes the cache over
// Postgres anyway.
const queueSize = 8192

// Cache writes counters to Redis in the background and reads them back.
type Cache struct {
	client redis.UniversalClient
	prefix string
	log    *slog.Logger

	queue   chan entry
	done    chan struct{}
	ctx     context.Context // canceled by Close, bounding background work
	cancel  context.CancelFunc
	stopped sync.WaitGroup
	once    sync.Once

	writes  *prometheus.CounterVec
	dropped prometheus.Counter
	reseeds *prometheus.CounterVec

	// writeFailed tells the watcher that writes were lost to an error, so
	// Redis needs a re-seed once it answers again.
	writeFailed atomic.Bool
}

type entry struct {
	key string
	c   persistence.Counters
}

// New starts a Cache on client with keys under prefix. reg may be nil.
func New(client redis.UniversalClient, prefix string, log *slog.Logger, reg prometheus.Registerer) *Cache {
	if log == nil {
		log = slog.Default()
	}
	c := &Cache{
		client: client,
		prefix: prefix,
		log:    log,
		queue:  make(chan entry, queueSize),
		done:   make(chan struct{}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_cache_writes_total",
			Help: "Counter writes to Redis by result (written, stale: Redis already had a newer version, error).",
		}, []string{"result"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_cache_writes_dropped_total",
			Help: "Counter writes dropped because the Redis write queue was full.",
		}),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.reseeds = newReseedMetric()
	if reg != nil {
		reg.MustRegister(c.writes, c.dropped, c.reseeds)
	}
	c.stopped.Add(1)
	go c.run()
	return c
}

// Key is the Redis key of one user's counters in the period starting at
// periodStart.
func (c *Cache) Key(userID string, periodStart time.Time) string {
	return c.prefix + "usage:" + userID + ":" + strconv.FormatInt(periodStart.UTC().UnixMicro(), 10)
}

// Put queues a versioned write. It never blocks the caller.
func (c *Cache) Put(userID string, periodStart time.Time, counters persistence.Counters) {
	select {
	case c.queue <- entry{key: c.Key(userID, periodStart), c: counters}:
	default:
		c.dropped.Inc()
		c.writeFailed.Store(true)
	}
}

// Set writes counters now, with the versioned compare-and-set. It reports
// whether Redis took the value (false: it held a newer version already).
func (c *Cache) Set(ctx context.Context, userID string, periodStart time.Time, counters persistence.Counters) (bool, error) {
	n, err := c.casMany(ctx, []string{c.Key(userID, periodStart)}, []persistence.Counters{counters})
	return n == 1, err
}

// Get reads the cached counters; ok is false when Redis has none.
func (c *Cache) Get(ctx context.Context, userID string, periodStart time.Time) (counters persistence.Counters, ok bool, err error) {
	vals, err := c.client.HMGet(ctx, c.Key(userID, periodStart), "s", "sec", "v").Result()
	if err != nil {
		return persistence.Counters{}, false, err
	}
	if vals[2] == nil {
		return persistence.Counters{}, false, nil
	}
	var parsed [3]int64
	for i, v := range vals {
		s, _ := v.(string)
		if parsed[i], err = strconv.ParseInt(s, 10, 64); err != nil {
			return persistence.Counters{}, false, fmt.Errorf("rediscache: corrupt field %d of %s: %q", i, c.Key(userID, periodStart), s)
		}
	}
	counters.Sessions, counters.Seconds, counters.Version = parsed[0], parsed[1], parsed[2]
	return counters, true, nil
}

// Name is the readiness check's name.
func (c *Cache) Name() string { return "redis" }

// Optional marks Redis as a dependency Tally runs without (readiness is
// degraded, not failed, while it is down).
func (c *Cache) Optional() bool { return true }

// Check pings Redis (readiness).
func (c *Cache) Check(ctx context.Context) error { return c.client.Ping(ctx).Err() }

// Close flushes queued writes (bounded by a few seconds) and stops the
// writer. It does not close the client.
func (c *Cache) Close() {
	c.once.Do(func() {
		close(c.done)
		c.cancel()
		c.stopped.Wait()
	})
}

// run drains the queue, coalescing writes to the same key (only the newest
// version matters) and sending each batch in one pipeline.
func (c *Cache) run() {
	defer c.stopped.Done()
	batch := make(map[string]persistence.Counters)
	for {
		select {
		case e := <-c.queue:
			batch[e.key] = e.c
		case <-c.done:
			c.drain(batch)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			c.flush(ctx, batch)
			cancel()
			return
		}
		c.drain(batch)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c.flush(ctx, batch)
		cancel()
		clear(batch)
	}
}

func (c *Cache) drain(batch map[string]persistence.Counters) {
	for len(batch) < 512 {
		select {
		case e := <-c.queue:
			if old, ok := batch[e.key]; !ok || e.c.Version > old.Version {
				batch[e.key] = e.c
			}
		default:
			return
		}
	}
}

func (c *Cache) flush(ctx context.Context, batch map[string]persistence.Counters) {
	if len(batch) == 0 {
		return
	}
	keys := make([]string, 0, len(batch))
	values := make([]persistence.Counters, 0, len(batch))
	for k, v := range batch {
		keys = append(keys, k)
		values = append(values, v)
	}
	written, err := c.casMany(ctx, keys, values)
	if err != nil {
		// A failing cache costs nothing but this log line and the metric:
		// admissions are decided and recorded in Postgres.
		c.writes.WithLabelValues("error").Add(float64(len(batch)))
		c.writeFailed.Store(true)
		c.log.Warn("redis counter writes failed", "keys", len(batch), "err", err)
		return
	}
	c.writes.WithLabelValues("written").Add(float64(written))
	c.writes.WithLabelValues("stale").Add(float64(len(batch) - written))
}
