package webhooks

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/tally-dev/tally/domain"
)

var (
	testSecret = SecretPrefix + base64.StdEncoding.EncodeToString([]byte("tally-test-secret-of-32-bytes!!!"))
	testKey, _ = ParseSecret(testSecret)
	discard    = slog.New(slog.DiscardHandler)
)

// base is the tests' starting time: whole seconds, as HTTP-dates are.
func base() time.Time { return time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC) }

func testAlert(user, session string, at time.Time) domain.Alert {
	return domain.Alert{
		Kind: domain.AlertThresholdCrossed, UserID: user, Plan: "pro", Metric: domain.MetricMinutes,
		Percent: 80, Used: 4830, Limit: 100,
		PeriodStart: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC),
		PeriodEnd:   time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC),
		OccurredAt:  at, SessionID: session,
	}
}

func testOptions(fo *fakeOutbox, url string, clk *clock) Options {
	return Options{
		Outbox: fo, URL: url, Secret: testKey, Now: clk.Now, Logger: discard,
		Timeout: 2 * time.Second, Poll: 5 * time.Millisecond,
		MinBackoff: time.Second, MaxBackoff: 10 * time.Second,
	}
}

func newDispatcher(t *testing.T, opts Options) *Dispatcher {
	t.Helper()
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// run runs d until the test ends or the returned stop is called; stop
// waits for Run to return.
func run(t *testing.T, d *Dispatcher) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return after its context ended")
		}
	})
	t.Cleanup(stop)
	return stop
}

// waitFor polls cond until it holds, failing the test after a generous
// bound (a guard against hangs, not a speed assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// drive moves the clock on by step whenever no attempt is in flight (so
// that no lease runs out under one), waking d, until cond holds: backoffs
// pass without being waited out.
func drive(t *testing.T, d *Dispatcher, clk *clock, fo *fakeOutbox, step time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out driving the clock until %s", what)
		}
		if !fo.busy(clk.Now()) {
			clk.Advance(step)
			d.Notify()
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func status(fo *fakeOutbox, t *testing.T, id int64, s domain.DeliveryStatus) func() bool {
	return func() bool { return fo.get(t, id).Status == s }
}

// receiver is an httptest server that answers with the statuses of its
// script in turn (then 200), and records each request.
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	script []int
	header http.Header // added to each scripted answer
	reqs   []recorded
}

type recorded struct {
	header http.Header
	body   []byte
}

func newReceiver(t *testing.T, script ...int) *receiver {
	rc := &receiver{script: script, header: http.Header{}}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.reqs = append(rc.reqs, recorded{r.Header.Clone(), body})
		code := http.StatusOK
		if len(rc.script) > 0 {
			code, rc.script = rc.script[0], rc.script[1:]
			for k, v := range rc.header {
				w.Header()[k] = v
			}
		}
		rc.mu.Unlock()
		w.WriteHeader(code)
		_, _ = w.Write([]byte(`{"ok":false}`))
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) requests() []recorded {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]recorded(nil), rc.reqs...)
}

