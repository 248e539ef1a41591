package cluster_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tally-dev/tally/cluster"
	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
)

// ttl is the lease TTL of the test nodes: short, so that expiry-driven
// tests take seconds, and twice etcd's shortest lease under the test
// cluster's timings, so that a loaded machine does not expire leases of
// live nodes.
const ttl = 2 * time.Second

// call is one hook call, in the order the recorder saw them (its index).
type call struct {
	at    time.Time
	node  string
	kind  string // acquire, acquired, release, released, lost
	p     domain.Partition
	epoch int64
}

// recorder records the hook calls of every node of a test in one order:
// its mutex makes the order of the records the order of the calls.
type recorder struct {
	mu    sync.Mutex
	calls []call
}

func (r *recorder) add(c call) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	c.at = time.Now()
	r.calls = append(r.calls, c)
	return len(r.calls) - 1
}

func (r *recorder) snapshot() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

type hooks struct {
	r    *recorder
	node string
	self *atomic.Pointer[cluster.Node] // the node, once started
}

func (h hooks) Acquire(ctx context.Context, p domain.Partition, epoch int64) error {
	h.r.add(call{node: h.node, kind: "acquire", p: p, epoch: epoch})
	h.r.add(call{node: h.node, kind: "acquired", p: p, epoch: epoch})
	return nil
}

// releaseTakes is how long Release takes in these tests, as if answering
// what is in flight: a next owner that acquired without waiting for it
// would acquire well before it returns.
const releaseTakes = 100 * time.Millisecond

func (h hooks) Release(ctx context.Context, p domain.Partition) error {
	h.r.add(call{node: h.node, kind: "release", p: p})
	if n := h.self.Load(); n != nil && n.Route(p).Self {
		// The core stops taking p's requests now: the edge must not be
		// sending them to it any more, or they would be refused.
		h.r.add(call{node: h.node, kind: "released while routed here", p: p})
	}
	t := time.NewTimer(releaseTakes)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	h.r.add(call{node: h.node, kind: "released", p: p})
	return nil
}

func (h hooks) Lost(p domain.Partition) {
	h.r.add(call{node: h.node, kind: "lost", p: p})
}

// checkAlternation fails the test unless, per node and partition, the
// calls alternate as Hooks promises: acquire, then release or lost, then
// acquire again under a higher epoch than any before.
func (r *recorder) checkAlternation(t *testing.T) {
	t.Helper()
	type key struct {
		node string
		p    domain.Partition
	}
	holding := map[key]bool{}
	last := map[domain.Partition]int64{}
	for i, c := range r.snapshot() {
		k := key{c.node, c.p}
		switch c.kind {
		case "acquire":
			if holding[k] {
				t.Errorf("call %d: %s acquires partition %d it already holds", i, c.node, c.p)
			}
			if c.epoch <= last[c.p] {
				t.Errorf("call %d: %s acquires partition %d under epoch %d, not above %d", i, c.node, c.p, c.epoch, last[c.p])
			}
			holding[k], last[c.p] = true, c.epoch
		case "release", "lost":
			if !holding[k] {
				t.Errorf("call %d: %s %s partition %d it does not hold", i, c.node, c.kind, c.p)
			}
			holding[k] = false
		case "released while routed here":
			t.Errorf("call %d: %s was asked to release partition %d while its routes still served it", i, c.node, c.p)
		}
	}
}

type testNode struct {
	*cluster.Node
	id, url string
	stop    context.CancelFunc // abrupt stop: no hand-off, the lease is left to expire
}

func logger(t *testing.T) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("TALLY_TEST_CLUSTER_DEBUG") == "1" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func startNode(t *testing.T, endpoints []string, id string, r *recorder) *testNode {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	url := "http://127.0.0.1:1/" + id // never dialled: routing is not under test here
	self := &atomic.Pointer[cluster.Node]{}
	n, err := cluster.Start(ctx, cluster.Config{
		Endpoints:    endpoints,
		NodeID:       id,
		AdvertiseURL: url,
		LeaseTTL:     ttl,
		Prefix:       "/tally-test/",
		Logger:       logger(t),
		Hooks:        hooks{r: r, node: id, self: self},
	})
	if err != nil {
		cancel()
		t.Fatalf("start %s: %v", id, err)
	}
	self.Store(n)
	t.Cleanup(func() {
		ctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		_ = n.Close(ctx)
		cancel()
	})
	return &testNode{Node: n, id: id, url: url, stop: cancel}
}

