package drills_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/drills"
	"github.com/tally-dev/tally/internal/testenv"
)

// pgDeadline is TALLY_REQUEST_TIMEOUT in the Postgres outage drills.
const pgDeadline = 2 * time.Second

// A private PostgreSQL is stopped (immediate: connections cut, crash
// recovery on restart) for three seconds mid-load, then started again:
// Postgres refuses connections. See checkOutage for what must hold.
func TestPostgresOutageUnderLoad(t *testing.T) {
	pg := testenv.StartPostgres(t)
	env := baseEnv()
	env["TALLY_DATABASE_URL"] = pg.CreateDatabase(t)
	env["TALLY_REQUEST_TIMEOUT"] = pgDeadline.String()
	rc, rprefix := sharedRedis(t, env)
	s := startServer(t, env)

	client := drills.NewClient(t, jwtSecret, 10*time.Second)
	users := drills.Users("pgdown", 40)
	load, history := newLoad(client, at(s.URL), users, 9*time.Second)
	run := load.Start(t)

	time.Sleep(1200 * time.Millisecond)
	var o outage
	o.down = time.Now()
	pg.Stop(t)
	o.from = time.Now()
	o.ready = pollReady(client, s.URL, 2800*time.Millisecond)
	o.to = time.Now()
	pg.Start(t)
	o.up = time.Now()
	t.Logf("postgres stopped at %s, accepting connections again at %s (stop took %s, start %s)", o.down.Format("15:04:05.000"),
		o.up.Format("15:04:05.000"), o.from.Sub(o.down).Round(time.Millisecond), o.up.Sub(o.to).Round(time.Millisecond))
	time.Sleep(1500 * time.Millisecond)
	run.Wait()

	sum := (&drills.Check{
		Name: "postgres-outage", Client: client, Target: s.URL, Users: users, History: history,
		DatabaseURL: env["TALLY_DATABASE_URL"], Redis: rc, RedisPrefix: rprefix,
		Allowed5xx: []int{http.StatusServiceUnavailable}, Fault: o.down, Heal: o.up,
	}).Run(t)
	checkOutage(t, history, env["TALLY_DATABASE_URL"], o, sum)
}

// The machine's Postgres becomes unreachable the other way: a fault proxy
// between it and Tally stops forwarding anything, both ways, without
// closing a connection, for three seconds (a partition: no refusal, no
// reset, only silence). See checkOutage for what must hold.
func TestPostgresBlackholedUnderLoad(t *testing.T) {
	direct := testenv.PostgresURL(t)
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	proxy := testenv.Proxy(t, u.Host)
	u.Host = proxy.Addr()
	env := baseEnv()
	env["TALLY_DATABASE_URL"] = u.String()
	env["TALLY_REQUEST_TIMEOUT"] = pgDeadline.String()
	rc, rprefix := sharedRedis(t, env)
	s := startServer(t, env)

	client := drills.NewClient(t, jwtSecret, 10*time.Second)
	users := drills.Users("pghole", 40)
	load, history := newLoad(client, at(s.URL), users, 9*time.Second)
	// Clients that arrive independently, as real ones do, rather than in
	// step: a silent Postgres holds every request until its deadline, and
	// a closed loop of quick retries would leave the clients synchronized.
	load.Workers, load.Pace = 24, 300*time.Millisecond
	load.Retry = drills.Retry{For: 20 * time.Second, Backoff: 300 * time.Millisecond, MaxBackoff: time.Second}
	run := load.Start(t)

	time.Sleep(1200 * time.Millisecond)
	var o outage
	o.down = time.Now()
	up := proxy.Timeout(t, testenv.Upstream, 0)
	down := proxy.Timeout(t, testenv.Downstream, 0)
	o.from = time.Now()
	o.ready = pollReady(client, s.URL, 2800*time.Millisecond)
	o.to = time.Now()
	proxy.Remove(t, up)
	proxy.Remove(t, down)
	o.up = time.Now()
	time.Sleep(1500 * time.Millisecond)
	run.Wait()

	sum := (&drills.Check{
		Name: "postgres-blackholed", Client: client, Target: s.URL, Users: users, History: history,
		DatabaseURL: direct, Redis: rc, RedisPrefix: rprefix,
		Allowed5xx: []int{http.StatusServiceUnavailable}, Fault: o.down, Heal: o.up,
	}).Run(t)
	checkOutage(t, history, direct, o, sum)
}

