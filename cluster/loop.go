package cluster

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tally-dev/tally/domain"
)

// phase is where this node is with one partition.
type phase uint8

const (
	idle      phase = iota
	claiming        // the claim transaction, then Acquire, in flight
	owned           // Acquire returned nil: served here
	releasing       // Release, then the claim's deletion, in flight
)

// part is the node's own state for one partition.
type part struct {
	phase        phase
	epoch        int64              // the claim's create revision, once claimed
	cancel       context.CancelFunc // of the worker in flight
	retryAt      time.Time          // after a failed claim or Acquire
	fails        int
	since        time.Time // when the worker in flight started
	lastReleased int64     // the epoch last given up (its claim may still show until the watch catches up)
}

type resKind int

const (
	resClaimed     resKind = iota // epoch, lease: the claim transaction won
	resClaimFailed                // err (nil: another node holds the claim)
	resAcquired                   // epoch, err; rev: the claim's deletion after a failed Acquire
	resReleased                   // epoch, rev: the claim's deletion (0: it was gone already)
)

// result is what a worker reports to the loop.
type result struct {
	kind  resKind
	p     domain.Partition
	epoch int64
	lease clientv3.LeaseID
	rev   int64
	err   error
}

// loop is the node's state machine. It runs on one goroutine, which alone
// touches these fields; etcd requests and hooks run on worker goroutines
// (at most one per partition at a time) that report back through
// n.results, and the watch and lease goroutines report through n.events.
type loop struct {
	n              *Node
	lease          clientv3.LeaseID
	members        map[string]memberRec
	owners         [domain.Partitions]claim
	desired        [domain.Partitions]string
	membersChanged bool
	parts          [domain.Partitions]part
	leaving        bool
	leaveReply     chan bool
	clearSuspicion bool
	workers        sync.WaitGroup
	timer          *time.Timer
}

func newLoop(n *Node, lease clientv3.LeaseID, snap *snapshot) *loop {
	n.lease.Store(int64(lease))
	return &loop{n: n, lease: lease, members: snap.members, owners: snap.owners, membersChanged: true}
}

func (l *loop) run() {
	defer l.shutdown()
	n := l.n
	l.reconcile()
	for {
		var timerC <-chan time.Time
		if l.timer != nil {
			timerC = l.timer.C
		}
		select {
		case <-n.ctx.Done():
			return
		case ev := <-n.events:
			n.waitGate()
			l.handle(ev)
		case r := <-n.results:
			n.waitGate()
			l.handleResult(r)
		case reply := <-n.leaveCh:
			l.leaving, l.leaveReply, l.membersChanged = true, reply, true
		case <-timerC:
			l.timer = nil
		}
		l.reconcile()
	}
}

func (l *loop) handle(ev event) {
	n := l.n
	switch ev.kind {
	case evWatch:
		for _, e := range ev.events {
			if n.apply(e.Kv, e.Type, l.members, &l.owners) {
				l.membersChanged = true
			}
		}
	case evSnapshot:
		l.members, l.membersChanged = ev.snap.members, true
		for p := range l.owners {
			if l.owners[p].modRev <= ev.snap.rev {
				c := ev.snap.owners[p]
				c.modRev = ev.snap.rev
				l.owners[p] = c
			}
		}
	case evLeaseGone:
		if ev.lease == l.lease {
			l.lease = 0
			n.lease.Store(0)
		}
		// Once the partitions held under it are dropped (reconcile), Route
		// may answer again.
		l.clearSuspicion = true
	case evLeaseNew:
		l.lease = ev.lease
		n.lease.Store(int64(ev.lease))
	}
}

func (l *loop) handleResult(r result) {
	n, pt := l.n, &l.parts[r.p]
	switch r.kind {
	case resClaimed:
		pt.epoch = r.epoch
		if l.owners[r.p].modRev < r.epoch {
			l.owners[r.p] = claim{node: n.id, url: n.url, lease: r.lease, createRev: r.epoch, modRev: r.epoch}
		}
	case resClaimFailed:
		pt.phase, pt.cancel = idle, nil
		if r.err != nil {
			l.backoff(pt)
			n.log.Warn("cluster: claim failed; retrying", "partition", int(r.p), "err", r.err, "retry_in", time.Until(pt.retryAt).Round(time.Millisecond))
		}
	case resAcquired:
		pt.cancel = nil
		if r.err != nil {
			pt.phase, pt.lastReleased = idle, r.epoch
			l.tombstone(r.p, r.rev)
			l.backoff(pt)
			n.log.Warn("cluster: acquire failed; claim released, retrying", "partition", int(r.p), "epoch", r.epoch, "err", r.err, "retry_in", time.Until(pt.retryAt).Round(time.Millisecond))
			return
		}
		// reconcile checks the claim is still this node's before routing here.
		pt.phase, pt.fails = owned, 0
		n.log.Debug("cluster: acquired", "partition", int(r.p), "epoch", r.epoch, "took", time.Since(pt.since).Round(time.Microsecond))
	case resReleased:
		pt.phase, pt.cancel, pt.epoch, pt.lastReleased = idle, nil, 0, r.epoch
		l.tombstone(r.p, r.rev)
		n.log.Debug("cluster: released", "partition", int(r.p), "epoch", r.epoch, "took", time.Since(pt.since).Round(time.Microsecond))
	}
}

