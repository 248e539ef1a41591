package load

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"

	"github.com/tally-dev/tally/transport"
)

// Result is what a run measured and what verification found. See the
// package documentation for its JSON form.
type Result struct {
	URL         string    `json:"url"`
	URLs        []string  `json:"urls"` // the creates' targets (URL alone unless several were given)
	Path        string    `json:"path"`
	Mode        string    `json:"mode"`
	Users       int       `json:"users"`
	Hot         bool      `json:"hot"`
	Plan        string    `json:"plan"`
	UserPrefix  string    `json:"user_prefix"`
	Concurrency int       `json:"concurrency"`
	Rate        float64   `json:"rate"`
	StartedAt   time.Time `json:"started_at"`
	WarmupS     float64   `json:"warmup_s"`
	DurationS   float64   `json:"duration_s"`

	Requests     int64   `json:"requests"`
	Admitted     int64   `json:"admitted"`
	Rejected     int64   `json:"rejected"`
	Errors       int64   `json:"errors"`
	RequestsPerS float64 `json:"requests_per_s"`
	AdmittedPerS float64 `json:"admitted_per_s"`
	RejectedPerS float64 `json:"rejected_per_s"`
	ErrorsPerS   float64 `json:"errors_per_s"`

	Statuses              map[string]int64  `json:"statuses"`
	ErrorsByStatus        map[string]int64  `json:"errors_by_status"`
	TransportErrors       map[string]int64  `json:"transport_errors"`
	TransportErrorSamples map[string]string `json:"transport_error_samples"`

	Late        int64    `json:"late"`
	Unsent      int64    `json:"unsent"`
	LateAfterMs float64  `json:"late_after_ms"`
	SendLag     *Latency `json:"send_lag"`

	LatencyAdmitted Latency `json:"latency_admitted"`
	LatencyRejected Latency `json:"latency_rejected"`
	// LatencyByStatus is the latency of the answers of each HTTP status
	// (200 and 403 too); RetryAfter counts, by status, the answers that
	// carried a Retry-After header.
	LatencyByStatus map[string]Latency `json:"latency_by_status"`
	RetryAfter      map[string]int64   `json:"retry_after_by_status"`
	// LatencyByStatusFromSend is LatencyByStatus counted from each
	// request's actual send instead of its scheduled time: equal in closed
	// loop; in open loop, the difference is how far behind the client was.
	LatencyByStatusFromSend map[string]Latency `json:"latency_by_status_from_send"`
	// MeasureStart is when the measured phase began (the scheduled time of
	// its first slot in open loop): Series[i].T counts from it.
	MeasureStart time.Time `json:"measure_start"`
	IntervalS    float64   `json:"interval_s"`
	Series       []Second  `json:"series"`

	Verification *Verification `json:"verification"`
	Violations   []string      `json:"violations"`
	Server500    int64         `json:"server_errors_500"`
	Interrupted  bool          `json:"interrupted"`
	Passed       bool          `json:"passed"`

	// AdmittedHist and RejectedHist are the full latency histograms
	// (microseconds), for reports and side-by-side comparisons.
	AdmittedHist *hdrhistogram.Histogram `json:"-"`
	RejectedHist *hdrhistogram.Histogram `json:"-"`
	// StatusHists are the histograms behind LatencyByStatus.
	StatusHists map[string]*hdrhistogram.Histogram `json:"-"`
	// IntervalHists are the admitted latencies of each interval of Series
	// (same index), when Config.KeepIntervalHists asked for them: merged
	// over a stretch of the run they give that stretch's exact
	// percentiles, which per-interval p99s cannot.
	IntervalHists []*hdrhistogram.Histogram `json:"-"`
}

// Err is nil when the run passed, else an error saying why not: invariant
// violations (including 500s) or an interrupted run.
func (r *Result) Err() error {
	switch {
	case len(r.Violations) > 0:
		return fmt.Errorf("%d invariant violation(s); the first: %s", len(r.Violations), r.Violations[0])
	case r.Interrupted:
		return errors.New("interrupted before the end of the run")
	}
	return nil
}

