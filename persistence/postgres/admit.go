package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// admitStatement is the fence and the count of one admission, in one
// statement.
//
//   - fence: FOR SHARE holds off a concurrent plan or anchor change
//     (PutUser) until this transaction commits, so the version checked is
//     the one the admission commits under. Admissions share the lock.
//   - counted: the first admission of a period creates the usage row, later
//     ones increment it. ON CONFLICT evaluates the limits against the latest
//     committed row and locks it, whatever this statement's snapshot saw:
//     that is what makes the limits exact across transactions. A limit that
//     admits nothing (0) creates no row. The limits arrive as the ceilings
//     domain.Limit.Ceiling computes (used < ceiling admits; a new row's
//     usage is 0), so the rule and its unlimited case live in domain alone.
//   - alerted: with alerts on (AdmitRequest.Alerts), the alert of each
//     threshold of the sessions limit that this session's number (seq)
//     reaches, in the same transaction as the session (outbox.go).
//   - created: the session row, only if it was counted, with the epoch
//     it was admitted under (0 in single-node mode). The epoch itself is
//     checked before this statement, not by it: Admit leaves out the
//     requests of a fenced batch whose partition moved.
//
// gate adds a condition to counting and more adds CTEs: the keyed variant
// counts only when this transaction has claimed the key, and settles the
// claim as admitted when the session was created.
func admitStatement(gate, more string) string {
	return `
WITH fence AS (
    SELECT version FROM users WHERE id = @user_id FOR SHARE
),
counted AS (
    INSERT INTO usage AS u (user_id, period_start, period_end, sessions, seconds, version)
    SELECT @user_id::text, @period_start::timestamptz, @period_end::timestamptz, 1, 0, 1
    FROM fence
    WHERE fence.version = @user_version::bigint` + gate + `
      AND 0 < @session_ceiling::bigint
      AND 0 < @seconds_ceiling::bigint
    ON CONFLICT (user_id, period_start) DO UPDATE
        SET sessions = u.sessions + 1,
            version  = u.version + 1
        WHERE u.sessions < @session_ceiling::bigint
          AND u.seconds < @seconds_ceiling::bigint
    RETURNING u.sessions AS seq
),
created AS (
    INSERT INTO sessions (id, user_id, title, language, stt_provider, status,
                          duration_seconds, period_start, seq, max_sessions, created_at, updated_at, epoch)
    SELECT @id::text, @user_id::text, @title::text, @language::text, @stt_provider::text,
           'created', NULL, @period_start::timestamptz, counted.seq, @max_sessions::bigint,
           @created_at::timestamptz, @created_at::timestamptz, @epoch::bigint
    FROM counted
    RETURNING id
),
alerted AS (
    INSERT INTO alerts (kind, user_id, plan, metric, percent, used, limit_value,
                        period_start, period_end, occurred_at, session_id, next_attempt_at)
    SELECT 'usage.threshold_crossed', @user_id::text, @plan_name::text, 'sessions', t.percent, t.at,
           @max_sessions::bigint, @period_start::timestamptz, @period_end::timestamptz,
           @created_at::timestamptz, @id::text, @created_at::timestamptz
    FROM counted
    JOIN unnest(@alert_percents::int[], @alert_at::bigint[]) AS t (percent, at) ON t.at = counted.seq
    ON CONFLICT (user_id, period_start, kind, metric, percent, limit_value) DO NOTHING
)` + more + `
SELECT (SELECT version FROM fence) AS user_version,
       EXISTS (SELECT FROM counted) AS admitted`
}

// admitSQL admits a request without an Idempotency-Key.
var admitSQL = admitStatement("", "")

// keyedAdmitSQL admits a request whose key this transaction claimed before
// (claimKeySQL): it counts only while the claim is still pending — a key
// that was already stored was not claimed, so nothing is counted — and
// settles the claim as admitted together with the session. The claim row
// was written by an earlier statement, so this one sees and may update it.
var keyedAdmitSQL = admitStatement(`
      AND EXISTS (SELECT FROM idempotency_keys
                  WHERE user_id = @user_id AND key = @key AND outcome = 'pending')`, `,
admitted_key AS (
    UPDATE idempotency_keys SET outcome = 'admitted', session_id = created.id
    FROM created
    WHERE user_id = @user_id AND key = @key AND outcome = 'pending'
)`)

