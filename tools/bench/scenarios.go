package bench

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tally-dev/tally/tools/load"
	"github.com/tally-dev/tally/transport"
)

// The overload suite (`--suite overload`, `make overload`): what Tally
// does when it is offered more than it can take, restarted under load,
// held up by slow clients, or sent a create Postgres cannot store. Each
// scenario is run against whatever Tally the branch builds; the figures
// are the acceptance figures of load shedding (TALLY_MAX_IN_FLIGHT,
// TALLY_MAX_USER_IN_FLIGHT), slow-client protection
// (TALLY_HTTP_READ_TIMEOUT, TALLY_MAX_CONNS), poison isolation in the group
// commit, and batched activation at start-up. Nothing here asserts that a
// feature exists: a Tally without it runs the same scenarios and shows
// the figures it has.
//
// Everything is relative to the capacity measured first (the max of
// admitted creates/s over suiteUsers enterprise users), so that the suite
// means the same on a faster or a busier machine.

// overloadPhases are the suite's phases, in the order they run.
var overloadPhases = []string{"capacity", "overload", "vegeta", "coldstart", "slowclients", "poison"}

// The suite's fixed shapes and targets (docs/performance.md, "Targets").
const (
	suiteUsers      = 2000
	overloadFactors = "2,3" // multiples of capacity offered, in order
	normalShare     = 0.5   // the "normal" rate: half the capacity
	window          = 250 * time.Millisecond
	coldWindow      = 5 * time.Second // "p99 in the first 5 s after ready"
	poisonUsers     = 30
	poisonCreates   = 600
	poisonBody      = `{"title":"x\u0000","language":"en-US","stt_provider":"google"}`
	vegetaFactor    = 2
	// The targets the suite checks its figures against.
	targetGoodputPct  = 90
	targetServedP99   = 250 // ms
	target503P99      = 20  // ms
	targetRSSRatio    = 2
	targetRecoveryS   = 2
	targetColdP99     = 100 // ms
	targetSlowRisePct = 20
	slowCloseGrace    = time.Second // past TALLY_HTTP_READ_TIMEOUT
	sampleEvery       = 250 * time.Millisecond
)

// OverloadRun is one offered multiple of capacity and the tail after it.
type OverloadRun struct {
	Factor      float64      `json:"factor"`
	Rate        float64      `json:"offered_rate"`
	Overload    *load.Result `json:"overload"`
	Tail        *load.Result `json:"tail"`
	GoodputPerS float64      `json:"goodput_per_s"`
	GoodputPct  float64      `json:"goodput_pct_of_capacity"`
	PeakRSSKB   int64        `json:"peak_rss_kb"`
	// TailGapS is how long after the overload's last slot the tail's first
	// slot was scheduled (the two are separate load runs, started one
	// after the other).
	TailGapS   float64 `json:"tail_gap_s"`
	RecoveryS  float64 `json:"recovery_s"`
	Recovered  bool    `json:"recovered"`
	ThresholdP float64 `json:"recovery_threshold_p99_ms"`
	// TailP99s are the tail's per-interval p99s of admitted creates (ms),
	// what the recovery time is read from.
	TailP99s []float64 `json:"tail_interval_p99_ms"`
}

// VegetaRun is the cross-check of the 2× overload with vegeta.
type VegetaRun struct {
	Rate          float64            `json:"offered_rate"`
	Report        *vegetaReport      `json:"report"`
	P99ByCode     map[string]float64 `json:"p99_ms_by_code"`
	RetryAfter    map[string]int64   `json:"retry_after_by_code"`
	GoodputPerS   float64            `json:"goodput_per_s"`
	GoodputPct    float64            `json:"goodput_pct_of_capacity"`
	SkippedReason string             `json:"skipped,omitempty"`
	Command       []string           `json:"command,omitempty"`
}

// ColdRun is the restart under load.
type ColdRun struct {
	Rate          float64      `json:"rate"`
	Load          *load.Result `json:"load"`
	SteadyP99Ms   float64      `json:"steady_p99_ms"`
	ColdP99Ms     float64      `json:"cold_p99_ms"`
	ColdAdmitted  int64        `json:"cold_admitted"`
	DowntimeS     float64      `json:"sigterm_to_ready_s"`
	StopS         float64      `json:"sigterm_to_exit_s"`
	ConnErrors    int64        `json:"connection_errors"`
	OtherStatuses int64        `json:"other_statuses"`
}

// SlowRun is the slow-clients scenario.
type SlowRun struct {
	Rate        float64        `json:"rate"`
	ReadTimeout string         `json:"read_timeout"`
	Without     *load.Result   `json:"without"`
	With        *load.Result   `json:"with"`
	Stalled     StalledSummary `json:"stalled"`
}

// PoisonRun is the poison-isolation scenario.
type PoisonRun struct {
	Innocents     *load.Result `json:"innocents"`
	Poisoner      *load.Result `json:"poisoner"`
	Innocent5xx   int64        `json:"innocent_5xx"`
	InnocentOther int64        `json:"innocent_transport_errors"`
	PoisonNot422  int64        `json:"poison_not_422"`
}

