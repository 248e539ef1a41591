package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/internal/testenv"
)

// serveInProcess runs `tally serve` in this process (embedded mode) with
// extra variables until the test ends, and returns the API's base URL and
// the log it writes. It returns once /readyz answers 200.
func serveInProcess(t *testing.T, extra map[string]string) (string, *testenv.LockedBuffer) {
	t.Helper()
	api := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	env := map[string]string{"TALLY_HTTP_ADDR": api, "TALLY_DATA_DIR": t.TempDir()}
	for k, v := range extra {
		env[k] = v
	}
	logs := &testenv.LockedBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runServe(ctx, nil, func(k string) string { return env[k] }, io.Discard, logs) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	base := "http://" + api
	for deadline := time.Now().Add(30 * time.Second); ; {
		if status, _ := get(t, base+"/readyz"); status == http.StatusOK {
			return base, logs
		}
		select {
		case err := <-done:
			t.Fatalf("serve returned %v; log:\n%s", err, logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready within 30s; log:\n%s", logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// get answers the status and body of GET url (0 when it cannot connect).
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// TALLY_OPS_ADDR with TALLY_OPS_PPROF on loopback: metrics, the detailed
// readiness and pprof on the ops listener, none of them on the API's.
func TestServeOpsListenerWithPprof(t *testing.T) {
	ops := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	base, logs := serveInProcess(t, map[string]string{"TALLY_OPS_ADDR": ops, "TALLY_OPS_PPROF": "true"})
	opsBase := "http://" + ops
	for path, want := range map[string]string{
		"/metrics":                       "tally_http_open_connections ",
		"/readyz":                        `"checks":{"database":"ok","redis":"ok"}`,
		"/healthz":                       `{"status":"ok"}`,
		"/debug/pprof/":                  "goroutine",
		"/debug/pprof/cmdline":           "",
		"/debug/pprof/goroutine?debug=1": "goroutine profile",
	} {
		status, body := get(t, opsBase+path)
		if status != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("ops %s: %d, want 200 with %q", path, status, want)
		}
	}
	for _, path := range []string{"/metrics", "/debug/pprof/", "/debug/pprof/cmdline"} {
		if status, body := get(t, base+path); status != http.StatusNotFound {
			t.Errorf("API %s: %d %.200s, want 404", path, status, body)
		}
	}
	if status, body := get(t, base+"/readyz"); status != http.StatusOK || body != `{"status":"ready"}` {
		t.Errorf("API /readyz: %d %s", status, body)
	}
	if !strings.Contains(logs.String(), `"msg":"ops listener serving /metrics, /readyz, /healthz"`) {
		t.Errorf("no ops listener line in the log:\n%s", logs)
	}
}

// Without TALLY_OPS_ADDR there is no ops listener, and the log says how to
// get one.
func TestServeWithoutOpsListenerSaysSo(t *testing.T) {
	base, logs := serveInProcess(t, nil)
	if status, _ := get(t, base+"/metrics"); status != http.StatusNotFound {
		t.Errorf("API /metrics: %d, want 404", status)
	}
	if !strings.Contains(logs.String(), "ops listener off") || !strings.Contains(logs.String(), "set TALLY_OPS_ADDR") {
		t.Errorf("the log does not say the ops listener is off:\n%s", logs)
	}
}

// A non-loopback ops address with pprof stops `tally serve` before it
// listens, naming the variable.
func TestServeRefusesRemotePprof(t *testing.T) {
	env := map[string]string{"TALLY_OPS_ADDR": "0.0.0.0:0", "TALLY_OPS_PPROF": "true", "TALLY_DATA_DIR": t.TempDir()}
	err := runServe(context.Background(), nil, func(k string) string { return env[k] }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "TALLY_OPS_PPROF") || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("got %v, want a refusal naming TALLY_OPS_PPROF", err)
	}
}
