// Package persistence declares the stores Tally keeps its state in and the
// contract every implementation meets. Postgres (package postgres) is the
// truth in production; the embedded SQL store (package sqlite) stands in for
// it under `make run`; Redis (package rediscache) only caches counters.
//
// Implementations translate their driver's errors at this edge: a missing
// row is domain.ErrNotFound, a broken connection is a CodeUnavailable
// *domain.Error, and a rejected fence is an AdmitOutcome, never an error.
package persistence

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tally-dev/tally/domain"
)

// Counters is one usage row: a user's usage in one billing period with the
// row's version, which rises with every change. Caches compare versions so
// that an older value never overwrites a newer one.
type Counters struct {
	domain.Usage
	Version int64
}

// AdmitRequest asks to admit one session. The store commits it only if the
// fence holds: the user's version is still UserVersion (plan and anchor did
// not change since the caller decided) and the period's usage is still
// within MaxSessions and MaxSeconds (-1 unlimited). This is what keeps two
// processes, or two activations of one user's actor, from over-admitting.
//
// With an IdempotencyKey, the key is stored in the same transaction as the
// decision, together with the outcome (admitted with the session id, or
// rejected with the plan, limits and usage that rejected it). A request
// whose key is already stored for the user is not decided again: its result
// is Replayed with the stored record, and it changes nothing. A concurrent
// request with the same key waits for the first one's transaction.
type AdmitRequest struct {
	Session     domain.Session // ID, UserID, fields, CreatedAt and PeriodStart set by the caller
	UserVersion int64
	PeriodEnd   time.Time
	PlanName    string // recorded with a keyed rejection, to replay its 403
	MaxSessions domain.Limit
	MaxSeconds  domain.Limit

	IdempotencyKey string // empty: none
	RequestHash    string // fingerprint of the request body, compared on replay

	// FirstOfPeriod is a hint: the caller believes the period has no usage
	// row yet (the counters it loaded have version 0). The store then
	// creates the row in the same transaction as the admission instead of
	// finding it missing first. Only the cost depends on it, never the
	// outcome: a wrong hint is exact too (a row that exists is left alone,
	// one that is missing is created all the same).
	FirstOfPeriod bool

	// Alerts, when set, are the plan's alert thresholds (alerts on): an
	// admitted session whose number in its period (its seq) is a
	// threshold's At of the sessions limit records that threshold's
	// usage.threshold_crossed alert in the admission's transaction
	// (outbox.go). Nil: no alert is recorded.
	Alerts *domain.AlertPlan

	// Epoch is the ownership epoch of the user's partition
	// (domain.PartitionOf) under which the caller decided, in cluster mode;
	// 0 in single-node mode, which checks nothing and costs nothing more.
	// With Epoch > 0 the store commits the admission only if the
	// partition's stored epoch (ClaimPartition) is exactly Epoch at
	// commit, and records Epoch with the session; otherwise the outcome is
	// Fenced and nothing is written. One call's requests are all fenced or
	// all not: a store refuses a batch that mixes them.
	Epoch int64
}

// AdmitOutcome says how the fence decided.
type AdmitOutcome int

// The outcomes of one admission.
const (
	Admitted    AdmitOutcome = iota + 1
	OverLimit                // the period's usage reached a limit; Counters tell which
	StaleUser                // plan or anchor changed since the caller read the user
	UnknownUser              // the user row does not exist
	Replayed                 // the idempotency key was already stored: Record is its first outcome
	Fenced                   // the partition's stored epoch is not the request's: another node owns it now; nothing was written
)

func (o AdmitOutcome) String() string {
	switch o {
	case Admitted:
		return "admitted"
	case OverLimit:
		return "over_limit"
	case StaleUser:
		return "stale_user"
	case UnknownUser:
		return "unknown_user"
	case Replayed:
		return "replayed"
	case Fenced:
		return "fenced"
	}
	return "unknown"
}

// AdmitResult is the outcome of one AdmitRequest. Counters are the period's
// usage after the decision (including this session when admitted); they are
// zero for StaleUser, UnknownUser, Replayed and Fenced.
type AdmitResult struct {
	Outcome  AdmitOutcome
	Counters Counters
	Record   *IdempotencyRecord // set when Replayed
}

