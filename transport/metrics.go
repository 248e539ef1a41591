package transport

import (
	"errors"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/domain"
)

// metrics are the edge's Prometheus series.
//
// Every request updates two labelled series and every create a third;
// resolving labels (WithLabelValues: validation, hashing, a locked lookup)
// for each was a few percent of an over-limit answer, so the resolved
// series are kept: by outcome from the start, by (route, method, status)
// as they are first seen — a bounded set, since routes are patterns and
// methods are normalised.
type metrics struct {
	requests   *prometheus.CounterVec   // route, method, status
	duration   *prometheus.HistogramVec // route, method
	admissions *prometheus.CounterVec   // outcome
	shed       prometheus.Counter       // requests answered 503 over MaxInFlight

	byOutcome map[string]prometheus.Counter
	byRequest sync.Map // requestKey → *requestSeries
}

type requestKey struct {
	route, method string
	status        int
}

type requestSeries struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

// request counts one answered request and its latency.
func (m *metrics) request(route, method string, status int, seconds float64) {
	k := requestKey{route, method, status}
	v, ok := m.byRequest.Load(k)
	if !ok {
		v, _ = m.byRequest.LoadOrStore(k, &requestSeries{
			requests: m.requests.WithLabelValues(route, method, strconv.Itoa(status)),
			duration: m.duration.WithLabelValues(route, method),
		})
	}
	rs := v.(*requestSeries)
	rs.requests.Inc()
	rs.duration.Observe(seconds)
}

// Admission outcomes, the values of tally_admissions_total{outcome}.
const (
	outcomeAdmitted      = "admitted"
	outcomeSessionLimit  = "session_limit_exceeded"
	outcomeMinutesLimit  = "transcription_limit_exceeded"
	outcomeAdmissionFail = "error"
)

// newMetrics registers the edge's series; slots is the in-flight
// semaphore (nil: unbounded), whose fill is exported as a gauge.
func newMetrics(reg prometheus.Registerer, slots chan struct{}) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_http_requests_total",
			Help: "HTTP requests answered, by route pattern, method and status code.",
		}, []string{"route", "method", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tally_http_request_duration_seconds",
			Help: "Time to answer an HTTP request, by route pattern and method.",
			// Admissions answer in well under a millisecond when the
			// actor's memory decides, and wait for a group commit otherwise.
			Buckets: []float64{.0002, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route", "method"}),
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_admissions_total",
			Help: "Session admissions decided at the HTTP edge, by outcome.",
		}, []string{"outcome"}),
	}
	m.shed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tally_http_shed_total",
		Help: "API and admin requests answered 503 at once because TALLY_MAX_IN_FLIGHT requests were being served.",
	})
	inFlight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tally_http_in_flight",
		Help: "API and admin requests being served now (bounded by TALLY_MAX_IN_FLIGHT).",
	}, func() float64 { return float64(len(slots)) })
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.admissions, m.shed, inFlight} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Export every outcome from the start, so that rates and alerts do not
	// see a series appear only with its first event.
	m.byOutcome = make(map[string]prometheus.Counter)
	for _, o := range []string{outcomeAdmitted, outcomeSessionLimit, outcomeMinutesLimit, outcomeAdmissionFail} {
		m.byOutcome[o] = m.admissions.WithLabelValues(o)
	}
	return m, nil
}

// admission counts the outcome of one CreateSession call.
func (m *metrics) admission(err error) {
	outcome := outcomeAdmitted
	if err != nil {
		outcome = outcomeAdmissionFail
		if le, ok := errors.AsType[*domain.LimitExceededError](err); ok {
			switch le.Code {
			case domain.CodeSessionLimit:
				outcome = outcomeSessionLimit
			case domain.CodeTranscriptionLimit:
				outcome = outcomeMinutesLimit
			}
		}
	}
	m.byOutcome[outcome].Inc()
}
