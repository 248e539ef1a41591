package app_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// The usage alerts end to end (docs/alerts.md): real Postgres, a real HTTP
// receiver that checks every signature with an implementation of Standard
// Webhooks nobody here wrote, and the service's own dispatcher.

// testWebhookSecret is a whsec_ secret of 32 bytes.
var testWebhookSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("tally-acceptance-webhook-key-32b"))

// receiver is a webhook endpoint. Its answer is status (200 unless set);
// every request it gets is checked and recorded.
type receiver struct {
	t      *testing.T
	wh     *standardwebhooks.Webhook
	status atomic.Int32
	srv    *http.Server
	url    string

	mu       sync.Mutex
	requests int                  // every request, duplicates and refused ones included
	bad      []string             // requests whose signature or body did not verify
	first    map[string]delivered // by webhook-id: its first accepted delivery
	order    []string             // webhook-ids in the order of their first accepted delivery
}

type delivered struct {
	Type string `json:"type"`
	Data struct {
		UserID      string `json:"user_id"`
		Plan        string `json:"plan"`
		Metric      string `json:"metric"`
		Threshold   int    `json:"threshold_percent"`
		Used        int64  `json:"used"`
		Limit       int64  `json:"limit"`
		UsedSeconds *int64 `json:"used_seconds"`
		SessionID   string `json:"session_id"`
		PeriodStart string `json:"period_start"`
		PeriodEnd   string `json:"period_end"`
		OccurredAt  string `json:"occurred_at"`
	} `json:"data"`
	copies int
}

// key is what must be unique per user: one event per type, metric and
// threshold (the tests stay in one period on one plan).
func (d delivered) key() string {
	return fmt.Sprintf("%s %s %d", d.Type, d.Data.Metric, d.Data.Threshold)
}

// newReceiver makes a receiver; start serves it.
func newReceiver(t *testing.T) *receiver {
	wh, err := standardwebhooks.NewWebhook(testWebhookSecret)
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{t: t, wh: wh, first: map[string]delivered{}}
	r.status.Store(http.StatusOK)
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 5 * time.Second}
	return r
}

// start serves on ln.
func (r *receiver) start(ln net.Listener) {
	r.url = "http://" + ln.Addr().String() + "/hooks/tally"
	go func() { _ = r.srv.Serve(ln) }()
	r.t.Cleanup(func() { _ = r.srv.Close() })
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	if err != nil || r.wh.Verify(body, req.Header) != nil {
		r.bad = append(r.bad, fmt.Sprintf("%s: %v", req.Header.Get("webhook-id"), r.wh.Verify(body, req.Header)))
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	status := int(r.status.Load())
	if status != http.StatusOK {
		w.WriteHeader(status)
		return
	}
	id := req.Header.Get("webhook-id")
	if d, seen := r.first[id]; seen {
		d.copies++
		r.first[id] = d
		w.WriteHeader(http.StatusOK)
		return
	}
	var d delivered
	if err := json.Unmarshal(body, &d); err != nil {
		r.bad = append(r.bad, fmt.Sprintf("%s: body %s: %v", id, body, err))
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	d.copies = 1
	r.first[id] = d
	r.order = append(r.order, id)
	w.WriteHeader(http.StatusOK)
}

// distinct is how many webhook-ids were accepted.
func (r *receiver) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.order)
}

// waitFor waits until n distinct alerts were accepted, or fails.
func (r *receiver) waitFor(n int, within time.Duration) time.Duration {
	r.t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		if r.distinct() >= n {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.t.Fatalf("the receiver accepted %d distinct alerts within %s, want %d", r.distinct(), within, n)
	return 0
}

// check verifies what was received: every signature good, per user each
// (type, metric, threshold) once, in the order of their webhook-ids (the
// outbox's order). It returns the events by user and the duplicates.
func (r *receiver) check(wantPerUser []string) (byUser map[string][]delivered, copies int) {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.bad) > 0 {
		r.t.Fatalf("%d request(s) failed verification, e.g. %s", len(r.bad), r.bad[0])
	}
	byUser = map[string][]delivered{}
	lastID := map[string]int64{}
	for _, id := range r.order {
		d := r.first[id]
		n, err := strconv.ParseInt(strings.TrimPrefix(id, "msg_tally_"), 10, 64)
		if err != nil {
			r.t.Fatalf("webhook-id %q is not msg_tally_<n>", id)
		}
		if n <= lastID[d.Data.UserID] {
			r.t.Fatalf("user %s: alert %s arrived after alert %d: out of order", d.Data.UserID, id, lastID[d.Data.UserID])
		}
		lastID[d.Data.UserID] = n
		byUser[d.Data.UserID] = append(byUser[d.Data.UserID], d)
		copies += d.copies - 1
	}
	for user, ds := range byUser {
		var got []string
		for _, d := range ds {
			got = append(got, d.key())
		}
		slices.Sort(got)
		if !slices.Equal(got, wantPerUser) {
			r.t.Fatalf("user %s got %v, want each of %v once", user, got, wantPerUser)
		}
	}
	return byUser, copies
}

