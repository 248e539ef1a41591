package domain

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Usage alerts (docs/alerts.md): an event when an admission or a completion
// moves a user's usage of a metric across a configured percentage of its
// plan's limit, and one the first time in a period a create is refused for
// a limit. The rules of when an alert exists are here; the stores write
// the events in the transaction of their cause, and package webhooks
// delivers them.

// Metric is a metered usage that alerts watch.
type Metric string

// The metrics. Sessions count admissions; minutes are kept in seconds
// (Usage.Seconds) and reported in whole minutes.
const (
	MetricSessions Metric = "sessions"
	MetricMinutes  Metric = "minutes"
)

// AlertKind is the type of a usage alert, as its webhook names it.
type AlertKind string

// The alert kinds.
const (
	AlertThresholdCrossed AlertKind = "usage.threshold_crossed"
	AlertLimitReached     AlertKind = "usage.limit_reached"
)

// DefaultAlertPercents are the thresholds of TALLY_ALERT_THRESHOLDS unset.
var DefaultAlertPercents = []int{80, 100}

// ValidateAlertPercents checks a threshold list: each a whole percentage
// from 1 to 100, strictly ascending (so each threshold is one event, and
// the events of one crossing come in threshold order).
func ValidateAlertPercents(ps []int) error {
	if len(ps) == 0 {
		return fmt.Errorf("no threshold: list at least one percentage, e.g. 80,100")
	}
	for i, p := range ps {
		if p < 1 || p > 100 {
			return fmt.Errorf("threshold %d is not a percentage from 1 to 100", p)
		}
		if i > 0 && p <= ps[i-1] {
			return fmt.Errorf("thresholds must be strictly ascending: %d follows %d", p, ps[i-1])
		}
	}
	return nil
}

// Threshold is one percentage of one limit, with the usage at which usage
// reaches it: At = ceil(Percent × limit / 100), in the limit's unit
// (sessions, or seconds for minutes), at least 1.
type Threshold struct {
	Percent int
	At      int64
}

// ThresholdsOf returns the thresholds of limit (in the unit usage is kept
// in) for the given percentages, ascending. An unlimited limit, or one of
// zero (nothing is ever admitted), has none: it never alerts.
func ThresholdsOf(limit Limit, percents []int) []Threshold {
	if limit.IsUnlimited() || limit == 0 {
		return nil
	}
	ts := make([]Threshold, 0, len(percents))
	for _, p := range percents {
		at := (int64(p)*int64(limit) + 99) / 100 // ceil without floats
		ts = append(ts, Threshold{Percent: p, At: max(at, 1)})
	}
	return ts
}

// Crossed returns the thresholds that usage moving from before to after
// crosses: before < At ≤ after. Usage in a period only rises (a failed
// session stays counted, a completion only adds seconds), so each
// threshold of a limit is crossed at most once per period. ts must be
// ascending by At, as ThresholdsOf returns them; the result is a sub-slice
// of ts, in the same order.
func Crossed(ts []Threshold, before, after int64) []Threshold {
	lo, hi := len(ts), len(ts)
	for i, t := range ts {
		if t.At > before {
			lo = i
			break
		}
	}
	for i := lo; i < len(ts); i++ {
		if ts[i].At > after {
			hi = i
			break
		}
	}
	return ts[lo:hi]
}

// AlertPlan is a plan with its thresholds, computed once per plan: what an
// admission or a completion carries down to the store to record alerts.
type AlertPlan struct {
	Plan     Plan
	Sessions []Threshold // of Plan.MaxSessions
	Seconds  []Threshold // of Plan.MaxSeconds()
}

// NewAlertPlan computes p's thresholds for the given percentages.
func NewAlertPlan(p Plan, percents []int) *AlertPlan {
	return &AlertPlan{Plan: p, Sessions: ThresholdsOf(p.MaxSessions, percents), Seconds: ThresholdsOf(p.MaxSeconds(), percents)}
}

// AlertRestart says what started the count an alert was counted in afresh
// within what would otherwise have been one count: empty for a period's
// own count.
type AlertRestart string