// Every attempt is signed so that the independent Standard Webhooks
// library verifies it, with the same webhook-id and body each time.
func TestAttemptsAreSignedWithStableIDAndBody(t *testing.T) {
	wh, err := standardwebhooks.NewWebhook(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	// The library checks the timestamp against the real clock: start
	// there (the test moves the clock by seconds only).
	clk := newClock(time.Now().Truncate(time.Second))
	rc := newReceiver(t, 500, 500)
	fo := &fakeOutbox{}
	id := fo.add(testAlert("u1", "s1", clk.Now()))
	opts := testOptions(fo, rc.URL, clk)
	opts.MaxBackoff = 2 * time.Second
	d := newDispatcher(t, opts)
	run(t, d)
	drive(t, d, clk, fo, 2*time.Second, "delivered", status(fo, t, id, domain.DeliveryDelivered))

	reqs := rc.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want 3 (two 500s, then 200)", len(reqs))
	}
	want, err := Payload(fo.get(t, id).Alert)
	if err != nil {
		t.Fatal(err)
	}
	var stamps []string
	for i, r := range reqs {
		if err := wh.Verify(r.body, r.header); err != nil {
			t.Errorf("attempt %d: standard-webhooks does not verify it: %v", i+1, err)
		}
		if got := r.header.Get("webhook-id"); got != "msg_tally_1" {
			t.Errorf("attempt %d: webhook-id %q, want msg_tally_1", i+1, got)
		}
		if string(r.body) != string(want) {
			t.Errorf("attempt %d: body %s, want %s", i+1, r.body, want)
		}
		if r.header.Get("Content-Type") != "application/json" || r.header.Get("User-Agent") != "tally-webhooks" {
			t.Errorf("attempt %d: Content-Type %q, User-Agent %q", i+1, r.header.Get("Content-Type"), r.header.Get("User-Agent"))
		}
		stamps = append(stamps, r.header.Get("webhook-timestamp"))
	}
	if stamps[0] == stamps[1] || stamps[1] == stamps[2] {
		t.Errorf("webhook-timestamp is not the attempt's own: %v", stamps)
	}
	// Verification means something: a changed body fails it.
	if err := wh.Verify(append([]byte(" "), reqs[0].body...), reqs[0].header); err == nil {
		t.Error("a tampered body verifies")
	}

	ss := fo.settlements(id)
	if len(ss) != 3 {
		t.Fatalf("%d settlements, want 3", len(ss))
	}
	for i, s := range ss[:2] {
		if s.Status != domain.DeliveryPending || s.HTTPStatus != 500 || s.Error != "receiver answered 500" || !s.NextAttemptAt.After(s.At) {
			t.Errorf("settlement %d: %+v, want pending after a 500", i+1, s)
		}
	}
	if s := ss[2]; s.Status != domain.DeliveryDelivered || s.HTTPStatus != 200 || s.Error != "" {
		t.Errorf("last settlement: %+v, want delivered", s)
	}
	if got := fo.get(t, id).Attempts; got != 3 {
		t.Errorf("attempts %d, want 3", got)
	}
}

