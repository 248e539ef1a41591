package bench

import (
	"context"
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

// The cluster phases measure Tally in cluster mode (TALLY_ETCD_ENDPOINTS:
// one owner node per partition of users, a non-owner forwarding a request
// once to the owner; docs/decisions/0021-cluster-ownership-on-etcd.md and
// 0023-forward-once-to-the-owner.md) against what the same load gets
// without it, in one run on this machine:
//
//   - cluster-hot: one hot user on enterprise (no limit), the 64 clients
//     spread over three cluster nodes, against the same load spread over
//     three single-node Tallies on one database and Redis prefix
//     ("ownership off": every process admits for the user and they
//     contend on its rows in Postgres), target ≥ 2×; and against all of
//     it sent to one single-node Tally alone, target ≥ 0.8×.
//   - cluster-forward: over-limit rejections of 1 000 full users on free,
//     all owned by one node (found from X-Tally-Node on a first request
//     per partition), sent through another node (one forward each)
//     against sent to the owner itself, target ≥ 0.5×.
//   - cluster-many: durable admitted creates/s of 10 000 users on
//     enterprise, 256 clients spread over three cluster nodes, against
//     all of it sent to one single-node Tally, target ≥ 1×.
//
// Each phase starts its own three-member etcd (etcd.go) and its own Tally
// children, each side on a fresh database and its own Redis key prefix,
// and stops them all at its end. The sides are measured in rounds
// (--rounds), their order rotating from round to round so that a drift
// over the phase favours none; the figure compared is the ratio of the
// sides' medians, as everywhere in this benchmark (rounds.go).
//
// Everything shares the machine's two cores: three nodes on one machine
// get no more CPU than one node, and every forwarded request costs a
// second HTTP exchange on the same cores. So besides the rate, each
// round records the CPU its side's Tally processes spent in the measured
// window (/proc/<pid>/stat, sampled every 100 ms; cpuTrace) per answer:
// it moves far less with the machine's other work than the rate, and it
// is what says how the cluster would scale with a machine per node
// (docs/performance.md, "Cluster").

// clusterPhaseNames are the cluster phases, in the order they run.
var clusterPhaseNames = []string{"cluster-hot", "cluster-forward", "cluster-many"}

// The cluster phases' shapes and targets.
const (
	clusterNodes       = 3
	etcdMembers        = 3
	clusterHotTarget   = 2.0 // vs ownership off
	clusterOneTarget   = 0.8 // vs one node alone
	clusterFwdTarget   = 0.5 // non-owner vs owner
	clusterManyTarget  = 1.0 // vs one node
	ownershipTimeout   = 90 * time.Second
	cpuSampleEvery     = 100 * time.Millisecond
	probeConcurrency   = 16
	clusterProfileSecs = 10
	clusterPoolSize    = 8
)

// The sides of the cluster phases' comparisons.
const (
	sideCluster  = "cluster"
	sideOff      = "ownership-off"
	sideOne      = "one-node"
	sideOwner    = "owner"
	sideNonOwner = "non-owner"
)

// ClusterRun is one side of one round of a cluster phase.
type ClusterRun struct {
	Phase string `json:"phase"`
	Round int    `json:"round"`
	Side  string `json:"side"`
	// Targets is how many Tally processes the load was spread over;
	// Processes how many were counted in CPU.
	Targets   int `json:"targets"`
	Processes int `json:"processes"`
	// PerS is admitted/s (rejected/s in cluster-forward), Answers their
	// count in the measured window.
	PerS    float64 `json:"per_s"`
	Answers int64   `json:"answers"`
	P99Ms   float64 `json:"p99_ms"`
	// CPUSeconds is what the side's Tally processes spent in the window;
	// MicrosPerAnswer is that per answer, CoresBusy per second of window.
	CPUSeconds      float64 `json:"cpu_s"`
	WindowS         float64 `json:"window_s"`
	MicrosPerAnswer float64 `json:"cpu_us_per_answer"`
	CoresBusy       float64 `json:"cores_busy"`
	// MachineBusy is the machine's busy cores in the window (/proc/stat:
	// the load client, Postgres, Redis, etcd and anything else running).
	MachineBusy float64 `json:"machine_cores_busy"`
	// Profile is a CPU profile of one node taken in the window
	// (--cluster-pprof), and Node which.
	Profile     string `json:"profile,omitempty"`
	ProfileNode string `json:"profile_node,omitempty"`
}

// clusterSide is one side of a comparison: where the load goes and whose
// CPU counts.
type clusterSide struct {
	name    string
	targets []*child // the load is spread over these
	counted []*child // their CPU is the side's (targets, and any node a forward reaches)
}

// nodeGroup is a set of Tally children of one side: cluster nodes (ids
// set) or single nodes.
type nodeGroup struct {
	label string
	ids   []string
	nodes []*child
}

func (g *nodeGroup) urls() []string {
	out := make([]string, len(g.nodes))
	for i, c := range g.nodes {
		out[i] = c.url()
	}
	return out
}

// nodeOf is the child whose cluster node id is id.
func (g *nodeGroup) nodeOf(id string) *child {
	if i := slices.Index(g.ids, id); i >= 0 {
		return g.nodes[i]
	}
	return nil
}

// groupSpec is how to start a nodeGroup.
type groupSpec struct {
	label      string
	db, prefix string
	n          int
	etcd       *etcdCluster // nil: single-node mode
}

// startGroup starts the group's Tally children one after the other (the
// first migrates the fresh database). Cluster nodes get a port chosen
// before they start, since the other nodes must be told where to forward
// (TALLY_ADVERTISE_URL); they join once they serve (app/cluster.go), so
// the caller waits for ownership to settle (waitOwnership) before
// measuring.
func (r *runner) startGroup(ctx context.Context, p *Phase, s groupSpec) (*nodeGroup, error) {
	g := &nodeGroup{label: s.label}
	var ports []int
	secret := randomSecret()
	if s.etcd != nil {
		var err error
		if ports, err = freePorts(s.n); err != nil {
			return nil, err
		}
	}
	for i := range s.n {
		// Up to seven Tallies run at once here, and pgx keeps the
		// connections it opened (a verification's reads open many): at
		// the default 16 each they could take the machine's Postgres past
		// its max_connections (100 here). Every side gets the same pool.
		env := append(r.tallyEnvOn(s.db, s.prefix, mainIdle, childGOGC), "TALLY_DATABASE_MAX_CONNS="+strconv.Itoa(clusterPoolSize))
		if s.etcd != nil {
			id := fmt.Sprintf("%s-%d", s.label, i+1)
			addr := fmt.Sprintf("127.0.0.1:%d", ports[i])
			env = append(env,
				"TALLY_HTTP_ADDR="+addr, // the last of a duplicated variable wins
				"TALLY_ADVERTISE_URL=http://"+addr,
				"TALLY_NODE_ID="+id,
				"TALLY_ETCD_ENDPOINTS="+s.etcd.endpoints(),
				"TALLY_CLUSTER_SECRET="+secret,
			)
			g.ids = append(g.ids, id)
		}
		if r.opts.ClusterPprof {
			env = append(env, "TALLY_OPS_PPROF=true")
		}
		logPath := filepath.Join(r.outDir, fmt.Sprintf("%s-%s-%d.log", r.stem, s.label, i+1))
		p.LogFiles = append(p.LogFiles, logPath)
		c, err := startChild(ctx, r.exe, cmdServeTally, env, logPath)
		if err != nil {
			r.stopGroup(g)
			return nil, fmt.Errorf("%s node %d: %w", s.label, i+1, err)
		}
		g.nodes = append(g.nodes, c)
	}
	mode := "single-node mode"
	if s.etcd != nil {
		mode = "cluster mode, etcd " + s.etcd.endpoints()
	}
	r.logf("%s: %d Tally node(s) on %s (%s), database %s", s.label, s.n, strings.Join(g.urls(), ", "), mode, s.db)
	return g, nil
}

// stopGroup stops the group's children, all at once: cluster nodes hand
// their partitions off as they leave (bounded by TALLY_SHUTDOWN_TIMEOUT).
func (r *runner) stopGroup(g *nodeGroup) {
	var wg sync.WaitGroup
	for _, c := range g.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.stop(); err != nil {
				r.note("%s: a node did not stop cleanly: %v", g.label, err)
			}
		}()
	}
	wg.Wait()
}

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
	id   string
}

