package persistence

import (
	"context"
	"time"

	"github.com/tally-dev/tally/domain"
)

// The outbox of usage alerts (docs/alerts.md). A store writes an alert in
// the transaction of its cause — the admission or the completion that
// crossed a threshold (Admit with AdmitRequest.Alerts, CompleteSession
// with an AlertPlan) — so an alert exists if and only if its cause
// committed. The webhook dispatcher (package webhooks) delivers from it
// through this interface.

// Settlement is the outcome of one delivery attempt.
type Settlement struct {
	ID    int64
	Claim int64 // the token ClaimDeliveries handed out
	At    time.Time
	// Status is what the delivery becomes: delivered, failed (dead
	// letter), or pending again with NextAttemptAt.
	Status        domain.DeliveryStatus
	NextAttemptAt time.Time
	HTTPStatus    int    // 0 when the attempt got no answer
	Error         string // empty on success
}

// Outbox is the store side of webhook delivery. All methods are safe for
// concurrent use, from several processes too.
type Outbox interface {
	// RecordAlertSettings records the thresholds alerts are counted with
	// from now on (nil: alerts off) when they differ from the last ones
	// recorded, so that tally verify knows which crossings must have an
	// alert.
	RecordAlertSettings(ctx context.Context, percents []int, now time.Time) error
	// RecordLimitReached records the usage.limit_reached alerts (Kind
	// and Percent are set by the store) in one transaction, each unless
	// its user already has one for the same period, metric and limit; it
	// reports how many it recorded.
	RecordLimitReached(ctx context.Context, alerts []domain.Alert) (int, error)

	// ClaimDeliveries hands out up to limit pending deliveries that are
	// due at now, each the oldest pending alert of its user (so a user's
	// alerts are delivered in order), none claimed by a claim that is
	// still running; each claim lasts lease and counts as an attempt.
	// Concurrent callers, in any process, never get the same delivery
	// while its claim lasts.
	ClaimDeliveries(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]domain.Delivery, error)
	// SettleDelivery records an attempt's outcome. It reports false, and
	// changes nothing, when the claim is no longer the delivery's (its
	// lease ran out and another claim took it, or an admin changed it).
	SettleDelivery(ctx context.Context, s Settlement) (bool, error)
	// OutboxDepth returns how many deliveries are pending and when the
	// oldest pending alert occurred (zero when none).
	OutboxDepth(ctx context.Context) (int64, time.Time, error)

	// ListDeliveries returns up to limit deliveries of the status (any
	// when empty), newest first, with ids below before (0: from the
	// newest).
	ListDeliveries(ctx context.Context, status domain.DeliveryStatus, limit int, before int64) ([]domain.Delivery, error)
	// GetDelivery returns one delivery, or domain.ErrNotFound.
	GetDelivery(ctx context.Context, id int64) (domain.Delivery, error)
	// RetryDelivery puts a failed delivery back to pending, due at now,
	// and returns it; domain.ErrNotFound when there is none, a
	// CodeConflict *domain.Error when it is not failed.
	RetryDelivery(ctx context.Context, id int64, now time.Time) (domain.Delivery, error)
}
