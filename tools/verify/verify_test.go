package verify_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/tally-dev/tally/config"
	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/persistence/postgres"
	"github.com/tally-dev/tally/persistence/rediscache"
	"github.com/tally-dev/tally/persistence/sqlite"
	"github.com/tally-dev/tally/tools/verify"
)

// t0 anchors every user of the fixture.
var t0 = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

// backend is one store under audit, with raw SQL access to corrupt it the
// way a bug (or a broken fence) would.
type backend struct {
	name  string
	store persistence.Store
	opts  verify.Options
	// exec runs SQL written with ? placeholders.
	exec func(t *testing.T, query string, args ...any)
	// ts is how a timestamp is passed to exec.
	ts func(time.Time) any
}

func backends() []struct {
	name string
	open func(t *testing.T) *backend
} {
	return []struct {
		name string
		open func(t *testing.T) *backend
	}{
		{"postgres", openPostgres},
		{"sqlite", openSQLite},
	}
}

func openPostgres(t *testing.T) *backend {
	t.Helper()
	url := testenv.PostgresURL(t)
	s, err := postgres.Open(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return &backend{
		name: "postgres", store: s, opts: verify.Options{DatabaseURL: url},
		exec: func(t *testing.T, query string, args ...any) {
			t.Helper()
			n := 0
			query = replaceEach(query, "?", func() string { n++; return "$" + strconv.Itoa(n) })
			if _, err := conn.Exec(t.Context(), query, args...); err != nil {
				t.Fatalf("%s: %v", query, err)
			}
		},
		ts: func(tm time.Time) any { return tm },
	}
}

func openSQLite(t *testing.T) *backend {
	t.Helper()
	dir := t.TempDir()
	s, err := sqlite.Open(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	db, err := sql.Open("sqlite", filepath.Join(dir, sqlite.FileName)+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return &backend{
		name: "sqlite", store: s, opts: verify.Options{DataDir: dir},
		exec: func(t *testing.T, query string, args ...any) {
			t.Helper()
			if _, err := db.ExecContext(t.Context(), query, args...); err != nil {
				t.Fatalf("%s: %v", query, err)
			}
		},
		ts: func(tm time.Time) any { return tm.UnixMicro() },
	}
}

func replaceEach(s, old string, next func() string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, old)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		b.WriteString(next())
		s = s[i+len(old):]
	}
}

// fixture is the clean data every test starts from, created through the
// store's own Admit, CompleteSession, FailSession and PutUser, so that
// every admin change has its event:
//
//	alice (limit 10): 10 sessions, the 11th rejected; 630 s completed
//	bob (unlimited):  3 sessions; 100 s completed, b3 failed
//	carol (limit 10): 2 sessions in her first period, 1 in the next (50 s)
//	dave (limit 10):  1 session, then moved to pro and his usage reset
//	erin:             created by an admin on student, never used
type fixture struct {
	users   map[string]domain.User
	periods map[string]domain.Period // each user's first period
	next    domain.Period            // carol's second period
}

const (
	wantUsers    = 5
	wantPeriods  = 5
	wantSessions = 17
	wantEvents   = 8 // 4 completions, 1 failure, dave's plan change and reset, erin's creation
)

// ops is who the fixture's admin changes are made by.
var ops = domain.Origin{Admin: "verify-test", RequestID: "req-verify-test"}

func seed(t *testing.T, b *backend) *fixture {
	t.Helper()
	ctx := t.Context()
	if err := b.store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	// Alerts on from before the first admission: every crossing below
	// has its alert (alerts.go).
	if err := b.store.RecordAlertSettings(ctx, []int{80, 100}, t0.Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	alertPlan := func(sessions domain.Limit) *domain.AlertPlan {
		return domain.NewAlertPlan(domain.Plan{Name: "free", MaxSessions: sessions, MaxTotalMinutes: 10}, []int{80, 100})
	}
	f := &fixture{users: map[string]domain.User{}, periods: map[string]domain.Period{}}
	for _, id := range []string{"alice", "bob", "carol", "dave"} {
		u, err := b.store.EnsureUser(ctx, id, t0)
		if err != nil {
			t.Fatal(err)
		}
		f.users[id], f.periods[id] = u, u.Period(t0)
	}
	admit := func(user, id string, at time.Time, limit domain.Limit, want persistence.AdmitOutcome) {
		t.Helper()
		u := f.users[user]
		p := u.Period(at)
		res, err := b.store.Admit(ctx, []persistence.AdmitRequest{{
			Session: domain.Session{
				ID: id, UserID: user, Title: "Lecture " + id, Language: "en-US", STTProvider: "google",
				PeriodStart: p.Start, CreatedAt: at,
			},
			UserVersion: u.Version, PeriodEnd: p.End, MaxSessions: limit, MaxSeconds: -1, Alerts: alertPlan(limit),
		}})
		if err != nil {
			t.Fatal(err)
		}
		if res[0].Outcome != want {
			t.Fatalf("admit %s: %s, want %s", id, res[0].Outcome, want)
		}
	}
	complete := func(id string, seconds int64) {
		t.Helper()
		// 10 minutes: alice's first completion crosses 80% and 100%.
		if _, _, err := b.store.CompleteSession(ctx, ops, id, seconds, t0.Add(time.Hour), alertPlan(10)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		admit("alice", fmt.Sprintf("a%d", i+1), t0.Add(time.Duration(i)*time.Minute), 10, persistence.Admitted)
	}
	admit("alice", "a11", t0.Add(time.Hour), 10, persistence.OverLimit)
	complete("a1", 600)
	complete("a2", 30)
	for i := range 3 {
		admit("bob", fmt.Sprintf("b%d", i+1), t0.Add(time.Duration(i)*time.Minute), -1, persistence.Admitted)
	}
	complete("b1", 100)
	admit("carol", "c1", t0, 10, persistence.Admitted)
	admit("carol", "c2", t0.Add(time.Minute), 10, persistence.Admitted)
	later := t0.AddDate(0, 1, 5)
	f.next = f.users["carol"].Period(later)
	admit("carol", "c3", later, 10, persistence.Admitted)
	complete("c3", 50)
	admit("dave", "d1", t0, 10, persistence.Admitted)
	if _, err := b.store.FailSession(ctx, ops, "b3", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	put := func(c persistence.UserChange) {
		t.Helper()
		c.By = ops
		if _, err := b.store.PutUser(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	pro, student := "pro", "student"
	put(persistence.UserChange{ID: "dave", Plan: &pro, Now: t0.Add(time.Hour)})
	reset := t0.Add(2 * time.Hour)
	put(persistence.UserChange{ID: "dave", Anchor: &reset, Now: reset, Kind: domain.EventResetUsage})
	put(persistence.UserChange{ID: "erin", Plan: &student, Now: t0})
	return f
}

// withRedis points the audit at a private prefix of the shared Redis and
// writes the fixture's counters there with the service's own cache, all
// but carol's second period (a cold key).
func withRedis(t *testing.T, b *backend, f *fixture) (*redis.Client, *rediscache.Cache) {
	t.Helper()
	addr, prefix := testenv.Redis(t)
	client := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = client.Close() })
	cache := rediscache.New(client, prefix, nil, nil)
	t.Cleanup(cache.Close)
	for user, p := range f.periods {
		c, err := b.store.LoadUsage(t.Context(), user, p.Start)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := cache.Set(t.Context(), user, p.Start, c); err != nil || !ok {
			t.Fatalf("cache %s: %v %v", user, ok, err)
		}
	}
	b.opts.Redis, b.opts.RedisKeyPrefix = client, prefix
	return client, cache
}

func run(t *testing.T, b *backend) *verify.Report {
	t.Helper()
	rep, err := verify.Run(t.Context(), b.opts)
	if err != nil {
		t.Fatalf("verify.Run: %v", err)
	}
	var text strings.Builder
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", text.String())
	return rep
}

func TestCleanStorePasses(t *testing.T) {
	for _, bk := range backends() {
		t.Run(bk.name, func(t *testing.T) {
			b := bk.open(t)
			f := seed(t, b)
			withRedis(t, b, f)
			rep := run(t, b)
			if !rep.OK() {
				t.Fatalf("a clean store has %d violation(s): %v", rep.Total, rep.Violations)
			}
			if rep.Users != wantUsers || rep.Periods != wantPeriods || rep.Sessions != wantSessions || rep.Events != wantEvents {
				t.Errorf("checked %d users, %d periods, %d sessions, %d events; want %d, %d, %d, %d",
					rep.Users, rep.Periods, rep.Sessions, rep.Events, wantUsers, wantPeriods, wantSessions, wantEvents)
			}
			// alice's 80% and 100% of sessions, then of minutes.
			if rep.Alerts != 4 {
				t.Errorf("checked %d alerts, want 4", rep.Alerts)
			}
			// Every cached key matched (so the key layout is the cache's),
			// and carol's second period is a cold key, not a violation.
			want := verify.RedisSummary{Checked: true, Keys: 5, Equal: 4, Missing: 1, Scanned: 4}
			if rep.Redis != want {
				t.Errorf("redis summary %+v, want %+v", rep.Redis, want)
			}
		})
	}
}

// Epochs that never decrease within a period pass, whatever single-node
// sessions (epoch 0) come before, between or after the fenced ones, and
// whatever epochs another period has.
func TestEpochsThatNeverDecreasePass(t *testing.T) {
	for _, bk := range backends() {
		t.Run(bk.name, func(t *testing.T) {
			b := bk.open(t)
			seed(t, b)
			for id, epoch := range map[string]int64{
				"b1": 4, "b2": 0, "b3": 5, // cluster, one node, cluster again
				"a6": 7, "a7": 7, "a8": 7, "a9": 8, "a10": 8, // one node, then cluster
				"c1": 9, "c2": 9, "c3": 2, // c3 is in carol's next period
			} {
				b.exec(t, `UPDATE sessions SET epoch = ? WHERE id = ?`, epoch, id)
			}
			rep := run(t, b)
			if !rep.OK() {
				t.Fatalf("violations: %+v", rep.Violations)
			}
			if rep.Fenced != 10 {
				t.Fatalf("fenced sessions %d, want 10", rep.Fenced)
			}
		})
	}
}

func TestEmbeddedRedisIsReportedAsNotChecked(t *testing.T) {
	b := openSQLite(t)
	seed(t, b)
	b.opts.RedisSkipped = "in-process Redis"
	rep := run(t, b)
	if !rep.OK() || rep.Redis.Checked || rep.Redis.Skipped != "in-process Redis" {
		t.Fatalf("report %+v", rep)
	}
	var text strings.Builder
	_ = rep.WriteText(&text)
	if !strings.Contains(text.String(), "redis: not checked: in-process Redis") {
		t.Errorf("the text report does not say Redis was not checked:\n%s", text.String())
	}
}

// want is one expected violation.
type want struct {
	check   verify.Check
	user    string
	numbers map[string]int64 // a subset of the violation's numbers
}

// corruptions are what a broken fence, a lost write or a stale cache would
// leave behind; each must be reported, and nothing else.
var storeCorruptions = []struct {
	name    string
	corrupt func(t *testing.T, b *backend, f *fixture)
	want    []want
}{
	{
		name: "session admitted over the limit",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			p := f.periods["alice"]
			b.exec(t, `INSERT INTO sessions (id, user_id, title, language, stt_provider, status, period_start, seq, max_sessions, created_at, updated_at)
				VALUES ('a11', 'alice', 'x', 'en-US', 'google', 'created', ?, 11, 10, ?, ?)`, b.ts(p.Start), b.ts(t0), b.ts(t0))
			b.exec(t, `UPDATE usage SET sessions = sessions + 1, version = version + 1 WHERE user_id = 'alice'`)
		},
		want: []want{{verify.OverLimit, "alice", map[string]int64{"seq": 11, "max_sessions": 10, "sessions_over": 1}}},
	},
	{
		name: "usage.sessions off by one",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `UPDATE usage SET sessions = sessions + 1 WHERE user_id = 'bob'`)
		},
		want: []want{{verify.SessionCount, "bob", map[string]int64{"usage_sessions": 4, "sessions": 3}}},
	},
	{
		name: "a session not counted",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `UPDATE usage SET sessions = sessions - 1 WHERE user_id = 'alice'`)
		},
		want: []want{{verify.SessionCount, "alice", map[string]int64{"usage_sessions": 9, "sessions": 10}}},
	},
	{
		name: "usage.seconds off",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `UPDATE usage SET seconds = seconds + 7 WHERE user_id = 'alice'`)
		},
		want: []want{{verify.Seconds, "alice", map[string]int64{"usage_seconds": 637, "completed_seconds": 630}}},
	},
	{
		name: "completed seconds lost",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `UPDATE usage SET seconds = 0 WHERE user_id = 'carol' AND period_start = ?`, b.ts(f.next.Start))
		},
		want: []want{{verify.Seconds, "carol", map[string]int64{"usage_seconds": 0, "completed_seconds": 50}}},
	},
	{
		name: "session in a period without a usage row",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			start := f.periods["dave"].Start.AddDate(0, -1, 0)
			b.exec(t, `INSERT INTO sessions (id, user_id, title, language, stt_provider, status, duration_seconds, period_start, seq, max_sessions, created_at, updated_at)
				VALUES ('d0', 'dave', 'x', 'en-US', 'google', 'completed', 40, ?, 1, 10, ?, ?)`, b.ts(start), b.ts(start), b.ts(start))
		},
		// Completed by no admin, too.
		want: []want{
			{verify.MissingUsage, "dave", map[string]int64{"sessions": 1, "completed_seconds": 40}},
			{verify.SessionEvents, "dave", map[string]int64{"events": 0}},
		},
	},
	{
		// A reset leaves nothing but its anchor and a version: without its
		// event, the versions have a gap.
		name: "a reset's event deleted",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `DELETE FROM user_events WHERE kind = 'reset_usage'`)
		},
		want: []want{{verify.UserEvents, "dave", map[string]int64{"version": 3, "baseline_version": 1, "events": 1, "max_version": 2}}},
	},
	{
		name: "a plan change's event deleted",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `DELETE FROM user_events WHERE user_id = 'dave' AND kind = 'put_user'`)
		},
		want: []want{{verify.UserEvents, "dave", map[string]int64{"version": 3, "events": 1, "min_version": 3}}},
	},
	{
		name: "a reset made by hand, version and all",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `UPDATE users SET billing_anchor = ?, version = version + 1 WHERE id = 'carol'`, b.ts(t0.AddDate(0, 2, 0)))
		},
		want: []want{{verify.UserEvents, "carol", map[string]int64{"version": 2, "events": 0}}},
	},
	{
		name: "a plan changed by hand after admin changes",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `UPDATE users SET plan = 'enterprise' WHERE id = 'dave'`)
		},
		want: []want{{verify.UserState, "dave", map[string]int64{"version": 3}}},
	},
	{
		name: "a plan changed by hand on a user no admin changed",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `UPDATE users SET plan = 'pro' WHERE id = 'bob'`)
		},
		want: []want{{verify.UserState, "bob", map[string]int64{"version": 1}}},
	},
	{
		name: "an admin creation's event deleted",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `DELETE FROM user_events WHERE user_id = 'erin'`)
		},
		want: []want{{verify.UserState, "erin", map[string]int64{"version": 1}}},
	},
	{
		name: "a completion's event deleted",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `DELETE FROM user_events WHERE session_id = 'a2'`)
		},
		want: []want{{verify.SessionEvents, "alice", map[string]int64{"events": 0}}},
	},
	{
		name: "a failure's event without its failure",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `UPDATE sessions SET status = 'created' WHERE id = 'b3'`)
		},
		want: []want{{verify.SessionEvents, "bob", map[string]int64{"events": 1}}},
	},
	{
		// Hand-written epochs: alice's partition claimed at epoch 3, and
		// two of her sessions committed by a node still at epoch 2.
		name: "sessions admitted under an epoch a newer owner had replaced",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `UPDATE sessions SET epoch = 3 WHERE user_id = 'alice'`)
			b.exec(t, `UPDATE sessions SET epoch = 2 WHERE id IN ('a6', 'a8')`)
		},
		want: []want{{verify.EpochOrder, "alice", map[string]int64{"sessions": 2, "seq": 6, "epoch": 2, "earlier_epoch": 3}}},
	},
	{
		name: "duplicated seq",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `UPDATE sessions SET seq = 1 WHERE id = 'b2'`)
		},
		want: []want{{verify.Seq, "bob", map[string]int64{"sessions": 3, "min_seq": 1, "max_seq": 3, "distinct_seqs": 2}}},
	},
	{
		name: "threshold alert lost",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `DELETE FROM alerts WHERE session_id = 'a8'`)
		},
		want: []want{{verify.AlertMissing, "alice", map[string]int64{"seq": 8, "max_sessions": 10, "percent": 80}}},
	},
	{
		name: "threshold alert without its admission",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			p := f.periods["carol"]
			b.exec(t, `INSERT INTO alerts (kind, user_id, plan, metric, percent, used, limit_value, period_start, period_end, occurred_at, session_id, next_attempt_at)
				VALUES ('usage.threshold_crossed', 'carol', 'free', 'sessions', 80, 8, 10, ?, ?, ?, 'c2', ?)`, b.ts(p.Start), b.ts(p.End), b.ts(t0), b.ts(t0))
		},
		want: []want{{verify.AlertUnfounded, "carol", map[string]int64{"percent": 80, "used": 8, "limit": 10}}},
	},
	{
		name: "minutes alert lost",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `DELETE FROM alerts WHERE metric = 'minutes' AND percent = 100`)
		},
		want: []want{{verify.AlertMissing, "alice", map[string]int64{"seconds_before": 0, "seconds_after": 600, "percent": 100, "limit_minutes": 10}}},
	},
	{
		name: "minutes alert on the wrong completion",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `UPDATE alerts SET session_id = 'a2' WHERE metric = 'minutes' AND percent = 80`)
		},
		want: []want{
			{verify.AlertMissing, "alice", map[string]int64{"percent": 80, "limit_minutes": 10}},
			{verify.AlertUnfounded, "alice", map[string]int64{"percent": 80, "limit_minutes": 10}},
		},
	},
	{
		name: "gap in seq",
		corrupt: func(t *testing.T, b *backend, f *fixture) {
			b.exec(t, `UPDATE sessions SET seq = 5 WHERE id = 'b3'`)
		},
		want: []want{{verify.Seq, "bob", map[string]int64{"sessions": 3, "min_seq": 1, "max_seq": 5, "distinct_seqs": 3}}},
	},
}

