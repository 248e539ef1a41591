package drills_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-dev/tally/app"
	"github.com/tally-dev/tally/config"
	"github.com/tally-dev/tally/drills"
	"github.com/tally-dev/tally/internal/testenv"
)

const (
	jwtSecret  = "drill-test-jwt-secret-0123456789abcdef"
	adminToken = "drill-test-admin-token-0123456789abcdef"
	// prefix is the Redis key prefix of the drills that own their Redis.
	prefix = "drill:"
)

// baseEnv is a Tally's environment without its stores.
func baseEnv() map[string]string {
	return map[string]string{
		"TALLY_HTTP_ADDR":        "127.0.0.1:0",
		"TALLY_JWT_SECRET":       jwtSecret,
		"TALLY_ADMIN_TOKEN":      adminToken,
		"TALLY_UPLOAD_BASE_URL":  "https://uploads.example.test/u",
		"TALLY_LOG_LEVEL":        "warn",
		"TALLY_SHUTDOWN_TIMEOUT": "3s",
	}
}

// sharedRedis points env at a private key prefix on the machine's Redis
// and returns a client of it.
func sharedRedis(t *testing.T, env map[string]string) (redis.UniversalClient, string) {
	t.Helper()
	addr, p := testenv.Redis(t)
	env["TALLY_REDIS_URL"] = testenv.RedisURL(addr)
	env["TALLY_REDIS_KEY_PREFIX"] = p
	return redisClient(t, addr), p
}

func redisClient(t *testing.T, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// server is one in-process Tally: its API and its ops listener (metrics)
// on loopback ports.
type server struct {
	URL    string
	OpsURL string
	App    *app.App
}

// startServer builds a Tally from env as `tally serve` would and serves it
// until the test ends. Its logs are kept, and printed only if the test
// fails: a drill makes many warnings on purpose.
func startServer(t *testing.T, env map[string]string) *server {
	t.Helper()
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	logs := &logSink{}
	t.Cleanup(func() {
		if t.Failed() {
			logs.dump(t)
		}
	})
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("app.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		a.Close()
		t.Fatal(err)
	}
	opsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		ln.Close()
		a.Close()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, ln, opsLn) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
		a.Close()
	})
	return &server{URL: "http://" + ln.Addr().String(), OpsURL: "http://" + opsLn.Addr().String(), App: a}
}

// logSink keeps the last lines of a server's log and every error line.
type logSink struct {
	mu     sync.Mutex
	tail   []string
	errors []string
	total  int
}

func (l *logSink) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total++
	if strings.Contains(line, `"level":"ERROR"`) && len(l.errors) < 50 {
		l.errors = append(l.errors, line)
	}
	l.tail = append(l.tail, line)
	if len(l.tail) > 60 {
		l.tail = l.tail[len(l.tail)-60:]
	}
	return len(p), nil
}

func (l *logSink) dump(t *testing.T) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("--- server log: %d lines; errors (first %d):\n%s", l.total, len(l.errors), strings.Join(l.errors, "\n"))
	t.Logf("--- server log tail:\n%s", strings.Join(l.tail, "\n"))
}

// at returns a Load target that is always url.
func at(url string) func() string { return func() string { return url } }

// newLoad is the drills' standard load: 12 workers over users that become
// active over ramp. A ramp longer than the load leaves the last users
// below their limit, or untouched, for the exact-quota burst.
func newLoad(client *drills.Client, target func() string, users []string, ramp time.Duration) (*drills.Load, *drills.History) {
	h := &drills.History{}
	return &drills.Load{
		Client:  client,
		Target:  target,
		Users:   users,
		Workers: 12,
		Ramp:    ramp,
		Pace:    10 * time.Millisecond,
		History: h,
	}, h
}

// readyz reports the instance's readiness status (0: no answer).
func readyz(c *drills.Client, base string) int {
	r := c.Do(http.MethodGet, base+"/readyz", "", nil)
	return r.Status
}

// metric reads one sample of the instance's /metrics (on its ops
// listener), by its exposition name with labels, e.g.
// tally_idempotent_replays_total; 0 when absent. Not through a
// drills.Client: openapi.yaml describes the API listener only.
func metric(t *testing.T, s *server, name string) float64 {
	t.Helper()
	resp, err := http.Get(s.OpsURL + "/metrics")
	if err != nil {
		t.Errorf("GET /metrics: %v", err)
		return 0
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET /metrics: %d %v", resp.StatusCode, err)
		return 0
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Errorf("metric %s: %q", name, line)
			}
			return f
		}
	}
	return 0
}
