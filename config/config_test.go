package config

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
)

const (
	secretA = "0123456789abcdef0123456789abcdef-jwt"
	secretB = "0123456789abcdef0123456789abcdef-admin"
)

// env is a getenv over a map, so tests never depend on the real environment.
func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// withDB is the smallest valid non-embedded environment, plus extra.
func withDB(extra map[string]string) map[string]string {
	m := map[string]string{
		"TALLY_DATABASE_URL": "postgres://tally:pw@db:5432/tally?sslmode=disable",
		"TALLY_JWT_SECRET":   secretA,
		"TALLY_ADMIN_TOKEN":  secretB,
	}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

func mustLoad(t *testing.T, m map[string]string) Config {
	t.Helper()
	c, err := Load(env(m))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return c
}

// writeFile writes content to a fresh file and returns its path.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "plans.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	c := mustLoad(t, nil)
	want := Config{
		HTTPAddr:         "127.0.0.1:8080",
		DataDir:          "./data",
		DatabaseMaxConns: 16,
		RedisKeyPrefix:   "tally:",
		Plans:            c.Plans, // compared separately below
		UploadBaseURL:    "http://127.0.0.1:8080/uploads",
		STTProviders:     []string{"google", "assemblyai"},
		LogLevel:         slog.LevelInfo,
		RequestTimeout:   5 * time.Second,
		ShutdownTimeout:  15 * time.Second,
		IdleTimeout:      2 * time.Minute,
		HTTPReadTimeout:  10 * time.Second,
		HTTPWriteTimeout: 15 * time.Second,
		MaxConns:         4096,
		MaxInFlight:      512,
		MaxUserInFlight:  128,
		JWTMaxTTL:        24 * time.Hour,
		ClusterLeaseTTL:  5 * time.Second,
		// Alerts are off (no TALLY_WEBHOOK_URL); the rest has defaults.
		AlertPercents:       []int{80, 100},
		WebhookTimeout:      5 * time.Second,
		WebhookRetryHorizon: 24 * time.Hour,
		WebhookConcurrency:  8,
		WebhookMaxBackoff:   10 * time.Minute,
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("defaults:\n got %#v\nwant %#v", c, want)
	}
	if !c.Embedded() || !c.EmbeddedRedis() {
		t.Errorf("Embedded() = %v, EmbeddedRedis() = %v; want both true with no URLs", c.Embedded(), c.EmbeddedRedis())
	}
	if c.JWTSecret != "" || c.AdminToken != "" {
		t.Error("embedded mode must leave secrets empty for the caller to generate")
	}
	if got, want := c.Plans.Plans(), domain.DefaultCatalog().Plans(); !reflect.DeepEqual(got, want) {
		t.Errorf("plans = %v, want the built-in catalog %v", got, want)
	}
}

