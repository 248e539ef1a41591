package actors

import (
	"sync"

	"github.com/tally-dev/tally/persistence"
)

// settledLog is how the group-commit writer tells a user's actor about the
// admissions it answered itself (admit.go, direct) without a message per
// result: an actor message costs a mailbox run on another goroutine, and
// the actor needs these results only before its next decision. The writer
// appends; the actor takes everything at the start of each message
// (absorb). When the actor is waiting for a result — creates parked behind
// in-flight reservations, or a passivation that must wait for the last
// commit — it sets wake, and the next append sends it a wake message.
type settledLog struct {
	mu   sync.Mutex
	done []settledResult
	wake bool
}

type settledResult struct {
	id  uint64
	res persistence.AdmitResult
	err error
}

// wake tells an actor that results wait in its settled log.
type wake struct{}

// add appends one result and reports whether the actor must be woken.
func (l *settledLog) add(id uint64, res persistence.AdmitResult, err error) (wakeUp bool) {
	l.mu.Lock()
	l.done = append(l.done, settledResult{id: id, res: res, err: err})
	wakeUp, l.wake = l.wake, false
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

// await asks for a wake message on the next add; false (and no request)
// when results are already waiting, to be taken first.
func (l *settledLog) await() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.done) > 0 {
		return false
	}
	l.wake = true
	return true
}
