package bench

import (
	"context"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/tools/load"
	"github.com/tally-dev/tally/transport"
)

func TestCPUBetween(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// The processes burn 0.5 cores from 0 to 1 s, then 1.5 cores; the
	// machine twice that.
	samples := []cpuSample{
		{at(0), 0, 0},
		{at(1000), 500 * time.Millisecond, time.Second},
		{at(2000), 2 * time.Second, 4 * time.Second},
	}
	for _, c := range []struct {
		from, to int
		of       func(cpuSample) time.Duration
		want     time.Duration
	}{
		{0, 2000, tallyCPU, 2 * time.Second},
		{500, 1500, tallyCPU, 250*time.Millisecond + 750*time.Millisecond},
		{250, 750, tallyCPU, 250 * time.Millisecond},
		{500, 1500, machineCPU, 2 * time.Second},
	} {
		got, ok := cpuBetween(samples, at(c.from), at(c.to), c.of)
		if !ok || got != c.want {
			t.Errorf("cpuBetween(%d–%d ms) = %v, %v; want %v", c.from, c.to, got, ok, c.want)
		}
	}
	// A window the samples do not cover has no figure, rather than a
	// partial one that would look like a cheaper server.
	for _, w := range [][2]int{{-100, 1000}, {1000, 2100}, {1500, 1500}, {1500, 1000}} {
		if got, ok := cpuBetween(samples, at(w[0]), at(w[1]), tallyCPU); ok {
			t.Errorf("cpuBetween(%d–%d ms) = %v for a window the samples do not cover", w[0], w[1], got)
		}
	}
	if _, ok := cpuBetween(samples[:1], at(0), at(0), tallyCPU); ok {
		t.Error("one sample gave a figure")
	}
}

func TestParseMachineBusy(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	stat := "cpu  1000 20 300 9000 50 4 6 70 500 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
	got, err := parseMachineBusy([]byte(stat))
	if want := time.Duration(1000+20+300+4+6) * 10 * time.Millisecond; err != nil || got != want {
		t.Errorf("parseMachineBusy = %v, %v; want %v (user+nice+system+irq+softirq)", got, err, want)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4 5 6 7 8\n", "cpu 1 2 3\n", "cpu 1 2 x 4 5 6 7 8\n", "cpu 1 2 -3 4 5 6 7 8\n"} {
		if _, err := parseMachineBusy([]byte(bad)); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
	if _, err := readMachineBusy(); err != nil && isLinux() {
		t.Errorf("readMachineBusy on Linux: %v", err)
	}
}

func isLinux() bool {
	_, err := os.Stat("/proc/stat")
	return err == nil
}

func TestProbeSetCoversEveryPartition(t *testing.T) {
	ps, err := newProbeSet("probe-x", "a-secret-of-thirty-two-bytes-at-least")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for p, id := range ps.ids {
		if id == "" || domain.PartitionOf(id) != domain.Partition(p) || seen[id] || ps.tokens[p] == "" {
			t.Fatalf("partition %d: probe user %q (partition %d), token %q", p, id, domain.PartitionOf(id), ps.tokens[p])
		}
		seen[id] = true
	}
}

func TestOwnershipMaps(t *testing.T) {
	ids := []string{"n1", "n2", "n3"}
	var full owners
	for p := range full {
		full[p] = ids[p%3]
	}
	if !settledOwners(full, ids) {
		t.Error("a complete map shared by all nodes is not settled")
	}
	holes := full
	holes[7] = ""
	if settledOwners(holes, ids) {
		t.Error("a partition without an agreed owner counted as settled")
	}
	twoOnly := full
	for p := range twoOnly {
		if twoOnly[p] == "n3" {
			twoOnly[p] = "n1"
		}
	}
	if settledOwners(twoOnly, ids) {
		t.Error("a node owning nothing (not joined yet) counted as settled")
	}
	stranger := full
	stranger[0] = "old-node"
	if settledOwners(stranger, ids) {
		t.Error("an owner outside the group counted as settled")
	}
	other := full
	other[9] = "n3" // n1's in full
	if got := agreed([][domain.Partitions]string{full, full, other}); got[9] != "" || got[8] != full[8] {
		t.Errorf("agreed: partition 9 (disputed) %q, partition 8 %q", got[9], got[8])
	}

	users := usersOwnedBy(full, "n2", "u", 50)
	if len(users) != 50 {
		t.Fatalf("%d users, want 50", len(users))
	}
	for _, u := range users {
		if full[domain.PartitionOf(u)] != "n2" {
			t.Errorf("user %s is in partition %d, owned by %s", u, domain.PartitionOf(u), full[domain.PartitionOf(u)])
		}
	}
	slices.Sort(users)
	if len(slices.Compact(users)) != 50 {
		t.Error("a user was drawn twice")
	}
}

// fakeNodes are HTTP servers answering the usage GET the way cluster
// nodes do: X-Tally-Node names the partition's owner. Until settleAfter
// requests have been answered, the third node answers 503 (naming itself)
// for partitions it does not own, as a node does while it joins.
func fakeNodes(t *testing.T, ps *probeSet, own owners, settleAfter int64, served *atomic.Int64) *nodeGroup {
	t.Helper()
	byToken := map[string]domain.Partition{}
	for p, tok := range ps.tokens {
		byToken[tok] = domain.Partition(p)
	}
	g := &nodeGroup{label: "fake", ids: []string{"n1", "n2", "n3"}}
	for i, id := range g.ids {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p, ok := byToken[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
			if !ok || r.URL.Path != "/api/v1/usage" {
				http.Error(w, "unknown", http.StatusUnauthorized)
				return
			}
			if served.Add(1) <= settleAfter && i == 2 && own[p] != id {
				w.Header().Set(transport.HeaderNode, id)
				http.Error(w, "moving", http.StatusServiceUnavailable)
				return
			}
			w.Header().Set(transport.HeaderNode, own[p])
			w.Write([]byte(`{}`))
		}))
		t.Cleanup(srv.Close)
		g.nodes = append(g.nodes, &child{name: id, addr: strings.TrimPrefix(srv.URL, "http://"), exited: make(chan struct{})})
	}
	return g
}

