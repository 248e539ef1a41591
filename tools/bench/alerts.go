package bench

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The alerts phase measures what usage alerts (docs/alerts.md) cost the
// admissions that cause them: the same load on three single-node Tally
// children, each on a fresh database and Redis prefix of its own,
//
//   - alerts off (no TALLY_WEBHOOK_URL: nothing recorded, nothing sent);
//   - alerts on, delivered to a receiver in this process on 127.0.0.1
//     that answers 204 and counts what it is sent;
//   - alerts on, the receiver down (TALLY_WEBHOOK_URL names a closed
//     127.0.0.1 port: every attempt is refused and retried with backoff),
//
// in rounds, the sides' order rotating, compared by the medians of their
// durable admitted creates/s (targets: on/off ≥ 0.9×, down/off ≥ 0.9× —
// "the receiver down leaves admissions unaffected, within noise").
//
// The load is one where alerts are written: each round and side a fresh
// set of users on free (10 sessions a period), each sent exactly
// freeLimit + alertsOverLimit creates round robin by 64 workers, so that
// every user crosses 80 % and 100 % (two usage.threshold_crossed rows in
// admission transactions) and is then refused (one usage.limit_reached,
// recorded by its actor). The run is bounded by that request count, not a
// duration, so the sides do the same work and the figure is the work over
// the time it took.
//
// Every side's child is started for its round and stopped after it, so
// that nothing it does in the background (the down side's retries, the
// receiver's backlog of deliveries) runs during another side's round; the
// receiver's side is stopped only once its deliveries have drained (or
// stopped coming), and the time that took is recorded.

// alertsPhaseName is the phase's name (--only alerts, --skip-alerts).
const alertsPhaseName = "alerts"

// The alerts phase's shape and targets.
const (
	alertsOnTarget   = 0.9 // alerts on (receiver up) vs off
	alertsDownTarget = 0.9 // alerts on, receiver down vs off
	// alertsOverLimit is how many creates past the limit each user is
	// sent: the first records usage.limit_reached, the second is refused
	// from memory.
	alertsOverLimit = 2
	// alertsPerUser is what each user should cause with the default
	// thresholds (80,100): two threshold crossings and a limit reached.
	alertsPerUser = 3
	// alertsGuessRate is a cautious guess of the admitted creates/s of
	// free users on a busy 2-core machine, to size a round to about
	// --duration; alertsMinUsers and alertsMaxUsers bound the size.
	alertsGuessRate = 6000
	alertsMinUsers  = 1000
	alertsMaxUsers  = 20000
	// alertsQuiet ends the wait for the receiver's deliveries when none
	// came for that long; alertsDrainMax bounds the wait.
	alertsQuiet    = 5 * time.Second
	alertsDrainMax = 60 * time.Second
)

// The sides of the alerts phase.
const (
	sideAlertsOff  = "alerts-off"
	sideAlertsOn   = "alerts-on"
	sideAlertsDown = "receiver-down"
)

// AlertsRun is one side of one round of the alerts phase.
type AlertsRun struct {
	Round int    `json:"round"`
	Side  string `json:"side"`
	Users int    `json:"users"`
	// The load: every request of it measured (no warm-up).
	Requests     int64   `json:"requests"`
	Admitted     int64   `json:"admitted"`
	Rejected     int64   `json:"rejected"`
	WindowS      float64 `json:"window_s"`
	AdmittedPerS float64 `json:"admitted_per_s"`
	RequestsPerS float64 `json:"requests_per_s"`
	P99Ms        float64 `json:"p99_admitted_ms"`
	// ExpectedAlerts is alertsPerUser × Users (alerts on); Delivered the
	// receiver's count of deliveries with a valid signature by the end of
	// the load, DeliveredAll by the end of the wait after it, DrainS that
	// wait; BadSignatures and Duplicates should be 0 (a duplicate webhook-id
	// is allowed by at-least-once delivery, but not expected here).
	ExpectedAlerts int64   `json:"expected_alerts,omitempty"`
	Delivered      int64   `json:"delivered_in_load,omitempty"`
	DeliveredAll   int64   `json:"delivered,omitempty"`
	DrainS         float64 `json:"drain_s,omitempty"`
	BadSignatures  int64   `json:"bad_signatures,omitempty"`
	Duplicates     int64   `json:"duplicates,omitempty"`
	// Pending is tally_webhook_outbox_pending of the child after the load
	// (and the receiver's drain): a gauge the dispatcher refreshes every
	// 5 s, so it may lag (-1: not read).
	Pending float64 `json:"outbox_pending"`
}

