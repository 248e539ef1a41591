package drills_test

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/drills"
	"github.com/tally-dev/tally/internal/testenv"
)

// spyTB records what a Check reports instead of failing the test.
type spyTB struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (s *spyTB) Helper() {}

// Log keeps the self-test's summary line out of the drills' table.
func (s *spyTB) Log(args ...any) {
	if line := fmt.Sprint(args...); !strings.HasPrefix(line, "DRILL ") {
		s.TB.Log(line)
	}
}

func (s *spyTB) Errorf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errors = append(s.errors, fmt.Sprintf(format, args...))
}

func (s *spyTB) reported(substr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.errors {
		if strings.Contains(e, substr) {
			return true
		}
	}
	return false
}

// The checker can fail: a history and stores with the violations the
// drills look for — an acknowledged session missing, a session behind a
// 403, one key answered with two sessions, a 500, a 5xx the drill does
// not allow, a user over the limit — are each reported.
func TestCheckReportsViolations(t *testing.T) {
	env := baseEnv()
	env["TALLY_DATABASE_URL"] = testenv.PostgresURL(t)
	rc, rprefix := sharedRedis(t, env)
	s := startServer(t, env)
	client := drills.NewClient(t, jwtSecret, 10*time.Second)
	users := drills.Users("checker", 3)
	u0, u1, u2 := users[0], users[1], users[2]
	create := func(user, key string) *drills.Create {
		cr := client.Create(at(s.URL), user, key, drills.CreateBody, drills.DefaultRetry, nil)
		if cr.Outcome != drills.Admitted {
			t.Fatalf("create %s %s: %v", user, key, cr.Attempts)
		}
		return cr
	}

	history := &drills.History{}
	history.Add(create(u0, "fine"))
	// Admitted, but its client is recorded as told 403: a silent admit.
	silent := create(u0, "silent")
	silent.Outcome, silent.SessionID = drills.Rejected, ""
	silent.Attempts[0].Status, silent.Attempts[0].Code, silent.Attempts[0].SessionID = http.StatusForbidden, "session_limit_exceeded", ""
	history.Add(silent)
	// Told 200 with a session Postgres does not have: lost.
	lost := create(u1, "lost")
	lost.SessionID = "00000000-lost"
	lost.Attempts[0].SessionID = lost.SessionID
	history.Add(lost)
	// One key, two sessions, and statuses no drill accepts.
	twice := create(u1, "twice")
	now := time.Now()
	twice.Attempts = append([]drills.Attempt{
		{Start: now, End: now, Status: http.StatusInternalServerError, Code: "internal"},
		{Start: now, End: now, Status: http.StatusGatewayTimeout, Code: "timeout"},
		{Start: now, End: now, Status: http.StatusOK, SessionID: "00000000-other"},
	}, twice.Attempts...)
	history.Add(twice)
	// u2 at the limit, then one session more written behind the
	// service's back.
	for i := range drills.Limit {
		history.Add(create(u2, "full-"+strconv.Itoa(i)))
	}
	overLimit(t, env["TALLY_DATABASE_URL"], u2)
	spy := &spyTB{TB: t}
	sum := (&drills.Check{
		Name: "checker-self-test", Client: client, Target: s.URL, Users: users, History: history,
		DatabaseURL: env["TALLY_DATABASE_URL"], Redis: rc, RedisPrefix: rprefix,
		Allowed5xx: []int{http.StatusServiceUnavailable}, Converge: 1500 * time.Millisecond,
	}).Run(spy)

	for _, want := range []string{
		"LOST: session 00000000-lost",
		"SILENT ADMIT",
		"COUNTED TWICE",
		"500 (a bug)",
		"504, which this drill does not allow",
		"OVER LIMIT: user " + u2,
		"verify finds Postgres violations",
		"no Idempotency-Key record",
	} {
		if !spy.reported(want) {
			t.Errorf("the checker did not report %q; it reported:\n%s", want, strings.Join(spy.errors, "\n"))
		}
	}
	// Lost: the session Postgres never had, and the first of the two
	// sessions one key was answered with.
	if sum.Lost != 2 || sum.OverLimitUsers != 1 || sum.ByStatus[500] != 1 {
		t.Errorf("summary %s: want lost=2 over_limit_users=1 and one 500", sum.Line())
	}

}

// A Redis counter ahead of Postgres, which no re-seed can move back, is
// reported as Redis not converging.
func TestCheckReportsRedisAhead(t *testing.T) {
	env := baseEnv()
	env["TALLY_DATABASE_URL"] = testenv.PostgresURL(t)
	rc, rprefix := sharedRedis(t, env)
	s := startServer(t, env)
	client := drills.NewClient(t, jwtSecret, 10*time.Second)
	users := drills.Users("checker", 1)
	history := &drills.History{}
	cr := client.Create(at(s.URL), users[0], "one", drills.CreateBody, drills.DefaultRetry, nil)
	if cr.Outcome != drills.Admitted {
		t.Fatalf("create: %v", cr.Attempts)
	}
	history.Add(cr)
	if err := rc.HSet(context.Background(), counterKey(t, env["TALLY_DATABASE_URL"], rprefix, users[0]), "s", 0, "sec", 0, "v", 999).Err(); err != nil {
		t.Fatal(err)
	}

	spy := &spyTB{TB: t}
	(&drills.Check{
		Name: "checker-self-test-redis", Client: client, Target: s.URL, Users: users, History: history,
		DatabaseURL: env["TALLY_DATABASE_URL"], Redis: rc, RedisPrefix: rprefix, Converge: 1500 * time.Millisecond,
	}).Run(spy)
	if !spy.reported("did not converge") {
		t.Errorf("a Redis counter ahead of Postgres was not reported; the checker reported:\n%s", strings.Join(spy.errors, "\n"))
	}
}

// overLimit writes an 11th session for user straight into Postgres, with
// its usage row, as an over-admission would leave them.
func overLimit(t *testing.T, dbURL, user string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `
		WITH u AS (
		    UPDATE usage SET sessions = sessions + 1, version = version + 1
		    WHERE user_id = $1 RETURNING period_start, sessions
		)
		INSERT INTO sessions (id, user_id, title, language, stt_provider, status, period_start, seq, max_sessions, created_at, updated_at)
		SELECT 'over-limit-' || $1, $1, 'x', 'en-US', 'google', 'created', u.period_start, u.sessions, 10, now(), now() FROM u`, user)
	if err != nil {
		t.Fatal(err)
	}
}

// counterKey is the Redis key of user's current counters
// (rediscache.Cache.Key).
func counterKey(t *testing.T, dbURL, prefix, user string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var start time.Time
	if err := conn.QueryRow(ctx, `SELECT period_start FROM usage WHERE user_id = $1`, user).Scan(&start); err != nil {
		t.Fatal(err)
	}
	return prefix + "usage:" + user + ":" + strconv.FormatInt(start.UTC().UnixMicro(), 10)
}
