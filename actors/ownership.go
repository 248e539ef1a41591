package actors

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tally-dev/tally/domain"
)

// Cluster mode: which users this node may decide for
// (docs/decisions/0022-partition-epoch-fence.md).
//
// Users are spread over domain.Partitions partitions; each has one owner
// node at a time, under an epoch that rises with every claim. The cluster
// package decides ownership (on etcd) and tells the Service through its
// hooks: Acquire once this node becomes a partition's owner (the store
// records the epoch, ClaimPartition), Release for an orderly hand-off,
// Lost when the node learns it no longer owns it. Ownership answers, at
// any moment, under which epoch this node owns a partition.
//
// With Options.Ownership set:
//
//   - a request for a user whose partition this node does not own now is
//     refused at once with domain.NotOwner (nothing is written, so the edge
//     may send it to the owner, or the client retry), before any hop; the
//     user's actor checks again whenever it decides, since ownership may
//     move while a request waits in its mailbox;
//   - every admission carries the epoch read when it was decided, and the
//     store commits it only under that epoch (persistence.AdmitRequest);
//     an admission the store fenced off is answered the same 503, and the
//     actor drops its state;
//   - a user's actor remembers the epoch under which it loaded the user
//     and its counters, and reloads both from the store before deciding
//     under another one: in between, another node may have owned the
//     partition and admitted, completed or changed the plan;
//   - rejections posted on the reject board hold only under the epoch they
//     were decided under.
//
// Without it (single-node mode) none of this runs: the request path pays
// one nil check.

// Ownership says under which epoch this node owns a partition now (the cluster
// package implements it from etcd; tests use a fake).
//
// Epoch is called on every request of cluster mode and on every decision of
// a user's actor, from many goroutines at once: it must be safe for
// concurrent use, cheap (an atomic read) and never block. It must report an
// epoch only once Service.Acquire with that epoch has returned nil.
type Ownership interface {
	// Epoch returns the epoch under which this node owns p now, or 0 when it does not.
	Epoch(p domain.Partition) int64
}

// partitions is this node's side of ownership in cluster mode: Ownership,
// and per partition whether the node has released it or lost it (until it
// acquires it again) and how many requests for its users are in flight.
type partitions struct {
	own   Ownership
	state [domain.Partitions]partitionState
}

type partitionState struct {
	closed   atomic.Bool  // released or lost, until the next Acquire
	inflight atomic.Int64 // requests between enter and leave
	_        [48]byte     // one cache line each: requests of different partitions do not share one
}

// epoch is the epoch under which this node may decide for p now: 0 when it
// has released or lost p, else what Ownership says.
func (ps *partitions) epoch(p domain.Partition) int64 {
	if ps.state[p].closed.Load() {
		return 0
	}
	return ps.own.Epoch(p)
}

// enter counts a request for a user of p in flight, unless this node does
// not own p now. The count is raised before ownership is checked, and
// Release closes p before it reads the count: either Release sees this
// request, or this request sees p closed.
func (ps *partitions) enter(p domain.Partition) bool {
	st := &ps.state[p]
	st.inflight.Add(1)
	if st.closed.Load() || ps.own.Epoch(p) == 0 {
		st.inflight.Add(-1)
		return false
	}
	return true
}

// leave ends a request that enter counted.
func (ps *partitions) leave(p domain.Partition) { ps.state[p].inflight.Add(-1) }

// errSingleNode refuses the hooks of cluster mode on a Service without
// Ownership.
var errSingleNode = errors.New("the Service runs in single-node mode (no Options.Ownership)")

func (s *Service) partitionState(op string, p domain.Partition) (*partitionState, error) {
	if s.parts == nil {
		return nil, fmt.Errorf("actors: %s partition %d: %w", op, p, errSingleNode)
	}
	if p < 0 || p >= domain.Partitions {
		return nil, fmt.Errorf("actors: %s partition %d: out of range [0, %d)", op, p, domain.Partitions)
	}
	return &s.parts.state[p], nil
}

// Acquire makes this node p's owner under epoch: the store records the
// epoch (persistence.Store.ClaimPartition), which waits for the admissions
// of p in flight under older epochs and fences off any later one, and p's
// requests are served again here (under whatever epoch Ownership reports).
// It fails, and nothing changes here, when the store does not record it —
// persistence.ErrNewerEpoch when a newer owner claimed p since. The cluster
// must not report epoch as p's in Ownership before Acquire has returned
// nil: until then the store fences off its admissions anyway.
func (s *Service) Acquire(ctx context.Context, p domain.Partition, epoch int64) error {
	st, err := s.partitionState("acquire", p)
	if err != nil {
		return err
	}
	if err := s.store.ClaimPartition(ctx, p, epoch); err != nil {
		return err
	}
	st.closed.Store(false)
	return nil
}

// Release hands p off in order: from now on, requests for p's users are
// refused at once (domain.NotOwner); it waits until the requests already in
// flight for p have been answered, or ctx ends (then it returns ctx's
// error, with p released all the same); and p's user actors are passivated,
// a few at a time as idle ones are (shard.go), so that none keeps state
// that another owner may make stale. An admission still queued for the
// group commit after its caller stopped waiting may commit later under the
// old epoch, until the next owner's Acquire: that claim waits for it or
// fences it off.
func (s *Service) Release(ctx context.Context, p domain.Partition) error {
	st, err := s.partitionState("release", p)
	if err != nil {
		return err
	}
	st.closed.Store(true)
	defer s.dropPartition(p)
	if st.inflight.Load() == 0 {
		return nil
	}
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("actors: release partition %d: %d request(s) still in flight: %w", p, st.inflight.Load(), ctx.Err())
		case <-t.C:
		}
		if st.inflight.Load() == 0 {
			return nil
		}
	}
}

// Lost is Release without waiting: this node learned that it no longer
// owns p (its lease expired, or another node claimed it). Requests for p's
// users are refused from now on, answers still due are given as they come
// (an admission under the lost epoch is committed only if the store still
// holds that epoch), and p's actors are passivated.
func (s *Service) Lost(p domain.Partition) {
	st, err := s.partitionState("lost", p)
	if err != nil {
		s.deps.log.Warn("ignoring a lost partition", "partition", int(p), "err", err)
		return
	}
	st.closed.Store(true)
	s.dropPartition(p)
}

// dropPartition asks every shard to passivate its actors of p.
func (s *Service) dropPartition(p domain.Partition) {
	for _, pid := range s.shards {
		s.system.Root.Send(pid, &dropPartition{p: p})
	}
}

// dropPartition asks a shard to passivate its user actors of partition p,
// idle or not.
type dropPartition struct{ p domain.Partition }

// owned checks, in cluster mode, that this node owns the user's partition
// now, before the actor decides anything: domain.NotOwner when it does not.
// When the epoch is not the one the user was loaded under, the state is
// dropped so that the decision reloads it from the store.
func (a *userActor) owned() error {
	p := domain.PartitionOf(a.id)
	epoch := a.deps.parts.epoch(p)
	if epoch == 0 {
		return domain.NotOwner(p)
	}
	if epoch != a.epoch {
		a.epoch = epoch
		a.forget() // reload under the new epoch
	}
	return nil
}
