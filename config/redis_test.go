package config

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tally-dev/tally/internal/testenv"
)

const (
	redisPass    = "redis-password-never-printed"
	sentinelPass = "sentinel-password-never-printed"
)

// sentinels is a valid Sentinel-mode environment, plus extra.
func sentinels(extra map[string]string) map[string]string {
	m := map[string]string{"TALLY_REDIS_SENTINELS": "s1:26379,s2:26379", "TALLY_REDIS_MASTER": "mymaster"}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// redisOptions is what NewRedisClient built: the options of the URL's
// client, or of the master's client in Sentinel mode.
func redisOptions(t *testing.T, c Config) *redis.Options {
	t.Helper()
	client, err := c.NewRedisClient()
	if err != nil {
		t.Fatalf("NewRedisClient: %v", err)
	}
	t.Cleanup(func() { _ = client.Close() })
	rc, ok := client.(*redis.Client)
	if !ok {
		t.Fatalf("NewRedisClient returned a %T", client)
	}
	return rc.Options()
}

// In Sentinel mode, which has no URL, the master's and the Sentinels'
// credentials and TLS reach the go-redis client; before these variables
// there was no way to give any of them.
func TestRedisSentinelCredentialsAndTLS(t *testing.T) {
	files := testenv.NewTLSFiles(t)
	c := mustLoad(t, sentinels(map[string]string{
		"TALLY_REDIS_USERNAME":          "tally",
		"TALLY_REDIS_PASSWORD":          redisPass,
		"TALLY_REDIS_SENTINEL_USERNAME": "watcher",
		"TALLY_REDIS_SENTINEL_PASSWORD": sentinelPass,
		"TALLY_REDIS_TLS":               "true",
		"TALLY_REDIS_TLS_CA_FILE":       files.CAFile,
		"TALLY_REDIS_TLS_CERT_FILE":     files.ClientCertFile,
		"TALLY_REDIS_TLS_KEY_FILE":      files.ClientKeyFile,
	}))
	if c.RedisUsername != "tally" || c.RedisPassword != redisPass || c.RedisSentinelUsername != "watcher" || c.RedisSentinelPassword != sentinelPass || !c.RedisTLS {
		t.Errorf("loaded %+v", c)
	}
	o := redisOptions(t, c)
	if o.Username != "tally" || o.Password != redisPass {
		t.Errorf("master credentials %q/%q", o.Username, o.Password)
	}
	if o.TLSConfig == nil || o.TLSConfig.RootCAs == nil || len(o.TLSConfig.Certificates) != 1 || o.TLSConfig.InsecureSkipVerify || o.TLSConfig.MinVersion < tls.VersionTLS12 {
		t.Fatalf("TLS config %+v", o.TLSConfig)
	}
	// Each dial checks the host it dialled: a Sentinel's, or the master's
	// as the Sentinels announce it.
	if o.TLSConfig.ServerName != "" {
		t.Errorf("ServerName %q pinned; want the dialled host checked", o.TLSConfig.ServerName)
	}
	// The Sentinels' own credentials are go-redis's to use; what it
	// sends, the real Sentinels of app/redis_test.go check.

	// Without TALLY_REDIS_TLS: no TLS.
	if o := redisOptions(t, mustLoad(t, sentinels(nil))); o.TLSConfig != nil {
		t.Errorf("TLS without TALLY_REDIS_TLS: %+v", o.TLSConfig)
	}
}

// With a URL, the credentials may come from the variables instead of the
// URL (a password kept in a secret of its own), and the CA file completes
// rediss://, whose host stays the server name checked.
func TestRedisURLWithCredentialVariables(t *testing.T) {
	files := testenv.NewTLSFiles(t)
	c := mustLoad(t, map[string]string{
		"TALLY_REDIS_URL":         "rediss://cache.internal:6380/2",
		"TALLY_REDIS_USERNAME":    "tally",
		"TALLY_REDIS_PASSWORD":    redisPass,
		"TALLY_REDIS_TLS_CA_FILE": files.CAFile,
	})
	o := redisOptions(t, c)
	if o.Addr != "cache.internal:6380" || o.DB != 2 || o.Username != "tally" || o.Password != redisPass {
		t.Errorf("options addr %q db %d user %q password set %v", o.Addr, o.DB, o.Username, o.Password != "")
	}
	if o.TLSConfig == nil || o.TLSConfig.ServerName != "cache.internal" || o.TLSConfig.RootCAs == nil || o.TLSConfig.InsecureSkipVerify {
		t.Errorf("TLS config %+v", o.TLSConfig)
	}
	// The URL's own credentials, as before.
	o = redisOptions(t, mustLoad(t, map[string]string{"TALLY_REDIS_URL": "redis://u:" + redisPass + "@cache:6379/0"}))
	if o.Username != "u" || o.Password != redisPass || o.TLSConfig != nil {
		t.Errorf("URL credentials: user %q, TLS %v", o.Username, o.TLSConfig)
	}
}

// TestRedisSettingsThatCannotApply: a credential or TLS setting that would
// be ignored, or that contradicts another, stops start-up with one error
// naming it.
func TestRedisSettingsThatCannotApply(t *testing.T) {
	files := testenv.NewTLSFiles(t)
	url := map[string]string{"TALLY_REDIS_URL": "redis://cache:6379/0"}
	tlsURL := map[string]string{"TALLY_REDIS_URL": "rediss://cache:6380/0"}
	with := func(base map[string]string, kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name, variable, want string
		env                  map[string]string
	}{
		{"password without any Redis", "TALLY_REDIS_PASSWORD", "no Redis is configured",
			with(nil, "TALLY_REDIS_PASSWORD", redisPass)},
		{"TLS without any Redis", "TALLY_REDIS_TLS", "no Redis is configured",
			with(nil, "TALLY_REDIS_TLS", "true")},
		{"Sentinel password with a URL", "TALLY_REDIS_SENTINEL_PASSWORD", "Sentinel mode only",
			with(url, "TALLY_REDIS_SENTINEL_PASSWORD", sentinelPass)},
		{"TALLY_REDIS_TLS with a URL", "TALLY_REDIS_TLS", "rediss://",
			with(url, "TALLY_REDIS_TLS", "true")},
		{"password beside one in the URL", "TALLY_REDIS_PASSWORD", "in one place",
			with(map[string]string{"TALLY_REDIS_URL": "redis://:other@cache:6379/0"}, "TALLY_REDIS_PASSWORD", redisPass)},
		{"username beside a user in the URL", "TALLY_REDIS_USERNAME", "in one place",
			with(map[string]string{"TALLY_REDIS_URL": "redis://u@cache:6379/0"}, "TALLY_REDIS_USERNAME", "tally")},
		{"username without a password", "TALLY_REDIS_USERNAME", "requires TALLY_REDIS_PASSWORD",
			with(url, "TALLY_REDIS_USERNAME", "tally")},
		{"Sentinel username without a password", "TALLY_REDIS_SENTINEL_USERNAME", "requires TALLY_REDIS_SENTINEL_PASSWORD",
			sentinels(map[string]string{"TALLY_REDIS_SENTINEL_USERNAME": "watcher"})},
		{"username with a space", "TALLY_REDIS_USERNAME", "without spaces",
			with(url, "TALLY_REDIS_USERNAME", "ta lly", "TALLY_REDIS_PASSWORD", redisPass)},
		{"CA file without TLS", "TALLY_REDIS_TLS_CA_FILE", "no effect without TLS",
			with(url, "TALLY_REDIS_TLS_CA_FILE", files.CAFile)},
		{"CA file with Sentinels without TLS", "TALLY_REDIS_TLS_CA_FILE", "no effect without TLS",
			sentinels(map[string]string{"TALLY_REDIS_TLS_CA_FILE": files.CAFile})},
		{"certificate without its key", "TALLY_REDIS_TLS_KEY_FILE", "is required with TALLY_REDIS_TLS_CERT_FILE",
			with(tlsURL, "TALLY_REDIS_TLS_CERT_FILE", files.ClientCertFile)},
		{"key without its certificate", "TALLY_REDIS_TLS_CERT_FILE", "is required with TALLY_REDIS_TLS_KEY_FILE",
			with(tlsURL, "TALLY_REDIS_TLS_KEY_FILE", files.ClientKeyFile)},
		{"TLS not a boolean", "TALLY_REDIS_TLS", "want true or false",
			sentinels(map[string]string{"TALLY_REDIS_TLS": "yes please"})},
		{"skip_verify in the URL", "TALLY_REDIS_URL", "skip_verify is refused",
			map[string]string{"TALLY_REDIS_URL": "rediss://cache:6380/0?skip_verify=true"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(env(tt.env))
			assertOneError(t, err, tt.variable, tt.want)
			for _, secret := range []string{redisPass, sentinelPass} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q echoes a password", err)
				}
			}
		})
	}
}