// alertsUsers sizes a round: enough users that at alertsGuessRate the
// admissions take about d, within bounds.
func alertsUsers(d time.Duration) int {
	n := int(math.Round(d.Seconds() * alertsGuessRate / freeLimit))
	return min(max(n, alertsMinUsers), alertsMaxUsers)
}

// newWebhookSecret is a fresh TALLY_WEBHOOK_SECRET and its key.
func newWebhookSecret() (string, []byte) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		panic(err)
	}
	return "whsec_" + base64.StdEncoding.EncodeToString(key), key
}

// validSignature checks a Standard Webhooks signature header (one or more
// space-separated "v1,<base64>") against the HMAC-SHA256 of
// id.timestamp.body.
func validSignature(key []byte, id, ts string, body []byte, header string) bool {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(id + "." + ts + "."))
	h.Write(body)
	want := h.Sum(nil)
	for _, s := range strings.Fields(header) {
		v, sig, ok := strings.Cut(s, ",")
		if !ok || v != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(sig)
		if err == nil && hmac.Equal(got, want) {
			return true
		}
	}
	return false
}

// alertReceiver is the webhook receiver of the alerts-on side: it answers
// every POST 204 and counts the deliveries, by event (type, and the
// threshold of a crossing), checking each one's signature.
type alertReceiver struct {
	key        []byte
	delivered  atomic.Int64
	badSig     atomic.Int64
	duplicates atomic.Int64

	mu     sync.Mutex
	seen   map[string]bool
	byKind map[string]int64
}

func newAlertReceiver(key []byte) *alertReceiver {
	return &alertReceiver{key: key, seen: map[string]bool{}, byKind: map[string]int64{}}
}

func (a *alertReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	if err != nil || req.Method != http.MethodPost {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	// Answered 204 either way: a signature this receiver cannot check is
	// counted, and a 4xx would dead-letter the delivery and change the
	// load on the dispatcher.
	w.WriteHeader(http.StatusNoContent)
	id := req.Header.Get("webhook-id")
	if !validSignature(a.key, id, req.Header.Get("webhook-timestamp"), body, req.Header.Get("webhook-signature")) {
		a.badSig.Add(1)
		return
	}
	var ev struct {
		Type string `json:"type"`
		Data struct {
			Threshold int `json:"threshold_percent"`
		} `json:"data"`
	}
	kind := "unreadable"
	if json.Unmarshal(body, &ev) == nil {
		kind = ev.Type
		if ev.Data.Threshold > 0 {
			kind += "@" + strconv.Itoa(ev.Data.Threshold)
		}
	}
	a.mu.Lock()
	dup := a.seen[id]
	a.seen[id] = true
	a.byKind[kind]++
	a.mu.Unlock()
	if dup {
		a.duplicates.Add(1)
	}
	a.delivered.Add(1)
}

// kinds is the count by event so far, as "type@threshold n, …".
func (a *alertReceiver) kinds() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return formatKinds(a.byKind)
}

func formatKinds(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// waitDrained waits until count() reaches want, or has not moved for
// quiet, or max has passed, polling every tick; it reports whether want
// was reached.
func waitDrained(ctx context.Context, count func() int64, want int64, tick, quiet, max time.Duration) bool {
	deadline := time.Now().Add(max)
	last, lastMoved := count(), time.Now()
	for last < want {
		if time.Now().After(deadline) || time.Since(lastMoved) >= quiet {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(tick):
		}
		if n := count(); n != last {
			last, lastMoved = n, time.Now()
		}
	}
	return true
}

// closedPort is a loopback address nothing listens on: one that was free
// a moment ago.
func closedPort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr, nil
}

// alertsSide is one side of the phase: its database and prefix, and the
// webhook URL of its children ("": alerts off).
type alertsSide struct {
	name, db, prefix, url string
}

