package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tally-dev/tally/domain"
)

// Usage alerts delivered as signed webhooks (docs/alerts.md): on when
// TALLY_WEBHOOK_URL is set. The other webhook variables have defaults, so
// that setting the URL and its secret is enough; without the URL no alert
// is recorded and nothing is delivered, and embedded mode (make run) starts
// as before.

// Webhook secrets follow Standard Webhooks: "whsec_" and the base64 of the
// HMAC-SHA256 key, which the specification wants 24 to 64 bytes long.
const (
	webhookSecretPrefix = "whsec_"
	minWebhookKey       = 24
	maxWebhookKey       = 64
)

// The bounds of the webhook durations and concurrency. A timeout under a
// second fails receivers that are merely slow; over a minute one stalled
// receiver holds a worker that long per attempt. A retry horizon of
// seconds is for tests; past 30 days an alert is too stale to act on.
const (
	minWebhookTimeout      = time.Second
	maxWebhookTimeout      = time.Minute
	minWebhookRetryHorizon = time.Second
	maxWebhookRetryHorizon = 30 * 24 * time.Hour
	maxWebhookConcurrency  = 256
)

// webhookSecretHowTo ends every refusal of a webhook secret: how to make a
// good one.
const webhookSecretHowTo = `e.g. echo "whsec_$(openssl rand -base64 32)"`

// Webhooks reports whether usage alerts are on: TALLY_WEBHOOK_URL is set.
// Only then are alerts recorded and delivered.
func (c Config) Webhooks() bool { return c.WebhookURL != "" }

// webhookVars are the variables of usage alerts, at the end of vars.
var webhookVars = []Var{
	{
		Name:    "TALLY_WEBHOOK_URL",
		Meaning: "where usage alerts are delivered as signed webhooks (https://, or http:// to a loopback host); unset: alerts off (none is recorded, nothing is delivered)",
		show:    redactURL,
		parse:   parseWebhookURL,
		get:     func(c Config) string { return c.WebhookURL },
	},
	{
		Name: "TALLY_WEBHOOK_SECRET", Secret: true, optional: true,
		Meaning: fmt.Sprintf("key the webhooks are signed with (Standard Webhooks): whsec_ and the base64 of %d to %d random bytes (%s), unlike every other secret; required with TALLY_WEBHOOK_URL", minWebhookKey, maxWebhookKey, webhookSecretHowTo),
		parse:   parseWebhookSecret,
		get:     func(c Config) string { return c.WebhookSecret },
	},
	{
		Name: "TALLY_ALERT_THRESHOLDS", Default: joinInts(domain.DefaultAlertPercents),
		Meaning: "percentages of a plan's limits at which a usage.threshold_crossed alert is sent, comma-separated, strictly ascending, each 1 to 100",
		parse:   parseAlertThresholds,
		get:     func(c Config) string { return joinInts(c.AlertPercents) },
	},
	{
		Name: "TALLY_WEBHOOK_TIMEOUT", Default: "5s",
		Meaning: "how long one delivery attempt may take, connection to answer; Go duration from 1s to 1m",
		parse:   durationBetween(minWebhookTimeout, maxWebhookTimeout, "from 1s to 1m, such as 5s", func(c *Config) *time.Duration { return &c.WebhookTimeout }),
		get:     func(c Config) string { return c.WebhookTimeout.String() },
	},
	{
		Name: "TALLY_WEBHOOK_RETRY_HORIZON", Default: "24h",
		Meaning: "how long a delivery is retried (with backoff) after its alert before it is dead-lettered as failed; Go duration from 1s to 720h (30 days)",
		parse:   durationBetween(minWebhookRetryHorizon, maxWebhookRetryHorizon, "from 1s to 720h (30 days), such as 24h or 90s", func(c *Config) *time.Duration { return &c.WebhookRetryHorizon }),
		get:     func(c Config) string { return c.WebhookRetryHorizon.String() },
	},
	{
		Name: "TALLY_WEBHOOK_MAX_BACKOFF", Default: "10m",
		Meaning: "the longest wait between two attempts of one delivery (the wait starts at 1s and doubles, with jitter; a Retry-After answer is honoured up to it); Go duration from 1s to 1h",
		parse:   durationBetween(time.Second, time.Hour, "from 1s to 1h, such as 10m", func(c *Config) *time.Duration { return &c.WebhookMaxBackoff }),
		get:     func(c Config) string { return c.WebhookMaxBackoff.String() },
	},
	{
		Name: "TALLY_WEBHOOK_CONCURRENCY", Default: "8",
		Meaning: "deliveries attempted at once by one process; integer from 1 to 256",
		parse: func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxWebhookConcurrency {
				return fmt.Errorf("want an integer from 1 to %d, such as 8", maxWebhookConcurrency)
			}
			c.WebhookConcurrency = n
			return nil
		},
		get: func(c Config) string { return strconv.Itoa(c.WebhookConcurrency) },
	},
}

