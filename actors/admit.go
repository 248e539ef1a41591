package actors

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// How a user's actor admits a session
//
// The actor never blocks on a commit. It decides in memory, reserves the
// quota, hands the admission to the group-commit writer and goes on with
// its next message; after COMMIT the writer answers the caller and hands the
// result back (the settled log, or an admitDone message when the actor must
// answer: see deliver). So a hot user has
// many admissions in flight, in one batch, while each stays exact:
//
//   - committed counters alone over a limit → 403 from memory, without a
//     store round trip (re-read from the store first when the counters were
//     last confirmed longer ago than rejectFreshness: only an admin change
//     in another process can make them stale towards "no");
//   - committed + reserved over the limit, committed alone not → the request
//     waits for the in-flight results (one of them may fail and release its
//     reservation), then is decided again;
//   - otherwise → reserve and submit. The store's fence decides for good.
//
// A keyed request (Idempotency-Key) always goes to the store: a retry of an
// admitted request must replay its 200 even when memory says "full".

// rejectFreshness bounds how old the actor's confirmation of its counters
// may be for a rejection to be answered from memory. In-process admin
// changes go through the actor and apply at once; this bounds how long a
// plan upgrade or reset made through another process can be missed.
const rejectFreshness = time.Second

// inflight is an admission handed to the writer, awaiting its commit. It
// is also the writer's job (one allocation per admission, not three): the
// fields the writer reads are set before submit and never changed after.
type inflight struct {
	job
	id      uint64
	m       *createSession
	req     persistence.AdmitRequest
	plan    domain.Plan
	retries int
	sink    *resultSink
}

// resultSink is where the writer delivers a user's results: made once per
// actor, never changed, so the writer's goroutine may read it.
type resultSink struct {
	root  *actor.RootContext
	self  *actor.PID
	cache CounterCache
	user  string
	log   settledLog // the one mutable part, behind its own lock
}

// waiter is a create that waits for in-flight admissions to settle.
type waiter struct {
	m       *createSession
	retries int
}

// admitDone is the writer's result for an in-flight admission whose caller
// the actor answers (not direct).
type admitDone struct {
	id  uint64
	res persistence.AdmitResult
	err error
}

// passivate asks an idle user actor to stop once nothing is in flight.
type passivate struct{}

// onCreate decides one create: answers it from memory, parks it behind
// in-flight admissions, or reserves quota and submits it.
func (a *userActor) onCreate(actx actor.Context, m *createSession, retries int) {
	if time.Until(m.deadline) <= 0 {
		m.answer(&reply{err: &domain.Error{Code: domain.CodeTimeout, Message: "request deadline exceeded before the user's accounting could start it"}})
		return
	}
	if a.deps.parts != nil {
		// Cluster mode: decided only under an epoch this node owns the
		// user's partition under, with the state loaded under it.
		if err := a.owned(); err != nil {
			m.answer(&reply{err: err})
			return
		}
	}
	wc := workCtx{deadline: workDeadline(m.deadline)}
	defer wc.done()
	now := a.deps.now()
	if !a.current(now) {
		if err := a.refresh(wc.get(), now, false); err != nil {
			m.answer(&reply{err: err})
			return
		}
	}
	plan, err := a.plan()
	if err != nil {
		m.answer(&reply{err: err})
		return
	}
	if m.idempotencyKey == "" {
		if err := domain.Admit(plan, a.counters.Usage, a.period); err != nil {
			if now.Sub(a.confirmedAt) > rejectFreshness {
				if err := a.refresh(wc.get(), now, true); err != nil {
					m.answer(&reply{err: err})
					return
				}
				if plan, err = a.plan(); err != nil {
					m.answer(&reply{err: err})
					return
				}
			}
			if err := domain.Admit(plan, a.counters.Usage, a.period); err != nil {
				a.deps.metrics.rejectedFromMemory()
				a.noteLimitReached(err, a.counters.Usage)
				// Valid as long as this actor would answer the same
				// without asking the store (rejects.go).
				err = a.deps.rejects.post(a.id, err, minTime(a.confirmedAt.Add(rejectFreshness), a.period.End), a.epoch)
				m.answer(&reply{err: err})
				return
			}
		}
		withReserved := a.counters.Usage
		withReserved.Sessions += a.reserved
		if domain.Admit(plan, withReserved, a.period) != nil {
			a.waiting = append(a.waiting, waiter{m: m, retries: retries})
			return
		}
	}
	a.submit(actx, m, plan, now, retries)
}

