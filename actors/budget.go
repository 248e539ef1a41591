package actors

import (
	"context"
	"time"
)

// How one request's time is spent
//
// A request's deadline is declared in one place, Service.deadline: the
// caller's context deadline or the service's request timeout from now,
// whichever comes first. Service.ask enforces it: the caller stops waiting
// then, whatever the actor, the writer or the store are doing. Everything the
// request causes downstream carries that one deadline (call.deadline) and
// derives its own time from it here, so that each stage gives up early
// enough for its answer to reach a caller who is still waiting:
//
//   - workDeadline: store calls the actor makes for the request, and the
//     group commit's answer, end a margin before the deadline, so that a
//     store that hangs yields a 503 the caller receives rather than a 504;
//   - resolveDeadline: looking up the outcome of a commit whose reply was
//     lost may use the margin too, all but what the reply needs to travel;
//   - maxBatchWait: one transaction or batched load never runs longer,
//     whatever its callers allow.

const (
	maxWorkMargin = 100 * time.Millisecond
	resolveMargin = 5 * time.Millisecond
	maxBatchWait  = 10 * time.Second
)

// deadline declares the request's deadline (the only place that does).
func (s *Service) deadline(ctx context.Context) time.Time {
	d := time.Now().Add(s.timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		return cd
	}
	return d
}

// bounded is ctx ending at deadline d, for the store reads the Service
// makes itself, without a user's actor (the context enforces it there).
func bounded(ctx context.Context, d time.Time) (context.Context, context.CancelFunc) {
	return context.WithDeadline(ctx, d)
}

// workDeadline is when store work for a request due at d must end: a fifth
// of the time left, at most maxWorkMargin, is kept for the answer.
func workDeadline(d time.Time) time.Time {
	return d.Add(-min(maxWorkMargin, time.Until(d)/5))
}

// resolveDeadline is when the lookup of an unknown commit outcome for a
// request due at d must end.
func resolveDeadline(d time.Time) time.Time { return d.Add(-resolveMargin) }
