package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// leaseState is what etcd says about a lease.
type leaseState int

const (
	leaseUnknown leaseState = iota // etcd did not answer
	leaseAlive
	leaseGone // revoked or expired: every key under it is deleted
)

// keepLease keeps the node's lease alive for the node's life, and is the
// only place that decides the lease is gone. The etcd client's keepalive
// channel closes when the lease expired, but also when no keepalive got an
// answer for a TTL (etcd unreachable, or no leader): that alone is no proof,
// so keepLease then asks etcd (TimeToLive) until etcd answers. While etcd
// does not answer the node keeps what it owns: nobody else can claim
// anything without etcd either, and etcd's new leader gives every lease a
// full TTL again when it takes office (decision 0021). Only an answer that
// the lease does not exist ends ownership: the loop drops every partition
// (Lost) and keepLease registers again under a new lease.
func (n *Node) keepLease(lease clientv3.LeaseID) {
	for n.ctx.Err() == nil && lease != 0 {
		kctx, kcancel := context.WithCancel(n.ctx)
		n.pauseKeepAlive.Store(&kcancel)
		ch, err := n.cli.KeepAlive(kctx, lease)
		if err != nil {
			// The client's keepalive machinery has halted; only closing the
			// client does that, i.e. the node is stopping.
			kcancel()
			return
		}
		verify := false
	recv:
		for {
			select {
			case _, ok := <-ch:
				if !ok {
					verify = true
					break recv
				}
			case <-n.verifyReq:
				verify = true
				break recv
			case <-n.ctx.Done():
				kcancel()
				return
			}
		}
		n.waitGate()
		if verify {
			switch n.settleLease(lease) {
			case leaseAlive:
				n.clearSuspicion()
				// A keepalive channel that closed is not reopened by the
				// client: ask for a new one (an open one is kept by the
				// client's multiplexing, and the new call joins it).
			case leaseGone:
				kcancel()
				lease = n.replaceLease(lease)
				continue
			default: // the node is stopping
			}
		}
		kcancel()
	}
}

// settleLease asks etcd about lease until it answers (or the node stops).
func (n *Node) settleLease(lease clientv3.LeaseID) leaseState {
	since := time.Now()
	logged := false
	for n.ctx.Err() == nil {
		st, err := n.checkLease(lease)
		if st != leaseUnknown {
			if logged {
				n.log.Info("cluster: etcd answers again", "lease_alive", st == leaseAlive, "after", time.Since(since).Round(time.Millisecond))
			}
			return st
		}
		if !logged {
			logged = true
			n.log.Warn("cluster: etcd does not answer; keeping current ownership until it does", "err", err)
		}
		sleepCtx(n.ctx, 100*time.Millisecond)
	}
	return leaseUnknown
}

func (n *Node) checkLease(lease clientv3.LeaseID) (leaseState, error) {
	ctx, cancel := context.WithTimeout(n.ctx, min(n.opTimeout(), time.Second))
	defer cancel()
	resp, err := n.cli.TimeToLive(ctx, lease)
	switch {
	case err == nil && resp.TTL == -1:
		return leaseGone, nil
	case err == nil:
		return leaseAlive, nil
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return leaseGone, nil
	default:
		return leaseUnknown, err
	}
}

// replaceLease tells the loop the lease is gone (it drops every partition
// at once), then registers under a new lease, unless the node is leaving.
func (n *Node) replaceLease(old clientv3.LeaseID) clientv3.LeaseID {
	n.log.Warn("cluster: lease expired; every partition is lost, rejoining", "lease", leaseHex(old))
	if !n.send(event{kind: evLeaseGone, lease: old}) || n.leaving.Load() {
		return 0
	}
	for n.ctx.Err() == nil {
		lease, err := n.register(n.ctx)
		if err == nil {
			if !n.send(event{kind: evLeaseNew, lease: lease}) {
				return 0
			}
			n.log.Info("cluster: rejoined", "lease", leaseHex(lease))
			return lease
		}
		n.log.Warn("cluster: rejoin", "err", err)
		sleepCtx(n.ctx, time.Second)
	}
	return 0
}

// send hands an event to the loop; false once the node is stopping.
func (n *Node) send(ev event) bool {
	select {
	case n.events <- ev:
		return true
	case <-n.ctx.Done():
		return false
	}
}

// leaseHex is how etcdctl shows a lease id.
func leaseHex(l clientv3.LeaseID) string { return fmt.Sprintf("%x", int64(l)) }
