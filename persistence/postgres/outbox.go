package postgres

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// The outbox of usage alerts (persistence/outbox.go, migration 0006). The
// admissions write their alerts in admit.go and admit_bulk.go, the
// completions through InsertAlert below; this file is the delivery side.

// insertAlertSQL records one alert unless it exists (the unique key is the
// "exactly one" of docs/alerts.md). The alert is due at once.
const insertAlertSQL = `
INSERT INTO alerts (kind, user_id, plan, metric, percent, used, limit_value,
                    period_start, period_end, occurred_at, session_id, next_attempt_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULLIF($11, ''), $10)
ON CONFLICT (user_id, period_start, kind, metric, percent, limit_value) DO NOTHING`

// InsertAlert records a completion's alert; its period end is the usage
// row's, which the completion has just written.
func (t writeTx) InsertAlert(ctx context.Context, a domain.Alert) error {
	var end time.Time
	if err := t.tx.QueryRow(ctx, `SELECT period_end FROM usage WHERE user_id = $1 AND period_start = $2`,
		a.UserID, ts(a.PeriodStart)).Scan(&end); err != nil {
		return fmt.Errorf("period end of alert: %w", err)
	}
	a.PeriodEnd = end
	_, err := t.tx.Exec(ctx, insertAlertSQL, alertArgs(a)...)
	return err
}

func alertArgs(a domain.Alert) []any {
	return []any{string(a.Kind), a.UserID, a.Plan, string(a.Metric), a.Percent, a.Used, int64(a.Limit),
		ts(a.PeriodStart), ts(a.PeriodEnd), ts(a.OccurredAt), a.SessionID}
}

// RecordLimitReached records usage.limit_reached alerts in one statement,
// each once per user, period, metric and limit.
func (s *Store) RecordLimitReached(ctx context.Context, alerts []domain.Alert) (int, error) {
	if len(alerts) == 0 {
		return 0, nil
	}
	var c struct {
		users, plans, metrics []string
		used, limits          []int64
		starts, ends, at      []time.Time
	}
	for _, a := range alerts {
		c.users = append(c.users, a.UserID)
		c.plans = append(c.plans, a.Plan)
		c.metrics = append(c.metrics, string(a.Metric))
		c.used = append(c.used, a.Used)
		c.limits = append(c.limits, int64(a.Limit))
		c.starts = append(c.starts, ts(a.PeriodStart))
		c.ends = append(c.ends, ts(a.PeriodEnd))
		c.at = append(c.at, ts(a.OccurredAt))
	}
	// Sorted in the unique key's order, so that two batches inserting the
	// same alerts wait for each other rather than deadlock.
	tag, err := s.pool.Exec(ctx, `
INSERT INTO alerts (kind, user_id, plan, metric, percent, used, limit_value,
                    period_start, period_end, occurred_at, next_attempt_at)
SELECT '`+string(domain.AlertLimitReached)+`', a.user_id, a.plan, a.metric, 0, a.used, a.limit_value,
       a.period_start, a.period_end, a.occurred_at, a.occurred_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::timestamptz[], $7::timestamptz[], $8::timestamptz[])
     AS a(user_id, plan, metric, used, limit_value, period_start, period_end, occurred_at)
ORDER BY a.user_id COLLATE "C", a.period_start, a.metric, a.limit_value
ON CONFLICT (user_id, period_start, kind, metric, percent, limit_value) DO NOTHING`,
		c.users, c.plans, c.metrics, c.used, c.limits, c.starts, c.ends, c.at)
	if err != nil {
		return 0, translate("record limit reached", err)
	}
	return int(tag.RowsAffected()), nil
}

