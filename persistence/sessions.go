package persistence

import (
	"context"
	"time"

	"github.com/tally-dev/tally/domain"
)

// SessionTx is one write transaction of a store, as the session status
// changes use it. Each store implements it on its driver; what a status
// change does with it is written once, in SessionStatus, so that the two
// stores cannot drift apart on the rules of docs/contract.md (sessions).
type SessionTx interface {
	// LockSession reads the session and keeps it from changing until the
	// transaction ends; domain.ErrNotFound when there is none.
	LockSession(ctx context.Context, id string) (domain.Session, error)
	// SetStatus writes the session's status, duration (nil: NULL) and
	// update time, and returns the row as written.
	SetStatus(ctx context.Context, id string, status domain.Status, duration *int64, now time.Time) (domain.Session, error)
	// LoadCounters reads one period's usage; zero counters when it has no
	// row.
	LoadCounters(ctx context.Context, userID string, periodStart time.Time) (Counters, error)
	// AddSeconds adds seconds to one period's usage, creating its row when
	// it is missing, and returns the counters after.
	AddSeconds(ctx context.Context, userID string, periodStart time.Time, seconds int64) (Counters, error)
}

// SessionStatus implements Store's MarkUploading, CompleteSession and
// FailSession over a store's transactions. Stores embed it, so that they
// share one implementation of these rules rather than one copy each.
type SessionStatus struct {
	// InTx runs fn in one write transaction, committing when fn returns
	// nil; op names the operation in errors. Errors are translated to the
	// domain's vocabulary; a *domain.Error returned by fn passes through.
	InTx func(ctx context.Context, op string, fn func(SessionTx) error) error
}

// MarkUploading moves a created session to uploading. It is a no-op on an
// uploading session and a CodeConflict error on a finished one.
func (s SessionStatus) MarkUploading(ctx context.Context, id string, now time.Time) (domain.Session, error) {
	sess, _, err := s.change(ctx, "mark uploading", id, domain.StatusUploading, 0, now)
	return sess, err
}

// CompleteSession records the duration and adds it to the usage of the
// period the session was admitted in, in one transaction. Completing again
// with the same duration returns the session and the current counters
// unchanged, so that a retried completion is harmless.
func (s SessionStatus) CompleteSession(ctx context.Context, id string, seconds int64, now time.Time) (domain.Session, Counters, error) {
	return s.change(ctx, "complete session", id, domain.StatusCompleted, seconds, now)
}

// FailSession marks a created or uploading session failed; its admission
// stays counted and no seconds are recorded. Failing a failed session is a
// no-op; a completed one is a CodeConflict error.
func (s SessionStatus) FailSession(ctx context.Context, id string, now time.Time) (domain.Session, error) {
	sess, _, err := s.change(ctx, "fail session", id, domain.StatusFailed, 0, now)
	return sess, err
}

// change moves session id to status `to` in one transaction: the session is
// locked, domain.Session.Transition decides (a no-op, a conflict, or the
// change), and only a change is written. Completion also counts seconds;
// its counters are those of the session's period, after.
func (s SessionStatus) change(ctx context.Context, op, id string, to domain.Status, seconds int64, now time.Time) (domain.Session, Counters, error) {
	var (
		sess domain.Session
		c    Counters
	)
	err := s.InTx(ctx, op, func(tx SessionTx) error {
		var err error
		if sess, err = tx.LockSession(ctx, id); err != nil {
			return err
		}
		noop, err := sess.Transition(to, seconds)
		switch {
		case err != nil:
			return err
		case noop && to == domain.StatusCompleted:
			c, err = tx.LoadCounters(ctx, sess.UserID, sess.PeriodStart)
			return err
		case noop:
			return nil
		}
		var duration *int64 // NULL unless completed
		if to == domain.StatusCompleted {
			duration = &seconds
		}
		if sess, err = tx.SetStatus(ctx, id, to, duration, now); err != nil || to != domain.StatusCompleted {
			return err
		}
		c, err = tx.AddSeconds(ctx, sess.UserID, sess.PeriodStart, seconds)
		return err
	})
	if err != nil {
		return domain.Session{}, Counters{}, err
	}
	return sess, c, nil
}
