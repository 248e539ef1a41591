// Package actors is Tally's accounting core: one protoactor-go actor per
// user serializes that user's admissions, completions and plan changes and
// holds the current period's counters in memory.
//
// The actor's memory is a fast path, never the last word. Every admission is
// committed in the Store behind a fence (the user's version and the limits),
// so two processes, or two activations of one user's actor during a
// passivation, cannot over-admit together; a rejection is re-checked against
// the Store before it is answered.
//
// Routing and passivation follow the pattern measured with zero lost
// messages (docs/decisions/0003-shard-owned-passivation.md): a fixed set of
// shard actors (hash of the user id) own the user actors as children,
// forward to them, ask idle ones to passivate (a message of their own,
// after which the child stops itself once it owes no answer — never a
// Poison, which drops what is queued behind it) from a periodic sweep,
// buffer a user's messages while its old actor is stopping, and respawn
// and replay when its Terminated arrives.
package actors
