package webhooks

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/tally-dev/tally/domain"
)

// Event is the JSON body of a webhook, in the Standard Webhooks shape:
// what happened (Type), when (Timestamp), and its details (Data).
type Event struct {
	// Type is the alert kind: usage.threshold_crossed or
	// usage.limit_reached.
	Type domain.AlertKind `json:"type"`
	// Timestamp is when the alert occurred (not when it was sent: every
	// attempt carries the same body), in UTC.
	Timestamp time.Time `json:"timestamp"`
	Data      AlertData `json:"data"`
}

// AlertData is the data of a usage alert's webhook.
type AlertData struct {
	UserID string        `json:"user_id"`
	Plan   string        `json:"plan"`
	Metric domain.Metric `json:"metric"`
	// ThresholdPercent is the threshold crossed; only in
	// usage.threshold_crossed (a limit_reached alert has none).
	ThresholdPercent *int `json:"threshold_percent,omitempty"`
	// Used is the usage after the cause, in the limit's unit: sessions,
	// or whole minutes (rounded down) for the minutes metric.
	Used int64 `json:"used"`
	// Limit is the plan's limit: sessions, or minutes.
	Limit int64 `json:"limit"`
	// UsedSeconds is the exact usage in seconds; only for the minutes
	// metric, whose Used is rounded down.
	UsedSeconds *int64    `json:"used_seconds,omitempty"`
	PeriodStart time.Time `json:"period_start"`
	PeriodEnd   time.Time `json:"period_end"`
	OccurredAt  time.Time `json:"occurred_at"`
	// SessionID is the session whose admission or completion crossed the
	// threshold; absent for a refused create, which has no session.
	SessionID string `json:"session_id,omitempty"`
	// RestartedBy says why this threshold alerts again within what would
	// otherwise be one count: plan_change or reset; absent otherwise.
	RestartedBy domain.AlertRestart `json:"restarted_by,omitempty"`
}

// Payload returns the webhook body of a. It depends on the stored alert
// only — never on the attempt or the clock — so every attempt of one alert
// sends the same bytes (and a receiver deduplicating by webhook-id loses
// nothing). Times are in UTC, RFC 3339 with as many fractional digits as
// the store kept. It fails on an alert of an unknown kind or metric.
func Payload(a domain.Alert) ([]byte, error) {
	ev, err := event(a)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("webhook payload of alert %d: %w", a.ID, err)
	}
	return b, nil
}

func event(a domain.Alert) (Event, error) {
	d := AlertData{
		UserID:      a.UserID,
		Plan:        a.Plan,
		Metric:      a.Metric,
		Used:        a.UsedReported(),
		Limit:       int64(a.Limit),
		PeriodStart: a.PeriodStart.UTC(),
		PeriodEnd:   a.PeriodEnd.UTC(),
		OccurredAt:  a.OccurredAt.UTC(),
		SessionID:   a.SessionID,
		RestartedBy: a.Restart,
	}
	switch a.Kind {
	case domain.AlertThresholdCrossed:
		p := a.Percent
		d.ThresholdPercent = &p
	case domain.AlertLimitReached:
	default:
		return Event{}, fmt.Errorf("webhook payload of alert %d: unknown alert kind %q", a.ID, a.Kind)
	}
	switch a.Metric {
	case domain.MetricMinutes:
		s := a.Used
		d.UsedSeconds = &s
	case domain.MetricSessions:
	default:
		return Event{}, fmt.Errorf("webhook payload of alert %d: unknown metric %q", a.ID, a.Metric)
	}
	return Event{Type: a.Kind, Timestamp: d.OccurredAt, Data: d}, nil
}