// A receiver down for a while: the delivery is retried with growing
// backoff and delivered once it recovers; the metrics count each attempt.
func TestDeliveredOnceReceiverRecovers(t *testing.T) {
	clk := newClock(base())
	rc := newReceiver(t, 503, 503, 503, 503, 503)
	fo := &fakeOutbox{}
	id := fo.add(testAlert("u1", "s1", base().Add(-30*time.Second)))
	reg := prometheus.NewRegistry()
	opts := testOptions(fo, rc.URL, clk)
	opts.Registry = reg
	d := newDispatcher(t, opts)
	d.depthEvery = 5 * time.Millisecond
	run(t, d)

	// The clock holds still: the first failure leaves the alert pending,
	// 30 s old, and the gauges say so.
	waitFor(t, "the first attempt", func() bool { return len(fo.settlements(id)) == 1 })
	waitFor(t, "the depth gauges", func() bool {
		return gauge(t, reg, "tally_webhook_outbox_pending") == 1 && gauge(t, reg, "tally_webhook_outbox_oldest_pending_seconds") == 30
	})

	drive(t, d, clk, fo, 10*time.Second, "delivered", status(fo, t, id, domain.DeliveryDelivered))
	if n := len(rc.requests()); n != 6 {
		t.Errorf("%d requests, want 6", n)
	}
	ss := fo.settlements(id)
	for i, s := range ss[:5] {
		// Attempt i+1 waits between half and all of 1 s × 2^i, up to 10 s.
		full := min(time.Second<<i, 10*time.Second)
		if wait := s.NextAttemptAt.Sub(s.At); wait < full/2 || wait > full {
			t.Errorf("backoff after attempt %d: %s, want %s to %s", i+1, wait, full/2, full)
		}
	}
	if got := fo.get(t, id).Attempts; got != 6 {
		t.Errorf("attempts %d, want 6", got)
	}
	for outcome, want := range map[string]float64{"retry": 5, "delivered": 1, "dead": 0} {
		if got := testutil.ToFloat64(d.m.outcomes.WithLabelValues(outcome)); got != want {
			t.Errorf("tally_webhook_deliveries_total{outcome=%q} = %v, want %v", outcome, got, want)
		}
	}
	if n := histogramCount(t, reg, "tally_webhook_attempt_duration_seconds"); n != 6 {
		t.Errorf("attempt duration observations %d, want 6", n)
	}
	if n := histogramCount(t, reg, "tally_webhook_delivery_lag_seconds"); n != 1 {
		t.Errorf("delivery lag observations %d, want 1", n)
	}
	waitFor(t, "the pending gauge to drop", func() bool { return gauge(t, reg, "tally_webhook_outbox_pending") == 0 })
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func histogramCount(t *testing.T, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// A Retry-After answer sets the next attempt: in seconds or as an
// HTTP-date, within MinBackoff and MaxBackoff.
func TestRetryAfterIsHonoured(t *testing.T) {
	for _, c := range []struct {
		name  string
		code  int
		value string
		want  time.Duration
	}{
		{"seconds", 429, "120", 120 * time.Second},
		{"http-date", 503, base().Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{"capped at MaxBackoff", 429, "3600", 10 * time.Minute},
		{"floored at MinBackoff", 429, "0", time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			clk := newClock(base())
			rc := newReceiver(t, c.code)
			rc.header.Set("Retry-After", c.value)
			fo := &fakeOutbox{}
			id := fo.add(testAlert("u1", "s1", base()))
			opts := testOptions(fo, rc.URL, clk)
			opts.MaxBackoff = 10 * time.Minute
			d := newDispatcher(t, opts)
			run(t, d)
			waitFor(t, "the first attempt", func() bool { return len(fo.settlements(id)) == 1 })
			s := fo.settlements(id)[0]
			if s.Status != domain.DeliveryPending || s.HTTPStatus != c.code {
				t.Fatalf("settlement %+v, want pending after %d", s, c.code)
			}
			if got := s.NextAttemptAt.Sub(s.At); got != c.want {
				t.Errorf("next attempt after %s, want %s", got, c.want)
			}
			clk.Advance(c.want)
			d.Notify()
			waitFor(t, "delivered", status(fo, t, id, domain.DeliveryDelivered))
		})
	}
}

// The receiver's answer decides: a 4xx other than 408 and 429 is final at
// once; 408, 429, 5xx and redirects (never followed) are retried.
func TestStatusClassification(t *testing.T) {
	for _, c := range []struct {
		code int
		dead bool
	}{
		{400, true}, {401, true}, {403, true}, {404, true}, {410, true}, {413, true}, {422, true},
		{408, false}, {429, false}, {500, false}, {502, false}, {503, false}, {504, false}, {302, false}, {307, false},
	} {
		t.Run(strconv.Itoa(c.code), func(t *testing.T) {
			clk := newClock(base())
			var followed atomic.Bool
			mux := http.NewServeMux()
			mux.HandleFunc("/hook", func(w http.ResponseWriter, r *http.Request) {
				if c.code >= 300 && c.code < 400 {
					http.Redirect(w, r, "/elsewhere", c.code)
					return
				}
				w.WriteHeader(c.code)
			})
			mux.HandleFunc("/elsewhere", func(w http.ResponseWriter, r *http.Request) { followed.Store(true) })
			srv := httptest.NewServer(mux)
			t.Cleanup(srv.Close)
			fo := &fakeOutbox{}
			id := fo.add(testAlert("u1", "s1", base()))
			d := newDispatcher(t, testOptions(fo, srv.URL+"/hook", clk))
			run(t, d)
			waitFor(t, "the first attempt", func() bool { return len(fo.settlements(id)) == 1 })
			s := fo.settlements(id)[0]
			if s.HTTPStatus != c.code || !strings.Contains(s.Error, strconv.Itoa(c.code)) {
				t.Errorf("settlement %+v: want HTTP status %d named in the error", s, c.code)
			}
			if c.dead {
				if s.Status != domain.DeliveryFailed || fo.get(t, id).Attempts != 1 {
					t.Errorf("settlement %+v, want failed at the first attempt", s)
				}
				if got := testutil.ToFloat64(d.m.outcomes.WithLabelValues("dead")); got != 1 {
					t.Errorf("dead outcomes %v, want 1", got)
				}
			} else if s.Status != domain.DeliveryPending || !s.NextAttemptAt.After(s.At) {
				t.Errorf("settlement %+v, want pending, retried later", s)
			}
			if followed.Load() {
				t.Error("a redirect was followed")
			}
		})
	}
}

// Past the retry horizon a failing delivery is dead-lettered with its
// last error; before it, retried.
func TestHorizonDeadLetters(t *testing.T) {
	t.Run("already past", func(t *testing.T) {
		clk := newClock(base())
		rc := newReceiver(t, 503)
		fo := &fakeOutbox{}
		// Any backoff (at least half a second) lands after the horizon.
		id := fo.add(testAlert("u1", "s1", base().Add(-time.Hour+100*time.Millisecond)))
		opts := testOptions(fo, rc.URL, clk)
		opts.Horizon = time.Hour
		d := newDispatcher(t, opts)
		run(t, d)
		waitFor(t, "dead-lettered", status(fo, t, id, domain.DeliveryFailed))
		got := fo.get(t, id)
		if got.Attempts != 1 || got.LastStatus != 503 || !strings.Contains(got.LastError, "receiver answered 503") || !strings.Contains(got.LastError, "horizon") {
			t.Errorf("delivery %+v: want failed after one attempt with the 503 and the horizon named", got)
		}
	})
	t.Run("passes while retrying", func(t *testing.T) {
		clk := newClock(base())
		rc := newReceiver(t, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500)
		fo := &fakeOutbox{}
		id := fo.add(testAlert("u1", "s1", base()))
		opts := testOptions(fo, rc.URL, clk)
		opts.Horizon = 30 * time.Second
		d := newDispatcher(t, opts)
		run(t, d)
		drive(t, d, clk, fo, 5*time.Second, "dead-lettered", status(fo, t, id, domain.DeliveryFailed))
		ss := fo.settlements(id)
		if len(ss) < 2 {
			t.Fatalf("%d attempts, want retries before the horizon", len(ss))
		}
		deadline := base().Add(30 * time.Second)
		for _, s := range ss[:len(ss)-1] {
			if s.Status != domain.DeliveryPending || s.NextAttemptAt.After(deadline) {
				t.Errorf("settlement %+v: want pending, due within the horizon", s)
			}
		}
		if last := ss[len(ss)-1]; last.Status != domain.DeliveryFailed || !strings.Contains(last.Error, "receiver answered 500") {
			t.Errorf("last settlement %+v: want failed with the last error", last)
		}
	})
}

// One user's deliveries go in order; a user whose delivery hangs at the
// receiver holds only its own, while another user's go on.
func TestPerUserOrderAndIsolation(t *testing.T) {
	clk := newClock(base())
	release := make(chan struct{})
	var mu sync.Mutex
	got := map[string][]string{} // user → sessions, in arrival order
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev Event
		body, _ := io.ReadAll(r.Body) // to the end: r.Context() then ends with the connection
		if err := json.Unmarshal(body, &ev); err != nil {
			w.WriteHeader(400)
			return
		}
		mu.Lock()
		got[ev.Data.UserID] = append(got[ev.Data.UserID], ev.Data.SessionID)
		mu.Unlock()
		if ev.Data.SessionID == "slow-1" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	}))
	t.Cleanup(srv.Close)
	arrived := func(user string) []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got[user]...)
	}

	fo := &fakeOutbox{}
	var ids []int64
	for i, s := range []struct{ user, session string }{
		{"slow", "slow-1"}, {"fast", "fast-1"}, {"fast", "fast-2"}, {"slow", "slow-2"}, {"fast", "fast-3"},
	} {
		ids = append(ids, fo.add(testAlert(s.user, s.session, base().Add(-time.Minute+time.Duration(i)*time.Millisecond))))
	}
	opts := testOptions(fo, srv.URL, clk)
	opts.Timeout = 5 * time.Second
	d := newDispatcher(t, opts)
	run(t, d)

	waitFor(t, "fast's alerts delivered while slow's first hangs", func() bool {
		for _, i := range []int{1, 2, 4} {
			if fo.get(t, ids[i]).Status != domain.DeliveryDelivered {
				return false
			}
		}
		return true
	})
	if s := arrived("slow"); len(s) != 1 {
		t.Fatalf("slow's deliveries sent %v while its first is unanswered; want only slow-1", s)
	}
	close(release)
	waitFor(t, "slow's alerts delivered", func() bool {
		return fo.get(t, ids[0]).Status == domain.DeliveryDelivered && fo.get(t, ids[3]).Status == domain.DeliveryDelivered
	})
	if s := strings.Join(arrived("fast"), ","); s != "fast-1,fast-2,fast-3" {
		t.Errorf("fast's order: %s", s)
	}
	if s := strings.Join(arrived("slow"), ","); s != "slow-1,slow-2" {
		t.Errorf("slow's order: %s", s)
	}
}

