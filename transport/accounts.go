package transport

import (
	"context"
	"time"

	"github.com/tally-dev/tally/domain"
)

// Accounts is what the HTTP edge needs from the accounting core. The actors
// package implements it; handler tests use a fake. Every method returns
// domain errors (*domain.Error, *domain.LimitExceededError), which the
// transport maps to status codes in one place (errors.go).
type Accounts interface {
	// CreateSession admits and durably records a session for the user, or
	// returns a *domain.LimitExceededError. idempotencyKey may be empty.
	// ctx reports the request's deadline but is not canceled when it
	// passes (only when the client goes away): the implementation must
	// bound its own wait by ctx.Deadline().
	CreateSession(ctx context.Context, userID string, in domain.NewSession, idempotencyKey string) (domain.Session, error)
	// GetSession returns the user's session, or domain.ErrNotFound when it
	// does not exist or belongs to another user.
	GetSession(ctx context.Context, userID, sessionID string) (domain.Session, error)
	// ListSessions returns up to limit of the user's sessions, newest first,
	// after the cursor when one is given.
	ListSessions(ctx context.Context, userID string, limit int, after *domain.Cursor) ([]domain.Session, error)
	// PrepareUpload checks sizeMB against the user's plan and moves the
	// session to uploading.
	PrepareUpload(ctx context.Context, userID, sessionID string, sizeMB float64) (domain.Session, domain.Plan, error)
	// Usage reports the user's current period.
	Usage(ctx context.Context, userID string) (domain.Report, error)

	// PutUser creates the user or changes its plan and/or billing anchor
	// (nil keeps the current value).
	PutUser(ctx context.Context, userID string, plan *string, anchor *time.Time) (domain.User, domain.Report, error)
	// GetUser returns the user with its current usage, or domain.ErrNotFound.
	GetUser(ctx context.Context, userID string) (domain.User, domain.Report, error)
	// ResetUsage starts a new billing period now.
	ResetUsage(ctx context.Context, userID string) (domain.Report, error)
	// CompleteSession records a session's duration.
	CompleteSession(ctx context.Context, sessionID string, seconds int64) (domain.Session, error)
	// FailSession marks a session failed.
	FailSession(ctx context.Context, sessionID string) (domain.Session, error)
}

// Checker reports whether one dependency is reachable, for /readyz.
type Checker interface {
	Name() string
	Check(ctx context.Context) error
}

// OptionalChecker is a Checker whose failure degrades readiness instead of
// failing it: the service still answers correctly without it (Redis, a
// cache).
type OptionalChecker interface {
	Checker
	Optional() bool
}

func optional(c Checker) bool {
	o, ok := c.(OptionalChecker)
	return ok && o.Optional()
}