func TestStoreCorruptionsAreReported(t *testing.T) {
	for _, bk := range backends() {
		t.Run(bk.name, func(t *testing.T) {
			for _, tc := range storeCorruptions {
				t.Run(tc.name, func(t *testing.T) {
					t.Parallel() // each has a store of its own
					b := bk.open(t)
					f := seed(t, b)
					tc.corrupt(t, b, f)
					wantReport(t, run(t, b), tc.want)
				})
			}
		})
	}
}

func TestRedisCorruptionsAreReported(t *testing.T) {
	for _, bk := range backends() {
		t.Run(bk.name, func(t *testing.T) {
			b := bk.open(t)
			f := seed(t, b)
			client, cache := withRedis(t, b, f)
			ctx := t.Context()
			key := func(user string) string { return cache.Key(user, f.periods[user].Start) }
			// alice's cache lost her last write (a failover): one version behind.
			must(t, client.HIncrBy(ctx, key("alice"), "v", -1).Err())
			must(t, client.HIncrBy(ctx, key("alice"), "s", -1).Err())
			// bob's has the right version but counts something else.
			must(t, client.HIncrBy(ctx, key("bob"), "s", 1).Err())
			// dave's key is not a counter hash at all.
			must(t, client.Del(ctx, key("dave")).Err())
			must(t, client.Set(ctx, key("dave"), "garbage", 0).Err())
			// carol's is ahead of the store, which is no violation (the
			// service may have written since), only counted.
			must(t, client.HIncrBy(ctx, key("carol"), "v", 5).Err())
			// Counters of a period the store never recorded: lost usage.
			erinPeriod := t0.AddDate(0, 2, 0)
			must(t, client.HSet(ctx, cache.Key("erin:x", erinPeriod), "s", 2, "sec", 0, "v", 3).Err())
			// An empty seed of a period without a row is not evidence of
			// anything.
			must(t, client.HSet(ctx, cache.Key("frank", erinPeriod), "s", 0, "sec", 0, "v", 0).Err())

			rep := run(t, b)
			wantReport(t, rep, []want{
				{verify.RedisBehind, "alice", map[string]int64{"redis_version": 11, "store_version": 12, "redis_sessions": 9, "store_sessions": 10}},
				{verify.RedisMismatch, "bob", map[string]int64{"redis_sessions": 4, "store_sessions": 3}},
				{verify.RedisCorrupt, "dave", nil},
				{verify.RedisOrphan, "erin:x", map[string]int64{"redis_version": 3, "redis_sessions": 2}},
			})
			want := verify.RedisSummary{Checked: true, Keys: 5, Missing: 1, Behind: 1, Ahead: 1, Mismatched: 1, Corrupt: 1, Scanned: 6, Orphans: 1}
			if rep.Redis != want {
				t.Errorf("redis summary %+v, want %+v", rep.Redis, want)
			}
		})
	}
}

