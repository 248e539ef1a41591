package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// inUserTx is the UserChanges' InTx: fn runs in one transaction.
func (s *Store) inUserTx(ctx context.Context, op string, fn func(persistence.UserTx) error) error {
	return s.inTx(ctx, op, func(tx pgx.Tx) error { return fn(writeTx{tx}) })
}

// LockUser reads the user and locks its row until the transaction ends:
// admissions of the user (which share-lock the row to check its version)
// wait for the change, and so does another change.
func (t writeTx) LockUser(ctx context.Context, id string) (domain.User, error) {
	u, err := scanUser(t.tx.QueryRow(ctx, `SELECT `+persistence.UserColumns+` FROM users WHERE id = $1 FOR UPDATE`, id))
	return u, notFound(err)
}

// InsertUser inserts u unless the id exists. A concurrent insert of the
// same id makes this one wait for it, then do nothing.
func (t writeTx) InsertUser(ctx context.Context, u domain.User) (bool, error) {
	tag, err := t.tx.Exec(ctx, `
		INSERT INTO users (`+persistence.UserColumns+`) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (id) DO NOTHING`,
		u.ID, u.Plan, ts(u.BillingAnchor), u.Version, ts(u.CreatedAt), ts(u.UpdatedAt))
	return tag.RowsAffected() == 1, err
}

// UpdateUser changes a locked user and bumps its version.
func (t writeTx) UpdateUser(ctx context.Context, id string, plan *string, anchor *time.Time, now time.Time) (domain.User, error) {
	var a *time.Time
	if anchor != nil {
		v := ts(*anchor)
		a = &v
	}
	return scanUser(t.tx.QueryRow(ctx, `
		UPDATE users SET
		    plan           = COALESCE($2::text, plan),
		    billing_anchor = COALESCE($3::timestamptz, billing_anchor),
		    version        = version + 1,
		    updated_at     = $4
		WHERE id = $1
		RETURNING `+persistence.UserColumns,
		id, plan, a, ts(now)))
}

// InsertEvent records an admin change. The documents are stored as json,
// i.e. as written, and returned byte for byte; pgx sends a
// json.RawMessage as is, and a nil one (a change that created the user has
// no before) as NULL.
func (t writeTx) InsertEvent(ctx context.Context, e domain.UserEvent) error {
	_, err := t.tx.Exec(ctx, `
		INSERT INTO user_events (user_id, session_id, kind, actor, request_id, occurred_at, user_version, before, after)
		VALUES ($1, NULLIF($2, ''), $3, $4, $5, $6, NULLIF($7, 0), $8::json, $9::json)`,
		e.UserID, e.SessionID, string(e.Kind), e.Actor, e.RequestID, ts(e.OccurredAt), e.UserVersion,
		e.Before, e.After)
	return err
}

// ListUserEvents returns up to limit of the user's events ordered by
// (occurred_at, id) descending, strictly after the cursor when one is
// given, or domain.ErrNotFound when the user does not exist.
func (s *Store) ListUserEvents(ctx context.Context, userID string, limit int, after *domain.EventCursor) ([]domain.UserEvent, error) {
	out := []domain.UserEvent{}
	var (
		rows pgx.Rows
		err  error
	)
	switch {
	case limit <= 0:
	case after == nil:
		rows, err = s.pool.Query(ctx, `
			SELECT `+persistence.EventColumns+` FROM user_events
			WHERE user_id = $1
			ORDER BY occurred_at DESC, id DESC
			LIMIT $2`, userID, limit)
	default:
		rows, err = s.pool.Query(ctx, `
			SELECT `+persistence.EventColumns+` FROM user_events
			WHERE user_id = $1 AND (occurred_at, id) < ($2, $3)
			ORDER BY occurred_at DESC, id DESC
			LIMIT $4`, userID, ts(after.OccurredAt), after.ID, limit)
	}
	if rows != nil {
		var (
			e             domain.UserEvent
			kind          string
			before, after []byte
		)
		_, err = pgx.ForEachRow(rows, []any{&e.ID, &e.UserID, &e.SessionID, &kind, &e.Actor, &e.RequestID,
			&e.OccurredAt, &e.UserVersion, &before, &after}, func() error {
			e.Kind, e.OccurredAt = domain.EventKind(kind), e.OccurredAt.UTC()
			e.Before, e.After = cloneDoc(before), cloneDoc(after)
			out = append(out, e)
			return nil
		})
	}
	if err != nil {
		return nil, translate("list user events", err)
	}
	if len(out) > 0 {
		return out, nil
	}
	// No events: the user may have none yet, or not exist (404, as the
	// admin reads of a user answer).
	var exists bool
	err = s.pool.QueryRow(ctx, `SELECT true FROM users WHERE id = $1`, userID).Scan(&exists)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, domain.ErrNotFound
	}
	return out, translate("list user events", err)
}

// cloneDoc copies a scanned document (the driver reuses its buffer).
func cloneDoc(b []byte) json.RawMessage {
	if b == nil {
		return nil
	}
	return append(json.RawMessage(nil), b...)
}
