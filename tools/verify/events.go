package verify

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	"github.com/tally-dev/tally/domain"
)

// The audit trail's checks (docs/contract.md, "Audit trail"). An admin
// change and its event commit in one transaction, and what the changes
// leave in the data is checkable against the events:
//
//   - every user change (a PUT, a usage reset) bumps the user's version by
//     one and records the version it left, so the events of a user cover
//     each version after the trail began exactly once, and none beyond the
//     user's: a missing event is a gap, an event without its change a
//     version the user never reached;
//   - the last one's after is the user row's plan and billing anchor (a
//     reset leaves no trace but its anchor), and a user without an event
//     since the trail began is as provisioning left it, unless it was
//     changed before (audit_baseline);
//   - every session completed or failed after the trail began has exactly
//     one event, of its kind, with its duration; no other session has one.

// userEventsSQL is one row per user: the row, where its trail begins, the
// aggregates of its user-change events after that, and the last event's
// version and after document.
const userEventsSQL = `
WITH agg AS (
    SELECT e.user_id,
           count(*) AS n,
           count(DISTINCT e.user_version) AS nd,
           min(e.user_version) AS lo,
           max(e.user_version) AS hi
    FROM user_events e
    LEFT JOIN audit_baseline b ON b.user_id = e.user_id
    WHERE e.user_version > coalesce(b.version, 1)
    GROUP BY e.user_id
), ranked AS (
    SELECT user_id, user_version, after,
           row_number() OVER (PARTITION BY user_id ORDER BY user_version DESC, id DESC) AS rn
    FROM user_events
    WHERE user_version IS NOT NULL
)
SELECT u.id, u.plan, %s, %s, u.version, coalesce(b.version, 1),
       coalesce(agg.n, 0), coalesce(agg.nd, 0), coalesce(agg.lo, 0), coalesce(agg.hi, 0),
       coalesce(last.user_version, 0), last.after
FROM users u
LEFT JOIN audit_baseline b ON b.user_id = u.id
LEFT JOIN agg ON agg.user_id = u.id
LEFT JOIN ranked last ON last.user_id = u.id AND last.rn = 1`

