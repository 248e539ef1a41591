package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// The set-based admission path, for batches without Idempotency-Keys (the
// common case, and what group commit produces). Per-row cost is what bounds
// durable admissions per second, so the batch is handled as sets: one
// round trip locks and reads everything the decision needs, the decision is
// made here, and a second round trip writes the increments and the session
// rows — a handful of statements for the whole batch, and no statement
// whose cost grows faster than its rows (a join between two CTEs of n rows
// each, which Postgres plans as an n² nested loop for lack of statistics,
// was what made the first version of this path slow).
//
// Semantics are those of the per-request path, and the contract suite runs
// against both: the fence on the user's version, limits checked against the
// latest committed usage (the rows are locked before they are read),
// several requests of one user counted in order with consecutive seqs.
//
// Lock order, the same in every transaction so that concurrent batches
// cannot deadlock: users (shared), then usage rows, both sorted by byte
// order (COLLATE "C", which is also the order lockOrder gives the
// per-request path).

// bulkLockUsersSQL share-locks the batch's users, holding off a plan or
// anchor change until COMMIT, and returns their versions for the fence.
const bulkLockUsersSQL = `
SELECT id, version FROM users WHERE id = ANY($1::text[]) ORDER BY id COLLATE "C" FOR SHARE`

// bulkEnsureUsageSQL creates the missing usage rows of the fresh groups
// that can admit anything (a limit of 0 creates no row, as on the
// per-request path).
const bulkEnsureUsageSQL = `
INSERT INTO usage (user_id, period_start, period_end, sessions, seconds, version)
SELECT g.user_id, g.period_start, g.period_end, 0, 0, 0
FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::timestamptz[])
     AS g(user_id, user_version, period_start, period_end)
JOIN users u ON u.id = g.user_id AND u.version = g.user_version
ORDER BY g.user_id COLLATE "C", g.period_start
ON CONFLICT (user_id, period_start) DO NOTHING`

// bulkLockUsageSQL locks the groups' usage rows, in order, and reads them.
// A separate statement from the insert above, so that in READ COMMITTED it
// sees the rows just created, and the latest committed version of a row it
// had to wait for.
const bulkLockUsageSQL = `
SELECT us.user_id, us.period_start, us.sessions, us.seconds, us.version
FROM usage us
JOIN unnest($1::text[], $2::timestamptz[]) AS g(user_id, period_start)
  ON us.user_id = g.user_id AND us.period_start = g.period_start
ORDER BY us.user_id COLLATE "C", us.period_start
FOR UPDATE OF us`

// bulkIncrementSQL adds each group's granted sessions; the version rises by
// one per admitted session, as if each had been counted on its own.
const bulkIncrementSQL = `
UPDATE usage us
SET sessions = us.sessions + d.granted, version = us.version + d.granted
FROM unnest($1::text[], $2::timestamptz[], $3::bigint[]) AS d(user_id, period_start, granted)
WHERE us.user_id = d.user_id AND us.period_start = d.period_start`

// bulkInsertSessionsSQL inserts the admitted sessions.
const bulkInsertSessionsSQL = `
INSERT INTO sessions (id, user_id, title, language, stt_provider, status, duration_seconds,
                      period_start, seq, max_sessions, created_at, updated_at)
SELECT s.id, s.user_id, s.title, s.language, s.stt_provider, 'created', NULL,
       s.period_start, s.seq, s.max_sessions, s.created_at, s.created_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
            $6::timestamptz[], $7::bigint[], $8::bigint[], $9::timestamptz[])
     AS s(id, user_id, title, language, stt_provider, period_start, seq, max_sessions, created_at)`

// group is the requests of one (user, period) in a batch.
type group struct {
	userID      string
	periodStart time.Time
	periodEnd   time.Time
	userVersion int64 // the newest any of its requests decided with
	reqs        []int // indexes into the batch, in the callers' order
	counters    persistence.Counters
	locked      bool // the usage row exists and is locked
}

