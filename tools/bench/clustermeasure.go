package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/tools/load"
	"github.com/tally-dev/tally/transport"
)

// How the cluster phases (cluster.go) find who owns what, and what they
// read around each side's load: the CPU of its Tally processes and of the
// machine in the measured window, its group commits, CPU profiles.

// probeSet is one user id per partition, with its token: a GET of its
// usage through a node is answered by the partition's owner, which names
// itself in X-Tally-Node.
type probeSet struct {
	ids    [domain.Partitions]string
	tokens [domain.Partitions]string
}

// newProbeSet draws ids prefix-0, prefix-1… until every partition has one.
func newProbeSet(prefix, secret string) (*probeSet, error) {
	ps := &probeSet{}
	left := domain.Partitions
	for i := 0; left > 0; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		p := domain.PartitionOf(id)
		if ps.ids[p] != "" {
			continue
		}
		tok, err := transport.IssueTokenFor([]byte(secret), id, 12*time.Hour, time.Now(), "", "")
		if err != nil {
			return nil, err
		}
		ps.ids[p], ps.tokens[p] = id, tok
		left--
	}
	return ps, nil
}

// owners is the owner node id of every partition ("" when unknown).
type owners [domain.Partitions]string

// sweep asks every node who owns every partition: the X-Tally-Node of a
// usage GET of the partition's probe user. A partition whose answers
// disagree between nodes, or that some node answered with something other
// than 200 or 404, is "" in the result.
func sweep(ctx context.Context, client *http.Client, urls []string, ps *probeSet) owners {
	type job struct{ node, p int }
	seen := make([][domain.Partitions]string, len(urls))
	jobs := make(chan job)
	var wg sync.WaitGroup
	for range probeConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				seen[j.node][j.p] = probeOwner(ctx, client, urls[j.node], ps.tokens[j.p])
			}
		}()
	}
	for n := range urls {
		for p := range domain.Partitions {
			jobs <- job{n, p}
		}
	}
	close(jobs)
	wg.Wait()
	return agreed(seen)
}

// agreed is, per partition, the owner every node named, or "".
func agreed(seen [][domain.Partitions]string) owners {
	var out owners
	for p := range domain.Partitions {
		o := seen[0][p]
		for _, s := range seen[1:] {
			if s[p] != o {
				o = ""
				break
			}
		}
		out[p] = o
	}
	return out
}

// probeOwner is the X-Tally-Node of one usage GET, or "" for an answer
// that was not decided by the owner (an error, a 503 while a partition
// moves, which names the node that gave up).
func probeOwner(ctx context.Context, client *http.Client, base, token string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/usage", nil)
	if err != nil {
		return ""
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
		return ""
	}
	return resp.Header.Get(transport.HeaderNode)
}

// settledOwners reports whether an ownership map is complete: every
// partition owned by one of ids, as every node sees it, and every id
// owning some (all nodes joined).
func settledOwners(o owners, ids []string) bool {
	count := map[string]int{}
	for _, id := range o {
		if !slices.Contains(ids, id) {
			return false
		}
		count[id]++
	}
	return len(count) == len(ids)
}

// waitOwnership waits until every node agrees on the owner of every
// partition, all the group's nodes own some, and two sweeps a second
// apart see the same map; it returns that map.
func (r *runner) waitOwnership(ctx context.Context, g *nodeGroup, ps *probeSet) (owners, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(ownershipTimeout)
	var prev owners
	havePrev := false
	for {
		for _, c := range g.nodes {
			if !c.alive() {
				return owners{}, fmt.Errorf("%s: a node exited (%v); its log (%s) ends:\n%s", g.label, c.waitErr, c.logPath, fileTail(c.logPath, 15))
			}
		}
		o := sweep(ctx, client, g.urls(), ps)
		if settledOwners(o, g.ids) {
			if havePrev && o == prev {
				counts := map[string]int{}
				for _, id := range o {
					counts[id]++
				}
				parts := make([]string, len(g.ids))
				for i, id := range g.ids {
					parts[i] = fmt.Sprintf("%s %d", id, counts[id])
				}
				r.logf("%s: ownership settled, partitions per node: %s", g.label, strings.Join(parts, ", "))
				return o, nil
			}
			prev, havePrev = o, true
		} else {
			havePrev = false
		}
		if time.Now().After(deadline) {
			return owners{}, fmt.Errorf("%s: ownership did not settle within %s (every node agreeing on the owner of every partition, every node owning some)", g.label, ownershipTimeout)
		}
		select {
		case <-ctx.Done():
			return owners{}, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// usersOwnedBy draws n user ids prefix-0, prefix-1… whose partitions node
// owns.
func usersOwnedBy(o owners, node, prefix string, n int) []string {
	out := make([]string, 0, n)
	for i := 0; len(out) < n; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		if o[domain.PartitionOf(id)] == node {
			out = append(out, id)
		}
	}
	return out
}

// ---- CPU in a window ----

// cpuSample is the summed CPU time of some processes at one moment, and
// the machine's busy time (every process, the kernel's work included).
type cpuSample struct {
	at      time.Time
	cpu     time.Duration
	machine time.Duration
}

// cpuTrace samples the summed CPU time of processes until stopped, so
// that the CPU spent inside a load's measured window (which starts after
// provisioning and warm-up, inside load.Run) can be read afterwards.
type cpuTrace struct {
	pids    []int
	mu      sync.Mutex
	samples []cpuSample
	errs    int
	stop    chan struct{}
	done    chan struct{}
}

func startCPUTrace(pids []int, every time.Duration) *cpuTrace {
	t := &cpuTrace{pids: pids, stop: make(chan struct{}), done: make(chan struct{})}
	t.sample()
	go func() {
		defer close(t.done)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			select {
			case <-t.stop:
				return
			case <-tk.C:
				t.sample()
			}
		}
	}()
	return t
}

func (t *cpuTrace) sample() {
	var sum time.Duration
	for _, pid := range t.pids {
		d, err := readProcCPU(pid)
		if err != nil {
			t.mu.Lock()
			t.errs++
			t.mu.Unlock()
			return
		}
		sum += d
	}
	busy, err := readMachineBusy()
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		t.errs++
		return
	}
	t.samples = append(t.samples, cpuSample{at: time.Now(), cpu: sum, machine: busy})
}

