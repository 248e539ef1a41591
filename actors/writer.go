package actors

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// writer is the group commit: user actors hand it their admissions, and it
// commits whatever has queued up in one transaction as soon as the previous
// one is done — no timer, so a lone request is not delayed and a busy
// service gets big batches. Each caller is answered after COMMIT, so
// durability is unchanged. One writer beat two and four here (DESIGN.md:
// bigger batches cost Postgres less per row).
type writer struct {
	store    persistence.Store
	queue    chan *job
	maxBatch int

	stop    chan struct{}
	stopped sync.WaitGroup

	batchSize prometheus.Histogram
	commit    prometheus.Histogram
}

// job is one admission waiting for its commit. deliver is called exactly
// once, from the writer's goroutine.
type job struct {
	req      persistence.AdmitRequest
	deadline time.Time
	deliver  func(persistence.AdmitResult, error)
}

// errOverloaded answers admissions that find the writer's queue full: the
// service is past what the store can absorb, and the client should retry.
var errOverloaded = errors.New("admission queue is full")

const (
	writerQueue    = 16384
	writerMaxBatch = 512
	// maxBatchWait bounds one transaction even when its callers allow more.
	maxBatchWait = 10 * time.Second
)

func newWriter(store persistence.Store, reg prometheus.Registerer) *writer {
	w := &writer{
		store:    store,
		queue:    make(chan *job, writerQueue),
		maxBatch: writerMaxBatch,
		stop:     make(chan struct{}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tally_commit_batch_size",
			Help:    "Admissions committed per transaction by the group-commit writer.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512},
		}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tally_commit_seconds",
			Help:    "Duration of one group-commit transaction.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14),
		}),
	}
	if reg != nil {
		reg.MustRegister(w.batchSize, w.commit)
	}
	w.stopped.Add(1)
	go w.run()
	return w
}

// submit queues j; when the queue is full, j is answered at once with 503.
func (w *writer) submit(j *job) {
	select {
	case w.queue <- j:
	default:
		j.deliver(persistence.AdmitResult{}, domain.Unavailable("accounting", errOverloaded))
	}
}

func (w *writer) close() {
	close(w.stop)
	w.stopped.Wait()
}

func (w *writer) run() {
	defer w.stopped.Done()
	batch := make([]*job, 0, w.maxBatch)
	for {
		select {
		case j := <-w.queue:
			batch = append(batch[:0], j)
		case <-w.stop:
			w.failQueued()
			return
		}
	fill:
		for len(batch) < w.maxBatch {
			select {
			case j := <-w.queue:
				batch = append(batch, j)
			default:
				break fill
			}
		}
		w.flush(batch)
	}
}

// flush commits one batch. Jobs whose callers have already given up are
// answered without being committed (nothing happened, so that is exact);
// the transaction may run until the latest remaining caller's deadline.
func (w *writer) flush(batch []*job) {
	now := time.Now()
	live := batch[:0]
	var deadline time.Time
	for _, j := range batch {
		if !j.deadline.After(now) {
			j.deliver(persistence.AdmitResult{}, &domain.Error{Code: domain.CodeTimeout, Message: "request deadline exceeded before the admission could be committed"})
			continue
		}
		live = append(live, j)
		if d := workDeadline(j.deadline); d.After(deadline) {
			deadline = d
		}
	}
	if len(live) == 0 {
		return
	}
	if limit := now.Add(maxBatchWait); deadline.After(limit) {
		deadline = limit
	}
	reqs := make([]persistence.AdmitRequest, len(live))
	for i, j := range live {
		reqs[i] = j.req
	}
	res, err := w.admit(deadline, reqs)
	w.batchSize.Observe(float64(len(live)))
	w.commit.Observe(time.Since(now).Seconds())
	for i, j := range live {
		if err != nil {
			j.deliver(persistence.AdmitResult{}, err)
		} else {
			j.deliver(res[i], nil)
		}
	}
}

// admit runs one transaction. A panic in the store is a bug; it is turned
// into an internal error for every caller of the batch (whose outcome the
// actors then look up) instead of taking the whole process down.
func (w *writer) admit(deadline time.Time, reqs []persistence.AdmitRequest) (res []persistence.AdmitResult, err error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			res, err = nil, &domain.Error{Code: domain.CodeInternal, Message: "internal error",
				Err: fmt.Errorf("store panicked in Admit: %v\n%s", p, debug.Stack())}
		}
	}()
	res, err = w.store.Admit(ctx, reqs)
	if err == nil && len(res) != len(reqs) {
		err = fmt.Errorf("store answered %d of %d admissions", len(res), len(reqs))
	}
	return res, err
}

// failQueued answers what is still queued at shutdown. Nothing was
// committed for these, so 503 is exact.
func (w *writer) failQueued() {
	for {
		select {
		case j := <-w.queue:
			j.deliver(persistence.AdmitResult{}, domain.Unavailable("accounting", errors.New("shutting down")))
		default:
			return
		}
	}
}