func TestMaxViolationsTruncatesTheListNotTheCount(t *testing.T) {
	b := openSQLite(t)
	seed(t, b)
	b.exec(t, `UPDATE usage SET seconds = seconds + 1`)
	b.opts.MaxViolations = 2
	rep := run(t, b)
	if rep.Total != wantPeriods || len(rep.Violations) != 2 || !rep.Truncated || rep.Counts[verify.Seconds] != wantPeriods {
		t.Fatalf("total %d, listed %d, truncated %v, counts %v", rep.Total, len(rep.Violations), rep.Truncated, rep.Counts)
	}
}

func TestMissingEmbeddedStoreIsAnError(t *testing.T) {
	_, err := verify.Run(t.Context(), verify.Options{DataDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "no embedded store") {
		t.Fatalf("verify of an empty data directory: %v", err)
	}
}

// wantReport checks that the report holds exactly the wanted violations.
func wantReport(t *testing.T, rep *verify.Report, wants []want) {
	t.Helper()
	if rep.OK() {
		t.Fatal("the report is OK; want violations")
	}
	if rep.Total != int64(len(wants)) || len(rep.Violations) != len(wants) {
		t.Errorf("%d violation(s), want %d", rep.Total, len(wants))
	}
	for _, w := range wants {
		i := slices.IndexFunc(rep.Violations, func(v verify.Violation) bool { return v.Check == w.check && v.UserID == w.user })
		if i < 0 {
			t.Errorf("no %s violation for %s", w.check, w.user)
			continue
		}
		v := rep.Violations[i]
		for k, n := range w.numbers {
			if got, ok := v.Numbers[k]; !ok || got != n {
				t.Errorf("%s %s: %s = %d (present %v), want %d", w.check, w.user, k, got, ok, n)
			}
		}
		if !strings.Contains(v.String(), "user="+w.user) || !strings.Contains(v.String(), string(w.check)) {
			t.Errorf("the line does not name the check and user: %s", v)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestSQLiteOfAStoppedService audits the embedded store after the service
// closed it (no -wal or -shm file left), read-only: the audit must work and
// must not write to the file.
func TestSQLiteOfAStoppedService(t *testing.T) {
	b := openSQLite(t)
	seed(t, b)
	b.store.Close()
	path := filepath.Join(b.opts.DataDir, sqlite.FileName)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rep := run(t, b)
	if !rep.OK() || rep.Sessions != wantSessions {
		t.Fatalf("report %+v", rep)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("the audit changed the database file")
	}
}

// TestFromConfig audits what the TALLY_* variables describe, as `tally
// verify` does: the embedded store with its in-process Redis (not checked),
// then Postgres with a Redis URL.
func TestFromConfig(t *testing.T) {
	b := openSQLite(t)
	seed(t, b)
	load := func(env map[string]string) verify.Options {
		t.Helper()
		cfg, err := config.Load(func(k string) string { return env[k] })
		if err != nil {
			t.Fatal(err)
		}
		opts, release, err := verify.FromConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(release)
		return opts
	}

	opts := load(map[string]string{"TALLY_DATA_DIR": b.opts.DataDir})
	rep, err := verify.Run(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Sessions != wantSessions || rep.Redis.Checked || !strings.Contains(rep.Redis.Skipped, "in-process Redis") {
		t.Fatalf("embedded: %+v", rep)
	}

	pg := openPostgres(t)
	f := seed(t, pg)
	withRedis(t, pg, f) // the counters, under pg.opts.RedisKeyPrefix
	addr := pg.opts.Redis.(*redis.Client).Options().Addr
	opts = load(map[string]string{
		"TALLY_DATABASE_URL": pg.opts.DatabaseURL, "TALLY_REDIS_URL": testenv.RedisURL(addr),
		"TALLY_REDIS_KEY_PREFIX": pg.opts.RedisKeyPrefix,
		"TALLY_JWT_SECRET":       "verify-test-secret-0123456789abcdef", "TALLY_ADMIN_TOKEN": "verify-test-admin-0123456789abcdef",
	})
	rep, err = verify.Run(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Sessions != wantSessions || !rep.Redis.Checked || rep.Redis.Equal != 4 {
		t.Fatalf("postgres and redis: %+v", rep)
	}
}

// TestTrailBeginsAtTheMigration upgrades a store that was changed before
// the audit trail existed (schema 0003, then Migrate): those changes have
// no event and are not violations; the changes after the migration are
// checked like any.
func TestTrailBeginsAtTheMigration(t *testing.T) {
	for _, bk := range backends() {
		t.Run(bk.name, func(t *testing.T) {
			b := bk.open(t)
			dir := filepath.Join("..", "..", "persistence", bk.name, "migrations")
			if bk.name == "postgres" {
				b.exec(t, `CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`)
			} else {
				b.exec(t, `CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT`)
			}
			for v, name := range []string{"0001_init", "0002_idempotency_keys", "0003_group_commit"} {
				sqlText, err := os.ReadFile(filepath.Join(dir, name+".sql"))
				if err != nil {
					t.Fatal(err)
				}
				b.exec(t, string(sqlText))
				b.exec(t, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`, v+1, name, b.ts(t0))
			}
			// Before the trail: legacy moved to pro and re-anchored
			// (version 3), one session completed and one failed; newbie
			// provisioned and untouched.
			p := domain.PeriodAt(t0, t0)
			b.exec(t, `INSERT INTO users (id, plan, billing_anchor, version, created_at, updated_at) VALUES ('legacy', 'pro', ?, 3, ?, ?)`,
				b.ts(t0), b.ts(t0.AddDate(0, -2, 0)), b.ts(t0))
			b.exec(t, `INSERT INTO users (id, plan, billing_anchor, version, created_at, updated_at) VALUES ('newbie', 'free', ?, 1, ?, ?)`,
				b.ts(t0), b.ts(t0), b.ts(t0))
			b.exec(t, `INSERT INTO usage (user_id, period_start, period_end, sessions, seconds, version) VALUES ('legacy', ?, ?, 3, 60, 4)`,
				b.ts(p.Start), b.ts(p.End))
			for i, st := range []struct {
				status   string
				duration any
			}{{"completed", int64(60)}, {"failed", nil}, {"created", nil}} {
				b.exec(t, `INSERT INTO sessions (id, user_id, title, language, stt_provider, status, duration_seconds, period_start, seq, max_sessions, created_at, updated_at)
					VALUES (?, 'legacy', 'x', 'en-US', 'google', ?, ?, ?, ?, -1, ?, ?)`,
					fmt.Sprintf("l%d", i+1), st.status, st.duration, b.ts(p.Start), i+1, b.ts(t0), b.ts(t0))
			}

			if err := b.store.Migrate(t.Context()); err != nil {
				t.Fatal(err)
			}
			if rep := run(t, b); !rep.OK() || rep.Users != 2 || rep.Events != 0 {
				t.Fatalf("right after the migration: %d violation(s), %d users, %d events; want none, 2, 0", rep.Total, rep.Users, rep.Events)
			}

			// After it, every change has its event, and a missing one is
			// found: the trail of legacy begins after version 3.
			student := "student"
			if _, err := b.store.PutUser(t.Context(), persistence.UserChange{ID: "legacy", Plan: &student, Now: t0.Add(time.Hour), By: ops}); err != nil {
				t.Fatal(err)
			}
			if _, _, err := b.store.CompleteSession(t.Context(), ops, "l3", 30, t0.Add(time.Hour), nil); err != nil {
				t.Fatal(err)
			}
			if rep := run(t, b); !rep.OK() || rep.Events != 2 {
				t.Fatalf("after two admin changes: %d violation(s), %d events; want none, 2", rep.Total, rep.Events)
			}
			b.exec(t, `DELETE FROM user_events WHERE kind = 'put_user'`)
			b.exec(t, `DELETE FROM user_events WHERE session_id = 'l3'`)
			wantReport(t, run(t, b), []want{
				{verify.UserEvents, "legacy", map[string]int64{"version": 4, "baseline_version": 3, "events": 0}},
				{verify.SessionEvents, "legacy", map[string]int64{"events": 0}},
			})
		})
	}
}

// `tally verify` reaches a Redis that requires a password with the
// service's own variables (TALLY_REDIS_PASSWORD here), as the service does.
func TestFromConfigUsesTheRedisCredentials(t *testing.T) {
	auth := testenv.RedisAuth{User: "tally", Password: "verify-redis-password"}
	addr, _ := testenv.StartRedisWith(t, auth)
	cfg, err := config.Load(func(k string) string {
		return map[string]string{
			"TALLY_DATA_DIR":       t.TempDir(),
			"TALLY_REDIS_URL":      testenv.RedisURL(addr),
			"TALLY_REDIS_USERNAME": auth.User,
			"TALLY_REDIS_PASSWORD": auth.Password,
		}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	opts, release, err := verify.FromConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := opts.Redis.Ping(ctx).Err(); err != nil {
		t.Fatalf("verify's Redis client: %v", err)
	}
}