func alertEnv(t *testing.T, url string) map[string]string {
	env := postgresEnv(t)
	env["TALLY_WEBHOOK_URL"] = url
	env["TALLY_WEBHOOK_SECRET"] = testWebhookSecret
	env["TALLY_WEBHOOK_MAX_BACKOFF"] = "1s"
	env["TALLY_WEBHOOK_TIMEOUT"] = "2s"
	env["TALLY_WEBHOOK_CONCURRENCY"] = "16"
	return env
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// drive pushes each user past the free plan's 10 sessions with `creates`
// creates, all users at once, and checks the exact outcomes. It returns
// each user's admitted session ids.
func drive(t *testing.T, c *client, s *server, users []string, creates int) map[string][]string {
	t.Helper()
	var (
		mu  sync.Mutex
		ids = map[string][]string{}
		wg  sync.WaitGroup
	)
	sem := make(chan struct{}, 64)
	for _, u := range users {
		for range creates {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				r := c.create(s, u)
				if r.Status == http.StatusOK {
					var b sessionBody
					r.json(t, &b)
					mu.Lock()
					ids[u] = append(ids[u], b.ID)
					mu.Unlock()
				} else if r.Status != http.StatusForbidden {
					t.Errorf("create for %s: %d %s", u, r.Status, r.Body)
				}
			})
		}
	}
	wg.Wait()
	for _, u := range users {
		if len(ids[u]) != 10 {
			t.Fatalf("user %s: %d admitted, want exactly the free plan's 10", u, len(ids[u]))
		}
	}
	return ids
}

func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%03d", prefix, i)
	}
	return out
}

// 200 users on the free plan driven past their limits at once, then past
// their minutes: every user gets exactly one event per threshold and metric
// (after deduplication by webhook-id), in order, each signed.
func TestAlertsForTwoHundredUsers(t *testing.T) {
	rcv := newReceiver(t)
	rcv.start(listen(t))
	s := startServer(t, alertEnv(t, rcv.url))
	c := newClient(t)
	users := names("alerted", 200)
	ids := drive(t, c, s, users, 12)
	// free: 120 minutes. Two completions of an hour each cross 80% (96
	// minutes) and 100%.
	var wg sync.WaitGroup
	for _, u := range users {
		wg.Go(func() {
			for _, id := range ids[u][:2] {
				if r := c.admin(http.MethodPost, s, "/admin/v1/sessions/"+id+"/complete", map[string]int{"duration_seconds": 3600}); r.Status != http.StatusOK {
					t.Errorf("complete %s: %d %s", id, r.Status, r.Body)
				}
			}
		})
	}
	wg.Wait()
	want := []string{
		"usage.limit_reached sessions 0",
		"usage.threshold_crossed minutes 100",
		"usage.threshold_crossed minutes 80",
		"usage.threshold_crossed sessions 100",
		"usage.threshold_crossed sessions 80",
	}
	took := rcv.waitFor(len(users)*len(want), 60*time.Second)
	byUser, copies := rcv.check(want)
	if len(byUser) != len(users) {
		t.Fatalf("alerts for %d users, want %d", len(byUser), len(users))
	}
	for _, d := range byUser[users[0]] {
		switch d.key() {
		case "usage.threshold_crossed sessions 80":
			if d.Data.Used != 8 || d.Data.Limit != 10 || d.Data.Plan != "free" || d.Data.SessionID == "" {
				t.Fatalf("sessions 80%% alert: %+v", d.Data)
			}
		case "usage.threshold_crossed minutes 80":
			if d.Data.Used != 120 || d.Data.Limit != 120 || d.Data.UsedSeconds == nil || *d.Data.UsedSeconds != 7200 {
				t.Fatalf("minutes 80%% alert, crossed with 100%% by the second hour: %+v", d.Data)
			}
		}
	}
	t.Logf("%d users: %d distinct alerts delivered %s after the last completion, %d duplicates, %d requests",
		len(users), len(users)*len(want), took.Round(time.Millisecond), copies, rcv.requests)
}