// countersSQL reads one usage row (loadCounters), and the row after
// admitSQL. There it is a statement of its own because, in READ COMMITTED,
// it then sees the latest committed row (which this transaction has locked
// if it exists), where a read inside admitSQL would see that statement's
// older snapshot.
const countersSQL = `SELECT sessions, seconds, version FROM usage WHERE user_id = $1 AND period_start = $2`

// claimKeySQL claims an Idempotency-Key for this transaction, after the
// same fence as the admission (a stale or unknown user stores nothing). It
// returns a row only when it inserted the claim, a 'pending' row that
// keyedAdmitSQL and settleKeySQL turn into the final outcome before COMMIT.
//
// The primary key does the waiting: when another transaction has inserted
// the same key and not yet committed, this INSERT waits for it; once it
// commits, the key conflicts and nothing is claimed (the request replays
// that outcome); had it rolled back, the key is claimed here. On a conflict
// with a stored key, DO UPDATE … WHERE false updates nothing but locks the
// row until this transaction ends, so that pruning (which skips locked
// rows) cannot delete the record before settleKeySQL reads it.
const claimKeySQL = `
WITH fence AS (
    SELECT version FROM users WHERE id = @user_id FOR SHARE
)
INSERT INTO idempotency_keys AS k (user_id, key, request_hash, outcome, created_at)
SELECT @user_id::text, @key::text, @request_hash::text, 'pending', @created_at::timestamptz
FROM fence
WHERE fence.version = @user_version::bigint
ON CONFLICT (user_id, key) DO UPDATE SET outcome = k.outcome WHERE false
RETURNING true`

// settleKeySQL runs right after keyedAdmitSQL: it reads the period's
// counters (a statement of its own, like countersSQL), settles a claim that
// was not admitted as rejected with the plan, limits and those counters,
// and returns the key's record: the one just settled, the one
// keyedAdmitSQL settled as admitted, or the one stored before (a replay).
// It returns exactly one row; its record columns are NULL when no key is
// stored (the fence refused the request and no other request stored it).
const settleKeySQL = `
WITH c AS (
    SELECT sessions, seconds, version FROM usage
    WHERE user_id = @user_id AND period_start = @period_start::timestamptz
),
rejected AS (
    UPDATE idempotency_keys SET
        outcome        = 'rejected',
        plan_name      = @plan_name::text,
        max_sessions   = @max_sessions::bigint,
        max_seconds    = @max_seconds::bigint,
        usage_sessions = COALESCE((SELECT sessions FROM c), 0),
        usage_seconds  = COALESCE((SELECT seconds FROM c), 0),
        period_start   = @period_start::timestamptz,
        period_end     = @period_end::timestamptz
    WHERE user_id = @user_id AND key = @key AND outcome = 'pending'
      -- Only the request that claimed the key settles it, not a stale
      -- one with the same key in the batch.
      AND EXISTS (SELECT FROM users WHERE id = @user_id AND version = @user_version::bigint)
    RETURNING ` + persistence.KeyColumns + `
),
rec AS (
    SELECT ` + persistence.KeyColumns + ` FROM rejected
    UNION ALL
    -- This statement's snapshot predates the update above: the stored row
    -- counts only when nothing was settled now. A row still pending is
    -- the claim of another request in this batch, not yet decided: this
    -- request, which the fence refused, has none.
    SELECT ` + persistence.KeyColumns + ` FROM idempotency_keys
    WHERE user_id = @user_id AND key = @key AND outcome <> 'pending'
      AND NOT EXISTS (SELECT FROM rejected)
)
SELECT c.sessions, c.seconds, c.version, rec.*
FROM (VALUES (1)) AS one (x)
LEFT JOIN c ON true
LEFT JOIN rec ON true`