// An attempt the receiver does not answer within Timeout is retried.
func TestTimeoutIsRetried(t *testing.T) {
	clk := newClock(base())
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Read to the end: only then does the server notice the client
		// going away and end r.Context().
		_, _ = io.Copy(io.Discard, r.Body)
		if calls.Add(1) == 1 {
			<-r.Context().Done() // hangs until the dispatcher gives up
		}
	}))
	t.Cleanup(srv.Close)
	fo := &fakeOutbox{}
	id := fo.add(testAlert("u1", "s1", base()))
	opts := testOptions(fo, srv.URL, clk)
	opts.Timeout = 100 * time.Millisecond
	d := newDispatcher(t, opts)
	run(t, d)
	waitFor(t, "the first attempt", func() bool { return len(fo.settlements(id)) == 1 })
	if s := fo.settlements(id)[0]; s.Status != domain.DeliveryPending || s.HTTPStatus != 0 || s.Error != "timeout after 100ms" {
		t.Errorf("settlement %+v, want pending after a timeout", s)
	}
	drive(t, d, clk, fo, 10*time.Second, "delivered", status(fo, t, id, domain.DeliveryDelivered))
	if got := fo.get(t, id).Attempts; got != 2 {
		t.Errorf("attempts %d, want 2", got)
	}
}

