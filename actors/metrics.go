package actors

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	memoryRejects prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, live *atomic.Int64) *metrics {
	m := &metrics{
		memoryRejects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_rejections_confirmed_total",
			Help: "Over-limit admissions answered after the actor confirmed its counters with the store.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.memoryRejects, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tally_live_actors",
			Help: "User actors currently in memory (idle ones are passivated).",
		}, func() float64 { return float64(live.Load()) }))
	}
	return m
}

func (m *metrics) rejectedFromMemory() { m.memoryRejects.Inc() }
