package app_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/app"
	"github.com/tally-dev/tally/config"
	"github.com/tally-dev/tally/internal/testenv"
)

// publicNotFound asks the API listener for path, which it must not serve.
// Not through client.do: openapi.yaml rightly has no such path.
func publicNotFound(t *testing.T, s *server, path string) {
	t.Helper()
	resp, err := http.Get(s.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("API listener %s: %d, want 404", path, resp.StatusCode)
	}
}

// The API listener serves no metrics and no pprof; the ops listener serves
// the metrics, with every layer's series, and readiness with its checks.
func TestOpsListenerServesWhatTheAPIDoesNot(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			s := startServer(t, b.env(t))
			c := newClient(t)
			if r := c.create(s, "ops-user"); r.Status != http.StatusOK {
				t.Fatalf("create: %d %s", r.Status, r.Body)
			}
			publicNotFound(t, s, "/metrics")
			publicNotFound(t, s, "/debug/pprof/")

			m := opsGet(t, s, "/metrics")
			if m.Status != http.StatusOK {
				t.Fatalf("ops /metrics: %d %s", m.Status, m.Body)
			}
			for _, want := range []string{
				`tally_http_requests_total{method="POST",route="/api/v1/sessions",status="200"} 1`, // transport
				"tally_live_actors ",           // actors
				"tally_http_open_connections ", // app
				"go_goroutines ",               // the Go collector
			} {
				if !strings.Contains(string(m.Body), want) {
					t.Errorf("ops /metrics lacks %q", want)
				}
			}
			// TALLY_OPS_PPROF is off by default.
			if r := opsGet(t, s, "/debug/pprof/"); r.Status != http.StatusNotFound {
				t.Errorf("ops /debug/pprof/ without TALLY_OPS_PPROF: %d", r.Status)
			}

			if r := c.do(http.MethodGet, s.URL+"/readyz", "", nil); r.Status != http.StatusOK || string(r.Body) != `{"status":"ready"}` {
				t.Errorf("public /readyz: %d %s", r.Status, r.Body)
			}
			r := opsGet(t, s, "/readyz")
			var ready struct {
				Status string            `json:"status"`
				Checks map[string]string `json:"checks"`
			}
			if err := json.Unmarshal(r.Body, &ready); err != nil || r.Status != http.StatusOK || ready.Status != "ready" ||
				len(ready.Checks) != 2 || ready.Checks["redis"] != "ok" {
				t.Errorf("ops /readyz: %d %s", r.Status, r.Body)
			}
		})
	}
}

// With its dependencies down, the public /readyz says only ready or not;
// the ops /readyz says which failed and how. Redis is dead from the start
// (a port nothing listens on), Postgres is cut once Tally runs.
func TestPublicReadyzHidesDependencyErrors(t *testing.T) {
	direct := testenv.PostgresURL(t)
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	proxy := testenv.Proxy(t, u.Host)
	u.Host = proxy.Addr()
	env := baseEnv()
	env["TALLY_DATABASE_URL"] = u.String()
	env["TALLY_REDIS_URL"] = "redis://127.0.0.1:1/0"
	s := startServer(t, env)
	c := newClient(t)

	hidden := func(when string, body []byte) {
		t.Helper()
		for _, secret := range []string{"127.0.0.1", proxy.Addr(), "redis", "postgres", "refused", "dial", "degraded", "checks"} {
			if strings.Contains(string(body), secret) {
				t.Errorf("%s: public /readyz tells %q: %s", when, secret, body)
			}
		}
	}
	type detail struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}

	// Redis down: still in rotation, and nothing says why to the public.
	r := c.do(http.MethodGet, s.URL+"/readyz", "", nil)
	if r.Status != http.StatusOK || string(r.Body) != `{"status":"ready"}` {
		t.Errorf("Redis down, public /readyz: %d %s", r.Status, r.Body)
	}
	hidden("Redis down", r.Body)
	var d detail
	o := opsGet(t, s, "/readyz")
	if err := json.Unmarshal(o.Body, &d); err != nil || o.Status != http.StatusOK || d.Status != "degraded" ||
		d.Checks["postgres"] != "ok" || !strings.Contains(d.Checks["redis"], "127.0.0.1:1") {
		t.Errorf("Redis down, ops /readyz: %d %s", o.Status, o.Body)
	}

	// Postgres down too: out of rotation, still without a word of why.
	proxy.Disable()
	r = c.do(http.MethodGet, s.URL+"/readyz", "", nil)
	if r.Status != http.StatusServiceUnavailable || string(r.Body) != `{"detail":{"error":"unavailable","message":"not ready"}}` ||
		r.Header.Get("Retry-After") != "1" {
		t.Errorf("Postgres down, public /readyz: %d %s (Retry-After %q)", r.Status, r.Body, r.Header.Get("Retry-After"))
	}
	hidden("Postgres down", r.Body)
	o = opsGet(t, s, "/readyz")
	d = detail{}
	if err := json.Unmarshal(o.Body, &d); err != nil || o.Status != http.StatusServiceUnavailable ||
		d.Checks["postgres"] == "" || d.Checks["postgres"] == "ok" || !strings.Contains(string(o.Body), "not ready: postgres") {
		t.Errorf("Postgres down, ops /readyz: %d %s", o.Status, o.Body)
	}
}

// An ops listener that fails takes the API down with it, and Run says so,
// rather than serving on without metrics nobody notices are gone.
func TestRunStopsWhenTheOpsListenerFails(t *testing.T) {
	env := embeddedEnv(t)
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.New(context.Background(), cfg, slog.New(slog.NewJSONHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	api, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ops, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ops.Close() // its Accept fails at once
	// The deadline only bounds the test: Run must return long before it,
	// on the ops listener's failure alone.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = a.Run(ctx, api, ops)
	if err == nil || !strings.Contains(err.Error(), "ops listener") || ctx.Err() != nil {
		t.Fatalf("Run: %v (context: %v), want the ops listener's failure before the context ends", err, ctx.Err())
	}
	if _, err := net.Dial("tcp", api.Addr().String()); err == nil {
		t.Error("the API listener still accepts after Run returned")
	}
}

// A profile still streaming from the ops listener when the process stops
// is cut off, and the stop is still clean: an operator's trace must not
// turn a SIGTERM into a failed exit.
func TestRunStopsCleanlyWithAProfileRunning(t *testing.T) {
	env := embeddedEnv(t)
	env["TALLY_OPS_ADDR"] = "127.0.0.1:0"
	env["TALLY_OPS_PPROF"] = "true"
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.New(context.Background(), cfg, slog.New(slog.NewJSONHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	api, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ops, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, api, ops) }()

	// A 60 s execution trace: its answer streams, so once the headers are
	// in, the request is running on the server.
	rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer rcancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, "http://"+ops.Addr().String()+"/debug/pprof/trace?seconds=60", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("trace: %d", resp.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run with a profile running: %v, want a clean stop", err)
	}
}