func (r *runner) phaseAlerts(ctx context.Context, p *Phase) error {
	secret, key := newWebhookSecret()
	recv := newAlertReceiver(key)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: recv, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	down, err := closedPort()
	if err != nil {
		return err
	}
	var sides []alertsSide
	for _, s := range []struct{ name, suffix, url string }{
		{sideAlertsOff, "alerts_off", ""},
		{sideAlertsOn, "alerts_on", "http://" + ln.Addr().String() + "/tally"},
		{sideAlertsDown, "alerts_down", "http://" + down + "/tally"},
	} {
		db, drop, err := r.phaseDB(ctx, s.suffix)
		if err != nil {
			return err
		}
		defer drop()
		sides = append(sides, alertsSide{name: s.name, db: db, prefix: r.st.redisPrefix + s.suffix + ":", url: s.url})
	}
	users := alertsUsers(r.opts.Duration)
	r.logf("alerts: receiver on %s (answers 204), receiver-down side sends to %s (closed); %d fresh free users per round and side, %d creates each",
		ln.Addr(), down, users, freeLimit+alertsOverLimit)
	tag := randomHex(3)
	for round := 1; round <= r.opts.Rounds; round++ {
		for _, s := range rotated(sides, round) {
			r.settle(ctx, p.Name)
			x, err := r.alertsRound(ctx, p, s, secret, recv, users, fmt.Sprintf("bench-al-%s-%s-r%d", tag, s.name, round), round)
			if err != nil {
				return err
			}
			r.alertRuns = append(r.alertRuns, x)
		}
	}
	return nil
}

// alertsRound starts the side's child, runs the round's load on it, waits
// for the receiver's deliveries (alerts-on), and stops the child.
func (r *runner) alertsRound(ctx context.Context, p *Phase, s alertsSide, secret string, recv *alertReceiver, users int, prefix string, round int) (AlertsRun, error) {
	x := AlertsRun{Round: round, Side: s.name, Users: users, Pending: -1}
	env := r.tallyEnvOn(s.db, s.prefix, mainIdle, childGOGC)
	if s.url != "" {
		env = append(env, "TALLY_WEBHOOK_URL="+s.url, "TALLY_WEBHOOK_SECRET="+secret)
	}
	logPath := filepath.Join(r.outDir, fmt.Sprintf("%s-alerts-%s-r%d.log", r.stem, s.name, round))
	p.LogFiles = append(p.LogFiles, logPath)
	c, err := startChild(ctx, r.exe, cmdServeTally, env, logPath)
	if err != nil {
		return x, fmt.Errorf("%s: %w", s.name, err)
	}
	defer func() {
		if e := c.stop(); e != nil {
			r.note("alerts: the %s child did not stop cleanly: %v", s.name, e)
		}
	}()
	before := recv.delivered.Load()
	cfg := r.loadConfig(c.url())
	cfg.Users, cfg.Plan, cfg.UserPrefix = users, "free", prefix
	cfg.Duration, cfg.Warmup, cfg.Requests = 0, 0, int64(users*(freeLimit+alertsOverLimit))
	label := fmt.Sprintf("alerts, %s, round %d", s.name, round)
	res, err := r.runLoad(ctx, p, label, cfg)
	if err != nil {
		return x, err
	}
	if !c.alive() {
		return x, fmt.Errorf("%s: the Tally child exited (%v); its log (%s) ends:\n%s", label, c.waitErr, logPath, fileTail(logPath, 15))
	}
	x.Requests, x.Admitted, x.Rejected = res.Requests, res.Admitted, res.Rejected
	x.WindowS, x.AdmittedPerS, x.RequestsPerS, x.P99Ms = res.DurationS, res.AdmittedPerS, res.RequestsPerS, res.LatencyAdmitted.P99Ms
	if want := int64(users * freeLimit); res.Admitted != want {
		r.note("%s: %d admitted, want %d (%d per user)", label, res.Admitted, want, freeLimit)
	}
	if s.url != "" {
		x.ExpectedAlerts = int64(users * alertsPerUser)
	}
	if s.name == sideAlertsOn {
		x.Delivered = recv.delivered.Load() - before
		start := time.Now()
		count := func() int64 { return recv.delivered.Load() - before }
		if !waitDrained(ctx, count, x.ExpectedAlerts, 200*time.Millisecond, alertsQuiet, alertsDrainMax) {
			r.note("%s: the receiver got %d of the %d alerts expected (%s)", label, count(), x.ExpectedAlerts, recv.kinds())
		}
		x.DrainS = time.Since(start).Seconds()
		x.DeliveredAll = count()
		x.BadSignatures, x.Duplicates = recv.badSig.Load(), recv.duplicates.Load()
	}
	if body, err := metricsOf(ctx, c); err == nil {
		if v, ok := parseMetric(body, "tally_webhook_outbox_pending"); ok {
			x.Pending = v
		}
	}
	r.logf("%s: %.0f admitted/s (%.0f answers/s, %d refused), p99 %.2f ms%s", label, x.AdmittedPerS, x.RequestsPerS, x.Rejected, x.P99Ms, alertsTail(x))
	return x, nil
}