// suiteEnv is what every child of the suite gets on top of tallyEnv:
// --max-in-flight, when given (otherwise Tally's default).
func (r *runner) suiteEnv(extra ...string) []string {
	env := r.tallyEnv(mainIdle, "")
	if r.opts.MaxInFlight > 0 {
		env = append(env, "TALLY_MAX_IN_FLIGHT="+strconv.Itoa(r.opts.MaxInFlight))
	}
	return append(env, extra...)
}

// suiteTally starts the suite's main Tally child on first use: as shipped
// (Go's default GC; RSS is one of the figures), with suiteEnv.
func (r *runner) suiteTally(ctx context.Context, p *Phase) (*child, error) {
	return r.sharedTally(ctx, p, func() []string { return r.suiteEnv() })
}

// loadOutcome is what a load run in the background ended with.
type loadOutcome struct {
	res *load.Result
	err error
}

// startLoad runs cfg in the background, for scenarios that act on Tally
// while the load goes on; the channel receives its outcome once.
func startLoad(ctx context.Context, cfg load.Config) <-chan loadOutcome {
	done := make(chan loadOutcome, 1)
	go func() {
		res, err := load.Run(ctx, cfg)
		done <- loadOutcome{res, err}
	}()
	return done
}

// suiteLoad is an open-loop load over the suite's users at rate.
func (r *runner) suiteLoad(url, prefix string, rate float64, d time.Duration) load.Config {
	return load.Config{
		URL: url, Secret: r.secret, AdminToken: r.admin, Users: suiteUsers, Plan: "enterprise",
		UserPrefix: prefix, NoProvision: true, NoVerify: true, Rate: rate, Duration: d,
		Concurrency: highWorkers, Interval: window, KeepIntervalHists: true, Log: r.stderr, Progress: r.progress,
	}
}

// needCapacity is the capacity the other scenarios are relative to.
func (r *runner) needCapacity() (float64, error) {
	if r.capacity > 0 {
		return r.capacity, nil
	}
	return 0, errors.New("needs the capacity: run the capacity phase too (--only capacity,…) or give --capacity N")
}

// provision puts users users under prefix on enterprise (and makes their
// actors live) with one create each: the suite's users, the latency
// phase's.
func (r *runner) provision(ctx context.Context, p *Phase, url, prefix string, users int) error {
	cfg := load.Config{URL: url, Secret: r.secret, AdminToken: r.admin, Users: users, Plan: "enterprise",
		UserPrefix: prefix, Requests: int64(users), Concurrency: baseWorkers, NoVerify: true, Log: r.stderr}
	_, err := r.runLoad(ctx, p, "provision "+strconv.Itoa(users)+" enterprise users", cfg)
	return err
}

// ---- capacity ----

func (r *runner) phaseCapacity(ctx context.Context, p *Phase) error {
	c, err := r.suiteTally(ctx, p)
	if err != nil {
		return err
	}
	r.suitePrefix = "ovl-" + randomHex(4)
	if err := r.provision(ctx, p, c.url(), r.suitePrefix, suiteUsers); err != nil {
		return err
	}
	sampler := startRSSSampler(c.pid(), sampleEvery)
	var res *load.Result
	if r.opts.Capacity > 0 {
		// Given: checked to be sustainable (open loop at that rate), and
		// the RSS at capacity read while it runs.
		cfg := r.suiteLoad(c.url(), r.suitePrefix, r.opts.Capacity, r.opts.Duration)
		cfg.Warmup = r.opts.Warmup
		res, err = r.runLoad(ctx, p, fmt.Sprintf("open loop at the given capacity %.0f/s", r.opts.Capacity), cfg)
	} else {
		// The closed loop's max: 256 workers keep Tally's group commit fed
		// (the bench's many-users phase found 256 better than 64).
		cfg := r.suiteLoad(c.url(), r.suitePrefix, 0, r.opts.Duration)
		cfg.Warmup = r.opts.Warmup
		res, err = r.runLoad(ctx, p, fmt.Sprintf("closed loop, %d workers", highWorkers), cfg)
	}
	r.capRSSKB = sampler.Stop()
	if err != nil {
		return err
	}
	r.capacityRun = res
	r.capacity = res.AdmittedPerS
	if r.opts.Capacity > 0 {
		r.capacity = r.opts.Capacity
		if res.AdmittedPerS < 0.95*r.opts.Capacity {
			r.note("capacity: --capacity %.0f/s given, but only %.0f admitted/s were served at that rate: the figures relative to it are optimistic", r.opts.Capacity, res.AdmittedPerS)
		}
	}
	p.Details = map[string]any{"capacity_per_s": r.capacity, "rss_kb": r.capRSSKB, "given": r.opts.Capacity > 0}
	r.logf("capacity: %.0f admitted/s (p99 %.2f ms), VmRSS %d MB", r.capacity, res.LatencyAdmitted.P99Ms, r.capRSSKB>>10)
	return nil
}

// ---- overload ----