// tombstone records p's claim deleted at rev (by this node), unless what is
// recorded is newer.
func (l *loop) tombstone(p domain.Partition, rev int64) {
	if rev > l.owners[p].modRev {
		l.owners[p] = claim{modRev: rev}
	}
}

func (l *loop) backoff(pt *part) {
	pt.fails++
	d := min(100*time.Millisecond<<min(pt.fails-1, 5), 2*time.Second)
	pt.retryAt = time.Now().Add(d)
}

// mine reports whether p's claim, as last seen, is the one this node made
// under its current lease.
func (l *loop) mine(p int) bool {
	o, pt := &l.owners[p], &l.parts[p]
	return l.lease != 0 && pt.epoch != 0 && o.node == l.n.id && o.lease == l.lease && o.createRev == pt.epoch
}

// reconcile moves every partition one step towards its desired owner,
// publishes the route table, then tells the hooks about ownership that
// ended without a hand-off.
func (l *loop) reconcile() {
	n := l.n
	if l.membersChanged {
		l.membersChanged = false
		ids := make([]string, 0, len(l.members))
		ms := make([]Member, 0, len(l.members))
		for id, m := range l.members {
			ms = append(ms, Member{ID: id, URL: m.url})
			if !(l.leaving && id == n.id) {
				ids = append(ids, id)
			}
		}
		sort.Strings(ids)
		sort.Slice(ms, func(i, j int) bool { return ms[i].ID < ms[j].ID })
		l.desired = desiredOwners(ids)
		n.members.Store(&ms)
	}
	now := time.Now()
	var lost, release []domain.Partition
	var wake time.Time
	for p := range domain.Partitions {
		pt, o := &l.parts[p], &l.owners[p]
		switch pt.phase {
		case owned:
			if !l.mine(p) {
				pt.phase, pt.epoch = idle, 0
				lost = append(lost, domain.Partition(p))
				continue
			}
			if l.leaving || (l.desired[p] != "" && l.desired[p] != n.id) {
				// Released once the table below no longer routes p here.
				pt.phase = releasing
				release = append(release, domain.Partition(p))
			}
		case claiming:
			if pt.epoch != 0 && !l.mine(p) && pt.cancel != nil {
				pt.cancel() // the claim vanished while Acquire runs
			}
		case idle:
			switch {
			case l.lease != 0 && o.node == n.id && o.lease == l.lease && o.createRev != pt.lastReleased:
				// A claim of this node's that nothing uses: its Acquire
				// failed and deleting it failed too. Delete it again.
				pt.epoch = o.createRev
				l.startRelease(domain.Partition(p), false)
			case o.node == "" && l.desired[p] == n.id && l.lease != 0 && !l.leaving:
				if now.Before(pt.retryAt) {
					if wake.IsZero() || pt.retryAt.Before(wake) {
						wake = pt.retryAt
					}
					continue
				}
				l.startClaim(domain.Partition(p))
			}
		}
	}
	n.publish(l.route)
	// Release stops the core taking work for p: only now that requests
	// are no longer routed to this node for p, so that none is routed here
	// and then refused by the core.
	for _, p := range release {
		l.startRelease(p, true)
	}
	for _, p := range lost {
		n.hooks.Lost(p)
	}
	if len(lost) > 0 {
		n.log.Warn("cluster: partitions lost without hand-off", "count", len(lost), "partitions", fmt.Sprint(lost))
	}
	if l.clearSuspicion {
		l.clearSuspicion = false
		n.clearSuspicion()
	}
	if l.leaveReply != nil && l.quiet() {
		l.leaveReply <- true
		l.leaveReply = nil
	}
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if !wake.IsZero() {
		l.timer = time.NewTimer(time.Until(wake))
	}
}

// quiet: nothing owned, moving or claimed here.
func (l *loop) quiet() bool {
	for p := range domain.Partitions {
		o := &l.owners[p]
		if l.parts[p].phase != idle || (l.lease != 0 && o.node == l.n.id && o.lease == l.lease) {
			return false
		}
	}
	return true
}

// route is p's route as this loop knows it; unsettled when p is unowned,
// moving, or being acquired or released here.
func (l *loop) route(p int) (Route, bool) {
	n, o := l.n, &l.owners[p]
	switch {
	case l.parts[p].phase == owned && l.mine(p):
		return Route{Self: true, Epoch: l.parts[p].epoch, NodeID: n.id, URL: n.url}, false
	case o.node == "":
		return Route{}, true
	case o.node == n.id:
		return Route{NodeID: n.id, URL: n.url}, true
	default:
		_, live := l.members[o.node]
		return Route{NodeID: o.node, URL: o.url}, !live || l.desired[p] != o.node
	}
}

