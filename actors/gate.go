package actors

import (
	"sync"
	"sync/atomic"

	"github.com/tally-dev/tally/domain"
)

// userGate bounds how many requests of one user are in flight in this
// process — queued in its actor's mailbox, waiting behind its in-flight
// admissions, or in the group commit — so that one user's volume takes at
// most its share of the process's in-flight budget and is refused at once
// past it, instead of growing a queue that every later request of that
// user waits through. Counts live only while non-zero: an idle user costs
// nothing here.
type userGate struct {
	max    int32
	shards [64]gateShard
	shed   atomic.Int64
}

type gateShard struct {
	mu sync.Mutex
	n  map[string]int32
}

// errUserBusy answers a request over its user's bound.
var errUserBusy = domain.Shed("too many requests of this user in flight")

func newUserGate(max int) *userGate {
	g := &userGate{max: int32(max)}
	for i := range g.shards {
		g.shards[i].n = make(map[string]int32)
	}
	return g
}

// enter takes a slot for the user, or reports false when it has max
// requests in flight already. A nil gate (no bound) always admits.
func (g *userGate) enter(userID string, hash uint32) bool {
	if g == nil {
		return true
	}
	sh := &g.shards[hash%uint32(len(g.shards))]
	sh.mu.Lock()
	n := sh.n[userID]
	ok := n < g.max
	if ok {
		sh.n[userID] = n + 1
	}
	sh.mu.Unlock()
	if !ok {
		g.shed.Add(1)
	}
	return ok
}

// leave gives back a slot taken by enter.
func (g *userGate) leave(userID string, hash uint32) {
	if g == nil {
		return
	}
	sh := &g.shards[hash%uint32(len(g.shards))]
	sh.mu.Lock()
	if n := sh.n[userID] - 1; n > 0 {
		sh.n[userID] = n
	} else {
		delete(sh.n, userID)
	}
	sh.mu.Unlock()
}
