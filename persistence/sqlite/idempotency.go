package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// lookupKey reads a stored key, or sql.ErrNoRows.
func lookupKey(ctx context.Context, q querier, userID, key string) (persistence.IdempotencyRecord, error) {
	var (
		r                                       persistence.IdempotencyRecord
		outcome                                 string
		sessionID, planName                     sql.NullString
		maxSessions, maxSeconds, usedS, usedSec sql.NullInt64
		periodStart, periodEnd                  sql.NullInt64
		created                                 int64
	)
	err := q.QueryRowContext(ctx, `SELECT `+persistence.KeyColumns+` FROM idempotency_keys WHERE user_id = ? AND key = ?`,
		userID, key).Scan(&r.UserID, &r.Key, &r.RequestHash, &outcome, &sessionID, &planName,
		&maxSessions, &maxSeconds, &usedS, &usedSec, &periodStart, &periodEnd, &created)
	if err != nil {
		return persistence.IdempotencyRecord{}, err
	}
	if err := r.SetOutcome(outcome); err != nil {
		return persistence.IdempotencyRecord{}, err
	}
	r.SessionID, r.PlanName = sessionID.String, planName.String
	r.MaxSessions, r.MaxSeconds = domain.Limit(maxSessions.Int64), domain.Limit(maxSeconds.Int64)
	r.Usage = domain.Usage{Sessions: usedS.Int64, Seconds: usedSec.Int64}
	if periodStart.Valid {
		r.PeriodStart = fromMicros(periodStart.Int64)
	}
	if periodEnd.Valid {
		r.PeriodEnd = fromMicros(periodEnd.Int64)
	}
	r.CreatedAt = fromMicros(created)
	return r, nil
}

// storeKey writes a key with its outcome. The caller has checked that the
// key is not stored yet, in the same write transaction.
func storeKey(ctx context.Context, tx *sql.Tx, r persistence.IdempotencyRecord) error {
	var (
		outcome                                               = persistence.KeyRejected
		sessionID, planName                                   any
		maxSessions, maxSeconds, usedS, usedSec, pStart, pEnd any
	)
	if r.Admitted {
		outcome, sessionID = persistence.KeyAdmitted, r.SessionID
	} else {
		planName, maxSessions, maxSeconds = r.PlanName, int64(r.MaxSessions), int64(r.MaxSeconds)
		usedS, usedSec = r.Usage.Sessions, r.Usage.Seconds
		pStart, pEnd = micros(r.PeriodStart), micros(r.PeriodEnd)
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO idempotency_keys (`+persistence.KeyColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.UserID, r.Key, r.RequestHash, outcome, sessionID, planName,
		maxSessions, maxSeconds, usedS, usedSec, pStart, pEnd, micros(r.CreatedAt))
	return err
}

// LookupIdempotencyKey returns the stored outcome of a keyed admission, or
// domain.ErrNotFound.
func (s *Store) LookupIdempotencyKey(ctx context.Context, userID, key string) (persistence.IdempotencyRecord, error) {
	r, err := lookupKey(ctx, s.read, userID, key)
	if errors.Is(err, sql.ErrNoRows) {
		return persistence.IdempotencyRecord{}, domain.ErrNotFound
	}
	return r, s.translate("lookup idempotency key", err)
}

// PruneIdempotencyKeys deletes the keys stored before the given time. One
// statement: the write lock is the store's whole concurrency control, and
// an embedded store's key table is small.
func (s *Store) PruneIdempotencyKeys(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.inTx(ctx, "prune idempotency keys", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM idempotency_keys WHERE created_at < ?`, micros(before))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// ScanUsage calls fn for every usage row of a period that ends after
// `after`, reading them from one query on a read connection. It stops at
// fn's first error and returns it unchanged. Rows at version 0 are left
// out: a rejection may leave one, and it stands for "nothing recorded",
// as the missing row does in Postgres.
func (s *Store) ScanUsage(ctx context.Context, after time.Time, fn func(persistence.UsageRow) error) error {
	rows, err := s.read.QueryContext(ctx, `
		SELECT user_id, period_start, period_end, sessions, seconds, version
		FROM usage WHERE period_end > ? AND version > 0`, micros(after))
	if err != nil {
		return s.translate("scan usage", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			u          persistence.UsageRow
			start, end int64
		)
		if err := rows.Scan(&u.UserID, &start, &end, &u.Sessions, &u.Seconds, &u.Version); err != nil {
			return s.translate("scan usage", err)
		}
		u.PeriodStart, u.PeriodEnd = fromMicros(start), fromMicros(end)
		if err := fn(u); err != nil {
			return err
		}
	}
	return s.translate("scan usage", rows.Err())
}
