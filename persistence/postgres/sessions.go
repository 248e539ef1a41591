package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

func scanSession(row pgx.Row) (domain.Session, error) {
	var s domain.Session
	err := row.Scan(&s.ID, &s.UserID, &s.Title, &s.Language, &s.STTProvider, &s.Status,
		&s.DurationSeconds, &s.PeriodStart, &s.Epoch, &s.CreatedAt, &s.UpdatedAt)
	if err != nil {
		return domain.Session{}, err
	}
	s.PeriodStart, s.CreatedAt, s.UpdatedAt = s.PeriodStart.UTC(), s.CreatedAt.UTC(), s.UpdatedAt.UTC()
	return s, nil
}

// GetSession returns a session by id, or domain.ErrNotFound.
func (s *Store) GetSession(ctx context.Context, id string) (domain.Session, error) {
	sess, err := scanSession(s.pool.QueryRow(ctx, `SELECT `+persistence.SessionColumns+` FROM sessions WHERE id = $1`, id))
	return sess, translate("get session", notFound(err))
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
		rows pgx.Rows
		err  error
	)
	if after == nil {
		rows, err = s.pool.Query(ctx, `
			SELECT `+persistence.SessionColumns+` FROM sessions
			WHERE user_id = $1
			ORDER BY created_at DESC, id DESC
			LIMIT $2`, userID, limit)
	} else {
		rows, err = s.pool.Query(ctx, `
			SELECT `+persistence.SessionColumns+` FROM sessions
			WHERE user_id = $1 AND (created_at, id) < ($2, $3)
			ORDER BY created_at DESC, id DESC
			LIMIT $4`, userID, ts(after.CreatedAt), after.ID, limit)
	}
	if err != nil {
		return nil, translate("list sessions", err)
	}
	defer rows.Close()
	for rows.Next() {
		sess, err := scanSession(rows)
		if err != nil {
			return nil, translate("list sessions", err)
		}
		out = append(out, sess)
	}
	if err := rows.Err(); err != nil {
		return nil, translate("list sessions", err)
	}
	return out, nil
}

// writeTx is persistence.SessionTx and persistence.UserTx on a pgx
// transaction: the statements of a status change and of a user change,
// whose rules persistence.SessionStatus and persistence.UserChanges hold
// (events.go has the user and event statements).
type writeTx struct{ tx pgx.Tx }

// inSessionTx is the SessionStatus's InTx: fn runs in one transaction.
func (s *Store) inSessionTx(ctx context.Context, op string, fn func(persistence.SessionTx) error) error {
	return s.inTx(ctx, op, func(tx pgx.Tx) error { return fn(writeTx{tx}) })
}

// LockSession reads a session and locks it until the transaction ends, so
// that its state cannot change between the check and the write.
func (t writeTx) LockSession(ctx context.Context, id string) (domain.Session, error) {
	sess, err := scanSession(t.tx.QueryRow(ctx, `SELECT `+persistence.SessionColumns+` FROM sessions WHERE id = $1 FOR UPDATE`, id))
	return sess, notFound(err)
}

// SetStatus moves a locked session to status and returns the new row.
func (t writeTx) SetStatus(ctx context.Context, id string, status domain.Status, duration *int64, now time.Time) (domain.Session, error) {
	return scanSession(t.tx.QueryRow(ctx, `
		UPDATE sessions
		SET status = $2, duration_seconds = $3, updated_at = $4
		WHERE id = $1
		RETURNING `+persistence.SessionColumns,
		id, status, duration, ts(now)))
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
	err := t.tx.QueryRow(ctx, `
		INSERT INTO usage AS u (user_id, period_start, period_end, sessions, seconds, version)
		VALUES ($1, $2, $3, 0, $4, 1)
		ON CONFLICT (user_id, period_start) DO UPDATE
		    SET seconds = u.seconds + excluded.seconds,
		        version = u.version + 1
		RETURNING sessions, seconds, version`,
		userID, periodStart, domain.AddMonths(periodStart, 1), seconds,
	).Scan(&c.Sessions, &c.Seconds, &c.Version)
	return c, err
}
