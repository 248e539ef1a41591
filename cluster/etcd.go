package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tally-dev/tally/domain"
)

// keys is the layout of the node's state in etcd:
//
//	{prefix}members/{node id} → memberValue, under the node's lease
//	{prefix}owners/{ppp}      → claimValue, under the owner's lease; its
//	                            create revision is the partition's epoch
type keys struct{ prefix string }

func (k keys) members() string         { return k.prefix + "members/" }
func (k keys) owners() string          { return k.prefix + "owners/" }
func (k keys) member(id string) string { return k.members() + id }
func (k keys) owner(p domain.Partition) string {
	return fmt.Sprintf("%s%03d", k.owners(), int(p))
}

// partition parses an owner key; ok is false for any other key.
func (k keys) partition(key string) (domain.Partition, bool) {
	s, found := strings.CutPrefix(key, k.owners())
	if !found {
		return 0, false
	}
	p, err := strconv.Atoi(s)
	if err != nil || p < 0 || p >= domain.Partitions {
		return 0, false
	}
	return domain.Partition(p), true
}

type memberValue struct {
	URL string `json:"url"`
}

type claimValue struct {
	Node string `json:"node"`
	URL  string `json:"url"`
}

// memberRec is a live member as the node last saw it.
type memberRec struct {
	url   string
	lease clientv3.LeaseID
}

// claim is a partition's owner key as the node last saw it; node == "" is
// no owner. modRev orders what the node learns about the key: its own
// transactions' results can arrive before the watch delivers older events
// for the same key, which must then not overwrite them.
type claim struct {
	node      string
	url       string
	lease     clientv3.LeaseID
	createRev int64 // the epoch
	modRev    int64
}

// snapshot is every member and claim at one revision.
type snapshot struct {
	rev     int64
	members map[string]memberRec
	owners  [domain.Partitions]claim
}

// opTimeout bounds one etcd request of the node's own making.
func (n *Node) opTimeout() time.Duration { return time.Duration(n.ttlSec) * time.Second }

// join grants the node's lease, registers it as a member and reads the
// state the watch will continue from.
func (n *Node) join(ctx context.Context) (clientv3.LeaseID, int64, *snapshot, error) {
	lease, err := n.register(ctx)
	if err != nil {
		return 0, 0, nil, err
	}
	var snap *snapshot
	for {
		sctx, cancel := context.WithTimeout(ctx, n.opTimeout())
		snap, err = n.snapshot(sctx)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_, _ = n.cli.Revoke(rctx, lease)
			cancel()
			return 0, 0, nil, fmt.Errorf("cluster: read state from etcd %v: %w", n.cfg.Endpoints, err)
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
	return lease, snap.rev, snap, nil
}

// register grants a new lease and creates the member key under it. A member
// key of the same id that is already there belongs to an earlier run of
// this node whose lease has not expired yet (it died, or lost its lease and
// is rejoining): register waits for it to go, for up to twice the lease TTL
// plus a margin; after that it is another live node with the same id, which
// is a configuration error.
func (n *Node) register(ctx context.Context) (clientv3.LeaseID, error) {
	ttl := time.Duration(n.ttlSec) * time.Second
	gctx, cancel := context.WithTimeout(ctx, ttl+n.opTimeout())
	g, err := retry(gctx, func(c context.Context) (*clientv3.LeaseGrantResponse, error) {
		return n.cli.Grant(c, n.ttlSec)
	})
	cancel()
	if err != nil {
		return 0, fmt.Errorf("cluster: grant a lease on etcd %v: %w", n.cfg.Endpoints, err)
	}
	lease := g.ID
	revoke := func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_, _ = n.cli.Revoke(rctx, lease)
		cancel()
	}
	val, _ := json.Marshal(memberValue{URL: n.url})
	key := n.keys.member(n.id)
	deadline := time.Now().Add(2*ttl + 2*time.Second)
	logged := false
	for {
		tctx, cancel := context.WithTimeout(ctx, n.opTimeout())
		resp, err := n.cli.Txn(tctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(val), clientv3.WithLease(lease))).
			Else(clientv3.OpGet(key)).
			Commit()
		cancel()
		switch {
		case err == nil && resp.Succeeded:
			return lease, nil
		case ctx.Err() != nil:
			revoke()
			return 0, fmt.Errorf("cluster: register node %q: %w", n.id, ctx.Err())
		case err == nil && time.Now().After(deadline):
			revoke()
			return 0, fmt.Errorf("cluster: node id %q is registered by a live node (key %s kept alive past %s): node ids must be unique", n.id, key, 2*ttl)
		case err == nil && !logged:
			logged = true
			n.log.Warn("cluster: waiting for an earlier registration of this node id to expire", "key", key)
		case err != nil:
			n.log.Warn("cluster: register", "err", err)
		}
		sleepCtx(ctx, 250*time.Millisecond)
	}
}

