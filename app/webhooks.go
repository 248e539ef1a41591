package app

import (
	"context"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/transport"
	"github.com/tally-dev/tally/webhooks"
)

// Usage alerts (docs/alerts.md): with TALLY_WEBHOOK_URL set, the actors
// hand each admission and completion its plan's thresholds, the store
// writes the alerts in the transaction of their cause, and a dispatcher
// in every process delivers them. Processes share the outbox: claims are
// per alert and leased (persistence.Outbox), so in cluster mode every
// node's dispatcher takes its share and no alert is sent by two at once.

// setupAlerts records the thresholds in force (for tally verify) and, with
// alerts on, builds the dispatcher; it returns the thresholds the actors
// count with (nil: off).
func (a *App) setupAlerts(ctx context.Context) ([]int, error) {
	var percents []int
	if a.cfg.Webhooks() {
		percents = a.cfg.AlertPercents
	}
	if err := a.store.RecordAlertSettings(ctx, percents, time.Now()); err != nil {
		return nil, err
	}
	if percents == nil {
		return nil, nil
	}
	var err error
	a.dispatcher, err = webhooks.New(webhooks.Options{
		Outbox:      a.store,
		URL:         a.cfg.WebhookURL,
		Secret:      a.cfg.WebhookKey,
		Timeout:     a.cfg.WebhookTimeout,
		Horizon:     a.cfg.WebhookRetryHorizon,
		Concurrency: a.cfg.WebhookConcurrency,
		MaxBackoff:  a.cfg.WebhookMaxBackoff,
		Logger:      a.log.With("component", "webhooks"),
		Registry:    a.registry,
		// Clients first: while admissions queue for the group commit, or
		// requests crowd the API, deliveries are claimed once per poll
		// (a.accounts and a.handler are built after this function, hence
		// the closure; Run starts the dispatcher once both exist).
		Yield: func() bool {
			return a.accounts.Busy() || transport.InFlight(a.handler) >= busyInFlight
		},
	})
	return percents, err
}

// busyInFlight is the number of requests being served at which the
// process counts as busy for the dispatcher: a crowd of clients, whether
// their requests admit (which Service.Busy sees) or are refused from
// memory (which it does not: the alerts phase's refusals, slowed by
// deliveries running beside them, cost its admitted/s figure as much).
const busyInFlight = 16

// deliveries is the admin API's port (transport.Deliveries) on the store.
type deliveries struct{ store persistence.Store }

func (d deliveries) ListDeliveries(ctx context.Context, status domain.DeliveryStatus, limit int, before int64) ([]domain.Delivery, error) {
	return d.store.ListDeliveries(ctx, status, limit, before)
}

func (d deliveries) GetDelivery(ctx context.Context, id int64) (domain.Delivery, error) {
	return d.store.GetDelivery(ctx, id)
}

// RetryDelivery makes a failed delivery due now.
func (d deliveries) RetryDelivery(ctx context.Context, id int64) (domain.Delivery, error) {
	return d.store.RetryDelivery(ctx, id, time.Now())
}