func TestEveryOverride(t *testing.T) {
	plans := writeFile(t, "plans:\n  free: {max_sessions: 1, max_total_minutes: 2, max_file_size_mb: 3}\n")
	m := map[string]string{
		"TALLY_HTTP_ADDR":          "0.0.0.0:9090",
		"TALLY_DATABASE_URL":       "postgresql://u:p@db.internal:6543/t?sslmode=require",
		"TALLY_DATA_DIR":           "/var/lib/tally",
		"TALLY_REDIS_URL":          "rediss://:pw@cache:6380/3",
		"TALLY_JWT_SECRET":         secretA,
		"TALLY_ADMIN_TOKEN":        secretB,
		"TALLY_PLANS_FILE":         plans,
		"TALLY_UPLOAD_BASE_URL":    "https://files.example.com/up/",
		"TALLY_LOG_LEVEL":          "DEBUG",
		"TALLY_REDIS_KEY_PREFIX":   "t1:",
		"TALLY_REQUEST_TIMEOUT":    "750ms",
		"TALLY_SHUTDOWN_TIMEOUT":   "1m",
		"TALLY_IDLE_TIMEOUT":       "30s",
		"TALLY_STT_PROVIDERS":      "google, whisper ,deepgram",
		"TALLY_DATABASE_MAX_CONNS": "64",
		"TALLY_HTTP_READ_TIMEOUT":  "3s",
		"TALLY_HTTP_WRITE_TIMEOUT": "2s",
		"TALLY_MAX_CONNS":          "100",
		"TALLY_MAX_IN_FLIGHT":      "64",
		"TALLY_MAX_USER_IN_FLIGHT": "8",
		"TALLY_JWT_MAX_TTL":        "2h",
	}
	c := mustLoad(t, m)
	want := Config{
		HTTPAddr:         "0.0.0.0:9090",
		DatabaseURL:      "postgresql://u:p@db.internal:6543/t?sslmode=require",
		DataDir:          "/var/lib/tally",
		DatabaseMaxConns: 64,
		RedisURL:         "rediss://:pw@cache:6380/3",
		RedisKeyPrefix:   "t1:",
		JWTSecret:        secretA,
		JWTMaxTTL:        2 * time.Hour,
		AdminToken:       secretB,
		PlansFile:        plans,
		Plans:            c.Plans,
		UploadBaseURL:    "https://files.example.com/up",
		STTProviders:     []string{"google", "whisper", "deepgram"},
		LogLevel:         slog.LevelDebug,
		RequestTimeout:   750 * time.Millisecond,
		ShutdownTimeout:  time.Minute,
		IdleTimeout:      30 * time.Second,
		HTTPReadTimeout:  3 * time.Second,
		HTTPWriteTimeout: 2 * time.Second,
		MaxConns:         100,
		MaxInFlight:      64,
		MaxUserInFlight:  8,
		ClusterLeaseTTL:  5 * time.Second,
		// The webhook variables' overrides: webhooks_test.go.
		AlertPercents:       []int{80, 100},
		WebhookTimeout:      5 * time.Second,
		WebhookRetryHorizon: 24 * time.Hour,
		WebhookConcurrency:  8,
		WebhookMaxBackoff:   10 * time.Minute,
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("overrides:\n got %#v\nwant %#v", c, want)
	}
	if c.Embedded() || c.EmbeddedRedis() {
		t.Error("with both URLs set nothing is embedded")
	}
	if p, _ := c.Plans.Plan("free"); p.MaxSessions != 1 || p.MaxTotalMinutes != 2 || p.MaxFileSizeMB != 3 {
		t.Errorf("free plan from file = %+v", p)
	}

	// Sentinels replace the Redis URL.
	s := mustLoad(t, map[string]string{"TALLY_REDIS_SENTINELS": "s1:26379, s2:26379", "TALLY_REDIS_MASTER": "mymaster"})
	if !reflect.DeepEqual(s.RedisSentinels, []string{"s1:26379", "s2:26379"}) || s.RedisMaster != "mymaster" || s.EmbeddedRedis() {
		t.Errorf("sentinels = %q master = %q embedded = %v", s.RedisSentinels, s.RedisMaster, s.EmbeddedRedis())
	}

	for lvl, want := range map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError} {
		if got := mustLoad(t, map[string]string{"TALLY_LOG_LEVEL": lvl}).LogLevel; got != want {
			t.Errorf("TALLY_LOG_LEVEL=%s: level %v, want %v", lvl, got, want)
		}
	}
}

