package bench

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tally-dev/tally/config"
)

func TestAlertsUsers(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want int
	}{
		{5 * time.Second, 5 * alertsGuessRate / freeLimit},
		{15 * time.Second, 15 * alertsGuessRate / freeLimit},
		{time.Second, alertsMinUsers},
		{time.Hour, alertsMaxUsers},
	} {
		if got := alertsUsers(c.d); got != c.want {
			t.Errorf("alertsUsers(%s) = %d, want %d", c.d, got, c.want)
		}
	}
}

// The secret the phase makes is one Tally's configuration accepts.
func TestNewWebhookSecret(t *testing.T) {
	secret, key := newWebhookSecret()
	env := map[string]string{
		"TALLY_WEBHOOK_URL":    "http://127.0.0.1:9/tally",
		"TALLY_WEBHOOK_SECRET": secret,
		"TALLY_JWT_SECRET":     randomSecret(),
		"TALLY_ADMIN_TOKEN":    randomSecret(),
		"TALLY_DATABASE_URL":   "postgres://x@127.0.0.1/x",
		"TALLY_REDIS_URL":      "redis://127.0.0.1:6379/0",
	}
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("config.Load refused the bench's webhook settings: %v", err)
	}
	if !cfg.Webhooks() || string(cfg.WebhookKey) != string(key) {
		t.Errorf("alerts on: %v; key kept: %v", cfg.Webhooks(), string(cfg.WebhookKey) == string(key))
	}
}

// signed is a delivery as Tally's dispatcher signs it.
func signed(t *testing.T, url string, key []byte, id, body string) *http.Request {
	t.Helper()
	ts := strconv.FormatInt(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).Unix(), 10)
	h := hmac.New(sha256.New, key)
	h.Write([]byte(id + "." + ts + "." + body))
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", ts)
	req.Header.Set("webhook-signature", "v1,"+base64.StdEncoding.EncodeToString(h.Sum(nil)))
	return req
}

func TestValidSignature(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	h := hmac.New(sha256.New, key)
	h.Write([]byte("msg_tally_1.1700000000.{}"))
	sig := base64.StdEncoding.EncodeToString(h.Sum(nil))
	for _, c := range []struct {
		header string
		want   bool
	}{
		{"v1," + sig, true},
		{"v1,AAAA v1," + sig, true}, // several signatures (key rotation): any one
		{"v2," + sig, false},
		{sig, false},
		{"v1,AAAA", false},
		{"", false},
	} {
		if got := validSignature(key, "msg_tally_1", "1700000000", []byte("{}"), c.header); got != c.want {
			t.Errorf("%q: %v, want %v", c.header, got, c.want)
		}
	}
	if validSignature(key, "msg_tally_2", "1700000000", []byte("{}"), "v1,"+sig) {
		t.Error("a signature of another id was accepted")
	}
}

func TestAlertReceiver(t *testing.T) {
	_, key := newWebhookSecret()
	recv := newAlertReceiver(key)
	srv := httptest.NewServer(recv)
	defer srv.Close()
	send := func(req *http.Request) {
		t.Helper()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Errorf("answered %d, want 204", resp.StatusCode)
		}
	}
	cross := func(p int) string {
		return `{"type":"usage.threshold_crossed","data":{"user_id":"u","threshold_percent":` + strconv.Itoa(p) + `}}`
	}
	send(signed(t, srv.URL, key, "msg_tally_1", cross(80)))
	send(signed(t, srv.URL, key, "msg_tally_2", cross(100)))
	send(signed(t, srv.URL, key, "msg_tally_3", `{"type":"usage.limit_reached","data":{"user_id":"u"}}`))
	send(signed(t, srv.URL, key, "msg_tally_3", `{"type":"usage.limit_reached","data":{"user_id":"u"}}`)) // a retry
	bad := signed(t, srv.URL, key, "msg_tally_4", cross(80))
	bad.Header.Set("webhook-signature", "v1,AAAA")
	send(bad)
	if got := recv.delivered.Load(); got != 4 {
		t.Errorf("delivered %d, want 4 (the badly signed one not counted)", got)
	}
	if recv.badSig.Load() != 1 || recv.duplicates.Load() != 1 {
		t.Errorf("bad signatures %d, duplicates %d; want 1 and 1", recv.badSig.Load(), recv.duplicates.Load())
	}
	if got, want := recv.kinds(), "usage.limit_reached 2, usage.threshold_crossed@100 1, usage.threshold_crossed@80 1"; got != want {
		t.Errorf("kinds %q, want %q", got, want)
	}
}

