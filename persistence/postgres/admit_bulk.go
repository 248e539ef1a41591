package postgres

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// The set-based admission path, for batches without Idempotency-Keys (the
// common case, and what group commit produces). Postgres' work per admitted
// row is what bounds durable admissions per second, so a batch costs one
// round trip and as few row touches as the fence allows:
//
//  1. share-lock the batch's users (holding off a plan or anchor change
//     until the batch commits) and read their versions;
//  2. for the groups whose caller marked them FirstOfPeriod (its counters
//     have version 0: no usage row yet), create the usage row (INSERT … ON
//     CONFLICT DO NOTHING), so that a period's first admission costs no
//     extra transaction;
//  3. one statement that, for every (user, period) of the batch whose
//     user version matches, updates the usage row by its grant — as many
//     of the batch's requests as still fit, computed from the row itself —
//     and inserts the granted sessions, numbered after the row's count.
//
// The statements go in one pipeline that Postgres runs as one implicit
// transaction (pgx sends a single Sync), so the batch commits without a
// further round trip, and every caller is answered only after that commit.
// In READ COMMITTED each statement takes a new snapshot, so the UPDATE sees
// the rows the INSERT created, or the ones a concurrent batch created first
// (the INSERT waits for that batch's commit before doing nothing).
//
// The hint only saves work; it never decides. A row that exists despite
// the hint (another process created it) is left alone by the INSERT. A
// (user, period) whose row is missing although nobody said so (a caller
// that sets no hints, or another store's counters) is not touched by the
// UPDATE; those groups run again, as a safety net, in a second transaction
// that creates the rows first.
//
// Semantics are those of the per-request path, and the contract suite runs
// against both: the fence on the user's version, limits checked against
// the latest committed usage (READ COMMITTED re-reads a row it had to wait
// for), several requests of one user counted in order with consecutive
// seqs.
//
// Lock order, the same in every transaction so that concurrent batches
// cannot deadlock: in a fenced batch, its partitions' advisory locks
// (shared, by partition number, while the batch holds nothing else:
// epochs.go); users (shared), then usage rows, each sorted by byte
// order (COLLATE "C", which is also the order lockOrder gives the
// per-request path). The UPDATE visits the groups in the order they are
// passed because its plan is a nested loop over them with index lookups
// on usage (EXPLAIN ANALYZE of the generic plan, 128 groups, 10 000 users:
// Update → Nested Loop → Function Scan on g, then Index Scan using
// usage_pkey on (user_id, period_start), the version check a SubPlan on
// users_pkey; the sessions insert a Hash Join on the group index); one process's
// batches never overlap anyway (one writer, or users hashed to writers).
// Should Postgres ever pick another plan while two processes share users,
// a deadlock is detected and aborts one batch, whose callers get a 503
// after their outcome is looked up — never a wrong count.
//
// The INSERT of step 2 takes its rows in the same sorted order, before the
// UPDATE, and cannot close a cycle between two batches: the only rows it
// holds are ones it inserted, which no other transaction's UPDATE can see
// (let alone wait for) before this one commits, so a batch in its UPDATE
// never waits for one still in its INSERT; an INSERT waits only for other
// batches' inserts of the same rows (taken in the same order) or for a
// running UPDATE (which waits only for other UPDATEs). Against the
// per-request path it is out of order: that path's INSERT … ON CONFLICT DO
// UPDATE waits for a row this batch inserted, while this batch's UPDATE may
// wait for a lower row that path holds. That takes two processes deciding
// for the same users at the same instant (one process's admissions for a
// user never overlap: they go through one writer), and ends as above: the deadlock is detected, one
// batch aborts, its callers' outcomes are looked up. The second pass has
// always had that shape; the hint moves it into the first.

// bulkLockUsersSQL share-locks the batch's users and returns their versions.
const bulkLockUsersSQL = `
SELECT id, version FROM users WHERE id = ANY($1::text[]) ORDER BY id COLLATE "C" FOR SHARE`