// alertsTail is what a round's log line says of its alerts.
func alertsTail(x AlertsRun) string {
	switch {
	case x.Side == sideAlertsOn:
		return fmt.Sprintf("; %d of %d alerts delivered during the load, %d within %.1f s after it", x.Delivered, x.ExpectedAlerts, x.DeliveredAll, x.DrainS)
	case x.Pending >= 0 && x.ExpectedAlerts > 0:
		return fmt.Sprintf("; outbox pending %.0f", x.Pending)
	}
	return ""
}

// ---- the table ----

// alertsFigure is one side's rounds of the phase.
func (r *runner) alertsFigure(side string, f func(AlertsRun) float64) []float64 {
	var out []float64
	for _, x := range r.alertRuns {
		if x.Side == side {
			out = append(out, f(x))
		}
	}
	return out
}

// alertsRows are the alerts phase's rows of the table.
func (r *runner) alertsRows(compared func(Row, []float64, []float64) Row) []Row {
	adm := func(x AlertsRun) float64 { return x.AdmittedPerS }
	req := func(x AlertsRun) float64 { return x.RequestsPerS }
	off := r.alertsFigure(sideAlertsOff, adm)
	users := alertsUsers(r.opts.Duration)
	if len(r.alertRuns) > 0 {
		users = r.alertRuns[0].Users
	}
	rows := []Row{
		compared(Row{Key: "alerts_on", Figure: fmt.Sprintf("durable admitted creates/s, %s free users pushed past the limit, alerts on (receiver answers 204)", groupDigits(float64(users))),
			Unit: "/s", BaselineName: "alerts off", Target: atLeastRatio(alertsOnTarget)},
			r.alertsFigure(sideAlertsOn, adm), off),
		compared(Row{Key: "alerts_down", Figure: "  … alerts on, the receiver down (connection refused)", Unit: "/s",
			BaselineName: "alerts off", Target: atLeastRatio(alertsDownTarget)},
			r.alertsFigure(sideAlertsDown, adm), off),
		compared(Row{Key: "alerts_on_requests", Figure: "  … all answers/s (admitted and refused), alerts on", Unit: "/s",
			BaselineName: "alerts off"},
			r.alertsFigure(sideAlertsOn, req), r.alertsFigure(sideAlertsOff, req)),
	}
	del := Row{Key: "alerts_delivered", Figure: "  … alerts delivered to the receiver per round", Unit: ""}
	if xs := r.alertsFigure(sideAlertsOn, func(x AlertsRun) float64 { return float64(x.DeliveredAll) }); len(xs) > 0 {
		del.Tally = medianPtr(xs)
		var parts []string
		for _, x := range r.alertRuns {
			if x.Side == sideAlertsOn {
				parts = append(parts, fmt.Sprintf("round %d: %d of %d expected, %d during the load, the rest within %.1f s", x.Round, x.DeliveredAll, x.ExpectedAlerts, x.Delivered, x.DrainS))
			}
		}
		del.Note = strings.Join(parts, "; ")
	}
	return append(rows, del)
}

// alertsCells is the phase's rounds as a table.
func alertsCells(runs []AlertsRun) ([]string, [][]string) {
	head := []string{"round", "side", "users", "admitted/s", "answers/s", "refused", "p99 admitted", "window", "alerts delivered (during load / all / expected)", "outbox pending (gauge, ≤ 5 s old)"}
	var rows [][]string
	for _, x := range runs {
		del, pend := "—", "—"
		if x.Side == sideAlertsOn {
			del = fmt.Sprintf("%d / %d / %d", x.Delivered, x.DeliveredAll, x.ExpectedAlerts)
		}
		if x.Pending >= 0 {
			pend = fmt.Sprintf("%.0f", x.Pending)
		}
		rows = append(rows, []string{strconv.Itoa(x.Round), x.Side, strconv.Itoa(x.Users), fmtValue(&x.AdmittedPerS, "/s"), fmtValue(&x.RequestsPerS, "/s"),
			strconv.FormatInt(x.Rejected, 10), fmtValue(&x.P99Ms, "ms"), fmt.Sprintf("%.2f s", x.WindowS), del, pend})
	}
	return head, rows
}
