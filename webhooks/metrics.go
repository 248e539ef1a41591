package webhooks

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// The outcomes of an attempt, as tally_webhook_deliveries_total labels
// them.
const (
	outcomeDelivered = "delivered"
	outcomeRetry     = "retry"
	outcomeDead      = "dead"
)

type metrics struct {
	pending  prometheus.Gauge
	oldest   prometheus.Gauge
	duration prometheus.Histogram
	lag      prometheus.Histogram
	outcomes *prometheus.CounterVec
}

// newMetrics builds the dispatcher's metrics and registers them with reg
// (none when nil: they are then kept but not exported). A registration
// that fails unregisters what it had registered, so that New can be
// called again with the same registry.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tally_webhook_outbox_pending",
			Help: "Usage alerts whose webhook is not delivered yet nor dead-lettered (the outbox's backlog), refreshed every few seconds.",
		}),
		oldest: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tally_webhook_outbox_oldest_pending_seconds",
			Help: "How long ago the oldest pending alert occurred (0 when none): how far behind webhook delivery is, refreshed every few seconds.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tally_webhook_attempt_duration_seconds",
			Help:    "Time of one delivery attempt, from sending the request to reading the receiver's answer (or failing to): how fast the receiver is.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tally_webhook_delivery_lag_seconds",
			Help:    "Time from an alert's occurrence to its webhook's delivery, retries included: how late receivers learn of alerts.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 24 * 3600},
		}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_webhook_deliveries_total",
			Help: "Webhook delivery attempts by outcome: delivered (2xx), retry (pending again after a failure), dead (dead-lettered: refused with a 4xx, or the retry horizon passed).",
		}, []string{"outcome"}),
	}
	// Every outcome is exported from the start, at 0, so that rate() and
	// alerting rules see a series before the first failure.
	for _, o := range []string{outcomeDelivered, outcomeRetry, outcomeDead} {
		m.outcomes.WithLabelValues(o)
	}
	if reg == nil {
		return m, nil
	}
	cs := []prometheus.Collector{m.pending, m.oldest, m.duration, m.lag, m.outcomes}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("webhooks: registering metrics: %w", err)
		}
	}
	return m, nil
}
