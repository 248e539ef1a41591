package verify

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/tally-dev/tally/domain"
)

// The usage alerts' checks (docs/alerts.md). An alert is written in the
// transaction of its cause, so the data says which alerts must exist:
//
//   - alert_missing: a session whose number in its period (seq) is a
//     threshold's At of the sessions limit it was admitted under
//     (max_sessions), admitted while alerts were on with that threshold
//     (alert_settings), has its usage.threshold_crossed alert; a
//     completion made with alerts on (its audit event names the minutes
//     limit) that moved the period's seconds across a threshold has its
//     alert;
//   - alert_unfounded: every threshold alert has its cause: a sessions
//     alert names a session of its user and period whose seq is the
//     threshold's At of the alert's limit, a minutes alert a completion
//     whose event crossed it.
//
// Limit-reached alerts record a refusal, which leaves nothing else in the
// store to compare them with; their uniqueness is the table's own key.

// settingsSpan is the thresholds in force from since until the next row.
type settingsSpan struct {
	since, until int64 // unix microseconds; until is exclusive
	percents     []int
}

// parsePercents reads a stored threshold list: a Postgres array ("{80,100}")
// or a JSON one ("[80,100]").
func parsePercents(s string) ([]int, error) {
	s = strings.Trim(strings.TrimSpace(s), "{}[]")
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("alert_settings: %q is not a percentage", f)
		}
		out = append(out, p)
	}
	return out, nil
}

func (s *source) alertSettings(ctx context.Context, tx *sql.Tx) ([]settingsSpan, error) {
	rows, err := tx.QueryContext(ctx, fmt.Sprintf(`SELECT %s, %s FROM alert_settings ORDER BY since`,
		s.micros("since"), s.text("percents")))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var spans []settingsSpan
	for rows.Next() {
		var (
			since int64
			raw   string
		)
		if err := rows.Scan(&since, &raw); err != nil {
			return nil, err
		}
		ps, err := parsePercents(raw)
		if err != nil {
			return nil, err
		}
		if n := len(spans); n > 0 {
			spans[n-1].until = since
		}
		spans = append(spans, settingsSpan{since: since, until: math.MaxInt64, percents: ps})
	}
	return spans, rows.Err()
}

// missingSessionAlertsSQL lists the sessions admitted in [since, until)
// whose seq is the At of percent %d of their max_sessions, without their
// alert. At = ceil(p × limit / 100), at least 1 (domain.ThresholdsOf).
const missingSessionAlertsSQL = `
SELECT s.user_id, %[2]s, s.id, s.seq, s.max_sessions
FROM sessions s
WHERE s.max_sessions > 0 AND %[3]s >= %[4]d AND %[3]s < %[5]d
  AND s.seq = CASE WHEN (%[1]d * s.max_sessions + 99) / 100 < 1 THEN 1 ELSE (%[1]d * s.max_sessions + 99) / 100 END
  AND NOT EXISTS (SELECT 1 FROM alerts a
                  WHERE a.user_id = s.user_id AND a.period_start = s.period_start
                    AND a.kind = 'usage.threshold_crossed' AND a.metric = 'sessions'
                    AND a.percent = %[1]d AND a.limit_value = s.max_sessions AND a.session_id = s.id)
ORDER BY s.user_id, s.period_start, s.seq`

// unfoundedSessionAlertsSQL lists the sessions alerts without the session
// that crossed them.
const unfoundedSessionAlertsSQL = `
SELECT a.user_id, %s, a.id, a.percent, a.used, a.limit_value, coalesce(a.session_id, '')
FROM alerts a
LEFT JOIN sessions s ON s.id = a.session_id AND s.user_id = a.user_id AND s.period_start = a.period_start
WHERE a.kind = 'usage.threshold_crossed' AND a.metric = 'sessions'
  AND (s.id IS NULL OR s.seq <> a.used OR s.max_sessions <> a.limit_value
       OR a.used <> CASE WHEN (a.percent * a.limit_value + 99) / 100 < 1 THEN 1 ELSE (a.percent * a.limit_value + 99) / 100 END)`

