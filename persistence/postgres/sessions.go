package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

const sessionColumns = `id, user_id, title, language, stt_provider, status,
	duration_seconds, period_start, created_at, updated_at`

func scanSession(row pgx.Row) (domain.Session, error) {
	var s domain.Session
	err := row.Scan(&s.ID, &s.UserID, &s.Title, &s.Language, &s.STTProvider, &s.Status,
		&s.DurationSeconds, &s.PeriodStart, &s.CreatedAt, &s.UpdatedAt)
	if err != nil {
		return domain.Session{}, err
	}
	s.PeriodStart, s.CreatedAt, s.UpdatedAt = s.PeriodStart.UTC(), s.CreatedAt.UTC(), s.UpdatedAt.UTC()
	return s, nil
}

// GetSession returns a session by id, or domain.ErrNotFound.
func (s *Store) GetSession(ctx context.Context, id string) (domain.Session, error) {
	sess, err := scanSession(s.pool.QueryRow(ctx, `SELECT `+sessionColumns+` FROM sessions WHERE id = $1`, id))
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
			SELECT `+sessionColumns+` FROM sessions
			WHERE user_id = $1
			ORDER BY created_at DESC, id DESC
			LIMIT $2`, userID, limit)
	} else {
		rows, err = s.pool.Query(ctx, `
			SELECT `+sessionColumns+` FROM sessions
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

// lockSession reads a session and locks it until the transaction ends, so
// that its state cannot change between the check and the write.
func lockSession(ctx context.Context, tx pgx.Tx, id string) (domain.Session, error) {
	sess, err := scanSession(tx.QueryRow(ctx, `SELECT `+sessionColumns+` FROM sessions WHERE id = $1 FOR UPDATE`, id))
	return sess, notFound(err)
}

// setStatus moves a locked session to status and returns the new row.
func setStatus(ctx context.Context, tx pgx.Tx, id string, status domain.Status, duration *int64, now time.Time) (domain.Session, error) {
	return scanSession(tx.QueryRow(ctx, `
		UPDATE sessions
		SET status = $2, duration_seconds = $3, updated_at = $4
		WHERE id = $1
		RETURNING `+sessionColumns,
		id, status, duration, ts(now)))
}

// MarkUploading moves a created session to uploading. It is a no-op on an
// uploading session and a CodeConflict error on a finished one.
func (s *Store) MarkUploading(ctx context.Context, id string, now time.Time) (domain.Session, error) {
	var sess domain.Session
	err := s.inTx(ctx, "mark uploading", func(tx pgx.Tx) error {
		var err error
		if sess, err = lockSession(ctx, tx, id); err != nil {
			return err
		}
		if noop, err := sess.Transition(domain.StatusUploading, 0); noop || err != nil {
			return err
		}
		sess, err = setStatus(ctx, tx, id, domain.StatusUploading, nil, now)
		return err
	})
	if err != nil {
		return domain.Session{}, err
	}
	return sess, nil
}

// CompleteSession records the duration and adds it to the usage of the
// period the session was admitted in, in one transaction. Completing again
// with the same duration returns the session and the current counters
// unchanged, so that a retried completion is harmless.
func (s *Store) CompleteSession(ctx context.Context, id string, seconds int64, now time.Time) (domain.Session, persistence.Counters, error) {
	var (
		sess domain.Session
		c    persistence.Counters
	)
	err := s.inTx(ctx, "complete session", func(tx pgx.Tx) error {
		var err error
		if sess, err = lockSession(ctx, tx, id); err != nil {
			return err
		}
		noop, err := sess.Transition(domain.StatusCompleted, seconds)
		switch {
		case err != nil:
			return err
		case noop:
			c, err = loadCounters(ctx, tx, sess.UserID, sess.PeriodStart)
			return err
		}
		if sess, err = setStatus(ctx, tx, id, domain.StatusCompleted, &seconds, now); err != nil {
			return err
		}
		// The row exists: the admission created it with the session. Were
		// it deleted by hand, the seconds still count; its end is then a
		// month after its start, the usual period length.
		return tx.QueryRow(ctx, `
			INSERT INTO usage AS u (user_id, period_start, period_end, sessions, seconds, version)
			VALUES ($1, $2, $3, 0, $4, 1)
			ON CONFLICT (user_id, period_start) DO UPDATE
			    SET seconds = u.seconds + excluded.seconds,
			        version = u.version + 1
			RETURNING sessions, seconds, version`,
			sess.UserID, sess.PeriodStart, domain.AddMonths(sess.PeriodStart, 1), seconds,
		).Scan(&c.Sessions, &c.Seconds, &c.Version)
	})
	if err != nil {
		return domain.Session{}, persistence.Counters{}, err
	}
	return sess, c, nil
}

// FailSession marks a created or uploading session failed; its admission
// stays counted and no seconds are recorded. Failing a failed session is a
// no-op; a completed one is a CodeConflict error.
func (s *Store) FailSession(ctx context.Context, id string, now time.Time) (domain.Session, error) {
	var sess domain.Session
	err := s.inTx(ctx, "fail session", func(tx pgx.Tx) error {
		var err error
		if sess, err = lockSession(ctx, tx, id); err != nil {
			return err
		}
		if noop, err := sess.Transition(domain.StatusFailed, 0); noop || err != nil {
			return err
		}
		sess, err = setStatus(ctx, tx, id, domain.StatusFailed, nil, now)
		return err
	})
	if err != nil {
		return domain.Session{}, err
	}
	return sess, nil
}
