package actors

import (
	"sync"
	"sync/atomic"

	"github.com/asynkron/protoactor-go/actor"
)

// routes lets a request reach its user's live actor directly, from the
// request's own goroutine, instead of through the shard that owns the actor
// (one goroutine hand-off less on every request). The shards still spawn
// actors, route the first message to a cold user and passivate idle ones;
// a user without a usable route (cold, or its actor stopping) goes through
// its shard as before.
//
// Passivation stays lossless because a route is sealed before its actor is
// asked to stop: seal succeeds only while no request is between reading the
// route and enqueueing its message (senders == 0), and a sealed route is
// never used again. So every message sent through a route is in the
// actor's mailbox before the passivate message the shard sends after
// sealing, and the actor (which stops only at passivate, and only once it
// owes no answer) handles it first; every later message goes to the shard,
// which holds it until the actor has stopped and replays it to the next
// one (shard.go).
type routes struct{ m sync.Map } // user id → *route

// route is the way to one live user actor.
type route struct {
	pid *actor.PID
	// senders counts requests sending through this route right now; -1
	// once the route is sealed.
	senders atomic.Int32
	// touched is set by every request routed here and cleared by the
	// shard's idle scan: what tells the shard the actor is in use, without
	// the shard seeing its messages.
	touched atomic.Bool
}

func (rs *routes) get(userID string) *route {
	if v, ok := rs.m.Load(userID); ok {
		return v.(*route)
	}
	return nil
}

func (rs *routes) add(userID string, r *route) { rs.m.Store(userID, r) }

func (rs *routes) remove(userID string, r *route) { rs.m.CompareAndDelete(userID, r) }

// enter reserves the route for one send; false once it is sealed.
func (r *route) enter() bool {
	for {
		n := r.senders.Load()
		if n < 0 {
			return false
		}
		if r.senders.CompareAndSwap(n, n+1) {
			break
		}
	}
	if !r.touched.Load() { // read first: a hot user's requests share the line
		r.touched.Store(true)
	}
	return true
}

// leave ends a send that enter reserved (the message is enqueued).
func (r *route) leave() { r.senders.Add(-1) }

// seal closes the route for good, unless a request is sending through it
// right now (then the actor is in use, and not idle anyway).
func (r *route) seal() bool { return r.senders.CompareAndSwap(0, -1) }

// unseal reopens a route sealed by this shard that turned out to be in use.
func (r *route) unseal() { r.senders.Store(0) }