// user is one simulated user; its headers are built once and shared by
// every request (the transport only reads them).
type user struct {
	id     string
	token  string
	header http.Header
}

// baseline is a user's usage before the run.
type baseline struct {
	known       bool
	used        int64
	periodStart string
}

// engine is one run in progress.
type engine struct {
	cfg     Config
	rt      *http.Transport
	client  *http.Client // for setup and verification, not the hot path
	targets []*target    // the creates' targets; worker i sends to targets[i%len]
	body    []byte
	users   []user
	base    []baseline
	keepIDs bool

	shards []*shard
	coll   *collector

	start, measureStart, end time.Time
	hasEnd                   bool

	stop   atomic.Bool
	stopCh chan struct{}

	rr       atomic.Int64 // round-robin user counter (closed loop)
	measured atomic.Int64 // measured requests started (closed loop) or dispatched (open loop)
	unsent   int64        // open loop: measured slots never dispatched
}

// Run provisions the users, runs the load, and verifies the invariants.
// The error is for runs that could not happen (bad config, provisioning
// failed); what the run found is in the Result (see Result.Err). When ctx
// is cancelled the load stops, in-flight requests are awaited, and the
// partial result is returned without verification.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	e, err := newEngine(cfg)
	if err != nil {
		return nil, err
	}
	defer e.rt.CloseIdleConnections()

	if err := e.prepare(ctx); err != nil {
		return nil, err
	}
	ids := cfg.UserPrefix + "-N"
	if len(cfg.UserIDs) > 0 {
		ids = "ids given"
	}
	e.logf("load: %s loop, %d workers, %d user(s) on plan %q (%s), %s against %s%s",
		cfg.mode(), cfg.Concurrency, cfg.Users, cfg.Plan, ids, e.limitText(), cfg.URL, cfg.Path)
	started := time.Now()
	elapsed := e.load(ctx)
	res := e.result(started, elapsed, ctx.Err() != nil)

	if !cfg.NoVerify && !res.Interrupted {
		res.Verification = e.verify(ctx)
		res.Violations = append(res.Violations, res.Verification.Violations...)
		if ctx.Err() != nil {
			res.Interrupted = true
		}
	}
	if res.Server500 > 0 {
		res.Violations = append(res.Violations, fmt.Sprintf("the server answered 500 to %d create(s) (a 500 is never a right answer; see its log)", res.Server500))
	}
	res.Passed = len(res.Violations) == 0 && !res.Interrupted
	return res, nil
}

// target is one base URL the creates go to.
type target struct {
	url  *url.URL
	reqs [][]byte // per user: the create's wire form (built-in client)
	dial func() (net.Conn, error)
}