// TestInvalid sets one bad value at a time and expects exactly one error,
// naming that variable, saying what is wanted and not echoing secrets.
func TestInvalid(t *testing.T) {
	tests := []struct {
		name, value string
		embedded    bool   // load without TALLY_DATABASE_URL
		want        string // substring of the message besides the name
	}{
		{"TALLY_HTTP_ADDR", "x", false, `TALLY_HTTP_ADDR "x" is invalid: want host:port`},
		{"TALLY_HTTP_ADDR", "localhost:http", false, "numeric port"},
		{"TALLY_HTTP_ADDR", "localhost:70000", false, "numeric port"},
		{"TALLY_HTTP_ADDR", "127.0.0.1", false, "want host:port"},
		{"TALLY_DATABASE_URL", "mysql://u@h/db", false, "want postgres://"},
		{"TALLY_DATABASE_URL", "localhost:5432", false, "want postgres://"},
		{"TALLY_DATABASE_URL", "postgres://u:p@h:bad port/db", false, "want postgres://"},
		{"TALLY_DATABASE_URL", "postgres:relative", false, "want postgres://"},
		{"TALLY_REDIS_URL", "http://cache:6379", false, "want redis://"},
		{"TALLY_REDIS_URL", "unix:///tmp/redis.sock", false, "want redis://"},
		{"TALLY_REDIS_URL", "redis://cache:6379/notanumber", false, "invalid database number"},
		{"TALLY_REDIS_URL", "redis://cache:6379/0?dial_timeout=soon", false, "want redis://"},
		{"TALLY_REDIS_SENTINELS", "s1", false, "want a comma-separated list of host:port"},
		{"TALLY_REDIS_SENTINELS", ":26379", false, "with a host"},
		{"TALLY_REDIS_SENTINELS", "s1:26379,,s2:26379", false, "host:port"},
		{"TALLY_REDIS_MASTER", "my master", false, "without spaces"},
		{"TALLY_JWT_SECRET", "short", false, "TALLY_JWT_SECRET is invalid: want at least 32 bytes, got 5"},
		{"TALLY_JWT_SECRET", "short-embedded", true, "at least 32 bytes"},
		{"TALLY_ADMIN_TOKEN", "tiny", false, "TALLY_ADMIN_TOKEN is invalid: want at least 32 bytes"},
		{"TALLY_ADMIN_TOKEN", "tiny-embedded", true, "at least 32 bytes"},
		{"TALLY_PLANS_FILE", "/nonexistent/plans.yaml", false, "cannot read it: no such file or directory"},
		{"TALLY_UPLOAD_BASE_URL", "/uploads", false, "want an absolute http:// or https:// URL"},
		{"TALLY_UPLOAD_BASE_URL", "ftp://files/x", false, "want an absolute http"},
		{"TALLY_UPLOAD_BASE_URL", "https:///nohost", false, "want an absolute http"},
		{"TALLY_UPLOAD_BASE_URL", "https://files/x?sig=1", false, "without query"},
		{"TALLY_LOG_LEVEL", "verbose", false, `TALLY_LOG_LEVEL "verbose" is invalid: want one of debug, info, warn, error`},
		{"TALLY_REDIS_KEY_PREFIX", "has space:", false, "without spaces"},
		{"TALLY_REDIS_KEY_PREFIX", strings.Repeat("p", 65), false, "at most 64"},
		{"TALLY_REQUEST_TIMEOUT", "5", false, "want a positive Go duration"},
		{"TALLY_REQUEST_TIMEOUT", "0s", false, "want a positive Go duration"},
		{"TALLY_REQUEST_TIMEOUT", "-1s", false, "want a positive Go duration"},
		{"TALLY_SHUTDOWN_TIMEOUT", "soon", false, "want a positive Go duration"},
		{"TALLY_IDLE_TIMEOUT", "0", false, "want a positive Go duration"},
		{"TALLY_STT_PROVIDERS", "google,,assemblyai", false, "distinct names"},
		{"TALLY_STT_PROVIDERS", "google,google", false, "distinct names"},
		{"TALLY_STT_PROVIDERS", "goo gle", false, "distinct names"},
		{"TALLY_DATABASE_MAX_CONNS", "0", false, "want an integer >= 1"},
		{"TALLY_DATABASE_MAX_CONNS", "many", false, "want an integer >= 1"},
		{"TALLY_HTTP_READ_TIMEOUT", "0s", false, "want a positive Go duration"},
		{"TALLY_HTTP_WRITE_TIMEOUT", "5s", false, "must be longer than TALLY_REQUEST_TIMEOUT (5s)"},
		{"TALLY_MAX_CONNS", "0", false, "want an integer >= 1"},
		{"TALLY_MAX_IN_FLIGHT", "-1", false, "want an integer >= 1"},
		{"TALLY_MAX_USER_IN_FLIGHT", "lots", false, "want an integer >= 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name+"="+tt.value, func(t *testing.T) {
			m := withDB(map[string]string{tt.name: tt.value})
			if tt.embedded {
				delete(m, "TALLY_DATABASE_URL")
			}
			_, err := Load(env(m))
			assertOneError(t, err, tt.name, tt.want)
			if strings.Contains(tt.name, "SECRET") || strings.Contains(tt.name, "TOKEN") {
				if strings.Contains(err.Error(), tt.value) {
					t.Errorf("error %q echoes the secret", err)
				}
			}
		})
	}
}

// assertOneError checks that err holds exactly one *VarError, for name, with
// want in its message.
func assertOneError(t *testing.T, err error, name, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("Load succeeded; want an error naming %s", name)
	}
	var ve *VarError
	if !errors.As(err, &ve) || ve.Name != name {
		t.Fatalf("error %q: want a *VarError for %s", err, name)
	}
	msg := err.Error()
	if strings.Count(msg, "\n") != 0 {
		t.Errorf("error %q: want exactly one problem", msg)
	}
	if !strings.HasPrefix(msg, name+" ") || !strings.Contains(msg, want) {
		t.Errorf("error %q: want it to start with %s and contain %q", msg, name, want)
	}
}

