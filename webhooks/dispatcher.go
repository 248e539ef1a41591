package webhooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// Defaults of Options.
const (
	DefaultTimeout     = 5 * time.Second
	DefaultHorizon     = 24 * time.Hour
	DefaultConcurrency = 8
	DefaultPoll        = 250 * time.Millisecond
	DefaultMinBackoff  = time.Second
	DefaultMaxBackoff  = 10 * time.Minute
)

const (
	// maxDrain bounds how much of an answer's body is read. It is read
	// (and discarded) so that the connection can be reused; a receiver
	// that answers more is cut off rather than read into memory.
	maxDrain = 64 << 10
	// leaseSlack is added to the two attempt timeouts a claim's lease
	// covers, for the claim and the settlement's own round trips.
	leaseSlack = 5 * time.Second
	// storeRetry is the pause after the store failed a claim: a store
	// that is down is not polled at the idle rate.
	storeRetry = time.Second
	// depthEvery is how often the outbox depth gauges are refreshed.
	depthEvery = 5 * time.Second
	// settleTimeout bounds one settlement, which outlives Run's context
	// so that an attempt made is recorded.
	settleTimeout = 5 * time.Second
	// maxErrorLen bounds the error text stored with an attempt.
	maxErrorLen = 200
)

// Options configures a Dispatcher.
type Options struct {
	// Outbox is the store the alerts are delivered from. Required.
	Outbox persistence.Outbox
	// URL is the receiver's absolute http(s) URL. Required.
	URL string
	// Secret is the signing key (ParseSecret of the whsec_ secret): 24 to
	// 64 bytes. Required.
	Secret []byte
	// Client sends the requests; nil means a client of its own that
	// times out after Timeout and follows no redirect (a redirect is
	// answered as the receiver's failure, so that a signed alert goes
	// nowhere the operator did not configure).
	Client *http.Client
	// Timeout bounds one attempt, answer's body included; zero means
	// DefaultTimeout.
	Timeout time.Duration
	// Horizon is how long after an alert occurred its delivery is
	// retried: an attempt that fails when the next one would come later
	// dead-letters it (status failed). Zero means DefaultHorizon.
	Horizon time.Duration
	// Concurrency is how many attempts run at once; zero means
	// DefaultConcurrency.
	Concurrency int
	// Poll is how often the outbox is asked for due deliveries when the
	// last ask found no more; zero means DefaultPoll. Notify asks at once.
	Poll time.Duration
	// MinBackoff and MaxBackoff set the wait before a failed attempt is
	// retried: MinBackoff after the first, doubling with each attempt up
	// to MaxBackoff, of which a random half to all is waited (jitter, so
	// that deliveries failed together do not come back together). A
	// Retry-After answer is honoured, within MinBackoff and MaxBackoff.
	// Zero means DefaultMinBackoff and DefaultMaxBackoff.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// Logger receives failures, each distinct one once; nil means
	// slog.Default().
	Logger *slog.Logger
	// Registry, when set, registers the dispatcher's metrics.
	Registry prometheus.Registerer
	// Now is the clock of claims, settlements and signatures; nil means
	// time.Now.
	Now func() time.Time
	// Yield, when set, reports whether the process is busy admitting:
	// then deliveries are claimed once per Poll, as many as there are free
	// slots, rather than as soon as an attempt ends, so that they take
	// little of what admissions need (each delivery costs the database a
	// claim and a settlement, and the process an HTTP exchange) and catch
	// up when the rush is over. They never stop: at the defaults, up to
	// 32 a second go out however busy the process is.
	Yield func() bool
}

// Dispatcher delivers the outbox's alerts as signed webhooks (see the
// package documentation). Create it with New, run it with Run.
type Dispatcher struct {
	outbox      persistence.Outbox
	url         string
	key         []byte
	client      *http.Client
	timeout     time.Duration
	horizon     time.Duration
	concurrency int
	poll        time.Duration
	minBackoff  time.Duration
	maxBackoff  time.Duration
	log         *slog.Logger
	now         func() time.Time
	yield       func() bool
	m           *metrics
	exported    bool // metrics registered: the depth gauges are refreshed

	// Tests shorten these.
	storeRetry time.Duration
	depthEvery time.Duration

	wake    chan struct{} // Notify; capacity 1
	running atomic.Bool
	errs    errLog
}

