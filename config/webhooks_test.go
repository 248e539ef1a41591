package config

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
)

// webhookKey is a 32-byte key and webhookSecret its TALLY_WEBHOOK_SECRET.
var (
	webhookKey    = []byte("0123456789abcdef0123456789ABCDEF")
	webhookSecret = "whsec_" + base64.StdEncoding.EncodeToString(webhookKey)
)

// withWebhooks is withDB with alerts on, plus extra.
func withWebhooks(extra map[string]string) map[string]string {
	m := withDB(map[string]string{
		"TALLY_WEBHOOK_URL":    "https://hooks.example.com/tally",
		"TALLY_WEBHOOK_SECRET": webhookSecret,
	})
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// Without TALLY_WEBHOOK_URL alerts are off and nothing else is needed:
// embedded mode and a Postgres deployment start as before.
func TestWebhooksOffByDefault(t *testing.T) {
	for name, m := range map[string]map[string]string{"embedded": nil, "postgres": withDB(nil)} {
		c := mustLoad(t, m)
		if c.Webhooks() || c.WebhookURL != "" || c.WebhookSecret != "" || c.WebhookKey != nil {
			t.Errorf("%s: alerts on by default: %+v", name, c)
		}
		if !reflect.DeepEqual(c.AlertPercents, domain.DefaultAlertPercents) || c.WebhookTimeout != 5*time.Second ||
			c.WebhookRetryHorizon != 24*time.Hour || c.WebhookConcurrency != 8 {
			t.Errorf("%s: defaults %v %v %v %v", name, c.AlertPercents, c.WebhookTimeout, c.WebhookRetryHorizon, c.WebhookConcurrency)
		}
		if r := c.Redacted()["TALLY_WEBHOOK_SECRET"]; r != "" {
			t.Errorf("%s: an unset webhook secret is shown as %q; embedded mode does not generate one", name, r)
		}
	}
}

func TestWebhooksOn(t *testing.T) {
	c := mustLoad(t, withWebhooks(map[string]string{
		"TALLY_ALERT_THRESHOLDS":      " 50, 90 ,100",
		"TALLY_WEBHOOK_TIMEOUT":       "1500ms",
		"TALLY_WEBHOOK_RETRY_HORIZON": "3s",
		"TALLY_WEBHOOK_CONCURRENCY":   "256",
	}))
	if !c.Webhooks() || c.WebhookURL != "https://hooks.example.com/tally" || c.WebhookSecret != webhookSecret ||
		!bytes.Equal(c.WebhookKey, webhookKey) {
		t.Errorf("webhooks: %v %q key %x", c.Webhooks(), c.WebhookURL, c.WebhookKey)
	}
	if !reflect.DeepEqual(c.AlertPercents, []int{50, 90, 100}) || c.WebhookTimeout != 1500*time.Millisecond ||
		c.WebhookRetryHorizon != 3*time.Second || c.WebhookConcurrency != 256 {
		t.Errorf("overrides %v %v %v %v", c.AlertPercents, c.WebhookTimeout, c.WebhookRetryHorizon, c.WebhookConcurrency)
	}
	// Embedded mode may have alerts too.
	e := withWebhooks(nil)
	delete(e, "TALLY_DATABASE_URL")
	if c := mustLoad(t, e); !c.Webhooks() || !c.Embedded() {
		t.Errorf("embedded with a webhook URL: webhooks %v embedded %v", c.Webhooks(), c.Embedded())
	}
	// The bounds are inclusive; a key is 24 to 64 bytes, padded or not.
	for _, m := range []map[string]string{
		{"TALLY_WEBHOOK_TIMEOUT": "1s", "TALLY_WEBHOOK_RETRY_HORIZON": "1s", "TALLY_WEBHOOK_CONCURRENCY": "1", "TALLY_ALERT_THRESHOLDS": "1"},
		{"TALLY_WEBHOOK_TIMEOUT": "1m", "TALLY_WEBHOOK_RETRY_HORIZON": "720h", "TALLY_ALERT_THRESHOLDS": "100"},
		{"TALLY_WEBHOOK_SECRET": "whsec_" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 24))},
		{"TALLY_WEBHOOK_SECRET": "whsec_" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 64))},
		{"TALLY_WEBHOOK_SECRET": "whsec_" + base64.RawStdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 25))},
	} {
		mustLoad(t, withWebhooks(m))
	}
	// http:// to a loopback receiver (a test, a sidecar) is accepted.
	for _, u := range []string{"http://127.0.0.1:9000/hook", "http://localhost/hook", "http://[::1]:9000/hook"} {
		if c := mustLoad(t, withWebhooks(map[string]string{"TALLY_WEBHOOK_URL": u})); c.WebhookURL != u {
			t.Errorf("%s loads as %q", u, c.WebhookURL)
		}
	}
}

