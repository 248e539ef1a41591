package transport

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/domain"
)

// Cluster routing (docs/decisions/0023-forward-once-to-the-owner.md)
//
// In cluster mode every user belongs to a partition (domain.PartitionOf)
// and every partition has one owner node at a time. Any node accepts any
// API or admin request; the edge finds the request's user, asks Cluster
// where its partition is served, and either serves it here or forwards it
// once to the owner (forward.go), which treats a forwarded request as
// final. /healthz, /readyz, /openapi.yaml, /api/v1/plans and the webhook
// deliveries (/admin/v1/webhooks/…, no user's: webhooks.go) are served by
// whichever node receives them. Without Options.Cluster none of this is
// installed: the routes and their cost are the single node's.

// Cluster is what the edge needs from cluster membership (package cluster
// implements it; tests use a fake).
type Cluster interface {
	// NodeID is this node's id, the value of X-Tally-Node on its answers.
	NodeID() string
	// Route says where p is served now. It is called for every request
	// and must not block.
	Route(p domain.Partition) Route
}

// Route is where a partition is served.
type Route struct {
	Self   bool   // serve here
	Epoch  int64  // the owner's epoch of p
	NodeID string // the owner; empty: nobody right now
	URL    string // the owner's base URL (TALLY_ADVERTISE_URL), e.g. http://127.0.0.1:8081
	// Settled is non-nil while p is moving or unowned, and closed when its
	// ownership next changes.
	Settled <-chan struct{}
}

// Lookups reads, from the store every node shares, what routing needs to
// know without asking another node. actors.Service implements it.
type Lookups interface {
	// SessionUser returns the id of the user session sessionID belongs
	// to, or domain.ErrNotFound.
	SessionUser(ctx context.Context, sessionID string) (string, error)
	// CreateOutcome returns the stored outcome of the user's create in:
	// with an Idempotency-Key (key), what a replay of it answers (the
	// session, a *domain.LimitExceededError, or a CodeIdempotencyConflict
	// error); without, the session in.ID. domain.ErrNotFound while the
	// store holds no decision.
	CreateOutcome(ctx context.Context, userID string, in domain.NewSession, key string) (domain.Session, error)
}

// MinClusterSecret is the shortest Options.ClusterSecret accepted.
const MinClusterSecret = 32

// HeaderNode names the node that decided an answer, on every response in
// cluster mode.
const HeaderNode = "X-Tally-Node"

const (
	// maxSettleWait bounds the wait for a moving or unowned partition to
	// get an owner, within the request's deadline: ownership moves take
	// well under a second when a node joins or leaves gracefully, and a
	// dead owner's lease takes longer than any client should wait.
	maxSettleWait = 2 * time.Second
	// dialTimeout is how long a connection to an owner may take to open:
	// a live node on the same network answers within milliseconds, and an
	// owner that does not must cost its users a quick 503, not the
	// request's whole deadline.
	dialTimeout = 500 * time.Millisecond
	// defaultRequestTimeout is Options.RequestTimeout when unset, the
	// same as actors.Options.RequestTimeout's default.
	defaultRequestTimeout = 5 * time.Second
	// serveReserve is the part of a request's deadline that waiting for a
	// move (routeTo, reroute) leaves for serving the request afterwards,
	// and the least time left with which a request is forwarded. A
	// request handed to an owner's core with a few milliseconds left
	// cannot commit in time, and the group commit runs its transaction
	// until the earliest deadline in its batch (actors/writer.go): it
	// would cut the transaction short for every request batched with it,
	// which then get 503s too.
	serveReserve = 250 * time.Millisecond
)

var (
	errNotOwner = &domain.Error{Code: domain.CodeUnavailable,
		Message: "this node does not own the user's partition any more (it is moving between nodes); retry later"}
	errNoOwner = &domain.Error{Code: domain.CodeUnavailable,
		Message: "the user's partition has no owner node right now; retry later"}
	errOwnerUnreachable = &domain.Error{Code: domain.CodeUnavailable,
		Message: "the node that owns the user's partition cannot be reached; retry later"}
	errAnswerLost = &domain.Error{Code: domain.CodeUnavailable,
		Message: "the node that owns the user's partition did not answer; the request may have been applied; retry later"}
	errOutcomeUnknown = &domain.Error{Code: domain.CodeUnavailable,
		Message: "the node that owns the user's partition did not answer and the outcome of the create is not known; retry with an Idempotency-Key"}
	errRouteDeadline = &domain.Error{Code: domain.CodeTimeout, Message: "request deadline exceeded"}
	errNoTimeLeft    = &domain.Error{Code: domain.CodeUnavailable,
		Message: "too little of the request's deadline is left to reach the node that owns the user's partition; retry later"}
)