// A receiver that cannot be reached is retried, with the dial error.
func TestUnreachableIsRetried(t *testing.T) {
	clk := newClock(base())
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there now
	fo := &fakeOutbox{}
	id := fo.add(testAlert("u1", "s1", base()))
	d := newDispatcher(t, testOptions(fo, url, clk))
	run(t, d)
	waitFor(t, "the first attempt", func() bool { return len(fo.settlements(id)) == 1 })
	s := fo.settlements(id)[0]
	if s.Status != domain.DeliveryPending || s.HTTPStatus != 0 || !strings.Contains(s.Error, "connect") {
		t.Errorf("settlement %+v, want pending with the dial error", s)
	}
	if strings.Contains(s.Error, url) {
		t.Errorf("the error quotes the URL: %q", s.Error)
	}
}

// When Run's context ends, attempts in flight finish and are settled
// before Run returns; one the store cannot settle is left to its lease.
func TestRunStops(t *testing.T) {
	// hanging returns a receiver that signals each request on entered and
	// answers 200 once release is closed.
	hanging := func(t *testing.T) (url string, entered chan struct{}, release chan struct{}) {
		entered, release = make(chan struct{}, 10), make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body) // so that r.Context() ends with the connection
			entered <- struct{}{}
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		t.Cleanup(srv.Close)
		return srv.URL, entered, release
	}
	started := func(d *Dispatcher) (cancel func(), done chan error) {
		ctx, cancel := context.WithCancel(context.Background())
		done = make(chan error, 1)
		go func() { done <- d.Run(ctx) }()
		return cancel, done
	}
	returned := func(t *testing.T, done chan error) {
		t.Helper()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return")
		}
	}

	t.Run("in-flight attempt is settled", func(t *testing.T) {
		clk := newClock(base())
		url, entered, release := hanging(t)
		fo := &fakeOutbox{}
		id := fo.add(testAlert("u1", "s1", base()))
		d := newDispatcher(t, testOptions(fo, url, clk))
		cancel, done := started(d)
		defer cancel()
		<-entered
		cancel()
		time.Sleep(20 * time.Millisecond)
		select {
		case <-done:
			t.Fatal("Run returned with an attempt in flight")
		default:
		}
		close(release)
		returned(t, done)
		if got := fo.get(t, id); got.Status != domain.DeliveryDelivered {
			t.Errorf("delivery %+v, want delivered: the attempt finished after the context ended", got)
		}
	})

	t.Run("hung receiver is bounded by Timeout", func(t *testing.T) {
		clk := newClock(base())
		url, entered, _ := hanging(t)
		fo := &fakeOutbox{}
		id := fo.add(testAlert("u1", "s1", base()))
		opts := testOptions(fo, url, clk)
		opts.Timeout = 100 * time.Millisecond
		d := newDispatcher(t, opts)
		cancel, done := started(d)
		defer cancel()
		<-entered
		cancel()
		returned(t, done)
		if ss := fo.settlements(id); len(ss) != 1 || ss[0].Status != domain.DeliveryPending || ss[0].Error != "timeout after 100ms" {
			t.Errorf("settlements %+v, want one pending after the timeout", ss)
		}
	})

	t.Run("unsettled attempt is left to the lease", func(t *testing.T) {
		clk := newClock(base())
		rc := newReceiver(t)
		fo := &fakeOutbox{settleErr: errors.New("store down")}
		id := fo.add(testAlert("u1", "s1", base()))
		d := newDispatcher(t, testOptions(fo, rc.URL, clk))
		cancel, done := started(d)
		defer cancel()
		waitFor(t, "the attempt", func() bool { return len(rc.requests()) == 1 })
		cancel()
		returned(t, done)
		got := fo.get(t, id)
		if got.Status != domain.DeliveryPending || !fo.busy(clk.Now()) {
			t.Fatalf("delivery %+v: want pending under its claim", got)
		}

		// The lease ends: the next dispatcher sends it again, same id.
		fo.mu.Lock()
		fo.settleErr = nil
		fo.mu.Unlock()
		clk.Advance(d.lease() + time.Second)
		run(t, d)
		waitFor(t, "delivered after the lease", status(fo, t, id, domain.DeliveryDelivered))
		reqs := rc.requests()
		if len(reqs) != 2 || reqs[0].header.Get("webhook-id") != reqs[1].header.Get("webhook-id") || string(reqs[0].body) != string(reqs[1].body) {
			t.Errorf("want the same message sent twice, got %d requests", len(reqs))
		}
	})
}

