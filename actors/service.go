package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// CounterCache receives every counter value the actors confirm with the
// store. It is a cache: Put must not block the actor and must never let an
// older version overwrite a newer one (package rediscache implements it with
// a versioned compare-and-set).
type CounterCache interface {
	Put(userID string, periodStart time.Time, c persistence.Counters)
}

// Options configures a Service.
type Options struct {
	Store   persistence.Store
	Cache   CounterCache // nil: no cache
	Catalog *domain.Catalog
	Logger  *slog.Logger
	// Registry receives the actors' metrics (live actors, rejections
	// answered from memory); nil registers nothing.
	Registry prometheus.Registerer
	// IdleTimeout is how long a user's actor stays in memory unused.
	IdleTimeout time.Duration
	// Shards is the number of routing actors; 0 picks a default.
	Shards int
	// Now is the clock; nil uses time.Now.
	Now func() time.Time
	// RequestTimeout bounds every request (budget.go): the caller's
	// context may end it sooner, never later.
	RequestTimeout time.Duration
	// Writers is the number of group-commit writers (default 1): with the
	// batch in one round trip, one writer making bigger batches admits as
	// much as two with less Postgres CPU
	// (docs/decisions/0005-one-group-commit-writer.md).
	Writers int
	// MaxUserInFlight bounds one user's requests in flight in this process
	// (gate.go); the excess is answered 503 at once. 0: no bound.
	MaxUserInFlight int
	// WriterQueue is how many admissions may wait for the group commit
	// (default 16384); past it they are answered 503 at once. The HTTP
	// edge's in-flight bound normally keeps the queue far below it.
	WriterQueue int
	// IdempotencyTTL is how long Idempotency-Keys are kept at least
	// (default 24h); older ones are pruned every PruneEvery (default 10m).
	IdempotencyTTL time.Duration
	PruneEvery     time.Duration
	// Ownership is cluster mode: under which epoch this node owns each
	// partition of users (ownership.go). Nil is single-node mode: every
	// user is this process's, and nothing of cluster mode runs.
	Ownership Ownership
	// AlertPercents are the usage alerts' thresholds (alerts.go); nil or
	// empty: alerts off, nothing is recorded.
	AlertPercents []int
}

// Service is the accounting core behind the HTTP edge, on top of the
// per-user actors: it implements domain.Accounts, the port the edge calls.
type Service struct {
	system  *actor.ActorSystem
	shards  []*actor.PID
	routes  routes
	deps    *deps
	store   persistence.Store
	timeout time.Duration
	live    atomic.Int64

	dispatcher *pooledDispatcher
	gate       *userGate   // nil: no per-user bound
	parts      *partitions // nil: single-node mode (ownership.go)

	// troubleAt is when an answer last reported the store unavailable
	// (unix nanoseconds). A user's actor that does not answer in time while
	// the store is failing is waiting on the store: that is a 503.
	troubleAt atomic.Int64

	stopSweep chan struct{}
	swept     sync.WaitGroup
	closeOnce sync.Once
}

var _ domain.Accounts = (*Service)(nil)

// deps is what every user actor shares.
type deps struct {
	store   persistence.Store
	cache   CounterCache
	catalog *domain.Catalog
	now     func() time.Time
	newID   func() string
	log     *slog.Logger
	metrics *metrics
	writer  writers
	loader  *loader
	rejects *rejectBoard
	parts   *partitions    // nil: single-node mode
	alerts  alertPlans     // nil: alerts off (alerts.go)
	limits  *limitRecorder // records limit-reached alerts; nil when alerts are off
}

type nopCache struct{}

func (nopCache) Put(string, time.Time, persistence.Counters) {}