// waitOwnership returns the owners every node names once they agree and
// stay the same over two sweeps, and not while a node still answers 503.
func TestWaitOwnership(t *testing.T) {
	ps, err := newProbeSet("probe", "a-secret-of-thirty-two-bytes-at-least")
	if err != nil {
		t.Fatal(err)
	}
	var own owners
	for p := range own {
		own[p] = []string{"n1", "n2", "n3"}[(p*7)%3]
	}
	var served atomic.Int64
	sweepSize := int64(3 * domain.Partitions)
	g := fakeNodes(t, ps, own, sweepSize, &served)
	r := &runner{stderr: io.Discard}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := r.waitOwnership(ctx, g, ps)
	if err != nil {
		t.Fatal(err)
	}
	if got != own {
		t.Error("waitOwnership returned another map than the nodes name")
	}
	// The first sweep saw 503s, so two more that agree were needed.
	if n := served.Load(); n != 3*sweepSize {
		t.Errorf("settled after %d requests, want three sweeps of %d: one with moving partitions, two that agree", n, sweepSize)
	}
}

func TestRotated(t *testing.T) {
	s := []string{"a", "b", "c"}
	for round, want := range map[int]string{1: "abc", 2: "bca", 3: "cab", 4: "abc"} {
		if got := strings.Join(rotated(s, round), ""); got != want {
			t.Errorf("round %d: %s, want %s", round, got, want)
		}
	}
	if strings.Join(s, "") != "abc" {
		t.Error("rotated changed its argument")
	}
}

