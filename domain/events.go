package domain

import (
	"encoding/json"
	"time"
)

// Origin says who asked for an admin change and in which request: what the
// audit trail records with the change (docs/contract.md, "Audit trail"). The
// edge fills it in from the admin credential and the request id; the core
// carries it down to the store with the change, so that nothing below the
// edge needs a context value to know who acted.
type Origin struct {
	// Admin is the name of the admin credential the request carried
	// (TALLY_ADMIN_TOKENS; TALLY_ADMIN_TOKEN is named "admin").
	Admin string
	// RequestID is the request's X-Request-Id.
	RequestID string
}

// EventKind names one kind of admin change in the audit trail.
type EventKind string

// The admin changes. One admin request that writes something is one event.
const (
	EventPutUser         EventKind = "put_user"         // PUT /admin/v1/users/{id}: create, plan and/or billing anchor
	EventResetUsage      EventKind = "reset_usage"      // POST …/reset-usage: billing anchor set to now
	EventCompleteSession EventKind = "complete_session" // POST /admin/v1/sessions/{id}/complete
	EventFailSession     EventKind = "fail_session"     // POST /admin/v1/sessions/{id}/fail
)

// UserEvent is one admin change of a user's account, as the store recorded
// it in the transaction that made the change.
type UserEvent struct {
	ID        int64  // assigned by the store; rises with insertion order in one store
	UserID    string // the user whose account changed
	SessionID string // the session of a session change; empty for user changes
	Kind      EventKind
	Actor     string // Origin.Admin
	RequestID string // Origin.RequestID
	// OccurredAt is the change's time: the time the store stamped the
	// changed rows with (users.updated_at, sessions.updated_at).
	OccurredAt time.Time
	// UserVersion is the user's version the change left (user changes
	// only; every user change bumps it by one). Zero for session changes.
	UserVersion int64
	// Before and After are JSON documents: a UserState or a SessionState.
	// Before is nil when the change created the user.
	Before, After json.RawMessage
}

// UserState is the before or after of a user change: the account and the
// usage of its current period at the change's time.
type UserState struct {
	Plan          string    `json:"plan"`
	BillingAnchor time.Time `json:"billing_anchor"`
	Version       int64     `json:"version"`
	PeriodStart   time.Time `json:"period_start"`
	PeriodEnd     time.Time `json:"period_end"`
	Sessions      int64     `json:"sessions"`
	Seconds       int64     `json:"seconds"`
}

// SessionState is the before or after of a session change: the session's
// status and duration, and the transcribed seconds of the period it counts
// in (which a completion adds to).
type SessionState struct {
	Status          Status    `json:"status"`
	DurationSeconds *int64    `json:"duration_seconds"`
	PeriodStart     time.Time `json:"period_start"`
	PeriodSeconds   int64     `json:"period_seconds"`
	// AlertMinutesLimit is, on the after of a completion made with usage
	// alerts on, the minutes limit its alerts were counted against
	// (-1 unlimited); absent otherwise.
	AlertMinutesLimit *Limit `json:"alert_minutes_limit,omitempty"`
}

// EventCursor is a position in a user's event list, which is ordered
// newest first by (OccurredAt, ID).
type EventCursor struct {
	OccurredAt time.Time
	ID         int64
}
