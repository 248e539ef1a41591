package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// Admit runs every request, in order, in one write transaction and commits
// before returning. The transaction holds the database's write lock from
// its first statement, so the fence below cannot interleave with another
// writer, and a request with an Idempotency-Key that another one is
// deciding waits for it (then replays it). A rejected request changes
// nothing but its key. Counters are zero for StaleUser, UnknownUser (whose
// period may not even be the right one) and Replayed.
//
// The store is single-node only: a request with an Epoch (cluster mode) is
// refused, nothing of the call is written, and the error wraps
// persistence.ErrSingleNode.
func (s *Store) Admit(ctx context.Context, reqs []persistence.AdmitRequest) ([]persistence.AdmitResult, error) {
	results := make([]persistence.AdmitResult, len(reqs))
	if len(reqs) == 0 {
		return results, nil
	}
	for _, r := range reqs {
		if r.Epoch != 0 {
			return nil, fmt.Errorf("sqlite: admit for user %s under epoch %d: %w", r.Session.UserID, r.Epoch, persistence.ErrSingleNode)
		}
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

// admitOne decides one request: the fence, then the Idempotency-Key (a
// stored key is replayed and nothing is counted), then the count, and the
// key with the outcome. Writes take turns, so a key stored by an earlier
// transaction, or by an earlier request of this one, is always seen here.
func admitOne(ctx context.Context, tx *sql.Tx, r persistence.AdmitRequest) (persistence.AdmitResult, error) {
	userID := r.Session.UserID

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

	if r.IdempotencyKey != "" {
		rec, err := lookupKey(ctx, tx, userID, r.IdempotencyKey)
		switch {
		case err == nil:
			return persistence.AdmitResult{Outcome: persistence.Replayed, Record: &rec}, nil
		case !errors.Is(err, sql.ErrNoRows):
			return persistence.AdmitResult{}, err
		}
	}

	res, err := decide(ctx, tx, r)
	if err != nil || r.IdempotencyKey == "" {
		return res, err
	}
	rec := persistence.IdempotencyRecord{
		UserID: userID, Key: r.IdempotencyKey, RequestHash: r.RequestHash,
		Admitted: res.Outcome == persistence.Admitted, CreatedAt: r.Session.CreatedAt,
	}
	if rec.Admitted {
		rec.SessionID = r.Session.ID
	} else {
		rec.PlanName, rec.MaxSessions, rec.MaxSeconds = r.PlanName, r.MaxSessions, r.MaxSeconds
		rec.Usage = res.Counters.Usage
		rec.PeriodStart, rec.PeriodEnd = r.Session.PeriodStart, r.PeriodEnd
	}
	return res, storeKey(ctx, tx, rec)
}

// decide counts the session if the period's usage is within the limits,
// and creates it; the user's fence has been checked.
func decide(ctx context.Context, tx *sql.Tx, r persistence.AdmitRequest) (persistence.AdmitResult, error) {
	userID, periodStart := r.Session.UserID, micros(r.Session.PeriodStart)
	// The period's first admission creates its usage row here, in the
	// admission's transaction (FirstOfPeriod is only a hint, and writes
	// take turns here, so the row is simply ensured every time). A limit
	// that admits nothing at zero usage (0) creates no row, as on Postgres.
	if r.MaxSessions.Allows(0) && r.MaxSeconds.Allows(0) {
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO usage (user_id, period_start, period_end, sessions, seconds, version)
			VALUES (?, ?, ?, 0, 0, 0)
			ON CONFLICT (user_id, period_start) DO NOTHING`,
			userID, periodStart, micros(r.PeriodEnd)); err != nil {
			return persistence.AdmitResult{}, err
		}
	}
	// The limits arrive as the ceilings domain.Limit.Ceiling computes
	// (admitted while used < ceiling), so the rule and its unlimited case
	// are written in domain alone.
	var c persistence.Counters
	err := tx.QueryRowContext(ctx, `
		UPDATE usage SET sessions = sessions + 1, version = version + 1
		WHERE user_id = :user_id AND period_start = :period_start
		  AND sessions < :session_ceiling
		  AND seconds < :seconds_ceiling
		RETURNING sessions, seconds, version`,
		sql.Named("user_id", userID), sql.Named("period_start", periodStart),
		sql.Named("session_ceiling", r.MaxSessions.Ceiling()), sql.Named("seconds_ceiling", r.MaxSeconds.Ceiling()),
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
	// With alerts on, the thresholds this session's number reaches are
	// recorded in the same transaction (outbox.go).
	if r.Alerts != nil {
		for _, t := range domain.Crossed(r.Alerts.Sessions, c.Sessions-1, c.Sessions) {
			_, err := insertAlert(ctx, tx, domain.Alert{Kind: domain.AlertThresholdCrossed, UserID: userID,
				Plan: r.Alerts.Plan.Name, Metric: domain.MetricSessions, Percent: t.Percent, Used: c.Sessions,
				Limit: r.MaxSessions, PeriodStart: r.Session.PeriodStart, PeriodEnd: r.PeriodEnd,
				OccurredAt: r.Session.CreatedAt, SessionID: r.Session.ID})
			if err != nil {
				return persistence.AdmitResult{}, err
			}
		}
	}
	return persistence.AdmitResult{Outcome: persistence.Admitted, Counters: c}, nil
}

// ClaimPartition is refused: the embedded store serves one process, keeps
// no partition epochs and cannot fence another node's admissions, so
// cluster mode needs the Postgres store.
func (s *Store) ClaimPartition(_ context.Context, p domain.Partition, epoch int64) error {
	return fmt.Errorf("sqlite: claim partition %d at epoch %d: %w", p, epoch, persistence.ErrSingleNode)
}