// bulkEnsureUsageSQL creates the missing usage rows of the groups it is
// given: those that can admit anything (a limit of 0 creates no row, as on
// the per-request path) and are marked FirstOfPeriod, or, on the second
// pass, all of them. bulkEnsureUsageFencedSQL is the same for a fenced
// batch: it creates no row for a group whose partition has moved (epochs.go).
var (
	bulkEnsureUsageSQL       = bulkEnsureUsage(false)
	bulkEnsureUsageFencedSQL = bulkEnsureUsage(true)
)

func bulkEnsureUsage(fenced bool) string {
	cols, names, check := "", "", ""
	if fenced {
		cols, names, check = ", $5::int[], $6::bigint[]", ", partition, epoch", "\n  AND "+bulkEpochCheck
	}
	return `
INSERT INTO usage (user_id, period_start, period_end, sessions, seconds, version)
SELECT g.user_id, g.period_start, g.period_end, 0, 0, 0
FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::timestamptz[]` + cols + `)
     AS g(user_id, user_version, period_start, period_end` + names + `)
WHERE (SELECT u.version FROM users u WHERE u.id = g.user_id) = g.user_version` + check + `
ORDER BY g.user_id COLLATE "C", g.period_start
ON CONFLICT (user_id, period_start) DO NOTHING`
}

// bulkEpochCheck is the fence of a fenced batch's statements: the group's
// partition still has the epoch the group was decided under. The batch
// holds its partitions' locks (lockPartitionsSQL, an earlier statement),
// so the epoch this subquery reads from the statement's snapshot is the
// one stored when the batch commits (epochs.go).
const bulkEpochCheck = `(SELECT e.epoch FROM partition_epochs e WHERE e.partition = g.partition) = g.epoch`

// bulkAdmitSQL counts and inserts a batch's sessions. grant is each
// group's admitted count: none once the seconds are used up, else as many of
// its n requests as stay within the sessions limit. The limits arrive as
// the ceilings domain.Limit.Ceiling computes (admitted while used <
// ceiling), so the SQL has no case for unlimited; max_sessions, the limit
// as the requests carry it, is only recorded with each session. The version
// rises by one per admitted session, as if each had been counted on its
// own. The users' versions are read by a correlated subquery rather than a
// join, so that the plan is an index lookup per group whatever the
// statistics say (a join was planned as a scan of all users).
//
// bulkAdmitFencedSQL is the same for a fenced batch: each group also
// carries its partition and epoch, counts only while bulkEpochCheck holds,
// and its sessions record the epoch. bulkAdmitSQL, for single-node
// batches, has none of it.
var (
	bulkAdmitSQL       = bulkAdmit(false)
	bulkAdmitFencedSQL = bulkAdmit(true)
)

