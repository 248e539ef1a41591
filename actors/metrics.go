package actors

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	memoryRejects prometheus.Counter
	replays       prometheus.Counter
	resolutions   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, live *atomic.Int64) *metrics {
	m := &metrics{
		memoryRejects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_rejections_confirmed_total",
			Help: "Over-limit admissions answered after the actor confirmed its counters with the store.",
		}),
	}
	m.replays = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tally_idempotent_replays_total",
		Help: "Creates answered from a stored Idempotency-Key outcome instead of being decided again.",
	})
	m.resolutions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tally_unknown_outcomes_total",
		Help: "Admissions whose transaction failed with an unknown outcome, by what the lookup found (committed, not_committed, unknown).",
	}, []string{"found"})
	if reg != nil {
		reg.MustRegister(m.replays, m.resolutions, m.memoryRejects, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tally_live_actors",
			Help: "User actors currently in memory (idle ones are passivated).",
		}, func() float64 { return float64(live.Load()) }))
	}
	return m
}

func (m *metrics) rejectedFromMemory()   { m.memoryRejects.Inc() }
func (m *metrics) replayed()             { m.replays.Inc() }
func (m *metrics) resolved(found string) { m.resolutions.WithLabelValues(found).Inc() }

// registerQueueMetrics exports the depth of the bounded queues behind the
// HTTP edge and how many requests each refused (load shedding).
func registerQueueMetrics(reg prometheus.Registerer, gate *userGate, ws writers) {
	if reg == nil {
		return
	}
	shed := func(f func() int64) func() float64 { return func() float64 { return float64(f()) } }
	userShed := func() int64 {
		if gate == nil {
			return 0
		}
		return gate.shed.Load()
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tally_commit_queue_depth",
			Help: "Admissions waiting for the group commit or in its running transaction.",
		}, func() float64 { return float64(ws.depth()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "tally_shed_total",
			Help:        "Requests answered 503 at once because a queue behind the HTTP edge was full, by queue.",
			ConstLabels: prometheus.Labels{"queue": "user"},
		}, shed(userShed)),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "tally_shed_total",
			Help:        "Requests answered 503 at once because a queue behind the HTTP edge was full, by queue.",
			ConstLabels: prometheus.Labels{"queue": "commit"},
		}, shed(ws.shedCount)),
	)
}