// The restarts an alert reports (docs/alerts.md, "Exactly one").
const (
	// RestartPlanChange: an earlier alert of the same kind, metric and
	// threshold exists in the same period under another limit: the plan
	// changed and the new limit's thresholds are counted afresh.
	RestartPlanChange AlertRestart = "plan_change"
	// RestartReset: an earlier alert of the same kind, metric and
	// threshold belongs to a period this one cut short (a usage reset
	// moved the billing anchor to the reset's time).
	RestartReset AlertRestart = "reset"
)

// Alert is one usage alert as its store recorded it.
type Alert struct {
	ID     int64 // assigned by the store, rising with insertion order
	Kind   AlertKind
	UserID string
	Plan   string
	Metric Metric
	// Percent is the threshold crossed; 0 for AlertLimitReached.
	Percent int
	// Used is the usage after the cause, in the unit usage is kept in:
	// sessions, or seconds for MetricMinutes.
	Used int64
	// Limit is the plan's limit as clients see it: sessions, or minutes.
	Limit       Limit
	PeriodStart time.Time
	PeriodEnd   time.Time
	OccurredAt  time.Time
	// SessionID is the session whose admission or completion crossed the
	// threshold, or whose create was refused first (empty then: a
	// refused create has no session).
	SessionID string
	// Restart is filled in when the store reads the alert back.
	Restart AlertRestart
}

// WebhookID is the alert's stable message id (the webhook-id header): the
// same for every delivery attempt, so that receivers can deduplicate.
func (a Alert) WebhookID() string { return "msg_tally_" + strconv.FormatInt(a.ID, 10) }

// UsedReported is Used in the unit clients see: sessions, or whole minutes.
func (a Alert) UsedReported() int64 {
	if a.Metric == MetricMinutes {
		return a.Used / 60
	}
	return a.Used
}

// LimitReachedAlert is the alert of a create refused by err when the
// period's usage was u, or false when err is not a period limit's refusal
// (a file size is per upload, not per period, and has no alert).
func LimitReachedAlert(userID string, err error, u Usage, now time.Time) (Alert, bool) {
	var le *LimitExceededError
	if !errors.As(err, &le) {
		return Alert{}, false
	}
	a := Alert{Kind: AlertLimitReached, UserID: userID, Plan: le.Plan, Limit: le.Limit,
		PeriodStart: le.Period.Start, PeriodEnd: le.Period.End, OccurredAt: now}
	switch le.Code {
	case CodeSessionLimit:
		a.Metric, a.Used = MetricSessions, u.Sessions
	case CodeTranscriptionLimit:
		a.Metric, a.Used = MetricMinutes, u.Seconds
	default:
		return Alert{}, false
	}
	return a, true
}

// DeliveryStatus is where an alert's webhook delivery stands.
type DeliveryStatus string

// The delivery statuses. An alert starts pending; it ends delivered, or
// failed (dead-lettered) once its retry horizon has passed or the receiver
// refused it for good. An admin may put a failed delivery back to pending.
const (
	DeliveryPending   DeliveryStatus = "pending"
	DeliveryDelivered DeliveryStatus = "delivered"
	DeliveryFailed    DeliveryStatus = "failed"
)

// Valid reports whether s is one of the statuses.
func (s DeliveryStatus) Valid() bool {
	return s == DeliveryPending || s == DeliveryDelivered || s == DeliveryFailed
}

// Delivery is an alert with the state of its webhook delivery.
type Delivery struct {
	Alert
	Status        DeliveryStatus
	Attempts      int       // attempts made so far (a claim counts as one)
	NextAttemptAt time.Time // pending: not before this
	LastAttemptAt time.Time // zero: never attempted
	LastStatus    int       // HTTP status of the last attempt; 0 when it got none
	LastError     string    // why the last attempt failed; empty after a success
	DeliveredAt   time.Time // zero unless delivered
	// Claim is the token of the claim that handed this delivery out
	// (persistence.Outbox.ClaimDeliveries); settling the attempt must present
	// it. Internal: not shown by the admin API.
	Claim int64
}