// RecordAlertSettings appends the thresholds in force from now when they
// differ from the last recorded (nil or empty: alerts off). Several nodes
// starting at once with the same settings record them once: the insert
// compares with the latest row in the same statement, under a lock that
// serializes the writers of this table.
func (s *Store) RecordAlertSettings(ctx context.Context, percents []int, now time.Time) error {
	ps := make([]int32, len(percents))
	for i, p := range percents {
		ps[i] = int32(p)
	}
	return s.inTx(ctx, "record alert settings", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `LOCK TABLE alert_settings IN SHARE ROW EXCLUSIVE MODE`); err != nil {
			return err
		}
		var last []int32
		err := tx.QueryRow(ctx, `SELECT percents FROM alert_settings ORDER BY since DESC LIMIT 1`).Scan(&last)
		switch {
		case err == nil && slices.Equal(last, ps):
			return nil
		case err != nil && !errors.Is(err, pgx.ErrNoRows):
			return err
		case err != nil && len(ps) == 0:
			return nil // off, and never on: nothing to say
		}
		_, err = tx.Exec(ctx, `INSERT INTO alert_settings (since, percents) VALUES ($1, $2)
			ON CONFLICT (since) DO UPDATE SET percents = EXCLUDED.percents`, ts(now), ps)
		return err
	})
}

// deliveryColumns are the columns scanDelivery reads, in its order, with
// the restart computed from the alert's predecessor: the latest earlier
// alert of the same user, kind, metric and threshold. It is found by an
// aggregate over the user's few alerts (the unique key's index), written
// max(q.id + 0) so that the planner cannot turn it into a backward walk
// of the primary key filtered by user, which a table without fresh
// statistics makes look cheap and which reads every later alert.
const deliveryColumns = `a.id, a.kind, a.user_id, a.plan, a.metric, a.percent, a.used, a.limit_value,
       a.period_start, a.period_end, a.occurred_at, COALESCE(a.session_id, ''),
       a.status, a.attempts, a.next_attempt_at, a.last_attempt_at, a.last_status, a.last_error,
       a.delivered_at, a.claim,
       COALESCE((SELECT CASE
                   WHEN p.period_start = a.period_start THEN 'plan_change'
                   WHEN p.period_start < a.period_start AND p.period_end > a.period_start THEN 'reset'
                   ELSE '' END
                 FROM alerts p
                 WHERE p.id = (SELECT max(q.id + 0) FROM alerts q
                               WHERE q.user_id = a.user_id AND q.kind = a.kind AND q.metric = a.metric
                                 AND q.percent = a.percent AND q.id < a.id)), '')`

func scanDelivery(row pgx.Row) (domain.Delivery, error) {
	var (
		d                  domain.Delivery
		kind, metric, stat string
		limit              int64
		lastAt, doneAt     *time.Time
		restart            string
	)
	err := row.Scan(&d.ID, &kind, &d.UserID, &d.Plan, &metric, &d.Percent, &d.Used, &limit,
		&d.PeriodStart, &d.PeriodEnd, &d.OccurredAt, &d.SessionID,
		&stat, &d.Attempts, &d.NextAttemptAt, &lastAt, &d.LastStatus, &d.LastError, &doneAt, &d.Claim, &restart)
	if err != nil {
		return domain.Delivery{}, err
	}
	d.Kind, d.Metric, d.Status, d.Limit = domain.AlertKind(kind), domain.Metric(metric), domain.DeliveryStatus(stat), domain.Limit(limit)
	d.Restart = domain.AlertRestart(restart)
	if lastAt != nil {
		d.LastAttemptAt = *lastAt
	}
	if doneAt != nil {
		d.DeliveredAt = *doneAt
	}
	for _, t := range []*time.Time{&d.PeriodStart, &d.PeriodEnd, &d.OccurredAt, &d.NextAttemptAt, &d.LastAttemptAt, &d.DeliveredAt} {
		if !t.IsZero() {
			*t = t.UTC()
		}
	}
	return d, nil
}

func collectDeliveries(rows pgx.Rows, err error) ([]domain.Delivery, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (domain.Delivery, error) { return scanDelivery(r) })
}

