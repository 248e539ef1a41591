package actors

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// Usage alerts on the actors' side (docs/alerts.md). Threshold alerts are
// recorded by the store in the transaction of the admission or completion
// that crossed them; the actor only hands each request its plan's
// thresholds (alertPlans). The limit-reached alert has no transaction of
// its own cause — a refusal writes nothing — so the actor records it
// itself, the first time it sees a create refused in a period.

// noteTimeout bounds recording a limit-reached alert, which holds the
// user's actor (only that user's) for one insert.
const noteTimeout = 2 * time.Second

// alertPlans maps each plan of the catalog to its thresholds, computed
// once; nil when alerts are off.
type alertPlans map[string]*domain.AlertPlan

func newAlertPlans(c *domain.Catalog, percents []int) alertPlans {
	if len(percents) == 0 {
		return nil
	}
	m := make(alertPlans)
	for _, p := range c.Plans() {
		m[p.Name] = domain.NewAlertPlan(p, percents)
	}
	return m
}

// of returns the plan's thresholds, or nil when alerts are off.
func (m alertPlans) of(plan string) *domain.AlertPlan {
	if m == nil {
		return nil
	}
	return m[plan]
}

// limitNote is the limit-reached alert an actor has recorded (or found
// recorded): one per period, metric and limit.
type limitNote struct {
	periodStart time.Time
	metric      domain.Metric
	limit       domain.Limit
}

// noteLimitReached records the limit-reached alert of a create refused by
// refusal when usage was u, unless this actor already did for the same
// period, metric and limit. The store keeps one per user, period, metric
// and limit whatever any actor believes, so an actor that restarted, or
// another node's, inserts nothing twice. A failure is logged and tried
// again at the next refusal: the refusal itself stands.
func (a *userActor) noteLimitReached(refusal error, u domain.Usage) {
	if a.deps.alerts == nil {
		return
	}
	al, ok := domain.LimitReachedAlert(a.id, refusal, u, a.deps.now())
	if !ok {
		return
	}
	note := limitNote{periodStart: al.PeriodStart, metric: al.Metric, limit: al.Limit}
	if a.limitNoted != nil && *a.limitNoted == note {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), noteTimeout)
	defer cancel()
	if err := a.deps.limits.record(ctx, al); err != nil {
		a.deps.log.Warn("usage alert: recording limit reached failed; the next refusal tries again",
			"user", a.id, "metric", al.Metric, "err", err)
		return
	}
	a.limitNoted = &note
}

// limitRecorder writes the limit-reached alerts of many actors together:
// when a crowd of users reaches its limits at once (a load test, the first
// of the month), one insert and one commit record them all, instead of a
// commit per user competing with the admissions' group commits. An actor
// waits for its alert's commit, as for its admissions'.
type limitRecorder struct {
	store   persistence.Store
	queue   chan *limitJob
	stop    chan struct{}
	stopped sync.WaitGroup
}

type limitJob struct {
	alert domain.Alert
	done  chan error
}

// limitQueue bounds the alerts waiting for the recorder; past it an alert
// is written alone.
const limitQueue = 4096

// limitMaxBatch is the most alerts one insert records.
const limitMaxBatch = 512

func newLimitRecorder(store persistence.Store) *limitRecorder {
	r := &limitRecorder{store: store, queue: make(chan *limitJob, limitQueue), stop: make(chan struct{})}
	r.stopped.Add(1)
	go r.run()
	return r
}

// record writes a, with whatever other actors are recording, by ctx's
// deadline.
func (r *limitRecorder) record(ctx context.Context, a domain.Alert) error {
	j := &limitJob{alert: a, done: make(chan error, 1)}
	select {
	case r.queue <- j:
	case <-r.stop:
		return errors.New("the accounting core is shutting down")
	default:
		_, err := r.store.RecordLimitReached(ctx, []domain.Alert{a})
		return err
	}
	select {
	case err := <-j.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *limitRecorder) run() {
	defer r.stopped.Done()
	for {
		var batch []*limitJob
		select {
		case j := <-r.queue:
			batch = append(batch, j)
		case <-r.stop:
			return
		}
	more:
		for len(batch) < limitMaxBatch {
			select {
			case j := <-r.queue:
				batch = append(batch, j)
			default:
				break more
			}
		}
		alerts := make([]domain.Alert, len(batch))
		for i, j := range batch {
			alerts[i] = j.alert
		}
		ctx, cancel := context.WithTimeout(context.Background(), noteTimeout)
		_, err := r.store.RecordLimitReached(ctx, alerts)
		cancel()
		for _, j := range batch {
			j.done <- err
		}
	}
}

// close stops the recorder; alerts still queued are answered by their
// callers' deadlines.
func (r *limitRecorder) close() {
	close(r.stop)
	r.stopped.Wait()
}
