package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

func scanUser(row pgx.Row) (domain.User, error) {
	var u domain.User
	if err := row.Scan(&u.ID, &u.Plan, &u.BillingAnchor, &u.Version, &u.CreatedAt, &u.UpdatedAt); err != nil {
		return domain.User{}, err
	}
	u.BillingAnchor, u.CreatedAt, u.UpdatedAt = u.BillingAnchor.UTC(), u.CreatedAt.UTC(), u.UpdatedAt.UTC()
	return u, nil
}

// EnsureUser returns the user, provisioning it on domain.DefaultPlan with
// billing anchor now when it does not exist yet.
func (s *Store) EnsureUser(ctx context.Context, id string, now time.Time) (domain.User, error) {
	// Known users are the common case: one read.
	u, err := s.getUser(ctx, id)
	if !errors.Is(err, pgx.ErrNoRows) {
		return u, translate("ensure user", err)
	}
	now = ts(now)
	u, err = scanUser(s.pool.QueryRow(ctx, `
		INSERT INTO users (`+persistence.UserColumns+`)
		VALUES ($1, $2, $3, 1, $3, $3)
		ON CONFLICT (id) DO NOTHING
		RETURNING `+persistence.UserColumns,
		id, domain.DefaultPlan, now))
	if errors.Is(err, pgx.ErrNoRows) {
		// Another request provisioned it between our read and insert;
		// this new statement's snapshot sees its committed row.
		u, err = s.getUser(ctx, id)
	}
	return u, translate("ensure user", err)
}

// GetUser returns the user or domain.ErrNotFound.
func (s *Store) GetUser(ctx context.Context, id string) (domain.User, error) {
	u, err := s.getUser(ctx, id)
	return u, translate("get user", notFound(err))
}

func (s *Store) getUser(ctx context.Context, id string) (domain.User, error) {
	return scanUser(s.pool.QueryRow(ctx, `SELECT `+persistence.UserColumns+` FROM users WHERE id = $1`, id))
}

// LoadUsage returns the counters of the period starting at periodStart, or
// zero counters (version 0) when nothing was recorded in it.
func (s *Store) LoadUsage(ctx context.Context, userID string, periodStart time.Time) (persistence.Counters, error) {
	c, err := loadCounters(ctx, s.pool, userID, ts(periodStart))
	return c, translate("load usage", err)
}

// loadCounters reads one usage row; a missing row is zero counters.
func loadCounters(ctx context.Context, q querier, userID string, periodStart time.Time) (persistence.Counters, error) {
	return persistence.ScanCounters(q.QueryRow(ctx, countersSQL, userID, periodStart).Scan, pgx.ErrNoRows)
}

// LoadUserUsage reads the user and one period's usage in one statement.
func (s *Store) LoadUserUsage(ctx context.Context, userID string, periodStart time.Time) (domain.User, persistence.Counters, error) {
	var (
		u domain.User
		c persistence.Counters
	)
	err := s.pool.QueryRow(ctx, `
		SELECT u.id, u.plan, u.billing_anchor, u.version, u.created_at, u.updated_at,
		       COALESCE(us.sessions, 0), COALESCE(us.seconds, 0), COALESCE(us.version, 0)
		FROM users u
		LEFT JOIN usage us ON us.user_id = u.id AND us.period_start = $2
		WHERE u.id = $1`, userID, ts(periodStart)).
		Scan(&u.ID, &u.Plan, &u.BillingAnchor, &u.Version, &u.CreatedAt, &u.UpdatedAt, &c.Sessions, &c.Seconds, &c.Version)
	if err != nil {
		return domain.User{}, persistence.Counters{}, translate("load user usage", notFound(err))
	}
	u.BillingAnchor, u.CreatedAt, u.UpdatedAt = u.BillingAnchor.UTC(), u.CreatedAt.UTC(), u.UpdatedAt.UTC()
	return u, c, nil
}

// ensureUsersSQL provisions the users of a load that do not exist yet, on
// the default plan anchored at their load's now. The filter skips known
// users without touching them (so a plan change in progress does not hold
// the load up); it is a scalar subquery rather than NOT EXISTS so that it
// stays an index probe per load whatever the planner estimates (an
// anti-join may be planned as a scan of all users). ON CONFLICT settles a
// race with another provisioning, whose row wins. Inserting in id order
// (COLLATE "C") keeps two loads that provision the same new users from
// waiting on each other crosswise.
const ensureUsersSQL = `
INSERT INTO users (` + persistence.UserColumns + `)
SELECT g.id, $3::text, g.now, 1, g.now, g.now
FROM unnest($1::text[], $2::timestamptz[]) AS g(id, now)
WHERE (SELECT true FROM users u WHERE u.id = g.id) IS NULL
ORDER BY g.id COLLATE "C"
ON CONFLICT (id) DO NOTHING`