func bulkAdmit(fenced bool) string {
	cols, names, check, ret, col, val := "", "", "", "", "", ""
	alerts := 15 // the alerts' six columns are the last parameters
	if fenced {
		cols, names = ", $15::int[], $16::bigint[]", ", partition, epoch"
		check = "\n    AND " + bulkEpochCheck
		ret, col, val = ", g.epoch", ", epoch", ", c.epoch"
		alerts = 17
	}
	p := func(i int) string { return fmt.Sprintf("$%d", alerts+i) }
	return `
WITH g AS (
  SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[]` + cols + `)
    WITH ORDINALITY AS g(user_id, period_start, user_version, n, max_sessions, session_ceiling, seconds_ceiling` + names + `, gi)
), counted AS (
  UPDATE usage us
  SET sessions = us.sessions + ` + grantSQL + `,
      version = us.version + ` + grantSQL + `,
      last_grant = ` + grantSQL + `
  FROM g
  WHERE us.user_id = g.user_id AND us.period_start = g.period_start
    AND (SELECT u.version FROM users u WHERE u.id = g.user_id) = g.user_version` + check + `
  RETURNING g.gi, g.max_sessions, us.user_id, us.period_start, us.period_end, us.sessions, us.seconds, us.version, us.last_grant` + ret + `
), inserted AS (
  INSERT INTO sessions (id, user_id, title, language, stt_provider, status, duration_seconds,
                        period_start, seq, max_sessions, created_at, updated_at` + col + `)
  SELECT s.id, c.user_id, s.title, s.language, s.stt_provider, 'created', NULL,
         c.period_start, c.sessions - c.last_grant + s.k, c.max_sessions, s.created_at, s.created_at` + val + `
  FROM unnest($8::bigint[], $9::bigint[], $10::text[], $11::text[], $12::text[], $13::text[], $14::timestamptz[])
       AS s(gi, k, id, title, language, stt_provider, created_at)
  JOIN counted c ON c.gi = s.gi
  WHERE s.k <= c.last_grant
), alerted AS (
  INSERT INTO alerts (kind, user_id, plan, metric, percent, used, limit_value,
                      period_start, period_end, occurred_at, session_id, next_attempt_at)
  SELECT 'usage.threshold_crossed', c.user_id, (` + p(3) + `::text[])[c.gi], 'sessions', t.percent, t.at, c.max_sessions,
         c.period_start, c.period_end, ($14::timestamptz[])[x.i], ($10::text[])[x.i], ($14::timestamptz[])[x.i]
  FROM (SELECT * FROM counted c
        -- Only groups whose grant spans one of their thresholds: the
        -- others (nearly all) cost two array lookups, not an unnest.
        WHERE c.last_grant > 0 AND (` + p(1) + `::int[])[c.gi] > 0
          AND c.sessions - c.last_grant < (` + p(4) + `::bigint[])[(` + p(0) + `::int[])[c.gi] + (` + p(1) + `::int[])[c.gi] - 1]
          AND (` + p(4) + `::bigint[])[(` + p(0) + `::int[])[c.gi]] <= c.sessions
        OFFSET 0) AS c
  CROSS JOIN LATERAL unnest(
         (` + p(4) + `::bigint[])[(` + p(0) + `::int[])[c.gi] : (` + p(0) + `::int[])[c.gi] + (` + p(1) + `::int[])[c.gi] - 1],
         (` + p(5) + `::int[])[(` + p(0) + `::int[])[c.gi] : (` + p(0) + `::int[])[c.gi] + (` + p(1) + `::int[])[c.gi] - 1]) AS t(at, percent)
  CROSS JOIN LATERAL (SELECT (` + p(2) + `::int[])[c.gi] + (t.at - (c.sessions - c.last_grant)) - 1 AS i) AS x
  WHERE c.sessions - c.last_grant < t.at AND t.at <= c.sessions
  ON CONFLICT (user_id, period_start, kind, metric, percent, limit_value) DO NOTHING
)
SELECT gi, sessions, seconds, version, last_grant FROM counted`
}

// The alerted CTE records, with alerts on, the usage.threshold_crossed
// alert of each threshold of a group's sessions limit that one of its
// granted sessions reaches: the one whose number (seq) is the threshold's
// At, which exists only when the grant moved the count across it. The
// thresholds (domain.ThresholdsOf; the SQL only compares) come flattened,
// each group's a slice of them (its offset and count, indexed by the
// group's ordinality), and the crossing session is found by arithmetic:
// the k-th granted session of a group is at the group's offset in the
// session columns plus k - 1, and the one reaching At is the
// (At - count before the grant)-th. Every lookup is by position, so the
// statement's cost grows with the batch, not with its square: joining
// thresholds and sessions as sets (CTEs and unnest have no statistics)
// compared every threshold of a batch with every session of it, and
// admissions with alerts on cost Postgres 60% more CPU.
//
// grantSQL is a group's grant, computed from the row being updated (SET
// expressions all see the row as it was, so it is written out once per
// column that uses it): while the seconds are below their ceiling, the
// k-th request is admitted while sessions + k - 1 < session_ceiling, which
// is as many as the ceiling leaves room for. An unlimited ceiling
// (math.MaxInt64) minus the sessions cannot overflow.
const grantSQL = `(CASE WHEN us.seconds < g.seconds_ceiling
      THEN LEAST(g.n, GREATEST(g.session_ceiling - us.sessions, 0))
      ELSE 0 END)`