func TestSeveralErrorsAreAllReported(t *testing.T) {
	_, err := Load(env(map[string]string{"TALLY_HTTP_ADDR": "x", "TALLY_LOG_LEVEL": "loud", "TALLY_IDLE_TIMEOUT": "never"}))
	if err == nil {
		t.Fatal("want an error")
	}
	for _, name := range []string{"TALLY_HTTP_ADDR", "TALLY_LOG_LEVEL", "TALLY_IDLE_TIMEOUT"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
}

func TestSecretsRequiredUnlessEmbedded(t *testing.T) {
	// Embedded: empty means "the caller generates them".
	c := mustLoad(t, map[string]string{})
	if !c.Embedded() || c.JWTSecret != "" || c.AdminToken != "" {
		t.Errorf("embedded = %v, secrets %q %q; want embedded with empty secrets", c.Embedded(), c.JWTSecret, c.AdminToken)
	}
	// Embedded with secrets given: they are kept.
	c = mustLoad(t, map[string]string{"TALLY_JWT_SECRET": secretA, "TALLY_ADMIN_TOKEN": secretB})
	if c.JWTSecret != secretA || c.AdminToken != secretB {
		t.Error("embedded mode must keep secrets that are set")
	}
	// With Postgres each secret is required, and each missing one is named.
	for _, name := range []string{"TALLY_JWT_SECRET", "TALLY_ADMIN_TOKEN"} {
		m := withDB(nil)
		delete(m, name)
		_, err := Load(env(m))
		assertOneError(t, err, name, "is required when TALLY_DATABASE_URL is set")
	}
	// Exactly 32 bytes is enough, counted in bytes (the key's size), not
	// characters: 31 bytes is refused, however it is spelled.
	mustLoad(t, withDB(map[string]string{"TALLY_JWT_SECRET": strings.Repeat("x", 32)}))
	_, err := Load(env(withDB(map[string]string{"TALLY_JWT_SECRET": strings.Repeat("x", 31)})))
	assertOneError(t, err, "TALLY_JWT_SECRET", "got 31")
	_, err = Load(env(withDB(map[string]string{"TALLY_JWT_SECRET": strings.Repeat("é", 15)}))) // 30 bytes
	assertOneError(t, err, "TALLY_JWT_SECRET", "got 30")
	// The admin token may not be the signing secret, nor the upload
	// secret either of them; the upload secret is held to the same length.
	_, err = Load(env(withDB(map[string]string{"TALLY_ADMIN_TOKEN": secretA})))
	assertOneError(t, err, "TALLY_ADMIN_TOKEN", "must differ from TALLY_JWT_SECRET")
	for _, v := range []string{secretA, secretB} {
		_, err = Load(env(withDB(map[string]string{"TALLY_UPLOAD_SECRET": v})))
		assertOneError(t, err, "TALLY_UPLOAD_SECRET", "must differ from TALLY_JWT_SECRET and TALLY_ADMIN_TOKEN")
	}
	_, err = Load(env(withDB(map[string]string{"TALLY_UPLOAD_SECRET": "short"})))
	assertOneError(t, err, "TALLY_UPLOAD_SECRET", "at least 32 bytes")
	if c := mustLoad(t, withDB(map[string]string{"TALLY_UPLOAD_SECRET": strings.Repeat("u", 32)})); c.UploadSecret != strings.Repeat("u", 32) {
		t.Errorf("UploadSecret %q", c.UploadSecret)
	}
}

func TestRedisCombinations(t *testing.T) {
	_, err := Load(env(map[string]string{"TALLY_REDIS_SENTINELS": "s1:26379"}))
	assertOneError(t, err, "TALLY_REDIS_MASTER", "is required when TALLY_REDIS_SENTINELS is set")

	_, err = Load(env(map[string]string{"TALLY_REDIS_MASTER": "mymaster"}))
	assertOneError(t, err, "TALLY_REDIS_SENTINELS", "is required when TALLY_REDIS_MASTER is set")

	_, err = Load(env(map[string]string{"TALLY_REDIS_URL": "redis://cache:6379/0", "TALLY_REDIS_SENTINELS": "s1:26379", "TALLY_REDIS_MASTER": "m"}))
	assertOneError(t, err, "TALLY_REDIS_SENTINELS", "cannot be combined with TALLY_REDIS_URL")
}

func TestURLPasswordsNeverPrinted(t *testing.T) {
	const pw = "hunter2-secret"
	_, err := Load(env(withDB(map[string]string{"TALLY_DATABASE_URL": "mysql://u:" + pw + "@h/db"})))
	assertOneError(t, err, "TALLY_DATABASE_URL", "want postgres://")
	if strings.Contains(err.Error(), pw) {
		t.Errorf("error %q leaks the password", err)
	}
	// A URL that does not parse is hidden whole; the parse error itself
	// (which Go reports with the URL) must not carry it either.
	_, err = Load(env(withDB(map[string]string{"TALLY_DATABASE_URL": "postgres://u:" + pw + "@h:port x/db"})))
	assertOneError(t, err, "TALLY_DATABASE_URL", "want postgres://")
	if strings.Contains(err.Error(), pw) {
		t.Errorf("error %q leaks the password", err)
	}
	_, err = Load(env(map[string]string{"TALLY_REDIS_URL": "redis://:" + pw + "@cache:6379/x"}))
	assertOneError(t, err, "TALLY_REDIS_URL", "want redis://")
	if strings.Contains(err.Error(), pw) {
		t.Errorf("error %q leaks the password", err)
	}
}

func TestRedacted(t *testing.T) {
	c := mustLoad(t, withDB(map[string]string{
		"TALLY_DATABASE_URL": "postgres://u:dbpass@db/t?password=qpass",
		"TALLY_REDIS_URL":    "redis://:redispass@cache:6379/0",
	}))
	r := c.Redacted()
	if len(r) != len(Vars()) {
		t.Errorf("Redacted has %d entries, want one per variable (%d)", len(r), len(Vars()))
	}
	if r["TALLY_JWT_SECRET"] != "[redacted]" || r["TALLY_ADMIN_TOKEN"] != "[redacted]" {
		t.Errorf("secrets shown as %q, %q", r["TALLY_JWT_SECRET"], r["TALLY_ADMIN_TOKEN"])
	}
	if r["TALLY_HTTP_ADDR"] != "127.0.0.1:8080" || r["TALLY_REQUEST_TIMEOUT"] != "5s" || r["TALLY_LOG_LEVEL"] != "info" {
		t.Errorf("plain values altered: %v", r)
	}
	if !strings.Contains(r["TALLY_DATABASE_URL"], "db/t") {
		t.Errorf("database URL redacted to %q; want host and database kept", r["TALLY_DATABASE_URL"])
	}

	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "config", c)
	for name, s := range map[string]string{
		"Redacted": fmt.Sprint(r), "String": c.String(), "%v": fmt.Sprintf("%v", c),
		"%+v": fmt.Sprintf("%+v", c), "%#v": fmt.Sprintf("%#v", c), "slog": logged.String(),
	} {
		for _, secret := range []string{secretA, secretB, "dbpass", "qpass", "redispass"} {
			if strings.Contains(s, secret) {
				t.Errorf("%s output leaks %q: %s", name, secret, s)
			}
		}
	}

	e := mustLoad(t, nil).Redacted()
	if e["TALLY_JWT_SECRET"] != "(generate)" {
		t.Errorf("embedded empty secret shown as %q, want (generate)", e["TALLY_JWT_SECRET"])
	}
}