func newEngine(cfg Config) (*engine, error) {
	var targets []*target
	for _, base := range cfg.URLs {
		u, err := url.Parse(base + cfg.Path)
		if err != nil {
			return nil, fmt.Errorf("--url/--path: %w", err)
		}
		targets = append(targets, &target{url: u})
	}
	idle := cfg.Concurrency + 16
	rt := &http.Transport{
		// A load generator talks to the server directly, never through
		// the environment's proxy.
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          idle,
		MaxIdleConnsPerHost:   idle,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   cfg.Timeout,
		ResponseHeaderTimeout: cfg.Timeout,
		// No Accept-Encoding and no gunzip: the bodies are small and
		// decompressing them would be client CPU taken from the server.
		DisableCompression: true,
	}
	e := &engine{
		cfg:     cfg,
		rt:      rt,
		client:  &http.Client{Transport: rt, Timeout: cfg.Timeout},
		targets: targets,
		body:    cfg.Body,
		keepIDs: !cfg.NoVerify,
		stopCh:  make(chan struct{}),
	}
	// Tokens outlive the run, its warm-up and a slow verification, within
	// the service's default TALLY_JWT_MAX_TTL (24h), which refuses tokens
	// that expire further ahead.
	ttl := min(cfg.Warmup+cfg.Duration+2*time.Hour, 23*time.Hour)
	now := time.Now()
	e.users = make([]user, cfg.Users)
	for i := range e.users {
		id := cfg.userID(i)
		tok, err := transport.IssueTokenFor([]byte(cfg.Secret), id, ttl, now, cfg.Issuer, cfg.Audience)
		if err != nil {
			return nil, err
		}
		e.users[i] = user{id: id, token: tok, header: http.Header{
			"Authorization": {"Bearer " + tok},
			"Content-Type":  {"application/json"},
		}}
	}
	if !cfg.StdClient {
		for _, t := range targets {
			t.dial = newDialer(t.url, cfg.Timeout)
			t.reqs = make([][]byte, len(e.users))
			for i, u := range e.users {
				t.reqs[i] = renderRequest(t.url, u.token, e.body)
			}
		}
	}
	e.base = make([]baseline, cfg.Users)
	n := min(cfg.Concurrency, max(4, 2*runtime.GOMAXPROCS(0)))
	e.shards = make([]*shard, n)
	for i := range e.shards {
		e.shards[i] = newShard(e.keepIDs)
	}
	e.coll = newCollector(e.shards, cfg.KeepIntervalHists)
	return e, nil
}

func (e *engine) logf(format string, args ...any) {
	if e.cfg.Log != nil {
		fmt.Fprintf(e.cfg.Log, format+"\n", args...)
	}
}

func (e *engine) limitText() string {
	var s string
	if e.cfg.Rate > 0 {
		s = fmt.Sprintf("%g req/s ", e.cfg.Rate)
	}
	switch {
	case e.cfg.Requests > 0 && e.cfg.Duration > 0:
		s += fmt.Sprintf("for %s or %d requests", e.cfg.Duration, e.cfg.Requests)
	case e.cfg.Requests > 0:
		s += fmt.Sprintf("for %d requests", e.cfg.Requests)
	default:
		s += "for " + e.cfg.Duration.String()
	}
	if e.cfg.Warmup > 0 {
		s += " after a " + e.cfg.Warmup.String() + " warm-up"
	}
	return s
}

// prepare provisions the users on the plan (recording their usage before
// the run), or, without provisioning, reads that usage when verification
// will need it.
func (e *engine) prepare(ctx context.Context) error {
	switch {
	case !e.cfg.NoProvision:
		e.logf("provisioning %d user(s) on plan %q", len(e.users), e.cfg.Plan)
		body, _ := json.Marshal(map[string]string{"plan": e.cfg.Plan})
		return e.forEachUser(ctx, func(i int) error {
			var out struct {
				Usage usageBody `json:"usage"`
			}
			path := "/admin/v1/users/" + url.PathEscape(e.users[i].id)
			status, raw, err := e.call(ctx, http.MethodPut, path, e.cfg.AdminToken, body, &out)
			if err != nil {
				return fmt.Errorf("provision %s: %w", e.users[i].id, err)
			}
			if status != http.StatusOK {
				return fmt.Errorf("provision %s: PUT %s answered %d: %s", e.users[i].id, path, status, trim(raw))
			}
			e.base[i] = baseline{known: true, used: out.Usage.Sessions.Used, periodStart: out.Usage.PeriodStart}
			return nil
		})
	case !e.cfg.NoVerify:
		e.logf("reading the usage of %d user(s) before the run", len(e.users))
		return e.forEachUser(ctx, func(i int) error {
			var u usageBody
			status, raw, err := e.call(ctx, http.MethodGet, "/api/v1/usage", e.users[i].token, nil, &u)
			if err != nil {
				return fmt.Errorf("usage of %s before the run: %w", e.users[i].id, err)
			}
			if status != http.StatusOK {
				return fmt.Errorf("usage of %s before the run: GET /api/v1/usage answered %d: %s (pass --no-verify for a non-Tally endpoint)", e.users[i].id, status, trim(raw))
			}
			e.base[i] = baseline{known: true, used: u.Sessions.Used, periodStart: u.PeriodStart}
			return nil
		})
	}
	return nil
}