// IdempotencyRecord is the stored first outcome of a keyed admission.
type IdempotencyRecord struct {
	UserID      string
	Key         string
	RequestHash string
	Admitted    bool
	SessionID   string // when Admitted

	// What rejected it, when not Admitted: enough to rebuild the same 403.
	PlanName    string
	MaxSessions domain.Limit
	MaxSeconds  domain.Limit
	Usage       domain.Usage
	PeriodStart time.Time
	PeriodEnd   time.Time

	CreatedAt time.Time
}

// UsageRow is one period's counters, as ScanUsage reports them.
type UsageRow struct {
	UserID      string
	PeriodStart time.Time
	PeriodEnd   time.Time
	Counters
}

// UserChange creates a user or changes its plan and/or billing anchor. A nil
// Plan keeps the current plan (the DefaultPlan for a new user); a nil Anchor
// keeps the current anchor (Now for a new user).
//
// It is an admin change: the store records it in the audit trail, in the
// same transaction, as an event of Kind by By at Now (users.go).
type UserChange struct {
	ID     string
	Plan   *string
	Anchor *time.Time
	Now    time.Time
	// Kind is domain.EventResetUsage for a reset (Anchor = Now); empty or
	// domain.EventPutUser otherwise.
	Kind domain.EventKind
	// By is who asked. A change without By.Admin is refused by the store
	// (the event's actor may not be empty) and changes nothing.
	By domain.Origin
}

// UserLoad asks EnsureUsersUsage for one user as of Now: the user,
// provisioned at Now if it is new, and the usage of its period at Now.
type UserLoad struct {
	ID  string
	Now time.Time
}

// UserLoaded answers one UserLoad: the user, its period at the load's Now
// (User.Period(Now), computed from the anchor the store holds) and the
// counters of exactly that period (zero, version 0, when it has no usage
// row yet).
type UserLoaded struct {
	User     domain.User
	Period   domain.Period
	Counters Counters
}

