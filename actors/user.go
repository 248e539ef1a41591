package actors

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// maxFenceRetries bounds how often one admission is re-decided after the
// store's fence reports that the user's plan or anchor changed under it.
const maxFenceRetries = 3

// userActor holds one user's state: the user row and the current period's
// counters. It is rebuilt from the Store whenever it is (re)started, so a
// passivated or crashed actor loses nothing.
type userActor struct {
	id   string
	deps *deps

	user        *domain.User         // nil until loaded
	period      domain.Period        // the period counters belong to
	counters    persistence.Counters // usage in period, as last confirmed by the store
	loaded      bool                 // counters are valid for period
	passivating bool                 // asked to stop once it owes no answer (beside loaded: one padding for both)
	confirmedAt time.Time            // when the store last confirmed counters

	// Admissions handed to the writer and not yet settled (admit.go);
	// settled holds those the writer answered itself, until absorbed.
	settled  *settledLog
	sink     *resultSink // made with settled, on the first admission
	inflight map[uint64]*inflight
	nextID   uint64
	reserved int64 // in-flight admissions in the current period
	waiting  []waiter
	// epoch is, in cluster mode, the partition epoch under which user and
	// counters were loaded and admissions are decided (ownership.go); 0 in
	// single-node mode.
	epoch int64
	// limitNoted is the limit-reached alert recorded last (alerts.go);
	// nil until the user is first refused with alerts on.
	limitNoted *limitNote
}

func (a *userActor) Receive(ctx actor.Context) {
	if a.id == "" {
		// The first message names the user (every message a shard
		// forwards to this actor is for the same user).
		if m, ok := ctx.Message().(userMessage); ok {
			a.id = m.userID()
		}
	}
	if a.absorb() {
		// Creates that waited for those results go before this message.
		a.drainWaiting(ctx)
	}
	switch m := ctx.Message().(type) {
	case *actor.Started:
		// A restart after a panic gets a fresh instance: state is reloaded
		// lazily from the store by the next message.
	case wake:
		a.stopIfPassivating(ctx) // the results are absorbed above
	case *createSession:
		a.guard(m, func() { a.onCreate(ctx, m, 0) })
	case *admitDone:
		if e := a.inflight[m.id]; e != nil {
			a.guard(e.m, func() { a.onAdmitDone(ctx, m) })
		}
	case *passivate:
		a.onPassivate(ctx)
	case userMessage:
		// Anything but a create may change what the user may do (a plan,
		// a reset, a completed session): the posted rejection goes first.
		a.deps.rejects.clear(a.id)
		a.guard(m, func() { m.answer(a.handle(m)) })
	}
}