// usageBody is the part of the Usage response (transport/openapi.yaml) the tool reads.
type usageBody struct {
	PeriodStart string `json:"period_start"`
	Sessions    struct {
		Used  int64 `json:"used"`
		Limit int64 `json:"limit"`
	} `json:"sessions"`
}

// setupConcurrency bounds provisioning and verification requests.
func (e *engine) setupConcurrency() int { return min(e.cfg.Concurrency, 32) }

// forEachUser runs f for every user, a few at a time, and returns the first
// error.
func (e *engine) forEachUser(ctx context.Context, f func(i int) error) error {
	var first error
	var mu sync.Mutex
	parallel(len(e.users), e.setupConcurrency(), func(i int) {
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			return
		}
		if err := f(i); err != nil {
			mu.Lock()
			if first == nil {
				first = err
			}
			mu.Unlock()
		}
	})
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}

// parallel calls f(0..n-1) on at most workers goroutines.
func parallel(n, workers int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(n, max(workers, 1)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				f(i)
			}
		})
	}
	wg.Wait()
}

// call is a setup or verification request: a JSON body in, a JSON body out
// (decoded into out when the status is 200).
func (e *engine) call(ctx context.Context, method, path, bearer string, body []byte, out any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, e.cfg.URL+path, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+bearer)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, raw, err
	}
	if resp.StatusCode == http.StatusOK && out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, raw, fmt.Errorf("decode %s %s: %w", method, path, err)
		}
	}
	return resp.StatusCode, raw, nil
}

func trim(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(b)
}

// load runs the measured phase (and the warm-up before it) and returns the
// measured phase's wall time.
func (e *engine) load(ctx context.Context) time.Duration {
	cfg := e.cfg
	e.start = time.Now()
	e.measureStart = e.start.Add(cfg.Warmup)
	if cfg.Duration > 0 {
		e.hasEnd = true
		e.end = e.measureStart.Add(cfg.Duration)
	}
	if cfg.OnLoad != nil {
		cfg.OnLoad(e.measureStart)
	}

	loadDone := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() {
		select {
		case <-ctx.Done():
			e.stop.Store(true)
			close(e.stopCh)
		case <-loadDone:
		}
	})
	collDone := make(chan struct{})
	bg.Go(func() { e.collect(collDone) })
	progDone := make(chan struct{})
	if cfg.Progress != nil {
		bg.Go(func() { e.progress(progDone) })
	}

	var wg sync.WaitGroup
	if cfg.Rate > 0 {
		slots := make(chan slot)
		for i := range cfg.Concurrency {
			w := e.newWorker(i)
			wg.Go(func() { w.open(slots) })
		}
		e.pace(slots)
		close(slots)
	} else {
		for i := range cfg.Concurrency {
			w := e.newWorker(i)
			wg.Go(func() { w.closed() })
		}
	}
	wg.Wait()
	finished := time.Now()
	close(loadDone)
	close(collDone)
	close(progDone)
	bg.Wait()
	return max(finished.Sub(e.measureStart), 0)
}

// collect closes one interval of the series per Config.Interval of the
// measured phase, and the last, partial one when the load is done.
func (e *engine) collect(done <-chan struct{}) {
	t := time.NewTimer(time.Until(e.measureStart))
	defer t.Stop()
	select {
	case <-t.C:
	case <-done:
		// Finished (or interrupted) inside the warm-up: nothing measured.
		if time.Now().Before(e.measureStart) {
			return
		}
	}
	step := e.cfg.Interval
	for k := 1; ; k++ {
		t.Reset(time.Until(e.measureStart.Add(time.Duration(k) * step)))
		select {
		case <-t.C:
			e.coll.flush((time.Duration(k) * step).Seconds(), step.Seconds())
		case <-done:
			now := time.Since(e.measureStart).Seconds()
			if length := now - (time.Duration(k-1) * step).Seconds(); length > 0.001 {
				e.coll.flush(now, length)
			}
			return
		}
	}
}

