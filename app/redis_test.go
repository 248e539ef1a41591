package app

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-dev/tally/config"
	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/persistence"
)

// These tests run Tally (on the embedded store: the store does not matter
// here) against private redis-server processes that require a password,
// an ACL user or TLS, and against the in-process Redis of embedded mode.
// Redis stays optional (docs/decisions/0002-redis-is-a-cache.md): refused
// credentials do not stop app.New, but /readyz says degraded and names
// the variables to check.

// newRedisApp builds a Tally from the base variables plus env, closed when
// the test ends. Its logs (warnings and up) are shown when the test fails;
// newRedisAppLogs returns them too.
func newRedisApp(t *testing.T, env map[string]string) *App {
	t.Helper()
	a, _ := newRedisAppLogs(t, env)
	return a
}

func newRedisAppLogs(t *testing.T, env map[string]string) (*App, *testenv.LockedBuffer) {
	t.Helper()
	all := map[string]string{
		"TALLY_DATA_DIR":    t.TempDir(),
		"TALLY_JWT_SECRET":  "redis-test-jwt-secret-0123456789abcdef",
		"TALLY_ADMIN_TOKEN": "redis-test-admin-token-0123456789abcdef",
	}
	maps.Copy(all, env)
	cfg, err := config.Load(func(k string) string { return all[k] })
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	logs := &testenv.LockedBuffer{}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	a, err := New(ctx, cfg, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatalf("app.New: %v", err)
	}
	t.Cleanup(func() {
		a.Close()
		if t.Failed() {
			t.Logf("service logs:\n%s", logs)
		}
		if strings.Contains(logs.String(), "NOPERM") {
			t.Errorf("Redis refused Tally a command or key its user may not use")
		}
		for _, secret := range []string{cfg.RedisPassword, cfg.RedisSentinelPassword} {
			if secret != "" && strings.Contains(logs.String(), secret) {
				t.Errorf("the logs hold a Redis password")
			}
		}
	})
	return a, logs
}

