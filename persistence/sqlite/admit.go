package sqlite

import (
	"context"
	"database/sql"
	"errors"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// Admit runs every request, in order, in one write transaction and commits
// before returning. The transaction holds the database's write lock from
// its first statement, so the fence below cannot interleave with another
// writer. A rejected request changes nothing that a reader can tell apart
// (at most a zero usage row, which reads like a missing one). Counters are
// zero for StaleUser and UnknownUser, whose period may not even be the
// right one.
func (s *Store) Admit(ctx context.Context, reqs []persistence.AdmitRequest) ([]persistence.AdmitResult, error) {
	results := make([]persistence.AdmitResult, len(reqs))
	if len(reqs) == 0 {
		return results, nil
	}
	err := s.inTx(ctx, "admit", func(tx *sql.Tx) error {
		for i, r := range reqs {
			var err error
			if results[i], err = admitOne(ctx, tx, r); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

func admitOne(ctx context.Context, tx *sql.Tx, r persistence.AdmitRequest) (persistence.AdmitResult, error) {
	userID, periodStart := r.Session.UserID, micros(r.Session.PeriodStart)

	var version int64
	err := tx.QueryRowContext(ctx, `SELECT version FROM users WHERE id = ?`, userID).Scan(&version)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return persistence.AdmitResult{Outcome: persistence.UnknownUser}, nil
	case err != nil:
		return persistence.AdmitResult{}, err
	case version != r.UserVersion:
		return persistence.AdmitResult{Outcome: persistence.StaleUser}, nil
	}

	if _, err := tx.ExecContext(ctx, `
		INSERT INTO usage (user_id, period_start, period_end, sessions, seconds, version)
		VALUES (?, ?, ?, 0, 0, 0)
		ON CONFLICT (user_id, period_start) DO NOTHING`,
		userID, periodStart, micros(r.PeriodEnd)); err != nil {
		return persistence.AdmitResult{}, err
	}
	var c persistence.Counters
	err = tx.QueryRowContext(ctx, `
		UPDATE usage SET sessions = sessions + 1, version = version + 1
		WHERE user_id = :user_id AND period_start = :period_start
		  AND (:max_sessions < 0 OR sessions < :max_sessions)
		  AND (:max_seconds < 0 OR seconds < :max_seconds)
		RETURNING sessions, seconds, version`,
		sql.Named("user_id", userID), sql.Named("period_start", periodStart),
		sql.Named("max_sessions", int64(r.MaxSessions)), sql.Named("max_seconds", int64(r.MaxSeconds)),
	).Scan(&c.Sessions, &c.Seconds, &c.Version)
	if errors.Is(err, sql.ErrNoRows) {
		c, err := loadCounters(ctx, tx, userID, r.Session.PeriodStart)
		return persistence.AdmitResult{Outcome: persistence.OverLimit, Counters: c}, err
	}
	if err != nil {
		return persistence.AdmitResult{}, err
	}

	created := micros(r.Session.CreatedAt)
	if _, err := tx.ExecContext(ctx, `
		INSERT INTO sessions (id, user_id, title, language, stt_provider, status,
		                      duration_seconds, period_start, seq, max_sessions, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)`,
		r.Session.ID, userID, r.Session.Title, r.Session.Language, r.Session.STTProvider,
		string(domain.StatusCreated), periodStart, c.Sessions, int64(r.MaxSessions), created, created); err != nil {
		return persistence.AdmitResult{}, err
	}
	return persistence.AdmitResult{Outcome: persistence.Admitted, Counters: c}, nil
}