// scanAlerts applies the alert checks.
func (s *source) scanAlerts(ctx context.Context, tx *sql.Tx, a *audit) error {
	spans, err := s.alertSettings(ctx, tx)
	if err != nil {
		return err
	}
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM alerts`).Scan(&a.rep.Alerts); err != nil {
		return err
	}
	v := func(c Check, user string, periodMicros int64, nums map[string]int64, format string, args ...any) {
		a.add(Violation{Check: c, UserID: user, PeriodStart: time.UnixMicro(periodMicros).UTC(), Detail: fmt.Sprintf(format, args...), Numbers: nums})
	}
	for _, sp := range spans {
		for _, p := range sp.percents {
			rows, err := tx.QueryContext(ctx, fmt.Sprintf(missingSessionAlertsSQL, p, s.micros("s.period_start"), s.micros("s.created_at"), sp.since, sp.until))
			if err != nil {
				return err
			}
			for rows.Next() {
				var (
					user, id          string
					period, seq, maxS int64
				)
				if err := rows.Scan(&user, &period, &id, &seq, &maxS); err != nil {
					rows.Close()
					return err
				}
				v(AlertMissing, user, period, map[string]int64{"seq": seq, "max_sessions": maxS, "percent": int64(p)},
					"session %s is number %d of %d, crossing %d%% of the sessions limit while alerts were on, but has no usage.threshold_crossed alert", id, seq, maxS, p)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
	}

	rows, err := tx.QueryContext(ctx, fmt.Sprintf(unfoundedSessionAlertsSQL, s.micros("a.period_start")))
	if err != nil {
		return err
	}
	for rows.Next() {
		var (
			user, session                string
			period, id, pct, used, limit int64
		)
		if err := rows.Scan(&user, &period, &id, &pct, &used, &limit, &session); err != nil {
			rows.Close()
			return err
		}
		v(AlertUnfounded, user, period, map[string]int64{"alert": id, "percent": pct, "used": used, "limit": limit},
			"alert %d (sessions %d%% of %d at %d) has no admitted session %q of the period numbered %d under that limit", id, pct, limit, used, session, used)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	return s.scanMinutesAlerts(ctx, tx, spans, v)
}

// scanMinutesAlerts compares the completions made with alerts on (their
// event's after names the minutes limit) with the minutes alerts.
func (s *source) scanMinutesAlerts(ctx context.Context, tx *sql.Tx, spans []settingsSpan,
	v func(Check, string, int64, map[string]int64, string, ...any)) error {
	type key struct {
		session string
		percent int
		limit   int64
	}
	alerts := map[key]struct {
		id, period int64
		user       string
	}{}
	rows, err := tx.QueryContext(ctx, fmt.Sprintf(`SELECT a.id, a.user_id, %s, coalesce(a.session_id, ''), a.percent, a.limit_value
FROM alerts a WHERE a.kind = 'usage.threshold_crossed' AND a.metric = 'minutes'`, s.micros("a.period_start")))
	if err != nil {
		return err
	}
	for rows.Next() {
		var (
			k          key
			id, period int64
			user       string
		)
		if err := rows.Scan(&id, &user, &period, &k.session, &k.percent, &k.limit); err != nil {
			rows.Close()
			return err
		}
		alerts[k] = struct {
			id, period int64
			user       string
		}{id, period, user}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}

	rows, err = tx.QueryContext(ctx, fmt.Sprintf(`SELECT e.user_id, e.session_id, %s, %s, %s, %s
FROM user_events e WHERE e.kind = 'complete_session' AND %s IS NOT NULL`,
		s.micros("e.occurred_at"), s.jsonInt("e.before", "period_seconds"), s.text("e.after"),
		s.jsonInt("e.after", "period_seconds"), s.jsonInt("e.after", "alert_minutes_limit")))
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			user, session, after string
			at, before, sum      int64
		)
		if err := rows.Scan(&user, &session, &at, &before, &after, &sum); err != nil {
			return err
		}
		var st domain.SessionState
		if err := json.Unmarshal([]byte(after), &st); err != nil || st.AlertMinutesLimit == nil {
			return fmt.Errorf("completion event of session %s: after %q: %v", session, after, err)
		}
		limit := *st.AlertMinutesLimit
		period := st.PeriodStart.UnixMicro()
		for _, t := range domain.Crossed(domain.ThresholdsOf(limit*60, percentsAt(spans, at)), before, sum) {
			k := key{session, t.Percent, int64(limit)}
			if _, ok := alerts[k]; ok {
				delete(alerts, k)
				continue
			}
			v(AlertMissing, user, period, map[string]int64{"seconds_before": before, "seconds_after": sum, "percent": int64(t.Percent), "limit_minutes": int64(limit)},
				"completing session %s moved the period's seconds from %d to %d, across %d%% of %d minutes, but no usage.threshold_crossed alert records it", session, before, sum, t.Percent, limit)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for k, al := range alerts {
		v(AlertUnfounded, al.user, al.period, map[string]int64{"alert": al.id, "percent": int64(k.percent), "limit_minutes": k.limit},
			"alert %d (minutes %d%% of %d) has no completion of session %q that crossed it", al.id, k.percent, k.limit, k.session)
	}
	return nil
}

// percentsAt is the thresholds in force at t (unix microseconds).
func percentsAt(spans []settingsSpan, t int64) []int {
	for _, sp := range spans {
		if sp.since <= t && t < sp.until {
			return sp.percents
		}
	}
	return nil
}