// Admit runs every request in one transaction, its statements pipelined in
// one round trip between BEGIN and COMMIT, and commits before returning.
// Results are in request order. A rejected request changes nothing but its
// Idempotency-Key, if it has one.
//
// Locks are taken in one global order, so that concurrent batches cannot
// deadlock: in a fenced batch the partitions' advisory locks first (while
// the transaction holds nothing else: epochs.go); then the
// Idempotency-Keys (claimKeySQL) by user and key, then the usage rows
// (admitSQL, keyedAdmitSQL) by user and period, keeping the callers' order
// within a user and period. settleKeySQL, which follows
// each keyedAdmitSQL, touches only rows this transaction holds. A request
// repeating the user, key and user version of an earlier one in the batch
// runs no statement: it replays the earlier one's record, or shares its
// fence refusal. A request without a key runs the same two statements as
// ever (admitSQL, countersSQL); one with a key runs three.
//
// Counters are zero for StaleUser, UnknownUser (whose period may not even
// be the right one), Replayed and Fenced.
//
// A fenced batch (its requests carry an epoch, epochs.go) first locks its
// partitions and reads their epochs, in a round trip of its own within the
// transaction: a request whose partition's epoch is not its own is Fenced
// and runs no statement (it claims no key, counts nothing); the others run
// as above and record their epoch with their session, under the
// partitions' locks until COMMIT.
func (s *Store) Admit(ctx context.Context, reqs []persistence.AdmitRequest) ([]persistence.AdmitResult, error) {
	if len(reqs) == 0 {
		return []persistence.AdmitResult{}, nil
	}
	fenced, err := batchEpochs(reqs)
	if err != nil {
		return nil, err
	}
	if !anyKeyed(reqs) {
		return s.admitBulk(ctx, reqs, fenced)
	}
	results := make([]persistence.AdmitResult, len(reqs))
	err = s.inTx(ctx, "admit", func(tx pgx.Tx) error {
		if !fenced {
			return admitKeyed(ctx, tx, reqs, results)
		}
		stored, err := lockEpochs(ctx, tx, reqs)
		if err != nil {
			return err
		}
		var (
			live []persistence.AdmitRequest
			at   []int // live[j] is reqs[at[j]]
		)
		for i, r := range reqs {
			if stored[int32(domain.PartitionOf(r.Session.UserID))] != r.Epoch {
				results[i] = persistence.AdmitResult{Outcome: persistence.Fenced}
				continue
			}
			live = append(live, r)
			at = append(at, i)
		}
		if len(live) == 0 {
			return nil
		}
		res := make([]persistence.AdmitResult, len(live))
		if err := admitKeyed(ctx, tx, live, res); err != nil {
			return err
		}
		for j, i := range at {
			results[i] = res[j]
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

// lockEpochs takes the shared locks of the batch's partitions and reads
// their epochs, first in tx (epochs.go).
func lockEpochs(ctx context.Context, tx pgx.Tx, reqs []persistence.AdmitRequest) (map[int32]int64, error) {
	parts := batchPartitions(func(yield func(string) bool) {
		for _, r := range reqs {
			if !yield(r.Session.UserID) {
				return
			}
		}
	})
	batch := &pgx.Batch{}
	batch.Queue(lockPartitionsSQL, parts)
	batch.Queue(partitionEpochsSQL, parts)
	br := tx.SendBatch(ctx, batch)
	_, err := br.Exec()
	var stored map[int32]int64
	if err == nil {
		stored, err = scanEpochs(br)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return stored, err
}

// admitKeyed runs a batch with Idempotency-Keys in tx (see Admit), filling
// in results.
func admitKeyed(ctx context.Context, tx pgx.Tx, reqs []persistence.AdmitRequest, results []persistence.AdmitResult) error {
	owner := keyOwners(reqs)
	order := lockOrder(reqs)
	claims := claimOrder(reqs, owner)
	batch := &pgx.Batch{}
	for _, i := range claims {
		batch.Queue(claimKeySQL, admitArgs(reqs[i]))
	}
	for _, i := range order {
		switch {
		case owner[i] != i: // repeats an earlier request's key: nothing to run
		case reqs[i].IdempotencyKey == "":
			batch.Queue(admitSQL, admitArgs(reqs[i]))
			batch.Queue(countersSQL, reqs[i].Session.UserID, ts(reqs[i].Session.PeriodStart))
		default:
			args := admitArgs(reqs[i])
			batch.Queue(keyedAdmitSQL, args)
			batch.Queue(settleKeySQL, args)
		}
	}

	br := tx.SendBatch(ctx, batch)
	defer br.Close()
	claimed := make([]bool, len(reqs))
	for _, i := range claims {
		err := br.QueryRow().Scan(&claimed[i])
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
	}
	decided := make([]admitRow, len(reqs))
	records := make([]*persistence.IdempotencyRecord, len(reqs))
	for _, i := range order {
		if owner[i] != i {
			continue
		}
		d := &decided[i]
		if err := br.QueryRow().Scan(&d.userVersion, &d.admitted); err != nil {
			return err
		}
		var err error
		if reqs[i].IdempotencyKey == "" {
			err = br.QueryRow().Scan(&d.counters.Sessions, &d.counters.Seconds, &d.counters.Version)
			if errors.Is(err, pgx.ErrNoRows) {
				err = nil
			}
		} else {
			d.counters, records[i], err = scanSettled(br.QueryRow())
		}
		if err != nil {
			return err
		}
	}
	if err := br.Close(); err != nil {
		return err
	}

	for i, r := range reqs {
		if owner[i] != i {
			continue
		}
		var err error
		if results[i], err = decided[i].result(r, claimed[i], records[i]); err != nil {
			return err
		}
	}
	for i := range reqs {
		if o := owner[i]; o != i {
			results[i] = repeated(results[o], records[o])
		}
	}
	return nil
}

// admitRow is what the statements of one request reported.
type admitRow struct {
	userVersion *int64 // nil: no such user
	admitted    bool
	counters    persistence.Counters
}

// result turns the statements' answers for request r into its outcome.
// claimed and rec are those of its key (none without one). Answers that
// contradict each other are a bug; the error rolls the batch back, so
// that no claim can commit unsettled.
func (d admitRow) result(r persistence.AdmitRequest, claimed bool, rec *persistence.IdempotencyRecord) (persistence.AdmitResult, error) {
	switch {
	case d.userVersion == nil:
		return persistence.AdmitResult{Outcome: persistence.UnknownUser}, nil
	case *d.userVersion != r.UserVersion:
		return persistence.AdmitResult{Outcome: persistence.StaleUser}, nil
	}
	if r.IdempotencyKey == "" {
		if d.admitted {
			return persistence.AdmitResult{Outcome: persistence.Admitted, Counters: d.counters}, nil
		}
		return persistence.AdmitResult{Outcome: persistence.OverLimit, Counters: d.counters}, nil
	}
	switch {
	case rec == nil:
		return persistence.AdmitResult{}, fmt.Errorf("idempotency key %q of user %s: no record after the admission", r.IdempotencyKey, r.Session.UserID)
	case !claimed:
		if d.admitted {
			return persistence.AdmitResult{}, fmt.Errorf("idempotency key %q of user %s: counted without a claim", r.IdempotencyKey, r.Session.UserID)
		}
		return persistence.AdmitResult{Outcome: persistence.Replayed, Record: rec}, nil
	case d.admitted:
		if !rec.Admitted || rec.SessionID != r.Session.ID {
			return persistence.AdmitResult{}, fmt.Errorf("idempotency key %q of user %s: admitted, but the key records %+v", r.IdempotencyKey, r.Session.UserID, *rec)
		}
		return persistence.AdmitResult{Outcome: persistence.Admitted, Counters: d.counters}, nil
	default:
		if rec.Admitted || rec.PlanName != r.PlanName {
			return persistence.AdmitResult{}, fmt.Errorf("idempotency key %q of user %s: rejected, but the key records %+v", r.IdempotencyKey, r.Session.UserID, *rec)
		}
		return persistence.AdmitResult{Outcome: persistence.OverLimit, Counters: d.counters}, nil
	}
}

// repeated is the result of a request that repeats the key of an earlier
// request in the same batch, whose result and record are given: a replay
// of that record, or the same fence refusal.
func repeated(first persistence.AdmitResult, rec *persistence.IdempotencyRecord) persistence.AdmitResult {
	switch first.Outcome {
	case persistence.StaleUser, persistence.UnknownUser:
		return persistence.AdmitResult{Outcome: first.Outcome}
	}
	cp := *rec
	return persistence.AdmitResult{Outcome: persistence.Replayed, Record: &cp}
}

func admitArgs(r persistence.AdmitRequest) pgx.NamedArgs {
	percents, ats := sessionAlerts(r)
	return pgx.NamedArgs{
		"user_id":      r.Session.UserID,
		"user_version": r.UserVersion,
		"period_start": ts(r.Session.PeriodStart),
		"period_end":   ts(r.PeriodEnd),
		"plan_name":    r.PlanName,
		// The limits as the request carries them (-1 unlimited), which
		// are recorded: with the session (tools/verify/source.go audits
		// seq against max_sessions) and with a keyed rejection (to
		// rebuild its 403). The fence compares the ceilings instead.
		"max_sessions":    int64(r.MaxSessions),
		"max_seconds":     int64(r.MaxSeconds),
		"session_ceiling": r.MaxSessions.Ceiling(),
		"seconds_ceiling": r.MaxSeconds.Ceiling(),
		"id":              r.Session.ID,
		"title":           r.Session.Title,
		"language":        r.Session.Language,
		"stt_provider":    r.Session.STTProvider,
		"created_at":      ts(r.Session.CreatedAt),
		"key":             r.IdempotencyKey,
		"request_hash":    r.RequestHash,
		"epoch":           r.Epoch,
		"alert_percents":  percents,
		"alert_at":        ats,
	}
}

// sessionAlerts is the thresholds of r's sessions limit as two columns
// (empty when alerts are off), for the alerts the admission records.
func sessionAlerts(r persistence.AdmitRequest) (percents []int32, ats []int64) {
	if r.Alerts == nil {
		return []int32{}, []int64{}
	}
	percents, ats = make([]int32, len(r.Alerts.Sessions)), make([]int64, len(r.Alerts.Sessions))
	for i, t := range r.Alerts.Sessions {
		percents[i], ats[i] = int32(t.Percent), t.At
	}
	return percents, ats
}

// keyOwners maps each request to the first request of the batch with the
// same user, Idempotency-Key and user version (itself when it is the
// first, or has no key). Only owners run statements; a request repeating
// an owner's key replays the owner's outcome. At most one user version
// passes the fence, so at most one owner per key claims it.
func keyOwners(reqs []persistence.AdmitRequest) []int {
	type id struct {
		user, key string
		version   int64
	}
	first := map[id]int{}
	owner := make([]int, len(reqs))
	for i, r := range reqs {
		owner[i] = i
		if r.IdempotencyKey == "" {
			continue
		}
		k := id{r.Session.UserID, r.IdempotencyKey, r.UserVersion}
		if o, ok := first[k]; ok {
			owner[i] = o
		} else {
			first[k] = i
		}
	}
	return owner
}

// claimOrder returns the keyed owners sorted by user and key: the order in
// which every transaction claims keys.
func claimOrder(reqs []persistence.AdmitRequest, owner []int) []int {
	var claims []int
	for i, r := range reqs {
		if r.IdempotencyKey != "" && owner[i] == i {
			claims = append(claims, i)
		}
	}
	slices.SortStableFunc(claims, func(a, b int) int {
		ra, rb := reqs[a], reqs[b]
		return cmp.Or(strings.Compare(ra.Session.UserID, rb.Session.UserID), strings.Compare(ra.IdempotencyKey, rb.IdempotencyKey))
	})
	return claims
}

// lockOrder returns the indexes of reqs sorted by user and period, stable
// so that one user's requests keep their order (each sees the previous
// one's increment).
func lockOrder(reqs []persistence.AdmitRequest) []int {
	order := make([]int, len(reqs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		ra, rb := reqs[a].Session, reqs[b].Session
		return cmp.Or(strings.Compare(ra.UserID, rb.UserID), ra.PeriodStart.Compare(rb.PeriodStart))
	})
	return order
}

// anyKeyed reports whether a request carries an Idempotency-Key: such
// batches take the per-request path, whose key claims must come first in
// the lock order.
func anyKeyed(reqs []persistence.AdmitRequest) bool {
	for _, r := range reqs {
		if r.IdempotencyKey != "" {
			return true
		}
	}
	return false
}
