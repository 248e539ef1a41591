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

// loader serves the first read of user actors that have no state yet: the
// user (provisioned on first sight) and its current period's counters. After
// a restart under load thousands of actors start within a second, and each
// reading alone cost two round trips and a connection; the loader reads
// whatever has queued in one EnsureUsersUsage call as soon as the previous
// one is done. Like the group-commit writer it has no timer: a lone load is
// not delayed, and a burst of cold actors shares a few calls.
//
// An actor waits for its answer only until its own deadline, so a store that
// hangs or a loader that fails can delay no actor past it (the caller gets
// the same 503 a direct read would have given).
type loader struct {
	store    persistence.Store
	queue    chan *loadJob
	maxBatch int

	stop    chan struct{}
	stopped sync.WaitGroup

	batchSize prometheus.Histogram
}

// errLoadNotStarted answers a load still queued at its actor's deadline
// (the actor has stopped waiting by then; the answer is for the record).
var errLoadNotStarted = errors.New("the user's load was not started within the request deadline (the database is slow or unreachable)")

// loadJob is one actor's read. done has room for the one answer, so the
// loader never blocks on an actor that stopped waiting.
type loadJob struct {
	load     persistence.UserLoad
	deadline time.Time // the actor's; zero: none
	done     chan loadResult
}

type loadResult struct {
	loaded persistence.UserLoaded
	err    error
}

const (
	loaderQueue    = 16384
	loaderMaxBatch = 256
)

func newLoader(store persistence.Store, reg prometheus.Registerer) *loader {
	l := &loader{
		store:    store,
		queue:    make(chan *loadJob, loaderQueue),
		maxBatch: loaderMaxBatch,
		stop:     make(chan struct{}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tally_load_batch_size",
			Help:    "Users read per EnsureUsersUsage call by the loader of cold user actors.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
		}),
	}
	if reg != nil {
		reg.MustRegister(l.batchSize)
	}
	l.stopped.Add(1)
	go l.run()
	return l
}

// load returns the user and its counters for the period at now, read
// together with whatever other actors are loading. It returns by ctx's
// deadline whatever the loader does.
func (l *loader) load(ctx context.Context, userID string, now time.Time) (persistence.UserLoaded, error) {
	j := &loadJob{load: persistence.UserLoad{ID: userID, Now: now}, done: make(chan loadResult, 1)}
	j.deadline, _ = ctx.Deadline()
	select {
	case l.queue <- j:
	default:
		// The queue is full: read alone rather than refuse.
		res, err := l.store.EnsureUsersUsage(ctx, []persistence.UserLoad{j.load})
		if err == nil && len(res) != 1 {
			err = fmt.Errorf("store answered %d of 1 loads", len(res))
		}
		if err != nil {
			return persistence.UserLoaded{}, err
		}
		return res[0], nil
	}
	select {
	case r := <-j.done:
		return r.loaded, r.err
	case <-ctx.Done():
		return persistence.UserLoaded{}, domain.Unavailable("database", fmt.Errorf("loading user %s: %w", userID, ctx.Err()))
	}
}

func (l *loader) close() {
	close(l.stop)
	l.stopped.Wait()
}

func (l *loader) run() {
	defer l.stopped.Done()
	for {
		var batch []*loadJob
		select {
		case j := <-l.queue:
			batch = append(batch, j)
		case <-l.stop:
			l.failQueued()
			return
		}
		l.serve(fillBatch(batch, l.queue, l.maxBatch))
	}
}

// serve reads one batch and answers each of its jobs. A job whose actor has
// already given up is dropped; a failed or panicking call answers every job
// with the error.
func (l *loader) serve(batch []*loadJob) {
	now := time.Now()
	live := batch[:0]
	var deadline time.Time
	for _, j := range batch {
		if !j.deadline.IsZero() && !j.deadline.After(now) {
			j.answer(loadResult{err: domain.Unavailable("database", errLoadNotStarted)})
			continue
		}
		live = append(live, j)
		if j.deadline.After(deadline) {
			deadline = j.deadline
		}
	}
	if len(live) == 0 {
		return
	}
	if limit := now.Add(maxBatchWait); deadline.IsZero() || deadline.After(limit) {
		deadline = limit
	}
	loads := make([]persistence.UserLoad, len(live))
	for i, j := range live {
		loads[i] = j.load
	}
	res, err := l.read(deadline, loads)
	l.batchSize.Observe(float64(len(loads)))
	for i, j := range live {
		if err != nil {
			j.answer(loadResult{err: err})
		} else {
			j.answer(loadResult{loaded: res[i]})
		}
	}
}

// read is one EnsureUsersUsage call. A panic in the store is a bug; it is
// turned into an internal error for every actor of the batch instead of
// taking the process down.
func (l *loader) read(deadline time.Time, loads []persistence.UserLoad) (res []persistence.UserLoaded, err error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			res, err = nil, &domain.Error{Code: domain.CodeInternal, Message: "internal error",
				Err: fmt.Errorf("store panicked in EnsureUsersUsage: %v\n%s", p, debug.Stack())}
		}
	}()
	res, err = l.store.EnsureUsersUsage(ctx, loads)
	if err == nil && len(res) != len(loads) {
		err = fmt.Errorf("store answered %d of %d loads", len(res), len(loads))
	}
	return res, err
}

func (j *loadJob) answer(r loadResult) {
	select {
	case j.done <- r:
	default: // answered already
	}
}

// failQueued answers what is still queued at shutdown.
func (l *loader) failQueued() {
	for {
		select {
		case j := <-l.queue:
			j.answer(loadResult{err: domain.Unavailable("accounting", errors.New("shutting down"))})
		default:
			return
		}
	}
}