// New starts the actor system and its shards.
func New(o Options) (*Service, error) {
	if o.Store == nil || o.Catalog == nil {
		return nil, errors.New("actors: Store and Catalog are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Cache == nil {
		o.Cache = nopCache{}
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 2 * time.Minute
	}
	if o.Shards <= 0 {
		o.Shards = 64
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 5 * time.Second
	}
	if o.Writers <= 0 {
		o.Writers = 1
	}
	if o.WriterQueue <= 0 {
		o.WriterQueue = defaultWriterQueue
	}
	if o.IdempotencyTTL <= 0 {
		o.IdempotencyTTL = 24 * time.Hour
	}
	if o.PruneEvery <= 0 {
		o.PruneEvery = 10 * time.Minute
	}
	clock := o.Now
	if clock == nil {
		clock = time.Now
	}
	s := &Service{store: o.Store, timeout: o.RequestTimeout, stopSweep: make(chan struct{})}
	if o.MaxUserInFlight > 0 {
		s.gate = newUserGate(o.MaxUserInFlight)
	}
	if o.Ownership != nil {
		s.parts = &partitions{own: o.Ownership}
	}
	s.deps = &deps{
		store:   o.Store,
		cache:   o.Cache,
		catalog: o.Catalog,
		// Postgres keeps microseconds: truncating here makes every time the
		// actor computes with equal to the one it reads back.
		now:     func() time.Time { return clock().UTC().Truncate(time.Microsecond) },
		newID:   func() string { return uuid.Must(uuid.NewV7()).String() },
		log:     o.Logger,
		metrics: newMetrics(o.Registry, &s.live),
		writer:  newWriters(o.Writers, o.WriterQueue, o.Store, o.Registry),
		loader:  newLoader(o.Store, o.Registry),
		rejects: newRejectBoard(),
		parts:   s.parts,
		alerts:  newAlertPlans(o.Catalog, o.AlertPercents),
	}
	if s.deps.alerts != nil {
		s.deps.limits = newLimitRecorder(o.Store)
	}
	registerQueueMetrics(o.Registry, s.gate, s.deps.writer)
	actorLog := o.Logger.With("component", "protoactor")
	s.system = actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return actorLog }))

	s.dispatcher = newPooledDispatcher(64, 300)
	// One Props for every user: a user's actor learns its id from its first
	// message, which saves a Props and a closure per live user.
	// User actors get the lock-free mailbox: an idle one holds a stub node
	// instead of a ring buffer, less memory per live actor with round trips
	// and hot-user throughput unchanged (docs/performance.md, "Figures
	// behind code choices").
	userProps := actor.PropsFromProducer(func() actor.Actor { return &userActor{deps: s.deps} },
		actor.WithDispatcher(s.dispatcher), actor.WithMailbox(actor.UnboundedLockfree()))
	props := actor.PropsFromProducer(newShard(userProps, o.IdleTimeout, &s.live, &s.routes), actor.WithDispatcher(s.dispatcher))
	for i := 0; i < o.Shards; i++ {
		pid, err := s.system.Root.SpawnNamed(props, fmt.Sprintf("shard-%d", i))
		if err != nil {
			return nil, fmt.Errorf("actors: spawn shard %d: %w", i, err)
		}
		s.shards = append(s.shards, pid)
	}

	// Look for idle actors often enough that one lives at most ~1.25×
	// IdleTimeout (plus the queue of others found idle with it), and stop
	// the ones found a few at a time, every tick (shard.go).
	scanEvery := max(o.IdleTimeout/4, 10*time.Millisecond)
	tick := min(scanEvery, 50*time.Millisecond)
	s.swept.Add(1)
	go func() {
		defer s.swept.Done()
		t := time.NewTicker(tick)
		defer t.Stop()
		var lastScan time.Time
		for {
			select {
			case <-s.stopSweep:
				return
			case now := <-t.C:
				scan := now.Sub(lastScan) >= scanEvery
				if scan {
					lastScan = now
				}
				for _, pid := range s.shards {
					s.system.Root.Send(pid, &sweep{now: now, scan: scan})
				}
			}
		}
	}()
	s.swept.Add(1)
	go s.pruneKeys(o.IdempotencyTTL, o.PruneEvery, o.Logger)
	return s, nil
}

// pruneKeys deletes Idempotency-Keys older than ttl, every `every`. Keys
// live at least ttl: a client may retry a create for that long and still
// get its first answer.
func (s *Service) pruneKeys(ttl, every time.Duration, log *slog.Logger) {
	defer s.swept.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stopSweep:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), every/2)
		n, err := s.store.PruneIdempotencyKeys(ctx, s.deps.now().Add(-ttl))
		cancel()
		if err != nil {
			log.Warn("pruning idempotency keys failed; will retry", "err", err)
		} else if n > 0 {
			log.Info("pruned idempotency keys", "deleted", n, "older_than", ttl.String())
		}
	}
}

// busyDepth is the number of admissions waiting for, or in, a group
// commit at which the process counts as busy admitting (Busy): any. Under
// a steady stream a batch is always committing; a trickle (a commit takes
// a few milliseconds) is busy a few percent of the time. Deliveries that
// step aside meanwhile still go out, once per poll. At 8, the alerts
// phase's 64 clients were "busy" too seldom for it to matter: ~1 000
// deliveries/s during the load, 0.84× the admissions of alerts off.
const busyDepth = 1

// Busy reports whether admissions are queueing for the group commit: what
// background work (the webhook dispatcher) reads to step aside.
func (s *Service) Busy() bool { return s.deps.writer.depth() >= busyDepth }