// redisReadiness returns the ops listener's /readyz status and its redis check, polling
// until the check passes accept (a pool's first dial may still be under
// way) or 15 s pass.
func redisReadiness(t *testing.T, a *App, accept func(check string) bool) (status, check string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		rec := httptest.NewRecorder()
		a.OpsHandler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/readyz", nil))
		var body struct {
			Status string            `json:"status"`
			Checks map[string]string `json:"checks"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("/readyz %d %s: %v", rec.Code, rec.Body, err)
		}
		if rec.Code != http.StatusOK {
			t.Fatalf("/readyz %d %s: Redis is optional, want 200", rec.Code, rec.Body)
		}
		status, check = body.Status, body.Checks["redis"]
		if accept(check) || time.Now().After(deadline) {
			return status, check
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// mustBeReady checks that Tally reaches its Redis, and that what it writes
// is on the server raw reads (so the check did not pass on some other
// Redis).
func mustBeReady(t *testing.T, a *App, raw redis.UniversalClient) {
	t.Helper()
	if status, check := redisReadiness(t, a, func(c string) bool { return c == "ok" }); status != "ready" || check != "ok" {
		t.Fatalf("/readyz status %q, redis check %q; want ready, ok", status, check)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// A user of its own: several subtests share one server.
	user, period := testenv.RandomName("user-"), time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	if ok, err := a.Cache().Set(ctx, user, period, persistence.Counters{Usage: domain.Usage{Sessions: 3, Seconds: 42}, Version: 7}); err != nil || !ok {
		t.Fatalf("cache write: %v, %v", ok, err)
	}
	if v, err := raw.HGet(ctx, a.Cache().Key(user, period), "sec").Result(); err != nil || v != "42" {
		t.Fatalf("the counters read back on the server: %q, %v; want 42", v, err)
	}
	// The start-up re-seed went through too: it ends by writing the epoch
	// marker (persistence/rediscache/repair.go), after INFO and EXISTS.
	for {
		n, err := raw.Exists(ctx, a.cfg.RedisKeyPrefix+"cache:epoch").Result()
		if err == nil && n == 1 {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("no epoch marker: the start-up re-seed did not complete (%v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mustBeRefused checks that Tally is up without its Redis and that the
// redis check says why, naming the variables in want, and never a
// password.
func mustBeRefused(t *testing.T, a *App, want []string, secrets ...string) {
	t.Helper()
	status, check := redisReadiness(t, a, func(c string) bool { return c != "ok" && strings.Contains(c, want[0]) })
	if status != "degraded" {
		t.Errorf("/readyz status %q, want degraded", status)
	}
	for _, w := range want {
		if !strings.Contains(check, w) {
			t.Errorf("redis check %q: want it to say %q", check, w)
		}
	}
	for _, s := range secrets {
		if strings.Contains(check, s) {
			t.Errorf("redis check %q holds a password", check)
		}
	}
}

// rawClient is a client of addr with opts, closed when the test ends.
func rawClient(t *testing.T, opts *redis.Options) *redis.Client {
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestRedisPasswordAndUser: a Redis with requirepass, and one with an ACL
// user (its default user off), each reached with the credentials given in
// the variables or in the URL; wrong or missing ones leave Tally up,
// degraded, with the variable to check named.
func TestRedisPasswordAndUser(t *testing.T) {
	const pass, userPass = "the-requirepass-password", "the-acl-user-password"
	passAuth := testenv.RedisAuth{Password: pass}
	passAddr, _ := testenv.StartRedisWith(t, passAuth)
	// The user may touch only keys under Tally's prefix (the default
	// tally:), as an operator sharing a Redis would set it up.
	userAuth := testenv.RedisAuth{User: "tally", Password: userPass, KeyPattern: "tally:*"}
	userAddr, _ := testenv.StartRedisWith(t, userAuth)

	for _, tc := range []struct {
		name string
		env  map[string]string
		raw  *redis.Options
	}{
		{"requirepass in TALLY_REDIS_PASSWORD", map[string]string{
			"TALLY_REDIS_URL": "redis://" + passAddr + "/0", "TALLY_REDIS_PASSWORD": pass,
		}, passAuth.ClientOptions(t, passAddr)},
		{"requirepass in the URL", map[string]string{
			"TALLY_REDIS_URL": "redis://:" + pass + "@" + passAddr + "/0",
		}, passAuth.ClientOptions(t, passAddr)},
		{"ACL user in TALLY_REDIS_USERNAME", map[string]string{
			"TALLY_REDIS_URL": "redis://" + userAddr + "/0", "TALLY_REDIS_USERNAME": "tally", "TALLY_REDIS_PASSWORD": userPass,
		}, userAuth.ClientOptions(t, userAddr)},
		{"ACL user in the URL", map[string]string{
			"TALLY_REDIS_URL": "redis://tally:" + userPass + "@" + userAddr + "/0",
		}, userAuth.ClientOptions(t, userAddr)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mustBeReady(t, newRedisApp(t, tc.env), rawClient(t, tc.raw))
		})
	}

	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"no password", map[string]string{
			"TALLY_REDIS_URL": "redis://" + passAddr + "/0",
		}, []string{"Redis refused Tally's credentials", "TALLY_REDIS_PASSWORD", "NOAUTH"}},
		{"wrong TALLY_REDIS_PASSWORD", map[string]string{
			"TALLY_REDIS_URL": "redis://" + passAddr + "/0", "TALLY_REDIS_PASSWORD": "not-" + pass,
		}, []string{"Redis refused Tally's credentials", "TALLY_REDIS_PASSWORD", "WRONGPASS"}},
		{"wrong password in the URL", map[string]string{
			"TALLY_REDIS_URL": "redis://:not-" + pass + "@" + passAddr + "/0",
		}, []string{"Redis refused Tally's credentials", "TALLY_REDIS_URL", "WRONGPASS"}},
		{"wrong user's password", map[string]string{
			"TALLY_REDIS_URL": "redis://" + userAddr + "/0", "TALLY_REDIS_USERNAME": "tally", "TALLY_REDIS_PASSWORD": "not-" + userPass,
		}, []string{"Redis refused Tally's credentials", "TALLY_REDIS_USERNAME and TALLY_REDIS_PASSWORD", "WRONGPASS"}},
		{"the user's password for the default user", map[string]string{
			"TALLY_REDIS_URL": "redis://" + userAddr + "/0", "TALLY_REDIS_PASSWORD": userPass,
		}, []string{"Redis refused Tally's credentials", "TALLY_REDIS_PASSWORD", "WRONGPASS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mustBeRefused(t, newRedisApp(t, tc.env), tc.want, pass, userPass)
		})
	}
}

// TestRedisSentinelCredentials: Sentinels that require a password of their
// own, monitoring a master that requires another (they know it through
// sentinel auth-pass). Tally gets through with both, and a wrong one of
// either is named.
func TestRedisSentinelCredentials(t *testing.T) {
	const masterPass, sentinelPass = "the-master-password", "the-sentinel-password"
	cluster := testenv.StartSentinelClusterWith(t, testenv.SentinelOptions{
		Data:      testenv.RedisAuth{Password: masterPass},
		Sentinels: testenv.RedisAuth{Password: sentinelPass},
	})
	env := func(sentinel, master string) map[string]string {
		return map[string]string{
			"TALLY_REDIS_SENTINELS":         strings.Join(cluster.SentinelAddrs(), ","),
			"TALLY_REDIS_MASTER":            cluster.MasterName(),
			"TALLY_REDIS_SENTINEL_PASSWORD": sentinel,
			"TALLY_REDIS_PASSWORD":          master,
		}
	}
	t.Run("both passwords", func(t *testing.T) {
		mustBeReady(t, newRedisApp(t, env(sentinelPass, masterPass)), cluster.Client(t))
	})
	t.Run("wrong Sentinel password", func(t *testing.T) {
		mustBeRefused(t, newRedisApp(t, env("not-"+sentinelPass, masterPass)),
			[]string{"the Sentinels refused Tally's credentials", "TALLY_REDIS_SENTINEL_PASSWORD"}, masterPass, sentinelPass)
	})
	t.Run("no Sentinel password", func(t *testing.T) {
		mustBeRefused(t, newRedisApp(t, env("", masterPass)),
			[]string{"the Sentinels refused Tally's credentials", "TALLY_REDIS_SENTINEL_PASSWORD"}, masterPass, sentinelPass)
	})
	t.Run("wrong master password", func(t *testing.T) {
		a := newRedisApp(t, env(sentinelPass, "not-"+masterPass))
		mustBeRefused(t, a, []string{"Redis refused Tally's credentials", "check TALLY_REDIS_PASSWORD"}, masterPass, sentinelPass)
		if _, check := redisReadiness(t, a, func(string) bool { return true }); strings.Contains(check, "SENTINEL") {
			t.Errorf("redis check %q blames the Sentinels for the master's password", check)
		}
	})
}

// TestRedisTLS: a redis-server that speaks only TLS, with a certificate a
// throwaway CA signed for 127.0.0.1. Tally connects with rediss:// and the
// CA file (and a client certificate when the server asks for one); the
// certificate is verified — CA and host — and a failure names what to
// check.
func TestRedisTLS(t *testing.T) {
	files := testenv.NewTLSFiles(t)
	tlsAuth := testenv.RedisAuth{TLS: files}
	addr, _ := testenv.StartRedisWith(t, tlsAuth)
	certAuth := testenv.RedisAuth{TLS: files, ClientCerts: true}
	certAddr, _ := testenv.StartRedisWith(t, certAuth)
	otherCA := testenv.NewTLSFiles(t).CAFile
	// A server whose certificate, from the right CA, names another host.
	misnamed := testenv.NewTLSFiles(t, "redis.example.test")
	misnamedAddr, _ := testenv.StartRedisWith(t, testenv.RedisAuth{TLS: misnamed})

	t.Run("rediss with the CA file", func(t *testing.T) {
		a := newRedisApp(t, map[string]string{"TALLY_REDIS_URL": "rediss://" + addr + "/0", "TALLY_REDIS_TLS_CA_FILE": files.CAFile})
		mustBeReady(t, a, rawClient(t, tlsAuth.ClientOptions(t, addr)))
	})
	t.Run("client certificate", func(t *testing.T) {
		a := newRedisApp(t, map[string]string{
			"TALLY_REDIS_URL": "rediss://" + certAddr + "/0", "TALLY_REDIS_TLS_CA_FILE": files.CAFile,
			"TALLY_REDIS_TLS_CERT_FILE": files.ClientCertFile, "TALLY_REDIS_TLS_KEY_FILE": files.ClientKeyFile,
		})
		mustBeReady(t, a, rawClient(t, certAuth.ClientOptions(t, certAddr)))
	})

	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"system roots only", map[string]string{"TALLY_REDIS_URL": "rediss://" + addr + "/0"},
			[]string{"not signed by a CA Tally trusts", "TALLY_REDIS_TLS_CA_FILE"}},
		{"another CA", map[string]string{"TALLY_REDIS_URL": "rediss://" + addr + "/0", "TALLY_REDIS_TLS_CA_FILE": otherCA},
			[]string{"not signed by a CA Tally trusts", "TALLY_REDIS_TLS_CA_FILE"}},
		{"certificate for another host", map[string]string{"TALLY_REDIS_URL": "rediss://" + misnamedAddr + "/0", "TALLY_REDIS_TLS_CA_FILE": misnamed.CAFile},
			[]string{"does not name the address Tally dialled"}},
		{"no client certificate", map[string]string{"TALLY_REDIS_URL": "rediss://" + certAddr + "/0", "TALLY_REDIS_TLS_CA_FILE": files.CAFile},
			[]string{"TALLY_REDIS_TLS_CERT_FILE"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mustBeRefused(t, newRedisApp(t, tc.env), tc.want)
		})
	}
}

// TestRedisSentinelTLS: data nodes and Sentinels that speak only TLS (to
// each other too), each with an ACL user. Tally gets through with
// TALLY_REDIS_TLS, the CA file and both users; without the CA file the
// certificate is refused.
func TestRedisSentinelTLS(t *testing.T) {
	files := testenv.NewTLSFiles(t)
	opts := testenv.SentinelOptions{
		Data:      testenv.RedisAuth{User: "tally", Password: "the-master-password"},
		Sentinels: testenv.RedisAuth{User: "tally-sentinel", Password: "the-sentinel-password"},
		TLS:       files,
	}
	cluster := testenv.StartSentinelClusterWith(t, opts)
	env := map[string]string{
		"TALLY_REDIS_SENTINELS":         strings.Join(cluster.SentinelAddrs(), ","),
		"TALLY_REDIS_MASTER":            cluster.MasterName(),
		"TALLY_REDIS_USERNAME":          opts.Data.User,
		"TALLY_REDIS_PASSWORD":          opts.Data.Password,
		"TALLY_REDIS_SENTINEL_USERNAME": opts.Sentinels.User,
		"TALLY_REDIS_SENTINEL_PASSWORD": opts.Sentinels.Password,
		"TALLY_REDIS_TLS":               "true",
		"TALLY_REDIS_TLS_CA_FILE":       files.CAFile,
	}
	t.Run("TLS with both users", func(t *testing.T) {
		mustBeReady(t, newRedisApp(t, env), cluster.Client(t))
	})
	// Here the failure reaches /readyz too late: go-redis retries the dial
	// of the master, and each retry asks every Sentinel, whose dials it
	// retries too, so the check times out before the certificate error
	// comes back. The go-redis log lines carry it, and the hint.
	t.Run("no CA file", func(t *testing.T) {
		noCA := maps.Clone(env)
		delete(noCA, "TALLY_REDIS_TLS_CA_FILE")
		a, logs := newRedisAppLogs(t, noCA)
		const want = `"hint":"Redis's certificate is not signed by a CA Tally trusts: check TALLY_REDIS_TLS_CA_FILE"`
		deadline := time.Now().Add(15 * time.Second)
		for !strings.Contains(logs.String(), want) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no log line with %s", want)
		}
		if status, check := redisReadiness(t, a, func(string) bool { return true }); status != "degraded" {
			t.Errorf("/readyz status %q (redis check %q), want degraded", status, check)
		}
	})
}

// TestEmbeddedRedisRequiresThePassword: the in-process Redis listens on a
// loopback port every local process can reach; a client without the
// password Tally generated is refused, reads and writes alike, while
// Tally's own client works.
func TestEmbeddedRedisRequiresThePassword(t *testing.T) {
	a := newRedisApp(t, nil)
	if a.mini == nil {
		t.Fatal("no in-process Redis in embedded mode")
	}
	intruder := rawClient(t, &redis.Options{Addr: a.mini.Addr(), MaxRetries: -1})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := intruder.Set(ctx, "tally:cache:epoch", "x", 0).Err(); !redis.IsAuthError(err) {
		t.Errorf("a write without the password: %v, want NOAUTH", err)
	}
	if err := intruder.Keys(ctx, "*").Err(); !redis.IsAuthError(err) {
		t.Errorf("a read without the password: %v, want NOAUTH", err)
	}
	if err := intruder.Do(ctx, "AUTH", "guess").Err(); !redis.IsAuthError(err) {
		t.Errorf("AUTH with a guessed password: %v, want WRONGPASS", err)
	}
	if status, check := redisReadiness(t, a, func(c string) bool { return c == "ok" }); status != "ready" || check != "ok" {
		t.Fatalf("/readyz status %q, redis check %q; want Tally's own client to get in", status, check)
	}
	period := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	if ok, err := a.Cache().Set(ctx, "user-1", period, persistence.Counters{Usage: domain.Usage{Sessions: 1, Seconds: 60}, Version: 1}); err != nil || !ok {
		t.Fatalf("Tally's own write: %v, %v", ok, err)
	}
	if got, ok, err := a.Cache().Get(ctx, "user-1", period); err != nil || !ok || got.Seconds != 60 {
		t.Fatalf("Tally's own read: %+v, %v, %v", got, ok, err)
	}
}