// The cluster rows compare the medians of each side's rounds, and the CPU
// row projects what three machines would give.
func TestClusterRows(t *testing.T) {
	r := &runner{opts: Options{Rounds: 3, Duration: 5 * time.Second}}
	add := func(phase, side string, rates, cpus []float64) {
		for i := range rates {
			r.clusterRuns = append(r.clusterRuns, ClusterRun{Phase: phase, Round: i + 1, Side: side, PerS: rates[i], MicrosPerAnswer: cpus[i]})
		}
	}
	add("cluster-hot", sideCluster, []float64{9000, 10000, 11000}, []float64{90, 80, 100})
	add("cluster-hot", sideOff, []float64{4000, 5000, 6000}, []float64{70, 60, 80})
	add("cluster-hot", sideOne, []float64{12000, 12500, 13000}, []float64{40, 45, 50})
	add("cluster-forward", sideOwner, []float64{40000, 42000, 41000}, []float64{20, 21, 19})
	add("cluster-forward", sideNonOwner, []float64{19000, 20000, 21000}, []float64{55, 50, 60})
	rows := map[string]Row{}
	for _, row := range r.rows() {
		rows[row.Key] = row
	}
	for _, c := range []struct {
		key    string
		ratio  float64
		status string
	}{
		{"cluster_hot_vs_off", 2, StatusMet},
		{"cluster_hot_vs_one", 10000.0 / 12500, StatusMet},
		{"cluster_hot_cpu", 90.0 / 45, StatusInfo},
		{"cluster_forward", 20000.0 / 41000, StatusMissed},
		{"cluster_forward_cpu", 55.0 / 20, StatusInfo},
	} {
		row := rows[c.key]
		if row.Ratio == nil || math.Abs(*row.Ratio-c.ratio) > 1e-9 || row.Status != c.status {
			t.Errorf("%s: %+v; want ratio %v, %s", c.key, row, c.ratio, c.status)
		}
	}
	if s := rows["cluster_many"].Status; s != StatusSkipped {
		t.Errorf("cluster_many without rounds: %s, want skipped", s)
	}

	add("cluster-many", sideOne, []float64{15000, 14000}, []float64{50, 54})
	add("cluster-many", sideCluster, []float64{12000, 11000}, []float64{100, 116})
	add("cluster-many", sideRouted, []float64{14000, 14500}, []float64{60, 70})
	rows = map[string]Row{}
	for _, row := range r.rows() {
		rows[row.Key] = row
	}
	if row := rows["cluster_many"]; row.Status != StatusMissed || math.Abs(*row.Ratio-11500.0/14500) > 1e-9 {
		t.Errorf("cluster_many: %+v", row)
	}
	// 3 × 52 µs ÷ 108 µs, and 3 × 52 µs ÷ 65 µs.
	if note := rows["cluster_many_cpu"].Note; !strings.Contains(note, "about 1.4× one node") {
		t.Errorf("cluster_many_cpu note: %q", note)
	}
	if note := rows["cluster_many_routed_cpu"].Note; !strings.Contains(note, "about 2.4× one node") {
		t.Errorf("cluster_many_routed_cpu note: %q", note)
	}
	if row := rows["cluster_many_routed"]; row.Status != StatusInfo || math.Abs(*row.Ratio-14250.0/14500) > 1e-9 {
		t.Errorf("cluster_many_routed: %+v", row)
	}
	head, cells := clusterCells(r.clusterRuns)
	if len(cells) != len(r.clusterRuns) || len(cells[0]) != len(head) || !strings.HasSuffix(cells[9][4], "rejected") {
		t.Errorf("round-by-round table: %v / %v", head, cells)
	}
}

func TestClusterFlags(t *testing.T) {
	o, err := parseFlags([]string{"--skip-cluster"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	r := &runner{opts: o}
	for _, p := range clusterPhaseNames {
		if r.want(p) {
			t.Errorf("--skip-cluster runs %s", p)
		}
	}
	if !r.want("many") {
		t.Error("--skip-cluster skips the many phase")
	}
	o, err = parseFlags([]string{"--only", "cluster-forward,cluster-many", "--cluster-pprof", "--etcd-bin", "/x/etcd"}, io.Discard)
	if err != nil || !o.ClusterPprof || o.EtcdBin != "/x/etcd" {
		t.Fatalf("%+v, %v", o, err)
	}
	r = &runner{opts: o}
	if r.want("cluster-hot") || !r.want("cluster-forward") || !r.want("cluster-many") {
		t.Error("--only selects among the cluster phases")
	}
	r = &runner{opts: Options{}}
	if !r.want("cluster-hot") {
		t.Error("a default run leaves the cluster phases out")
	}
	if _, err := etcdBinary(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "--etcd-bin") {
		t.Errorf("a missing --etcd-bin: %v", err)
	}
}

// startEtcd brings up three real members that report healthy, and stop
// ends them all. It needs bin/etcd (make etcd), like the cluster tests.
func TestStartEtcd(t *testing.T) {
	bin, err := etcdBinary(os.Getenv("TALLY_ETCD_BIN"))
	if err != nil {
		t.Skipf("no etcd server: %v", err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := startEtcd(ctx, bin, dir, filepath.Join(dir, "log"), 3)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			e.stop()
		}
	}()
	eps := strings.Split(e.endpoints(), ",")
	if len(eps) != 3 {
		t.Fatalf("endpoints %q", e.endpoints())
	}
	client := &http.Client{Timeout: 2 * time.Second}
	for _, ep := range eps {
		if !strings.HasPrefix(ep, "http://127.0.0.1:") {
			t.Errorf("endpoint %s is not on loopback", ep)
		}
		if err := etcdHealthy(ctx, client, ep); err != nil {
			t.Errorf("%s: %v", ep, err)
		}
	}
	e.stop()
	stopped = true
	for _, m := range e.members {
		select {
		case <-m.exited:
		default:
			t.Errorf("%s still runs after stop", m.name)
		}
	}
}

// opsServer is a fake ops listener whose /metrics serves body().
func opsServer(t *testing.T, body func() string) *child {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, body())
	}))
	t.Cleanup(srv.Close)
	return &child{name: "fake", opsAddr: strings.TrimPrefix(srv.URL, "http://"), exited: make(chan struct{})}
}