// LiveActors is the number of user actors in memory.
func (s *Service) LiveActors() int64 { return s.live.Load() }

// Close stops the sweeper and every actor. Call it after the HTTP server has
// finished its in-flight requests; messages still queued are dropped.
func (s *Service) Close() {
	s.closeOnce.Do(func() {
		close(s.stopSweep)
		s.swept.Wait()
		for _, pid := range s.shards {
			_ = s.system.Root.PoisonFuture(pid).Wait()
		}
		s.deps.writer.close()
		s.deps.loader.close()
		if s.deps.limits != nil {
			s.deps.limits.close()
		}
		s.system.Shutdown()
		s.dispatcher.stop()
	})
}

// userHash is FNV-1a of the user id, written out over the string: it runs
// for every request (shard, writer and reject-board choice), and hash/fnv
// through its interface allocates the hasher and a copy of the id.
func userHash(userID string) uint32 {
	const (
		offset32 = 2166136261
		prime32  = 16777619
	)
	h := uint32(offset32)
	for i := 0; i < len(userID); i++ {
		h ^= uint32(userID[i])
		h *= prime32
	}
	return h
}

// storeTroubleWindow is how long after a store failure a request that the
// actors did not answer in time is blamed on the store (503) rather than on
// the actor (504).
const storeTroubleWindow = 5 * time.Second

// ask sends m to the user's actor and waits for the reply until deadline.
func (s *Service) ask(ctx context.Context, m userMessage, deadline time.Time) *reply {
	if err := ctx.Err(); err != nil {
		return &reply{err: &domain.Error{Code: domain.CodeTimeout, Message: "request deadline exceeded", Err: err}}
	}
	wait := time.Until(deadline)
	if wait <= 0 {
		return &reply{err: &domain.Error{Code: domain.CodeTimeout, Message: "request deadline exceeded"}}
	}
	id := m.userID()
	if s.parts != nil {
		// Cluster mode: refused at once unless this node owns the user's
		// partition, and counted in flight for Release (ownership.go).
		p := domain.PartitionOf(id)
		if !s.parts.enter(p) {
			return &reply{err: domain.NotOwner(p)}
		}
		defer s.parts.leave(p)
	}
	h := userHash(id)
	if !s.gate.enter(id, h) {
		return &reply{err: errUserBusy}
	}
	defer s.gate.leave(id, h)
	s.send(id, h, m)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case r := <-m.reply():
		if domain.ErrorCode(r.err) == domain.CodeUnavailable {
			s.troubleAt.Store(time.Now().UnixNano())
		}
		return r
	case <-timer.C:
		if time.Since(time.Unix(0, s.troubleAt.Load())) < storeTroubleWindow {
			// The actor is most likely blocked on the failing store (an
			// earlier request of this user is waiting for it): say so, with
			// a Retry-After, rather than blame the actor.
			return &reply{err: domain.Unavailable("database", errors.New("the user's accounting is waiting for the database"))}
		}
		return &reply{err: &domain.Error{Code: domain.CodeTimeout, Message: "the user's accounting did not answer in time"}}
	case <-ctx.Done():
		return &reply{err: &domain.Error{Code: domain.CodeTimeout, Message: "request deadline exceeded", Err: ctx.Err()}}
	}
}

// send hands m to the user's live actor through its route, or to the
// user's shard when there is no open route (route.go).
func (s *Service) send(id string, h uint32, m userMessage) {
	if r := s.routes.get(id); r != nil && r.enter() {
		s.system.Root.Send(r.pid, m)
		r.leave()
		return
	}
	s.system.Root.Send(s.shards[h%uint32(len(s.shards))], m)
}

// CreateSession admits and durably records a session.
func (s *Service) CreateSession(ctx context.Context, userID string, in domain.NewSession, key string) (domain.Session, error) {
	if key == "" {
		// A user known to be over a limit is answered here, without the
		// hop to its actor (rejects.go), if the rejection was decided
		// under the epoch this node owns the user's partition under now
		// (always 0 in single-node mode).
		if epoch, err := s.deps.rejects.get(userID, s.deps.now()); err != nil &&
			(s.parts == nil || epoch == s.parts.epoch(domain.PartitionOf(userID))) {
			s.deps.metrics.rejectedFromMemory()
			return domain.Session{}, err
		}
	}
	d := s.deadline(ctx)
	r := s.ask(ctx, &createSession{user: userID, in: in, idempotencyKey: key, call: newCall(d)}, d)
	return r.session, r.err
}

