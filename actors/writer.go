package actors

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// writer is the group commit: user actors hand it their admissions, and it
// commits whatever has queued up in one transaction as soon as the previous
// one is done — no timer, so a lone request is not delayed and a busy
// service gets big batches. Each caller is answered after COMMIT, so
// durability is unchanged. One writer is the default: bigger batches cost
// Postgres less per row (docs/decisions/0005-one-group-commit-writer.md).
type writer struct {
	store    persistence.Store
	queue    chan *job
	maxBatch int

	stop    chan struct{}
	stopped sync.WaitGroup

	batchSize  prometheus.Histogram
	commit     prometheus.Histogram
	isolations prometheus.Counter

	// waiting is how many jobs the loop holds (pending and in the running
	// transaction), for the queue-depth gauge; shed counts refused jobs.
	waiting atomic.Int64
	shed    atomic.Int64
}

// job is one admission waiting for its commit. deliver is called exactly
// once, from the writer's goroutine.
type job struct {
	req      *persistence.AdmitRequest
	deadline time.Time // when the caller stops waiting
	answerBy time.Time // when the writer answers at the latest (deadline less a margin for the reply)
	deliver  func(persistence.AdmitResult, error)
}

// errOverloaded answers admissions that find the writer's queue full: the
// service is past what the store can absorb, and the client should retry.
var errOverloaded = domain.Shed("the admission queue is full")

const (
	defaultWriterQueue = 16384
	writerMaxBatch     = 512
	// maxBatchWait bounds one transaction even when its callers allow more.
	maxBatchWait = 10 * time.Second
)

// writers are the group-commit writers; a user's admissions always go to
// the same one (hash of the user id), so a hot user's batches stay whole.
type writers []*writer

func newWriters(n, queue int, store persistence.Store, reg prometheus.Registerer) writers {
	batchSize := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "tally_commit_batch_size",
		Help:    "Admissions committed per transaction by the group-commit writers.",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512},
	})
	commit := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "tally_commit_seconds",
		Help:    "Duration of one group-commit transaction.",
		Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14),
	})
	isolations := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tally_commit_isolations_total",
		Help: "Group-commit batches split and run again apart because the store refused one request's data (only that request fails).",
	})
	if reg != nil {
		reg.MustRegister(batchSize, commit, isolations)
	}
	ws := make(writers, max(n, 1))
	for i := range ws {
		w := &writer{
			store:      store,
			queue:      make(chan *job, queue),
			maxBatch:   writerMaxBatch,
			stop:       make(chan struct{}),
			batchSize:  batchSize,
			commit:     commit,
			isolations: isolations,
		}
		w.stopped.Add(1)
		go w.run()
		ws[i] = w
	}
	return ws
}

func (ws writers) submit(userHash uint32, j *job) { ws[userHash%uint32(len(ws))].submit(j) }

// depth is how many admissions wait for the group commit or are in its
// running transactions.
func (ws writers) depth() int64 {
	var n int64
	for _, w := range ws {
		n += int64(len(w.queue)) + w.waiting.Load()
	}
	return n
}

// shedCount is how many admissions found a writer's queue full.
func (ws writers) shedCount() int64 {
	var n int64
	for _, w := range ws {
		n += w.shed.Load()
	}
	return n
}

func (ws writers) close() {
	for _, w := range ws {
		w.close()
	}
}

// submit queues j; when the queue is full, j is answered at once with 503.
func (w *writer) submit(j *job) {
	select {
	case w.queue <- j:
	default:
		w.shed.Add(1)
		j.deliver(persistence.AdmitResult{}, errOverloaded)
	}
}

func (w *writer) close() {
	close(w.stop)
	w.stopped.Wait()
}

// run is the writer's loop. At most one transaction is in flight; while it
// runs, new jobs queue up for the next one. Every job is answered by its
// own deadline, whatever the store does: a job still waiting when its
// deadline comes is answered "not started" (nothing was written), and one
// whose transaction is still running is answered "outcome unknown" (the
// actor then looks the outcome up). So a store that hangs yields 503s
// within each request's deadline, never a 504 for the callers that joined a
// batch early, and never a queue of callers that gave up long ago.
func (w *writer) run() {
	defer w.stopped.Done()
	var (
		pending  []*job // queued for the next transaction
		inflight []*job // in the running transaction; nil once answered
		done     chan batchResult
		timer    = time.NewTimer(time.Hour)
	)
	defer timer.Stop()
	// expire answers every job whose answer deadline has come.
	expire := func(now time.Time) {
		for i, j := range inflight {
			if j != nil && !j.answerBy.After(now) {
				j.deliver(persistence.AdmitResult{}, domain.Unavailable("database", errCommitPending))
				inflight[i] = nil
			}
		}
		kept := pending[:0]
		for _, j := range pending {
			if !j.answerBy.After(now) {
				j.deliver(persistence.AdmitResult{}, domain.Unavailable("database", errNotStarted))
				continue
			}
			kept = append(kept, j)
		}
		clear(pending[len(kept):])
		pending = kept
	}
	for {
		w.waiting.Store(int64(len(pending) + len(inflight)))
		if done == nil && len(pending) > 0 {
			expire(time.Now()) // never start what nobody waits for
		}
		if done == nil && len(pending) > 0 {
			n := min(len(pending), w.maxBatch)
			inflight, done = w.start(pending[:n])
			pending = append(pending[:0:0], pending[n:]...)
		}
		resetTimer(timer, earliest(pending, inflight))
		select {
		case j := <-w.queue:
			pending = append(pending, j)
			// Take whatever else is queued now, so one wake-up fills a batch.
		fill:
			for len(pending) < w.maxBatch {
				select {
				case j := <-w.queue:
					pending = append(pending, j)
				default:
					break fill
				}
			}
		case r := <-done:
			r.answer(inflight)
			inflight, done = nil, nil
		case <-timer.C:
			expire(time.Now())
		case <-w.stop:
			if done != nil {
				r := <-done // let the running transaction finish and answer it
				r.answer(inflight)
			}
			for _, j := range pending {
				j.deliver(persistence.AdmitResult{}, domain.Unavailable("accounting", errors.New("shutting down")))
			}
			w.failQueued()
			return
		}
	}
}