// TestVarsAreTheSingleSource checks that Load reads exactly the variables
// Vars documents, that each is documented, and that each default survives
// a round trip through Load and Redacted.
// pprof hands out memory contents: TALLY_OPS_PPROF is refused unless the
// ops listener is on loopback, or TALLY_OPS_PPROF_ALLOW_REMOTE says
// otherwise; the ops listener itself (metrics, readiness) may listen
// anywhere.
func TestOpsPprofIsLoopbackUnlessAllowed(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:6060", "[::1]:6060", "localhost:6060"} {
		c := mustLoad(t, map[string]string{"TALLY_OPS_ADDR": addr, "TALLY_OPS_PPROF": "true"})
		if c.OpsAddr != addr || !c.OpsPprof {
			t.Errorf("%s: OpsAddr %q, OpsPprof %v", addr, c.OpsAddr, c.OpsPprof)
		}
	}
	for _, addr := range []string{":6060", "0.0.0.0:6060", "10.1.2.3:6060", "[::]:6060", "ops.internal:6060"} {
		if c := mustLoad(t, map[string]string{"TALLY_OPS_ADDR": addr}); c.OpsAddr != addr || c.OpsPprof {
			t.Errorf("%s without pprof: %+v", addr, c)
		}
		_, err := Load(env(map[string]string{"TALLY_OPS_ADDR": addr, "TALLY_OPS_PPROF": "true"}))
		if err == nil || !strings.Contains(err.Error(), "TALLY_OPS_PPROF ") || !strings.Contains(err.Error(), "loopback") ||
			!strings.Contains(err.Error(), "TALLY_OPS_PPROF_ALLOW_REMOTE=true") {
			t.Errorf("%s: %v, want a refusal naming TALLY_OPS_PPROF, loopback and the way out", addr, err)
		}
		c := mustLoad(t, map[string]string{"TALLY_OPS_ADDR": addr, "TALLY_OPS_PPROF": "true", "TALLY_OPS_PPROF_ALLOW_REMOTE": "true"})
		if c.OpsAddr != addr || !c.OpsPprof || !c.OpsPprofAllowRemote {
			t.Errorf("%s allowed: %+v", addr, c)
		}
	}
	// pprof with nowhere to serve it is a mistake, not a silent no-op.
	if _, err := Load(env(map[string]string{"TALLY_OPS_PPROF": "true"})); err == nil || !strings.Contains(err.Error(), "TALLY_OPS_PPROF is true but TALLY_OPS_ADDR is unset") {
		t.Errorf("pprof without an ops listener: %v", err)
	}
	for _, v := range []string{"TALLY_OPS_PPROF", "TALLY_OPS_PPROF_ALLOW_REMOTE"} {
		if _, err := Load(env(map[string]string{v: "yes please"})); err == nil || !strings.Contains(err.Error(), v) || !strings.Contains(err.Error(), "true or false") {
			t.Errorf("a non-boolean %s: %v", v, err)
		}
	}
	if _, err := Load(env(map[string]string{"TALLY_OPS_ADDR": "nonsense"})); err == nil || !strings.Contains(err.Error(), "TALLY_OPS_ADDR") {
		t.Errorf("a bad TALLY_OPS_ADDR: %v", err)
	}
	// Off by default: no ops listener, no pprof.
	if c := mustLoad(t, nil); c.OpsAddr != "" || c.OpsPprof || c.OpsPprofAllowRemote {
		t.Errorf("defaults: %+v", c)
	}
}