func (r *runner) phaseOverload(ctx context.Context, p *Phase) error {
	capacity, err := r.needCapacity()
	if err != nil {
		return err
	}
	c, err := r.suiteTally(ctx, p)
	if err != nil {
		return err
	}
	normal := float64(int(capacity * normalShare))
	// The normal p99: what the tails have to come back to. After a
	// warm-up: the closed loop of the capacity phase leaves a backlog
	// (Postgres writing out what it committed) that is not "normal".
	bcfg := r.suiteLoad(c.url(), r.suitePrefix, normal, r.opts.Duration)
	bcfg.Warmup = r.opts.Warmup
	base, err := r.runLoad(ctx, p, fmt.Sprintf("normal rate %.0f/s before the overload", normal), bcfg)
	if err != nil {
		return err
	}
	r.normal = base
	r.logf("normal rate %.0f/s: p99 %.2f ms", normal, base.LatencyAdmitted.P99Ms)
	var factors []float64
	for _, f := range strings.Split(overloadFactors, ",") {
		x, _ := strconv.ParseFloat(f, 64)
		factors = append(factors, x)
	}
	for _, f := range factors {
		time.Sleep(2 * time.Second) // let the previous tail's last answers go
		run, err := r.overloadOnce(ctx, p, c, f, capacity, normal, base.LatencyAdmitted.P99Ms)
		if err != nil {
			return err
		}
		r.overloads = append(r.overloads, run)
	}
	p.Details = map[string]any{"normal_rate": normal, "normal_p99_ms": base.LatencyAdmitted.P99Ms, "runs": r.overloads}
	return nil
}

// overloadOnce offers factor × capacity for OverloadDuration, then the
// normal rate for Tail, and reads the figures.
func (r *runner) overloadOnce(ctx context.Context, p *Phase, c *child, factor, capacity, normal, normalP99 float64) (*OverloadRun, error) {
	od := r.opts.OverloadDuration
	run := &OverloadRun{Factor: factor, Rate: float64(int(factor * capacity)), ThresholdP: recoveryFactor * normalP99}
	over := r.suiteLoad(c.url(), r.suitePrefix, run.Rate, od)
	// Enough connections to offer the whole multiple: Tally must be the
	// one that says no, not the client's cap on requests in flight.
	over.Concurrency = r.opts.OverloadConns
	over.Progress = nil
	tail := r.suiteLoad(c.url(), r.suitePrefix, normal, r.opts.Tail)
	tail.Log = nil
	label := fmt.Sprintf("%g× capacity (%.0f/s) for %s", factor, run.Rate, od)
	r.logf("overload: %s, up to %d connections, then %.0f/s for %s", label, over.Concurrency, normal, r.opts.Tail)

	sampler := startRSSSampler(c.pid(), sampleEvery)
	start := time.Now()
	done := startLoad(ctx, over)
	// The tail is a second load that starts when the overload's schedule
	// ends, while the overload's last requests may still be in flight: the
	// server sees the offered rate drop at once, as it would in life.
	select {
	case <-time.After(time.Until(start.Add(od))):
	case <-ctx.Done():
	}
	tailRes, tailErr := load.Run(ctx, tail)
	o := <-done
	run.PeakRSSKB = sampler.Stop()
	if o.err != nil {
		return nil, fmt.Errorf("%s: %w", label, o.err)
	}
	if tailErr != nil {
		return nil, fmt.Errorf("tail after %s: %w", label, tailErr)
	}
	if o.res.Interrupted || tailRes.Interrupted {
		return nil, errors.New("interrupted")
	}
	r.keep(p, label, o.res)
	r.keep(p, fmt.Sprintf("normal rate %.0f/s after %g×", normal, factor), tailRes)
	run.Overload, run.Tail = o.res, tailRes

	// Goodput: the 200s answered while the overload was offered (by
	// completion time), per second of it. The run's own admitted/s
	// would divide by a wall time that includes the wait for its last
	// answers.
	odS := od.Seconds()
	adm := countWithin(o.res.Series, 0, odS, func(s load.Second) int64 { return s.Admitted })
	run.GoodputPerS = float64(adm) / odS
	run.GoodputPct = 100 * run.GoodputPerS / capacity
	overEnd := o.res.MeasureStart.Add(od)
	run.TailGapS = tailRes.MeasureStart.Sub(overEnd).Seconds()
	after, ok := recovery(tailRes.Series, run.ThresholdP)
	run.RecoveryS, run.Recovered = max(after.Seconds()+run.TailGapS, 0), ok
	for _, s := range tailRes.Series {
		run.TailP99s = append(run.TailP99s, s.AdmittedP99Ms)
	}
	l := o.res
	r.logf("overload %g×: goodput %.0f/s (%.0f%% of capacity), 200 p99 %.1f ms, 503 p99 %s, statuses %v, transport errors %v, late %d, unsent %d; peak VmRSS %d MB; p99 back under %.1f ms after %.2fs (recovered: %v)",
		factor, run.GoodputPerS, run.GoodputPct, l.LatencyByStatus["200"].P99Ms, latText(l, "503"), l.Statuses, l.TransportErrors, l.Late, l.Unsent,
		run.PeakRSSKB>>10, run.ThresholdP, run.RecoveryS, run.Recovered)
	if sent := float64(l.Requests) / odS; sent < 0.9*run.Rate {
		r.note("overload %g×: the client sent %.0f/s of the %.0f/s offered (%d slots late, %d never sent): its %d connections were all waiting on Tally; the slots it could not send are not in any figure", factor, sent, run.Rate, l.Late, l.Unsent, over.Concurrency)
	}
	return run, nil
}