// worker is one request loop with its own read buffer and, with the
// built-in client, its own connection.
type worker struct {
	e      *engine
	shard  *shard
	buf    []byte
	conn   *rawConn
	target *target
}

func (e *engine) newWorker(i int) *worker {
	w := &worker{e: e, shard: e.shards[i%len(e.shards)], buf: make([]byte, 4096), target: e.targets[i%len(e.targets)]}
	if !e.cfg.StdClient {
		w.conn = &rawConn{dial: w.target.dial, timeout: e.cfg.Timeout}
	}
	return w
}

// closed sends a request, waits for its answer, and sends the next.
func (w *worker) closed() {
	defer w.close()
	e := w.e
	users := int64(len(e.users))
	for !e.stop.Load() {
		sent := time.Now()
		if e.hasEnd && !sent.Before(e.end) {
			return
		}
		measured := !sent.Before(e.measureStart)
		if measured && e.cfg.Requests > 0 && e.measured.Add(1) > e.cfg.Requests {
			return
		}
		u := int32((e.rr.Add(1) - 1) % users)
		o, sample := w.send(u, sent)
		o.latency = time.Since(sent)
		o.measured = measured
		w.shard.record(o, sample)
	}
}

// slot is one scheduled open-loop request.
type slot struct {
	at       time.Time
	user     int32
	measured bool
}

// open sends the slots the pacer hands it; latency counts from the slot's
// scheduled time, so time spent waiting for this worker is included.
func (w *worker) open(slots <-chan slot) {
	defer w.close()
	late := w.e.cfg.LateAfter
	for s := range slots {
		now := time.Now()
		lag := now.Sub(s.at)
		o, sample := w.send(s.user, now)
		o.latency = time.Since(s.at)
		o.lag, o.paced, o.late, o.measured = lag, true, lag > late, s.measured
		w.shard.record(o, sample)
	}
}

// pace hands slot i to a free worker at start + i/Rate. When no worker is
// free, the send blocks and the following slots go out as soon as workers
// free up, late, with their scheduled times: queueing, not skipping, so
// the latencies stay honest. It returns at the end of the run; slots
// scheduled before the end but not sent by then are counted as unsent.
func (e *engine) pace(slots chan<- slot) {
	interval := float64(time.Second) / e.cfg.Rate
	users := int64(len(e.users))
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var endC <-chan time.Time
	if e.hasEnd {
		end := time.NewTimer(time.Until(e.end))
		defer end.Stop()
		endC = end.C
	}
	var (
		measured int64
		woke     time.Time
	)
	// outOfTime records the measured slots from at to the end that were
	// never sent: with a backlog at the end they are reported, not
	// silently dropped.
	outOfTime := func(at time.Time) {
		if at.Before(e.measureStart) {
			at = e.measureStart
		}
		e.unsent = e.slotsBetween(at, e.end, interval)
		if e.cfg.Requests > 0 {
			e.unsent = min(e.unsent, e.cfg.Requests-measured)
		}
	}
	for i := int64(0); ; i++ {
		at := e.start.Add(time.Duration(float64(i) * interval))
		if e.hasEnd && !at.Before(e.end) {
			return
		}
		m := !at.Before(e.measureStart)
		if m && e.cfg.Requests > 0 && measured >= e.cfg.Requests {
			return
		}
		if d := time.Until(at); d > 0 {
			wake := at
			if interval < float64(paceTick) {
				// Several slots per tick: wake once per tick and send
				// every slot due by then (each keeps its scheduled time,
				// so the wait counts in its latency). Waking for every
				// slot cost the client three times the CPU per request
				// of the closed loop, taken from the server under test.
				wake = maxTime(at, woke.Add(paceTick))
			}
			if !e.sleepUntil(wake, timer) {
				return
			}
			woke = time.Now()
		}
		if e.hasEnd && !time.Now().Before(e.end) {
			outOfTime(at)
			return
		}
		select {
		case slots <- slot{at: at, user: int32(i % users), measured: m}:
		case <-endC:
			outOfTime(at)
			return
		case <-e.stopCh:
			return
		}
		if m {
			measured++
			e.measured.Store(measured)
		}
	}
}