// Stop takes a last sample and returns them all.
func (t *cpuTrace) Stop() []cpuSample {
	close(t.stop)
	<-t.done
	t.sample()
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.samples)
}

// cpuBetween is the CPU spent from t0 to t1 (of the processes traced, or
// of the whole machine: of picks which), read off samples in time order,
// each end interpolated between the samples around it; false when the
// samples do not cover the window.
func cpuBetween(samples []cpuSample, t0, t1 time.Time, of func(cpuSample) time.Duration) (time.Duration, bool) {
	at := func(t time.Time) (float64, bool) {
		for i := 1; i < len(samples); i++ {
			a, b := samples[i-1], samples[i]
			if t.Before(a.at) || t.After(b.at) {
				continue
			}
			span := b.at.Sub(a.at)
			if span <= 0 {
				return float64(of(b)), true
			}
			f := float64(t.Sub(a.at)) / float64(span)
			return float64(of(a)) + f*float64(of(b)-of(a)), true
		}
		return 0, false
	}
	if !t1.After(t0) {
		return 0, false
	}
	c0, ok0 := at(t0)
	c1, ok1 := at(t1)
	if !ok0 || !ok1 {
		return 0, false
	}
	return time.Duration(c1 - c0), true
}

func tallyCPU(s cpuSample) time.Duration   { return s.cpu }
func machineCPU(s cpuSample) time.Duration { return s.machine }

// parseMachineBusy reads the busy time of the whole machine off the
// "cpu" line of /proc/stat: user, nice, system, irq and softirq, in
// USER_HZ ticks (not idle or iowait; not steal, the hypervisor's; not the
// guest times, which user already counts).
func parseMachineBusy(b []byte) (time.Duration, error) {
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: first line %q is not the cpu total", line)
	}
	var ticks int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 7 { // idle, iowait; steal, guest, guest_nice
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("/proc/stat: unexpected time %q", v)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

func readMachineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseMachineBusy(b)
}

// ---- measuring a side ----

// profileReq asks measureSide for a CPU profile of one node, taken in the
// measured window.
type profileReq struct {
	node *child
	id   string // its node id, or a name for a single node
}

// measuredPhase is when a load's measured phase starts, known once the
// load has provisioned its users (load.Config.OnLoad): the profiles and
// the commit statistics of measureSide wait for it.
type measuredPhase struct {
	known chan struct{} // closed once start is set
	start time.Time
}

func newMeasuredPhase(cfg *load.Config) *measuredPhase {
	m := &measuredPhase{known: make(chan struct{})}
	cfg.OnLoad = func(start time.Time) {
		m.start = start
		close(m.known)
	}
	return m
}

// wait returns once the measured phase has started, false if ctx ended
// first.
func (m *measuredPhase) wait(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return false
	case <-m.known:
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(time.Until(m.start)):
		return true
	}
}

// commitStats are the group-commit writers' histograms summed over some
// nodes (actors/writer.go): transactions, admissions in them, and the
// seconds they took.
type commitStats struct{ txs, rows, seconds float64 }