func (l *loop) startClaim(p domain.Partition) {
	n, pt := l.n, &l.parts[p]
	ctx, cancel := context.WithCancel(n.ctx)
	pt.phase, pt.epoch, pt.cancel, pt.since = claiming, 0, cancel, time.Now()
	lease := l.lease
	l.workers.Go(func() {
		defer cancel()
		epoch, won, err := n.claim(ctx, p, lease)
		if err != nil || !won {
			n.results <- result{kind: resClaimFailed, p: p, err: err}
			return
		}
		n.results <- result{kind: resClaimed, p: p, epoch: epoch, lease: lease}
		actx, acancel := context.WithTimeout(ctx, n.cfg.HandOffTimeout)
		err = n.hooks.Acquire(actx, p, epoch)
		acancel()
		var rev int64
		if err != nil {
			// One try: if it fails the claim shows as unused and reconcile
			// deletes it again.
			rev = n.unclaim(n.ctx, p, epoch, true)
		}
		n.results <- result{kind: resAcquired, p: p, epoch: epoch, err: err, rev: rev}
	})
}

// startRelease hands p off: Release (with hook), then the claim's deletion,
// retried until done (a Release is never undone: p is not served here any
// more whatever happens to etcd).
func (l *loop) startRelease(p domain.Partition, hook bool) {
	n, pt := l.n, &l.parts[p]
	ctx, cancel := context.WithCancel(n.ctx)
	pt.phase, pt.cancel, pt.since = releasing, cancel, time.Now()
	epoch := pt.epoch
	l.workers.Go(func() {
		defer cancel()
		if hook {
			rctx, rcancel := context.WithTimeout(ctx, n.cfg.HandOffTimeout)
			if err := n.hooks.Release(rctx, p); err != nil {
				// The store's epoch fence stops anything this node still
				// has in flight for p once the next owner has acquired it.
				n.log.Warn("cluster: release did not complete; giving the partition up anyway", "partition", int(p), "err", err)
			}
			rcancel()
		}
		rev := n.unclaim(ctx, p, epoch, false)
		n.results <- result{kind: resReleased, p: p, epoch: epoch, rev: rev}
	})
}

// shutdown runs when the node's context ends (Close ends it too, after the
// hand-offs): in-flight workers are cancelled and awaited (hooks must
// honour their context), and every partition still owned is Lost.
func (l *loop) shutdown() {
	n := l.n
	if l.timer != nil {
		l.timer.Stop()
	}
	for p := range l.parts {
		if c := l.parts[p].cancel; c != nil {
			c()
		}
	}
	l.workers.Wait()
	for {
		select {
		case r := <-n.results:
			l.handleResult(r)
			continue
		default:
		}
		break
	}
	var lost []domain.Partition
	for p := range l.parts {
		if l.parts[p].phase == owned {
			l.parts[p].phase = idle
			lost = append(lost, domain.Partition(p))
		}
	}
	// The last table keeps routes to other nodes (requests that still
	// reach this one are forwarded to the owners it last knew; an owner
	// that changed since answers or refuses them itself) and has no Self.
	n.publish(func(p int) (Route, bool) {
		o := &l.owners[p]
		if _, live := l.members[o.node]; live && o.node != n.id {
			return Route{NodeID: o.node, URL: o.url}, false
		}
		return Route{}, true
	})
	for _, p := range lost {
		n.hooks.Lost(p)
	}
	if l.leaveReply != nil {
		l.leaveReply <- len(lost) == 0
	}
	n.clearSuspicion()
}

// table is the route table Route reads; a new one replaces it on every
// change. wake[p] is routes[p].Settled, closable.
type table struct {
	routes [domain.Partitions]Route
	wake   [domain.Partitions]chan struct{}
}

// publish swaps in the routes next gives (nil: nobody owns anything) and
// closes the Settled channel of every route that changed, after the swap,
// so that a request it wakes routes on the new table.
func (n *Node) publish(next func(p int) (Route, bool)) {
	old := n.table.Load()
	t := &table{}
	var wake []chan struct{}
	changed := old == nil
	for p := range domain.Partitions {
		r, unsettled := Route{}, true
		if next != nil {
			r, unsettled = next(p)
		}
		if old != nil {
			o := &old.routes[p]
			if o.Self == r.Self && o.Epoch == r.Epoch && o.NodeID == r.NodeID && o.URL == r.URL && (o.Settled != nil) == unsettled {
				t.routes[p], t.wake[p] = *o, old.wake[p]
				continue
			}
			changed = true
			if old.wake[p] != nil {
				wake = append(wake, old.wake[p])
			}
		}
		if unsettled {
			t.wake[p] = make(chan struct{})
			r.Settled = t.wake[p]
		}
		t.routes[p] = r
	}
	if !changed {
		return
	}
	n.table.Store(t)
	for _, c := range wake {
		close(c)
	}
}