// guard turns a panic into an internal error answer to the caller — at
// once, not a timeout — and drops the state, so the next message reloads it
// from the store.
func (a *userActor) guard(caller userMessage, f func()) {
	defer func() {
		if p := recover(); p != nil {
			a.forget()
			a.deps.log.Error("user actor panicked", "user", a.id, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			caller.answer(&reply{err: &domain.Error{Code: domain.CodeInternal, Message: "internal error", Err: fmt.Errorf("panic: %v", p)}})
		}
	}()
	f()
}

// handle answers one request other than a create (those are pipelined:
// admit.go).
func (a *userActor) handle(m userMessage) *reply {
	if time.Until(m.due()) <= 0 {
		// The caller has stopped waiting (it queued behind slow work):
		// doing the work now would only delay the requests behind it.
		return &reply{err: &domain.Error{Code: domain.CodeTimeout, Message: "request deadline exceeded before the user's accounting could start it"}}
	}
	if a.deps.parts != nil {
		if err := a.owned(); err != nil {
			return &reply{err: err}
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), workDeadline(m.due()))
	defer cancel()
	switch m := m.(type) {
	case *getUsage:
		return a.usage(ctx)
	case *prepareUpload:
		return a.prepareUpload(ctx, m)
	case *putUser:
		return a.putUser(ctx, a.deps.now(), m.by, domain.EventPutUser, m.plan, m.anchor)
	case *resetUsage:
		// The new period starts at the change's time: the reset's event
		// says when, and its after says the period starts then.
		now := a.deps.now()
		return a.putUser(ctx, now, m.by, domain.EventResetUsage, nil, &now)
	case *getUser:
		return a.getUser(ctx)
	case *completeSession:
		return a.complete(ctx, m)
	case *failSession:
		return a.fail(ctx, m)
	}
	return &reply{err: fmt.Errorf("user actor: unexpected message %T", m)}
}

// forget drops the cached state; the next request reloads it from the store.
// Called after any store error whose outcome is unknown.
func (a *userActor) forget() {
	a.deps.rejects.clear(a.id)
	a.user = nil
	a.loaded = false
}

// current reports whether user, period and counters are current for now,
// i.e. whether refresh(…, now, false) has nothing to do.
func (a *userActor) current(now time.Time) bool {
	return a.user != nil && a.loaded && a.user.Period(now).Start.Equal(a.period.Start)
}

// refresh makes user, period and counters current for now: it provisions the
// user on first sight (through the loader, batched with other cold actors),
// and reloads counters when the period rolled over or when reload is set
// (the store may have moved on: another process, or an error whose outcome
// is unknown).
func (a *userActor) refresh(ctx context.Context, now time.Time, reload bool) error {
	if a.user != nil && reload {
		// Re-confirming a known user (its refusals, once a second at its
		// limit): user and counters in one read.
		p := a.user.Period(now)
		u, c, err := a.deps.store.LoadUserUsage(ctx, a.id, p.Start)
		switch {
		case err == nil:
			a.setUser(u)
			if np := u.Period(now); !np.Start.Equal(p.Start) {
				// The anchor moved under us: the period to load is another.
				if c, err = a.deps.store.LoadUsage(ctx, a.id, np.Start); err != nil {
					a.forget()
					return err
				}
				p = np
			}
			a.adoptLoaded(p, c, now)
			return nil
		case errors.Is(err, domain.ErrNotFound):
			a.user = nil // provisioned again below
		default:
			a.forget()
			return err
		}
	}
	if a.user == nil {
		// First sight (a cold actor, or state dropped after an error): the
		// user, provisioned if new, and its current counters in one read,
		// shared with the other actors loading now (loader.go).
		l, err := a.deps.loader.load(ctx, a.id, now)
		if err != nil {
			a.forget()
			return err
		}
		a.setUser(l.User)
		if p := a.user.Period(now); !p.Start.Equal(l.Period.Start) {
			// Cannot happen with a correct store; never adopt the
			// counters of another period.
			a.forget()
			return fmt.Errorf("user %s: store loaded the period %+v, the user's is %+v", a.id, l.Period, p)
		}
		a.adoptLoaded(l.Period, l.Counters, now)
		return nil
	}
	p := a.user.Period(now)
	if reload || !a.loaded || !p.Start.Equal(a.period.Start) {
		c, err := a.deps.store.LoadUsage(ctx, a.id, p.Start)
		if err != nil {
			a.forget()
			return err
		}
		a.adoptLoaded(p, c, now)
	}
	return nil
}

// adoptLoaded takes counters just read from the store for period p.
func (a *userActor) adoptLoaded(p domain.Period, c persistence.Counters, now time.Time) {
	a.period, a.counters, a.loaded = p, c, true
	a.confirmedAt = now
	a.deps.cache.Put(a.id, p.Start, c)
	// Reservations count only in-flight admissions of this period.
	a.reserved = 0
	for _, e := range a.inflight {
		if e.req.Session.PeriodStart.Equal(p.Start) {
			a.reserved++
		}
	}
}

func (a *userActor) plan() (domain.Plan, error) {
	p, ok := a.deps.catalog.Plan(a.user.Plan)
	if !ok {
		// The plans file no longer defines the user's plan: an operator
		// error that must not silently admit or reject.
		return domain.Plan{}, &domain.Error{Code: domain.CodeInternal, Message: "internal error",
			Err: fmt.Errorf("user %s is on plan %q, which the catalog does not define", a.id, a.user.Plan)}
	}
	return p, nil
}

func (a *userActor) report() (domain.Report, error) {
	plan, err := a.plan()
	if err != nil {
		return domain.Report{}, err
	}
	return domain.Report{UserID: a.id, Plan: plan, Period: a.period, Usage: a.counters.Usage}, nil
}

// usage reports the current period. It reloads from the store: another
// process may have admitted or completed sessions for this user.
func (a *userActor) usage(ctx context.Context) *reply {
	if err := a.refresh(ctx, a.deps.now(), true); err != nil {
		return &reply{err: err}
	}
	rep, err := a.report()
	return &reply{err: err, account: &account{report: rep, user: *a.user}}
}

func (a *userActor) getUser(ctx context.Context) *reply {
	u, err := a.deps.store.GetUser(ctx, a.id)
	if err != nil {
		return &reply{err: err}
	}
	a.setUser(u)
	a.loaded = false
	if err := a.refresh(ctx, a.deps.now(), false); err != nil {
		return &reply{err: err}
	}
	rep, err := a.report()
	return &reply{err: err, account: &account{user: *a.user, report: rep}}
}

// putUser makes an admin change of the user at now; the store records it
// in the audit trail as kind, by by, in the change's transaction.
func (a *userActor) putUser(ctx context.Context, now time.Time, by domain.Origin, kind domain.EventKind, plan *string, anchor *time.Time) *reply {
	if plan != nil {
		if _, ok := a.deps.catalog.Plan(*plan); !ok {
			return &reply{err: &domain.Error{Code: domain.CodeValidation, Message: "invalid request",
				Fields: []domain.FieldError{{Field: "plan", Message: "must be one of the catalog's plans"}}}}
		}
	}
	if anchor != nil {
		t := anchor.UTC().Truncate(time.Microsecond)
		anchor = &t
	}
	u, err := a.deps.store.PutUser(ctx, persistence.UserChange{ID: a.id, Plan: plan, Anchor: anchor, Now: now, Kind: kind, By: by})
	if err != nil {
		a.forget()
		return &reply{err: err}
	}
	a.setUser(u)
	a.loaded = false // the anchor may have moved the period
	if err := a.refresh(ctx, now, false); err != nil {
		return &reply{err: err}
	}
	rep, err := a.report()
	return &reply{err: err, account: &account{user: *a.user, report: rep}}
}

func (a *userActor) prepareUpload(ctx context.Context, m *prepareUpload) *reply {
	now := a.deps.now()
	if err := a.refresh(ctx, now, false); err != nil {
		return &reply{err: err}
	}
	s, err := a.deps.store.GetSession(ctx, m.session)
	if err != nil {
		return &reply{err: err}
	}
	if s.UserID != a.id {
		return &reply{err: domain.ErrNotFound}
	}
	plan, err := a.plan()
	if err != nil {
		return &reply{err: err}
	}
	if err := domain.CheckFileSize(plan, m.sizeMB, a.period); err != nil {
		return &reply{err: err}
	}
	s, err = a.deps.store.MarkUploading(ctx, m.session, now)
	if err != nil {
		return &reply{err: err}
	}
	return &reply{session: s, account: &account{plan: plan}}
}

func (a *userActor) complete(ctx context.Context, m *completeSession) *reply {
	var alerts *domain.AlertPlan
	if a.deps.alerts != nil {
		// The thresholds of the user's plan as it is now: the completion
		// records the alerts of the minutes limit it crosses.
		if err := a.refresh(ctx, a.deps.now(), false); err != nil {
			return &reply{err: err}
		}
		alerts = a.deps.alerts.of(a.user.Plan)
	}
	s, c, err := a.deps.store.CompleteSession(ctx, m.by, m.session, m.seconds, a.deps.now(), alerts)
	if err != nil {
		if !isClientError(err) {
			a.forget()
		}
		return &reply{err: err}
	}
	a.adopt(s.PeriodStart, c)
	return &reply{session: s}
}

func (a *userActor) fail(ctx context.Context, m *failSession) *reply {
	s, err := a.deps.store.FailSession(ctx, m.by, m.session, a.deps.now())
	return &reply{session: s, err: err}
}

// isClientError reports whether err is an answer about the request (not
// found, conflict, invalid) rather than a failure with an unknown outcome.
func isClientError(err error) bool {
	switch domain.ErrorCode(err) {
	case domain.CodeNotFound, domain.CodeConflict, domain.CodeValidation:
		return true
	}
	return false
}

// setUser keeps u as the user, sharing strings the actor already holds: the
// id it was spawned for and the catalog's plan name, instead of the
// copies every store read allocates (memory per active user is a target).
func (a *userActor) setUser(u domain.User) {
	if u.ID == a.id {
		u.ID = a.id
	}
	if p, ok := a.deps.catalog.Plan(u.Plan); ok {
		u.Plan = p.Name
	}
	a.user = &u
}