// submit reserves one session of quota and hands the admission to the
// group-commit writer, whose result comes back through deliver.
func (a *userActor) submit(actx actor.Context, m *createSession, plan domain.Plan, now time.Time, retries int) {
	sid := m.in.ID // chosen by the node that forwarded the create (lookups.go)
	if sid == "" {
		sid = a.deps.newID()
	}
	req := persistence.AdmitRequest{
		Session: domain.Session{
			ID:          sid,
			UserID:      a.id,
			Title:       m.in.Title,
			Language:    m.in.Language,
			STTProvider: m.in.STTProvider,
			Status:      domain.StatusCreated,
			PeriodStart: a.period.Start,
			Epoch:       a.epoch,
			CreatedAt:   now,
			UpdatedAt:   now,
		},
		UserVersion:    a.user.Version,
		PeriodEnd:      a.period.End,
		PlanName:       plan.Name,
		MaxSessions:    plan.MaxSessions,
		MaxSeconds:     plan.MaxSeconds(),
		IdempotencyKey: m.idempotencyKey,
		// No usage row when the counters were loaded: the store creates it
		// in the admission's transaction (only a hint; it stays exact).
		FirstOfPeriod: a.counters.Version == 0,
		// With alerts on, the store records the thresholds this
		// admission's session reaches (nil: alerts off).
		Alerts: a.deps.alerts.of(plan.Name),
		// The epoch this decision was made under (0 in single-node mode):
		// the store commits it only while that epoch is the partition's.
		Epoch: a.epoch,
	}
	if m.idempotencyKey != "" {
		// Only a key's replay compares bodies: no hash for the rest.
		req.RequestHash = m.in.Fingerprint()
	}
	a.nextID++
	id := a.nextID
	if a.inflight == nil {
		// Allocated on first use: most actors of a million idle users never
		// need it, and memory per active user is a target.
		a.inflight = make(map[uint64]*inflight)
	}
	if a.sink == nil {
		a.sink = &resultSink{root: actx.ActorSystem().Root, self: actx.Self(), cache: a.deps.cache, user: a.id}
		a.settled = &a.sink.log
	}
	e := &inflight{id: id, m: m, req: req, plan: plan, retries: retries, sink: a.sink}
	// The job points at the entry's request (never changed once
	// submitted) rather than carrying a second copy of it.
	e.job = job{req: &e.req, answerBy: workDeadline(m.deadline), of: e}
	a.inflight[id] = e
	a.reserved++
	a.deps.writer.submit(userHash(a.id), &e.job)
}

// deliver is the writer's result for e (called once, on the writer's
// goroutine). When the answer needs nothing the actor holds (direct), the
// writer gives it to the caller itself and leaves the result in the
// actor's settled log — before answering, so the caller's next request
// finds the actor's state up to date; the actor is woken by one message
// per burst of results (settled.go). Otherwise the result goes to the
// actor as an admitDone message and the actor answers.
func (e *inflight) deliver(res persistence.AdmitResult, err error) {
	s := e.sink
	r := direct(e, res, err)
	if r == nil {
		s.root.Send(s.self, &admitDone{id: e.id, res: res, err: err})
		return
	}
	if err == nil {
		s.cache.Put(s.user, e.req.Session.PeriodStart, res.Counters)
	}
	if s.log.add(e.id, res, err) {
		s.root.Send(s.self, wake{})
	}
	e.m.answer(r)
}

// direct is the answer to an admission that the writer gives without the
// actor, or nil when the actor must answer: the common outcomes (admitted,
// refused by the store's fence, fenced off by a newer owner of the
// partition, not attempted) need only what the request carries. A replay,
// a changed user and an unknown outcome need the actor (and the store).
func direct(e *inflight, res persistence.AdmitResult, err error) *reply {
	switch {
	case err != nil:
		if neverStored(err) {
			return &reply{err: err}
		}
		return nil
	case res.Outcome == persistence.Admitted:
		return &reply{session: e.req.Session}
	case res.Outcome == persistence.OverLimit:
		return &reply{err: refusal(e.req, e.plan, res.Counters)}
	case res.Outcome == persistence.Fenced:
		// Another node owns the partition now: nothing was written.
		return &reply{err: domain.NotOwner(domain.PartitionOf(e.req.Session.UserID))}
	}
	return nil
}