// owner is a partition's settled owner as every node routes it.
type owner struct {
	node  string
	epoch int64
}

// converged returns, when every partition has exactly one Self owner among
// nodes and every node routes it to that owner without waiting, each
// partition's owner; else an error saying what is not so.
func converged(nodes []*testNode) ([domain.Partitions]owner, error) {
	var out [domain.Partitions]owner
	for p := range domain.Partitions {
		var self []*testNode
		for _, n := range nodes {
			if r := n.Route(domain.Partition(p)); r.Self {
				self = append(self, n)
				out[p] = owner{n.id, r.Epoch}
			}
		}
		if len(self) != 1 {
			return out, fmt.Errorf("partition %d has %d Self owners", p, len(self))
		}
		o := self[0]
		for _, n := range nodes {
			r := n.Route(domain.Partition(p))
			if r.Settled != nil || r.NodeID != o.id || r.URL != o.url {
				return out, fmt.Errorf("partition %d: %s routes to %q (%s, settled %v), owner is %s", p, n.id, r.NodeID, r.URL, r.Settled == nil, o.id)
			}
			if (n == o) != (n.Epoch(domain.Partition(p)) != 0) {
				return out, fmt.Errorf("partition %d: %s reports epoch %d", p, n.id, n.Epoch(domain.Partition(p)))
			}
		}
	}
	return out, nil
}

func waitConverged(t *testing.T, nodes []*testNode, timeout time.Duration) [domain.Partitions]owner {
	t.Helper()
	return waitConvergedTo(t, nodes, timeout, func([domain.Partitions]owner) error { return nil })
}