func latText(l *load.Result, status string) string {
	if x, ok := l.LatencyByStatus[status]; ok && x.Count > 0 {
		return fmt.Sprintf("%.1f ms", x.P99Ms)
	}
	return "(none)"
}

// keep records a load in the phase's JSON (runLoad does this for the
// loads it runs itself), with the same notes.
func (r *runner) keep(p *Phase, label string, res *load.Result) {
	kept := *res
	kept.Series = nil
	p.Loads = append(p.Loads, LoadRun{Label: label, Result: &kept})
}

// ---- coldstart ----

func (r *runner) phaseColdstart(ctx context.Context, p *Phase) error {
	capacity, err := r.needCapacity()
	if err != nil {
		return err
	}
	logA := filepath.Join(r.outDir, r.stem+"-coldstart-1-tally.log")
	logB := filepath.Join(r.outDir, r.stem+"-coldstart-2-tally.log")
	p.LogFiles = append(p.LogFiles, logA, logB)
	a, err := startChild(ctx, r.exe, cmdServeTally, r.suiteEnv(), logA)
	if err != nil {
		return err
	}
	var b *child
	defer func() {
		for _, c := range []*child{a, b} {
			if c != nil {
				if e := c.stop(); e != nil {
					r.note("coldstart: a Tally child did not stop cleanly: %v", e)
				}
			}
		}
	}()
	prefix := "cold-" + randomHex(4)
	if err := r.provision(ctx, p, a.url(), prefix, suiteUsers); err != nil {
		return err
	}
	cold := &ColdRun{Rate: float64(int(capacity * normalShare))}
	// One load through the restart: it runs until cancelled, a little
	// after the restarted Tally's first coldWindow, bounded in any case.
	// The steady p99 is read after a warm-up (the provisioning burst just
	// before is not steady), for --duration.
	warm := max(r.opts.Warmup, time.Second)
	steady := warm + r.opts.Duration
	cfg := r.suiteLoad(a.url(), prefix, cold.Rate, steady+2*time.Minute)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := startLoad(lctx, cfg)
	var sigterm, exited, ready time.Time
	restart := func() error {
		select {
		case <-time.After(steady):
		case <-ctx.Done():
			return ctx.Err()
		}
		r.logf("coldstart: SIGTERM to Tally (pid %d) under %.0f/s", a.pid(), cold.Rate)
		sigterm = time.Now()
		if e := a.stop(); e != nil {
			r.note("coldstart: the first Tally did not stop cleanly: %v", e)
		}
		exited = time.Now()
		// The same port: the load client keeps sending to it, and counts
		// what fails while nothing listens.
		env := append(r.suiteEnv(), "TALLY_HTTP_ADDR="+a.addr)
		var err error
		b, err = startChild(ctx, r.exe, cmdServeTally, env, logB)
		if err != nil {
			return fmt.Errorf("restart on %s: %w", a.addr, err)
		}
		ready = time.Now()
		r.logf("coldstart: exited %.2fs after SIGTERM, restarted Tally (pid %d) ready %.2fs after SIGTERM", exited.Sub(sigterm).Seconds(), b.pid(), ready.Sub(sigterm).Seconds())
		select {
		case <-time.After(coldWindow + window):
		case <-ctx.Done():
		}
		return nil
	}
	rerr := restart()
	cancel()
	o := <-done
	if rerr != nil {
		return rerr
	}
	if o.err != nil {
		return o.err
	}
	res := o.res
	cold.Load = res
	r.keep(p, fmt.Sprintf("open loop at %.0f/s through the restart", cold.Rate), res)
	at := func(t time.Time) float64 { return t.Sub(res.MeasureStart).Seconds() }
	if v, ok := p99Ms(mergeOverlapping(res.Series, res.IntervalHists, warm.Seconds(), at(sigterm))); ok {
		cold.SteadyP99Ms = v
	}
	h := mergeOverlapping(res.Series, res.IntervalHists, at(ready), at(ready)+coldWindow.Seconds())
	if v, ok := p99Ms(h); ok {
		cold.ColdP99Ms, cold.ColdAdmitted = v, h.TotalCount()
	}
	cold.DowntimeS = ready.Sub(sigterm).Seconds()
	cold.StopS = exited.Sub(sigterm).Seconds()
	for _, n := range res.TransportErrors {
		cold.ConnErrors += n
	}
	for k, n := range res.Statuses {
		if k != "200" {
			cold.OtherStatuses += n
		}
	}
	r.cold = cold
	p.Details = cold
	r.logf("coldstart: steady p99 %.2f ms; first %s after ready: p99 %.2f ms over %d creates; %d connection errors, statuses %v",
		cold.SteadyP99Ms, coldWindow, cold.ColdP99Ms, cold.ColdAdmitted, cold.ConnErrors, res.Statuses)
	return nil
}

// ---- slowclients ----

