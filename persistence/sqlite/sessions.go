package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

func scanSession(row scanner) (domain.Session, error) {
	var (
		s                             domain.Session
		status                        string
		periodStart, created, updated int64
	)
	err := row.Scan(&s.ID, &s.UserID, &s.Title, &s.Language, &s.STTProvider, &status,
		&s.DurationSeconds, &periodStart, &s.Epoch, &created, &updated)
	if err != nil {
		return domain.Session{}, err
	}
	s.Status = domain.Status(status)
	s.PeriodStart, s.CreatedAt, s.UpdatedAt = fromMicros(periodStart), fromMicros(created), fromMicros(updated)
	return s, nil
}

// GetSession returns a session by id, or domain.ErrNotFound.
func (s *Store) GetSession(ctx context.Context, id string) (domain.Session, error) {
	sess, err := scanSession(s.read.QueryRowContext(ctx, `SELECT `+persistence.SessionColumns+` FROM sessions WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return domain.Session{}, domain.ErrNotFound
	}
	return sess, s.translate("get session", err)
}

// ListSessions returns up to limit of the user's sessions ordered by
// (created_at, id) descending, strictly after the cursor when one is given.
// The id breaks ties between sessions created in the same microsecond, so
// that paging neither repeats nor skips one.
func (s *Store) ListSessions(ctx context.Context, userID string, limit int, after *domain.Cursor) ([]domain.Session, error) {
	out := []domain.Session{}
	if limit <= 0 {
		return out, nil
	}
	var (
		rows *sql.Rows
		err  error
	)
	if after == nil {
		rows, err = s.read.QueryContext(ctx, `
			SELECT `+persistence.SessionColumns+` FROM sessions
			WHERE user_id = ?
			ORDER BY created_at DESC, id DESC
			LIMIT ?`, userID, limit)
	} else {
		rows, err = s.read.QueryContext(ctx, `
			SELECT `+persistence.SessionColumns+` FROM sessions
			WHERE user_id = ? AND (created_at, id) < (?, ?)
			ORDER BY created_at DESC, id DESC
			LIMIT ?`, userID, micros(after.CreatedAt), after.ID, limit)
	}
	if err != nil {
		return nil, s.translate("list sessions", err)
	}
	defer rows.Close()
	for rows.Next() {
		sess, err := scanSession(rows)
		if err != nil {
			return nil, s.translate("list sessions", err)
		}
		out = append(out, sess)
	}
	if err := rows.Err(); err != nil {
		return nil, s.translate("list sessions", err)
	}
	return out, nil
}

// writeTx is persistence.SessionTx and persistence.UserTx on a write
// transaction: the statements of a status change and of a user change,
// whose rules persistence.SessionStatus and persistence.UserChanges hold
// (events.go has the user and event statements).
type writeTx struct{ tx *sql.Tx }

// inSessionTx is the SessionStatus's InTx: fn runs in one write
// transaction.
func (s *Store) inSessionTx(ctx context.Context, op string, fn func(persistence.SessionTx) error) error {
	return s.inTx(ctx, op, func(tx *sql.Tx) error { return fn(writeTx{tx}) })
}

// LockSession reads a session inside a write transaction, whose lock keeps
// it from changing until the transaction ends.
func (t writeTx) LockSession(ctx context.Context, id string) (domain.Session, error) {
	sess, err := scanSession(t.tx.QueryRowContext(ctx, `SELECT `+persistence.SessionColumns+` FROM sessions WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return domain.Session{}, domain.ErrNotFound
	}
	return sess, err
}

// SetStatus moves a session to status and returns the new row.
func (t writeTx) SetStatus(ctx context.Context, id string, status domain.Status, duration *int64, now time.Time) (domain.Session, error) {
	var d any // NULL unless completed
	if duration != nil {
		d = *duration
	}
	return scanSession(t.tx.QueryRowContext(ctx, `
		UPDATE sessions
		SET status = ?, duration_seconds = ?, updated_at = ?
		WHERE id = ?
		RETURNING `+persistence.SessionColumns,
		string(status), d, micros(now), id))
}

// LoadCounters reads the period's usage row inside the transaction.
func (t writeTx) LoadCounters(ctx context.Context, userID string, periodStart time.Time) (persistence.Counters, error) {
	return loadCounters(ctx, t.tx, userID, periodStart)
}

// AddSeconds counts a completed session's seconds. The row exists: the
// admission created it with the session. Were it deleted by hand, the
// seconds still count; its end is then a month after its start, the usual
// period length.
func (t writeTx) AddSeconds(ctx context.Context, userID string, periodStart time.Time, seconds int64) (persistence.Counters, error) {
	var c persistence.Counters
	err := t.tx.QueryRowContext(ctx, `
		INSERT INTO usage (user_id, period_start, period_end, sessions, seconds, version)
		VALUES (?, ?, ?, 0, ?, 1)
		ON CONFLICT (user_id, period_start) DO UPDATE
		    SET seconds = seconds + excluded.seconds,
		        version = version + 1
		RETURNING sessions, seconds, version`,
		userID, micros(periodStart), micros(domain.AddMonths(periodStart, 1)), seconds,
	).Scan(&c.Sessions, &c.Seconds, &c.Version)
	return c, err
}