// GetSession reads the session from the store: the admission committed
// before its 200 went out, so any process can read it at once.
func (s *Service) GetSession(ctx context.Context, userID, sessionID string) (domain.Session, error) {
	ctx, cancel := bounded(ctx, s.deadline(ctx))
	defer cancel()
	sess, err := s.store.GetSession(ctx, sessionID)
	if err != nil {
		return domain.Session{}, err
	}
	if sess.UserID != userID {
		return domain.Session{}, domain.ErrNotFound
	}
	return sess, nil
}

// ListSessions reads the user's sessions from the store, newest first.
func (s *Service) ListSessions(ctx context.Context, userID string, limit int, after *domain.Cursor) ([]domain.Session, error) {
	ctx, cancel := bounded(ctx, s.deadline(ctx))
	defer cancel()
	return s.store.ListSessions(ctx, userID, limit, after)
}

// PrepareUpload checks the file size against the user's plan and marks the
// session uploading.
func (s *Service) PrepareUpload(ctx context.Context, userID, sessionID string, sizeMB float64) (domain.Session, domain.Plan, error) {
	d := s.deadline(ctx)
	r := s.ask(ctx, &prepareUpload{user: userID, session: sessionID, sizeMB: sizeMB, call: newCall(d)}, d)
	return r.session, r.accountOf().plan, r.err
}

// Usage reports the user's current period.
func (s *Service) Usage(ctx context.Context, userID string) (domain.Report, error) {
	d := s.deadline(ctx)
	r := s.ask(ctx, &getUsage{user: userID, call: newCall(d)}, d)
	return r.accountOf().report, r.err
}

// PutUser creates the user or changes plan and/or anchor; the change is
// recorded in the audit trail as made by by.
func (s *Service) PutUser(ctx context.Context, by domain.Origin, userID string, plan *string, anchor *time.Time) (domain.User, domain.Report, error) {
	// The edge checks the anchor too, as it decodes; the core holds the
	// rule for every caller, so no store keeps a period it cannot write.
	if anchor != nil {
		if err := domain.ValidateAnchor(*anchor); err != nil {
			return domain.User{}, domain.Report{}, err
		}
	}
	d := s.deadline(ctx)
	r := s.ask(ctx, &putUser{user: userID, plan: plan, anchor: anchor, by: by, call: newCall(d)}, d)
	a := r.accountOf()
	return a.user, a.report, r.err
}

// GetUser returns the user and its usage, or domain.ErrNotFound.
func (s *Service) GetUser(ctx context.Context, userID string) (domain.User, domain.Report, error) {
	d := s.deadline(ctx)
	r := s.ask(ctx, &getUser{user: userID, call: newCall(d)}, d)
	a := r.accountOf()
	return a.user, a.report, r.err
}

// ResetUsage starts a new billing period now, recorded as made by by.
func (s *Service) ResetUsage(ctx context.Context, by domain.Origin, userID string) (domain.Report, error) {
	d := s.deadline(ctx)
	r := s.ask(ctx, &resetUsage{user: userID, by: by, call: newCall(d)}, d)
	return r.accountOf().report, r.err
}

// CompleteSession records a session's duration through its user's actor,
// which keeps that user's minutes current in memory; the change is recorded
// as made by by.
func (s *Service) CompleteSession(ctx context.Context, by domain.Origin, sessionID string, seconds int64) (domain.Session, error) {
	d := s.deadline(ctx)
	lctx, cancel := bounded(ctx, d)
	sess, err := s.store.GetSession(lctx, sessionID)
	cancel()
	if err != nil {
		return domain.Session{}, err
	}
	r := s.ask(ctx, &completeSession{user: sess.UserID, session: sessionID, seconds: seconds, by: by, call: newCall(d)}, d)
	return r.session, r.err
}

// FailSession marks a session failed through its user's actor, recorded as
// made by by.
func (s *Service) FailSession(ctx context.Context, by domain.Origin, sessionID string) (domain.Session, error) {
	d := s.deadline(ctx)
	lctx, cancel := bounded(ctx, d)
	sess, err := s.store.GetSession(lctx, sessionID)
	cancel()
	if err != nil {
		return domain.Session{}, err
	}
	r := s.ask(ctx, &failSession{user: sess.UserID, session: sessionID, by: by, call: newCall(d)}, d)
	return r.session, r.err
}

// ListUserEvents reads the user's audit events from the store, newest
// first: each was committed with its change, so any process can read it.
func (s *Service) ListUserEvents(ctx context.Context, userID string, limit int, after *domain.EventCursor) ([]domain.UserEvent, error) {
	ctx, cancel := bounded(ctx, s.deadline(ctx))
	defer cancel()
	return s.store.ListUserEvents(ctx, userID, limit, after)
}