// paceTick is how often the open-loop pacer wakes at most when slots are
// closer together than that.
const paceTick = 500 * time.Microsecond

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// slotsBetween counts the slots scheduled in [from, to).
func (e *engine) slotsBetween(from, to time.Time, interval float64) int64 {
	first := int64(float64(from.Sub(e.start)) / interval)
	if e.start.Add(time.Duration(float64(first) * interval)).Before(from) {
		first++
	}
	last := int64(float64(to.Sub(e.start)) / interval)
	if !e.start.Add(time.Duration(float64(last) * interval)).Before(to) {
		last--
	}
	return max(last-first+1, 0)
}

// sleepUntil waits for t, interruptibly, and reports whether the run goes
// on. Go's timers can fire up to a millisecond late when the process is
// otherwise idle (the poller waits in whole milliseconds), so the last
// stretch is slept with a nanosecond-resolution sleep instead.
func (e *engine) sleepUntil(t time.Time, timer *time.Timer) bool {
	for {
		d := time.Until(t)
		switch {
		case d <= 0:
			return !e.stop.Load()
		case d > 2*time.Millisecond:
			timer.Reset(d - time.Millisecond)
			select {
			case <-timer.C:
			case <-e.stopCh:
				return false
			}
		default:
			preciseSleep(d)
		}
	}
}

func (w *worker) close() {
	if w.conn != nil {
		w.conn.close()
	}
}

// send makes one create request as user u; now is the send time.
func (w *worker) send(u int32, now time.Time) (outcome, string) {
	var status, n int
	var retryAfter bool
	var err error
	if w.conn != nil {
		status, n, err = w.conn.do(w.target.reqs[u], w.buf, now)
		retryAfter = w.conn.retryAfter
	} else {
		status, n, retryAfter, err = w.sendStd(u)
	}
	if err != nil {
		return outcome{user: u, errKind: classify(err)}, err.Error()
	}
	o := outcome{user: u, status: status, retryAfter: retryAfter}
	if status == http.StatusOK && w.e.keepIDs {
		o.id = sessionID(w.buf[:n])
	}
	return o, ""
}

// sendStd makes the request with net/http (Config.StdClient). The request
// is built by hand around the user's prepared headers and goes straight to
// the transport (no http.Client: no redirects, no cookie jar, no
// per-request timer); the transport's dial and response-header timeouts
// bound it.
func (w *worker) sendStd(u int32) (status, n int, retryAfter bool, err error) {
	e := w.e
	req := &http.Request{
		Method:        http.MethodPost,
		URL:           w.target.url,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        e.users[u].header,
		Body:          io.NopCloser(bytes.NewReader(e.body)),
		GetBody:       e.getBody,
		ContentLength: int64(len(e.body)),
		Host:          w.target.url.Host,
	}
	resp, err := e.rt.RoundTrip(req)
	if err != nil {
		return 0, 0, false, err
	}
	n, err = readInto(resp.Body, w.buf)
	resp.Body.Close()
	if err != nil {
		return 0, 0, false, fmt.Errorf("reading the body: %w", err)
	}
	return resp.StatusCode, n, resp.Header.Get("Retry-After") != "", nil
}

// getBody lets the transport resend a request on a fresh connection when
// a kept-alive one turned out to be closed before anything was written.
func (e *engine) getBody() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(e.body)), nil
}

