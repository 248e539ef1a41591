package main

import (
	"net/http"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-dev/tally/drills"
	"github.com/tally-dev/tally/internal/testenv"
)

// The kill -9 drill: a `tally serve` process is killed with SIGKILL in the
// middle of a load of keyed and key-less creates (drills.Load mixes them)
// and restarted on the same port, as a supervisor would. Its clients see
// connections cut and refused and retry — a keyed create with the same
// Idempotency-Key, whose retry must get the first outcome, not a second
// session; a key-less one as a new create, whose cut-off attempt may or
// may not have committed, which the checker accounts for. Afterwards nothing acknowledged is lost, nobody is over the
// limit, every key is counted once, Redis equals Postgres, and the exact
// quota is admitted (package drills has the checker).
func TestDrillKillNineMidLoad(t *testing.T) {
	const secret = "kill-drill-secret-0123456789abcdef"
	pg := testenv.StartPostgres(t)
	redisAddr, prefix := testenv.Redis(t)
	env := map[string]string{
		"TALLY_DATABASE_URL":     pg.CreateDatabase(t),
		"TALLY_REDIS_URL":        testenv.RedisURL(redisAddr),
		"TALLY_REDIS_KEY_PREFIX": prefix,
		"TALLY_JWT_SECRET":       secret,
		"TALLY_ADMIN_TOKEN":      "kill-drill-admin-0123456789abcdef",
		"TALLY_LOG_LEVEL":        "warn",
		"TALLY_REQUEST_TIMEOUT":  "2s",
	}
	// COMMITs that wait 50ms for their WAL flush: the kill catches
	// admissions that commit while their client never hears of them.
	drills.SlowCommits(t, env["TALLY_DATABASE_URL"], 50*time.Millisecond)
	port := testenv.FreePort(t)
	p := startProcessOn(t, env, port)
	base := p.addr // the restart listens on the same port

	client := drills.NewClient(t, secret, 10*time.Second)
	users := drills.Users("kill9", 40)
	history := &drills.History{}
	load := &drills.Load{
		Client: client, Target: func() string { return base }, Users: users,
		Workers: 12, Ramp: 6 * time.Second, Pace: 10 * time.Millisecond, History: history,
	}
	run := load.Start(t)

	time.Sleep(1500 * time.Millisecond)
	if !drills.WaitForCommit(t, env["TALLY_DATABASE_URL"], 3*time.Second) {
		t.Log("no COMMIT seen in flight; killing anyway")
	}
	fault := time.Now()
	p.kill()
	startProcessOn(t, env, port) // killed by its cleanup
	t.Logf("killed with SIGKILL and restarted, ready again after %s", time.Since(fault).Round(time.Millisecond))
	time.Sleep(1500 * time.Millisecond)
	run.Wait()

	rc := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rc.Close()
	sum := (&drills.Check{
		Name: "tally-kill-9", Client: client, Target: base, Users: users, History: history,
		DatabaseURL: env["TALLY_DATABASE_URL"], Redis: rc, RedisPrefix: prefix,
		Allowed5xx: []int{http.StatusServiceUnavailable}, Fault: fault, Heal: fault,
	}).Run(t)
	if sum.LostReplies == 0 {
		t.Errorf("the kill caught no create whose outcome was committed unanswered: the drill proved less than it claims")
	}
}
