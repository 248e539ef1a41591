// Package testenv gives tests the real services they claim to use: a fresh
// Postgres database per test on the machine's server, and a private key
// prefix on its Redis. When a service cannot be reached the test is skipped
// with a visible reason, or fails when TALLY_TEST_REQUIRE_SERVICES=1 (set by
// .ci/run), so that `make test` passes on a laptop with only Go while CI
// cannot silently skip what it claims to test.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// Required reports whether missing services must fail tests instead of
// skipping them.
func Required() bool { return os.Getenv("TALLY_TEST_REQUIRE_SERVICES") == "1" }

// Unreachable skips or fails the test because a service is missing.
func Unreachable(tb testing.TB, service string, err error) {
	tb.Helper()
	if Required() {
		tb.Fatalf("%s is required (TALLY_TEST_REQUIRE_SERVICES=1) but unreachable: %v", service, err)
	}
	tb.Skipf("skipping: %s unreachable (%v); set TALLY_TEST_REQUIRE_SERVICES=1 to make this a failure", service, err)
}

// PostgresAdminURL is the server tests create their databases on.
func PostgresAdminURL() string {
	if u := os.Getenv("TALLY_TEST_POSTGRES_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// RedisAddr is the Redis server tests use, each under its own key prefix.
func RedisAddr() string {
	if a := os.Getenv("TALLY_TEST_REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// RandomName returns prefix followed by 12 random hex characters.
func RandomName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// PostgresURL creates a fresh, empty database for the test and returns its
// URL. The database is dropped when the test ends.
func PostgresURL(tb testing.TB) string {
	tb.Helper()
	admin := PostgresAdminURL()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		Unreachable(tb, "PostgreSQL at "+admin, err)
	}
	defer conn.Close(context.Background())
	name := RandomName("tally_test_")
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		tb.Fatalf("create test database: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, admin)
		if err != nil {
			tb.Logf("drop test database %s: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			tb.Logf("drop test database %s: %v", name, err)
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		tb.Fatalf("parse %s: %v", admin, err)
	}
	u.Path = "/" + name
	return u.String()
}

// OptionalPostgresURL is PostgresURL for a test that also has a part
// without Postgres: when the server cannot be reached it logs why and
// returns "", so that the rest of the test still runs, instead of skipping
// the whole test. Under TALLY_TEST_REQUIRE_SERVICES=1 it fails, as
// Unreachable does.
func OptionalPostgresURL(tb testing.TB, part string) string {
	tb.Helper()
	admin := PostgresAdminURL()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		if Required() {
			tb.Fatalf("PostgreSQL at %s is required (TALLY_TEST_REQUIRE_SERVICES=1) but unreachable: %v", admin, err)
		}
		tb.Logf("SKIP %s: PostgreSQL at %s unreachable (%v); set TALLY_TEST_REQUIRE_SERVICES=1 to make this a failure", part, admin, err)
		return ""
	}
	conn.Close(context.Background())
	return PostgresURL(tb)
}

// Redis returns the shared Redis address and a key prefix private to the
// test; keys under the prefix are deleted when the test ends.
func Redis(tb testing.TB) (addr, prefix string) {
	tb.Helper()
	addr = RedisAddr()
	c := redis.NewClient(&redis.Options{Addr: addr})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		Unreachable(tb, "Redis at "+addr, err)
	}
	prefix = RandomName("tally_test_") + ":"
	tb.Cleanup(func() {
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := DeleteKeys(ctx, c, prefix); err != nil {
			tb.Logf("delete test keys %s*: %v", prefix, err)
		}
	})
	return addr, prefix
}

// DeleteKeys deletes every key under prefix: a "flush" of one test's data
// that leaves the shared server's other users alone.
func DeleteKeys(ctx context.Context, c redis.UniversalClient, prefix string) error {
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return err
	}
	for len(keys) > 0 {
		n := min(len(keys), 500)
		if err := c.Del(ctx, keys[:n]...).Err(); err != nil {
			return err
		}
		keys = keys[n:]
	}
	return nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// RedisURL is a redis:// URL for addr.
func RedisURL(addr string) string {
	return fmt.Sprintf("redis://%s/0", strings.TrimPrefix(addr, "redis://"))
}

// StartRedis starts a private redis-server on a free port, for tests that
// kill, flush or restart Redis (the shared one is never touched). It is
// stopped when the test ends. The returned function kills it with SIGKILL.
func StartRedis(tb testing.TB, extraArgs ...string) (addr string, kill func()) {
	tb.Helper()
	return startRedisOn(tb, FreePort(tb), RedisAuth{}, extraArgs...)
}

func startRedisOn(tb testing.TB, port int, auth RedisAuth, extraArgs ...string) (addr string, kill func()) {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		Unreachable(tb, "redis-server binary", err)
	}
	args := []string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "no"}
	for _, d := range auth.directives(port) {
		args = append(args, append([]string{"--" + d[0]}, d[1:]...)...)
	}
	args = append(args, extraArgs...)
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start redis-server: %v", err)
	}
	var once sync.Once
	kill = func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
	}
	tb.Cleanup(kill)
	addr = fmt.Sprintf("127.0.0.1:%d", port)
	c := redis.NewClient(auth.ClientOptions(tb, addr))
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return addr, kill
		}
		if time.Now().After(deadline) {
			tb.Fatalf("redis-server on %s did not answer: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// RestartRedisOnPort starts an empty redis-server on a port a killed one
// used, as a Redis restarted without persistence would come back.
func RestartRedisOnPort(tb testing.TB, port string) func() {
	tb.Helper()
	p, err := strconv.Atoi(port)
	if err != nil {
		tb.Fatalf("port %q: %v", port, err)
	}
	_, kill := startRedisOn(tb, p, RedisAuth{})
	return kill
}