// The receiver answers 500 for a while, then recovers: everything is
// delivered, nothing twice after deduplication. A receiver that refuses
// for good (400) dead-letters at once; an admin retry delivers it.
func TestAlertsReceiverFailsThenRecovers(t *testing.T) {
	rcv := newReceiver(t)
	rcv.status.Store(http.StatusInternalServerError)
	rcv.start(listen(t))
	s := startServer(t, alertEnv(t, rcv.url))
	c := newClient(t)
	users := names("flaky", 40)
	drive(t, c, s, users, 11)
	want := []string{"usage.limit_reached sessions 0", "usage.threshold_crossed sessions 100", "usage.threshold_crossed sessions 80"}
	// The 20 s outage, with retries every second or so by then.
	time.Sleep(20 * time.Second)
	if n := rcv.distinct(); n != 0 {
		t.Fatalf("%d alerts accepted while the receiver failed", n)
	}
	rcv.status.Store(http.StatusOK)
	took := rcv.waitFor(len(users)*len(want), 30*time.Second)
	_, copies := rcv.check(want)
	t.Logf("after 20 s of 500s: %d alerts delivered %s after recovery, %d duplicates, %d requests in all",
		len(users)*len(want), took.Round(time.Millisecond), copies, rcv.requests)

	// A refusal for good: dead-lettered, listed, retried by an admin.
	rcv.status.Store(http.StatusBadRequest)
	drive(t, c, s, []string{"refused"}, 11)
	var failed struct {
		Items []struct {
			ID       string `json:"id"`
			Status   string `json:"status"`
			Attempts int    `json:"attempts"`
		} `json:"items"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(failed.Items) == 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		r := c.admin(http.MethodGet, s, "/admin/v1/webhooks/deliveries?status=failed", nil)
		r.json(t, &failed)
	}
	if len(failed.Items) == 0 || failed.Items[0].Attempts != 1 {
		t.Fatalf("failed deliveries after a 400: %+v, want refused at the first attempt", failed.Items)
	}
	rcv.status.Store(http.StatusOK)
	before := rcv.distinct()
	for _, f := range failed.Items {
		if r := c.admin(http.MethodPost, s, "/admin/v1/webhooks/deliveries/"+f.ID+"/retry", nil); r.Status != http.StatusOK {
			t.Fatalf("retry %s: %d %s", f.ID, r.Status, r.Body)
		}
	}
	rcv.waitFor(before+len(failed.Items), 10*time.Second)
}

// The receiver down entirely: admissions are unaffected (every user gets
// exactly its 10 sessions, nothing is shed), and the backlog is delivered
// once it is back.
func TestAlertsReceiverDown(t *testing.T) {
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close() // nobody listens there until the receiver comes up
	rcv := newReceiver(t)
	s := startServer(t, alertEnv(t, "http://"+addr+"/hooks/tally"))
	c := newClient(t)
	users := names("unheard", 60)
	drive(t, c, s, users, 11)
	time.Sleep(3 * time.Second) // attempts fail meanwhile
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("the receiver's port %s was taken meanwhile: %v", addr, err)
	}
	rcv.start(ln)
	want := []string{"usage.limit_reached sessions 0", "usage.threshold_crossed sessions 100", "usage.threshold_crossed sessions 80"}
	took := rcv.waitFor(len(users)*len(want), 30*time.Second)
	_, copies := rcv.check(want)
	metrics := string(opsGet(t, s, "/metrics").Body)
	if !strings.Contains(metrics, `tally_webhook_deliveries_total{outcome="retry"}`) {
		t.Fatalf("no retried deliveries counted while the receiver was down")
	}
	t.Logf("receiver down, then up: %d alerts delivered %s after it came up, %d duplicates", len(users)*len(want), took.Round(time.Millisecond), copies)
}