// The commit statistics of a side are summed over its nodes, and
// watchCommits takes the difference over the measured phase only.
func TestCommitStats(t *testing.T) {
	var calls atomic.Int64
	metrics := func(scale float64) func() string {
		return func() string {
			k := float64(calls.Add(1)) // grows with each read
			return "# HELP tally_commit_batch_size …\n" +
				"tally_commit_batch_size_bucket{le=\"1\"} 3\n" +
				"tally_commit_batch_size_sum " + ftoa(scale*k*100) + "\n" +
				"tally_commit_batch_size_count " + ftoa(scale*k*10) + "\n" +
				"tally_commit_seconds_sum " + ftoa(scale*k*0.02) + "\n"
		}
	}
	nodes := []*child{opsServer(t, metrics(1)), opsServer(t, metrics(2))}
	ctx := context.Background()
	s, err := readCommitStats(ctx, nodes)
	if err != nil {
		t.Fatal(err)
	}
	// Reads 1 and 2: 100+400 rows, 10+40 transactions.
	if s.rows != 500 || s.txs != 50 || math.Abs(s.seconds-0.1) > 1e-9 {
		t.Errorf("summed stats %+v", s)
	}
	cfg := load.Config{}
	m := newMeasuredPhase(&cfg)
	done := make(chan struct{})
	var d commitStats
	go func() {
		defer close(done)
		d, err = watchCommits(ctx, m, nodes, 50*time.Millisecond)
	}()
	cfg.OnLoad(time.Now().Add(20 * time.Millisecond))
	<-done
	if err != nil {
		t.Fatal(err)
	}
	// Reads 3, 4 at the start, 5, 6 at the end: (5·100 + 6·200) − (3·100 + 4·200).
	if d.rows != 600 || d.txs != 60 {
		t.Errorf("the window's stats %+v, want the difference of the reads at its two ends", d)
	}
	missing := opsServer(t, func() string { return "tally_live_actors 3\n" })
	if _, err := readCommitStats(ctx, []*child{missing}); err == nil {
		t.Error("a node without the commit histograms gave statistics")
	}
	// A load that never starts (it failed provisioning) ends the wait
	// with its context.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := watchCommits(cctx, newMeasuredPhase(&load.Config{}), nodes, time.Second); err == nil {
		t.Error("watchCommits returned statistics for a load that never started")
	}
}

func ftoa(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// Simultaneous loads add up: counts and rates summed, the worst p99, the
// first one's window.
func TestSumResults(t *testing.T) {
	start := time.Now()
	a := &load.Result{Admitted: 100, AdmittedPerS: 10, Requests: 120, MeasureStart: start, DurationS: 10,
		LatencyAdmitted: load.Latency{P99Ms: 4}, Statuses: map[string]int64{"200": 100, "403": 20}}
	b := &load.Result{Admitted: 300, AdmittedPerS: 30, Requests: 300, MeasureStart: start.Add(time.Millisecond), DurationS: 10.01,
		LatencyAdmitted: load.Latency{P99Ms: 9}, Statuses: map[string]int64{"200": 300}}
	sum := sumResults([]*load.Result{a, b})
	if sum.Admitted != 400 || sum.AdmittedPerS != 40 || sum.Requests != 420 || sum.LatencyAdmitted.P99Ms != 9 ||
		!sum.MeasureStart.Equal(start) || sum.DurationS != 10 || sum.Statuses["200"] != 400 || sum.Statuses["403"] != 20 {
		t.Errorf("sum %+v", sum)
	}
	if a.Admitted != 100 || a.Statuses["200"] != 100 {
		t.Error("sumResults changed its first argument")
	}
}
