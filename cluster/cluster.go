// Package cluster is Tally's cluster mode on etcd: which nodes are alive,
// which node owns each partition (domain.Partition) and under which epoch,
// and the hand-off of a partition from one node to another when a node
// joins, leaves or dies.
//
// Every node keeps an etcd lease alive and registers a member key under it.
// The desired owner of a partition is the live member with the highest
// rendezvous (HRW) score for it, so a join or a leave moves about 1/N of
// the partitions. A node claims a partition with an etcd transaction that
// creates the partition's owner key, attached to its lease, only if the key
// is absent; the claim's revision is the partition's epoch, the fencing
// token the store checks on every admission. A node gives a partition up by
// calling Hooks.Release and then deleting its claim; a dead node's claims
// vanish with its lease. docs/decisions/0021-cluster-ownership-on-etcd.md
// explains the design and its failure cases.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/tally-dev/tally/domain"
)

// Config configures a node.
type Config struct {
	Endpoints    []string
	NodeID       string        // unique per node
	AdvertiseURL string        // base URL other nodes use to reach this one
	LeaseTTL     time.Duration // ownership lease, default 5s; etcd counts whole seconds, so it is rounded up
	Prefix       string        // etcd key prefix, e.g. "/tally/" (the default)
	Logger       *slog.Logger  // default slog.Default()
	Hooks        Hooks
	// HandOffTimeout bounds one Acquire or one Release call (default 5s):
	// Release waits for the partition's in-flight requests, which the core
	// bounds by its request deadline, so this should not be shorter.
	HandOffTimeout time.Duration
}

// Hooks are how the node tells the rest of the process about ownership.
//
// For one partition the calls never overlap and alternate: Acquire, then
// (if it returned nil) exactly one of Release or Lost, then possibly
// Acquire again under a higher epoch. Calls for different partitions run
// concurrently.
type Hooks interface {
	// Acquire: this node has won partition p under epoch (a fencing token,
	// the etcd revision of the claim, strictly increasing per partition).
	// It must fence the store (raise p's stored epoch) before returning; p is
	// not routed here until it returns nil (on error: release the claim, retry later).
	Acquire(ctx context.Context, p domain.Partition, epoch int64) error
	// Release: this node is about to give p up in an orderly hand-off (a join,
	// a leave). It must stop new work for p and return once what is in flight
	// for p has been answered (bounded by ctx).
	Release(ctx context.Context, p domain.Partition) error
	// Lost: ownership of p ended without a hand-off (lease expired, e.g. the
	// process was paused). New work for p must stop at once. It is called
	// from the node's event loop and must not block.
	Lost(p domain.Partition)
}

// Route is where requests for a partition go now.
type Route struct {
	Self   bool   // this node owns p and Acquire returned: serve here under Epoch
	Epoch  int64  // the owner's epoch for p, when Self
	NodeID string // the owner (empty: nobody right now)
	URL    string // the owner's AdvertiseURL
	// Settled is non-nil while p is moving or unowned; it is closed when p's
	// ownership next changes, so a request can wait (bounded) and route again.
	// (Precisely: when p's route next changes, or, after a stall of this
	// process, when the node has checked its lease.) With Settled non-nil, NodeID may still name the current owner (p is
	// about to move away from it: forwarding there still works until it
	// releases), or this node while p is being acquired or released here:
	// never forward to this node, wait.
	Settled <-chan struct{}
}

// Member is a live node.
type Member struct {
	ID  string
	URL string
}

// Defaults.
const (
	DefaultLeaseTTL       = 5 * time.Second
	DefaultPrefix         = "/tally/"
	DefaultHandOffTimeout = 5 * time.Second
)