func (r *runner) phaseSlowclients(ctx context.Context, p *Phase) error {
	capacity, err := r.needCapacity()
	if err != nil {
		return err
	}
	logPath := filepath.Join(r.outDir, r.stem+"-slowclients-tally.log")
	p.LogFiles = append(p.LogFiles, logPath)
	rt := r.opts.ReadTimeout
	c, err := startChild(ctx, r.exe, cmdServeTally, r.suiteEnv("TALLY_HTTP_READ_TIMEOUT="+rt.String()), logPath)
	if err != nil {
		return err
	}
	defer func() {
		if e := c.stop(); e != nil {
			r.note("slowclients: the Tally child did not stop cleanly: %v", e)
		}
	}()
	prefix := "slow-" + randomHex(4)
	if err := r.provision(ctx, p, c.url(), prefix, suiteUsers); err != nil {
		return err
	}
	run := &SlowRun{Rate: float64(int(capacity * normalShare)), ReadTimeout: rt.String()}
	cfg := r.suiteLoad(c.url(), prefix, run.Rate, r.opts.Duration)
	// The run without stalled connections warms up first; the run with
	// them does not, since a server that cuts them off after the read
	// timeout is disturbed in the first seconds only.
	first := cfg
	first.Warmup = r.opts.Warmup
	if run.Without, err = r.runLoad(ctx, p, fmt.Sprintf("normal clients at %.0f/s, no stalled connection", run.Rate), first); err != nil {
		return err
	}
	// Tokens of users the server has never seen: a stalled create with a
	// valid token is a real request that got past authentication.
	tokens := make([]string, r.opts.SlowConns/2+1)
	for i := range tokens {
		tok, err := transport.IssueToken([]byte(r.secret), fmt.Sprintf("stall-%s-%d", prefix, i), time.Hour, time.Now())
		if err != nil {
			return err
		}
		tokens[i] = tok
	}
	r.logf("slowclients: opening %d stalled connections (half with a valid token), TALLY_HTTP_READ_TIMEOUT=%s", r.opts.SlowConns, rt)
	set, err := openStalled(ctx, c.addr, r.opts.SlowConns, tokens)
	if err != nil {
		return err
	}
	lastSent := time.Now()
	run.With, err = r.runLoad(ctx, p, fmt.Sprintf("normal clients at %.0f/s with %d stalled connections", run.Rate, r.opts.SlowConns), cfg)
	if err != nil {
		set.closeAll()
		return err
	}
	// Wait for the server to close them: well past the read timeout, but
	// bounded (a server without one never will).
	deadline := lastSent.Add(max(3*rt, rt+5*time.Second))
	closed := set.waitClosed(ctx, deadline)
	waited := time.Since(lastSent)
	set.closeAll()
	run.Stalled = set.summarize(waited)
	r.slow = run
	p.Details = run
	r.logf("slowclients: p99 %.2f ms without, %.2f ms with; %d of %d stalled connections closed by the server within %.1fs (the last %.2fs after its byte); answers %v",
		run.Without.LatencyAdmitted.P99Ms, run.With.LatencyAdmitted.P99Ms, closed, r.opts.SlowConns, waited.Seconds(), run.Stalled.MaxCloseS, run.Stalled.Answers)
	return nil
}

// ---- poison ----

func (r *runner) phasePoison(ctx context.Context, p *Phase) error {
	c, err := r.suiteTally(ctx, p)
	if err != nil {
		return err
	}
	tag := randomHex(4)
	innocents := load.Config{URL: c.url(), Secret: r.secret, AdminToken: r.admin, Users: poisonUsers, Plan: "enterprise",
		UserPrefix: "innocent-" + tag, Requests: poisonCreates, Concurrency: poisonUsers, Log: r.stderr}
	poisoner := load.Config{URL: c.url(), Secret: r.secret, AdminToken: r.admin, Users: 1, Plan: "enterprise",
		UserPrefix: "poisoner-" + tag, Duration: time.Minute, Concurrency: 4, NoVerify: true, Body: []byte(poisonBody)}
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := startLoad(pctx, poisoner)
	// The poisoner provisions its one user and starts; the innocents
	// start a moment later so that every batch they are in can have a
	// poisoned create in it too.
	time.Sleep(300 * time.Millisecond)
	inn, ierr := load.Run(ctx, innocents)
	cancel()
	o := <-done
	if ierr != nil {
		return ierr
	}
	if o.err != nil {
		return fmt.Errorf("poisoner: %w", o.err)
	}
	run := &PoisonRun{Innocents: inn, Poisoner: o.res}
	r.keep(p, fmt.Sprintf("%d innocent users, %d creates", poisonUsers, poisonCreates), inn)
	r.keep(p, `one user creating with title "x\u0000"`, o.res)
	for k, n := range inn.Statuses {
		if code, _ := strconv.Atoi(k); code >= 500 {
			run.Innocent5xx += n
		}
	}
	for _, n := range inn.TransportErrors {
		run.InnocentOther += n
	}
	for k, n := range o.res.Statuses {
		if k != "422" {
			run.PoisonNot422 += n
		}
	}
	for _, n := range o.res.TransportErrors {
		run.PoisonNot422 += n
	}
	if len(inn.Violations) > 0 {
		r.note("poison: the innocents' verification found %d violation(s); the first: %s", len(inn.Violations), inn.Violations[0])
	}
	r.poison = run
	p.Details = run
	r.logf("poison: innocents %v (transport errors %v); poisoner %v (transport errors %v)", inn.Statuses, inn.TransportErrors, o.res.Statuses, o.res.TransportErrors)
	return nil
}

