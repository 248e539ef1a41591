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
	"github.com/redis/go-redis/v9"

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

// expect fails t for each of wants that the checker did not report.
func (s *spyTB) expect(t *testing.T, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !s.reported(want) {
			t.Errorf("the checker did not report %q; it reported:\n%s", want, strings.Join(s.errors, "\n"))
		}
	}
}

// selfTest is a Tally on a fresh database and a private Redis prefix, for
// the checker's self-tests.
type selfTest struct {
	t      *testing.T
	dbURL  string
	rc     redis.UniversalClient
	prefix string
	url    string
	client *drills.Client
}

func newSelfTest(t *testing.T) *selfTest {
	env := baseEnv()
	env["TALLY_DATABASE_URL"] = testenv.PostgresURL(t)
	rc, prefix := sharedRedis(t, env)
	s := startServer(t, env)
	return &selfTest{t: t, dbURL: env["TALLY_DATABASE_URL"], rc: rc, prefix: prefix, url: s.URL,
		client: drills.NewClient(t, jwtSecret, 10*time.Second)}
}

// check runs a Check of history (tolerating 503s, waiting at most 1.5s
// for Redis), reporting to a spy.
func (e *selfTest) check(name string, users []string, history *drills.History) (*spyTB, *drills.Summary) {
	spy := &spyTB{TB: e.t}
	sum := (&drills.Check{
		Name: name, Client: e.client, Target: e.url, Users: users, History: history,
		DatabaseURL: e.dbURL, Redis: e.rc, RedisPrefix: e.prefix,
		Allowed5xx: []int{http.StatusServiceUnavailable}, Converge: 1500 * time.Millisecond,
	}).Run(spy)
	return spy, sum
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
	e := newSelfTest(t)
	users := drills.Users("checker", 3)
	u0, u1, u2 := users[0], users[1], users[2]
	create := func(user, key string) *drills.Create {
		cr := e.client.Create(at(e.url), user, key, drills.CreateBody, drills.DefaultRetry, nil)
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
	overLimit(t, e.dbURL, u2)
	spy, sum := e.check("checker-self-test", users, history)
	spy.expect(t,
		"LOST: session 00000000-lost",
		"SILENT ADMIT",
		"COUNTED TWICE",
		"500 (a bug)",
		"504, which this drill does not allow",
		"OVER LIMIT: user "+u2,
		"verify finds Postgres violations",
		"no Idempotency-Key record",
	)
	// Lost: the session Postgres never had, and the first of the two
	// sessions one key was answered with.
	if sum.Lost != 2 || sum.OverLimitUsers != 1 || sum.ByStatus[500] != 1 {
		t.Errorf("summary %s: want lost=2 over_limit_users=1 and one 500", sum.Line())
	}

}

// The checker accounts exactly for key-less creates, whose unanswered
// attempts may or may not have admitted a session: one that did is no
// failure, but a key-less 200 missing from Postgres, a session no create
// accounts for (told nobody, behind a 403, or created while no unanswered
// attempt of its user was in flight), and one session told to two creates
// each are.
func TestCheckAccountsForKeyLessCreates(t *testing.T) {
	e := newSelfTest(t)
	users := drills.Users("checker-keyless", 6)
	lost, untold, unanswered, elsewhen, refused, twice := users[0], users[1], users[2], users[3], users[4], users[5]
	create := func(user string) *drills.Create {
		cr := e.client.Create(at(e.url), user, "", drills.CreateBody, drills.DefaultRetry, nil)
		if cr.Outcome != drills.Admitted || len(cr.Attempts) != 1 {
			t.Fatalf("key-less create for %s: %v", user, cr.Attempts)
		}
		return cr
	}
	// asUnanswered rewrites a create's one attempt as a 503, as if the
	// reply had been lost after the commit.
	asUnanswered := func(cr *drills.Create) *drills.Create {
		cr.Outcome, cr.SessionID = drills.Unknown, ""
		cr.Attempts[0].Status, cr.Attempts[0].Code, cr.Attempts[0].SessionID, cr.Attempts[0].RetryAfter =
			http.StatusServiceUnavailable, "unavailable", "", "1"
		return cr
	}

	history := &drills.History{}
	// Told 200 with a session Postgres does not have.
	now := time.Now()
	history.Add(&drills.Create{User: lost, Outcome: drills.Admitted, SessionID: "00000000-keyless-lost", Attempts: []drills.Attempt{
		{Start: now, End: now, Status: http.StatusOK, SessionID: "00000000-keyless-lost"},
	}})
	// Two admitted, one of them never recorded: told nobody.
	history.Add(create(untold))
	hidden := create(untold)
	// Admitted while its client got a 503: accounted for, not a failure.
	history.Add(asUnanswered(create(unanswered)))
	// The same, but the unanswered attempt is an hour before the session:
	// the count allows it, the attempt cannot account for it.
	shifted := create(elsewhen)
	shiftedID := shifted.SessionID
	asUnanswered(shifted)
	shifted.Attempts[0].Start = shifted.Attempts[0].Start.Add(-time.Hour)
	shifted.Attempts[0].End = shifted.Attempts[0].End.Add(-time.Hour)
	history.Add(shifted)
	// Admitted, but its client is recorded as told 403.
	behind := create(refused)
	history.Add(&drills.Create{User: refused, Outcome: drills.Rejected, Attempts: []drills.Attempt{{
		Start: behind.Attempts[0].Start, End: behind.Attempts[0].End, Status: http.StatusForbidden, Code: "session_limit_exceeded",
	}}})
	// One session, answered to two key-less creates.
	one := create(twice)
	history.Add(one)
	copied := *one
	history.Add(&copied)

	spy, sum := e.check("checker-self-test-keyless", users, history)
	spy.expect(t,
		"LOST: session 00000000-keyless-lost of "+lost,
		"user "+untold+": 2 sessions in Postgres, but only 1 acknowledged",
		"SILENT ADMIT: session "+hidden.SessionID+" of "+untold+" has no Idempotency-Key record",
		"SILENT ADMIT: session "+shiftedID+" of "+elsewhen+" has no Idempotency-Key record",
		"user "+refused+": 1 sessions in Postgres, but only 0 acknowledged",
		"SILENT ADMIT: session "+behind.SessionID+" of "+refused,
		"ONE SESSION, TWO CREATES: session "+one.SessionID,
	)
	if spy.reported(unanswered) {
		t.Errorf("a key-less session whose attempt got a 503 was reported; it may have committed:\n%s", strings.Join(spy.errors, "\n"))
	}
	if sum.KeyLess != 7 || sum.Lost != 1 || sum.UnknownCommitted != 1 || sum.LostReplies != 1 || sum.KeyLessLostReplies != 1 || sum.Unknown != 2 {
		t.Errorf("summary %s: want keyless=7 lost=1 unknown=2 unknown_committed=1 lost_replies=1 keyless_lost_replies=1", sum.Line())
	}
}

// A Redis counter ahead of Postgres, which no re-seed can move back, is
// reported as Redis not converging.
func TestCheckReportsRedisAhead(t *testing.T) {
	e := newSelfTest(t)
	users := drills.Users("checker", 1)
	history := &drills.History{}
	cr := e.client.Create(at(e.url), users[0], "one", drills.CreateBody, drills.DefaultRetry, nil)
	if cr.Outcome != drills.Admitted {
		t.Fatalf("create: %v", cr.Attempts)
	}
	history.Add(cr)
	if err := e.rc.HSet(context.Background(), counterKey(t, e.dbURL, e.prefix, users[0]), "s", 0, "sec", 0, "v", 999).Err(); err != nil {
		t.Fatal(err)
	}

	spy, _ := e.check("checker-self-test-redis", users, history)
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