// Node is this process's membership in the cluster.
type Node struct {
	cfg    Config
	id     string
	url    string
	log    *slog.Logger
	hooks  Hooks
	cli    *clientv3.Client
	keys   keys
	ttlSec int64 // the lease TTL asked of etcd

	table   atomic.Pointer[table]
	members atomic.Pointer[[]Member]

	// Pause detection (see suspect): the heartbeat goroutine stamps beat
	// every beatEvery; a gap above suspectGap means the process did not run
	// for that long, and its lease may have expired meanwhile.
	start      time.Time
	beat       atomic.Int64 // time.Since(start) at the last heartbeat, ns
	beatEvery  time.Duration
	suspectGap time.Duration
	suspicion  atomic.Pointer[suspicion]
	verifyReq  chan struct{} // cap 1: ask the lease goroutine to verify the lease

	ctx     context.Context // the node's lifetime: Start's ctx, until Close
	stop    context.CancelFunc
	events  chan event     // to the loop, from the watch and lease goroutines
	results chan result    // to the loop, from the hand-off workers
	leaveCh chan chan bool // Close asks the loop to hand everything off
	done    chan struct{}  // closed when the loop has returned
	wg      sync.WaitGroup // every goroutine of the node
	leaving atomic.Bool
	lease   atomic.Int64 // the current lease (0: none), for Close

	closeOnce    sync.Once
	closeErr     error
	lifeMu       sync.Mutex
	closing      bool // Close has begun: it closes the client
	clientClosed bool // stopped by ctx before Close: the client is closed

	// gate, when non-nil, holds the node's goroutines (tests: a paused process).
	gate atomic.Pointer[chan struct{}]
	// pauseKeepAlive cancels the current keepalive (keepLease sets it): a
	// test pause stops the lease's renewals with it.
	pauseKeepAlive atomic.Pointer[context.CancelFunc]
}

// suspicion is raised when the process may have been paused past its
// lease; Route reports no Self until the lease goroutine has checked the
// lease with etcd, then done is closed.
type suspicion struct{ done chan struct{} }

// Start joins the cluster: it connects to etcd, registers this node under
// a new lease and starts taking its share of the partitions in the
// background (Route reports them once acquired). ctx bounds the node's
// life: cancelling it stops the node at once, without a hand-off (its lease
// expires after its TTL, as if the process had died); Close is the
// graceful way out.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:     cfg,
		id:      cfg.NodeID,
		url:     cfg.AdvertiseURL,
		log:     cfg.Logger.With("node", cfg.NodeID),
		hooks:   cfg.Hooks,
		keys:    keys{prefix: cfg.Prefix},
		ttlSec:  int64(math.Ceil(cfg.LeaseTTL.Seconds())),
		events:  make(chan event, 64),
		results: make(chan result, 2*domain.Partitions),
		leaveCh: make(chan chan bool),
		done:    make(chan struct{}),
		// verifyReq has room for one request: more would ask the same question.
		verifyReq: make(chan struct{}, 1),
	}
	ttl := time.Duration(n.ttlSec) * time.Second
	// The suspicion must rise before etcd can have expired the lease. The
	// client renews every TTL/3, on a 500 ms polling loop
	// (clientv3.lessor.sendKeepAliveLoop), so the last renewal before a
	// pause is at most TTL/3+0.5 s old and etcd expires the lease TTL after
	// it: no sooner than TTL/2 (TTL ≥ 1 s) after the pause began. TTL/3,
	// measured against a stamp renewed every TTL/20, leaves TTL/6 to spare;
	// a false alarm takes a stall of the heartbeat goroutine of about
	// TTL/3 - TTL/20 (470 ms at TTL 2 s), and costs one round trip to etcd.
	n.beatEvery = ttl / 20
	n.suspectGap = ttl / 3
	// gRPC's default reconnect backoff grows to two minutes; after an etcd
	// outage of ten seconds a client would reconnect only seconds after etcd
	// is back, and etcd expires leases one TTL (plus an election timeout)
	// after its new leader takes office. A short, capped backoff lets every
	// node renew its lease in time (decision 0021, "etcd outage").
	maxBackoff := min(max(ttl/5, 100*time.Millisecond), time.Second)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: ttl,
		// gRPC pings find a connection whose peer vanished without a
		// reset; etcd refuses pings more often than every 5 s (its
		// --grpc-keepalive-min-time) and then drops the connection.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: max(ttl, 3*time.Second),
		Logger:               zap.NewNop(), // what matters is logged by the node, through slog
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: maxBackoff},
			MinConnectTimeout: ttl,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: etcd client for %v: %w", cfg.Endpoints, err)
	}
	n.cli = cli
	n.ctx, n.stop = context.WithCancel(ctx)
	n.publish(nil) // nothing owned yet: every partition unsettled

	// Joining is bounded on its own: a previous registration of this id
	// takes up to two TTLs to expire (see register).
	jctx, jcancel := context.WithTimeout(ctx, 3*ttl+10*time.Second)
	lease, rev, snap, err := n.join(jctx)
	jcancel()
	if err != nil {
		n.stop()
		_ = cli.Close()
		return nil, err
	}
	l := newLoop(n, lease, snap)
	n.start = time.Now() // the heartbeat's origin: beat 0 is now
	n.wg.Add(4)
	go func() { defer n.wg.Done(); n.heartbeat() }()
	go func() { defer n.wg.Done(); n.watch(rev + 1) }()
	go func() { defer n.wg.Done(); n.keepLease(lease) }()
	go func() {
		defer n.wg.Done()
		defer close(n.done)
		l.run()
	}()
	go func() {
		// After a stop by ctx the client goes when every goroutine using it
		// has returned; Close closes it itself, after revoking the lease.
		<-n.done
		n.wg.Wait()
		n.lifeMu.Lock()
		defer n.lifeMu.Unlock()
		if !n.closing {
			n.clientClosed = true
			_ = n.cli.Close()
		}
	}()
	n.log.Info("cluster: joined", "url", n.url, "lease", leaseHex(lease), "ttl", ttl, "revision", rev)
	return n, nil
}