// parseWebhookURL accepts an absolute https URL, or http to a loopback
// host (a receiver on the same machine, or a test): an alert names a user
// and their usage, which plain http would show to anyone on the way.
func parseWebhookURL(c *Config, v string) error {
	if v == "" {
		return nil
	}
	u, err := url.Parse(v)
	if err != nil || u.Host == "" || u.Opaque != "" || u.Fragment != "" || (u.Scheme != "https" && u.Scheme != "http") {
		return errors.New("want an absolute https:// URL without fragment, such as https://hooks.example.com/tally")
	}
	if u.Scheme == "http" && !loopback(net.JoinHostPort(u.Hostname(), "0")) {
		return errors.New("want https://: alerts sent over plain http could be read on the way (http:// is accepted for 127.0.0.1, [::1] and localhost only)")
	}
	c.WebhookURL = v
	return nil
}

// parseWebhookSecret accepts whsec_ and the standard base64 (padded or
// not) of 24 to 64 bytes, and keeps the decoded key. Its errors never
// quote the value: invalid prints no secret.
func parseWebhookSecret(c *Config, v string) error {
	if v == "" {
		return nil
	}
	enc, ok := strings.CutPrefix(v, webhookSecretPrefix)
	if !ok {
		return fmt.Errorf("want whsec_ followed by the base64 of %d to %d random bytes (Standard Webhooks), %s", minWebhookKey, maxWebhookKey, webhookSecretHowTo)
	}
	key, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		// openssl pads; a secret copied from elsewhere may not be.
		key, err = base64.RawStdEncoding.DecodeString(enc)
	}
	if err != nil {
		return fmt.Errorf("the part after whsec_ is not standard base64 (A-Z a-z 0-9 + /), %s", webhookSecretHowTo)
	}
	if len(key) < minWebhookKey || len(key) > maxWebhookKey {
		return fmt.Errorf("the key after whsec_ is %d bytes; want %d to %d, %s", len(key), minWebhookKey, maxWebhookKey, webhookSecretHowTo)
	}
	c.WebhookSecret, c.WebhookKey = v, key
	return nil
}

func parseAlertThresholds(c *Config, v string) error {
	var ps []int
	for _, s := range splitList(v) {
		p, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("want comma-separated whole percentages such as 80,100 (bad: %q)", s)
		}
		ps = append(ps, p)
	}
	if err := domain.ValidateAlertPercents(ps); err != nil {
		return fmt.Errorf("%w; want e.g. 80,100", err)
	}
	c.AlertPercents = ps
	return nil
}

// durationBetween parses a Go duration from least to most inclusive;
// bounds says so in words (time.Duration prints 1m as 1m0s).
func durationBetween(least, most time.Duration, bounds string, field func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d < least || d > most {
			return errors.New("want a Go duration " + bounds)
		}
		*field(c) = d
		return nil
	}
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

// crossCheckWebhooks refuses a URL without its secret, a secret without
// its URL, and a secret that is another one's.
func (c *Config) crossCheckWebhooks(bad map[string]bool, add func(name, problem string)) {
	if bad["TALLY_WEBHOOK_URL"] || bad["TALLY_WEBHOOK_SECRET"] {
		return // whether alerts are on, or with which key, is unknown: one message is enough
	}
	switch {
	case c.WebhookURL != "" && c.WebhookSecret == "":
		add("TALLY_WEBHOOK_SECRET", fmt.Sprintf("is required when TALLY_WEBHOOK_URL is set: want whsec_ followed by the base64 of %d to %d random bytes, %s", minWebhookKey, maxWebhookKey, webhookSecretHowTo))
	case c.WebhookURL == "" && c.WebhookSecret != "":
		add("TALLY_WEBHOOK_SECRET", "is set but TALLY_WEBHOOK_URL is not: alerts are off without a URL; set both, or neither")
	case c.WebhookSecret != "" && c.webhookSecretClashes():
		add("TALLY_WEBHOOK_SECRET", "must differ from every other secret (TALLY_JWT_SECRET, TALLY_ADMIN_TOKEN, TALLY_ADMIN_TOKENS, TALLY_UPLOAD_SECRET, TALLY_CLUSTER_SECRET): the receiver holds it, and must not be able to mint tokens or open the admin API; "+webhookSecretHowTo)
	}
}

// webhookSecretClashes reports whether another secret is the webhook
// secret, whole or its base64 part alone: the same `openssl rand -base64`
// output pasted into two variables is the likely mistake.
func (c *Config) webhookSecretClashes() bool {
	enc := strings.TrimPrefix(c.WebhookSecret, webhookSecretPrefix)
	others := []string{c.JWTSecret, c.UploadSecret, c.ClusterSecret}
	for _, t := range c.AdminCredentials() {
		others = append(others, t.Token)
	}
	return slices.ContainsFunc(others, func(s string) bool {
		return s != "" && (s == c.WebhookSecret || s == enc)
	})
}
