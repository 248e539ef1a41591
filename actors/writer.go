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
	// commitAvg is the moving average of a transaction's duration
	// (nanoseconds).
	commitAvg atomic.Int64
}

// job is one admission waiting for its commit. deliver is called exactly
// once, from the writer's goroutine (or the submitter's, when the queue is
// full).
type job struct {
	req      *persistence.AdmitRequest
	answerBy time.Time // when the writer answers at the latest: workDeadline of the request's
	of       *inflight // whose deliver gets the result
}

func (j *job) deliver(res persistence.AdmitResult, err error) { j.of.deliver(res, err) }

// errOverloaded answers admissions that find the writer's queue full: the
// service is past what the store can absorb, and the client should retry.
var errOverloaded = domain.Shed("the admission queue is full")

const (
	defaultWriterQueue = 16384
	writerMaxBatch     = 512
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

// run is the writer's loop: it takes whatever has queued up (up to
// maxBatch), commits it in one transaction on this goroutine, answers each
// job, and starts over; while a transaction runs, the next batch queues up
// in the channel. Running the transaction here rather than on a goroutine
// of its own keeps an admission's path to three hand-offs (request → user
// actor → writer → request; README, "How a create flows").
//
// Every job is answered before its caller stops waiting, whatever the
// store does. A job that cannot expect a commit to finish in the time it
// has left is answered "not started" (nothing was written) instead of
// joining the batch; the transaction is given until the earliest answer
// deadline among the rest, so a store that hangs yields 503s (the outcome
// of a commit cut short is looked up by the actors) within each request's
// deadline.
func (w *writer) run() {
	defer w.stopped.Done()
	var batch []*job
	for {
		select {
		case j := <-w.queue:
			batch = append(batch[:0], j)
		case <-w.stop:
			w.failQueued()
			return
		}
		batch = w.startable(fillBatch(batch, w.queue, w.maxBatch), time.Now())
		if len(batch) == 0 {
			continue
		}
		w.waiting.Store(int64(len(batch)))
		w.commitBatch(batch)
		w.waiting.Store(0)
		clear(batch) // let the answered jobs go
	}
}

// startable answers, "not started", the jobs of batch whose answer
// deadline leaves less than the recent commit time (twice its moving
// average, at least minCommitBudget), and returns the others.
func (w *writer) startable(batch []*job, now time.Time) []*job {
	need := max(minCommitBudget, 2*time.Duration(w.commitAvg.Load()))
	kept := batch[:0]
	for _, j := range batch {
		if j.answerBy.Sub(now) < need {
			j.deliver(persistence.AdmitResult{}, domain.Unavailable("database", errNotStarted))
			continue
		}
		kept = append(kept, j)
	}
	clear(batch[len(kept):])
	return kept
}

// minCommitBudget is the least time left for which a job joins a batch.
const minCommitBudget = 2 * time.Millisecond

// errNotStarted answers a caller whose admission was still queued behind a
// slow transaction too close to its deadline: nothing was written.
var errNotStarted = errors.New("the admission was not started within the request deadline (the database is slow or unreachable)")

// batchResult is one batch's outcome, request by request: errs[i] (nil
// when errs is) or else res[i].
type batchResult struct {
	res  []persistence.AdmitResult
	errs []error
}

// commitBatch runs one transaction for batch, until the earliest of its
// jobs' answer deadlines (capped at maxBatchWait), and answers each job.
func (w *writer) commitBatch(batch []*job) {
	now := time.Now()
	deadline := now.Add(maxBatchWait)
	reqs := make([]persistence.AdmitRequest, len(batch))
	for i, j := range batch {
		reqs[i] = *j.req
		if j.answerBy.Before(deadline) {
			deadline = j.answerBy
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	r := w.admitApart(ctx, reqs)
	cancel()
	took := time.Since(now)
	w.batchSize.Observe(float64(len(reqs)))
	w.commit.Observe(took.Seconds())
	// A moving average (1/8 weight) of the commit time, for startable.
	avg := w.commitAvg.Load()
	w.commitAvg.Store(avg + (int64(took)-avg)/8)
	for i, j := range batch {
		if r.errs != nil && r.errs[i] != nil {
			j.deliver(persistence.AdmitResult{}, r.errs[i])
		} else {
			j.deliver(r.res[i], nil)
		}
	}
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

// fillBatch appends whatever else is queued on ch now, up to max in all:
// one wake-up of a batching loop (the writer, the loader) fills a batch
// without waiting for more.
func fillBatch[T any](batch []T, ch <-chan T, max int) []T {
	for len(batch) < max {
		select {
		case j := <-ch:
			batch = append(batch, j)
		default:
			return batch
		}
	}
	return batch
}