func (c *Config) validate() error {
	var errs []error
	if len(c.Endpoints) == 0 {
		errs = append(errs, errors.New("no etcd endpoints"))
	}
	for _, e := range c.Endpoints {
		if strings.TrimSpace(e) == "" {
			errs = append(errs, errors.New("an etcd endpoint is empty"))
		}
	}
	if c.NodeID == "" {
		errs = append(errs, errors.New("node id is empty"))
	} else if strings.ContainsAny(c.NodeID, "/ \t\r\n") {
		errs = append(errs, fmt.Errorf("node id %q: must not contain '/' or white space (it is part of an etcd key)", c.NodeID))
	}
	if u, err := url.Parse(c.AdvertiseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("advertise URL %q: want an absolute http(s) URL other nodes can reach", c.AdvertiseURL))
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	} else if c.LeaseTTL < time.Second {
		errs = append(errs, fmt.Errorf("lease TTL %s: must be at least 1s (etcd leases count whole seconds)", c.LeaseTTL))
	}
	if c.HandOffTimeout == 0 {
		c.HandOffTimeout = DefaultHandOffTimeout
	} else if c.HandOffTimeout < 0 {
		errs = append(errs, fmt.Errorf("hand-off timeout %s: must be positive", c.HandOffTimeout))
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(c.Prefix, "/") {
		c.Prefix += "/"
	}
	if c.Hooks == nil {
		errs = append(errs, errors.New("no hooks"))
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if len(errs) > 0 {
		return fmt.Errorf("cluster: invalid config: %w", errors.Join(errs...))
	}
	return nil
}

// Route is where requests for p go now. It never blocks: it reads the
// route table the node's event loop swaps atomically on every change.
func (n *Node) Route(p domain.Partition) Route {
	r := n.table.Load().routes[p]
	if r.Self {
		if s := n.suspect(); s != nil {
			r.Self, r.Epoch, r.Settled = false, 0, s.done
		}
	}
	return r
}

// Epoch is Route(p).Epoch when Self, else 0: in cluster mode, 0 means this
// node must not admit anything for p now.
func (n *Node) Epoch(p domain.Partition) int64 {
	r := &n.table.Load().routes[p]
	if !r.Self || n.suspect() != nil {
		return 0
	}
	return r.Epoch
}

// NodeID is this node's id.
func (n *Node) NodeID() string { return n.id }

// Members are the live nodes, as this node last saw them, sorted by id.
func (n *Node) Members() []Member {
	if m := n.members.Load(); m != nil {
		return slices.Clone(*m)
	}
	return nil
}

// suspect returns the current suspicion, raising one if the heartbeat is
// older than suspectGap: the process (or at least its scheduling) stopped
// for a large part of a lease TTL, as a SIGSTOP or a long stall would, and
// etcd may have expired the lease and given its partitions to other nodes
// meanwhile. Checking the clock here, on the request's own goroutine, means
// a request that runs first after such a pause does not see Self, whichever
// of the node's goroutines the scheduler wakes first.
func (n *Node) suspect() *suspicion {
	if s := n.suspicion.Load(); s != nil {
		return s
	}
	if time.Since(n.start)-time.Duration(n.beat.Load()) <= n.suspectGap {
		return nil
	}
	return n.raiseSuspicion()
}

func (n *Node) raiseSuspicion() *suspicion {
	s := &suspicion{done: make(chan struct{})}
	if !n.suspicion.CompareAndSwap(nil, s) {
		return n.suspicion.Load()
	}
	select {
	case n.verifyReq <- struct{}{}:
	default: // a verification is already asked for
	}
	return s
}

// clearSuspicion ends a suspicion once the lease has been checked (and,
// if it was gone, ownership dropped).
func (n *Node) clearSuspicion() {
	if s := n.suspicion.Swap(nil); s != nil {
		close(s.done)
	}
}

// heartbeat stamps n.beat; a gap between two stamps larger than
// suspectGap raises a suspicion (see suspect).
func (n *Node) heartbeat() {
	t := time.NewTicker(n.beatEvery)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		n.waitGate()
		now := time.Since(n.start)
		if now-time.Duration(n.beat.Load()) > n.suspectGap {
			n.raiseSuspicion()
		}
		n.beat.Store(int64(now))
	}
}