// claimDeliveriesSQL hands out due deliveries. A pending alert is handed out only
// while it is its user's oldest pending one, so a user's alerts go out in
// order; FOR UPDATE SKIP LOCKED lets dispatchers of several nodes claim at
// once without waiting for or taking each other's rows, and the claim's
// end (claimed_until) keeps a row from being handed out again while its
// delivery runs. A claim that outlives its lease (the node died) is taken
// over: delivery is at least once, and the receiver deduplicates by
// webhook-id.
const claimDeliveriesSQL = `
WITH due AS (
    SELECT a.id FROM alerts a
    WHERE a.status = 'pending' AND a.next_attempt_at <= $1
      AND (a.claimed_until IS NULL OR a.claimed_until <= $1)
      AND NOT EXISTS (SELECT FROM alerts b
                      WHERE b.user_id = a.user_id AND b.status = 'pending' AND b.id < a.id)
    ORDER BY a.id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE alerts a SET claim = $4, claimed_until = $2, attempts = a.attempts + 1, last_attempt_at = $1
    FROM due WHERE a.id = due.id
    RETURNING a.*
)
SELECT ` + deliveryColumns + ` FROM claimed a ORDER BY a.id`

// ClaimDeliveries hands out up to limit due deliveries under one new claim.
func (s *Store) ClaimDeliveries(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]domain.Delivery, error) {
	claim := rand.Int64N(1<<62) + 1 // any value but 0, which is "never claimed"
	var ds []domain.Delivery
	_, err := s.lazyCommit(ctx, claimPlan, claimDeliveriesSQL, []any{ts(now), ts(now.Add(lease)), limit, claim}, func(rows pgx.Rows) error {
		var err error
		ds, err = collectDeliveries(rows, nil)
		return err
	})
	return ds, translate("claim deliveries", err)
}

// claimPlan has the claim planned for each execution, with the table as
// it is then. The good plan walks the pending alerts in id order
// (alerts_pending_idx), probes each candidate's user for an older pending
// one (alerts_pending_user_idx) and stops at the limit: it costs the
// alerts a claim skips and takes, 0.4 ms at 9 000 pending. A prepared
// statement's generic plan is made once per connection, and the
// dispatcher prepares this one at start, when the table is empty: the
// plan made then read, probed and sorted every pending alert to keep the
// first few, 14 ms a claim at 9 000 pending, and deliveries fell to
// 140/s. Planning each claim costs well under a millisecond.
var claimPlan = []string{"SET LOCAL plan_cache_mode = force_custom_plan"}

// lazyCommit runs one statement in a transaction whose COMMIT does not
// wait for its WAL record to reach the disk (synchronous_commit off), in
// one round trip, and hands its rows to scan (nil: it returns the
// statement's tag instead). The
// dispatcher's writes — claims and settlements, one of each per delivery —
// would otherwise each cost a WAL flush, competing with the admissions'
// group commits for the disk. Losing one in a crash of the database only
// repeats a delivery: a lost claim leaves the alert unclaimed, a lost
// settlement leaves it claimed until its lease ends, and it is sent again
// either way (at least once; the receiver deduplicates by webhook-id). It
// is never used for what must not be lost: alerts are written in their
// cause's transaction, with its durability.
// The settings (SET LOCAL statements) come first in the transaction.
func (s *Store) lazyCommit(ctx context.Context, settings []string, sql string, args []any, scan func(pgx.Rows) error) (tag pgconn.CommandTag, err error) {
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue("SET LOCAL synchronous_commit = off")
	for _, set := range settings {
		b.Queue(set)
	}
	b.Queue(sql, args...)
	b.Queue("COMMIT")
	br := s.pool.SendBatch(ctx, b)
	defer func() {
		if cerr := br.Close(); err == nil {
			err = cerr
		}
	}()
	for range 2 + len(settings) {
		if _, err = br.Exec(); err != nil {
			return tag, err
		}
	}
	if scan != nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err != nil {
			return tag, err
		}
		if err = scan(rows); err != nil {
			return tag, err
		}
	} else if tag, err = br.Exec(); err != nil {
		return tag, err
	}
	_, err = br.Exec()
	return tag, err
}

