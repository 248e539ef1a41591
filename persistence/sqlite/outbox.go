package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// The outbox of usage alerts, the twin of the Postgres store's outbox.go,
// which explains the rules. Writes take turns on the one write
// connection, so a claim needs no row locks: the claiming transaction
// reads and marks its rows before any other writer runs.

const insertAlertSQL = `
INSERT INTO alerts (kind, user_id, plan, metric, percent, used, limit_value,
                    period_start, period_end, occurred_at, session_id, next_attempt_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, ''), ?)
ON CONFLICT (user_id, period_start, kind, metric, percent, limit_value) DO NOTHING`

// insertAlert records an alert unless it exists; it is due at once.
func insertAlert(ctx context.Context, ex interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, a domain.Alert) (bool, error) {
	res, err := ex.ExecContext(ctx, insertAlertSQL, string(a.Kind), a.UserID, a.Plan, string(a.Metric), a.Percent,
		a.Used, int64(a.Limit), micros(a.PeriodStart), micros(a.PeriodEnd), micros(a.OccurredAt), a.SessionID, micros(a.OccurredAt))
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// InsertAlert records a completion's alert, with its period's end as the
// usage row has it.
func (t writeTx) InsertAlert(ctx context.Context, a domain.Alert) error {
	var end int64
	if err := t.tx.QueryRowContext(ctx, `SELECT period_end FROM usage WHERE user_id = ? AND period_start = ?`,
		a.UserID, micros(a.PeriodStart)).Scan(&end); err != nil {
		return fmt.Errorf("period end of alert: %w", err)
	}
	a.PeriodEnd = fromMicros(end)
	_, err := insertAlert(ctx, t.tx, a)
	return err
}

// RecordLimitReached records usage.limit_reached alerts in one write
// transaction, each once per user, period, metric and limit.
func (s *Store) RecordLimitReached(ctx context.Context, alerts []domain.Alert) (int, error) {
	n := 0
	err := s.inTx(ctx, "record limit reached", func(tx *sql.Tx) error {
		for _, a := range alerts {
			a.Kind, a.Percent = domain.AlertLimitReached, 0
			recorded, err := insertAlert(ctx, tx, a)
			if err != nil {
				return err
			}
			if recorded {
				n++
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// RecordAlertSettings appends the thresholds in force from now when they
// differ from the last recorded.
func (s *Store) RecordAlertSettings(ctx context.Context, percents []int, now time.Time) error {
	if percents == nil {
		percents = []int{}
	}
	return s.inTx(ctx, "record alert settings", func(tx *sql.Tx) error {
		var last string
		err := tx.QueryRowContext(ctx, `SELECT percents FROM alert_settings ORDER BY since DESC LIMIT 1`).Scan(&last)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			if len(percents) == 0 {
				return nil // off, and never on: nothing to say
			}
		case err != nil:
			return err
		default:
			var prev []int
			if err := json.Unmarshal([]byte(last), &prev); err != nil {
				return fmt.Errorf("alert settings: %w", err)
			}
			if slices.Equal(prev, percents) {
				return nil
			}
		}
		b, err := json.Marshal(percents)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO alert_settings (since, percents) VALUES (?, ?)
			ON CONFLICT (since) DO UPDATE SET percents = excluded.percents`, micros(now), string(b))
		return err
	})
}

// deliveryColumns: see the Postgres store's; the restart is computed from
// the alert's predecessor of the same user, kind, metric and threshold.
const deliveryColumns = `a.id, a.kind, a.user_id, a.plan, a.metric, a.percent, a.used, a.limit_value,
       a.period_start, a.period_end, a.occurred_at, COALESCE(a.session_id, ''),
       a.status, a.attempts, a.next_attempt_at, COALESCE(a.last_attempt_at, 0), a.last_status, a.last_error,
       COALESCE(a.delivered_at, 0), a.claim,
       COALESCE((SELECT CASE
                   WHEN p.period_start = a.period_start THEN 'plan_change'
                   WHEN p.period_start < a.period_start AND p.period_end > a.period_start THEN 'reset'
                   ELSE '' END
                 FROM alerts p
                 WHERE p.user_id = a.user_id AND p.kind = a.kind AND p.metric = a.metric
                   AND p.percent = a.percent AND p.id < a.id
                 ORDER BY p.id DESC LIMIT 1), '')`

func scanDelivery(row scanner) (domain.Delivery, error) {
	var (
		d                                     domain.Delivery
		kind, metric, stat, restart           string
		limit, start, end, at, next, last, dl int64
	)
	err := row.Scan(&d.ID, &kind, &d.UserID, &d.Plan, &metric, &d.Percent, &d.Used, &limit,
		&start, &end, &at, &d.SessionID, &stat, &d.Attempts, &next, &last, &d.LastStatus, &d.LastError, &dl, &d.Claim, &restart)
	if err != nil {
		return domain.Delivery{}, err
	}
	d.Kind, d.Metric, d.Status, d.Limit = domain.AlertKind(kind), domain.Metric(metric), domain.DeliveryStatus(stat), domain.Limit(limit)
	d.Restart = domain.AlertRestart(restart)
	d.PeriodStart, d.PeriodEnd, d.OccurredAt, d.NextAttemptAt = fromMicros(start), fromMicros(end), fromMicros(at), fromMicros(next)
	if last != 0 {
		d.LastAttemptAt = fromMicros(last)
	}
	if dl != 0 {
		d.DeliveredAt = fromMicros(dl)
	}
	return d, nil
}

func collectDeliveries(rows *sql.Rows, err error) ([]domain.Delivery, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []domain.Delivery{}
	for rows.Next() {
		d, err := scanDelivery(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// ClaimDeliveries hands out up to limit due deliveries, each its user's
// oldest pending alert, under one new claim.
func (s *Store) ClaimDeliveries(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]domain.Delivery, error) {
	claim := rand.Int64N(1<<62) + 1
	var out []domain.Delivery
	err := s.inTx(ctx, "claim deliveries", func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `
UPDATE alerts SET claim = ?, claimed_until = ?, attempts = attempts + 1, last_attempt_at = ?
WHERE id IN (
    SELECT a.id FROM alerts a
    WHERE a.status = 'pending' AND a.next_attempt_at <= ?
      AND (a.claimed_until IS NULL OR a.claimed_until <= ?)
      AND NOT EXISTS (SELECT 1 FROM alerts b
                      WHERE b.user_id = a.user_id AND b.status = 'pending' AND b.id < a.id)
    ORDER BY a.id LIMIT ?)`,
			claim, micros(now.Add(lease)), micros(now), micros(now), micros(now), limit); err != nil {
			return err
		}
		var err error
		out, err = collectDeliveries(tx.QueryContext(ctx, `SELECT `+deliveryColumns+` FROM alerts a
WHERE a.claim = ? AND a.status = 'pending' AND a.last_attempt_at = ? ORDER BY a.id`, claim, micros(now)))
		return err
	})
	return out, err
}

// SettleDelivery records an attempt's outcome under its claim.
func (s *Store) SettleDelivery(ctx context.Context, st persistence.Settlement) (bool, error) {
	var delivered, next any // NULL unless set
	switch st.Status {
	case domain.DeliveryDelivered:
		delivered = micros(st.At)
	case domain.DeliveryPending:
		next = micros(st.NextAttemptAt)
	case domain.DeliveryFailed:
	default:
		return false, fmt.Errorf("settle delivery %d: status %q", st.ID, st.Status)
	}
	var settled bool
	err := s.inTx(ctx, "settle delivery", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `
UPDATE alerts SET status = ?, delivered_at = ?, next_attempt_at = COALESCE(?, next_attempt_at),
                  claimed_until = NULL, last_status = ?, last_error = ?
WHERE id = ? AND claim = ? AND status = 'pending'`,
			string(st.Status), delivered, next, st.HTTPStatus, st.Error, st.ID, st.Claim)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		settled = n == 1
		return err
	})
	return settled, err
}

// OutboxDepth counts the pending deliveries and finds the oldest.
func (s *Store) OutboxDepth(ctx context.Context) (int64, time.Time, error) {
	var (
		n      int64
		oldest sql.NullInt64
	)
	err := s.read.QueryRowContext(ctx, `SELECT count(*), min(occurred_at) FROM alerts WHERE status = 'pending'`).Scan(&n, &oldest)
	if err != nil {
		return 0, time.Time{}, s.translate("outbox depth", err)
	}
	if !oldest.Valid {
		return n, time.Time{}, nil
	}
	return n, fromMicros(oldest.Int64), nil
}

// ListDeliveries lists deliveries newest first, by id.
func (s *Store) ListDeliveries(ctx context.Context, status domain.DeliveryStatus, limit int, before int64) ([]domain.Delivery, error) {
	if before <= 0 {
		before = 1<<63 - 1
	}
	ds, err := collectDeliveries(s.read.QueryContext(ctx, `SELECT `+deliveryColumns+` FROM alerts a
WHERE (? = '' OR a.status = ?) AND a.id < ? ORDER BY a.id DESC LIMIT ?`, string(status), string(status), before, limit))
	return ds, s.translate("list deliveries", err)
}

// GetDelivery reads one delivery.
func (s *Store) GetDelivery(ctx context.Context, id int64) (domain.Delivery, error) {
	return s.getDelivery(ctx, s.read, id)
}

func (s *Store) getDelivery(ctx context.Context, q querier, id int64) (domain.Delivery, error) {
	d, err := scanDelivery(q.QueryRowContext(ctx, `SELECT `+deliveryColumns+` FROM alerts a WHERE a.id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return domain.Delivery{}, domain.ErrNotFound
	}
	return d, s.translate("get delivery", err)
}

// RetryDelivery puts a failed delivery back to pending, due at now.
func (s *Store) RetryDelivery(ctx context.Context, id int64, now time.Time) (domain.Delivery, error) {
	var d domain.Delivery
	err := s.inTx(ctx, "retry delivery", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `
UPDATE alerts SET status = 'pending', next_attempt_at = ?, claimed_until = NULL
WHERE id = ? AND status = 'failed'`, micros(now), id)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if d, err = s.getDelivery(ctx, tx, id); err != nil {
			return err
		}
		if n == 0 {
			return domain.Errorf(domain.CodeConflict, "delivery %s is %s, not failed: only a failed delivery can be retried", d.WebhookID(), d.Status)
		}
		return nil
	})
	if err != nil {
		return domain.Delivery{}, err
	}
	return d, nil
}