// group is the requests of one (user, period) in a batch.
type group struct {
	userID      string
	periodStart time.Time
	periodEnd   time.Time
	userVersion int64 // the newest any of its requests decided with
	epoch       int64 // likewise the newest epoch (0 in a single-node batch)
	reqs        []int // indexes into the batch, in the callers' order
	// firstOfPeriod: a request said the usage row does not exist yet, so
	// the first pass creates it.
	firstOfPeriod bool
}

// counted is what bulkAdmitSQL returned for one group.
type counted struct {
	counters persistence.Counters // after the grant
	granted  int64
}

// admitBulk runs a key-less batch: see the comment at the top of the file.
// A fenced batch (its requests carry an epoch) also checks each group's
// partition epoch (epochs.go).
func (s *Store) admitBulk(ctx context.Context, reqs []persistence.AdmitRequest, fenced bool) ([]persistence.AdmitResult, error) {
	results := make([]persistence.AdmitResult, len(reqs))
	missing, err := s.admitGroups(ctx, reqs, groupRequests(reqs), false, fenced, results)
	if err == nil && len(missing) > 0 {
		s.secondPasses.Add(1)
		missing, err = s.admitGroups(ctx, reqs, missing, true, fenced, results)
		if err == nil && len(missing) > 0 {
			err = fmt.Errorf("admit: usage row of user %s, period %s missing after it was created", missing[0].userID, missing[0].periodStart)
		}
	}
	if err != nil {
		return nil, translate("admit", err)
	}
	return results, nil
}

