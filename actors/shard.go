package actors

import (
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/tally-dev/tally/domain"
)

// shard owns the user actors whose ids hash to it: it spawns them, routes
// the first messages of a cold user, and passivates idle ones. Requests to
// a live actor go straight to it through its route (route.go); the shard
// seals the route before it asks the child to passivate, so nothing reaches
// the child after that but through the shard, which buffers the user's
// messages until the child's Terminated arrives, then respawns and
// replays. The child stops only once it owes no answer: passivation loses
// nothing.
type shard struct {
	userProps *actor.Props
	idle      time.Duration
	live      *atomic.Int64 // user actors alive across all shards (a metric)
	routes    *routes

	children map[string]*child        // user id → its actor
	byPID    map[string]string        // child PID id → user id
	pending  map[string][]userMessage // user id → messages held while its old actor stops
	idleIDs  []string                 // children found idle, to passivate a few per tick
}

type child struct {
	pid      *actor.PID
	route    *route
	lastUsed time.Time
	stopping bool
	queued   bool // in idleIDs
	drop     bool // its partition was released or lost: passivate it, idle or not
}

// passivateBatch is how many idle actors one shard stops per tick at most.
// Stopping an actor costs several messages through the shared dispatcher;
// tens of thousands of users going idle together, all stopped at once,
// stalled other users' requests (docs/performance.md, "Figures behind code
// choices"). A few per shard per tick (5 120/s over 64 shards at the 50 ms
// tick) keeps up with any realistic rate of users going idle without one.
const passivateBatch = 4

func newShard(userProps *actor.Props, idle time.Duration, live *atomic.Int64, rs *routes) actor.Producer {
	return func() actor.Actor {
		return &shard{
			userProps: userProps,
			idle:      idle,
			live:      live,
			routes:    rs,
			children:  make(map[string]*child),
			byPID:     make(map[string]string),
			pending:   make(map[string][]userMessage),
		}
	}
}

func (s *shard) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case userMessage:
		id := m.userID()
		c := s.children[id]
		switch {
		case c == nil:
			c = s.spawn(ctx, id)
			ctx.Send(c.pid, m)
			s.open(id, c)
			return
		case c.stopping:
			s.pending[id] = append(s.pending[id], m)
			return
		}
		c.lastUsed = time.Now()
		ctx.Send(c.pid, m)

	case *sweep:
		if m.scan {
			for id, c := range s.children {
				if c.route.touched.Load() {
					c.route.touched.Store(false)
					c.lastUsed = m.now
				}
				if !c.stopping && !c.queued && m.now.Sub(c.lastUsed) >= s.idle {
					c.queued = true
					s.idleIDs = append(s.idleIDs, id)
				}
			}
		}
		s.passivateSome(ctx, m.now)

	case *dropPartition:
		// Queued with the idle ones, so that a partition's thousands of
		// actors stop at the pace idle ones do (passivateBatch).
		for id, c := range s.children {
			if c.stopping || c.drop || domain.PartitionOf(id) != m.p {
				continue
			}
			c.drop = true
			if !c.queued {
				c.queued = true
				s.idleIDs = append(s.idleIDs, id)
			}
		}

	case *actor.Terminated:
		id, ok := s.byPID[m.Who.Id]
		if !ok {
			return
		}
		delete(s.byPID, m.Who.Id)
		if c := s.children[id]; c != nil {
			s.routes.remove(id, c.route)
		}
		delete(s.children, id)
		s.live.Add(-1)
		held := s.pending[id]
		delete(s.pending, id)
		if len(held) == 0 {
			return
		}
		c := s.spawn(ctx, id)
		for _, m := range held {
			ctx.Send(c.pid, m)
		}
		s.open(id, c)
	}
}

// passivateSome stops up to passivateBatch of the children found idle that
// are still idle now, or whose partition was dropped (idle or not).
func (s *shard) passivateSome(ctx actor.Context, now time.Time) {
	n := 0
	// Each queued id is looked at once per call: a dropped child being
	// sent to right now goes back to the end of the queue.
	for tries := len(s.idleIDs); tries > 0 && len(s.idleIDs) > 0 && n < passivateBatch; tries-- {
		id := s.idleIDs[0]
		s.idleIDs[0] = ""
		s.idleIDs = s.idleIDs[1:]
		c := s.children[id]
		if c == nil || c.stopping || !c.queued {
			continue
		}
		c.queued = false
		if !c.drop && (c.route.touched.Load() || now.Sub(c.lastUsed) < s.idle) {
			continue // used again since the scan
		}
		if !c.route.seal() {
			if c.drop { // try again at a later tick
				c.queued = true
				s.idleIDs = append(s.idleIDs, id)
			}
			continue // a request is being sent to it right now
		}
		if !c.drop && c.route.touched.Load() {
			c.route.unseal() // used between the check and the seal
			continue
		}
		// Sealed: from now on requests come through this shard, which
		// holds them in s.pending until the child's Terminated. passivate
		// is a user message: everything sent before the seal is processed
		// first, and the child stops itself once it owes no answer (no
		// admission in flight).
		s.routes.remove(id, c.route)
		c.stopping = true
		ctx.Send(c.pid, &passivate{})
		n++
	}
	if len(s.idleIDs) == 0 {
		s.idleIDs = nil // let a drained queue's array go
	}
}

func (s *shard) spawn(ctx actor.Context, userID string) *child {
	// Children get generated names: a respawned actor must not collide with
	// the name of one that is still finishing its stop.
	pid := ctx.Spawn(s.userProps)
	c := &child{pid: pid, route: &route{pid: pid}, lastUsed: time.Now()}
	s.children[userID] = c
	s.byPID[pid.Id] = userID
	s.live.Add(1)
	return c
}

// open publishes the child's route, once the messages the shard had for it
// are in its mailbox.
func (s *shard) open(userID string, c *child) { s.routes.add(userID, c.route) }
