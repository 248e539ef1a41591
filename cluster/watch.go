package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// evKind is what an event tells the loop.
type evKind int

const (
	evWatch     evKind = iota // events: changes under the prefix, in revision order
	evSnapshot                // snap: the whole state, after the watch fell behind a compaction
	evLeaseGone               // lease: the lease etcd says no longer exists
	evLeaseNew                // lease: the lease the node registered under instead
)

type event struct {
	kind   evKind
	events []*mvccpb.Event
	snap   *snapshot
	lease  clientv3.LeaseID
}

// watch follows every change under the prefix from revision rev on and
// hands it to the loop. The client resumes the watch by itself across
// reconnections (an etcd member killed, all of them restarted), from the
// revision it had reached. WithRequireLeader makes a member that lost its
// quorum cancel the watch instead of leaving it silent; it is then opened
// again, on whichever member the client picks, from the next revision. A
// watch that fell behind a compaction starts over from a fresh snapshot.
func (n *Node) watch(rev int64) {
	wait := 50 * time.Millisecond
	for n.ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(n.ctx))
		wch := n.cli.Watch(wctx, n.keys.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithProgressNotify())
		compacted := false
		var werr error
		for resp := range wch {
			n.waitGate()
			if resp.CompactRevision > 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
				compacted = true
				break
			}
			if err := resp.Err(); err != nil {
				werr = err
				break
			}
			if len(resp.Events) > 0 {
				if !n.send(event{kind: evWatch, events: resp.Events}) {
					break
				}
				rev = resp.Events[len(resp.Events)-1].Kv.ModRevision + 1
				wait = 50 * time.Millisecond
			} else if resp.IsProgressNotify() {
				rev = max(rev, resp.Header.Revision+1)
			}
		}
		cancel()
		if n.ctx.Err() != nil {
			return
		}
		if compacted {
			n.log.Warn("cluster: watch fell behind a compaction; reading the whole state again", "revision", rev)
			ctx, c := context.WithTimeout(n.ctx, n.opTimeout())
			snap, err := n.snapshot(ctx)
			c()
			if err == nil && n.send(event{kind: evSnapshot, snap: snap}) {
				rev = snap.rev + 1
				continue
			}
		} else {
			n.log.Debug("cluster: watch ended; watching again", "revision", rev, "err", fmt.Sprint(werr))
		}
		sleepCtx(n.ctx, wait)
		wait = min(2*wait, time.Second)
	}
}