// SettleDelivery records an attempt's outcome under its claim.
func (s *Store) SettleDelivery(ctx context.Context, st persistence.Settlement) (bool, error) {
	var delivered, next *time.Time
	switch st.Status {
	case domain.DeliveryDelivered:
		at := ts(st.At)
		delivered = &at
	case domain.DeliveryPending:
		at := ts(st.NextAttemptAt)
		next = &at
	case domain.DeliveryFailed:
	default:
		return false, fmt.Errorf("settle delivery %d: status %q", st.ID, st.Status)
	}
	tag, err := s.lazyCommit(ctx, nil, `
UPDATE alerts SET status = $3, delivered_at = $4, next_attempt_at = COALESCE($5, next_attempt_at),
                  claimed_until = NULL, last_status = $6, last_error = $7
WHERE id = $1 AND claim = $2 AND status = 'pending'`,
		[]any{st.ID, st.Claim, string(st.Status), delivered, next, st.HTTPStatus, st.Error}, nil)
	if err != nil {
		return false, translate("settle delivery", err)
	}
	return tag.RowsAffected() == 1, nil
}

// OutboxDepth counts the pending deliveries and finds the oldest.
func (s *Store) OutboxDepth(ctx context.Context) (int64, time.Time, error) {
	var (
		n      int64
		oldest *time.Time
	)
	err := s.pool.QueryRow(ctx, `SELECT count(*), min(occurred_at) FROM alerts WHERE status = 'pending'`).Scan(&n, &oldest)
	if err != nil {
		return 0, time.Time{}, translate("outbox depth", err)
	}
	if oldest == nil {
		return n, time.Time{}, nil
	}
	return n, oldest.UTC(), nil
}

// ListDeliveries lists deliveries newest first, by id.
func (s *Store) ListDeliveries(ctx context.Context, status domain.DeliveryStatus, limit int, before int64) ([]domain.Delivery, error) {
	if before <= 0 {
		before = 1<<63 - 1
	}
	ds, err := collectDeliveries(s.pool.Query(ctx, `SELECT `+deliveryColumns+` FROM alerts a
WHERE ($1 = '' OR a.status = $1) AND a.id < $2 ORDER BY a.id DESC LIMIT $3`, string(status), before, limit))
	return ds, translate("list deliveries", err)
}

// GetDelivery reads one delivery.
func (s *Store) GetDelivery(ctx context.Context, id int64) (domain.Delivery, error) {
	d, err := scanDelivery(s.pool.QueryRow(ctx, `SELECT `+deliveryColumns+` FROM alerts a WHERE a.id = $1`, id))
	if err != nil {
		return domain.Delivery{}, translate("get delivery", notFound(err))
	}
	return d, nil
}

// RetryDelivery puts a failed delivery back to pending, due at now.
func (s *Store) RetryDelivery(ctx context.Context, id int64, now time.Time) (domain.Delivery, error) {
	tag, err := s.pool.Exec(ctx, `
UPDATE alerts SET status = 'pending', next_attempt_at = $2, claimed_until = NULL
WHERE id = $1 AND status = 'failed'`, id, ts(now))
	if err != nil {
		return domain.Delivery{}, translate("retry delivery", err)
	}
	d, err := s.GetDelivery(ctx, id)
	if err != nil {
		return domain.Delivery{}, err
	}
	if tag.RowsAffected() == 0 {
		return d, domain.Errorf(domain.CodeConflict, "delivery %s is %s, not failed: only a failed delivery can be retried", d.WebhookID(), d.Status)
	}
	return d, nil
}