// scanUserEvents counts the events and applies the user checks to every
// user.
func (s *source) scanUserEvents(ctx context.Context, tx *sql.Tx, a *audit) error {
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM user_events`).Scan(&a.rep.Events); err != nil {
		return err
	}
	rows, err := tx.QueryContext(ctx, fmt.Sprintf(userEventsSQL, s.micros("u.billing_anchor"), s.micros("u.created_at")))
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			u     userTrail
			after []byte
		)
		if err := rows.Scan(&u.id, &u.plan, &u.anchorMicros, &u.createdMicros, &u.version, &u.base,
			&u.events, &u.distinct, &u.lo, &u.hi, &u.lastVersion, &after); err != nil {
			return err
		}
		a.checkUser(&u, after)
	}
	return rows.Err()
}

// userTrail is one user and the aggregates of its user-change events after
// its trail began.
type userTrail struct {
	id                          string
	plan                        string
	anchorMicros, createdMicros int64
	version                     int64
	base                        int64 // the version the trail begins after
	events, distinct, lo, hi    int64
	lastVersion                 int64 // of its last user-change event; 0: none
}

func (a *audit) checkUser(u *userTrail, lastAfter []byte) {
	v := func(c Check, nums map[string]int64, format string, args ...any) {
		a.add(Violation{Check: c, UserID: u.id, Detail: fmt.Sprintf(format, args...), Numbers: nums})
	}
	want := u.version - u.base // one event for each of base+1..version
	if u.events != want || u.distinct != want || (want > 0 && (u.lo != u.base+1 || u.hi != u.version)) {
		v(UserEvents, map[string]int64{"version": u.version, "baseline_version": u.base, "events": u.events,
			"distinct_versions": u.distinct, "min_version": u.lo, "max_version": u.hi},
			"the user is at version %d and its trail begins after version %d, so versions %d..%d need one event each; "+
				"its %d event(s) name %d distinct version(s) from %d to %d (an admin change without its event, or an event without its change)",
			u.version, u.base, u.base+1, u.version, u.events, u.distinct, u.lo, u.hi)
		return // the state check below would only repeat it
	}
	anchor := time.UnixMicro(u.anchorMicros).UTC()
	switch {
	case u.lastVersion == u.version:
		var st domain.UserState
		if err := json.Unmarshal(lastAfter, &st); err != nil {
			v(UserState, nil, "the after of its event of version %d is not a user state: %v", u.version, err)
			return
		}
		if st.Plan != u.plan || !st.BillingAnchor.Equal(anchor) {
			v(UserState, map[string]int64{"version": u.version},
				"the user has plan %q and billing anchor %s, but its last event (version %d) left plan %q and anchor %s: changed without an event",
				u.plan, anchor.Format(time.RFC3339Nano), u.version, st.Plan, st.BillingAnchor.UTC().Format(time.RFC3339Nano))
		}
	case u.lastVersion == 0 && u.base == 1 && u.version == 1:
		// Never changed by an admin: as its first request provisioned it.
		if u.plan != domain.DefaultPlan || u.anchorMicros != u.createdMicros {
			v(UserState, map[string]int64{"version": u.version},
				"the user has no admin change, yet has plan %q and billing anchor %s (provisioning leaves plan %q anchored at its creation, %s): changed without an event",
				u.plan, anchor.Format(time.RFC3339Nano), domain.DefaultPlan, time.UnixMicro(u.createdMicros).UTC().Format(time.RFC3339Nano))
		}
	}
}

// sessionEventsSQL is one row per session that is completed or failed
// after the trail began, or that has an event: the session beside the
// aggregates of its events.
const sessionEventsSQL = `
WITH ev AS (
    SELECT session_id, count(*) AS n, min(kind) AS kind, min(%s) AS duration
    FROM user_events
    WHERE session_id IS NOT NULL
    GROUP BY session_id
)
SELECT s.user_id, s.id, %s, s.status, s.duration_seconds,
       coalesce(ev.n, 0), coalesce(ev.kind, ''), ev.duration
FROM sessions s
LEFT JOIN ev ON ev.session_id = s.id
WHERE ev.session_id IS NOT NULL
   OR (s.status IN ('completed', 'failed')
       AND NOT EXISTS (SELECT 1 FROM audit_baseline_sessions bs WHERE bs.session_id = s.id))`

// scanSessionEvents applies the session checks.
func (s *source) scanSessionEvents(ctx context.Context, tx *sql.Tx, a *audit) error {
	rows, err := tx.QueryContext(ctx, fmt.Sprintf(sessionEventsSQL, s.jsonInt("after", "duration_seconds"), s.micros("s.period_start")))
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			userID, id, status, kind string
			periodMicros, n          int64
			duration, eventDuration  sql.NullInt64
		)
		if err := rows.Scan(&userID, &id, &periodMicros, &status, &duration, &n, &kind, &eventDuration); err != nil {
			return err
		}
		v := func(format string, args ...any) {
			a.add(Violation{Check: SessionEvents, UserID: userID, PeriodStart: time.UnixMicro(periodMicros).UTC(),
				Detail: fmt.Sprintf(format, args...), Numbers: map[string]int64{"events": n}})
		}
		var want domain.EventKind
		switch domain.Status(status) {
		case domain.StatusCompleted:
			want = domain.EventCompleteSession
		case domain.StatusFailed:
			want = domain.EventFailSession
		default:
			v("session %s is %s, yet %d event(s) say an admin completed or failed it: an event without its change", id, status, n)
			continue
		}
		switch {
		case n != 1:
			v("session %s is %s with %d event(s), want exactly one %s: an admin change without its event", id, status, n, want)
		case domain.EventKind(kind) != want:
			v("session %s is %s, but its event is %s", id, status, kind)
		case want == domain.EventCompleteSession && (!eventDuration.Valid || !duration.Valid || eventDuration.Int64 != duration.Int64):
			v("session %s is completed with %s seconds, but its event says %s", id, nullString(duration), nullString(eventDuration))
		}
	}
	return rows.Err()
}

func nullString(n sql.NullInt64) string {
	if !n.Valid {
		return "none"
	}
	return fmt.Sprint(n.Int64)
}
