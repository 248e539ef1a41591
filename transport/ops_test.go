package transport_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/transport"
)

// newOps builds an ops handler over reg with checkers.
func newOps(t *testing.T, reg *prometheus.Registry, pprof bool, checkers ...transport.Checker) http.Handler {
	t.Helper()
	h, err := transport.NewOps(transport.OpsOptions{Registry: reg, Checkers: checkers, Pprof: pprof})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func opsGet(t *testing.T, h http.Handler, path string) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://ops.test"+path, nil))
	return w
}

// The ops /readyz keeps what the public one no longer says: each check's
// text, "degraded", the failing checks' names.
func TestOpsReadyzDetail(t *testing.T) {
	const dialErr = "dial tcp 127.0.0.1:1: connect: connection refused"
	h := newOps(t, prometheus.NewRegistry(), false,
		checker{name: "postgres", err: errors.New(dialErr)},
		checker{name: "redis"},
		checker{name: "stuck", wait: true},
	)
	w := opsGet(t, h, "/readyz")
	want := `{"detail":{"error":"unavailable","message":"not ready: postgres, stuck"},"checks":{"postgres":"` + dialErr + `","redis":"ok","stuck":"timeout after 2s"}}`
	if w.Code != 503 || w.Body.String() != want || w.Header().Get("Retry-After") != "1" {
		t.Errorf("got %d %s (Retry-After %q)\nwant 503 %s", w.Code, w.Body, w.Header().Get("Retry-After"), want)
	}

	h = newOps(t, prometheus.NewRegistry(), false,
		checker{name: "postgres"},
		optionalChecker{checker{name: "redis", err: errors.New("dial tcp 127.0.0.1:6379: connection refused")}},
	)
	w = opsGet(t, h, "/readyz")
	want = `{"status":"degraded","checks":{"postgres":"ok","redis":"dial tcp 127.0.0.1:6379: connection refused"}}`
	if w.Code != 200 || w.Body.String() != want {
		t.Errorf("got %d %s\nwant 200 %s", w.Code, w.Body, want)
	}

	h = newOps(t, prometheus.NewRegistry(), false, checker{name: "postgres"}, optionalChecker{checker{name: "redis"}})
	w = opsGet(t, h, "/readyz")
	if want := `{"status":"ready","checks":{"postgres":"ok","redis":"ok"}}`; w.Code != 200 || w.Body.String() != want {
		t.Errorf("got %d %s\nwant 200 %s", w.Code, w.Body, want)
	}
	if w := opsGet(t, h, "/healthz"); w.Code != 200 || w.Body.String() != `{"status":"ok"}` {
		t.Errorf("healthz %d %s", w.Code, w.Body)
	}
}

// The ops /metrics serves, in the Prometheus text format, what the public
// handler records into the shared registry.
func TestOpsMetrics(t *testing.T) {
	e := newEnv(t)
	e.do("POST", "/api/v1/sessions", e.token("u1"), validCreate)
	e.do("GET", "/healthz", "", nil)
	w := opsGet(t, newOps(t, e.registry, false), "/metrics")
	// text/plain; version=0.0.4 is the exposition format every Prometheus
	// scrapes.
	if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("metrics %d %q", w.Code, w.Header().Get("Content-Type"))
	}
	body := w.Body.String()
	for _, want := range []string{
		`tally_http_requests_total{method="POST",route="/api/v1/sessions",status="200"} 1`,
		`tally_http_request_duration_seconds_count{method="GET",route="/healthz"} 1`,
		`tally_admissions_total{outcome="admitted"} 1`,
		`tally_admissions_total{outcome="session_limit_exceeded"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// pprof is mounted only when asked for; anything unknown is the API's
// 404 body, and every answer carries the secure headers.
func TestOpsPprofOnlyWhenEnabled(t *testing.T) {
	off := newOps(t, prometheus.NewRegistry(), false)
	on := newOps(t, prometheus.NewRegistry(), true)
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/goroutine?debug=1"} {
		w := opsGet(t, off, path)
		var b errBody
		if err := json.Unmarshal(w.Body.Bytes(), &b); w.Code != 404 || err != nil || b.Detail.Error != "not_found" {
			t.Errorf("pprof off, %s: %d %s", path, w.Code, w.Body)
		}
		if w := opsGet(t, on, path); w.Code != 200 || w.Body.Len() == 0 {
			t.Errorf("pprof on, %s: %d %s", path, w.Code, w.Body)
		}
	}
	if w := opsGet(t, on, "/goroutine"); w.Code != 404 {
		t.Errorf("/goroutine: %d", w.Code)
	}
	w := opsGet(t, on, "/metrics")
	if w.Header().Get("X-Content-Type-Options") != "nosniff" || w.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("headers %v", w.Header())
	}
}

func TestNewOpsRefusesBadOptions(t *testing.T) {
	if _, err := transport.NewOps(transport.OpsOptions{}); err == nil {
		t.Error("no Registry accepted")
	}
	_, err := transport.NewOps(transport.OpsOptions{Registry: prometheus.NewRegistry(),
		Checkers: []transport.Checker{checker{name: "a"}, checker{name: "a"}}})
	if err == nil {
		t.Error("two checkers named alike accepted")
	}
}