// A failing store does not stop the dispatcher; each distinct error is
// logged once, and the recovery once.
func TestStoreErrorsAreSurvivedAndLoggedOnce(t *testing.T) {
	clk := newClock(base())
	rc := newReceiver(t)
	fo := &fakeOutbox{claimErr: errors.New("connection refused")}
	id := fo.add(testAlert("u1", "s1", base()))
	logs := &recordingHandler{}
	opts := testOptions(fo, rc.URL, clk)
	opts.Logger = slog.New(logs)
	d := newDispatcher(t, opts)
	d.storeRetry = time.Millisecond
	run(t, d)

	claims := func() int { fo.mu.Lock(); defer fo.mu.Unlock(); return fo.claims }
	waitFor(t, "several failed claims", func() bool { return claims() >= 5 })
	fo.setClaimErr(errors.New("too many connections"))
	n := claims()
	waitFor(t, "more failed claims", func() bool { return claims() >= n+5 })
	fo.setClaimErr(nil)
	waitFor(t, "delivered", status(fo, t, id, domain.DeliveryDelivered))

	if got := logs.count("failed to hand out"); got != 2 {
		t.Errorf("%d claim failures logged, want 2 (one per distinct error): %v", got, logs.all())
	}
	if got := logs.count("hands out deliveries again"); got != 1 {
		t.Errorf("%d recoveries logged, want 1: %v", got, logs.all())
	}
}

type recordingHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.msgs = append(h.msgs, r.Message)
	h.mu.Unlock()
	return nil
}

func (h *recordingHandler) count(sub string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.msgs {
		if strings.Contains(m, sub) {
			n++
		}
	}
	return n
}

func (h *recordingHandler) all() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.msgs...)
}