// errCommitPending answers a caller whose transaction had not finished by
// its deadline: the commit may still happen, so its outcome is looked up.
var errCommitPending = errors.New("the commit did not finish within the request deadline")

// errNotStarted answers a caller whose admission was still queued behind a
// slow transaction at its deadline: nothing was written.
var errNotStarted = errors.New("the admission was not started within the request deadline (the database is slow or unreachable)")

// batchResult is one batch's outcome, request by request: errs[i] (nil
// when errs is) or else res[i].
type batchResult struct {
	res  []persistence.AdmitResult
	errs []error
}

// answer delivers each job its own result; jobs answered at their deadline
// already are nil.
func (r batchResult) answer(jobs []*job) {
	for i, j := range jobs {
		switch {
		case j == nil:
		case r.errs != nil && r.errs[i] != nil:
			j.deliver(persistence.AdmitResult{}, r.errs[i])
		default:
			j.deliver(r.res[i], nil)
		}
	}
}

// start runs one transaction for batch in its own goroutine. The
// transaction may run until the latest caller's deadline (capped), so that
// a slow commit for patient callers is not cut short by an impatient one;
// each caller is answered by its own deadline by run.
func (w *writer) start(batch []*job) ([]*job, chan batchResult) {
	jobs := make([]*job, len(batch))
	copy(jobs, batch)
	now := time.Now()
	var deadline time.Time
	reqs := make([]persistence.AdmitRequest, len(jobs))
	for i, j := range jobs {
		reqs[i] = *j.req
		if j.answerBy.After(deadline) {
			deadline = j.answerBy
		}
	}
	if limit := now.Add(maxBatchWait); deadline.After(limit) {
		deadline = limit
	}
	done := make(chan batchResult, 1)
	go func() {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		defer cancel()
		r := w.admitApart(ctx, reqs)
		w.batchSize.Observe(float64(len(reqs)))
		w.commit.Observe(time.Since(now).Seconds())
		done <- r
	}()
	return jobs, done
}

// earliest is the first answer deadline among the jobs still owed one.
func earliest(pending, inflight []*job) time.Time {
	var t time.Time
	for _, list := range [][]*job{pending, inflight} {
		for _, j := range list {
			if j == nil {
				continue
			}
			if t.IsZero() || j.answerBy.Before(t) {
				t = j.answerBy
			}
		}
	}
	return t
}

func resetTimer(t *time.Timer, at time.Time) {
	if at.IsZero() {
		at = time.Now().Add(time.Hour)
	}
	t.Reset(max(time.Until(at), 0))
}

// admitApart runs reqs as one transaction and, when the store refuses the
// data of a request in it (persistence.ErrRequestData: nothing of the
// batch committed), runs the two halves again apart, down to the request
// at fault, which alone gets the error. Every other request is then
// decided exactly as if the bad one had not been in its batch: the halves
// commit in order, so one user's requests keep their order. Any other error
// fails the whole batch, as before: its outcome is unknown, and each caller
// looks its own up.
func (w *writer) admitApart(ctx context.Context, reqs []persistence.AdmitRequest) batchResult {
	res, err := w.admit(ctx, reqs)
	if err == nil {
		return batchResult{res: res}
	}
	if len(reqs) == 1 || !errors.Is(err, persistence.ErrRequestData) || ctx.Err() != nil {
		errs := make([]error, len(reqs))
		for i := range errs {
			errs[i] = err
		}
		return batchResult{errs: errs}
	}
	w.isolations.Inc()
	mid := len(reqs) / 2
	a, b := w.admitApart(ctx, reqs[:mid]), w.admitApart(ctx, reqs[mid:])
	r := batchResult{res: append(grow(a.res, mid), grow(b.res, len(reqs)-mid)...)}
	if a.errs != nil || b.errs != nil {
		r.errs = append(grow(a.errs, mid), grow(b.errs, len(reqs)-mid)...)
	}
	return r
}

// grow returns s, or n zero values when s is nil (a half that had no
// results, or no errors).
func grow[T any](s []T, n int) []T {
	if s == nil {
		return make([]T, n)
	}
	return s
}

// admit runs one transaction. A panic in the store is a bug; it is turned
// into an internal error for every caller of the batch (whose outcome the
// actors then look up) instead of taking the whole process down.
func (w *writer) admit(ctx context.Context, reqs []persistence.AdmitRequest) (res []persistence.AdmitResult, err error) {
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