// ---- the table ----

// scenarioRows are the overload suite's figures with their targets.
func (r *runner) scenarioRows() []Row {
	var rows []Row
	na := map[int]bool{} // rows whose figure does not exist in this run (no 503 answered)
	val := func(v float64) *float64 { return ptr(v) }
	capRow := Row{Key: "capacity", Figure: fmt.Sprintf("capacity: max admitted creates/s (%s enterprise users)", groupDigits(suiteUsers)), Unit: "/s"}
	rssRow := Row{Key: "capacity_rss", Figure: "  … Tally's VmRSS at capacity", Unit: "MB"}
	if r.capacity > 0 {
		capRow.Tally = val(r.capacity)
		if r.opts.Capacity > 0 {
			capRow.Note = "given with --capacity"
		} else if c := r.capacityRun; c != nil {
			capRow.Note = fmt.Sprintf("closed loop, %d workers, %s; p99 %.1f ms", highWorkers, r.opts.Duration, c.LatencyAdmitted.P99Ms)
		}
	}
	if r.capRSSKB > 0 {
		rssRow.Tally = val(float64(r.capRSSKB) / 1024)
	}
	rows = append(rows, capRow, rssRow)
	if r.normal != nil {
		rows = append(rows, Row{Key: "normal_p99", Figure: fmt.Sprintf("p99 at the normal rate (%s/s, half the capacity)", groupDigits(r.normal.Rate)),
			Unit: "ms", Tally: val(r.normal.LatencyAdmitted.P99Ms)})
	}
	factors := []float64{2, 3}
	for _, f := range factors {
		var o *OverloadRun
		for _, x := range r.overloads {
			if x.Factor == f {
				o = x
			}
		}
		name := fmt.Sprintf("%g× capacity", f)
		if o != nil {
			name = fmt.Sprintf("%g× capacity (%s/s offered, %s)", f, groupDigits(o.Rate), r.opts.OverloadDuration)
		}
		key := fmt.Sprintf("overload_%gx_", f)
		g := Row{Key: key + "goodput_pct", Figure: name + ": goodput, % of capacity", Unit: "%", Target: atLeast(targetGoodputPct, "%")}
		s := Row{Key: key + "p99_200", Figure: "  … p99 of served (200)", Unit: "ms", Target: atMost(targetServedP99, "ms")}
		sh := Row{Key: key + "p99_503", Figure: "  … p99 of 503 answers", Unit: "ms", Target: atMost(target503P99, "ms")}
		ra := Row{Key: key + "503_no_retry_after", Figure: "  … 503 answers without Retry-After", Unit: "", Target: none()}
		t5 := Row{Key: key + "504", Figure: "  … 504 answers", Unit: "", Target: none()}
		ce := Row{Key: key + "conn_errors", Figure: "  … connection errors", Unit: "", Target: none()}
		rss := Row{Key: key + "rss_ratio", Figure: "  … peak VmRSS / VmRSS at capacity", Unit: "×", Target: &Target{Of: "value", Op: "<=", Value: targetRSSRatio, Text: fmt.Sprintf("≤ %d×", targetRSSRatio)}}
		rec := Row{Key: key + "recovery_s", Figure: "  … p99 back to normal after the overload stops", Unit: "s", Target: atMost(targetRecoveryS, "s")}
		if o != nil {
			l := o.Overload
			g.Tally = val(o.GoodputPct)
			g.Note = fmt.Sprintf("%s admitted/s while offered; client sent %s/s (%d late, %d never sent); statuses %s",
				groupDigits(o.GoodputPerS), groupDigits(float64(l.Requests)/r.opts.OverloadDuration.Seconds()), l.Late, l.Unsent, countsLine(l.Statuses))
			if o.GoodputPct > 110 {
				// More than the max cannot be served: the capacity
				// measured was low (a busy machine, a short run).
				g.Note += "; above 100 %: the capacity measured was low (a busy machine or a short run; --capacity pins it)"
			}
			s.Tally = val(l.LatencyByStatus["200"].P99Ms)
			// From the schedule is the figure (a client's wait counts);
			// from the actual send says how much of it was the client
			// running behind.
			s.Note = fmt.Sprintf("%.1f ms from the actual send", l.LatencyByStatusFromSend["200"].P99Ms)
			n503 := l.Statuses["503"]
			if n503 > 0 {
				sh.Tally = val(l.LatencyByStatus["503"].P99Ms)
				sh.Note = fmt.Sprintf("%d answers 503; %.1f ms from the actual send", n503, l.LatencyByStatusFromSend["503"].P99Ms)
			} else {
				sh.Note = "no 503 was answered"
			}
			ra.Tally = val(float64(n503 - l.RetryAfter["503"]))
			t5.Tally = val(float64(l.Statuses["504"]))
			var nce int64
			for _, n := range l.TransportErrors {
				nce += n
			}
			ce.Tally = val(float64(nce))
			if nce > 0 {
				ce.Note = countsLine(l.TransportErrors)
			}
			if r.capRSSKB > 0 {
				rss.Tally = val(float64(o.PeakRSSKB) / float64(r.capRSSKB))
				rss.Note = fmt.Sprintf("%d MB at capacity, %d MB at the peak of the overload and its tail", r.capRSSKB>>10, o.PeakRSSKB>>10)
			}
			rec.Tally = val(o.RecoveryS)
			rec.Note = fmt.Sprintf("first %s window after which every window's p99 of 200s is ≤ %.1f ms (%.1f× the normal p99), at the normal rate", window, o.ThresholdP, recoveryFactor)
			if !o.Recovered {
				rec.Note = fmt.Sprintf("not back within the %s tail (a lower bound); windows' p99 must be ≤ %.1f ms", r.opts.Tail, o.ThresholdP)
				rec.Tally = val(max(o.RecoveryS, r.opts.Tail.Seconds()))
			}
		}
		idx := len(rows)
		rows = append(rows, g, s, sh, ra, t5, ce, rss, rec)
		if o != nil && o.Overload.Statuses["503"] == 0 {
			na[idx+2] = true
		}
	}

	// vegeta
	vname := fmt.Sprintf("vegeta at %d× capacity", vegetaFactor)
	v := r.vegeta
	if v != nil && v.Report != nil {
		vname = fmt.Sprintf("vegeta at %d× capacity (%s/s offered, %s)", vegetaFactor, groupDigits(v.Rate), r.opts.OverloadDuration)
	}
	vg := Row{Key: "vegeta_goodput_pct", Figure: vname + ": goodput, % of capacity", Unit: "%", Target: atLeast(targetGoodputPct, "%")}
	vs := Row{Key: "vegeta_p99_200", Figure: "  … p99 of served (200)", Unit: "ms", Target: atMost(targetServedP99, "ms")}
	vsh := Row{Key: "vegeta_p99_503", Figure: "  … p99 of 503 answers", Unit: "ms", Target: atMost(target503P99, "ms")}
	vra := Row{Key: "vegeta_503_no_retry_after", Figure: "  … 503 answers without Retry-After", Unit: "", Target: none()}
	v5 := Row{Key: "vegeta_504", Figure: "  … 504 answers", Unit: "", Target: none()}
	vce := Row{Key: "vegeta_conn_errors", Figure: "  … connection errors (vegeta code 0)", Unit: "", Target: none()}
	switch {
	case v == nil:
	case v.Report == nil:
		vg.Note = v.SkippedReason
	default:
		rep := v.Report
		vg.Tally = val(v.GoodputPct)
		vg.Note = fmt.Sprintf("%s 200s/s; vegeta sent %s/s, p99 of all answers %.1f ms; statuses %s (latency from the actual send, not the schedule)",
			groupDigits(v.GoodputPerS), groupDigits(rep.Rate), float64(rep.Latencies.P99)/1e6, countsLine(rep.StatusCodes))
		if x, ok := v.P99ByCode["200"]; ok {
			vs.Tally = val(x)
		}
		if x, ok := v.P99ByCode["503"]; ok {
			vsh.Tally = val(x)
		} else {
			vsh.Note = "no 503 was answered"
		}
		vra.Tally = val(float64(rep.StatusCodes["503"] - v.RetryAfter["503"]))
		v5.Tally = val(float64(rep.StatusCodes["504"]))
		vce.Tally = val(float64(rep.StatusCodes["0"]))
		if n := rep.StatusCodes["0"]; n > 0 && len(rep.Errors) > 0 {
			vce.Note = "e.g. " + rep.Errors[0]
		}
	}
	idx := len(rows)
	rows = append(rows, vg, vs, vsh, vra, v5, vce)
	if v != nil && v.Report != nil && v.Report.StatusCodes["503"] == 0 {
		na[idx+2] = true
	}

	// coldstart
	cs := Row{Key: "coldstart_steady_p99", Figure: "coldstart: steady p99 before the restart (half the capacity)", Unit: "ms"}
	cc := Row{Key: "coldstart_p99", Figure: fmt.Sprintf("  … p99 in the first %s after the restarted Tally is ready", coldWindow), Unit: "ms", Target: atMost(targetColdP99, "ms")}
	ccErr := Row{Key: "coldstart_conn_errors", Figure: "  … connection errors through the restart", Unit: ""}
	if c := r.cold; c != nil {
		cs.Tally = val(c.SteadyP99Ms)
		cs.Note = fmt.Sprintf("open loop at %s/s over %s users", groupDigits(c.Rate), groupDigits(suiteUsers))
		if c.ColdAdmitted > 0 {
			cc.Tally = val(c.ColdP99Ms)
		}
		cc.Note = fmt.Sprintf("%d creates admitted in it; SIGTERM → exit %.2fs, SIGTERM → ready %.2fs", c.ColdAdmitted, c.StopS, c.DowntimeS)
		ccErr.Tally = val(float64(c.ConnErrors))
		ccErr.Note = fmt.Sprintf("counted apart from the latencies: %s; other statuses %d", countsLine(c.Load.TransportErrors), c.OtherStatuses)
	}
	rows = append(rows, cs, cc, ccErr)

	// slowclients
	sw := Row{Key: "slow_p99_without", Figure: "slowclients: p99 of normal clients, no stalled connection", Unit: "ms"}
	sWith := Row{Key: "slow_p99_with", Figure: fmt.Sprintf("  … with %s stalled connections", groupDigits(float64(r.opts.SlowConns))), Unit: "ms"}
	sRise := Row{Key: "slow_p99_rise_pct", Figure: "  … p99 raised by", Unit: "%", Target: atMost(targetSlowRisePct, "%")}
	sClose := Row{Key: "slow_all_closed_s", Figure: fmt.Sprintf("  … all stalled connections closed by the server after (TALLY_HTTP_READ_TIMEOUT=%s)", r.opts.ReadTimeout),
		Unit: "s", Target: atMost((r.opts.ReadTimeout + slowCloseGrace).Seconds(), "s")}
	if s := r.slow; s != nil {
		w0, w1 := s.Without.LatencyAdmitted.P99Ms, s.With.LatencyAdmitted.P99Ms
		sw.Tally, sWith.Tally = val(w0), val(w1)
		sw.Note = fmt.Sprintf("open loop at %s/s, %s each", groupDigits(s.Rate), r.opts.Duration)
		if w0 > 0 {
			sRise.Tally = val(100 * (w1/w0 - 1))
		}
		st := s.Stalled
		if st.ClosedByServer == st.Conns {
			sClose.Tally = val(st.MaxCloseS)
			sClose.Note = fmt.Sprintf("from each one's last byte; median %.2fs; answers %s", st.P50CloseS, answersLine(st.Answers))
		} else {
			sClose.Tally = val(st.WaitedS)
			sClose.Note = fmt.Sprintf("%d of %d still open when the scenario gave up after %.1fs (a lower bound); answers %s", st.Conns-st.ClosedByServer, st.Conns, st.WaitedS, answersLine(st.Answers))
		}
		if n := s.With.Errors; n > 0 {
			sWith.Note = fmt.Sprintf("%d normal requests failed: statuses %s, transport %s", n, countsLine(s.With.ErrorsByStatus), countsLine(s.With.TransportErrors))
		}
	}
	rows = append(rows, sw, sWith, sRise, sClose)

	// poison
	pi := Row{Key: "poison_innocent_5xx", Figure: fmt.Sprintf("poison: innocent creates answered 5xx (%d users, %d creates)", poisonUsers, poisonCreates), Unit: "", Target: none()}
	pp := Row{Key: "poison_not_422", Figure: `  … poisoner's creates (title "x\u0000") answered other than 422`, Unit: "", Target: none()}
	if p := r.poison; p != nil {
		pi.Tally = val(float64(p.Innocent5xx))
		pi.Note = fmt.Sprintf("statuses %s", countsLine(p.Innocents.Statuses))
		if p.InnocentOther > 0 {
			pi.Note += fmt.Sprintf("; transport errors %s", countsLine(p.Innocents.TransportErrors))
		}
		pp.Tally = val(float64(p.PoisonNot422))
		pp.Note = fmt.Sprintf("%d sent; statuses %s", p.Poisoner.Requests, countsLine(p.Poisoner.Statuses))
		if len(p.Poisoner.TransportErrors) > 0 {
			pp.Note += "; transport errors " + countsLine(p.Poisoner.TransportErrors)
		}
	}
	rows = append(rows, pi, pp)

	for i := range rows {
		rows[i].evaluate()
		if na[i] {
			rows[i].Status = StatusNA
		}
	}
	return rows
}