// New checks opts and returns a Dispatcher; it starts nothing.
func New(opts Options) (*Dispatcher, error) {
	if opts.Outbox == nil {
		return nil, errors.New("webhooks: no outbox")
	}
	u, err := url.Parse(opts.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// The URL is not quoted: it may carry a token in its query.
		return nil, errors.New("webhooks: the receiver's URL is not an absolute http(s) URL")
	}
	if err := checkKeyLength(len(opts.Secret)); err != nil {
		return nil, fmt.Errorf("webhooks: %w", err)
	}
	for _, v := range []struct {
		name string
		d    time.Duration
	}{{"Timeout", opts.Timeout}, {"Horizon", opts.Horizon}, {"Poll", opts.Poll}, {"MinBackoff", opts.MinBackoff}, {"MaxBackoff", opts.MaxBackoff}} {
		if v.d < 0 {
			return nil, fmt.Errorf("webhooks: %s is negative (%s)", v.name, v.d)
		}
	}
	if opts.Concurrency < 0 {
		return nil, fmt.Errorf("webhooks: Concurrency is negative (%d)", opts.Concurrency)
	}
	d := &Dispatcher{
		outbox:      opts.Outbox,
		url:         opts.URL,
		key:         bytes.Clone(opts.Secret),
		client:      opts.Client,
		timeout:     orDefault(opts.Timeout, DefaultTimeout),
		horizon:     orDefault(opts.Horizon, DefaultHorizon),
		concurrency: orDefault(opts.Concurrency, DefaultConcurrency),
		poll:        orDefault(opts.Poll, DefaultPoll),
		minBackoff:  orDefault(opts.MinBackoff, DefaultMinBackoff),
		maxBackoff:  orDefault(opts.MaxBackoff, DefaultMaxBackoff),
		log:         opts.Logger,
		now:         opts.Now,
		yield:       opts.Yield,
		storeRetry:  storeRetry,
		depthEvery:  depthEvery,
		wake:        make(chan struct{}, 1),
		exported:    opts.Registry != nil,
	}
	if d.minBackoff > d.maxBackoff {
		return nil, fmt.Errorf("webhooks: MinBackoff (%s) is above MaxBackoff (%s)", d.minBackoff, d.maxBackoff)
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.now == nil {
		d.now = time.Now
	}
	if d.client == nil {
		d.client = newClient(d.timeout, d.concurrency)
	}
	if d.m, err = newMetrics(opts.Registry); err != nil {
		return nil, err
	}
	return d, nil
}

func orDefault[T time.Duration | int](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// newClient is the client of Options.Client nil: its own transport, which
// keeps one idle connection per concurrent attempt (the default keeps 2
// per host, and the receiver is one host), and no redirects.
func newClient(timeout time.Duration, conns int) *http.Client {
	var tr *http.Transport
	if def, ok := http.DefaultTransport.(*http.Transport); ok {
		tr = def.Clone()
	} else {
		tr = &http.Transport{Proxy: http.ProxyFromEnvironment}
	}
	tr.MaxIdleConnsPerHost = conns
	return &http.Client{
		Transport: tr,
		Timeout:   timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// Notify makes Run ask the outbox for due deliveries now instead of at its
// next poll, e.g. after an alert was written. It never blocks: a wake-up
// already pending covers this one.
func (d *Dispatcher) Notify() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// lease is how long a claim lasts: two attempts' time and some, so that a
// claim of a running attempt never ends (and the delivery is never handed
// to another dispatcher while this one is still sending it).
func (d *Dispatcher) lease() time.Duration { return 2*d.timeout + leaseSlack }

// Run delivers until ctx ends, then waits for the attempts in flight to
// end and be settled (each bounded by Timeout, its settlement by a few
// seconds more) and returns nil. Store failures do not end it: they are
// logged and the claim is tried again. It returns an error only when Run
// is already running.
func (d *Dispatcher) Run(ctx context.Context) error {
	if !d.running.CompareAndSwap(false, true) {
		return errors.New("webhooks: the dispatcher is already running")
	}
	defer d.running.Store(false)

	var wg sync.WaitGroup
	defer wg.Wait()
	if d.exported {
		wg.Go(func() { d.watchDepth(ctx) })
	}

	// Attempts outlive ctx, up to their Timeout: the receiver may already
	// have acted on one, and settling it spares it a duplicate after the
	// lease.
	attemptCtx := context.WithoutCancel(ctx)
	// Each attempt sends how it went on finished; at most concurrency
	// attempts are unaccounted for, so sends never block.
	finished := make(chan string, d.concurrency)
	inflight := 0
	tick := time.NewTicker(d.poll)
	defer tick.Stop()
	var down receiverHealth

	// claim is true when the outbox may have due deliveries the loop has
	// not asked for: at start, after a poll tick or a Notify, after a
	// claim that filled every free slot, and after a delivery (the
	// user's next alert is due now). Claims wait for a quarter of the
	// slots to be free (or none to be busy): a claim and its commit per
	// delivery would cost the database as much as the deliveries.
	claim := true
	ticked := true // a poll tick has passed since the last claim
	minClaim := max(1, d.concurrency/4)
	for ctx.Err() == nil {
		limit := down.slots(d.concurrency, d.now())
		least := min(minClaim, limit)
		if d.yield != nil && d.yield() && !ticked {
			// Busy admitting: claims wait for the next poll tick,
			// whatever finished meanwhile, so that deliveries take a
			// claim's batch per poll while admissions need the machine.
			least = limit + 1
		}
		if free := limit - inflight; claim && free > 0 && (free >= least || (inflight == 0 && least <= limit)) {
			ticked = false
			ds, err := d.outbox.ClaimDeliveries(ctx, d.now(), d.lease(), free)
			if err != nil {
				if ctx.Err() != nil {
					break
				}
				d.errs.failed(d.log, "claim", "webhooks: the outbox failed to hand out deliveries; retrying", err.Error())
				inflight -= d.pause(ctx, finished)
				continue
			}
			d.errs.recovered(d.log, "claim", "webhooks: the outbox hands out deliveries again")
			for _, del := range ds {
				inflight++
				wg.Go(func() { finished <- d.deliver(attemptCtx, del) })
			}
			claim = len(ds) == free
			if claim && inflight < limit {
				continue
			}
		}
		select {
		case <-ctx.Done():
		case <-d.wake:
			claim = true
		case <-tick.C:
			claim, ticked = true, true
		case outcome := <-finished:
			inflight--
			down.observe(outcome, d.now(), d.minBackoff, d.maxBackoff)
			claim = claim || outcome == outcomeDelivered
		}
	}
	return nil
}

// receiverHealth is the dispatcher's view of the receiver as a whole.
// Each alert has its own retry schedule, but when the receiver is down
// every due alert would fail in turn, each costing a claim, an attempt
// and a settlement: thousands a second, for nothing, on the machine that
// admits. After failDown attempts in a row fail with no answer worth
// keeping (network errors, timeouts, 5xx, 429), the receiver counts as
// down: nothing is sent until a pause (growing like an alert's backoff)
// has passed, then one attempt at a time probes it, and the first
// delivery, or a final answer (it is up, refusing one alert), ends it.
type receiverHealth struct {
	failures  int           // retryable failures in a row
	pause     time.Duration // the current pause; doubles with each failed probe
	downUntil time.Time     // while down: nothing is claimed before this
}

// failDown is how many retryable failures in a row mean the receiver is
// down rather than one alert unlucky.
const failDown = 3

// slots is how many attempts may run now: all of them while the receiver
// answers, none while it pauses, one (a probe) after.
func (h *receiverHealth) slots(concurrency int, now time.Time) int {
	switch {
	case h.failures < failDown:
		return concurrency
	case now.Before(h.downUntil):
		return 0
	default:
		return 1
	}
}

// observe takes an attempt's outcome. Attempts that were in flight when
// the receiver went down fail during the pause and do not lengthen it;
// a probe that fails doubles it, up to maxBackoff.
func (h *receiverHealth) observe(outcome string, now time.Time, minBackoff, maxBackoff time.Duration) {
	if outcome != outcomeRetry {
		*h = receiverHealth{}
		return
	}
	h.failures++
	switch {
	case h.failures < failDown:
		return
	case h.failures == failDown:
		h.pause = minBackoff
	case now.Before(h.downUntil):
		return
	default:
		h.pause = min(2*h.pause, maxBackoff)
	}
	h.downUntil = now.Add(h.pause)
}

// pause waits storeRetry, or until ctx ends, and returns how many attempts
// finished meanwhile.
func (d *Dispatcher) pause(ctx context.Context, finished <-chan string) int {
	t := time.NewTimer(d.storeRetry)
	defer t.Stop()
	n := 0
	for {
		select {
		case <-ctx.Done():
			return n
		case <-t.C:
			return n
		case <-finished:
			n++
		}
	}
}

// result is how one attempt went.
type result struct {
	ok         bool          // 2xx
	final      bool          // failed for good: not retried
	status     int           // the HTTP status; 0 without an answer
	err        string        // why it failed
	retryAfter time.Duration // the receiver's Retry-After, when hasRetry
	hasRetry   bool
}

// deliver makes one attempt of del and settles it. It returns the
// attempt's outcome (outcomeDelivered, outcomeRetry, outcomeDead).
func (d *Dispatcher) deliver(ctx context.Context, del domain.Delivery) string {
	r := d.attempt(ctx, del)
	at := d.now()
	s := persistence.Settlement{ID: del.ID, Claim: del.Claim, At: at, HTTPStatus: r.status, Error: r.err}
	outcome := outcomeDelivered
	switch {
	case r.ok:
		s.Status = domain.DeliveryDelivered
	case r.final:
		s.Status, outcome = domain.DeliveryFailed, outcomeDead
	default:
		next := at.Add(d.backoff(del.Attempts, r))
		if deadline := del.OccurredAt.Add(d.horizon); next.After(deadline) {
			s.Status, outcome = domain.DeliveryFailed, outcomeDead
			s.Error = clip(fmt.Sprintf("%s; gave up after %d attempts: the retry horizon (%s after the alert) has passed", r.err, del.Attempts, d.horizon))
		} else {
			s.Status, s.NextAttemptAt, outcome = domain.DeliveryPending, next, outcomeRetry
		}
	}

	d.m.outcomes.WithLabelValues(outcome).Inc()
	log := d.log.With("webhook_id", del.WebhookID(), "user_id", del.UserID, "attempts", del.Attempts)
	switch outcome {
	case outcomeDelivered:
		d.m.lag.Observe(max(at.Sub(del.OccurredAt), 0).Seconds())
		d.errs.recovered(d.log, "receiver", "webhooks: the receiver accepts deliveries again")
	case outcomeRetry:
		d.errs.failed(d.log, "receiver", "webhooks: delivery failed; it will be retried", r.err)
	case outcomeDead:
		log.Warn("webhooks: delivery dead-lettered", "http_status", r.status, "error", s.Error)
	}

	sctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	settled, err := d.outbox.SettleDelivery(sctx, s)
	switch {
	case err != nil:
		// Nothing is lost: the claim's lease ends and the delivery is
		// attempted again (the receiver deduplicates by webhook-id).
		d.errs.failed(d.log, "settle", "webhooks: the outbox failed to record an attempt; the delivery will be attempted again after its lease", err.Error())
	case !settled:
		log.Info("webhooks: attempt not recorded: its claim is no longer the delivery's (lease ended or changed by an admin)", "status", s.Status)
	default:
		d.errs.recovered(d.log, "settle", "webhooks: the outbox records attempts again")
	}
	return outcome
}

// attempt sends del once.
func (d *Dispatcher) attempt(ctx context.Context, del domain.Delivery) result {
	body, err := Payload(del.Alert)
	if err != nil {
		// The row cannot become valid by waiting.
		return result{final: true, err: clip(err.Error())}
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.url, bytes.NewReader(body))
	if err != nil {
		return result{err: clip("building the request: " + err.Error())}
	}
	setHeaders(req.Header, d.key, del.WebhookID(), d.now(), body)

	start := time.Now() // a measurement, not a decision: the real clock
	resp, err := d.client.Do(req)
	if err != nil {
		d.m.duration.Observe(time.Since(start).Seconds())
		return result{err: d.describe(err)}
	}
	// Drained, bounded, so that the connection is reused; a body cut
	// short by the timeout still leaves the status, which is the answer.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	_ = resp.Body.Close()
	d.m.duration.Observe(time.Since(start).Seconds())
	return classify(resp, d.now())
}

// classify turns the receiver's answer into a result.
func classify(resp *http.Response, now time.Time) result {
	code := resp.StatusCode
	r := result{status: code}
	switch {
	case code >= 200 && code < 300:
		r.ok = true
		return r
	case code >= 300 && code < 400:
		r.err = fmt.Sprintf("receiver answered %d (redirects are not followed)", code)
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		r.err = fmt.Sprintf("receiver answered %d", code)
	case code >= 400:
		// The receiver refused this request; sending it again cannot
		// change its mind (a wrong URL or secret is fixed by the
		// operator, who can then retry the dead letters).
		r.final = true
		r.err = fmt.Sprintf("receiver refused it: answered %d", code)
		return r
	default:
		r.err = fmt.Sprintf("receiver answered %d", code)
	}
	r.retryAfter, r.hasRetry = parseRetryAfter(resp.Header.Get("Retry-After"), now)
	return r
}

// parseRetryAfter reads a Retry-After value: delay-seconds or an
// HTTP-date (RFC 9110, 10.2.3). A date in the past is no delay.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseUint(v, 10, 64); err == nil {
		// Beyond a year it is capped anyway (by MaxBackoff); the bound
		// keeps the multiplication from overflowing.
		return time.Duration(min(secs, 366*24*3600)) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// backoff is the wait before the attempt after the attempts-th: the
// receiver's Retry-After when it gave one, within MinBackoff and
// MaxBackoff; else MinBackoff doubled per attempt up to MaxBackoff, with
// equal jitter: the wait is drawn between half of that and all of it.
// Equal jitter keeps the wait growing while spreading deliveries that
// failed together.
func (d *Dispatcher) backoff(attempts int, r result) time.Duration {
	if r.hasRetry {
		// Floored too, so that "Retry-After: 0" cannot spin a delivery.
		return min(max(r.retryAfter, d.minBackoff), d.maxBackoff)
	}
	base := d.minBackoff
	for i := 1; i < attempts && base < d.maxBackoff; i++ {
		base *= 2
	}
	base = min(base, d.maxBackoff)
	half := base / 2
	return half + rand.N(base-half+1)
}

// describe is the short text of an attempt that got no answer.
func (d *Dispatcher) describe(err error) string {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Sprintf("timeout after %s", d.timeout)
	}
	// url.Error's text starts with the method and the whole URL, which
	// may carry a token and says nothing the operator does not know.
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return clip(err.Error())
}

// clip bounds an error text to maxErrorLen bytes, on a rune boundary.
func clip(s string) string {
	if len(s) <= maxErrorLen {
		return s
	}
	cut := maxErrorLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// watchDepth refreshes the outbox depth gauges every depthEvery until ctx
// ends.
func (d *Dispatcher) watchDepth(ctx context.Context) {
	t := time.NewTicker(d.depthEvery)
	defer t.Stop()
	for {
		d.refreshDepth(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (d *Dispatcher) refreshDepth(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, d.depthEvery)
	defer cancel()
	n, oldest, err := d.outbox.OutboxDepth(ctx)
	if err != nil {
		if ctx.Err() == nil {
			d.errs.failed(d.log, "depth", "webhooks: the outbox failed to report its depth", err.Error())
		}
		return
	}
	d.errs.recovered(d.log, "depth", "webhooks: the outbox reports its depth again")
	d.m.pending.Set(float64(n))
	age := 0.0
	if !oldest.IsZero() {
		age = max(d.now().Sub(oldest), 0).Seconds()
	}
	d.m.oldest.Set(age)
}

// errLog logs each distinct failure of one source (the outbox's claims,
// the receiver…) once, and its recovery once, so that a store or receiver
// down for an hour writes a few lines rather than one per poll or attempt.
type errLog struct {
	mu   sync.Mutex
	last map[string]string // source → its last failure's text
}

func (e *errLog) failed(log *slog.Logger, source, msg, text string) {
	e.mu.Lock()
	if e.last == nil {
		e.last = make(map[string]string)
	}
	seen := e.last[source] == text
	e.last[source] = text
	e.mu.Unlock()
	if !seen {
		log.Warn(msg, "error", text)
	}
}

func (e *errLog) recovered(log *slog.Logger, source, msg string) {
	e.mu.Lock()
	_, was := e.last[source]
	delete(e.last, source)
	e.mu.Unlock()
	if was {
		log.Info(msg)
	}
}