// The variables the ops listener replaced are refused with what to set
// instead, rather than silently ignored.
func TestRetiredDebugVarsAreRefused(t *testing.T) {
	for v, want := range map[string]string{
		"TALLY_DEBUG_ADDR":         "TALLY_OPS_PPROF=true",
		"TALLY_DEBUG_ALLOW_REMOTE": "TALLY_OPS_PPROF_ALLOW_REMOTE",
	} {
		_, err := Load(env(map[string]string{v: "127.0.0.1:6060"}))
		if err == nil || !strings.HasPrefix(err.Error(), v+" ") || !strings.Contains(err.Error(), want) {
			t.Errorf("%s set: %v, want a refusal naming it and %s", v, err, want)
		}
	}
}

func TestVarsAreTheSingleSource(t *testing.T) {
	read := map[string]bool{}
	if _, err := Load(func(k string) string { read[k] = true; return "" }); err != nil {
		t.Fatal(err)
	}
	c := mustLoad(t, nil)
	r := c.Redacted()
	seen := map[string]bool{}
	for _, v := range Vars() {
		if !strings.HasPrefix(v.Name, "TALLY_") || v.Meaning == "" || seen[v.Name] {
			t.Errorf("%+v: want a unique TALLY_ name with a meaning", v)
		}
		seen[v.Name] = true
		if !read[v.Name] {
			t.Errorf("Load does not read %s", v.Name)
		}
		// What Redacted prints must load back to the same value (2m may
		// come back as 2m0s).
		if !v.Secret {
			back := mustLoad(t, map[string]string{v.Name: r[v.Name]})
			if v.get(back) != v.get(c) {
				t.Errorf("%s: default %q comes back as %q", v.Name, v.Default, v.get(back))
			}
		}
	}
	for _, r := range retired {
		seen[r.name] = true // read only to be refused
	}
	for k := range read {
		if !seen[k] {
			t.Errorf("Load reads %s, which Vars does not document", k)
		}
	}

	var help bytes.Buffer
	if err := WriteVars(&help); err != nil {
		t.Fatal(err)
	}
	for _, v := range Vars() {
		if !strings.Contains(help.String(), v.Name) {
			t.Errorf("WriteVars omits %s", v.Name)
		}
	}
}