// countsLine renders {"200": 5, "503": 7} as "200: 5, 503: 7" ("none"
// when empty), numeric keys in numeric order.
func countsLine[N int | int64](m map[string]N) string { return load.CountsText(m, "none") }

func answersLine(m map[string]int) string { return countsLine(m) }

// scenarioHeader is the overload suite's text above its table.
func (r *runner) scenarioHeader() string {
	var b strings.Builder
	o := r.opts
	fmt.Fprintf(&b, "Tally overload scenarios, %s\n", r.report.StartedAt.Format(time.RFC3339))
	fmt.Fprintf(&b, "command: %s\n", r.report.Command)
	fmt.Fprintf(&b, "machine: %s\n", r.report.Machine)
	mif := "Tally's default"
	if o.MaxInFlight > 0 {
		mif = strconv.Itoa(o.MaxInFlight)
	}
	fmt.Fprintf(&b, "settings: Tally children as shipped (Go's default GC) on Postgres + Redis, TALLY_MAX_IN_FLIGHT %s; %s enterprise users; "+
		"capacity measured for %s (+%s warm-up); the normal rate is half the capacity; overloads of %s each, client cap %d connections, "+
		"each followed by %s at the normal rate; latencies from each request's scheduled send time (open loop), windows of %s; "+
		"no invariant verification except the poison scenario's innocents.\n",
		mif, groupDigits(suiteUsers), o.Duration, o.Warmup, o.OverloadDuration, o.OverloadConns, o.Tail, window)
	b.WriteString("Client, Tally, Postgres and Redis share the machine's cores: the overload figures include the client's own CPU use.\n")
	return b.String()
}
