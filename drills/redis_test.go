package drills_test

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/drills"
	"github.com/tally-dev/tally/internal/testenv"
)

// Redis is a cache that the admission path never waits for, so a Redis
// fault must cost nothing but a re-seed: no 5xx other than 503 (none are
// expected), nothing lost, nobody over, and the counters equal to
// Postgres's once Tally has repaired Redis.
var redisAllowed5xx = []int{http.StatusServiceUnavailable}

// The primary of a Sentinel-managed Redis is killed with SIGKILL mid-load;
// the replica is promoted (it may have missed the last acknowledged
// writes, which is why Tally re-seeds it from Postgres).
func TestSentinelFailoverUnderLoad(t *testing.T) {
	cluster := testenv.StartSentinelCluster(t)
	env := baseEnv()
	env["TALLY_DATABASE_URL"] = testenv.PostgresURL(t)
	env["TALLY_REDIS_SENTINELS"] = strings.Join(cluster.SentinelAddrs(), ",")
	env["TALLY_REDIS_MASTER"] = cluster.MasterName()
	env["TALLY_REDIS_KEY_PREFIX"] = prefix
	s := startServer(t, env)
	rc := cluster.Client(t)
	probe := drills.WatchReseed(t, rc, prefix)

	client := drills.NewClient(t, jwtSecret, 10*time.Second)
	users := drills.Users("failover", 40)
	load, history := newLoad(client, at(s.URL), users, 7*time.Second)
	run := load.Start(t)

	time.Sleep(1500 * time.Millisecond)
	fault := time.Now()
	old := cluster.KillMaster(t)
	primary := cluster.WaitForFailover(t, old, 20*time.Second)
	promoted := time.Now()
	t.Logf("primary %s killed; Sentinel promoted %s after %s", old, primary, promoted.Sub(fault).Round(time.Millisecond))
	time.Sleep(time.Second) // load on the new primary
	run.Wait()
	admittedDuring(t, history, fault, promoted)

	(&drills.Check{
		Name: "redis-sentinel-failover", Client: client, Target: s.URL, Users: users, History: history,
		DatabaseURL: env["TALLY_DATABASE_URL"], Redis: rc, RedisPrefix: prefix,
		Allowed5xx: redisAllowed5xx, Fault: fault, Heal: fault, Reseed: probe,
	}).Run(t)
}

// A private redis-server is killed with SIGKILL mid-load and comes back
// empty on the same port a little later.
func TestRedisRestartedEmptyUnderLoad(t *testing.T) {
	addr, kill := testenv.StartRedis(t)
	_, port, _ := net.SplitHostPort(addr)
	env := baseEnv()
	env["TALLY_DATABASE_URL"] = testenv.PostgresURL(t)
	env["TALLY_REDIS_URL"] = testenv.RedisURL(addr)
	env["TALLY_REDIS_KEY_PREFIX"] = prefix
	s := startServer(t, env)
	rc := redisClient(t, addr)
	probe := drills.WatchReseed(t, rc, prefix)

	client := drills.NewClient(t, jwtSecret, 10*time.Second)
	users := drills.Users("restart", 40)
	load, history := newLoad(client, at(s.URL), users, 5*time.Second)
	run := load.Start(t)

	time.Sleep(1200 * time.Millisecond)
	fault := time.Now()
	kill()
	time.Sleep(800 * time.Millisecond) // admissions go on without Redis
	testenv.RestartRedisOnPort(t, port)
	heal := time.Now()
	time.Sleep(1500 * time.Millisecond)
	run.Wait()
	admittedDuring(t, history, fault, heal)

	(&drills.Check{
		Name: "redis-restart-empty", Client: client, Target: s.URL, Users: users, History: history,
		DatabaseURL: env["TALLY_DATABASE_URL"], Redis: rc, RedisPrefix: prefix,
		Allowed5xx: redisAllowed5xx, Fault: fault, Heal: heal, Reseed: probe,
	}).Run(t)
}

// Tally reaches its Redis through a fault proxy that first delays replies
// (300±100 ms), then also swallows them for 2.5s (the commands run, the
// replies never come: go-redis's own retries would have double-counted a
// blind INCR here). After the proxy is healed, no counter may be above or below
// Postgres.
func TestRedisDroppedRepliesAndLatency(t *testing.T) {
	addr, _ := testenv.StartRedis(t)
	proxy := testenv.Proxy(t, addr)
	env := baseEnv()
	env["TALLY_DATABASE_URL"] = testenv.PostgresURL(t)
	env["TALLY_REDIS_URL"] = testenv.RedisURL(proxy.Addr())
	env["TALLY_REDIS_KEY_PREFIX"] = prefix
	s := startServer(t, env)
	rc := redisClient(t, addr) // the checker reads Redis directly
	probe := drills.WatchReseed(t, rc, prefix)

	client := drills.NewClient(t, jwtSecret, 10*time.Second)
	users := drills.Users("redisproxy", 40)
	load, history := newLoad(client, at(s.URL), users, 7*time.Second)
	run := load.Start(t)

	time.Sleep(800 * time.Millisecond)
	fault := time.Now()
	latency := proxy.Latency(t, testenv.Downstream, 300*time.Millisecond, 100*time.Millisecond)
	time.Sleep(time.Second)
	// Longer than the cache writer's 2s deadline, so that writes fail and
	// Redis must be re-seeded; a shorter blackhole is ridden out by
	// go-redis's retry of the idempotent compare-and-set.
	drop := proxy.DropReplies(t)
	time.Sleep(2500 * time.Millisecond)
	proxy.Remove(t, drop)
	proxy.Remove(t, latency)
	heal := time.Now()
	time.Sleep(1200 * time.Millisecond)
	run.Wait()
	admittedDuring(t, history, fault, heal)

	(&drills.Check{
		Name: "redis-dropped-replies-latency", Client: client, Target: s.URL, Users: users, History: history,
		DatabaseURL: env["TALLY_DATABASE_URL"], Redis: rc, RedisPrefix: prefix,
		Allowed5xx: redisAllowed5xx, Fault: fault, Heal: heal, Reseed: probe,
	}).Run(t)
}

// admittedDuring fails the drill if nothing was admitted while the fault
// was on: Redis failing must not stop admissions, and a drill whose
// fault hit an idle service proves nothing.
func admittedDuring(t *testing.T, h *drills.History, from, to time.Time) {
	t.Helper()
	n := h.AdmittedBetween(from, to)
	t.Logf("%d sessions admitted during the fault (%s)", n, to.Sub(from).Round(time.Millisecond))
	if n == 0 {
		t.Errorf("no session was admitted during the fault (%s–%s): Redis must not be in the admission path", from.Format("15:04:05.000"), to.Format("15:04:05.000"))
	}
}