func TestPlansFile(t *testing.T) {
	good := `
plans:
  free:    {max_sessions: 3, max_total_minutes: 0, max_file_size_mb: 10}
  team: &team
    max_sessions: -1
    max_total_minutes: 6000
    max_file_size_mb: 0x100
  team2: *team
`
	c := mustLoad(t, map[string]string{"TALLY_PLANS_FILE": writeFile(t, good)})
	if got := c.Plans.Names(); !reflect.DeepEqual(got, []string{"free", "team", "team2"}) {
		t.Errorf("plan names = %v", got)
	}
	if p, _ := c.Plans.Plan("team2"); p.MaxSessions != domain.Unlimited || p.MaxTotalMinutes != 6000 || p.MaxFileSizeMB != 256 {
		t.Errorf("team2 = %+v", p)
	}
	if p, _ := c.Plans.Plan("free"); p.MaxTotalMinutes != 0 {
		t.Errorf("free = %+v; want 0 minutes kept as none allowed", p)
	}

	bad := []struct{ name, yaml, want string }{
		{"empty file", "", "the file is empty"},
		{"not yaml", "plans: [unclosed", "want YAML"},
		{"unknown top-level key", "plan:\n  free: {max_sessions: 1, max_total_minutes: 1, max_file_size_mb: 1}\n", `unknown top-level key "plan" (line 1); want plans`},
		{"no plans key", "# nothing\n{}\n", "want a top-level plans: mapping"},
		{"plans is a list", "plans: [free]\n", "want a top-level plans: mapping"},
		{"unknown field", "plans:\n  free: {max_sessions: 1, max_total_minutes: 1, max_file_size_mb: 1, max_minutes: 5}\n", `plan "free": unknown field "max_minutes"`},
		{"missing field", "plans:\n  free: {max_sessions: 1, max_total_minutes: 1}\n", `plan "free": max_file_size_mb is missing`},
		{"plan not a mapping", "plans:\n  free: 5\n", `plan "free": want a mapping`},
		{"null plan", "plans:\n  free:\n", `plan "free": want a mapping`},
		{"limit below -1", "plans:\n  free: {max_sessions: -2, max_total_minutes: 1, max_file_size_mb: 1}\n", `plan "free": max_sessions is "-2"`},
		{"fractional limit", "plans:\n  free: {max_sessions: 1, max_total_minutes: 1.5, max_file_size_mb: 1}\n", `plan "free": max_total_minutes is "1.5"`},
		{"quoted limit", "plans:\n  free: {max_sessions: \"1\", max_total_minutes: 1, max_file_size_mb: 1}\n", `plan "free": max_sessions is "1"`},
		{"null limit", "plans:\n  free: {max_sessions: , max_total_minutes: 1, max_file_size_mb: 1}\n", `plan "free": max_sessions is ""`},
		{"limit out of range", "plans:\n  free: {max_sessions: 99999999999999999999, max_total_minutes: 1, max_file_size_mb: 1}\n", "want an integer >= -1"},
		{"duplicate field", "plans:\n  free:\n    max_sessions: 1\n    max_sessions: 2\n    max_total_minutes: 1\n    max_file_size_mb: 1\n", "max_sessions"},
		{"duplicate plan", "plans:\n  free: {max_sessions: 1, max_total_minutes: 1, max_file_size_mb: 1}\n  free: {max_sessions: 2, max_total_minutes: 1, max_file_size_mb: 1}\n", `"free"`},
		{"no free plan", "plans:\n  pro: {max_sessions: 1, max_total_minutes: 1, max_file_size_mb: 1}\n", `must define the "free" plan`},
		{"plans twice", "plans: {}\nplans: {}\n", "plans"},
		{"comments only", "# nothing here\n", "want a top-level plans: mapping"},
		{"two documents", "plans:\n  free: {max_sessions: 1, max_total_minutes: 1, max_file_size_mb: 1}\n---\nplans: {}\n", "single YAML document"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, tt.yaml)
			_, err := Load(env(map[string]string{"TALLY_PLANS_FILE": path}))
			assertOneError(t, err, "TALLY_PLANS_FILE", tt.want)
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not say which file", err)
			}
		})
	}
}

// TALLY_JWT_JWKS_URL takes an https URL, or http to a loopback host only:
// keys fetched in clear could be replaced on the way.
func TestJWKSURL(t *testing.T) {
	if c := mustLoad(t, nil); c.JWTJWKSURL != "" {
		t.Errorf("default %q; want unset", c.JWTJWKSURL)
	}
	for _, ok := range []string{
		"https://idp.example.com/.well-known/jwks.json",
		"https://idp.example.com:8443/realms/x/protocol/openid-connect/certs?v=1",
		"http://127.0.0.1:8081/jwks", "http://localhost/jwks", "http://[::1]:9000/jwks",
	} {
		if c := mustLoad(t, withDB(map[string]string{"TALLY_JWT_JWKS_URL": ok})); c.JWTJWKSURL != ok {
			t.Errorf("%s loads as %q", ok, c.JWTJWKSURL)
		}
	}
	for bad, want := range map[string]string{
		"http://idp.example.com/jwks":    "want https://: keys fetched over plain http could be replaced",
		"http://10.0.0.5/jwks":           "want https://",
		"ftp://idp.example.com/jwks":     "want an absolute https:// URL",
		"idp.example.com/jwks":           "want an absolute https:// URL",
		"https:///jwks":                  "want an absolute https:// URL",
		"https://idp.example.com/j#frag": "without fragment",
	} {
		_, err := Load(env(withDB(map[string]string{"TALLY_JWT_JWKS_URL": bad})))
		assertOneError(t, err, "TALLY_JWT_JWKS_URL", want)
	}
	// The URL is shown in logs, its password (if any) masked.
	c := mustLoad(t, withDB(map[string]string{"TALLY_JWT_JWKS_URL": "https://u:hunter2@idp.example.com/jwks"}))
	if got := c.Redacted()["TALLY_JWT_JWKS_URL"]; got != "https://u:xxxxx@idp.example.com/jwks" {
		t.Errorf("redacted as %q", got)
	}
}

