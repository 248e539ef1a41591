// Package verify audits Tally's stores after the fact: the check an
// operator runs after a drill (a kill -9, a Redis failover, a Postgres
// outage, a load run) to learn whether any limit was overrun and whether
// any usage was lost or miscounted. `tally verify` is its command line; Run
// is the same audit for Go tests.
//
// It trusts nothing the service computed on the way. Every admitted session
// row carries its ordinal in its period (seq) and the plan's max_sessions
// when it was admitted, so the audit can tell, from the rows alone, whether
// the fence ever let one through too many. For every user and period:
//
//   - over_limit: every session has seq <= max_sessions (unless -1,
//     unlimited);
//   - seq: the seqs of a period's sessions are exactly 1..n, no gap, no
//     duplicate;
//   - session_count: the usage row counts exactly the sessions it has
//     (usage.sessions = n);
//   - seconds: usage.seconds is the sum of the durations of the period's
//     completed sessions;
//   - missing_usage: every period that has sessions has a usage row;
//   - epoch_order: the sessions admitted in cluster mode (under a
//     partition epoch, not 0) have epochs that never decrease in seq order
//     (epochs.go): none was admitted by a node after a newer owner of the
//     user's partition had claimed it;
//   - redis_behind, redis_mismatch: a Redis counter that exists is not
//     older than Postgres (version v >= the row's), and at the same version
//     holds the same counts. A missing key is counted, not a violation: the
//     cache may be cold. A key newer than Postgres is counted as "ahead":
//     normal while the service runs (verify reads Postgres first);
//   - redis_orphan: a Redis counter with usage for a period Postgres has no
//     row for (checked again outside the snapshot, so that a period opened
//     while verify ran is not reported);
//   - redis_corrupt: a counter key that is not a hash of integers s, sec, v.
//
// And for every user and session, against the audit trail of admin
// changes (events.go):
//
//   - user_events: a user's change events cover each version after its
//     trail began (migration 0004; audit_baseline) exactly once and none
//     beyond its own: every PUT and every usage reset bumps the version and
//     records it, in one transaction, so a gap is a change without its
//     event;
//   - user_state: the user's plan and billing anchor are what its last
//     event left (a reset's only trace is the anchor it set), or, with no
//     change at all, what provisioning leaves;
//   - session_events: a session completed or failed after the trail began
//     has exactly one event of its kind, with its duration, and no other
//     session has one.
//
// And for the usage alerts' outbox (alerts.go):
//
//   - alert_missing: every threshold crossing made while alerts were on
//     (a session numbered at a threshold of its limit, a completion that
//     moved the seconds across one) has its alert;
//   - alert_unfounded: every threshold alert has the admission or the
//     completion that crossed it.
//
// The store is read in one snapshot (a REPEATABLE READ, READ ONLY
// transaction on Postgres; one read transaction on a read-only SQLite
// connection) with one aggregate query over all periods (GROUP BY, one pass
// over each table), and Redis with pipelined reads in batches: a million
// sessions in 100k periods took 1.2 s here (1.5 s with 100k Redis keys).
//
// Run it when the service is quiet: while it runs, the Redis cache trails
// Postgres by the writes in flight, which show up as redis_behind.
package verify

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Check names one kind of violation.
type Check string

// The checks; see the package documentation.
const (
	OverLimit     Check = "over_limit"
	Seq           Check = "seq"
	SessionCount  Check = "session_count"
	Seconds       Check = "seconds"
	MissingUsage  Check = "missing_usage"
	EpochOrder    Check = "epoch_order"
	RedisBehind   Check = "redis_behind"
	RedisMismatch Check = "redis_mismatch"
	RedisOrphan   Check = "redis_orphan"
	RedisCorrupt  Check = "redis_corrupt"
	UserEvents    Check = "user_events"
	UserState     Check = "user_state"
	SessionEvents Check = "session_events"
	// AlertMissing and AlertUnfounded compare usage alerts with their
	// causes (alerts.go).
	AlertMissing   Check = "alert_missing"
	AlertUnfounded Check = "alert_unfounded"
)

// DefaultBatchSize is how many Redis keys one pipeline reads.
const DefaultBatchSize = 1000

// Options say what to audit.
type Options struct {
	// DatabaseURL is the Postgres store (postgres://…). Empty means the
	// embedded SQLite store in DataDir, which is opened read-only.
	DatabaseURL string
	// DataDir is the embedded store's directory (when DatabaseURL is empty).
	DataDir string

	// Redis is the counter cache to compare with the store; nil skips the
	// Redis checks, for the reason in RedisSkipped.
	Redis redis.UniversalClient
	// RedisKeyPrefix is the service's TALLY_REDIS_KEY_PREFIX.
	RedisKeyPrefix string
	// RedisSkipped says, in the report, why Redis was not checked.
	RedisSkipped string

	// BatchSize is how many keys one Redis pipeline reads (default
	// DefaultBatchSize).
	BatchSize int
	// MaxViolations caps the violations listed in the report; 0 lists all.
	// Every violation is counted either way.
	MaxViolations int
}

