package verify

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// usageRow is what the store says one period's counters are.
type usageRow struct {
	userID                     string
	startMicros                int64
	sessions, seconds, version int64
}

// counterKey is rediscache.Cache.Key: <prefix>usage:<user>:<period start
// in unix microseconds>. It is repeated here rather than imported because
// Cache.Key needs a running Cache; a test keeps the two in step.
func counterKey(prefix, userID string, startMicros int64) string {
	return prefix + "usage:" + userID + ":" + strconv.FormatInt(startMicros, 10)
}

// redisCheck compares the cached counters with the store's usage rows, a
// pipelined batch at a time.
type redisCheck struct {
	client    redis.UniversalClient
	prefix    string
	batchSize int
	sum       *RedisSummary
	report    func(Violation)

	batch []usageRow
	// present holds a fingerprint of every counter key found for a usage
	// row, so that the orphan scan can skip them without a set of a
	// million strings.
	seed    maphash.Seed
	present []uint64
}

func newRedisCheck(client redis.UniversalClient, prefix string, batchSize int, sum *RedisSummary, report func(Violation)) *redisCheck {
	return &redisCheck{client: client, prefix: prefix, batchSize: batchSize, sum: sum, report: report, seed: maphash.MakeSeed()}
}

func (r *redisCheck) add(ctx context.Context, u usageRow) error {
	r.batch = append(r.batch, u)
	if len(r.batch) >= r.batchSize {
		return r.flush(ctx)
	}
	return nil
}

// flush reads and compares the queued rows' keys in one pipeline.
func (r *redisCheck) flush(ctx context.Context) error {
	if len(r.batch) == 0 {
		return nil
	}
	keys := make([]string, len(r.batch))
	for i, u := range r.batch {
		keys[i] = counterKey(r.prefix, u.userID, u.startMicros)
	}
	cmds, err := r.read(ctx, keys)
	if err != nil {
		return err
	}
	for i, u := range r.batch {
		r.sum.Keys++
		v := func(c Check, nums map[string]int64, format string, args ...any) {
			r.report(Violation{Check: c, UserID: u.userID, PeriodStart: time.UnixMicro(u.startMicros).UTC(), Detail: fmt.Sprintf(format, args...), Numbers: nums})
		}
		c, ok, err := parseCounters(cmds[i])
		if err != nil {
			r.sum.Corrupt++
			r.present = append(r.present, r.fingerprint(keys[i]))
			v(RedisCorrupt, nil, "key %s: %v", keys[i], err)
			continue
		}
		if !ok {
			r.sum.Missing++
			continue
		}
		r.present = append(r.present, r.fingerprint(keys[i]))
		nums := map[string]int64{
			"redis_version": c.version, "redis_sessions": c.sessions, "redis_seconds": c.seconds,
			"store_version": u.version, "store_sessions": u.sessions, "store_seconds": u.seconds,
		}
		switch {
		case c.version < u.version:
			r.sum.Behind++
			v(RedisBehind, nums, "Redis is behind the store: version %d < %d (Redis sessions %d, seconds %d; store sessions %d, seconds %d)",
				c.version, u.version, c.sessions, c.seconds, u.sessions, u.seconds)
		case c.version > u.version:
			r.sum.Ahead++
		case c.sessions != u.sessions || c.seconds != u.seconds:
			r.sum.Mismatched++
			v(RedisMismatch, nums, "same version %d, different counts: Redis sessions %d, seconds %d; store sessions %d, seconds %d",
				c.version, c.sessions, c.seconds, u.sessions, u.seconds)
		default:
			r.sum.Equal++
		}
	}
	r.batch = r.batch[:0]
	return nil
}

// read sends one HMGET per key in a pipeline. A key's own error (a key of
// another type) is left in its command; only a failure of Redis itself is
// returned.
func (r *redisCheck) read(ctx context.Context, keys []string) ([]*redis.SliceCmd, error) {
	pipe := r.client.Pipeline()
	cmds := make([]*redis.SliceCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.HMGet(ctx, k, "s", "sec", "v")
	}
	if _, err := pipe.Exec(ctx); err != nil && !isReplyError(err) {
		return nil, fmt.Errorf("verify: read redis counters: %w", err)
	}
	for _, c := range cmds {
		if err := c.Err(); err != nil && !isReplyError(err) {
			return nil, fmt.Errorf("verify: read redis counters: %w", err)
		}
	}
	return cmds, nil
}