// Each bad value is one error naming its variable, with an example of a
// good one; a secret is never echoed.
func TestWebhooksInvalid(t *testing.T) {
	short := "whsec_" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 23))
	long := "whsec_" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 65))
	bare := base64.StdEncoding.EncodeToString(webhookKey)
	howTo := `e.g. echo "whsec_$(openssl rand -base64 32)"`
	tests := []struct {
		name, value string
		want        string
	}{
		{"TALLY_WEBHOOK_URL", "http://hooks.example.com/tally", "want https://: alerts sent over plain http could be read"},
		{"TALLY_WEBHOOK_URL", "http://10.0.0.5/tally", "want https://"},
		{"TALLY_WEBHOOK_URL", "hooks.example.com/tally", "want an absolute https:// URL"},
		{"TALLY_WEBHOOK_URL", "ftp://hooks.example.com/tally", "want an absolute https:// URL"},
		{"TALLY_WEBHOOK_URL", "https:///tally", "such as https://hooks.example.com/tally"},
		{"TALLY_WEBHOOK_URL", "https://hooks.example.com/t#frag", "without fragment"},
		{"TALLY_WEBHOOK_SECRET", bare, "want whsec_ followed by the base64 of 24 to 64 random bytes (Standard Webhooks), " + howTo},
		{"TALLY_WEBHOOK_SECRET", "whsec_not base64!", "is not standard base64"},
		{"TALLY_WEBHOOK_SECRET", short, "is 23 bytes; want 24 to 64, " + howTo},
		{"TALLY_WEBHOOK_SECRET", long, "is 65 bytes; want 24 to 64"},
		{"TALLY_WEBHOOK_SECRET", "whsec_" + base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 30)), "is not standard base64"},
		{"TALLY_ALERT_THRESHOLDS", "80,", `(bad: "")`},
		{"TALLY_ALERT_THRESHOLDS", "eighty", "want comma-separated whole percentages such as 80,100"},
		{"TALLY_ALERT_THRESHOLDS", "80.5,100", "whole percentages"},
		{"TALLY_ALERT_THRESHOLDS", "0,100", "threshold 0 is not a percentage from 1 to 100; want e.g. 80,100"},
		{"TALLY_ALERT_THRESHOLDS", "80,120", "threshold 120 is not a percentage from 1 to 100"},
		{"TALLY_ALERT_THRESHOLDS", "100,80", "strictly ascending: 80 follows 100"},
		{"TALLY_ALERT_THRESHOLDS", "80,80", "strictly ascending"},
		{"TALLY_WEBHOOK_TIMEOUT", "5", "want a Go duration from 1s to 1m, such as 5s"},
		{"TALLY_WEBHOOK_TIMEOUT", "999ms", "from 1s to 1m"},
		{"TALLY_WEBHOOK_TIMEOUT", "61s", "from 1s to 1m"},
		{"TALLY_WEBHOOK_RETRY_HORIZON", "0s", "want a Go duration from 1s to 720h (30 days)"},
		{"TALLY_WEBHOOK_RETRY_HORIZON", "721h", "from 1s to 720h"},
		{"TALLY_WEBHOOK_RETRY_HORIZON", "1d", "such as 24h"},
		{"TALLY_WEBHOOK_CONCURRENCY", "0", "want an integer from 1 to 256, such as 8"},
		{"TALLY_WEBHOOK_CONCURRENCY", "257", "from 1 to 256"},
		{"TALLY_WEBHOOK_CONCURRENCY", "many", "from 1 to 256"},
	}
	for _, tt := range tests {
		t.Run(tt.name+"="+tt.value, func(t *testing.T) {
			_, err := Load(env(withWebhooks(map[string]string{tt.name: tt.value})))
			assertOneError(t, err, tt.name, tt.want)
			if tt.name == "TALLY_WEBHOOK_SECRET" && strings.Contains(err.Error(), strings.TrimPrefix(tt.value, "whsec_")) {
				t.Errorf("error %q echoes the secret", err)
			}
		})
	}
}

