package actors

import (
	"sync"

	"github.com/tally-dev/tally/persistence"
)

// settledLog is how the group-commit writer hands a user's actor the
// results of admissions it answered itself (admit.go, direct): appended
// to a log the actor takes whole at its next message, with one wake
// message when the log goes from empty to non-empty. A hot user's many
// results of one batch thus cost the actor one message, not one each, and
// the actor never holds a settled admission (its request, its answer) for
// longer than its mailbox takes to reach the wake — which matters for
// memory when a user sends one request and no more.
type settledLog struct {
	mu   sync.Mutex
	done []settledResult
}

type settledResult struct {
	id  uint64
	res persistence.AdmitResult
	err error
}

// wake tells an actor that results wait in its settled log.
type wake struct{}

// add appends one result and reports whether the actor must be woken (the
// log was empty: no wake is on its way yet).
func (l *settledLog) add(id uint64, res persistence.AdmitResult, err error) (wakeUp bool) {
	l.mu.Lock()
	wakeUp = len(l.done) == 0
	l.done = append(l.done, settledResult{id: id, res: res, err: err})
	l.mu.Unlock()
	return wakeUp
}

// take returns the results appended since the last take.
func (l *settledLog) take() []settledResult {
	l.mu.Lock()
	done := l.done
	l.done = nil
	l.mu.Unlock()
	return done
}