func TestAdminTokens(t *testing.T) {
	ops, bot := strings.Repeat("o", 32), "billing-bot-token-0123456789abcdef"
	// Named credentials next to TALLY_ADMIN_TOKEN, which is "admin";
	// spaces around entries are dropped, a token may hold ':'.
	c := mustLoad(t, withDB(map[string]string{"TALLY_ADMIN_TOKENS": " ops.alice:" + ops + " , billing-bot:" + bot + ":x"}))
	want := []NamedToken{{"admin", secretB}, {"ops.alice", ops}, {"billing-bot", bot + ":x"}}
	if got := c.AdminCredentials(); !reflect.DeepEqual(got, want) {
		t.Errorf("AdminCredentials = %q, want %q", got, want)
	}
	// They are enough without TALLY_ADMIN_TOKEN; with neither, the message
	// names TALLY_ADMIN_TOKEN and the alternative.
	m := withDB(map[string]string{"TALLY_ADMIN_TOKENS": "ops:" + ops})
	delete(m, "TALLY_ADMIN_TOKEN")
	if got := mustLoad(t, m).AdminCredentials(); !reflect.DeepEqual(got, []NamedToken{{"ops", ops}}) {
		t.Errorf("AdminCredentials = %q", got)
	}
	delete(m, "TALLY_ADMIN_TOKENS")
	_, err := Load(env(m))
	assertOneError(t, err, "TALLY_ADMIN_TOKEN", "is required when TALLY_DATABASE_URL is set: want at least 32 bytes (or set TALLY_ADMIN_TOKENS)")

	for value, problem := range map[string]string{
		ops:                                 "entry 1 is not name:token",
		"ops:" + ops + ",":                  "entry 2 is empty",
		"Ops:" + ops:                        "entry 1: the name before ':' must be 1 to 64 characters of [a-z0-9._-]",
		strings.Repeat("n", 65) + ":" + ops: "entry 1: the name before ':' must be",
		":" + ops:                           "entry 1: the name before ':' must be",
		// token:name: the token, a valid name, is not printed.
		ops + ":ops":                          "entry 1: want a token of at least 32 bytes, got 3",
		"ops:" + ops + ",bot:short-token":     "entry 2: want a token of at least 32 bytes, got 11",
		"ops:" + ops + ",ops:" + bot:          "entry 2 has the name of entry 1",
		"ops:" + ops + ",bot:" + ops:          "entry 2 has the token of entry 1; tokens must be distinct",
		"ops:" + ops + ",admin:" + bot:        "entry 2 is named admin, which is TALLY_ADMIN_TOKEN's name",
		"ops:" + secretB:                      "entry 1 has the token of TALLY_ADMIN_TOKEN",
		"ops:" + secretA:                      "entry 1 has the token TALLY_JWT_SECRET is",
		"ops:" + strings.Repeat("u", 32) + "": "entry 1 has the token TALLY_UPLOAD_SECRET is",
	} {
		_, err := Load(env(withDB(map[string]string{"TALLY_ADMIN_TOKENS": value, "TALLY_UPLOAD_SECRET": strings.Repeat("u", 32)})))
		assertOneError(t, err, "TALLY_ADMIN_TOKENS", problem)
		for _, secret := range []string{ops, bot, secretA, secretB, "short-token", strings.Repeat("u", 32)} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%q: error %q shows a token", value, err)
			}
		}
	}
	// "admin" is free when TALLY_ADMIN_TOKEN is not set.
	m = withDB(map[string]string{"TALLY_ADMIN_TOKENS": "admin:" + ops})
	delete(m, "TALLY_ADMIN_TOKEN")
	mustLoad(t, m)

	// Printed or logged, the tokens are redacted.
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "config", c)
	for _, out := range []string{c.String(), fmt.Sprintf("%v %+v %#v", c, c.AdminTokens, c.AdminTokens), logged.String()} {
		if strings.Contains(out, ops) || strings.Contains(out, bot) {
			t.Errorf("a token is printed: %s", out)
		}
	}
	if r := c.Redacted()["TALLY_ADMIN_TOKENS"]; r != "[redacted]" {
		t.Errorf("Redacted TALLY_ADMIN_TOKENS = %q", r)
	}
}
