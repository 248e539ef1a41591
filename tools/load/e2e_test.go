package load_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/tally-dev/tally/app"
	"github.com/tally-dev/tally/config"
	"github.com/tally-dev/tally/tools/load"
)

const (
	e2eSecret = "load-e2e-jwt-secret-0123456789abcdef"
	e2eAdmin  = "load-e2e-admin-token-0123456789abcdef"
)

// startTally runs the real service in-process on the embedded defaults
// (embedded SQL store, in-process Redis), as `make run` does.
func startTally(t *testing.T, extra ...string) string {
	t.Helper()
	env := map[string]string{
		"TALLY_HTTP_ADDR":   "127.0.0.1:0",
		"TALLY_DATA_DIR":    t.TempDir(),
		"TALLY_JWT_SECRET":  e2eSecret,
		"TALLY_ADMIN_TOKEN": e2eAdmin,
		"TALLY_LOG_LEVEL":   "error",
	}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, slog.New(slog.NewJSONHandler(io.Discard, nil)))
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
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
		a.Close()
	})
	return "http://" + ln.Addr().String()
}

// TestAgainstTally loads the real service: 20 users on the free plan, 20
// creates each (round robin, 16 at a time). Exactly 10 per user must be
// admitted, and the usage and every admitted session must read back. A
// request count rather than a duration keeps the test independent of how
// fast the machine is.
func TestAgainstTally(t *testing.T) {
	url := startTally(t)
	res, err := load.Run(context.Background(), load.Config{
		URL:         url,
		Secret:      e2eSecret,
		AdminToken:  e2eAdmin,
		Users:       20,
		Plan:        "free",
		Requests:    20 * 20,
		Concurrency: 16,
		Timeout:     10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Admitted != 20*10 {
		t.Errorf("admitted %d, want exactly 200 (10 per user on free)", res.Admitted)
	}
	if res.Rejected != 20*10 || res.Errors != 0 {
		t.Errorf("rejected %d, errors %d (%v %v)", res.Rejected, res.Errors, res.ErrorsByStatus, res.TransportErrorSamples)
	}
	// Verification demands, per user, usage == admitted ≤ 10: with 200
	// admitted over 20 users that is exactly 10 each.
	if !res.Passed || res.Verification == nil || res.Verification.Users != 20 || res.Verification.Sessions != 200 {
		t.Fatalf("verification %+v, violations:\n%v", res.Verification, res.Violations)
	}
	t.Logf("%.0f admitted/s, %.0f rejected/s, admitted p99 %.2fms, rejected p99 %.2fms",
		res.AdmittedPerS, res.RejectedPerS, res.LatencyAdmitted.P99Ms, res.LatencyRejected.P99Ms)
}

// TestAgainstTallyCheckingIssuer loads a service that checks iss and aud:
// the load's tokens carry what --issuer and --audience say, and without
// them every create would be a 401.
func TestAgainstTallyCheckingIssuer(t *testing.T) {
	url := startTally(t, "TALLY_JWT_ISSUER", "https://id.example.test", "TALLY_JWT_AUDIENCE", "tally-api")
	cfg := load.Config{
		URL: url, Secret: e2eSecret, AdminToken: e2eAdmin, Users: 4, Plan: "free",
		Requests: 4 * 12, Concurrency: 4, Timeout: 10 * time.Second,
		Issuer: "https://id.example.test", Audience: "tally-api",
	}
	res, err := load.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Admitted != 4*10 || res.Errors != 0 || !res.Passed {
		t.Fatalf("admitted %d, errors %d %v, passed %v", res.Admitted, res.Errors, res.ErrorsByStatus, res.Passed)
	}
	// The same load without the audience is refused: the check is real.
	cfg.Audience, cfg.UserPrefix, cfg.NoVerify = "", "noaud", true
	res, err = load.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Admitted != 0 || res.ErrorsByStatus["401"] == 0 {
		t.Fatalf("tokens without aud: admitted %d, errors %v; want every create refused with 401", res.Admitted, res.ErrorsByStatus)
	}
}