// readCommitStats reads them off each node's /metrics.
func readCommitStats(ctx context.Context, nodes []*child) (commitStats, error) {
	var s commitStats
	for _, c := range nodes {
		body, err := metricsOf(ctx, c)
		if err != nil {
			return s, err
		}
		for name, into := range map[string]*float64{
			"tally_commit_batch_size_count": &s.txs, "tally_commit_batch_size_sum": &s.rows, "tally_commit_seconds_sum": &s.seconds,
		} {
			v, ok := parseMetric(body, name)
			if !ok {
				return s, fmt.Errorf("%s: no %s in /metrics", c.name, name)
			}
			*into += v
		}
	}
	return s, nil
}

// metricsOf is a Tally child's /metrics, from its ops listener.
func metricsOf(ctx context.Context, c *child) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.opsURL()+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: /metrics answered %s", c.name, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 8<<20))
}

// watchCommits reads the side's commit statistics at the start and at
// the end of the measured phase and returns their difference.
func watchCommits(ctx context.Context, m *measuredPhase, nodes []*child, d time.Duration) (commitStats, error) {
	if !m.wait(ctx) {
		return commitStats{}, ctx.Err()
	}
	s0, err := readCommitStats(ctx, nodes)
	if err != nil {
		return commitStats{}, err
	}
	select {
	case <-ctx.Done():
		return commitStats{}, ctx.Err()
	case <-time.After(time.Until(m.start.Add(d))):
	}
	s1, err := readCommitStats(ctx, nodes)
	if err != nil {
		return commitStats{}, err
	}
	return commitStats{txs: s1.txs - s0.txs, rows: s1.rows - s0.rows, seconds: s1.seconds - s0.seconds}, nil
}

// measureSide runs a side's load and reads the CPU its processes spent in
// the load's measured window, their group commits in it, and the profiles
// asked for. The load is cfgs, run at once when there are several (one per
// node, each user's requests sent to its owner: sideRouted); they start
// together and have the same warm-up and duration, so their measured
// windows are the first's to within milliseconds.
func (r *runner) measureSide(ctx context.Context, p *Phase, round int, side clusterSide, cfgs []load.Config, rejections bool, profs []profileReq) (ClusterRun, error) {
	run := ClusterRun{Phase: p.Name, Round: round, Side: side.name, Targets: len(side.targets), Processes: len(side.counted)}
	label := fmt.Sprintf("%s, %s, round %d", p.Name, side.name, round)
	pids := make([]int, len(side.counted))
	for i, c := range side.counted {
		pids[i] = c.pid()
	}
	// The profiles and the commit statistics start with the measured
	// phase, which begins after provisioning (seconds for 10 000 users)
	// and the warm-up.
	cfgs = slices.Clone(cfgs)
	cfg := &cfgs[0]
	measured := newMeasuredPhase(cfg)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel() // a load that fails before it starts ends the waits
	profDone := make([]chan string, len(profs))
	for i, pr := range profs {
		profDone[i] = make(chan string, 1)
		path := filepath.Join(r.outDir, fmt.Sprintf("%s-%s-%s-r%d-%s.pprof", r.stem, p.Name, side.name, round, pr.id))
		go func() { profDone[i] <- r.captureProfile(wctx, pr.node, path, measured) }()
	}
	type commitsOrErr struct {
		s   commitStats
		err error
	}
	commits := make(chan commitsOrErr, 1)
	go func() {
		s, err := watchCommits(wctx, measured, side.counted, cfg.Duration)
		commits <- commitsOrErr{s, err}
	}()
	trace := startCPUTrace(pids, cpuSampleEvery)
	res, err := r.runLoads(ctx, p, label, cfgs)
	samples := trace.Stop()
	if err != nil {
		return run, err
	}
	for i, ch := range profDone {
		if path := <-ch; path != "" {
			if run.Profiles == nil {
				run.Profiles = map[string]string{}
			}
			run.Profiles[profs[i].id] = path
			p.LogFiles = append(p.LogFiles, path)
		}
	}
	for _, c := range side.counted {
		if !c.alive() {
			return run, fmt.Errorf("%s: a Tally node exited (%v); its log (%s) ends:\n%s", label, c.waitErr, c.logPath, fileTail(c.logPath, 15))
		}
	}
	run.Answers, run.PerS, run.P99Ms = res.Admitted, res.AdmittedPerS, res.LatencyAdmitted.P99Ms
	if rejections {
		run.Answers, run.PerS, run.P99Ms = res.Rejected, res.RejectedPerS, res.LatencyRejected.P99Ms
	}
	if run.Answers == 0 {
		return run, fmt.Errorf("%s: nothing was %s (answers %v)", label, map[bool]string{false: "admitted", true: "rejected"}[rejections], res.Statuses)
	}
	run.WindowS = res.DurationS
	end := res.MeasureStart.Add(time.Duration(res.DurationS * float64(time.Second)))
	if cpu, ok := cpuBetween(samples, res.MeasureStart, end, tallyCPU); ok {
		run.CPUSeconds = cpu.Seconds()
		run.MicrosPerAnswer = run.CPUSeconds * 1e6 / float64(run.Answers)
		run.CoresBusy = run.CPUSeconds / run.WindowS
		busy, _ := cpuBetween(samples, res.MeasureStart, end, machineCPU)
		run.MachineBusy = busy.Seconds() / run.WindowS
	} else {
		r.note("%s: the CPU samples do not cover the measured window; no CPU figure", label)
	}
	var commitText string
	switch c := <-commits; {
	case c.err != nil:
		r.note("%s: no commit statistics: %v", label, c.err)
	case c.s.txs > 0:
		run.CommitsPerS = c.s.txs / run.WindowS
		run.MeanBatch = c.s.rows / c.s.txs
		run.MeanCommitMs = c.s.seconds * 1e3 / c.s.txs
		commitText = fmt.Sprintf("; %.0f commits/s of %.1f admissions, %.2f ms each", run.CommitsPerS, run.MeanBatch, run.MeanCommitMs)
	}
	what := "admitted"
	if rejections {
		what = "rejected"
	}
	r.logf("%s: %.0f %s/s over %d node(s), p99 %.2f ms; Tally CPU %.2f cores, %.1f µs per answer; machine %.2f of %d cores busy%s",
		label, run.PerS, what, run.Targets, run.P99Ms, run.CoresBusy, run.MicrosPerAnswer, run.MachineBusy, runtime.NumCPU(), commitText)
	return run, nil
}