func TestWebhookSecretRules(t *testing.T) {
	// A URL needs its secret, in embedded mode too.
	for _, embedded := range []bool{false, true} {
		m := withWebhooks(nil)
		delete(m, "TALLY_WEBHOOK_SECRET")
		if embedded {
			delete(m, "TALLY_DATABASE_URL")
		}
		_, err := Load(env(m))
		assertOneError(t, err, "TALLY_WEBHOOK_SECRET", `is required when TALLY_WEBHOOK_URL is set: want whsec_ followed by the base64 of 24 to 64 random bytes, e.g. echo "whsec_$(openssl rand -base64 32)"`)
	}
	// A secret without a URL is a mistake, not a silent no-op.
	m := withWebhooks(nil)
	delete(m, "TALLY_WEBHOOK_URL")
	_, err := Load(env(m))
	assertOneError(t, err, "TALLY_WEBHOOK_SECRET", "is set but TALLY_WEBHOOK_URL is not")

	// A bad URL is reported once, not again as a secret without a URL.
	_, err = Load(env(withWebhooks(map[string]string{"TALLY_WEBHOOK_URL": "http://hooks.example.com/"})))
	assertOneError(t, err, "TALLY_WEBHOOK_URL", "want https://")

	// The webhook secret is none of the others, whole or its base64 part:
	// the receiver holds it.
	enc := strings.TrimPrefix(webhookSecret, "whsec_") // 44 bytes: long enough for any secret
	for name, extra := range map[string]map[string]string{
		"JWT secret":           {"TALLY_JWT_SECRET": webhookSecret},
		"JWT secret, base64":   {"TALLY_JWT_SECRET": enc},
		"admin token":          {"TALLY_ADMIN_TOKEN": enc},
		"named admin token":    {"TALLY_ADMIN_TOKENS": "ops:" + enc},
		"upload secret":        {"TALLY_UPLOAD_SECRET": webhookSecret},
		"cluster secret (one)": {"TALLY_CLUSTER_SECRET": enc, "TALLY_ETCD_ENDPOINTS": "http://127.0.0.1:2379", "TALLY_NODE_ID": "n1", "TALLY_ADVERTISE_URL": "http://10.0.0.5:8080"},
	} {
		_, err := Load(env(withWebhooks(extra)))
		if err == nil || !strings.Contains(err.Error(), "TALLY_WEBHOOK_SECRET must differ from every other secret") {
			t.Errorf("%s: %v; want the webhook secret refused", name, err)
			continue
		}
		if strings.Contains(err.Error(), enc) {
			t.Errorf("%s: error %q shows the secret", name, err)
		}
	}
}

// The secret and its key are never printed or logged.
func TestWebhookSecretRedacted(t *testing.T) {
	c := mustLoad(t, withWebhooks(map[string]string{"TALLY_WEBHOOK_URL": "https://u:hunter2@hooks.example.com/tally"}))
	r := c.Redacted()
	if r["TALLY_WEBHOOK_SECRET"] != "[redacted]" {
		t.Errorf("secret shown as %q", r["TALLY_WEBHOOK_SECRET"])
	}
	if r["TALLY_WEBHOOK_URL"] != "https://u:xxxxx@hooks.example.com/tally" {
		t.Errorf("URL shown as %q", r["TALLY_WEBHOOK_URL"])
	}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "config", c)
	enc := strings.TrimPrefix(webhookSecret, "whsec_")
	for _, out := range []string{c.String(), fmt.Sprintf("%v %+v %#v", c, c, c), logged.String()} {
		if strings.Contains(out, enc) || strings.Contains(out, string(webhookKey)) || strings.Contains(out, "hunter2") {
			t.Errorf("a secret is printed: %s", out)
		}
	}
}