// measureSide runs one load against a side and reads the CPU its
// processes spent in the load's measured window.
func (r *runner) measureSide(ctx context.Context, p *Phase, round int, side clusterSide, cfg load.Config, rejections bool, prof *profileReq) (ClusterRun, error) {
	run := ClusterRun{Phase: p.Name, Round: round, Side: side.name, Targets: len(side.targets), Processes: len(side.counted)}
	label := fmt.Sprintf("%s, %s, round %d", p.Name, side.name, round)
	pids := make([]int, len(side.counted))
	for i, c := range side.counted {
		pids[i] = c.pid()
	}
	var profDone chan string
	if prof != nil {
		profDone = make(chan string, 1)
		path := filepath.Join(r.outDir, fmt.Sprintf("%s-%s-%s-r%d-%s.pprof", r.stem, p.Name, side.name, round, prof.id))
		go func() { profDone <- r.captureProfile(ctx, prof.node, path, cfg.Warmup) }()
	}
	trace := startCPUTrace(pids, cpuSampleEvery)
	res, err := r.runLoad(ctx, p, label, cfg)
	samples := trace.Stop()
	if profDone != nil {
		if path := <-profDone; path != "" {
			run.Profile, run.ProfileNode = path, prof.id
			p.LogFiles = append(p.LogFiles, path)
		}
	}
	if err != nil {
		return run, err
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
	what := "admitted"
	if rejections {
		what = "rejected"
	}
	r.logf("%s: %.0f %s/s over %d node(s), p99 %.2f ms; Tally CPU %.2f cores, %.1f µs per answer; machine %.2f of %d cores busy",
		label, run.PerS, what, run.Targets, run.P99Ms, run.CoresBusy, run.MicrosPerAnswer, run.MachineBusy, runtime.NumCPU())
	return run, nil
}

// captureProfile takes a CPU profile of a node's ops listener (pprof is
// on with --cluster-pprof) once the load's warm-up is over, and writes it
// to path; it returns path, or "" after noting why not.
func (r *runner) captureProfile(ctx context.Context, c *child, path string, warmup time.Duration) string {
	select {
	case <-ctx.Done():
		return ""
	case <-time.After(warmup + 200*time.Millisecond):
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

// ---- the phases ----

// withEtcd runs a cluster phase f on an etcd of its own, with the probe
// users f finds partition owners with; etcd stops after f has returned
// (f stops its nodes before it returns).
func (r *runner) withEtcd(ctx context.Context, p *Phase, f func(e *etcdCluster, ps *probeSet) error) error {
	bin, err := etcdBinary(r.opts.EtcdBin)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(r.tmp, p.Name+"-etcd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	logPrefix := filepath.Join(r.outDir, r.stem+"-"+p.Name)
	e, err := startEtcd(ctx, bin, dir, logPrefix, etcdMembers)
	if err != nil {
		return err
	}
	for _, m := range e.members {
		p.LogFiles = append(p.LogFiles, m.log)
	}
	defer e.stop()
	r.logf("%s: etcd (%s) serving on %s", p.Name, bin, e.endpoints())
	ps, err := newProbeSet("bench-probe-"+randomHex(3), r.secret)
	if err != nil {
		return err
	}
	return f(e, ps)
}

// phaseDB creates a fresh database for one side of a phase, dropped when
// the returned function is called (after the side's nodes stopped).
func (r *runner) phaseDB(ctx context.Context, suffix string) (string, func(), error) {
	db, err := r.st.extraDB(ctx, suffix)
	if err != nil {
		return "", nil, err
	}
	return db, func() {
		if e := r.st.dropDB(db); e != nil {
			r.logf("%v (dropped at the end instead)", e)
		}
	}, nil
}

func (r *runner) phaseClusterHot(ctx context.Context, p *Phase) error {
	return r.withEtcd(ctx, p, func(e *etcdCluster, ps *probeSet) error {
		dbC, dropC, err := r.phaseDB(ctx, "clhot")
		if err != nil {
			return err
		}
		defer dropC()
		dbO, dropO, err := r.phaseDB(ctx, "clhot_off")
		if err != nil {
			return err
		}
		defer dropO()
		cl, err := r.startGroup(ctx, p, groupSpec{label: "clhot", db: dbC, prefix: r.st.redisPrefix + "clhot:", n: clusterNodes, etcd: e})
		if err != nil {
			return err
		}
		defer r.stopGroup(cl)
		// Ownership off: three single-node Tallies on one database and one
		// Redis prefix, as several processes behind a load balancer are
		// deployed without a cluster; the first of them is also the "one
		// node alone".
		off, err := r.startGroup(ctx, p, groupSpec{label: "clhot-off", db: dbO, prefix: r.st.redisPrefix + "clhotoff:", n: clusterNodes})
		if err != nil {
			return err
		}
		defer r.stopGroup(off)
		own, err := r.waitOwnership(ctx, cl, ps)
		if err != nil {
			return err
		}
		sides := []clusterSide{
			{name: sideOff, targets: off.nodes, counted: off.nodes},
			{name: sideOne, targets: off.nodes[:1], counted: off.nodes[:1]},
			{name: sideCluster, targets: cl.nodes, counted: cl.nodes},
		}
		tag := randomHex(3)
		for round := 1; round <= r.opts.Rounds; round++ {
			for _, s := range rotated(sides, round) {
				r.settle(ctx, p.Name)
				cfg := r.loadConfig(s.targets[0].url())
				cfg.URLs = urlsOf(s.targets)
				cfg.Hot, cfg.Plan = true, "enterprise"
				cfg.UserPrefix = fmt.Sprintf("bench-clhot-%s-%s-r%d", tag, s.name, round)
				var prof *profileReq
				if r.opts.ClusterPprof && s.name == sideCluster && round == r.opts.Rounds {
					// A node that forwards: the hot user's owner does not.
					owner := own[domain.PartitionOf(cfg.UserPrefix+"-0")]
					for i, id := range cl.ids {
						if id != owner {
							prof = &profileReq{node: cl.nodes[i], id: id}
							break
						}
					}
				}
				x, err := r.measureSide(ctx, p, round, s, cfg, false, prof)
				if err != nil {
					return err
				}
				r.clusterRuns = append(r.clusterRuns, x)
			}
		}
		return nil
	})
}

func (r *runner) phaseClusterForward(ctx context.Context, p *Phase) error {
	return r.withEtcd(ctx, p, func(e *etcdCluster, ps *probeSet) error {
		db, drop, err := r.phaseDB(ctx, "clfwd")
		if err != nil {
			return err
		}
		defer drop()
		cl, err := r.startGroup(ctx, p, groupSpec{label: "clfwd", db: db, prefix: r.st.redisPrefix + "clfwd:", n: clusterNodes, etcd: e})
		if err != nil {
			return err
		}
		defer r.stopGroup(cl)
		own, err := r.waitOwnership(ctx, cl, ps)
		if err != nil {
			return err
		}
		// Every user is owned by the first node; the second forwards.
		ownerID, fwdID := cl.ids[0], cl.ids[1]
		owner, fwd := cl.nodes[0], cl.nodes[1]
		users := usersOwnedBy(own, ownerID, "bench-clfwd-"+randomHex(3), overUsers)
		r.logf("%s: %d users on free, all owned by %s (X-Tally-Node of a first request per partition); %s forwards", p.Name, len(users), ownerID, fwdID)
		if err := r.fillUsers(ctx, p, owner.url(), users); err != nil {
			return err
		}
		sides := []clusterSide{
			{name: sideOwner, targets: []*child{owner}, counted: cl.nodes},
			{name: sideNonOwner, targets: []*child{fwd}, counted: cl.nodes},
		}
		for round := 1; round <= r.opts.Rounds; round++ {
			for _, s := range rotated(sides, round) {
				r.settle(ctx, p.Name)
				cfg := r.loadConfig(s.targets[0].url())
				cfg.UserIDs, cfg.Plan, cfg.NoProvision = users, "free", true
				var prof *profileReq
				if r.opts.ClusterPprof && round == r.opts.Rounds {
					prof = &profileReq{node: s.targets[0], id: map[string]string{sideOwner: ownerID, sideNonOwner: fwdID}[s.name]}
				}
				x, err := r.measureSide(ctx, p, round, s, cfg, true, prof)
				if err != nil {
					return err
				}
				r.clusterRuns = append(r.clusterRuns, x)
			}
		}
		// The comparison means something only if the users stayed with
		// their owner throughout.
		client := &http.Client{Timeout: 5 * time.Second}
		defer client.CloseIdleConnections()
		if after := sweep(ctx, client, cl.urls(), ps); after != own {
			r.note("%s: partition ownership changed during the phase: some rejections may have taken another path", p.Name)
		}
		return nil
	})
}

// fillUsers fills the given users on free to their limit, verified, as
// the over-limit phase fills its own.
func (r *runner) fillUsers(ctx context.Context, p *Phase, url string, users []string) error {
	fill := r.loadConfig(url)
	fill.UserIDs, fill.Plan = users, "free"
	fill.Duration, fill.Warmup, fill.Requests = 0, 0, int64(len(users)*(freeLimit+1))
	fill.NoVerify, fill.Progress = false, nil
	want := int64(len(users) * freeLimit)
	var admitted int64
	for round := 1; admitted < want; round++ {
		if round > 5 {
			return fmt.Errorf("the users are still not full after 5 fill rounds (%d of %d sessions admitted)", admitted, want)
		}
		res, err := r.runLoad(ctx, p, fmt.Sprintf("%s: fill round %d", p.Name, round), fill)
		if err != nil {
			return err
		}
		admitted += res.Admitted
		r.logf("%s: fill round %d: %d admitted (%d of %d), %d rejected", p.Name, round, res.Admitted, admitted, want, res.Rejected)
		fill.NoProvision, fill.NoVerify, fill.Requests = true, true, int64(len(users)*2)
	}
	return nil
}

func (r *runner) phaseClusterMany(ctx context.Context, p *Phase) error {
	return r.withEtcd(ctx, p, func(e *etcdCluster, ps *probeSet) error {
		dbC, dropC, err := r.phaseDB(ctx, "clmany")
		if err != nil {
			return err
		}
		defer dropC()
		dbO, dropO, err := r.phaseDB(ctx, "clmany_one")
		if err != nil {
			return err
		}
		defer dropO()
		cl, err := r.startGroup(ctx, p, groupSpec{label: "clmany", db: dbC, prefix: r.st.redisPrefix + "clmany:", n: clusterNodes, etcd: e})
		if err != nil {
			return err
		}
		defer r.stopGroup(cl)
		one, err := r.startGroup(ctx, p, groupSpec{label: "clmany-one", db: dbO, prefix: r.st.redisPrefix + "clmanyone:", n: 1})
		if err != nil {
			return err
		}
		defer r.stopGroup(one)
		if _, err := r.waitOwnership(ctx, cl, ps); err != nil {
			return err
		}
		sides := []clusterSide{
			{name: sideOne, targets: one.nodes, counted: one.nodes},
			{name: sideCluster, targets: cl.nodes, counted: cl.nodes},
		}
		tag := randomHex(3)
		for round := 1; round <= r.opts.Rounds; round++ {
			for _, s := range rotated(sides, round) {
				r.settle(ctx, p.Name)
				cfg := r.loadConfig(s.targets[0].url())
				cfg.URLs = urlsOf(s.targets)
				cfg.Users, cfg.Plan, cfg.Concurrency = manyUsers, "enterprise", highWorkers
				cfg.UserPrefix = fmt.Sprintf("bench-clmany-%s-%s-r%d", tag, s.name, round)
				var prof *profileReq
				if r.opts.ClusterPprof && s.name == sideCluster && round == r.opts.Rounds {
					prof = &profileReq{node: cl.nodes[0], id: cl.ids[0]}
				}
				x, err := r.measureSide(ctx, p, round, s, cfg, false, prof)
				if err != nil {
					return err
				}
				r.clusterRuns = append(r.clusterRuns, x)
			}
		}
		return nil
	})
}

func urlsOf(cs []*child) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.url()
	}
	return out
}

// ---- the table ----

// clusterFigure is one side's rounds of one phase: the rate, or the CPU
// per answer.
func (r *runner) clusterFigure(phase, side string, f func(ClusterRun) float64) []float64 {
	var out []float64
	for _, x := range r.clusterRuns {
		if x.Phase == phase && x.Side == side {
			out = append(out, f(x))
		}
	}
	return out
}

// clusterRows are the cluster phases' rows of the table.
func (r *runner) clusterRows(compared func(Row, []float64, []float64) Row) []Row {
	rate := func(x ClusterRun) float64 { return x.PerS }
	cpu := func(x ClusterRun) float64 { return x.MicrosPerAnswer }
	fig := func(phase, side string, f func(ClusterRun) float64) []float64 { return r.clusterFigure(phase, side, f) }
	var rows []Row
	rows = append(rows,
		compared(Row{Key: "cluster_hot_vs_off", Figure: "one hot user through 3 cluster nodes, 64 clients: admitted/s", Unit: "/s",
			BaselineName: "ownership off: 3 single nodes, one database", Target: atLeastRatio(clusterHotTarget)},
			fig("cluster-hot", sideCluster, rate), fig("cluster-hot", sideOff, rate)),
		compared(Row{Key: "cluster_hot_vs_one", Figure: "  … against one node alone", Unit: "/s",
			BaselineName: "all to one single node", Target: atLeastRatio(clusterOneTarget)},
			fig("cluster-hot", sideCluster, rate), fig("cluster-hot", sideOne, rate)),
		compared(Row{Key: "cluster_hot_cpu", Figure: "  … Tally CPU per admitted create (3 nodes vs one node)", Unit: "µs",
			BaselineName: "one single node"},
			fig("cluster-hot", sideCluster, cpu), fig("cluster-hot", sideOne, cpu)),
		compared(Row{Key: "cluster_forward", Figure: fmt.Sprintf("over-limit rejections/s through a non-owner (one forward), %s full users", groupDigits(overUsers)), Unit: "/s",
			BaselineName: "through the owner", Target: atLeastRatio(clusterFwdTarget)},
			fig("cluster-forward", sideNonOwner, rate), fig("cluster-forward", sideOwner, rate)),
		compared(Row{Key: "cluster_forward_cpu", Figure: "  … Tally CPU per rejection (all 3 nodes)", Unit: "µs",
			BaselineName: "through the owner"},
			fig("cluster-forward", sideNonOwner, cpu), fig("cluster-forward", sideOwner, cpu)),
		compared(Row{Key: "cluster_many", Figure: fmt.Sprintf("durable admitted creates/s, %s users over 3 cluster nodes, 256 clients", groupDigits(manyUsers)), Unit: "/s",
			BaselineName: "one single node", Target: atLeastRatio(clusterManyTarget)},
			fig("cluster-many", sideCluster, rate), fig("cluster-many", sideOne, rate)),
	)
	manyCPU := compared(Row{Key: "cluster_many_cpu", Figure: "  … Tally CPU per admitted create (3 nodes vs one node)", Unit: "µs",
		BaselineName: "one single node"},
		fig("cluster-many", sideCluster, cpu), fig("cluster-many", sideOne, cpu))
	if m := projectedScaling(manyCPU.Tally, manyCPU.Baseline); m > 0 {
		manyCPU.Note = fmt.Sprintf("on one machine the nodes share its cores; with a machine per node (and Postgres not the bound) "+
			"the cluster would admit about %.1f× one node (3 × one node's CPU per create ÷ the cluster's; docs/performance.md, \"Cluster\")", m)
	}
	return append(rows, manyCPU)
}

// projectedScaling is what three nodes on three machines would admit
// against one node, if CPU bounds each node: three times one node's
// capacity, each create costing the cluster's CPU instead of one node's.
func projectedScaling(clusterCPU, oneCPU *float64) float64 {
	if clusterCPU == nil || oneCPU == nil || *clusterCPU <= 0 {
		return 0
	}
	return clusterNodes * *oneCPU / *clusterCPU
}

// clusterCells is the cluster phases' rounds as a table.
func clusterCells(runs []ClusterRun) ([]string, [][]string) {
	head := []string{"phase", "round", "side", "nodes", "rate", "p99", "Tally CPU", "Tally cores", "CPU per answer", "machine cores"}
	var rows [][]string
	for _, x := range runs {
		rate := fmtValue(&x.PerS, "/s")
		if x.Phase == "cluster-forward" {
			rate += " rejected"
		} else {
			rate += " admitted"
		}
		rows = append(rows, []string{x.Phase, fmt.Sprint(x.Round), x.Side, fmt.Sprintf("%d (CPU of %d)", x.Targets, x.Processes), rate,
			fmtValue(&x.P99Ms, "ms"), fmtValue(&x.CPUSeconds, "s"), fmt.Sprintf("%.2f", x.CoresBusy), fmtValue(&x.MicrosPerAnswer, "µs"), fmt.Sprintf("%.2f", x.MachineBusy)})
	}
	return head, rows
}
