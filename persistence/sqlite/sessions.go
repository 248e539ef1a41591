package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

const sessionColumns = `id, user_id, title, language, stt_provider, status,
	duration_seconds, period_start, created_at, updated_at`

func scanSession(row scanner) (domain.Session, error) {
	var (
		s                             domain.Session
		status                        string
		periodStart, created, updated int64
	)
	err := row.Scan(&s.ID, &s.UserID, &s.Title, &s.Language, &s.STTProvider, &status,
		&s.DurationSeconds, &periodStart, &created, &updated)
	if err != nil {
		return domain.Session{}, err
	}
	s.Status = domain.Status(status)
	s.PeriodStart, s.CreatedAt, s.UpdatedAt = fromMicros(periodStart), fromMicros(created), fromMicros(updated)
	return s, nil
}

// GetSession returns a session by id, or domain.ErrNotFound.
func (s *Store) GetSession(ctx context.Context, id string) (domain.Session, error) {
	sess, err := scanSession(s.read.QueryRowContext(ctx, `SELECT `+sessionColumns+` FROM sessions WHERE id = ?`, id))
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
			SELECT `+sessionColumns+` FROM sessions
			WHERE user_id = ?
			ORDER BY created_at DESC, id DESC
			LIMIT ?`, userID, limit)
	} else {
		rows, err = s.read.QueryContext(ctx, `
			SELECT `+sessionColumns+` FROM sessions
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

// readSession reads a session inside a write transaction, whose lock keeps
// it from changing until the transaction ends.
func readSession(ctx context.Context, tx *sql.Tx, id string) (domain.Session, error) {
	sess, err := scanSession(tx.QueryRowContext(ctx, `SELECT `+sessionColumns+` FROM sessions WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return domain.Session{}, domain.ErrNotFound
	}
	return sess, err
}

// setStatus moves a session to status and returns the new row.
func setStatus(ctx context.Context, tx *sql.Tx, id string, status domain.Status, duration *int64, now time.Time) (domain.Session, error) {
	var d any // NULL unless completed
	if duration != nil {
		d = *duration
	}
	return scanSession(tx.QueryRowContext(ctx, `
		UPDATE sessions
		SET status = ?, duration_seconds = ?, updated_at = ?
		WHERE id = ?
		RETURNING `+sessionColumns,
		string(status), d, micros(now), id))
}

// MarkUploading moves a created session to uploading. It is a no-op on an
// uploading session and a CodeConflict error on a finished one.
func (s *Store) MarkUploading(ctx context.Context, id string, now time.Time) (domain.Session, error) {
	var sess domain.Session
	err := s.inTx(ctx, "mark uploading", func(tx *sql.Tx) error {
		var err error
		if sess, err = readSession(ctx, tx, id); err != nil {
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
	err := s.inTx(ctx, "complete session", func(tx *sql.Tx) error {
		var err error
		if sess, err = readSession(ctx, tx, id); err != nil {
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
		return tx.QueryRowContext(ctx, `
			INSERT INTO usage (user_id, period_start, period_end, sessions, seconds, version)
			VALUES (?, ?, ?, 0, ?, 1)
			ON CONFLICT (user_id, period_start) DO UPDATE
			    SET seconds = seconds + excluded.seconds,
			        version = version + 1
			RETURNING sessions, seconds, version`,
			sess.UserID, micros(sess.PeriodStart), micros(domain.AddMonths(sess.PeriodStart, 1)), seconds,
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
	err := s.inTx(ctx, "fail session", func(tx *sql.Tx) error {
		var err error
		if sess, err = readSession(ctx, tx, id); err != nil {
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