// Report is what the audit found.
type Report struct {
	// Store is what was audited: "postgres <host>/<db>" or "sqlite <path>".
	Store string `json:"store"`
	// Users, Periods and Sessions are the rows checked: users, (user,
	// period) pairs with a usage row or sessions, and sessions.
	Users    int64 `json:"users"`
	Periods  int64 `json:"periods"`
	Sessions int64 `json:"sessions"`
	// Fenced is how many of the sessions were admitted in cluster mode,
	// under a partition epoch: those the epoch_order check covers.
	Fenced int64 `json:"fenced_sessions"`
	// Events is the audit events the trail's checks read.
	Events int64 `json:"events"`
	// Alerts is the usage alerts the alert checks read.
	Alerts int64 `json:"alerts"`

	Redis RedisSummary `json:"redis"`

	// Total is the number of violations; Counts splits it by check.
	Total  int64           `json:"violations_total"`
	Counts map[Check]int64 `json:"violation_counts"`
	// Violations lists them, at most Options.MaxViolations, ordered by
	// user, period and check; Truncated says some were left out.
	Violations []Violation `json:"violations"`
	Truncated  bool        `json:"truncated"`

	Elapsed time.Duration `json:"elapsed_ns"`
}

// RedisSummary is what the Redis checks saw.
type RedisSummary struct {
	// Checked is false when Redis was not checked; Skipped says why.
	Checked bool   `json:"checked"`
	Skipped string `json:"skipped,omitempty"`
	// Keys is the number of usage rows whose key was looked up; every one
	// was Missing, Behind, Equal, Ahead, Mismatched or Corrupt.
	Keys       int64 `json:"keys_checked"`
	Missing    int64 `json:"missing"`
	Behind     int64 `json:"behind"`
	Equal      int64 `json:"equal"`
	Ahead      int64 `json:"ahead"`
	Mismatched int64 `json:"mismatched"`
	Corrupt    int64 `json:"corrupt"`
	// Scanned is the number of counter keys found under the prefix;
	// Orphans those with usage for a period Postgres has no row for.
	Scanned int64 `json:"scanned"`
	Orphans int64 `json:"orphans"`
}

// Violation is one broken invariant of one user's period, or of the user
// (PeriodStart zero: user_events, user_state).
type Violation struct {
	Check       Check     `json:"check"`
	UserID      string    `json:"user_id"`
	PeriodStart time.Time `json:"period_start,omitzero"`
	// Detail says what is wrong, with the numbers.
	Detail string `json:"detail"`
	// Numbers are the figures compared, by name (e.g. seq, max_sessions).
	Numbers map[string]int64 `json:"numbers"`
}

// OK reports whether the audit found no violation.
func (r *Report) OK() bool { return r.Total == 0 }

// String is the violation's line in the text report.
func (v Violation) String() string {
	if v.PeriodStart.IsZero() {
		return fmt.Sprintf("%-14s user=%s: %s", v.Check, v.UserID, v.Detail)
	}
	return fmt.Sprintf("%-14s user=%s period=%s: %s", v.Check, v.UserID, v.PeriodStart.UTC().Format(time.RFC3339), v.Detail)
}