// captureProfile takes a CPU profile of a node's ops listener (pprof is
// on with --cluster-pprof) over the load's measured phase, and writes it
// to path; it returns path, or "" after noting why not.
func (r *runner) captureProfile(ctx context.Context, c *child, path string, m *measuredPhase) string {
	if !m.wait(ctx) {
		return ""
	}
	secs := max(1, min(clusterProfileSecs, int(r.opts.Duration.Seconds())-1))
	url := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", c.opsURL(), secs)
	client := &http.Client{Timeout: time.Duration(secs)*time.Second + 30*time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return ""
	}
	resp, err := client.Do(req)
	if err != nil {
		r.note("CPU profile from %s: %v", url, err)
		return ""
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		r.note("CPU profile from %s: %s", url, resp.Status)
		return ""
	}
	b, err := io.ReadAll(resp.Body)
	if err == nil {
		err = os.WriteFile(path, b, 0o644)
	}
	if err != nil {
		r.note("CPU profile to %s: %v", path, err)
		return ""
	}
	r.logf("CPU profile (%d s) written to %s (go tool pprof -top %s)", secs, path, path)
	return path
}

// rotated is sides in round's order: each round starts with the next
// side, so that none is always measured first or last.
func rotated[T any](sides []T, round int) []T {
	k := (round - 1) % len(sides)
	return append(slices.Clone(sides[k:]), sides[:k]...)
}

// runLoads runs the loads at once and sums them into one result: the
// counts and rates added, the worst p99, the first load's window.
func (r *runner) runLoads(ctx context.Context, p *Phase, label string, cfgs []load.Config) (*load.Result, error) {
	if len(cfgs) == 1 {
		return r.runLoad(ctx, p, label, cfgs[0])
	}
	results := make([]*load.Result, len(cfgs))
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i, cfg := range cfgs {
		if i > 0 {
			cfg.Log, cfg.Progress = nil, nil // one account of the run is enough
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = r.runLoad(ctx, p, fmt.Sprintf("%s, part %d of %d", label, i+1, len(cfgs)), cfg)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return sumResults(results), nil
}

// sumResults is several simultaneous loads as one.
func sumResults(rs []*load.Result) *load.Result {
	sum := *rs[0]
	sum.Statuses = map[string]int64{}
	for i, x := range rs {
		if i > 0 {
			sum.Requests += x.Requests
			sum.Admitted += x.Admitted
			sum.Rejected += x.Rejected
			sum.Errors += x.Errors
			sum.RequestsPerS += x.RequestsPerS
			sum.AdmittedPerS += x.AdmittedPerS
			sum.RejectedPerS += x.RejectedPerS
			sum.LatencyAdmitted.P99Ms = max(sum.LatencyAdmitted.P99Ms, x.LatencyAdmitted.P99Ms)
			sum.LatencyRejected.P99Ms = max(sum.LatencyRejected.P99Ms, x.LatencyRejected.P99Ms)
		}
		for k, v := range x.Statuses {
			sum.Statuses[k] += v
		}
	}
	return &sum
}