// waitDrained ends when the count is reached, when it stops moving, and
// when the context ends; no assertion on how long any of it took.
func TestWaitDrained(t *testing.T) {
	ctx := context.Background()
	var n atomic.Int64
	grow := func() int64 { return n.Add(1) }
	if !waitDrained(ctx, grow, 5, time.Millisecond, time.Minute, time.Minute) {
		t.Error("a count that reaches want was not drained")
	}
	if !waitDrained(ctx, func() int64 { return 7 }, 7, time.Millisecond, time.Minute, time.Minute) {
		t.Error("a count already at want was not drained")
	}
	if waitDrained(ctx, func() int64 { return 3 }, 7, time.Millisecond, 20*time.Millisecond, time.Minute) {
		t.Error("a count that stopped short was drained")
	}
	if waitDrained(ctx, grow, math.MaxInt64, time.Millisecond, time.Minute, 20*time.Millisecond) {
		t.Error("a count that never gets there was drained")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if waitDrained(cctx, func() int64 { return 0 }, 1, time.Millisecond, time.Minute, time.Minute) {
		t.Error("a cancelled wait was drained")
	}
}

func TestAlertsRows(t *testing.T) {
	r := &runner{opts: Options{Rounds: 2, Duration: 5 * time.Second}}
	for round, f := range []struct{ off, on, down float64 }{{10000, 10000, 9900}, {12000, 10500, 8000}} {
		r.alertRuns = append(r.alertRuns,
			AlertsRun{Round: round + 1, Side: sideAlertsOff, Users: 3000, AdmittedPerS: f.off, RequestsPerS: f.off * 1.2, Pending: -1},
			AlertsRun{Round: round + 1, Side: sideAlertsOn, Users: 3000, AdmittedPerS: f.on, RequestsPerS: f.on * 1.2, ExpectedAlerts: 9000, Delivered: 6000, DeliveredAll: 9000 - int64(round), DrainS: 1.5, Pending: 0},
			AlertsRun{Round: round + 1, Side: sideAlertsDown, Users: 3000, AdmittedPerS: f.down, RequestsPerS: f.down * 1.2, ExpectedAlerts: 9000, Pending: 3000},
		)
	}
	rows := map[string]Row{}
	for _, row := range r.rows() {
		rows[row.Key] = row
	}
	on, down := rows["alerts_on"], rows["alerts_down"]
	// Medians: off 11 000, on 10 250, down 8 950.
	if on.Status != StatusMet || math.Abs(*on.Ratio-10250.0/11000) > 1e-9 || !strings.Contains(on.Figure, "3 000 free users") {
		t.Errorf("alerts_on: %+v", on)
	}
	if down.Status != StatusMissed || math.Abs(*down.Ratio-8950.0/11000) > 1e-9 {
		t.Errorf("alerts_down: %+v", down)
	}
	if !strings.Contains(on.Note, "round by round 1.00×, 0.88×") {
		t.Errorf("alerts_on note: %q", on.Note)
	}
	if req := rows["alerts_on_requests"]; req.Status != StatusInfo || math.Abs(*req.Ratio-10250.0/11000) > 1e-9 {
		t.Errorf("alerts_on_requests: %+v", req)
	}
	del := rows["alerts_delivered"]
	if del.Status != StatusInfo || *del.Tally != 8999.5 || !strings.Contains(del.Note, "round 2: 8999 of 9000 expected") {
		t.Errorf("alerts_delivered: %+v", del)
	}
	head, cells := alertsCells(r.alertRuns)
	if len(cells) != 6 || len(cells[0]) != len(head) || cells[1][8] != "6000 / 9000 / 9000" || cells[0][9] != "—" || cells[2][9] != "3000" {
		t.Errorf("round-by-round table: %v / %v", head, cells)
	}

	// Without the phase the rows are there, skipped.
	r = &runner{opts: Options{Rounds: 2, Duration: 5 * time.Second}}
	for _, row := range r.rows() {
		if strings.HasPrefix(row.Key, "alerts_") && row.Status != StatusSkipped {
			t.Errorf("%s without the phase: %s", row.Key, row.Status)
		}
	}
}

func TestAlertsFlags(t *testing.T) {
	o, err := parseFlags([]string{"--skip-alerts"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	r := &runner{opts: o}
	if r.want(alertsPhaseName) || !r.want("many") {
		t.Error("--skip-alerts must skip the alerts phase only")
	}
	o, err = parseFlags([]string{"--only", "alerts", "--quick"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	r = &runner{opts: o}
	if !r.want(alertsPhaseName) || r.want("many") || r.want("cluster-hot") {
		t.Error("--only alerts must run the alerts phase only")
	}
	if r = (&runner{opts: Options{}}); !r.want(alertsPhaseName) {
		t.Error("a default run leaves the alerts phase out")
	}
}