// admitBulk runs a key-less batch: see the comment at the top of the file.
func (s *Store) admitBulk(ctx context.Context, reqs []persistence.AdmitRequest) ([]persistence.AdmitResult, error) {
	groups := groupRequests(reqs)
	results := make([]persistence.AdmitResult, len(reqs))
	err := s.inTx(ctx, "admit", func(tx pgx.Tx) error {
		users := make([]string, 0, len(groups))
		for _, g := range groups {
			if len(users) == 0 || users[len(users)-1] != g.userID {
				users = append(users, g.userID)
			}
		}
		var ensure struct {
			users        []string
			versions     []int64
			starts, ends []time.Time
		}
		var lockUsers []string
		var lockStarts []time.Time
		for _, g := range groups {
			lockUsers = append(lockUsers, g.userID)
			lockStarts = append(lockStarts, ts(g.periodStart))
			if canAdmit(reqs, g) {
				ensure.users = append(ensure.users, g.userID)
				ensure.versions = append(ensure.versions, g.userVersion)
				ensure.starts = append(ensure.starts, ts(g.periodStart))
				ensure.ends = append(ensure.ends, ts(g.periodEnd))
			}
		}

		batch := &pgx.Batch{}
		batch.Queue(bulkLockUsersSQL, users)
		batch.Queue(bulkEnsureUsageSQL, ensure.users, ensure.versions, ensure.starts, ensure.ends)
		batch.Queue(bulkLockUsageSQL, lockUsers, lockStarts)
		br := tx.SendBatch(ctx, batch)
		versions, err := scanVersions(br)
		if err == nil {
			_, err = br.Exec()
		}
		if err == nil {
			err = scanLockedUsage(br, groups)
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}

		var inc struct {
			users   []string
			starts  []time.Time
			granted []int64
		}
		var ins struct {
			ids, users, titles, languages, providers []string
			starts, created                          []time.Time
			seqs, maxSessions                        []int64
		}
		for _, g := range groups {
			v, known := versions[g.userID]
			base := g.counters
			var granted int64
			for _, i := range g.reqs {
				r := reqs[i]
				switch {
				case !known:
					results[i] = persistence.AdmitResult{Outcome: persistence.UnknownUser}
					continue
				case v != r.UserVersion:
					results[i] = persistence.AdmitResult{Outcome: persistence.StaleUser}
					continue
				}
				c := base
				c.Sessions += granted
				c.Version += granted
				if !g.locked || !fits(r, c.Usage) {
					results[i] = persistence.AdmitResult{Outcome: persistence.OverLimit}
					continue // counters filled in below, once the group's grants are known
				}
				granted++
				c.Sessions++
				c.Version++
				results[i] = persistence.AdmitResult{Outcome: persistence.Admitted, Counters: c}
				ins.ids = append(ins.ids, r.Session.ID)
				ins.users = append(ins.users, r.Session.UserID)
				ins.titles = append(ins.titles, r.Session.Title)
				ins.languages = append(ins.languages, r.Session.Language)
				ins.providers = append(ins.providers, r.Session.STTProvider)
				ins.starts = append(ins.starts, ts(r.Session.PeriodStart))
				ins.created = append(ins.created, ts(r.Session.CreatedAt))
				ins.seqs = append(ins.seqs, c.Sessions)
				ins.maxSessions = append(ins.maxSessions, int64(r.MaxSessions))
			}
			// A rejected request sees the row as it is after every grant of
			// its group, as it would after the earlier requests' statements.
			final := base
			final.Sessions += granted
			final.Version += granted
			for _, i := range g.reqs {
				if results[i].Outcome == persistence.OverLimit {
					results[i].Counters = final
				}
			}
			if granted > 0 {
				inc.users = append(inc.users, g.userID)
				inc.starts = append(inc.starts, ts(g.periodStart))
				inc.granted = append(inc.granted, granted)
			}
		}
		if len(inc.users) == 0 {
			return nil
		}
		batch = &pgx.Batch{}
		batch.Queue(bulkIncrementSQL, inc.users, inc.starts, inc.granted)
		batch.Queue(bulkInsertSessionsSQL, ins.ids, ins.users, ins.titles, ins.languages, ins.providers,
			ins.starts, ins.seqs, ins.maxSessions, ins.created)
		br = tx.SendBatch(ctx, batch)
		updated, err := br.Exec()
		if err == nil && updated.RowsAffected() != int64(len(inc.users)) {
			err = fmt.Errorf("admit: incremented %d usage rows, want %d", updated.RowsAffected(), len(inc.users))
		}
		if err == nil {
			inserted, ierr := br.Exec()
			if err = ierr; err == nil && inserted.RowsAffected() != int64(len(ins.ids)) {
				err = fmt.Errorf("admit: inserted %d sessions, want %d", inserted.RowsAffected(), len(ins.ids))
			}
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

// canAdmit reports whether some request of g has limits that admit
// anything at all; otherwise its usage row is not created.
func canAdmit(reqs []persistence.AdmitRequest, g *group) bool {
	for _, i := range g.reqs {
		if reqs[i].MaxSessions != 0 && reqs[i].MaxSeconds != 0 {
			return true
		}
	}
	return false
}

// fits reports whether one more session fits the request's limits.
func fits(r persistence.AdmitRequest, u domain.Usage) bool {
	return r.MaxSessions.Allows(u.Sessions) && r.MaxSeconds.Allows(u.Seconds)
}

// groupRequests groups the batch by (user, period), sorted in lock order,
// each group's requests in the callers' order.
func groupRequests(reqs []persistence.AdmitRequest) []*group {
	var groups []*group
	for _, i := range lockOrder(reqs) {
		r := reqs[i]
		if n := len(groups); n > 0 && groups[n-1].userID == r.Session.UserID && groups[n-1].periodStart.Equal(r.Session.PeriodStart) {
			groups[n-1].reqs = append(groups[n-1].reqs, i)
			// Versions only rise: the newest is the one that can be fresh.
			groups[n-1].userVersion = max(groups[n-1].userVersion, r.UserVersion)
			continue
		}
		groups = append(groups, &group{
			userID: r.Session.UserID, periodStart: r.Session.PeriodStart, periodEnd: r.PeriodEnd,
			userVersion: r.UserVersion, reqs: []int{i},
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

func scanLockedUsage(br pgx.BatchResults, groups []*group) error {
	rows, err := br.Query()
	if err != nil {
		return err
	}
	type key struct {
		user  string
		start int64
	}
	byKey := make(map[key]*group, len(groups))
	for _, g := range groups {
		byKey[key{g.userID, ts(g.periodStart).UnixMicro()}] = g
	}
	var (
		user  string
		start time.Time
		c     persistence.Counters
	)
	_, err = pgx.ForEachRow(rows, []any{&user, &start, &c.Sessions, &c.Seconds, &c.Version}, func() error {
		g := byKey[key{user, start.UnixMicro()}]
		if g == nil {
			return fmt.Errorf("admit: locked usage row %s@%s that no request asked for", user, start)
		}
		g.counters, g.locked = c, true
		return nil
	})
	return err
}
