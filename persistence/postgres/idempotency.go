package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// keyRow is one idempotency_keys row as scanned: every column but the key
// may be NULL (settleKeySQL's outer join; a record's unused fields).
type keyRow struct {
	userID, key, requestHash, outcome, sessionID, planName *string
	maxSessions, maxSeconds, usageSessions, usageSeconds   *int64
	periodStart, periodEnd, createdAt                      *time.Time
}

func (k *keyRow) dest() []any {
	return []any{&k.userID, &k.key, &k.requestHash, &k.outcome, &k.sessionID, &k.planName,
		&k.maxSessions, &k.maxSeconds, &k.usageSessions, &k.usageSeconds, &k.periodStart, &k.periodEnd, &k.createdAt}
}

// record converts the row; nil when there is none. A row that is not
// settled is an error: it must never be seen outside its transaction.
func (k *keyRow) record() (*persistence.IdempotencyRecord, error) {
	if k.key == nil {
		return nil, nil
	}
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	num := func(p *int64) int64 {
		if p == nil {
			return 0
		}
		return *p
	}
	tm := func(p *time.Time) time.Time {
		if p == nil {
			return time.Time{}
		}
		return p.UTC()
	}
	r := &persistence.IdempotencyRecord{
		UserID:      str(k.userID),
		Key:         str(k.key),
		RequestHash: str(k.requestHash),
		SessionID:   str(k.sessionID),
		PlanName:    str(k.planName),
		MaxSessions: domain.Limit(num(k.maxSessions)),
		MaxSeconds:  domain.Limit(num(k.maxSeconds)),
		Usage:       domain.Usage{Sessions: num(k.usageSessions), Seconds: num(k.usageSeconds)},
		PeriodStart: tm(k.periodStart),
		PeriodEnd:   tm(k.periodEnd),
		CreatedAt:   tm(k.createdAt),
	}
	if err := r.SetOutcome(str(k.outcome)); err != nil {
		return nil, err
	}
	return r, nil
}

// scanSettled scans settleKeySQL's row: the period's counters (zero when
// there is no usage row) and the key's record (nil when none is stored).
func scanSettled(row pgx.Row) (persistence.Counters, *persistence.IdempotencyRecord, error) {
	var (
		sessions, seconds, version *int64
		k                          keyRow
	)
	if err := row.Scan(append([]any{&sessions, &seconds, &version}, k.dest()...)...); err != nil {
		return persistence.Counters{}, nil, err
	}
	var c persistence.Counters
	if sessions != nil {
		c = persistence.Counters{Usage: domain.Usage{Sessions: *sessions, Seconds: *seconds}, Version: *version}
	}
	rec, err := k.record()
	return c, rec, err
}

// LookupIdempotencyKey returns the stored outcome of a keyed admission, or
// domain.ErrNotFound. Only committed rows are visible, and those are
// always settled.
func (s *Store) LookupIdempotencyKey(ctx context.Context, userID, key string) (persistence.IdempotencyRecord, error) {
	var k keyRow
	err := s.pool.QueryRow(ctx, `SELECT `+persistence.KeyColumns+` FROM idempotency_keys WHERE user_id = $1 AND key = $2`,
		userID, key).Scan(k.dest()...)
	if err != nil {
		return persistence.IdempotencyRecord{}, translate("lookup idempotency key", notFound(err))
	}
	rec, err := k.record()
	if err != nil {
		return persistence.IdempotencyRecord{}, translate("lookup idempotency key", err)
	}
	return *rec, nil
}

// defaultPruneBatch bounds how many keys one pruning statement deletes, so
// that no transaction holds many row locks or runs long.
const defaultPruneBatch = 1000

// PruneIdempotencyKeys deletes the keys stored before the given time, in
// bounded batches, each its own transaction, oldest first. A key that an
// admission holds (replaying it right now) is skipped, not waited for: a
// later call prunes it. Pruning thus never blocks an admission for long,
// nor deadlocks with one.
func (s *Store) PruneIdempotencyKeys(ctx context.Context, before time.Time) (int64, error) {
	var total int64
	for {
		tag, err := s.pool.Exec(ctx, `
			DELETE FROM idempotency_keys
			WHERE (user_id, key) IN (
			    SELECT user_id, key FROM idempotency_keys
			    WHERE created_at < $1
			    ORDER BY created_at
			    LIMIT $2
			    FOR UPDATE SKIP LOCKED
			)`, ts(before), s.pruneBatch)
		if err != nil {
			return total, translate("prune idempotency keys", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(s.pruneBatch) {
			return total, nil
		}
	}
}

// ScanUsage calls fn for every usage row of a period that ends after
// `after`, streaming them from one query (a pool connection is held until
// it returns). It stops at fn's first error and returns it unchanged.
func (s *Store) ScanUsage(ctx context.Context, after time.Time, fn func(persistence.UsageRow) error) error {
	rows, err := s.pool.Query(ctx, `
		SELECT user_id, period_start, period_end, sessions, seconds, version
		FROM usage WHERE period_end > $1`, ts(after))
	if err != nil {
		return translate("scan usage", err)
	}
	defer rows.Close()
	for rows.Next() {
		var u persistence.UsageRow
		if err := rows.Scan(&u.UserID, &u.PeriodStart, &u.PeriodEnd, &u.Sessions, &u.Seconds, &u.Version); err != nil {
			return translate("scan usage", err)
		}
		u.PeriodStart, u.PeriodEnd = u.PeriodStart.UTC(), u.PeriodEnd.UTC()
		if err := fn(u); err != nil {
			return err
		}
	}
	return translate("scan usage", rows.Err())
}
