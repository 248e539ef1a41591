package actors

import (
	"context"
	"fmt"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// The reads below serve cluster routing (transport/cluster.go): a node that
// does not own a user's partition finds the user of a session, and the
// outcome of a create it forwarded whose answer it lost, in the store every
// node shares, never by asking another node. Each is one read by key.

// SessionUser returns the id of the user that session sessionID belongs
// to, or domain.ErrNotFound.
func (s *Service) SessionUser(ctx context.Context, sessionID string) (string, error) {
	ctx, cancel := bounded(ctx, s.deadline(ctx))
	defer cancel()
	sess, err := s.store.GetSession(ctx, sessionID)
	if err != nil {
		return "", err
	}
	return sess.UserID, nil
}

// CreateOutcome returns the stored outcome of a create of the user's that
// was decided elsewhere: with an Idempotency-Key (key), the answer a
// replay of it gets (the session, its rejection, or 409 for another body);
// without one, the session in.ID, which the caller chose before the create
// was sent. domain.ErrNotFound means the store holds no decision (yet): a
// create without key that was rejected leaves none.
func (s *Service) CreateOutcome(ctx context.Context, userID string, in domain.NewSession, key string) (domain.Session, error) {
	ctx, cancel := bounded(ctx, s.deadline(ctx))
	defer cancel()
	if key != "" {
		rec, err := s.store.LookupIdempotencyKey(ctx, userID, key)
		if err != nil {
			return domain.Session{}, err
		}
		if rec.RequestHash != in.Fingerprint() {
			return domain.Session{}, keyConflict(key)
		}
		return recordedAnswer(ctx, s.store, rec)
	}
	if in.ID == "" {
		return domain.Session{}, domain.ErrNotFound
	}
	sess, err := s.store.GetSession(ctx, in.ID)
	if err != nil {
		return domain.Session{}, err
	}
	if sess.UserID != userID {
		return domain.Session{}, domain.ErrNotFound
	}
	return sess, nil
}

func keyConflict(key string) error {
	return domain.Errorf(domain.CodeIdempotencyConflict,
		"Idempotency-Key %q was already used with a different request body", key)
}

// recordedAnswer is the answer an Idempotency-Key's stored outcome gives
// again: the admitted session, or the rejection with the figures it was
// decided on.
func recordedAnswer(ctx context.Context, store persistence.Store, rec persistence.IdempotencyRecord) (domain.Session, error) {
	if rec.Admitted {
		return store.GetSession(ctx, rec.SessionID)
	}
	minutes := domain.Unlimited
	if !rec.MaxSeconds.IsUnlimited() {
		minutes = rec.MaxSeconds / 60
	}
	plan := domain.Plan{Name: rec.PlanName, MaxSessions: rec.MaxSessions, MaxTotalMinutes: minutes}
	if err := domain.Admit(plan, rec.Usage, domain.Period{Start: rec.PeriodStart, End: rec.PeriodEnd}); err != nil {
		return domain.Session{}, err
	}
	return domain.Session{}, fmt.Errorf("idempotency record %q of user %s is a rejection its own figures allow", rec.Key, rec.UserID)
}
