package persistence

import (
	"context"
	"encoding/json"
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
	// InsertEvent records an admin change in the audit trail.
	InsertEvent(ctx context.Context, e domain.UserEvent) error
	// InsertAlert records a usage alert in the outbox unless its user
	// already has one for the same period, kind, metric, threshold and
	// limit. Its PeriodEnd is read from the usage row of its period, which
	// the transaction has written.
	InsertAlert(ctx context.Context, a domain.Alert) error
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
	sess, _, err := s.change(ctx, "mark uploading", nil, id, domain.StatusUploading, 0, now, nil)
	return sess, err
}

// CompleteSession records the duration and adds it to the usage of the
// period the session was admitted in, in one transaction with the change's
// event. Completing again with the same duration returns the session and
// the current counters unchanged, and records nothing, so that a retried
// completion is harmless.
//
// With alerts set, the thresholds of the minutes limit that the completion
// moves the period's seconds across are recorded as alerts in the same
// transaction (outbox.go).
func (s SessionStatus) CompleteSession(ctx context.Context, by domain.Origin, id string, seconds int64, now time.Time, alerts *domain.AlertPlan) (domain.Session, Counters, error) {
	return s.change(ctx, "complete session", &by, id, domain.StatusCompleted, seconds, now, alerts)
}

// FailSession marks a created or uploading session failed; its admission
// stays counted and no seconds are recorded. Failing a failed session is a
// no-op; a completed one is a CodeConflict error. A change records its
// event in the same transaction.
func (s SessionStatus) FailSession(ctx context.Context, by domain.Origin, id string, now time.Time) (domain.Session, error) {
	sess, _, err := s.change(ctx, "fail session", &by, id, domain.StatusFailed, 0, now, nil)
	return sess, err
}

// change moves session id to status `to` in one transaction: the session is
// locked, domain.Session.Transition decides (a no-op, a conflict, or the
// change), and only a change is written. Completion also counts seconds;
// its counters are those of the session's period, after. An admin change
// (by set) is recorded in the audit trail in the same transaction: the
// event commits with the change or not at all. A no-op writes nothing, so
// it records nothing either.
func (s SessionStatus) change(ctx context.Context, op string, by *domain.Origin, id string, to domain.Status, seconds int64, now time.Time, alerts *domain.AlertPlan) (domain.Session, Counters, error) {
	var (
		sess domain.Session
		c    Counters
		ev   domain.UserEvent
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
		if by == nil {
			sess, err = tx.SetStatus(ctx, id, to, nil, now)
			return err
		}
		var before Counters
		if sess, before, c, ev, err = applySessionChange(ctx, tx, *by, sess, to, seconds, now, alerts); err != nil {
			return err
		}
		if err := recordAlerts(ctx, tx, alerts, sess, before, c, now); err != nil {
			return err
		}
		return tx.InsertEvent(ctx, ev)
	})
	if err != nil {
		return domain.Session{}, Counters{}, err
	}
	return sess, c, nil
}

// recordAlerts records, with alerts on, the alert of each threshold of
// the minutes limit that a completion moved the period's seconds across
// (from before to after), in the completion's transaction.
func recordAlerts(ctx context.Context, tx SessionTx, alerts *domain.AlertPlan, sess domain.Session, before, after Counters, now time.Time) error {
	if alerts == nil {
		return nil
	}
	for _, t := range domain.Crossed(alerts.Seconds, before.Seconds, after.Seconds) {
		err := tx.InsertAlert(ctx, domain.Alert{Kind: domain.AlertThresholdCrossed, UserID: sess.UserID,
			Plan: alerts.Plan.Name, Metric: domain.MetricMinutes, Percent: t.Percent, Used: after.Seconds,
			Limit: alerts.Plan.MaxTotalMinutes, PeriodStart: sess.PeriodStart, OccurredAt: micro(now), SessionID: sess.ID})
		if err != nil {
			return err
		}
	}
	return nil
}

// applySessionChange completes or fails the locked session sess in tx and
// returns it, the counters of its period before and after, and the event
// recording the change: the session's status and duration and its
// period's seconds, before and after.
func applySessionChange(ctx context.Context, tx SessionTx, by domain.Origin, sess domain.Session, to domain.Status, seconds int64, now time.Time,
	alerts *domain.AlertPlan) (domain.Session, Counters, Counters, domain.UserEvent, error) {
	ev := domain.UserEvent{UserID: sess.UserID, SessionID: sess.ID, Kind: domain.EventFailSession,
		Actor: by.Admin, RequestID: by.RequestID, OccurredAt: micro(now)}
	before, err := tx.LoadCounters(ctx, sess.UserID, sess.PeriodStart)
	if err != nil {
		return domain.Session{}, Counters{}, Counters{}, ev, err
	}
	var duration *int64 // NULL unless completed
	if to == domain.StatusCompleted {
		ev.Kind, duration = domain.EventCompleteSession, &seconds
	}
	if ev.Before, err = sessionState(sess, before, nil); err != nil {
		return domain.Session{}, Counters{}, Counters{}, ev, err
	}
	if sess, err = tx.SetStatus(ctx, sess.ID, to, duration, now); err != nil {
		return domain.Session{}, Counters{}, Counters{}, ev, err
	}
	after := before
	if to == domain.StatusCompleted {
		if after, err = tx.AddSeconds(ctx, sess.UserID, sess.PeriodStart, seconds); err != nil {
			return domain.Session{}, Counters{}, Counters{}, ev, err
		}
	}
	ev.After, err = sessionState(sess, after, alerts)
	return sess, before, after, ev, err
}

// sessionState is a session change's before or after. With alerts on, the
// after of a completion also names the minutes limit the completion's
// alerts were counted against, so that tally verify can tell which
// thresholds it crossed (the plan may change later).
func sessionState(s domain.Session, c Counters, alerts *domain.AlertPlan) (json.RawMessage, error) {
	st := domain.SessionState{Status: s.Status, DurationSeconds: s.DurationSeconds,
		PeriodStart: s.PeriodStart.UTC(), PeriodSeconds: c.Seconds}
	if alerts != nil && s.Status == domain.StatusCompleted {
		limit := alerts.Plan.MaxTotalMinutes
		st.AlertMinutesLimit = &limit
	}
	return json.Marshal(st)
}