// waitConvergedTo waits until the nodes have converged and the owners
// satisfy want.
func waitConvergedTo(t *testing.T, nodes []*testNode, timeout time.Duration, want func([domain.Partitions]owner) error) [domain.Partitions]owner {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		owners, err := converged(nodes)
		if err == nil {
			err = want(owners)
		}
		if err == nil {
			return owners
		}
		if time.Now().After(deadline) {
			t.Fatalf("not converged after %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func countBy(owners [domain.Partitions]owner) map[string]int {
	m := map[string]int{}
	for _, o := range owners {
		m[o.node]++
	}
	return m
}

func threeNodes(t *testing.T) (*testenv.EtcdCluster, *recorder, []*testNode, [domain.Partitions]owner) {
	t.Helper()
	etcd := testenv.StartEtcd(t, 3)
	r := &recorder{}
	var nodes []*testNode
	for _, id := range []string{"node-a", "node-b", "node-c"} {
		nodes = append(nodes, startNode(t, etcd.Endpoints(), id, r))
	}
	owners := waitConverged(t, nodes, 20*time.Second)
	return etcd, r, nodes, owners
}

func TestThreeNodesOwnEveryPartitionOnce(t *testing.T) {
	_, r, nodes, owners := threeNodes(t)
	counts := countBy(owners)
	for _, n := range nodes {
		// Rendezvous hashing over three ids gives each about a third; 40 is
		// far below any plausible share (the ids are fixed, so this is
		// deterministic) and catches everything-on-one-node.
		if counts[n.id] < 40 {
			t.Errorf("%s owns %d partitions: %v", n.id, counts[n.id], counts)
		}
		if got := len(n.Members()); got != 3 {
			t.Errorf("%s sees %d members: %v", n.id, got, n.Members())
		}
	}
	// The nodes start one after the other, so the first takes everything
	// and hands most of it on: each partition's last acquisition is its
	// owner's, under the epoch it routes with, and every earlier one was
	// released before it.
	last := map[domain.Partition]call{}
	for _, c := range r.snapshot() {
		if c.kind == "acquire" {
			last[c.p] = c
		}
		if c.kind == "lost" {
			t.Errorf("lost while starting: %+v", c)
		}
	}
	for p, o := range owners {
		if c := last[domain.Partition(p)]; c.node != o.node || c.epoch != o.epoch {
			t.Errorf("partition %d: owner %+v, last acquired by %s under %d", p, o, c.node, c.epoch)
		}
	}
	r.checkAlternation(t)
}

// TestJoinMovesAQuarterWithHandOff starts a fourth node: the partitions it
// takes (and only those) move, each released by its old owner before the
// new one acquires it, under a higher epoch. A request waiting on a
// partition's Settled channel is woken.
func TestJoinMovesAQuarterWithHandOff(t *testing.T) {
	etcd, r, nodes, before := threeNodes(t)
	mark := r.len()

	// Waiters: whenever node-a routes a partition as unsettled, its Settled
	// channel must close (the partition settles, or moves on).
	var stopWatch atomic.Bool
	var waits, stuck atomic.Int64
	var watchers sync.WaitGroup
	a := nodes[0]
	watchers.Go(func() {
		for !stopWatch.Load() {
			for p := range domain.Partitions {
				rt := a.Route(domain.Partition(p))
				if rt.Settled == nil {
					continue
				}
				waits.Add(1)
				select {
				case <-rt.Settled:
				case <-time.After(10 * time.Second):
					stuck.Add(1)
				}
			}
			time.Sleep(time.Millisecond)
		}
	})

	d := startNode(t, etcd.Endpoints(), "node-d", r)
	nodes = append(nodes, d)
	after := waitConverged(t, nodes, 20*time.Second)
	stopWatch.Store(true)
	watchers.Wait()
	if stuck.Load() > 0 {
		t.Errorf("%d Settled channels were not closed within 10s", stuck.Load())
	}

	calls := r.snapshot()[mark:]
	index := func(node, kind string, p domain.Partition) int {
		for i, c := range calls {
			if c.node == node && c.kind == kind && c.p == p {
				return i
			}
		}
		return -1
	}
	var moved int
	var handOffs []time.Duration
	for p := range domain.Partitions {
		b, a := before[p], after[p]
		if b.node == a.node {
			if a.epoch != b.epoch {
				t.Errorf("partition %d stayed on %s but its epoch went %d → %d", p, a.node, b.epoch, a.epoch)
			}
			continue
		}
		moved++
		if a.node != d.id {
			t.Errorf("partition %d moved %s → %s, not to the new node", p, b.node, a.node)
		}
		if a.epoch <= b.epoch {
			t.Errorf("partition %d: epoch %d after the move, %d before", p, a.epoch, b.epoch)
		}
		rel, relDone, acq := index(b.node, "release", domain.Partition(p)), index(b.node, "released", domain.Partition(p)), index(a.node, "acquire", domain.Partition(p))
		if rel < 0 || relDone < 0 || acq < 0 || relDone > acq {
			t.Errorf("partition %d: release by %s at call %d (returned at %d), acquire by %s at call %d", p, b.node, rel, relDone, a.node, acq)
			continue
		}
		if done := index(a.node, "acquired", domain.Partition(p)); done >= 0 {
			handOffs = append(handOffs, calls[done].at.Sub(calls[relDone].at))
		}
	}
	// About a quarter: 64 expected, the ids are fixed so the count is too.
	if moved < 40 || moved > 90 {
		t.Errorf("%d partitions moved on the fourth node's join, want about %d", moved, domain.Partitions/4)
	}
	for _, c := range calls {
		if c.kind == "lost" {
			t.Errorf("a join lost a partition: %+v", c)
		}
	}
	r.checkAlternation(t)
	if len(handOffs) > 0 {
		slices.Sort(handOffs)
		t.Logf("join: %d partitions moved; hand-off after Release (%s here) until Acquire returned: min %s, median %s, max %s; node-a waited on %d Settled channels", moved, releaseTakes,
			handOffs[0], handOffs[len(handOffs)/2], handOffs[len(handOffs)-1], waits.Load())
	}
}

// TestGracefulLeaveHandsEverythingOff closes one of three nodes: each of
// its partitions is released there before another node acquires it, and
// nothing is lost.
func TestGracefulLeaveHandsEverythingOff(t *testing.T) {
	_, r, nodes, before := threeNodes(t)
	mark := r.len()
	leaver := nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := leaver.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	rest := []*testNode{nodes[0], nodes[2]}
	after := waitConverged(t, rest, 20*time.Second)
	calls := r.snapshot()[mark:]
	released := map[domain.Partition]int{}
	for i, c := range calls {
		switch c.kind {
		case "released":
			if c.node != leaver.id {
				t.Errorf("%s released partition %d on another node's leave", c.node, c.p)
			}
			released[c.p] = i
		case "acquire":
			if before[c.p].node != leaver.id {
				t.Errorf("%s acquired partition %d, which %s owned and kept", c.node, c.p, before[c.p].node)
			}
			if i0, ok := released[c.p]; !ok || i0 > i {
				t.Errorf("partition %d acquired by %s (call %d) before the leaver released it", c.p, c.node, i)
			}
		case "lost":
			t.Errorf("a graceful leave lost a partition: %+v", c)
		}
	}
	for p := range domain.Partitions {
		if before[p].node == leaver.id && after[p].epoch <= before[p].epoch {
			t.Errorf("partition %d: epoch %d after the leave, %d before", p, after[p].epoch, before[p].epoch)
		}
		rt := leaver.Route(domain.Partition(p))
		if rt.Self || leaver.Epoch(domain.Partition(p)) != 0 {
			t.Errorf("the closed node still reports partition %d as its own", p)
		}
		// Its last routes, which requests reaching it while its API
		// drains follow, name each partition's new owner: they are
		// forwarded there, not held unsettled until their deadline.
		if rt.Settled != nil || rt.NodeID != after[p].node {
			t.Errorf("the closed node routes partition %d to %q (settled: %v), want %s", p, rt.NodeID, rt.Settled == nil, after[p].node)
		}
	}
	r.checkAlternation(t)
}

// TestDeadNodesPartitionsMoveAfterLeaseExpiry stops a node without a word
// (no hand-off, no revoke): its partitions stay unowned until its lease
// expires, then the others acquire them under higher epochs.
func TestDeadNodesPartitionsMoveAfterLeaseExpiry(t *testing.T) {
	_, r, nodes, before := threeNodes(t)
	mark := r.len()
	dead := nodes[2]
	dead.stop()
	rest := nodes[:2]
	after := waitConverged(t, rest, 10*ttl)
	for _, c := range r.snapshot()[mark:] {
		if c.kind == "release" || c.kind == "released" {
			t.Errorf("a dead node's partitions were handed off: %+v", c)
		}
		if c.kind == "acquire" && before[c.p].node != dead.id {
			t.Errorf("%s acquired partition %d, which %s owned and kept", c.node, c.p, before[c.p].node)
		}
	}
	for p := range domain.Partitions {
		if before[p].node == dead.id && after[p].epoch <= before[p].epoch {
			t.Errorf("partition %d: epoch %d after the death, %d before", p, after[p].epoch, before[p].epoch)
		}
	}
	for _, n := range rest {
		if got := len(n.Members()); got != 2 {
			t.Errorf("%s sees %d members after the death: %v", n.id, got, n.Members())
		}
	}
	r.checkAlternation(t)
}

// TestZombieOwnerLosesEverything pauses a node for twice the lease TTL:
// the others take its partitions over under higher epochs; when it wakes
// it calls Lost for everything it owned, never reports Self under the
// epochs it had, rejoins under a new lease and takes its share back by
// hand-offs.
func TestZombieOwnerLosesEverything(t *testing.T) {
	_, r, nodes, before := threeNodes(t)
	zombie := nodes[0]
	var owned []domain.Partition
	for p, o := range before {
		if o.node == zombie.id {
			owned = append(owned, domain.Partition(p))
		}
	}

	// The zombie must never route a partition to itself once another node
	// serves it (its goroutines are held still, but Route is called from
	// outside: requests scheduled while it stalls), nor, from the moment
	// it resumes, under an epoch it held before the pause.
	var resumed, stop atomic.Bool
	var violations, overlaps atomic.Int64
	var firstViolation atomic.Value
	violation := func(format string, args ...any) {
		if violations.Add(1) == 1 {
			firstViolation.Store(fmt.Sprintf(format, args...))
		}
	}
	var poller sync.WaitGroup
	poller.Go(func() {
		for !stop.Load() {
			for _, p := range owned {
				awake := resumed.Load()
				takenOver := false
				for _, n := range nodes[1:] {
					if rt := n.Route(p); rt.Self && rt.Epoch > before[p].epoch {
						takenOver = true
					}
				}
				rt := zombie.Route(p)
				if rt.Self && rt.Epoch <= before[p].epoch && (awake || takenOver) {
					violation("partition %d Self under epoch %d (taken over: %v, resumed: %v)", p, rt.Epoch, takenOver, awake)
				}
				if takenOver {
					overlaps.Add(1)
				}
			}
			time.Sleep(100 * time.Microsecond)
		}
	})
	mark := r.len()
	cluster.PauseForTest(zombie.Node, 2*ttl)
	resumed.Store(true)
	wake := r.len()

	// Converged with the zombie back: it rejoined under a new lease and
	// got its share back by hand-offs.
	after := waitConvergedTo(t, nodes, 20*time.Second, func(o [domain.Partitions]owner) error {
		if n := countBy(o)[zombie.id]; n < 40 {
			return fmt.Errorf("the zombie owns %d partitions", n)
		}
		return nil
	})
	stop.Store(true)
	poller.Wait()
	if v := violations.Load(); v > 0 {
		t.Errorf("the zombie routed %d times to itself under an old epoch; first: %v", v, firstViolation.Load())
	}
	if overlaps.Load() == 0 {
		t.Error("the poller never saw a partition taken over: it checked nothing")
	}

	calls := r.snapshot()
	lost := map[domain.Partition]bool{}
	takenOver := map[domain.Partition]bool{}
	for i, c := range calls[mark:] {
		switch {
		case c.node == zombie.id && c.kind == "lost":
			lost[c.p] = true
		case c.node != zombie.id && c.kind == "acquire" && c.epoch > before[c.p].epoch && mark+i < wake:
			takenOver[c.p] = true
		}
	}
	for _, p := range owned {
		if !lost[p] {
			t.Errorf("the zombie never called Lost for partition %d", p)
		}
		if !takenOver[p] {
			t.Errorf("partition %d was not taken over by another node during the pause", p)
		}
		if after[p].node == zombie.id && after[p].epoch <= before[p].epoch {
			t.Errorf("partition %d back on the zombie under epoch %d, not above %d", p, after[p].epoch, before[p].epoch)
		}
	}
	// Every Lost came before the zombie acquired anything again.
	firstAcquire := len(calls)
	lastLost := -1
	for i := wake; i < len(calls); i++ {
		c := calls[i]
		if c.node != zombie.id {
			continue
		}
		if c.kind == "acquire" && i < firstAcquire {
			firstAcquire = i
		}
		if c.kind == "lost" {
			lastLost = i
		}
	}
	if lastLost > firstAcquire {
		t.Errorf("the zombie acquired a partition (call %d) before it had dropped everything (last Lost at call %d)", firstAcquire, lastLost)
	}
	r.checkAlternation(t)
}

// stable polls every node's routes for d and fails the test on any
// difference from want: nothing may move, and no node may stop serving
// what it owns.
func stable(t *testing.T, nodes []*testNode, want [domain.Partitions]owner, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		got, err := converged(nodes)
		if err != nil {
			t.Fatalf("routes changed: %v", err)
		}
		if got != want {
			t.Fatal("owners or epochs changed")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func noHookCalls(t *testing.T, r *recorder, mark int) {
	t.Helper()
	for _, c := range r.snapshot()[mark:] {
		t.Errorf("hook called: %+v", c)
	}
}

// TestEtcdLeaderKilledMovesNothing kills the etcd leader: a new one is
// elected, every lease survives, nothing moves.
func TestEtcdLeaderKilledMovesNothing(t *testing.T) {
	etcd, r, nodes, owners := threeNodes(t)
	mark := r.len()
	leader := etcd.WaitLeader(t, 10*time.Second)
	etcd.Kill(t, leader)
	stable(t, nodes, owners, 3*ttl)
	if etcd.WaitLeader(t, 10*time.Second) == leader {
		t.Fatal("the killed member leads")
	}
	etcd.Start(t, leader)
	stable(t, nodes, owners, 2*ttl)
	noHookCalls(t, r, mark)
}

// TestEtcdOutageMovesNothing stops every etcd member for 10 s: the nodes
// keep serving what they own, and once etcd is back their leases are alive
// (etcd's new leader gives every lease a full TTL) and nothing moves.
func TestEtcdOutageMovesNothing(t *testing.T) {
	etcd, r, nodes, owners := threeNodes(t)
	mark := r.len()
	etcd.StopAll(t)
	stable(t, nodes, owners, 10*time.Second)
	etcd.StartAll(t)
	stable(t, nodes, owners, 3*ttl)
	noHookCalls(t, r, mark)

	// The nodes work as before: one leaves, its partitions are handed off.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nodes[2].Close(ctx); err != nil {
		t.Fatalf("close after the outage: %v", err)
	}
	waitConverged(t, nodes[:2], 20*time.Second)
	r.checkAlternation(t)
}

// TestStartRefusesBadConfig: bad configuration is a clear error, and no
// connection is attempted.
func TestStartRefusesBadConfig(t *testing.T) {
	base := cluster.Config{
		Endpoints:    []string{"http://127.0.0.1:1"},
		NodeID:       "n1",
		AdvertiseURL: "http://127.0.0.1:8080",
		Hooks:        hooks{r: &recorder{}},
	}
	cases := map[string]func(*cluster.Config){
		"no etcd endpoints":    func(c *cluster.Config) { c.Endpoints = nil },
		"node id is empty":     func(c *cluster.Config) { c.NodeID = "" },
		"must not contain '/'": func(c *cluster.Config) { c.NodeID = "a/b" },
		"advertise URL":        func(c *cluster.Config) { c.AdvertiseURL = "127.0.0.1:8080" },
		"at least 1s":          func(c *cluster.Config) { c.LeaseTTL = 500 * time.Millisecond },
		"no hooks":             func(c *cluster.Config) { c.Hooks = nil },
	}
	names := make([]string, 0, len(cases))
	for name := range cases {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, want := range names {
		cfg := base
		cases[want](&cfg)
		_, err := cluster.Start(t.Context(), cfg)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
	}
}

// TestRendezvousMovesOnlyTheJoinersShare checks the hashing alone: a
// fourth member takes about a quarter of the partitions, each from
// whichever member had it, and nothing else moves; removing a member moves
// only its partitions.
func TestRendezvousMovesOnlyTheJoinersShare(t *testing.T) {
	three := cluster.DesiredOwners([]string{"node-a", "node-b", "node-c"})
	four := cluster.DesiredOwners([]string{"node-a", "node-b", "node-c", "node-d"})
	moved := 0
	for p := range domain.Partitions {
		if three[p] != four[p] {
			moved++
			if four[p] != "node-d" {
				t.Errorf("partition %d moved %s → %s", p, three[p], four[p])
			}
		}
	}
	if moved < 40 || moved > 90 {
		t.Errorf("%d partitions moved, want about %d", moved, domain.Partitions/4)
	}
	two := cluster.DesiredOwners([]string{"node-a", "node-c"})
	for p := range domain.Partitions {
		if three[p] != "node-b" && two[p] != three[p] {
			t.Errorf("partition %d moved %s → %s though its owner stayed", p, three[p], two[p])
		}
	}
}