// TestRedisTLSFiles: a CA file, client certificate or key that is missing
// or does not parse stops start-up, naming its variable, instead of every
// connection failing later.
func TestRedisTLSFiles(t *testing.T) {
	files := testenv.NewTLSFiles(t)
	other := testenv.NewTLSFiles(t)
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not PEM at all\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	base := map[string]string{"TALLY_REDIS_URL": "rediss://cache:6380/0"}
	tests := []struct {
		name, variable, want string
		set                  map[string]string
	}{
		{"CA file missing", "TALLY_REDIS_TLS_CA_FILE", "cannot read it: no such file or directory",
			map[string]string{"TALLY_REDIS_TLS_CA_FILE": missing}},
		{"CA file not PEM", "TALLY_REDIS_TLS_CA_FILE", "want PEM CERTIFICATE blocks",
			map[string]string{"TALLY_REDIS_TLS_CA_FILE": junk}},
		{"CA file is a key", "TALLY_REDIS_TLS_CA_FILE", "want PEM CERTIFICATE blocks",
			map[string]string{"TALLY_REDIS_TLS_CA_FILE": files.ClientKeyFile}},
		{"certificate missing", "TALLY_REDIS_TLS_CERT_FILE", "cannot read it",
			map[string]string{"TALLY_REDIS_TLS_CERT_FILE": missing, "TALLY_REDIS_TLS_KEY_FILE": files.ClientKeyFile}},
		{"certificate is a key", "TALLY_REDIS_TLS_CERT_FILE", "want a PEM CERTIFICATE block",
			map[string]string{"TALLY_REDIS_TLS_CERT_FILE": files.ClientKeyFile, "TALLY_REDIS_TLS_KEY_FILE": files.ClientKeyFile}},
		{"key missing", "TALLY_REDIS_TLS_KEY_FILE", "cannot read it",
			map[string]string{"TALLY_REDIS_TLS_CERT_FILE": files.ClientCertFile, "TALLY_REDIS_TLS_KEY_FILE": missing}},
		{"key of another certificate", "TALLY_REDIS_TLS_KEY_FILE", "want the PEM private key of TALLY_REDIS_TLS_CERT_FILE's certificate",
			map[string]string{"TALLY_REDIS_TLS_CERT_FILE": files.ClientCertFile, "TALLY_REDIS_TLS_KEY_FILE": other.ClientKeyFile}},
		{"key not PEM", "TALLY_REDIS_TLS_KEY_FILE", "want the PEM private key",
			map[string]string{"TALLY_REDIS_TLS_CERT_FILE": files.ClientCertFile, "TALLY_REDIS_TLS_KEY_FILE": junk}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := map[string]string{}
			for k, v := range base {
				m[k] = v
			}
			for k, v := range tt.set {
				m[k] = v
			}
			_, err := Load(env(m))
			assertOneError(t, err, tt.variable, tt.want)
			if key, _ := os.ReadFile(files.ClientKeyFile); strings.Contains(err.Error(), string(bytes.TrimSpace(key))[40:80]) {
				t.Errorf("error %q prints key material", err)
			}
		})
	}
}