// orphans scans every counter key under the prefix for counters of a
// period that has no usage row. Keys found for usage rows are skipped;
// a key holding nothing (version 0, zero counts, as a re-seed of an empty
// period may write) is no evidence of lost usage. Candidates are looked up
// in the store again, outside the audit's snapshot, so that a period
// opened while the audit ran is not reported.
func (r *redisCheck) orphans(ctx context.Context, existing func(context.Context, []periodKey) (map[periodKey]bool, error)) error {
	slices.Sort(r.present)
	reported := map[string]bool{} // SCAN may return a key twice
	iter := r.client.Scan(ctx, 0, escapeGlob(r.prefix)+"usage:*", int64(r.batchSize)).Iterator()
	var batch []string
	check := func() error {
		if len(batch) == 0 {
			return nil
		}
		defer func() { batch = batch[:0] }()
		var (
			keys    []string
			periods []periodKey
		)
		for _, k := range batch {
			if _, found := slices.BinarySearch(r.present, r.fingerprint(k)); found || reported[k] {
				continue
			}
			if p, ok := r.parseKey(k); ok {
				keys, periods = append(keys, k), append(periods, p)
			}
		}
		if len(keys) == 0 {
			return nil
		}
		cmds, err := r.read(ctx, keys)
		if err != nil {
			return err
		}
		var (
			suspects []int
			lookup   []periodKey
		)
		for i := range keys {
			c, ok, err := parseCounters(cmds[i])
			if err != nil {
				reported[keys[i]] = true
				r.sum.Corrupt++
				r.report(Violation{Check: RedisCorrupt, UserID: periods[i].userID, PeriodStart: time.UnixMicro(periods[i].startMicros).UTC(),
					Detail: fmt.Sprintf("key %s: %v", keys[i], err)})
				continue
			}
			if !ok || (c.version == 0 && c.sessions == 0 && c.seconds == 0) {
				continue
			}
			suspects = append(suspects, i)
			lookup = append(lookup, periods[i])
		}
		if len(suspects) == 0 {
			return nil
		}
		found, err := existing(ctx, lookup)
		if err != nil {
			return err
		}
		for _, i := range suspects {
			if found[periods[i]] {
				continue
			}
			c, _, _ := parseCounters(cmds[i])
			reported[keys[i]] = true
			r.sum.Orphans++
			r.report(Violation{Check: RedisOrphan, UserID: periods[i].userID, PeriodStart: time.UnixMicro(periods[i].startMicros).UTC(),
				Detail: fmt.Sprintf("Redis holds counters (version %d, sessions %d, seconds %d) for a period the store has no usage row for",
					c.version, c.sessions, c.seconds),
				Numbers: map[string]int64{"redis_version": c.version, "redis_sessions": c.sessions, "redis_seconds": c.seconds}})
		}
		return nil
	}
	for iter.Next(ctx) {
		r.sum.Scanned++
		batch = append(batch, iter.Val())
		if len(batch) >= r.batchSize {
			if err := check(); err != nil {
				return err
			}
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("verify: scan redis counter keys: %w", err)
	}
	return check()
}

func (r *redisCheck) fingerprint(key string) uint64 { return maphash.String(r.seed, key) }

// parseKey reads the user and period back from a counter key. User ids
// may contain ':', the period is after the last one.
func (r *redisCheck) parseKey(key string) (periodKey, bool) {
	rest, ok := strings.CutPrefix(key, r.prefix+"usage:")
	i := strings.LastIndexByte(rest, ':')
	if !ok || i <= 0 {
		return periodKey{}, false
	}
	micros, err := strconv.ParseInt(rest[i+1:], 10, 64)
	if err != nil {
		return periodKey{}, false
	}
	return periodKey{userID: rest[:i], startMicros: micros}, true
}

// counters is one cached hash.
type counters struct {
	sessions, seconds, version int64
}

// parseCounters reads an HMGET s sec v reply; ok is false when the key
// does not exist (all three fields missing).
func parseCounters(cmd *redis.SliceCmd) (c counters, ok bool, err error) {
	vals, err := cmd.Result()
	if err != nil {
		return counters{}, false, err
	}
	if vals[0] == nil && vals[1] == nil && vals[2] == nil {
		return counters{}, false, nil
	}
	var parsed [3]int64
	for i, name := range []string{"s", "sec", "v"} {
		s, isStr := vals[i].(string)
		if !isStr {
			return counters{}, false, fmt.Errorf("field %s is missing", name)
		}
		if parsed[i], err = strconv.ParseInt(s, 10, 64); err != nil {
			return counters{}, false, fmt.Errorf("field %s is %q, not an integer", name, s)
		}
	}
	return counters{sessions: parsed[0], seconds: parsed[1], version: parsed[2]}, true, nil
}

// isReplyError reports whether err is Redis refusing one command (such as
// WRONGTYPE), as opposed to Redis being unreachable.
func isReplyError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !errors.Is(err, redis.Nil)
}

// escapeGlob quotes the characters SCAN's MATCH treats as a pattern.
func escapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