// Store is Tally's source of truth. All methods are safe for concurrent use.
// Every write commits before it returns.
type Store interface {
	// Outbox is the usage alerts' outbox and their webhook deliveries.
	Outbox

	// Migrate brings the schema up to date. Safe to call from several
	// processes at once.
	Migrate(ctx context.Context) error
	// Ping checks that the store answers (readiness).
	Ping(ctx context.Context) error
	Close()

	// EnsureUser returns the user, provisioning it on the default plan with
	// billing anchor now when it is seen for the first time.
	EnsureUser(ctx context.Context, id string, now time.Time) (domain.User, error)
	// GetUser returns the user or domain.ErrNotFound.
	GetUser(ctx context.Context, id string) (domain.User, error)
	// PutUser applies a UserChange, bumps the user's version and records
	// the change's event, in one transaction.
	PutUser(ctx context.Context, c UserChange) (domain.User, error)

	// LoadUsage returns the usage of the period starting at periodStart;
	// zero counters when nothing was recorded yet.
	LoadUsage(ctx context.Context, userID string, periodStart time.Time) (Counters, error)
	// EnsureUsersUsage is EnsureUser followed by LoadUsage of each user's
	// current period, for many users at once: what user actors activated
	// together read first (one round trip on Postgres instead of two per
	// user). Each load gets the user provisioned on the default plan with
	// anchor Now when it is new (once, however many calls race for it),
	// and the counters of User.Period(Now) — the period of the anchor
	// actually stored, never of a guessed one. Results are in load order;
	// an error means none is known.
	EnsureUsersUsage(ctx context.Context, loads []UserLoad) ([]UserLoaded, error)
	// LoadUserUsage is GetUser and LoadUsage in one read: what a user's
	// actor re-reads to re-confirm a refusal (once a second per user at
	// its limit). The usage is of periodStart, which the caller computed
	// from the anchor it knew; if the returned user's anchor gives another
	// period, the caller loads that one. domain.ErrNotFound if no user.
	LoadUserUsage(ctx context.Context, userID string, periodStart time.Time) (domain.User, Counters, error)

	// Admit commits each admitted session together with its period's usage,
	// in one transaction, before returning. Results are in request order.
	// An error means the outcome of every request is unknown.
	Admit(ctx context.Context, reqs []AdmitRequest) ([]AdmitResult, error)

	// ClaimPartition raises partition p's stored epoch to epoch (> 0),
	// creating it when p has none, as a node that has just become p's
	// owner does before it admits anything for p. Claiming the epoch that
	// is stored already is a no-op. When the stored epoch is higher, a
	// newer owner exists: the error wraps ErrNewerEpoch and nothing
	// changes. The claim serializes with the admissions of p: it waits for
	// those in flight, and once it has returned no admission under an
	// older epoch can commit (they are Fenced). A store without partition
	// epochs (the embedded one) returns an error wrapping ErrSingleNode.
	ClaimPartition(ctx context.Context, p domain.Partition, epoch int64) error

	// LookupIdempotencyKey returns the stored outcome of a keyed admission,
	// or domain.ErrNotFound. It is how an admission whose commit reply was
	// lost is resolved: by looking, never by guessing.
	LookupIdempotencyKey(ctx context.Context, userID, key string) (IdempotencyRecord, error)
	// PruneIdempotencyKeys deletes keys stored before the given time and
	// returns how many it deleted.
	PruneIdempotencyKeys(ctx context.Context, before time.Time) (int64, error)
	// ScanUsage calls fn for every usage row of a period that ends after
	// `after` (the current periods, when after is now), in no particular
	// order; it stops at fn's first error. Used to re-seed the Redis cache.
	ScanUsage(ctx context.Context, after time.Time, fn func(UsageRow) error) error

	// GetSession returns a session by id, or domain.ErrNotFound.
	GetSession(ctx context.Context, id string) (domain.Session, error)
	// ListSessions returns up to limit of the user's sessions, newest first,
	// strictly after the cursor when one is given.
	ListSessions(ctx context.Context, userID string, limit int, after *domain.Cursor) ([]domain.Session, error)
	// MarkUploading moves a created session to uploading (a no-op when it is
	// already uploading); a CodeConflict *domain.Error when it is completed or failed.
	MarkUploading(ctx context.Context, id string, now time.Time) (domain.Session, error)
	// CompleteSession records the duration and adds it to the usage of the
	// period the session was created in. Completing again with the same
	// duration returns the session unchanged; with another duration, or a
	// failed session, a CodeConflict *domain.Error. Counters are the period's usage after.
	// A completion that changes the session records its event (by) in the
	// same transaction; a no-op records none. With alerts (the user's
	// plan's thresholds; nil: alerts off), a completion that moves the
	// period's seconds across a threshold of the minutes limit records
	// its usage.threshold_crossed alert in the same transaction too.
	CompleteSession(ctx context.Context, by domain.Origin, id string, seconds int64, now time.Time, alerts *domain.AlertPlan) (domain.Session, Counters, error)
	// FailSession marks the session failed (no usage recorded). Failing a
	// failed session is a no-op; a completed one is a CodeConflict *domain.Error.
	// Like CompleteSession, a change records its event, a no-op none.
	FailSession(ctx context.Context, by domain.Origin, id string, now time.Time) (domain.Session, error)

	// ListUserEvents returns up to limit of the user's audit events ordered
	// by (OccurredAt, ID) descending, strictly after the cursor when one is
	// given; domain.ErrNotFound when the user does not exist.
	ListUserEvents(ctx context.Context, userID string, limit int, after *domain.EventCursor) ([]domain.UserEvent, error)
}

// The stored outcomes of an idempotency key (the outcome column of
// idempotency_keys). Postgres also stores 'pending' for a claim that its
// transaction settles before COMMIT, which no reader outside it ever sees.
const (
	KeyAdmitted = "admitted"
	KeyRejected = "rejected"
)

// SetOutcome sets r.Admitted from a stored outcome. Any other outcome is an
// error: a row that is not settled must never be seen outside the
// transaction that claimed it.
func (r *IdempotencyRecord) SetOutcome(outcome string) error {
	switch outcome {
	case KeyAdmitted:
		r.Admitted = true
	case KeyRejected:
		r.Admitted = false
	default:
		return fmt.Errorf("idempotency key %q of user %s has outcome %q", r.Key, r.UserID, outcome)
	}
	return nil
}

// ScanCounters scans a usage row's sessions, seconds and version with scan
// (a driver's row Scan). A missing row, which the driver reports as noRows,
// is zero counters at version 0: nothing was recorded in that period yet,
// which is what both stores must answer (Store.LoadUsage).
func ScanCounters(scan func(dest ...any) error, noRows error) (Counters, error) {
	var c Counters
	err := scan(&c.Sessions, &c.Seconds, &c.Version)
	if errors.Is(err, noRows) {
		return Counters{}, nil
	}
	return c, err
}