// outage is when Postgres was unreachable: the fault began at down and was
// complete at from; healing began at to and Postgres was reachable again
// at up. ready are the /readyz statuses polled in between.
type outage struct {
	down, from, to, up time.Time
	ready              []int
}

// pollReady polls /readyz until d has passed.
func pollReady(c *drills.Client, base string, d time.Duration) []int {
	var statuses []int
	for end := time.Now().Add(d); time.Now().Before(end); {
		time.Sleep(300 * time.Millisecond)
		statuses = append(statuses, readyz(c, base))
	}
	return statuses
}

// checkOutage asserts what invariant I4 (docs/contract.md) asks of a Postgres
// outage, beyond the common checks: while Postgres is unreachable every
// create is a 503 with Retry-After within the request deadline — never a
// 403, never an admission, never a hang — and /readyz is 503; outside the
// outage there is no 503 at all.
//
// One 403 is right inside the outage: a key-less create of a user at the
// limit, refused from its actor's memory (confirmed by the store less than
// rejectFreshness before, actors/admit.go; docs/contract.md §1). It must be
// true: the user already had Limit sessions in Postgres, created before the
// refusal was answered.
func checkOutage(t *testing.T, history *drills.History, dbURL string, o outage, sum *drills.Summary) {
	t.Helper()
	full := sessionTimes(t, dbURL)
	for i, st := range o.ready {
		if st != http.StatusServiceUnavailable {
			t.Errorf("/readyz during the outage (poll %d of %d): %d, want 503", i+1, len(o.ready), st)
		}
	}
	// The pool may still hand out a connection the outage killed: a 503
	// is tolerated until shortly after Postgres is reachable again.
	const settle = time.Second
	var slow, wrongInside, outside []drills.Attempt
	inside := map[int]int{}
	for _, cr := range history.Creates() {
		for _, a := range cr.Attempts {
			if a.End.Sub(a.Start) > pgDeadline+1500*time.Millisecond {
				slow = append(slow, a)
			}
			if !a.Start.Before(o.from) && !a.End.After(o.to) {
				inside[a.Status]++
				fromMemory := cr.Key == "" && a.Status == http.StatusForbidden && a.Code == "session_limit_exceeded" &&
					full(cr.User, a.End) >= drills.Limit
				if (a.Status != http.StatusServiceUnavailable || a.RetryAfter == "") && !fromMemory {
					wrongInside = append(wrongInside, a)
				}
			}
			if a.Status == http.StatusServiceUnavailable && (a.End.Before(o.down) || a.Start.After(o.up.Add(settle))) {
				outside = append(outside, a)
			}
		}
	}
	report := func(what string, as []drills.Attempt) {
		if len(as) == 0 {
			return
		}
		var b strings.Builder
		for i, a := range as[:min(len(as), 5)] {
			fmt.Fprintf(&b, "\n  %d. %s (took %s)", i+1, a, a.End.Sub(a.Start).Round(time.Millisecond))
		}
		t.Errorf("%d attempt(s) %s, e.g.:%s", len(as), what, b.String())
	}
	report(fmt.Sprintf("took longer than the request deadline (%s) by more than 1.5s", pgDeadline), slow)
	report(fmt.Sprintf("sent and answered while Postgres was unreachable (%s–%s) were not a 503 with Retry-After",
		o.from.Format("15:04:05.000"), o.to.Format("15:04:05.000")), wrongInside)
	report(fmt.Sprintf("were a 503 outside the outage (%s–%s, +%s)", o.down.Format("15:04:05.000"), o.up.Format("15:04:05.000"), settle), outside)
	n := 0
	for _, c := range inside {
		n += c
	}
	if n == 0 {
		t.Errorf("no create was sent and answered while Postgres was unreachable: the drill proved nothing")
	}
	t.Logf("attempts entirely inside the outage, by status: %v; %d sessions admitted in all", inside, sum.Admitted)
}