// admitGroups runs one transaction for groups, filling in the results of
// their requests, and returns the groups that it could not decide because
// their usage row did not exist. It creates the rows of the groups marked
// firstOfPeriod first, or of all groups when ensureAll is set. When fenced,
// it first locks the groups' partitions and reads their epochs, and a
// group whose partition's epoch is not its own is Fenced.
func (s *Store) admitGroups(ctx context.Context, reqs []persistence.AdmitRequest, groups []*group, ensureAll, fenced bool,
	results []persistence.AdmitResult) (missing []*group, err error) {
	users := make([]string, 0, len(groups))
	for _, g := range groups {
		if len(users) == 0 || users[len(users)-1] != g.userID {
			users = append(users, g.userID)
		}
	}
	// The columns of the groups (ga) and of the sessions (sa), sized once.
	ng, nr := len(groups), len(reqs)
	ga := struct {
		users             []string
		starts, ends      []time.Time
		versions, n, maxS []int64
		ceilS, ceilSc     []int64 // domain.Limit.Ceiling of the sessions and seconds limits
		admitsAny         []bool  // the limits admit a first session: only then is a row created
		parts             []int32 // a fenced batch's: each group's partition
		epochs            []int64 // and epoch
	}{
		users: make([]string, 0, ng), starts: make([]time.Time, 0, ng), ends: make([]time.Time, 0, ng),
		versions: make([]int64, 0, ng), n: make([]int64, 0, ng), maxS: make([]int64, 0, ng),
		ceilS: make([]int64, 0, ng), ceilSc: make([]int64, 0, ng), admitsAny: make([]bool, 0, ng),
	}
	var al struct { // per group: where its thresholds and sessions start, how many thresholds, its plan
		toff, tn, soff []int32
		plans          []string
		at             []int64 // the thresholds, flattened
		percents       []int32
	}
	sa := struct {
		gi, k                             []int64
		ids, titles, languages, providers []string
		created                           []time.Time
	}{
		gi: make([]int64, 0, nr), k: make([]int64, 0, nr), ids: make([]string, 0, nr), titles: make([]string, 0, nr),
		languages: make([]string, 0, nr), providers: make([]string, 0, nr), created: make([]time.Time, 0, nr),
	}
	for gi, g := range groups {
		first := -1
		var n int64
		al.soff = append(al.soff, int32(len(sa.ids)+1))
		for _, i := range g.reqs {
			r := reqs[i]
			if r.UserVersion != g.userVersion || r.Epoch != g.epoch {
				continue
			}
			if first < 0 {
				first = i
			} else if r.MaxSessions != reqs[first].MaxSessions || r.MaxSeconds != reqs[first].MaxSeconds {
				return nil, fmt.Errorf("admit: requests of user %s at version %d disagree on its limits", g.userID, g.userVersion)
			}
			n++
			sa.gi = append(sa.gi, int64(gi+1))
			sa.k = append(sa.k, n)
			sa.ids = append(sa.ids, r.Session.ID)
			sa.titles = append(sa.titles, r.Session.Title)
			sa.languages = append(sa.languages, r.Session.Language)
			sa.providers = append(sa.providers, r.Session.STTProvider)
			sa.created = append(sa.created, ts(r.Session.CreatedAt))
		}
		ga.users = append(ga.users, g.userID)
		ga.starts = append(ga.starts, ts(g.periodStart))
		ga.ends = append(ga.ends, ts(g.periodEnd))
		ga.versions = append(ga.versions, g.userVersion)
		ga.n = append(ga.n, n)
		limS, limSc := reqs[first].MaxSessions, reqs[first].MaxSeconds
		ga.maxS = append(ga.maxS, int64(limS))
		ga.ceilS = append(ga.ceilS, limS.Ceiling())
		ga.ceilSc = append(ga.ceilSc, limSc.Ceiling())
		ga.admitsAny = append(ga.admitsAny, limS.Allows(0) && limSc.Allows(0))
		al.toff = append(al.toff, int32(len(al.at)+1))
		if a := reqs[first].Alerts; a != nil && n > 0 {
			for _, t := range a.Sessions {
				al.percents = append(al.percents, int32(t.Percent))
				al.at = append(al.at, t.At)
			}
			al.tn = append(al.tn, int32(len(a.Sessions)))
			al.plans = append(al.plans, a.Plan.Name)
		} else {
			al.tn = append(al.tn, 0)
			al.plans = append(al.plans, "")
		}
		if fenced {
			ga.parts = append(ga.parts, int32(domain.PartitionOf(g.userID)))
			ga.epochs = append(ga.epochs, g.epoch)
		}
	}

	batch := &pgx.Batch{}
	if fenced {
		// First in the transaction, before any other lock: the
		// partitions' locks, then their epochs, read in a statement of
		// its own once the locks are held (epochs.go).
		parts := batchPartitions(slices.Values(users))
		batch.Queue(lockPartitionsSQL, parts)
		batch.Queue(partitionEpochsSQL, parts)
	}
	batch.Queue(bulkLockUsersSQL, users)
	var e struct {
		users        []string
		versions     []int64
		starts, ends []time.Time
		parts        []int32
		epochs       []int64
	}
	for gi, g := range groups {
		if (ensureAll || g.firstOfPeriod) && ga.admitsAny[gi] {
			e.users = append(e.users, g.userID)
			e.versions = append(e.versions, g.userVersion)
			e.starts = append(e.starts, ga.starts[gi])
			e.ends = append(e.ends, ga.ends[gi])
			if fenced {
				e.parts = append(e.parts, ga.parts[gi])
				e.epochs = append(e.epochs, ga.epochs[gi])
			}
		}
	}
	ensure := len(e.users) > 0
	switch {
	case ensure && fenced:
		batch.Queue(bulkEnsureUsageFencedSQL, e.users, e.versions, e.starts, e.ends, e.parts, e.epochs)
	case ensure:
		batch.Queue(bulkEnsureUsageSQL, e.users, e.versions, e.starts, e.ends)
	}
	if fenced {
		batch.Queue(bulkAdmitFencedSQL, ga.users, ga.starts, ga.versions, ga.n, ga.maxS, ga.ceilS, ga.ceilSc,
			sa.gi, sa.k, sa.ids, sa.titles, sa.languages, sa.providers, sa.created, ga.parts, ga.epochs,
			al.toff, al.tn, al.soff, al.plans, al.at, al.percents)
	} else {
		batch.Queue(bulkAdmitSQL, ga.users, ga.starts, ga.versions, ga.n, ga.maxS, ga.ceilS, ga.ceilSc,
			sa.gi, sa.k, sa.ids, sa.titles, sa.languages, sa.providers, sa.created,
			al.toff, al.tn, al.soff, al.plans, al.at, al.percents)
	}

	// No BEGIN: the pipeline ends in one Sync, so Postgres runs it as one
	// implicit transaction and commits it before answering the Sync; Close
	// returns only then, so nothing below runs before the COMMIT.
	br := s.pool.SendBatch(ctx, batch)
	var stored map[int32]int64 // a fenced batch's partition epochs, as of its commit
	if fenced {
		if _, err = br.Exec(); err == nil {
			stored, err = scanEpochs(br)
		}
	}
	var versions map[string]int64
	if err == nil {
		versions, err = scanVersions(br)
	}
	if err == nil && ensure {
		_, err = br.Exec()
	}
	var done map[int64]counted
	if err == nil {
		done, err = scanCounted(br)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}

	for gi, g := range groups {
		v, known := versions[g.userID]
		c, ok := done[int64(gi+1)]
		moved := fenced && stored[ga.parts[gi]] != g.epoch
		if known && v == g.userVersion && !ok && ga.admitsAny[gi] && !moved {
			missing = append(missing, g) // no usage row yet: decided by the next pass
			continue
		}
		base := c.counters
		base.Sessions -= c.granted
		base.Version -= c.granted
		var k int64
		for _, i := range g.reqs {
			switch r := reqs[i]; {
			case moved || r.Epoch != g.epoch:
				// Another node owns the partition now (or this request
				// was decided under an epoch older than its group's):
				// nothing of it was written.
				results[i] = persistence.AdmitResult{Outcome: persistence.Fenced}
			case !known:
				results[i] = persistence.AdmitResult{Outcome: persistence.UnknownUser}
			case v != r.UserVersion:
				results[i] = persistence.AdmitResult{Outcome: persistence.StaleUser}
			case k < c.granted:
				k++
				after := base
				after.Sessions += k
				after.Version += k
				results[i] = persistence.AdmitResult{Outcome: persistence.Admitted, Counters: after}
			default:
				// A rejected request sees the row as it is after every grant
				// of its group, as it would after the earlier requests'
				// statements. Without a row (a limit of 0), that is zero.
				results[i] = persistence.AdmitResult{Outcome: persistence.OverLimit, Counters: c.counters}
			}
		}
	}
	return missing, nil
}