// readInto reads the body to its end, keeping what fits in buf; reading to
// EOF is what returns the connection to the pool.
func readInto(r io.Reader, buf []byte) (int, error) {
	n := 0
	for {
		if n == len(buf) {
			_, err := io.Copy(io.Discard, r)
			return n, err
		}
		m, err := r.Read(buf[n:])
		n += m
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

var idField = []byte(`"id":"`)

// sessionID cuts the id out of a Session body without a JSON decoder
// (Tally writes compact JSON with "id" first). A body in another shape
// falls back to the decoder.
func sessionID(body []byte) string {
	if i := bytes.Index(body, idField); i >= 0 {
		rest := body[i+len(idField):]
		if j := bytes.IndexByte(rest, '"'); j > 0 && bytes.IndexByte(rest[:j], '\\') < 0 {
			return string(rest[:j])
		}
	}
	var s struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(body, &s)
	return s.ID
}

// classify names a transport error's class for the summary.
func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection_refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection_reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no_local_ports"
	}
	return "other"
}

// allIDs gathers the admitted sessions of every shard (after the load).
func (e *engine) allIDs() []admittedID {
	var ids []admittedID
	for _, s := range e.shards {
		s.mu.Lock()
		ids = append(ids, s.ids...)
		s.mu.Unlock()
	}
	return ids
}

// result turns the shards into the Result.
func (e *engine) result(started time.Time, elapsed time.Duration, interrupted bool) *Result {
	cfg := e.cfg
	t := mergeShards(e.shards)
	r := &Result{
		URL: cfg.URL, URLs: cfg.URLs, Path: cfg.Path, Mode: cfg.mode(), Users: cfg.Users, Hot: cfg.Hot,
		Plan: cfg.Plan, UserPrefix: cfg.UserPrefix, Concurrency: cfg.Concurrency, Rate: cfg.Rate,
		StartedAt: started.UTC().Truncate(time.Millisecond),
		WarmupS:   cfg.Warmup.Seconds(), DurationS: elapsed.Seconds(),
		Admitted: t.admitted, Rejected: t.rejected, Errors: t.errors,
		Requests:                t.admitted + t.rejected + t.errors,
		Statuses:                t.statuses,
		ErrorsByStatus:          t.errorsByStatus,
		TransportErrors:         t.transportCounts,
		TransportErrorSamples:   t.transportSamples,
		LatencyAdmitted:         summarize(t.adm),
		LatencyRejected:         summarize(t.rej),
		Series:                  e.coll.all(),
		Server500:               t.server500,
		Interrupted:             interrupted,
		AdmittedHist:            t.adm,
		RejectedHist:            t.rej,
		Violations:              []string{},
		LatencyByStatus:         map[string]Latency{},
		LatencyByStatusFromSend: map[string]Latency{},
		RetryAfter:              t.retryAfter,
		StatusHists:             t.byStatus,
		MeasureStart:            e.measureStart,
		IntervalS:               cfg.Interval.Seconds(),
		IntervalHists:           e.coll.hists(),
	}
	for k, h := range t.byStatus {
		r.LatencyByStatus[k] = summarize(h)
	}
	for k, h := range t.sentByStatus {
		r.LatencyByStatusFromSend[k] = summarize(h)
	}
	if s := elapsed.Seconds(); s > 0 {
		r.RequestsPerS = float64(r.Requests) / s
		r.AdmittedPerS = float64(r.Admitted) / s
		r.RejectedPerS = float64(r.Rejected) / s
		r.ErrorsPerS = float64(r.Errors) / s
	}
	if cfg.Rate > 0 {
		lag := summarize(t.lag)
		r.SendLag = &lag
		r.Late = t.late
		r.Unsent = e.unsent
		r.LateAfterMs = float64(cfg.LateAfter) / float64(time.Millisecond)
	}
	return r
}