// loadUsersUsageSQL reads each load's user with the usage rows that can be
// its current period's. The period depends on the anchor, which is read in
// the same statement, so the statement cannot name it; it returns the rows
// starting in the last MaxPeriodLength up to max(now, anchor) — the
// current period starts there whatever the anchor (a clock behind the
// anchor is in the first period, which starts at the anchor) — and the
// caller keeps the row whose start is exactly the period's. Several rows
// come back only for a user whose anchor was moved within the last month.
// Both reads are LATERAL subqueries fenced with OFFSET 0, which keeps
// Postgres from flattening them into joins: the plan is then a nested loop
// of index lookups per load (users_pkey, then a range of usage_pkey),
// where the flattened query was planned, with the array's 256 values
// known, as hash joins over sequential scans of users and usage.
const loadUsersUsageSQL = `
SELECT g.i, u.id, u.plan, u.billing_anchor, u.version, u.created_at, u.updated_at,
       us.period_start, us.sessions, us.seconds, us.version
FROM unnest($1::text[], $2::timestamptz[]) WITH ORDINALITY AS g(id, now, i)
CROSS JOIN LATERAL (SELECT ` + persistence.UserColumns + ` FROM users WHERE users.id = g.id OFFSET 0) u
LEFT JOIN LATERAL (
    SELECT period_start, sessions, seconds, version FROM usage
    WHERE usage.user_id = g.id
      AND usage.period_start <= GREATEST(g.now, u.billing_anchor)
      AND usage.period_start > GREATEST(g.now, u.billing_anchor) - $3::interval
    OFFSET 0
) us ON true`

// EnsureUsersUsage provisions the loads' new users and reads every user
// with its current usage in one round trip: both statements go in one
// pipeline, which Postgres runs as one implicit transaction, so the read
// sees the users just inserted (or the rows of a concurrent provisioning
// that won, once it committed).
func (s *Store) EnsureUsersUsage(ctx context.Context, loads []persistence.UserLoad) ([]persistence.UserLoaded, error) {
	out := make([]persistence.UserLoaded, len(loads))
	if len(loads) == 0 {
		return out, nil
	}
	ids := make([]string, len(loads))
	nows := make([]time.Time, len(loads))
	// A user loaded twice is provisioned once, at its first load's now.
	newIDs := make([]string, 0, len(loads))
	newNows := make([]time.Time, 0, len(loads))
	seen := make(map[string]bool, len(loads))
	for i, l := range loads {
		ids[i], nows[i] = l.ID, ts(l.Now)
		if !seen[l.ID] {
			seen[l.ID] = true
			newIDs, newNows = append(newIDs, l.ID), append(newNows, nows[i])
		}
	}
	batch := &pgx.Batch{}
	batch.Queue(ensureUsersSQL, newIDs, newNows, domain.DefaultPlan)
	batch.Queue(loadUsersUsageSQL, ids, nows, domain.MaxPeriodLength)
	br := s.pool.SendBatch(ctx, batch)
	_, err := br.Exec()
	found := make([]bool, len(loads))
	if err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			var (
				i     int64
				u     domain.User
				start *time.Time // NULL: no usage row in the window
				cs    [3]*int64  // sessions, seconds, version
			)
			_, err = pgx.ForEachRow(rows, []any{&i, &u.ID, &u.Plan, &u.BillingAnchor, &u.Version, &u.CreatedAt, &u.UpdatedAt,
				&start, &cs[0], &cs[1], &cs[2]}, func() error {
				k := int(i) - 1
				if k < 0 || k >= len(loads) {
					return fmt.Errorf("load users usage: row for load %d of %d", i, len(loads))
				}
				if !found[k] {
					found[k] = true
					u.BillingAnchor, u.CreatedAt, u.UpdatedAt = u.BillingAnchor.UTC(), u.CreatedAt.UTC(), u.UpdatedAt.UTC()
					out[k] = persistence.UserLoaded{User: u, Period: u.Period(nows[k])}
				}
				// Only the row of exactly the user's period counts.
				if start != nil && start.Equal(out[k].Period.Start) {
					out[k].Counters = persistence.Counters{Usage: domain.Usage{Sessions: *cs[0], Seconds: *cs[1]}, Version: *cs[2]}
				}
				return nil
			})
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, translate("ensure users usage", err)
	}
	for k, ok := range found {
		if !ok {
			return nil, translate("ensure users usage", fmt.Errorf("user %s missing after it was provisioned", loads[k].ID))
		}
	}
	return out, nil
}
