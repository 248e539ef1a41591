package domain

import (
	"context"
	"time"
)

// Accounts is the accounting core's port: what an edge (the HTTP transport)
// calls. The core declares it and implements it (package actors); edges
// depend on it, never on the core's packages, and handler tests use a fake.
// Every method returns domain errors (*Error, *LimitExceededError), which
// the edge maps to its own answers in one place.
//
// Time: the core bounds every call by its request timeout, or by ctx's
// deadline when that comes first (actors/budget.go). ctx needs no deadline
// of its own; its cancellation (the client went away) stops the wait.
type Accounts interface {
	// CreateSession admits and durably records a session for the user, or
	// returns a *LimitExceededError. idempotencyKey may be empty.
	CreateSession(ctx context.Context, userID string, in NewSession, idempotencyKey string) (Session, error)
	// GetSession returns the user's session, or ErrNotFound when it
	// does not exist or belongs to another user.
	GetSession(ctx context.Context, userID, sessionID string) (Session, error)
	// ListSessions returns up to limit of the user's sessions, newest first,
	// after the cursor when one is given.
	ListSessions(ctx context.Context, userID string, limit int, after *Cursor) ([]Session, error)
	// PrepareUpload checks sizeMB against the user's plan and moves the
	// session to uploading.
	PrepareUpload(ctx context.Context, userID, sessionID string, sizeMB float64) (Session, Plan, error)
	// Usage reports the user's current period.
	Usage(ctx context.Context, userID string) (Report, error)

	// The admin changes below are recorded in the audit trail, in the
	// same transaction as the change, with by as who asked
	// (docs/contract.md, "Audit trail").

	// PutUser creates the user or changes its plan and/or billing anchor
	// (nil keeps the current value).
	PutUser(ctx context.Context, by Origin, userID string, plan *string, anchor *time.Time) (User, Report, error)
	// GetUser returns the user with its current usage, or ErrNotFound.
	GetUser(ctx context.Context, userID string) (User, Report, error)
	// ResetUsage starts a new billing period now.
	ResetUsage(ctx context.Context, by Origin, userID string) (Report, error)
	// CompleteSession records a session's duration.
	CompleteSession(ctx context.Context, by Origin, sessionID string, seconds int64) (Session, error)
	// FailSession marks a session failed.
	FailSession(ctx context.Context, by Origin, sessionID string) (Session, error)
	// ListUserEvents returns up to limit of the user's audit events, newest
	// first, after the cursor when one is given; ErrNotFound when the user
	// does not exist.
	ListUserEvents(ctx context.Context, userID string, limit int, after *EventCursor) ([]UserEvent, error)
}