// withdraw deletes this node's member key, if it is still under lease.
func (n *Node) withdraw(ctx context.Context, lease clientv3.LeaseID) error {
	key := n.keys.member(n.id)
	tctx, cancel := context.WithTimeout(ctx, n.opTimeout())
	defer cancel()
	_, err := n.cli.Txn(tctx).
		If(clientv3.Compare(clientv3.LeaseValue(key), "=", lease)).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return fmt.Errorf("cluster: withdraw membership: %w", err)
	}
	return nil
}

// snapshot reads every member and claim under the prefix at one revision.
func (n *Node) snapshot(ctx context.Context) (*snapshot, error) {
	resp, err := n.cli.Get(ctx, n.keys.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	s := &snapshot{rev: resp.Header.Revision, members: map[string]memberRec{}}
	for _, kv := range resp.Kvs {
		n.apply(kv, mvccpb.Event_PUT, s.members, &s.owners)
	}
	return s, nil
}

// apply records one key's new state in members and owners (keys it does
// not know are skipped: the prefix is the node's, but a typo'd manual
// write must not stop it). For owners it only applies what is newer than
// what is recorded.
func (n *Node) apply(kv *mvccpb.KeyValue, typ mvccpb.Event_EventType, members map[string]memberRec, owners *[domain.Partitions]claim) (membersChanged bool) {
	key := string(kv.Key)
	if id, ok := strings.CutPrefix(key, n.keys.members()); ok {
		if typ == mvccpb.Event_DELETE {
			delete(members, id)
			return true
		}
		var v memberValue
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			n.log.Warn("cluster: unreadable member key, ignored", "key", key, "err", err)
			return false
		}
		members[id] = memberRec{url: v.URL, lease: clientv3.LeaseID(kv.Lease)}
		return true
	}
	p, ok := n.keys.partition(key)
	if !ok {
		return false
	}
	if kv.ModRevision <= owners[p].modRev {
		return false
	}
	if typ == mvccpb.Event_DELETE {
		owners[p] = claim{modRev: kv.ModRevision}
		return false
	}
	var v claimValue
	if err := json.Unmarshal(kv.Value, &v); err != nil || v.Node == "" {
		n.log.Warn("cluster: unreadable owner key, taken as owned by nobody", "key", key, "err", err)
		v = claimValue{Node: "?"} // owned (a claim exists), by no node that will serve it
	}
	owners[p] = claim{node: v.Node, url: v.URL, lease: clientv3.LeaseID(kv.Lease), createRev: kv.CreateRevision, modRev: kv.ModRevision}
	return false
}

// claim creates p's owner key under lease if it is absent; the epoch is
// the revision of the creation. won is false when another node holds it.
func (n *Node) claim(ctx context.Context, p domain.Partition, lease clientv3.LeaseID) (epoch int64, won bool, err error) {
	val, _ := json.Marshal(claimValue{Node: n.id, URL: n.url})
	key := n.keys.owner(p)
	tctx, cancel := context.WithTimeout(ctx, n.opTimeout())
	defer cancel()
	resp, err := n.cli.Txn(tctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val), clientv3.WithLease(lease))).
		Commit()
	if err != nil {
		return 0, false, err
	}
	if !resp.Succeeded {
		return 0, false, nil
	}
	// The transaction made one revision, the key's create revision.
	return resp.Header.Revision, true, nil
}

// unclaim deletes p's owner key if it is still the claim made at epoch,
// retrying until that is done or ctx ends (or, with once, after one try).
// rev is the revision of the deletion, 0 if the claim was already gone or
// the deletion did not happen.
func (n *Node) unclaim(ctx context.Context, p domain.Partition, epoch int64, once bool) (rev int64) {
	key := n.keys.owner(p)
	wait := 50 * time.Millisecond
	for {
		tctx, cancel := context.WithTimeout(ctx, n.opTimeout())
		resp, err := n.cli.Txn(tctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", epoch)).
			Then(clientv3.OpDelete(key)).
			Commit()
		cancel()
		if err == nil {
			if resp.Succeeded {
				return resp.Header.Revision
			}
			return 0
		}
		if once || ctx.Err() != nil {
			n.log.Warn("cluster: delete claim", "partition", int(p), "epoch", epoch, "err", err)
			return 0
		}
		sleepCtx(ctx, wait)
		wait = min(2*wait, time.Second)
	}
}

// retry calls f until it succeeds or ctx ends, pausing between tries: the
// etcd client fails fast while no endpoint is reachable.
func retry[T any](ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	wait := 50 * time.Millisecond
	for {
		v, err := f(ctx)
		if err == nil || ctx.Err() != nil {
			return v, err
		}
		sleepCtx(ctx, wait)
		wait = min(2*wait, time.Second)
	}
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