// clusterEdge is what the routing middlewares share.
type clusterEdge struct {
	cluster Cluster
	self    string
	node    []string // the value of X-Tally-Node, assigned (never copied) into every answer
	lookups Lookups
	auth    *nodeAuth
	timeout time.Duration
	client  *nodeClient
	owners  sync.Map // owner base URL → *url.URL
	stats   forwardStats
}

func newClusterEdge(opts Options, reg *prometheus.Registry) (*clusterEdge, error) {
	if opts.Lookups == nil {
		return nil, errors.New("transport: Lookups is required with Cluster")
	}
	if len(opts.ClusterSecret) < MinClusterSecret {
		return nil, fmt.Errorf("transport: ClusterSecret must be at least %d bytes", MinClusterSecret)
	}
	self := opts.Cluster.NodeID()
	if !validNodeID(self) {
		return nil, fmt.Errorf("transport: node id %q must be 1 to 128 characters of [A-Za-z0-9._:-]", self)
	}
	timeout := opts.RequestTimeout
	if timeout <= 0 {
		timeout = defaultRequestTimeout
	}
	e := &clusterEdge{
		cluster: opts.Cluster,
		self:    self,
		node:    []string{self},
		lookups: opts.Lookups,
		auth:    newNodeAuth(opts.ClusterSecret),
		timeout: timeout,
		client:  newNodeClient(),
	}
	if err := e.stats.register(reg); err != nil {
		return nil, err
	}
	return e, nil
}

// validNodeID: a node id travels in headers and log lines.
func validNodeID(id string) bool { return validRequestID(id) }

// ownerURL parses an owner's base URL once.
func (e *clusterEdge) ownerURL(raw string) (*url.URL, error) {
	if u, ok := e.owners.Load(raw); ok {
		return u.(*url.URL), nil
	}
	// Tally serves plain HTTP (app.Serve); nodes reach each other directly.
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.Host == "" ||
		strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("owner URL %q is not an http:// base URL without path, query or credentials", raw)
	}
	u.Path, u.RawPath = "", ""
	e.owners.Store(raw, u)
	return u, nil
}

// nodeHeader names this node on every answer; a forwarded answer replaces
// it with the owner's (relay).
func (s *server) nodeHeader(c *gin.Context) {
	c.Writer.Header()[HeaderNode] = s.cluster.node
	c.Next()
}

// requestDeadline is the request's deadline as the core declares it
// (actors/budget.go): TALLY_REQUEST_TIMEOUT from now, or the context's
// deadline when sooner — which, on a forwarded request, is the deadline
// of the node that forwarded it (acceptForward).
func (e *clusterEdge) requestDeadline(ctx context.Context) time.Time {
	d := time.Now().Add(e.timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		return cd
	}
	return d
}

// routeByToken routes a user request by its token's sub. Session-id
// requests of users (GET, upload-url) need no lookup: a session that is
// not the sub's is a 404 wherever it is answered.
func (s *server) routeByToken(c *gin.Context) { s.routeTo(c, userID(c)) }

// routeByPathUser routes an admin request by the user in its path. An id
// that cannot be a user's is answered here (422).
func (s *server) routeByPathUser(c *gin.Context) {
	id := c.Param("id")
	if !domain.ValidUserID(id) {
		c.Next()
		return
	}
	s.routeTo(c, id)
}

// routeBySession routes an admin session request by the session's user,
// read from the shared store (one read by primary key). A session that
// does not exist is answered here, by the handler, which checks the body
// first as it does on a single node.
func (s *server) routeBySession(c *gin.Context) {
	id := c.Param("id")
	if !validSessionID(id) {
		c.Next()
		return
	}
	user, err := s.cluster.lookups.SessionUser(c.Request.Context(), id)
	switch {
	case err == nil:
		s.routeTo(c, user)
	case domain.ErrorCode(err) == domain.CodeNotFound:
		c.Next()
	default:
		s.fail(c, err)
	}
}