// groupRequests groups the batch by (user, period), sorted in lock order,
// each group's requests in the callers' order.
func groupRequests(reqs []persistence.AdmitRequest) []*group {
	var groups []*group
	for _, i := range lockOrder(reqs) {
		r := reqs[i]
		if n := len(groups); n > 0 && groups[n-1].userID == r.Session.UserID && groups[n-1].periodStart.Equal(r.Session.PeriodStart) {
			groups[n-1].reqs = append(groups[n-1].reqs, i)
			// Versions and epochs only rise: the newest is the one that
			// can be fresh. A request under an older epoch than another of
			// its user's is Fenced unchecked (that epoch was superseded),
			// so the version is the newest among the newest epoch's.
			switch g := groups[n-1]; {
			case r.Epoch > g.epoch:
				g.epoch, g.userVersion = r.Epoch, r.UserVersion
			case r.Epoch == g.epoch:
				g.userVersion = max(g.userVersion, r.UserVersion)
			}
			groups[n-1].firstOfPeriod = groups[n-1].firstOfPeriod || r.FirstOfPeriod
			continue
		}
		groups = append(groups, &group{
			userID: r.Session.UserID, periodStart: r.Session.PeriodStart, periodEnd: r.PeriodEnd,
			userVersion: r.UserVersion, epoch: r.Epoch, reqs: []int{i}, firstOfPeriod: r.FirstOfPeriod,
		})
	}
	return groups
}

func scanVersions(br pgx.BatchResults) (map[string]int64, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	versions := make(map[string]int64)
	var (
		id string
		v  int64
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &v}, func() error {
		versions[id] = v
		return nil
	})
	return versions, err
}

func scanCounted(br pgx.BatchResults) (map[int64]counted, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	done := make(map[int64]counted)
	var (
		gi int64
		c  counted
	)
	_, err = pgx.ForEachRow(rows, []any{&gi, &c.counters.Sessions, &c.counters.Seconds, &c.counters.Version, &c.granted}, func() error {
		done[gi] = c
		return nil
	})
	return done, err
}
