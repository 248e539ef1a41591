package actors

import (
	"sync"
	"time"
)

// rejectBoard lets an over-limit create be answered without the hop to the
// user's actor. When an actor rejects a create from memory — its committed
// counters alone are over a limit, confirmed by the store within
// rejectFreshness — it posts that rejection here, valid for as long as the
// actor itself would answer the same way without asking the store: until
// the confirmation is rejectFreshness old or the period ends. Service
// answers key-less creates of a posted user with the posted error.
//
// The same answer the actor would give, only sooner: usage within a period
// only rises, except through an admin change (plan, anchor, reset) or a
// session's completion, and every message other than a create clears the
// user's entry before the actor handles it, so a change made through this
// process is seen by the next request; a change made through another
// process is seen within rejectFreshness, as by the actor.
//
// Entries are dropped when the actor is passivated or forgets its state,
// and whenever any other message for the user arrives, so the board holds
// at most one entry per live actor.
type rejectBoard struct {
	shards [64]rejectShard
}

type rejectShard struct {
	mu sync.RWMutex
	m  map[string]posted
}

type posted struct {
	err   error
	until time.Time
	epoch int64 // the partition epoch it was decided under (0: single-node mode)
}

func newRejectBoard() *rejectBoard {
	b := &rejectBoard{}
	for i := range b.shards {
		b.shards[i].m = make(map[string]posted)
	}
	return b
}

func (b *rejectBoard) shard(user string) *rejectShard {
	return &b.shards[userHash(user)%uint32(len(b.shards))]
}

// get returns the rejection posted for user if it is still valid at now,
// and the epoch it was decided under: in cluster mode it holds only while
// the node owns the user's partition under that epoch (ownership.go). An
// expired entry stays (post reuses its error value) until the actor clears
// it.
func (b *rejectBoard) get(user string, now time.Time) (epoch int64, err error) {
	sh := b.shard(user)
	sh.mu.RLock()
	p, ok := sh.m[user]
	sh.mu.RUnlock()
	if ok && now.Before(p.until) {
		return p.epoch, p.err
	}
	return 0, nil
}

// post posts err, decided under epoch, for user until the given time and
// returns it.
func (b *rejectBoard) post(user string, err error, until time.Time, epoch int64) error {
	sh := b.shard(user)
	sh.mu.Lock()
	sh.m[user] = posted{err: err, until: until, epoch: epoch}
	sh.mu.Unlock()
	return err
}

func (b *rejectBoard) clear(user string) {
	sh := b.shard(user)
	sh.mu.RLock()
	_, ok := sh.m[user]
	sh.mu.RUnlock()
	if !ok {
		return // the common case: nothing posted, no write lock taken
	}
	sh.mu.Lock()
	delete(sh.m, user)
	sh.mu.Unlock()
}

// len is the number of entries, for tests.
func (b *rejectBoard) len() int {
	n := 0
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.RLock()
		n += len(sh.m)
		sh.mu.RUnlock()
	}
	return n
}