// routeTo serves the request here when this node owns the user's
// partition, and otherwise forwards it to the owner — once. A partition
// that is moving or unowned is waited for until its route settles, bounded
// by maxSettleWait and the request's deadline less serveReserve. A
// forwarded request is never forwarded again: if this node does not own
// the partition (any more), the answer is 503.
func (s *server) routeTo(c *gin.Context, user string) {
	e := s.cluster
	p := domain.PartitionOf(user)
	r := e.cluster.Route(p)
	if r.Self {
		c.Next()
		return
	}
	ctx := c.Request.Context()
	deadline := e.requestDeadline(ctx)
	if r.Settled != nil {
		// A move passes through several unsettled routes (the old owner
		// releasing, nobody, the new owner acquiring), each closing the
		// previous one's Settled: wait for the last, within one bound.
		until := settleUntil(deadline)
		for r.Settled != nil {
			settled := e.settle(ctx, r.Settled, until)
			r = e.cluster.Route(p)
			if !settled {
				e.stats.unsettled.Inc()
				break
			}
		}
		if r.Self {
			c.Next()
			return
		}
	}
	forwarded := forwardOf(c) != nil
	switch {
	case forwarded || (r.NodeID == e.self && r.Settled == nil):
		// A node that forwarded here believed this node the owner; the
		// ownership has moved since. Forwarding again could chase a
		// partition around the cluster: the client retries instead.
		e.stats.notOwner.Inc()
		s.fail(c, errNotOwner)
	case r.Settled != nil || r.NodeID == "":
		s.fail(c, errNoOwner)
	default:
		s.forward(c, r, user, deadline)
	}
}

// settleUntil is how long a request may wait for a route to settle:
// maxSettleWait, leaving serveReserve of its deadline.
func settleUntil(deadline time.Time) time.Time {
	until := time.Now().Add(maxSettleWait)
	if d := deadline.Add(-serveReserve); d.Before(until) {
		until = d
	}
	return until
}

// settle waits until settled is closed, until, or the client going away,
// and reports whether it was closed.
func (e *clusterEdge) settle(ctx context.Context, settled <-chan struct{}, until time.Time) bool {
	select {
	case <-settled:
		return true
	default:
	}
	wait := time.Until(until)
	if wait <= 0 {
		return false
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-settled:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// reroute finds where to send a request that the node refused last
// forwarded it to: this node (Self) or another owner than refused, once
// this node's route for p has moved away from refused — waiting on a
// moving route's Settled, and looking again every few milliseconds while
// the route still names the refusing node (this node has not seen the move
// yet: a settled route has no channel to wait on), until the deadline or
// maxSettleWait. ok is false when the route did not move by then.
func (e *clusterEdge) reroute(ctx context.Context, p domain.Partition, refused string, deadline time.Time) (r Route, ok bool) {
	until := settleUntil(deadline)
	for {
		r = e.cluster.Route(p)
		switch {
		case r.Self:
			return r, true
		case r.Settled != nil:
			if !e.settle(ctx, r.Settled, until) {
				return r, false
			}
			continue
		case r.NodeID != "" && r.NodeID != refused && r.NodeID != e.self:
			return r, true
		}
		wait := min(time.Until(until), reroutePoll)
		if wait <= 0 || ctx.Err() != nil {
			return r, false
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
}

// reroutePoll is how often reroute looks at a route that still names the
// node that refused: a watch event reaches the nodes of one cluster within
// milliseconds of each other.
const reroutePoll = 5 * time.Millisecond

// forwardStats count what forwarding did, by result
// (tally_cluster_forwards_total{result}).
type forwardStats struct {
	answered, unreachable, lost, resolved, unresolved, notOwner, unsettled, refused prometheus.Counter
}

func (f *forwardStats) register(reg *prometheus.Registry) error {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tally_cluster_forwards_total",
		Help: "Requests routed to another node, by result: answered (the owner's answer relayed), unreachable (503: no connection), lost (503: sent, no answer), resolved (a create's lost answer found in the store), unresolved (503: not found by the deadline), not_owner (503: a forwarded request reached a node that no longer owns the partition, or the forwarding node found no other owner after such a refusal), unsettled (a moving partition was still unsettled after the wait), refused (the owner refused the request as not its own any more; routed again).",
	}, []string{"result"})
	if err := reg.Register(v); err != nil {
		return fmt.Errorf("transport: registering cluster metrics: %w", err)
	}
	f.answered = v.WithLabelValues("answered")
	f.unreachable = v.WithLabelValues("unreachable")
	f.lost = v.WithLabelValues("lost")
	f.resolved = v.WithLabelValues("resolved")
	f.unresolved = v.WithLabelValues("unresolved")
	f.notOwner = v.WithLabelValues("not_owner")
	f.unsettled = v.WithLabelValues("unsettled")
	f.refused = v.WithLabelValues("refused")
	return nil
}