// Notify never blocks, running or not, and makes a running dispatcher
// look at the outbox before its next poll.
func TestNotify(t *testing.T) {
	clk := newClock(base())
	rc := newReceiver(t)
	fo := &fakeOutbox{}
	opts := testOptions(fo, rc.URL, clk)
	opts.Poll = time.Hour
	d := newDispatcher(t, opts)
	for range 1000 {
		d.Notify()
	}
	run(t, d)
	waitFor(t, "the first claim", func() bool { fo.mu.Lock(); defer fo.mu.Unlock(); return fo.claims >= 2 })
	id := fo.add(testAlert("u1", "s1", base()))
	d.Notify()
	waitFor(t, "delivered on Notify", status(fo, t, id, domain.DeliveryDelivered))
}

func TestRunTwiceIsRefused(t *testing.T) {
	d := newDispatcher(t, testOptions(&fakeOutbox{}, "http://127.0.0.1:1/", newClock(base())))
	run(t, d)
	waitFor(t, "running", d.running.Load)
	if err := d.Run(context.Background()); err == nil {
		t.Fatal("a second Run started")
	}
}

func TestNewValidates(t *testing.T) {
	ok := testOptions(&fakeOutbox{}, "https://hooks.example/tally?token=t0ps3cret", newClock(base()))
	for name, change := range map[string]func(*Options){
		"no outbox":          func(o *Options) { o.Outbox = nil },
		"relative URL":       func(o *Options) { o.URL = "/hook?token=t0ps3cret" },
		"ftp URL":            func(o *Options) { o.URL = "ftp://hooks.example/?token=t0ps3cret" },
		"short secret":       func(o *Options) { o.Secret = o.Secret[:16] },
		"negative timeout":   func(o *Options) { o.Timeout = -time.Second },
		"negative poll":      func(o *Options) { o.Poll = -time.Second },
		"min above max":      func(o *Options) { o.MinBackoff, o.MaxBackoff = time.Minute, time.Second },
		"negative workers":   func(o *Options) { o.Concurrency = -1 },
		"negative horizon":   func(o *Options) { o.Horizon = -time.Hour },
		"negative backoff":   func(o *Options) { o.MinBackoff = -time.Second },
		"negative max delay": func(o *Options) { o.MaxBackoff = -time.Second },
	} {
		o := ok
		change(&o)
		_, err := New(o)
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "t0ps3cret") {
			t.Errorf("%s: the error quotes the URL's token: %v", name, err)
		}
	}
	d, err := New(ok)
	if err != nil {
		t.Fatal(err)
	}
	// testOptions sets Timeout 2s; horizon and concurrency are defaults.
	if d.timeout != 2*time.Second || d.horizon != DefaultHorizon || d.concurrency != DefaultConcurrency {
		t.Errorf("timeout %s, horizon %s, concurrency %d", d.timeout, d.horizon, d.concurrency)
	}
	if got := d.lease(); got != 2*2*time.Second+5*time.Second {
		t.Errorf("lease %s, want 2×Timeout+5s", got)
	}

	// A second registration in one registry fails cleanly, and leaves the
	// registry as it was.
	reg := prometheus.NewRegistry()
	ok.Registry = reg
	if _, err := New(ok); err != nil {
		t.Fatal(err)
	}
	if _, err := New(ok); err == nil {
		t.Error("registered the metrics twice")
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := base()
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"30", 30 * time.Second, true},
		{" 5 ", 5 * time.Second, true},
		{now.Add(time.Minute).Format(http.TimeFormat), time.Minute, true},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0, true},
		{"-1", 0, false},
		{"soon", 0, false},
		{"99999999999999999999", 0, false}, // beyond uint64: not a number we can use
		{"9999999999999", 366 * 24 * time.Hour, true},
	} {
		got, ok := parseRetryAfter(c.in, now)
		if got != c.want || ok != c.ok {
			t.Errorf("parseRetryAfter(%q) = %s, %v; want %s, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

func TestBackoffGrowsWithJitterWithinBounds(t *testing.T) {
	d := newDispatcher(t, testOptions(&fakeOutbox{}, "http://127.0.0.1:1/", newClock(base())))
	for attempts := 1; attempts <= 70; attempts++ {
		full := 10 * time.Second
		if attempts < 5 {
			full = time.Second << (attempts - 1)
		}
		lo, hi := full, time.Duration(0)
		for range 200 {
			w := d.backoff(attempts, result{})
			lo, hi = min(lo, w), max(hi, w)
		}
		if lo < full/2 || hi > full {
			t.Errorf("attempt %d: waits %s to %s, want within %s to %s", attempts, lo, hi, full/2, full)
		}
		if hi == lo {
			t.Errorf("attempt %d: no jitter (%s every time)", attempts, lo)
		}
	}
}

// A receiver that is down is not hammered: once failDown attempts in a row
// fail, nothing more is sent until a pause has passed, then one probe at a
// time; the first delivery brings every slot back.
func TestReceiverDownIsProbedNotHammered(t *testing.T) {
	clk := newClock(base())
	script := make([]int, 13)
	for i := range script {
		script[i] = http.StatusServiceUnavailable
	}
	rc := newReceiver(t, script...)
	fo := &fakeOutbox{}
	var ids []int64
	for i := range 40 {
		ids = append(ids, fo.add(testAlert(fmt.Sprintf("u%02d", i), "s", base())))
	}
	opts := testOptions(fo, rc.URL, clk)
	opts.Concurrency = 8
	d := newDispatcher(t, opts)
	run(t, d)
	// The first claims fill the slots; failDown failures in a row mark the
	// receiver down, and with the clock standing still nothing more may be
	// sent, however often Run polls.
	waitFor(t, "the receiver marked down", func() bool {
		n := len(rc.requests())
		return n >= failDown && fo.settleCount() == n
	})
	time.Sleep(50 * time.Millisecond) // ten polls
	down := len(rc.requests())
	if down > opts.Concurrency+failDown {
		t.Fatalf("%d requests before the receiver counted as down, want at most %d", down, opts.Concurrency+failDown)
	}
	time.Sleep(50 * time.Millisecond)
	if n := len(rc.requests()); n != down {
		t.Fatalf("%d requests while the receiver is down and its pause runs, want %d (none more)", n, down)
	}
	// Past the pause (MinBackoff): one probe, which fails, and a longer
	// pause.
	clk.Advance(opts.MinBackoff)
	d.Notify()
	waitFor(t, "the probe", func() bool { return len(rc.requests()) == down+1 })
	time.Sleep(50 * time.Millisecond)
	if n := len(rc.requests()); n != down+1 {
		t.Fatalf("%d requests after one failed probe, want %d", n, down+1)
	}
	// The receiver answers 503 a few times more, then 200 to everything: the
	// probes continue one at a time until one is delivered, then every
	// alert goes out.
	drive(t, d, clk, fo, opts.MaxBackoff, "every alert delivered", func() bool {
		for _, id := range ids {
			if fo.get(t, id).Status != domain.DeliveryDelivered {
				return false
			}
		}
		return true
	})
}

func TestReceiverHealth(t *testing.T) {
	var h receiverHealth
	now := base()
	for i := range failDown - 1 {
		h.observe(outcomeRetry, now, time.Second, 8*time.Second)
		if got := h.slots(8, now); got != 8 {
			t.Fatalf("after %d failure(s): %d slots, want all 8", i+1, got)
		}
	}
	h.observe(outcomeRetry, now, time.Second, 8*time.Second) // down: a pause of 1s
	for range 5 {                                            // attempts in flight fail during the pause
		h.observe(outcomeRetry, now.Add(time.Millisecond), time.Second, 8*time.Second)
	}
	for i, pause := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second} {
		if got := h.slots(8, now.Add(pause-time.Nanosecond)); got != 0 {
			t.Fatalf("pause %d: %d slots during the %s pause, want 0", i+1, got, pause)
		}
		now = now.Add(pause)
		if got := h.slots(8, now); got != 1 {
			t.Fatalf("pause %d: %d slots once the %s pause passed, want 1 (a probe)", i+1, got, pause)
		}
		h.observe(outcomeRetry, now, time.Second, 8*time.Second) // the probe fails
	}
	h.observe(outcomeDead, now, time.Second, 8*time.Second) // an answer: the receiver is up
	if got := h.slots(8, now); got != 8 {
		t.Fatalf("after a final answer: %d slots, want all 8", got)
	}
}