// neverStored reports whether an admission's error says that nothing was
// written for it: it never reached the store (shed, not started, out of
// time), or the store refused its own data (its batch was run again
// without it). The actor's state needs no repair after these.
func neverStored(err error) bool {
	return domain.ErrorCode(err) == domain.CodeTimeout || errors.Is(err, errOverloaded) ||
		errors.Is(err, errNotStarted) || errors.Is(err, persistence.ErrRequestData)
}

// refusal is the 403 for an admission the store's fence refused: the
// domain's account of which limit the store's counters reached. A fence
// that refuses what its own counters allow is a bug, answered 500.
func refusal(req persistence.AdmitRequest, plan domain.Plan, c persistence.Counters) error {
	period := domain.Period{Start: req.Session.PeriodStart, End: req.PeriodEnd}
	if err := domain.Admit(plan, c.Usage, period); err != nil {
		return err
	}
	return fmt.Errorf("store fenced off an admission that its own counters allow (user %s, usage %+v)", req.Session.UserID, c)
}

// onAdmitDone answers the caller of an admission the writer did not answer,
// then re-decides the creates that waited for it.
func (a *userActor) onAdmitDone(actx actor.Context, d *admitDone) {
	e := a.release(d.id)
	if e == nil {
		return
	}
	a.settle(actx, e, d)
	a.drainWaiting(actx)
	a.stopIfPassivating(actx)
}

// release ends the in-flight admission id: its entry is removed and its
// reservation given back. Nil when it is not in flight.
func (a *userActor) release(id uint64) *inflight {
	e := a.inflight[id]
	if e == nil {
		return nil
	}
	delete(a.inflight, id)
	if len(a.inflight) == 0 {
		// An emptied map keeps its buckets: drop it, so that an active
		// user between admissions costs no more than an idle one.
		a.inflight = nil
	}
	if a.loaded && e.req.Session.PeriodStart.Equal(a.period.Start) {
		a.reserved--
	}
	return e
}

// absorb takes the results the writer answered directly since the last
// message: their reservations end and their counters are adopted. It
// reports whether there were any.
func (a *userActor) absorb() bool {
	if a.settled == nil {
		return false
	}
	done := a.settled.take()
	fenced := false
	for _, d := range done {
		e := a.release(d.id)
		switch {
		case e == nil || d.err != nil:
		case d.res.Outcome == persistence.Fenced:
			fenced = true
		default:
			a.adoptCounters(e.req.Session.PeriodStart, d.res.Counters)
			if d.res.Outcome == persistence.OverLimit {
				// The writer answered the refusal; its alert is recorded here.
				a.noteLimitReached(refusal(e.req, e.plan, d.res.Counters), d.res.Counters.Usage)
			}
		}
	}
	if fenced {
		// A newer owner of the partition may have admitted since these
		// counters were loaded: drop them (owned reloads or refuses).
		a.forget()
	}
	return len(done) > 0
}

func (a *userActor) settle(actx actor.Context, e *inflight, d *admitDone) {
	if d.err != nil {
		e.m.answer(a.resolveUnknown(e.m, e.req, d.err))
		return
	}
	wc := workCtx{deadline: workDeadline(e.m.deadline)}
	defer wc.done()
	r, retry := a.outcome(&wc, e.req, d.res)
	if !retry {
		e.m.answer(r)
		return
	}
	// The user's plan or anchor changed under the decision: decide again
	// with the user re-read from the store.
	if e.retries >= maxFenceRetries {
		e.m.answer(&reply{err: domain.Unavailable("accounting", fmt.Errorf("user %s changed %d times during one admission", a.id, e.retries+1))})
		return
	}
	if err := a.refresh(wc.get(), a.deps.now(), true); err != nil {
		e.m.answer(&reply{err: err})
		return
	}
	a.onCreate(actx, e.m, e.retries+1)
}

func (a *userActor) drainWaiting(actx actor.Context) {
	if len(a.waiting) == 0 {
		return
	}
	w := a.waiting
	a.waiting = nil
	for _, x := range w {
		a.guard(x.m, func() { a.onCreate(actx, x.m, x.retries) })
	}
}

func (a *userActor) onPassivate(actx actor.Context) {
	a.passivating = true
	a.deps.rejects.clear(a.id)
	a.stopIfPassivating(actx)
}

// stopIfPassivating stops the actor once it owes nobody an answer. The shard
// sends nothing after passivate and holds the user's new messages until the
// Terminated, so no message is lost behind the stop.
func (a *userActor) stopIfPassivating(actx actor.Context) {
	if a.passivating && len(a.inflight) == 0 && len(a.waiting) == 0 {
		actx.Stop(actx.Self())
	}
}

