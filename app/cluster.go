package app

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/cluster"
	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/transport"
)

// nodeRef is cluster mode's node as the core and the edge see it. The core
// is built first (it is the node's hooks: actors.Service's Acquire, Release
// and Lost), and the node is started in Run once the listeners are bound;
// until then this node owns nothing (Epoch 0) and every partition is
// "moving" (Route.Settled), so a request that arrives early waits for the
// join instead of failing.
type nodeRef struct {
	id      string
	node    atomic.Pointer[cluster.Node]
	started chan struct{} // closed once node is set
}

func newNodeRef(id string) *nodeRef { return &nodeRef{id: id, started: make(chan struct{})} }

// Epoch implements actors.Ownership.
func (r *nodeRef) Epoch(p domain.Partition) int64 {
	if n := r.node.Load(); n != nil {
		return n.Epoch(p)
	}
	return 0
}

// NodeID implements transport.Cluster.
func (r *nodeRef) NodeID() string { return r.id }

// Route implements transport.Cluster.
func (r *nodeRef) Route(p domain.Partition) transport.Route {
	n := r.node.Load()
	if n == nil {
		return transport.Route{Settled: r.started}
	}
	c := n.Route(p)
	return transport.Route{Self: c.Self, Epoch: c.Epoch, NodeID: c.NodeID, URL: c.URL, Settled: c.Settled}
}

// joinCluster starts the node (TALLY_ETCD_ENDPOINTS) and returns the
// context the API serves under: it ends once the node has left the cluster
// after ctx is done, so that partitions are handed off while the API still
// answers. left yields the leave's error.
func (a *App) joinCluster(ctx context.Context) (api context.Context, left <-chan error, err error) {
	// The node's own context ends only after the graceful leave (or at
	// once if the leave fails): cancelling it is an abrupt stop, as a crash
	// would be, which leaves the lease to expire.
	nodeCtx, stopNode := context.WithCancel(context.Background())
	node, err := cluster.Start(nodeCtx, cluster.Config{
		Endpoints:    a.cfg.EtcdEndpoints,
		NodeID:       a.cfg.NodeID,
		AdvertiseURL: a.cfg.AdvertiseURL,
		LeaseTTL:     a.cfg.ClusterLeaseTTL,
		Logger:       a.log.With("component", "cluster"),
		Hooks:        a.accounts,
		// Release waits for a partition's requests in flight, which the
		// core bounds by the request deadline.
		HandOffTimeout: a.cfg.RequestTimeout + time.Second,
	})
	if err != nil {
		stopNode()
		return nil, nil, fmt.Errorf("TALLY_ETCD_ENDPOINTS: join the cluster: %w", err)
	}
	a.node.node.Store(node)
	close(a.node.started)
	a.log.Info("joined the cluster", "node", a.cfg.NodeID, "advertise", a.cfg.AdvertiseURL)

	apiCtx, stopAPI := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		defer stopAPI()
		defer stopNode()
		<-ctx.Done()
		a.log.Info("leaving the cluster: handing partitions off", "timeout", a.cfg.ShutdownTimeout.String())
		lctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
		defer cancel()
		err := node.Close(lctx)
		if err != nil && !errors.Is(err, context.Canceled) {
			err = fmt.Errorf("leave the cluster: %w", err)
		}
		done <- err
	}()
	return apiCtx, done, nil
}

// registerClusterMetrics exports what the node owns and sees, read at
// scrape time: tally_cluster_owned_partitions (how many partitions this
// node serves now; across a healthy cluster they add up to
// domain.Partitions) and tally_cluster_members (the live nodes this node
// sees).
func (r *nodeRef) registerMetrics(reg *prometheus.Registry) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tally_cluster_owned_partitions",
			Help: "Partitions this node owns and serves now (cluster mode).",
		}, func() float64 {
			n := 0
			for p := range domain.Partitions {
				if r.Epoch(domain.Partition(p)) != 0 {
					n++
				}
			}
			return float64(n)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tally_cluster_members",
			Help: "Live nodes of the cluster as this node last saw them (cluster mode).",
		}, func() float64 {
			if n := r.node.Load(); n != nil {
				return float64(len(n.Members()))
			}
			return 0
		}),
	)
}
