package transport

import (
	"encoding/json"
	"sync/atomic"

	"github.com/tally-dev/tally/domain"
)

// limitAnswers remembers the encoded 403 of recent limit rejections. A
// client hammering a full account would otherwise have the same body
// classified and marshalled again for every request, a large share of an
// over-limit answer's CPU (docs/performance.md).
//
// A direct-mapped table keyed by the rejection's content (which limit, on
// which plan, usage, period): lock-free, bounded, and right for any error
// value with that content, because the body is a function of the content
// alone (classify) and a slot is used only when its content equals the
// error's.
type limitAnswers struct {
	slots [8192]atomic.Pointer[limitAnswer] // 64 KiB of pointers, for as many distinct rejections at once
}

type limitAnswer struct {
	err  domain.LimitExceededError // a copy: the content the body encodes
	body []byte
}

// limitHash is FNV-1a over the rejection's content.
func limitHash(le *domain.LimitExceededError) uint64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037)
	mix := func(v uint64) {
		for i := 0; i < 8; i++ {
			h ^= v & 0xff
			h *= prime
			v >>= 8
		}
	}
	for _, s := range []string{string(le.Code), le.Plan} {
		for i := 0; i < len(s); i++ {
			h ^= uint64(s[i])
			h *= prime
		}
		mix(uint64(len(s)))
	}
	mix(uint64(le.Usage))
	mix(uint64(le.Limit))
	mix(uint64(le.Period.Start.UnixNano()))
	mix(uint64(le.Period.End.UnixNano()))
	return h
}

func sameLimit(a, b *domain.LimitExceededError) bool {
	return a.Code == b.Code && a.Plan == b.Plan && a.Usage == b.Usage && a.Limit == b.Limit &&
		a.Period.Start.Equal(b.Period.Start) && a.Period.End.Equal(b.Period.End)
}

func (l *limitAnswers) slot(le *domain.LimitExceededError) *atomic.Pointer[limitAnswer] {
	return &l.slots[limitHash(le)%uint64(len(l.slots))]
}

// body returns the encoded body of err's answer if a limit error with the
// same content was answered recently, else nil.
func (l *limitAnswers) body(err error) []byte {
	le, ok := err.(*domain.LimitExceededError)
	if !ok {
		return nil
	}
	if a := l.slot(le).Load(); a != nil && sameLimit(&a.err, le) {
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
	l.slot(le).Store(&limitAnswer{err: *le, body: b})
	return b
}
