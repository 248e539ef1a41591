package webhooks

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/tally-dev/tally/domain"
)

func TestPayloadThresholdCrossedMinutes(t *testing.T) {
	paris := time.FixedZone("CET", 3600)
	a := domain.Alert{
		ID: 7, Kind: domain.AlertThresholdCrossed, UserID: "u-1", Plan: "pro", Metric: domain.MetricMinutes,
		Percent: 80, Used: 4830, Limit: 100,
		PeriodStart: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC),
		PeriodEnd:   time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC),
		// Not in UTC, with a fraction: the body is in UTC either way.
		OccurredAt: time.Date(2026, 11, 30, 10, 15, 7, 250_000_000, paris),
		SessionID:  "0193-abc", Restart: domain.RestartPlanChange,
	}
	got, err := Payload(a)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"type":"usage.threshold_crossed","timestamp":"2026-11-30T09:15:07.25Z","data":{` +
		`"user_id":"u-1","plan":"pro","metric":"minutes","threshold_percent":80,"used":80,"limit":100,` +
		`"used_seconds":4830,"period_start":"2026-11-01T00:00:00Z","period_end":"2026-12-01T00:00:00Z",` +
		`"occurred_at":"2026-11-30T09:15:07.25Z","session_id":"0193-abc","restarted_by":"plan_change"}}`
	if string(got) != want {
		t.Fatalf("payload\n got %s\nwant %s", got, want)
	}

	// The same stored row read again, in another zone, gives the same
	// bytes: every attempt of an alert sends one body.
	b := a
	b.OccurredAt = a.OccurredAt.UTC()
	again, err := Payload(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, again) {
		t.Fatalf("payload differs between reads of one alert:\n%s\n%s", got, again)
	}

	var ev Event
	if err := json.Unmarshal(got, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Type != a.Kind || ev.Data.ThresholdPercent == nil || *ev.Data.ThresholdPercent != 80 ||
		ev.Data.UsedSeconds == nil || *ev.Data.UsedSeconds != 4830 || !ev.Timestamp.Equal(a.OccurredAt) {
		t.Fatalf("decoded event: %+v", ev)
	}
}

func TestPayloadLimitReachedSessionsOmitsWhatItHasNot(t *testing.T) {
	a := domain.Alert{
		ID: 8, Kind: domain.AlertLimitReached, UserID: "u-2", Plan: "free", Metric: domain.MetricSessions,
		Used: 10, Limit: 10,
		PeriodStart: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC),
		PeriodEnd:   time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC),
		OccurredAt:  time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC),
	}
	got, err := Payload(a)
	if err != nil {
		t.Fatal(err)
	}
	for _, absent := range []string{"threshold_percent", "used_seconds", "session_id", "restarted_by"} {
		if strings.Contains(string(got), absent) {
			t.Errorf("payload has %s: %s", absent, got)
		}
	}
	var ev Event
	if err := json.Unmarshal(got, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Data.Used != 10 || ev.Data.Limit != 10 || ev.Data.Metric != domain.MetricSessions || ev.Timestamp.Format(time.RFC3339) != "2026-11-30T10:00:00Z" {
		t.Fatalf("decoded event: %+v", ev)
	}
}

func TestPayloadRefusesUnknownKindOrMetric(t *testing.T) {
	base := domain.Alert{ID: 9, Kind: domain.AlertLimitReached, Metric: domain.MetricSessions}
	bad := base
	bad.Kind = "usage.other"
	if _, err := Payload(bad); err == nil || !strings.Contains(err.Error(), "usage.other") {
		t.Errorf("unknown kind: %v", err)
	}
	bad = base
	bad.Metric = "bytes"
	if _, err := Payload(bad); err == nil || !strings.Contains(err.Error(), "bytes") {
		t.Errorf("unknown metric: %v", err)
	}
}

func TestParseSecret(t *testing.T) {
	enc := func(n int) string {
		return SecretPrefix + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xA5}, n))
	}
	for _, n := range []int{24, 32, 64} {
		key, err := ParseSecret(enc(n))
		if err != nil || len(key) != n {
			t.Errorf("%d bytes: key of %d, %v", n, len(key), err)
		}
	}
	raw := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
	for name, c := range map[string]struct{ in, want string }{
		"empty":      {"", "empty"},
		"no prefix":  {raw, "does not start with"},
		"not base64": {SecretPrefix + "not*base64!", "not standard base64"},
		"too short":  {enc(16), "16 bytes"},
		"too long":   {enc(65), "65 bytes"},
	} {
		_, err := ParseSecret(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one saying %q", name, err, c.want)
			continue
		}
		if c.in != "" && strings.Contains(err.Error(), strings.TrimPrefix(c.in, SecretPrefix)) {
			t.Errorf("%s: the error quotes the secret: %v", name, err)
		}
	}
}

// The signature matches the independent implementation's, byte for byte.
func TestSignMatchesStandardWebhooks(t *testing.T) {
	secret := SecretPrefix + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	key, err := ParseSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"type":"usage.limit_reached"}`)
	at := time.Unix(1_790_000_000, 0)
	want, err := wh.Sign("msg_tally_1", at, body)
	if err != nil {
		t.Fatal(err)
	}
	if got := sign(key, "msg_tally_1", at.Unix(), body); got != want {
		t.Fatalf("signature %s, standard-webhooks signs %s", got, want)
	}
}
