package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// inUserTx is the UserChanges' InTx: fn runs in one write transaction.
func (s *Store) inUserTx(ctx context.Context, op string, fn func(persistence.UserTx) error) error {
	return s.inTx(ctx, op, func(tx *sql.Tx) error { return fn(writeTx{tx}) })
}

// LockUser reads the user inside a write transaction, whose lock keeps it
// from changing until the transaction ends.
func (t writeTx) LockUser(ctx context.Context, id string) (domain.User, error) {
	u, err := scanUser(t.tx.QueryRowContext(ctx, `SELECT `+persistence.UserColumns+` FROM users WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return domain.User{}, domain.ErrNotFound
	}
	return u, err
}

// InsertUser inserts u unless the id exists.
func (t writeTx) InsertUser(ctx context.Context, u domain.User) (bool, error) {
	res, err := t.tx.ExecContext(ctx, `
		INSERT INTO users (`+persistence.UserColumns+`) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO NOTHING`,
		u.ID, u.Plan, micros(u.BillingAnchor), u.Version, micros(u.CreatedAt), micros(u.UpdatedAt))
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// UpdateUser changes a user and bumps its version.
func (t writeTx) UpdateUser(ctx context.Context, id string, plan *string, anchor *time.Time, now time.Time) (domain.User, error) {
	var p, a any // NULL keeps the current value
	if plan != nil {
		p = *plan
	}
	if anchor != nil {
		a = micros(*anchor)
	}
	return scanUser(t.tx.QueryRowContext(ctx, `
		UPDATE users SET
		    plan           = COALESCE(?, plan),
		    billing_anchor = COALESCE(?, billing_anchor),
		    version        = version + 1,
		    updated_at     = ?
		WHERE id = ?
		RETURNING `+persistence.UserColumns,
		p, a, micros(now), id))
}

// InsertEvent records an admin change.
func (t writeTx) InsertEvent(ctx context.Context, e domain.UserEvent) error {
	var session, version, before any // NULL unless set
	if e.SessionID != "" {
		session = e.SessionID
	}
	if e.UserVersion != 0 {
		version = e.UserVersion
	}
	if e.Before != nil {
		before = string(e.Before)
	}
	_, err := t.tx.ExecContext(ctx, `
		INSERT INTO user_events (user_id, session_id, kind, actor, request_id, occurred_at, user_version, before, after)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		e.UserID, session, string(e.Kind), e.Actor, e.RequestID, micros(e.OccurredAt), version, before, string(e.After))
	return err
}

// ListUserEvents returns up to limit of the user's events ordered by
// (occurred_at, id) descending, strictly after the cursor when one is
// given, or domain.ErrNotFound when the user does not exist.
func (s *Store) ListUserEvents(ctx context.Context, userID string, limit int, after *domain.EventCursor) ([]domain.UserEvent, error) {
	out := []domain.UserEvent{}
	if limit > 0 {
		var (
			rows *sql.Rows
			err  error
		)
		if after == nil {
			rows, err = s.read.QueryContext(ctx, `
				SELECT `+persistence.EventColumns+` FROM user_events
				WHERE user_id = ?
				ORDER BY occurred_at DESC, id DESC
				LIMIT ?`, userID, limit)
		} else {
			rows, err = s.read.QueryContext(ctx, `
				SELECT `+persistence.EventColumns+` FROM user_events
				WHERE user_id = ? AND (occurred_at, id) < (?, ?)
				ORDER BY occurred_at DESC, id DESC
				LIMIT ?`, userID, micros(after.OccurredAt), after.ID, limit)
		}
		if err != nil {
			return nil, s.translate("list user events", err)
		}
		defer rows.Close()
		for rows.Next() {
			var (
				e             domain.UserEvent
				kind          string
				at            int64
				before, after []byte
			)
			if err := rows.Scan(&e.ID, &e.UserID, &e.SessionID, &kind, &e.Actor, &e.RequestID, &at, &e.UserVersion, &before, &after); err != nil {
				return nil, s.translate("list user events", err)
			}
			e.Kind, e.OccurredAt = domain.EventKind(kind), fromMicros(at)
			e.Before, e.After = json.RawMessage(before), json.RawMessage(after)
			out = append(out, e)
		}
		if err := rows.Err(); err != nil {
			return nil, s.translate("list user events", err)
		}
		if len(out) > 0 {
			return out, nil
		}
	}
	// No events: the user may have none yet, or not exist (404, as the
	// admin reads of a user answer).
	if _, err := s.getUser(ctx, s.read, userID); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, domain.ErrNotFound
		}
		return nil, s.translate("list user events", err)
	}
	return out, nil
}