// TestRedisPasswordsRedacted: the Redis passwords are secrets in every
// printed form of the configuration; unset in embedded mode, they show
// empty, not "(generate)": nothing generates them.
func TestRedisPasswordsRedacted(t *testing.T) {
	c := mustLoad(t, sentinels(map[string]string{
		"TALLY_REDIS_PASSWORD":          redisPass,
		"TALLY_REDIS_SENTINEL_PASSWORD": sentinelPass,
		"TALLY_REDIS_USERNAME":          "tally",
	}))
	r := c.Redacted()
	if r["TALLY_REDIS_PASSWORD"] != "[redacted]" || r["TALLY_REDIS_SENTINEL_PASSWORD"] != "[redacted]" || r["TALLY_REDIS_USERNAME"] != "tally" {
		t.Errorf("redacted: password %q, Sentinel password %q, user %q", r["TALLY_REDIS_PASSWORD"], r["TALLY_REDIS_SENTINEL_PASSWORD"], r["TALLY_REDIS_USERNAME"])
	}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "config", c)
	for name, s := range map[string]string{
		"Redacted": fmt.Sprint(r), "String": c.String(), "%v": fmt.Sprintf("%v", c),
		"%+v": fmt.Sprintf("%+v", c), "%#v": fmt.Sprintf("%#v", c), "slog": logged.String(),
	} {
		for _, secret := range []string{redisPass, sentinelPass} {
			if strings.Contains(s, secret) {
				t.Errorf("%s output leaks a Redis password: %s", name, s)
			}
		}
	}
	// The URL's password is masked as before.
	u := mustLoad(t, map[string]string{"TALLY_REDIS_URL": "rediss://tally:" + redisPass + "@cache:6380/0"})
	if s := u.String(); strings.Contains(s, redisPass) || !strings.Contains(s, "cache:6380") {
		t.Errorf("String() = %s; want the password masked and the host kept", s)
	}

	e := mustLoad(t, nil).Redacted()
	if e["TALLY_REDIS_PASSWORD"] != "" || e["TALLY_REDIS_SENTINEL_PASSWORD"] != "" {
		t.Errorf("embedded, unset: %q, %q; want empty", e["TALLY_REDIS_PASSWORD"], e["TALLY_REDIS_SENTINEL_PASSWORD"])
	}
}

// An outage is not a misconfiguration: ExplainRedisError leaves it alone,
// so that /readyz does not send an operator to the wrong variable.
func TestExplainRedisErrorLeavesOutagesAlone(t *testing.T) {
	c := mustLoad(t, map[string]string{"TALLY_REDIS_URL": "redis://cache:6379/0", "TALLY_REDIS_PASSWORD": redisPass})
	for _, err := range []error{
		&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED},
		io.EOF,
		context.DeadlineExceeded,
	} {
		if got := c.ExplainRedisError(err); got != err {
			t.Errorf("ExplainRedisError(%v) = %v; want it unchanged", err, got)
		}
	}
	if c.ExplainRedisError(nil) != nil {
		t.Error("ExplainRedisError(nil) is not nil")
	}
	// What go-redis returns for a refused AUTH is explained, and still
	// wraps the original.
	wrong := errors.New("WRONGPASS invalid username-password pair or user is disabled.")
	got := c.ExplainRedisError(wrong)
	if !errors.Is(got, wrong) || !strings.Contains(got.Error(), "TALLY_REDIS_PASSWORD") {
		t.Errorf("ExplainRedisError(WRONGPASS) = %v", got)
	}
}