// Close leaves the cluster gracefully: it withdraws this node's
// membership, hands every partition it owns off (Release, then the claim is
// deleted, so the new owners claim at once), then revokes the lease. If ctx
// ends first, the lease is revoked anyway: the remaining claims vanish with
// it and other nodes take them without a hand-off. A node already stopped
// by its context is left alone (its lease expires). Close is idempotent.
func (n *Node) Close(ctx context.Context) error {
	n.closeOnce.Do(func() { n.closeErr = n.close(ctx) })
	return n.closeErr
}

func (n *Node) close(ctx context.Context) error {
	n.lifeMu.Lock()
	if n.clientClosed {
		// Stopped by its context already: as documented, the lease is left
		// to expire.
		n.lifeMu.Unlock()
		return nil
	}
	n.closing = true
	n.lifeMu.Unlock()
	var errs []error
	n.leaving.Store(true)
	// Withdrawn first, so that the other nodes stop counting this one among
	// the desired owners and claim each partition as soon as its claim here
	// is deleted.
	if lease := n.currentLease(); lease != 0 {
		if err := n.withdraw(ctx, lease); err != nil {
			errs = append(errs, err)
		}
	}
	reply := make(chan bool, 1)
	select {
	case n.leaveCh <- reply:
		// The loop hands everything off; it answers when nothing is owned
		// or moving any more.
		select {
		case <-reply:
			n.awaitNewOwners(ctx)
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("cluster: hand-off incomplete: %w", ctx.Err()))
		case <-n.done:
		}
	case <-n.done:
		// already stopped (ctx cancelled): nothing to hand off
	}
	lease := n.currentLease()
	n.stop()
	<-n.done
	n.wg.Wait()
	if lease != 0 {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(n.ttlSec)*time.Second)
		if _, err := n.cli.Revoke(rctx, lease); err != nil {
			errs = append(errs, fmt.Errorf("cluster: revoke lease %x: %w (it expires on its own)", int64(lease), err))
		}
		cancel()
	}
	_ = n.cli.Close()
	n.log.Info("cluster: left")
	return errors.Join(errs...)
}

// awaitNewOwners waits, once a leave has handed everything off, until
// this node has seen every partition claimed by another member, for at
// most a lease TTL (a member that died meanwhile leaves its share unowned
// until its lease expires) and while ctx lasts. The route table it stops
// with is the one requests that still reach it are routed by until its API
// has drained: with the new owners in it they are forwarded, where a
// partition still unowned in it would hold them until their deadline.
func (n *Node) awaitNewOwners(ctx context.Context) {
	others := false
	for _, m := range n.Members() {
		others = others || m.ID != n.id
	}
	if !others {
		return // nobody will claim: nothing to wait for
	}
	t := time.NewTimer(time.Duration(n.ttlSec) * time.Second)
	defer t.Stop()
	for {
		var unsettled <-chan struct{}
		routes := &n.table.Load().routes
		for p := range routes {
			if routes[p].Settled != nil {
				unsettled = routes[p].Settled
				break
			}
		}
		if unsettled == nil {
			return
		}
		select {
		case <-unsettled: // p's route changed: look again
		case <-t.C:
			return
		case <-ctx.Done():
			return
		case <-n.done:
			return
		}
	}
}

func (n *Node) currentLease() clientv3.LeaseID { return clientv3.LeaseID(n.lease.Load()) }

// waitGate blocks while a test holds the node paused.
func (n *Node) waitGate() {
	if g := n.gate.Load(); g != nil {
		select {
		case <-*g:
		case <-n.ctx.Done():
		}
	}
}