// outcome turns a result the writer did not answer (direct) into the
// reply; retry is true when the user changed under the decision and it
// must be made again.
func (a *userActor) outcome(wc *workCtx, req persistence.AdmitRequest, r persistence.AdmitResult) (_ *reply, retry bool) {
	switch r.Outcome {
	case persistence.Replayed:
		if r.Record == nil {
			return &reply{err: fmt.Errorf("store replayed key %q without a record", req.IdempotencyKey)}, false
		}
		return a.replay(wc.get(), req, *r.Record), false
	case persistence.StaleUser, persistence.UnknownUser:
		return nil, true
	case persistence.Fenced: // answered by the writer (direct); here for completeness
		a.forget()
		return &reply{err: domain.NotOwner(domain.PartitionOf(req.Session.UserID))}, false
	}
	return &reply{err: fmt.Errorf("store returned outcome %v", r.Outcome)}, false
}

// adopt takes counters the store confirmed and hands them to the cache.
func (a *userActor) adopt(periodStart time.Time, c persistence.Counters) {
	a.deps.cache.Put(a.id, periodStart, c)
	a.adoptCounters(periodStart, c)
}

// adoptCounters takes counters the store confirmed. Results of one user
// arrive in commit order, but a re-read may have overtaken them: the
// version decides.
func (a *userActor) adoptCounters(periodStart time.Time, c persistence.Counters) {
	if a.loaded && periodStart.Equal(a.period.Start) && c.Version >= a.counters.Version {
		a.counters = c
		a.confirmedAt = a.deps.now()
	}
}

// replay answers a request whose Idempotency-Key was seen before: the first
// answer again, or 409 when the key came with another body.
func (a *userActor) replay(ctx context.Context, req persistence.AdmitRequest, rec persistence.IdempotencyRecord) *reply {
	if rec.RequestHash != req.RequestHash {
		return &reply{err: keyConflict(req.IdempotencyKey)}
	}
	a.deps.metrics.replayed()
	s, err := recordedAnswer(ctx, a.deps.store, rec)
	return &reply{session: s, err: err}
}

// resolveUnknown answers an admission whose transaction failed with an
// unknown outcome (the COMMIT may have happened, its reply lost). It looks
// the outcome up instead of guessing: by the Idempotency-Key when there is
// one, else by the session id generated for the attempt. Only when the store
// cannot tell does the client get the 503 — with a key, its retry is then
// decided afresh or replayed, whichever is true. The counters are reloaded
// before the next decision.
func (a *userActor) resolveUnknown(m *createSession, req persistence.AdmitRequest, cause error) *reply {
	if neverStored(cause) {
		return &reply{err: cause}
	}
	a.forget()
	ctx, cancel := context.WithDeadline(context.Background(), resolveDeadline(m.deadline))
	defer cancel()
	var (
		found *reply
		err   error
	)
	if req.IdempotencyKey != "" {
		var rec persistence.IdempotencyRecord
		if rec, err = a.deps.store.LookupIdempotencyKey(ctx, a.id, req.IdempotencyKey); err == nil {
			found = a.replay(ctx, req, rec)
		}
	} else {
		var s domain.Session
		if s, err = a.deps.store.GetSession(ctx, req.Session.ID); err == nil {
			found = &reply{session: s}
		}
	}
	switch {
	case err == nil:
		a.deps.metrics.resolved("committed")
		// The commit moved the counters without the actor seeing them.
		// Reload them now, which also hands them to the cache: otherwise
		// Redis would stay behind until this user's next request, which
		// may never come (the cache is only re-seeded after Redis fails).
		if rerr := a.refresh(ctx, a.deps.now(), true); rerr != nil {
			a.forget()
		}
		return found
	case domain.ErrorCode(err) == domain.CodeNotFound:
		a.deps.metrics.resolved("not_committed")
	default:
		a.deps.metrics.resolved("unknown")
	}
	return &reply{err: cause}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// workCtx is the context of one message's store calls, made on first use:
// most creates are decided from memory and never call the store, and a
// context with a deadline costs a timer.
type workCtx struct {
	deadline time.Time
	ctx      context.Context
	cancel   context.CancelFunc
}

func (w *workCtx) get() context.Context {
	if w.ctx == nil {
		w.ctx, w.cancel = context.WithDeadline(context.Background(), w.deadline)
	}
	return w.ctx
}

func (w *workCtx) done() {
	if w.cancel != nil {
		w.cancel()
	}
}
