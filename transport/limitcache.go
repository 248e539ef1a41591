package transport

import (
	"encoding/json"
	"sync/atomic"
	"unsafe"

	"github.com/tally-dev/tally/domain"
)

// limitAnswers remembers the encoded 403 of recent limit rejections. A user
// known to be over its limit is answered with the very same error value
// for as long as the rejection holds (actors/rejects.go), so a client
// hammering a full account would otherwise have the same body classified
// and marshalled again for every request — a tenth of an over-limit
// answer's CPU.
//
// A direct-mapped table keyed by the error's address: lock-free, bounded,
// and never wrong, because a slot holds the error it was encoded from (so
// that address cannot be reused while the slot names it) and limit errors
// are never modified once made.
type limitAnswers struct {
	slots [8192]atomic.Pointer[limitAnswer] // 64 KiB of pointers, for as many users at their limit at once
}

type limitAnswer struct {
	err  *domain.LimitExceededError
	body []byte
}

func (l *limitAnswers) slot(le *domain.LimitExceededError) *atomic.Pointer[limitAnswer] {
	h := uintptr(unsafe.Pointer(le))
	h ^= h >> 17 // heap addresses share their low bits; mix in higher ones
	return &l.slots[(h>>4)%uintptr(len(l.slots))]
}

// body returns the encoded body of err's answer if err is a limit error
// seen recently, else nil.
func (l *limitAnswers) body(err error) []byte {
	le, ok := err.(*domain.LimitExceededError)
	if !ok {
		return nil
	}
	if a := l.slot(le).Load(); a != nil && a.err == le {
		return a.body
	}
	return nil
}

// remember encodes the body of a limit error's answer, keeps it, and
// returns it; nil when err is not a limit error (or cannot be encoded).
func (l *limitAnswers) remember(err error, body errorBody) []byte {
	le, ok := err.(*domain.LimitExceededError)
	if !ok {
		return nil
	}
	b, merr := json.Marshal(body)
	if merr != nil {
		return nil
	}
	l.slot(le).Store(&limitAnswer{err: le, body: b})
	return b
}