// sessionTimes reads when every session in the database was created, and
// returns how many of a user's were created no later than an instant.
func sessionTimes(t *testing.T, dbURL string) func(user string, at time.Time) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT user_id, created_at FROM sessions`)
	if err != nil {
		t.Fatal(err)
	}
	created := map[string][]time.Time{}
	var (
		user string
		at   time.Time
	)
	if _, err := pgx.ForEachRow(rows, []any{&user, &at}, func() error {
		created[user] = append(created[user], at)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return func(user string, at time.Time) int {
		n := 0
		for _, c := range created[user] {
			if !c.After(at) {
				n++
			}
		}
		return n
	}
}

// Tally reaches a private Postgres through a fault proxy that, again and
// again, swallows every reply for a while: statements and COMMITs
// still run, their answers never come. Requests caught in a long
// blackhole end at their 1s deadline with an unknown outcome, and the
// clients retry with the same Idempotency-Key once the path is back.
// Every key is counted once: one session per admitted key, the retry
// answered with the session its lost COMMIT created.
func TestLostCommitRepliesAreCountedOnce(t *testing.T) {
	pg := testenv.StartPostgres(t)
	direct := pg.CreateDatabase(t)
	// Slow COMMITs: each WAL flush waits 50ms first (group commit), so
	// that whenever a blackhole begins, the transactions in flight are
	// mostly committing: they commit, and their replies are swallowed.
	drills.SlowCommits(t, direct, 50*time.Millisecond)
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	proxy := testenv.Proxy(t, u.Host)
	u.Host = proxy.Addr()
	env := baseEnv()
	env["TALLY_DATABASE_URL"] = u.String()
	env["TALLY_REQUEST_TIMEOUT"] = "1s"
	rc, rprefix := sharedRedis(t, env)
	s := startServer(t, env)

	client := drills.NewClient(t, jwtSecret, 10*time.Second)
	// Many users at once: one user's creates run one after another, and
	// the blackholes must catch many transactions in flight.
	users := drills.Users("lostcommit", 60)
	load, history := newLoad(client, at(s.URL), users, 9*time.Second)
	load.Workers, load.Initial = 20, 20
	run := load.Start(t)

	time.Sleep(500 * time.Millisecond)
	fault := time.Now()
	// Short blackholes end before the request deadline: the service finds
	// the outcome of its unknown COMMIT itself (by the key) and answers.
	// Long ones outlast it: the client gets a 503 and its retry with the
	// key must replay the committed outcome.
	for _, window := range []time.Duration{200 * time.Millisecond, 1300 * time.Millisecond, 250 * time.Millisecond, 1300 * time.Millisecond, 1300 * time.Millisecond} {
		drop := proxy.DropReplies(t)
		time.Sleep(window + rand.N(100*time.Millisecond))
		proxy.Remove(t, drop)
		time.Sleep(300*time.Millisecond + rand.N(200*time.Millisecond))
	}
	heal := time.Now()
	time.Sleep(time.Second)
	run.Wait()

	sum := (&drills.Check{
		Name: "postgres-lost-commit-reply", Client: client, Target: s.URL, Users: users, History: history,
		DatabaseURL: direct, Redis: rc, RedisPrefix: rprefix,
		Allowed5xx: []int{http.StatusServiceUnavailable, http.StatusGatewayTimeout}, Fault: fault, Heal: heal,
	}).Run(t)
	resolved := metric(t, s, `tally_unknown_outcomes_total{found="committed"}`)
	t.Logf("%d outcomes committed while their client got no answer (replayed to its retry); %v more found committed by the service itself", sum.LostReplies, resolved)
	if sum.LostReplies == 0 {
		t.Errorf("no outcome was committed while its client got no answer: the drill never lost a COMMIT reply to a client, so it proved nothing")
	}
}
