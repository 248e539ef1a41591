package actors

import (
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// shard owns the user actors whose ids hash to it. It is the only sender of
// requests to its children (the group-commit writer only answers admissions
// a child is waiting for), which is what makes passivation lossless: after
// it asks a child to passivate it sends that child nothing more, the child
// stops only once it owes no answer, and the shard buffers the user's
// messages until the child's Terminated arrives, then respawns and replays.
type shard struct {
	userProps *actor.Props
	idle      time.Duration
	live      *atomic.Int64 // user actors alive across all shards (a metric)

	children map[string]*child        // user id → its actor
	byPID    map[string]string        // child PID id → user id
	pending  map[string][]userMessage // user id → messages held while its old actor stops
	idleIDs  []string                 // children found idle, to passivate a few per tick
}

type child struct {
	pid      *actor.PID
	lastUsed time.Time
	stopping bool
	queued   bool // in idleIDs
}

// passivateBatch is how many idle actors one shard stops per tick at most.
// Stopping an actor costs several messages through the shared dispatcher;
// 50 000 users going idle together, all stopped at once, held other users'
// requests up to 300 ms (p99 of creates 4 ms → 317 ms that second). A few
// per shard per tick (5 120/s over 64 shards at the 50 ms tick) keeps up
// with any realistic rate of users going idle without a stall.
const passivateBatch = 4

func newShard(userProps *actor.Props, idle time.Duration, live *atomic.Int64) actor.Producer {
	return func() actor.Actor {
		return &shard{
			userProps: userProps,
			idle:      idle,
			live:      live,
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
		case c.stopping:
			s.pending[id] = append(s.pending[id], m)
			return
		}
		c.lastUsed = time.Now()
		ctx.Send(c.pid, m)

	case *sweep:
		if m.scan {
			for id, c := range s.children {
				if !c.stopping && !c.queued && m.now.Sub(c.lastUsed) >= s.idle {
					c.queued = true
					s.idleIDs = append(s.idleIDs, id)
				}
			}
		}
		s.passivateSome(ctx, m.now)

	case *actor.Terminated:
		id, ok := s.byPID[m.Who.Id]
		if !ok {
			return
		}
		delete(s.byPID, m.Who.Id)
		delete(s.children, id)
		s.live.Add(-1)
		held := s.pending[id]
		delete(s.pending, id)
		if len(held) == 0 {
			return
		}
		c := s.spawn(ctx, id)
		c.lastUsed = time.Now()
		for _, m := range held {
			ctx.Send(c.pid, m)
		}
	}
}

// passivateSome stops up to passivateBatch of the children found idle that
// are still idle now.
func (s *shard) passivateSome(ctx actor.Context, now time.Time) {
	n := 0
	for len(s.idleIDs) > 0 && n < passivateBatch {
		id := s.idleIDs[0]
		s.idleIDs[0] = ""
		s.idleIDs = s.idleIDs[1:]
		c := s.children[id]
		if c == nil || c.stopping || !c.queued {
			continue
		}
		c.queued = false
		if now.Sub(c.lastUsed) < s.idle {
			continue // used again since the scan
		}
		// passivate is a user message: everything already forwarded is
		// processed first, and the child stops itself once it owes no
		// answer (no admission in flight); later messages are held in
		// s.pending until its Terminated.
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
	c := &child{pid: pid}
	s.children[userID] = c
	s.byPID[pid.Id] = userID
	s.live.Add(1)
	return c
}