// WriteText prints the summary and every listed violation, one per line.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "store: %s\n", r.Store)
	fmt.Fprintf(&b, "checked: %d users, %d periods, %d sessions (%d under a partition epoch), %d audit events in %s\n",
		r.Users, r.Periods, r.Sessions, r.Fenced, r.Events, r.Elapsed.Round(time.Millisecond))
	if r.Redis.Checked {
		fmt.Fprintf(&b, "redis: %d keys checked: %d equal, %d missing (a cold cache, not a violation), %d behind, %d ahead, %d mismatched, %d corrupt; %d counter keys scanned, %d orphans\n",
			r.Redis.Keys, r.Redis.Equal, r.Redis.Missing, r.Redis.Behind, r.Redis.Ahead, r.Redis.Mismatched, r.Redis.Corrupt, r.Redis.Scanned, r.Redis.Orphans)
	} else {
		fmt.Fprintf(&b, "redis: not checked: %s\n", r.Redis.Skipped)
	}
	if r.OK() {
		b.WriteString("OK: no violations\n")
	} else {
		fmt.Fprintf(&b, "FAIL: %d violation(s):", r.Total)
		for _, c := range slices.Sorted(maps.Keys(r.Counts)) {
			fmt.Fprintf(&b, " %s=%d", c, r.Counts[c])
		}
		b.WriteByte('\n')
		for _, v := range r.Violations {
			b.WriteString(v.String())
			b.WriteByte('\n')
		}
		if r.Truncated {
			fmt.Fprintf(&b, "... %d more not listed (raise --max-violations, 0 lists all)\n", r.Total-int64(len(r.Violations)))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON prints the report as one JSON document.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // details compare with < and >
	return enc.Encode(r)
}

// Run audits the store (and Redis, when Options.Redis is set). An error
// means the audit could not be completed (a store or Redis unreachable, a
// schema that is not migrated), never that it found violations: those are
// in the Report.
func Run(ctx context.Context, opts Options) (*Report, error) {
	start := time.Now()
	if opts.BatchSize <= 0 {
		opts.BatchSize = DefaultBatchSize
	}
	src, err := openSource(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer src.close()

	a := &audit{opts: opts, rep: &Report{Store: src.name(), Counts: map[Check]int64{}, Violations: []Violation{}}}
	if opts.Redis != nil {
		a.rep.Redis.Checked = true
		a.redis = newRedisCheck(opts.Redis, opts.RedisKeyPrefix, opts.BatchSize, &a.rep.Redis, a.add)
	} else {
		a.rep.Redis.Skipped = cmp.Or(opts.RedisSkipped, "no Redis configured")
	}
	if err := src.scan(ctx, a); err != nil {
		return nil, err
	}
	if a.redis != nil {
		if err := a.redis.flush(ctx); err != nil {
			return nil, err
		}
		if err := a.redis.orphans(ctx, src.existing); err != nil {
			return nil, err
		}
	}
	slices.SortStableFunc(a.rep.Violations, func(x, y Violation) int {
		return cmp.Or(strings.Compare(x.UserID, y.UserID), x.PeriodStart.Compare(y.PeriodStart), strings.Compare(string(x.Check), string(y.Check)))
	})
	a.rep.Elapsed = time.Since(start)
	return a.rep, nil
}

// audit collects the findings of one Run.
type audit struct {
	opts  Options
	rep   *Report
	redis *redisCheck
}

func (a *audit) add(v Violation) {
	a.rep.Total++
	a.rep.Counts[v.Check]++
	if a.opts.MaxViolations > 0 && len(a.rep.Violations) >= a.opts.MaxViolations {
		a.rep.Truncated = true
		return
	}
	a.rep.Violations = append(a.rep.Violations, v)
}

// period is one (user, period): its usage row, when there is one, and the
// aggregates of its sessions.
type period struct {
	userID      string
	startMicros int64

	hasUsage                             bool
	usageSessions, usageSeconds, version int64

	sessions         int64 // session rows
	distinctSeqs     int64
	minSeq, maxSeq   int64
	completedSeconds int64

	// The sessions admitted with seq > max_sessions (max_sessions >= 0).
	over, overMaxSeq, overLimit int64
	overExample                 string

	fenced int64 // sessions admitted under a partition epoch
}

func (p *period) start() time.Time { return time.UnixMicro(p.startMicros).UTC() }

// check applies the store checks to one period and queues it for the
// Redis checks.
func (a *audit) check(ctx context.Context, p *period) error {
	a.rep.Periods++
	a.rep.Sessions += p.sessions
	a.rep.Fenced += p.fenced
	v := func(c Check, nums map[string]int64, format string, args ...any) {
		a.add(Violation{Check: c, UserID: p.userID, PeriodStart: p.start(), Detail: fmt.Sprintf(format, args...), Numbers: nums})
	}

	if p.over > 0 {
		v(OverLimit, map[string]int64{"sessions_over": p.over, "seq": p.overMaxSeq, "max_sessions": p.overLimit},
			"%d session(s) admitted over the plan's limit: seq %d > max_sessions %d (e.g. session %s)",
			p.over, p.overMaxSeq, p.overLimit, p.overExample)
	}
	// n distinct seqs, the least 1 and the greatest n: exactly 1..n.
	if p.sessions > 0 && (p.distinctSeqs != p.sessions || p.minSeq != 1 || p.maxSeq != p.sessions) {
		detail := fmt.Sprintf("the seqs of %d session(s) are not exactly 1..%d: min %d, max %d", p.sessions, p.sessions, p.minSeq, p.maxSeq)
		if shared := p.sessions - p.distinctSeqs; shared > 0 {
			detail += fmt.Sprintf(", %d session(s) repeat a seq another one has", shared)
		}
		v(Seq, map[string]int64{"sessions": p.sessions, "distinct_seqs": p.distinctSeqs, "min_seq": p.minSeq, "max_seq": p.maxSeq}, "%s", detail)
	}
	if !p.hasUsage {
		v(MissingUsage, map[string]int64{"sessions": p.sessions, "completed_seconds": p.completedSeconds},
			"%d session(s) (%d completed seconds) in a period that has no usage row", p.sessions, p.completedSeconds)
		return nil
	}
	if p.usageSessions != p.sessions {
		v(SessionCount, map[string]int64{"usage_sessions": p.usageSessions, "sessions": p.sessions},
			"usage.sessions = %d, but the period has %d session row(s)", p.usageSessions, p.sessions)
	}
	if p.usageSeconds != p.completedSeconds {
		v(Seconds, map[string]int64{"usage_seconds": p.usageSeconds, "completed_seconds": p.completedSeconds},
			"usage.seconds = %d, but the period's completed sessions sum to %d", p.usageSeconds, p.completedSeconds)
	}
	if a.redis != nil {
		return a.redis.add(ctx, usageRow{userID: p.userID, startMicros: p.startMicros, sessions: p.usageSessions, seconds: p.usageSeconds, version: p.version})
	}
	return nil
}
