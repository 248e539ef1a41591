package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

func scanUser(row scanner) (domain.User, error) {
	var (
		u                        domain.User
		anchor, created, updated int64
	)
	if err := row.Scan(&u.ID, &u.Plan, &anchor, &u.Version, &created, &updated); err != nil {
		return domain.User{}, err
	}
	u.BillingAnchor, u.CreatedAt, u.UpdatedAt = fromMicros(anchor), fromMicros(created), fromMicros(updated)
	return u, nil
}

// EnsureUser returns the user, provisioning it on domain.DefaultPlan with
// billing anchor now when it does not exist yet.
func (s *Store) EnsureUser(ctx context.Context, id string, now time.Time) (domain.User, error) {
	// Known users are the common case: one read, no write lock.
	u, err := s.getUser(ctx, s.read, id)
	if !errors.Is(err, sql.ErrNoRows) {
		return u, s.translate("ensure user", err)
	}
	err = s.inTx(ctx, "ensure user", func(tx *sql.Tx) error {
		n := micros(now)
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO users (`+persistence.UserColumns+`) VALUES (?, ?, ?, 1, ?, ?)
			ON CONFLICT (id) DO NOTHING`,
			id, domain.DefaultPlan, n, n, n); err != nil {
			return err
		}
		// Either our row or the one another request inserted first.
		u, err = s.getUser(ctx, tx, id)
		return err
	})
	return u, err
}

// GetUser returns the user or domain.ErrNotFound.
func (s *Store) GetUser(ctx context.Context, id string) (domain.User, error) {
	u, err := s.getUser(ctx, s.read, id)
	if errors.Is(err, sql.ErrNoRows) {
		return domain.User{}, domain.ErrNotFound
	}
	return u, s.translate("get user", err)
}

func (s *Store) getUser(ctx context.Context, q querier, id string) (domain.User, error) {
	return scanUser(q.QueryRowContext(ctx, `SELECT `+persistence.UserColumns+` FROM users WHERE id = ?`, id))
}

// LoadUsage returns the counters of the period starting at periodStart, or
// zero counters (version 0) when nothing was recorded in it.
func (s *Store) LoadUsage(ctx context.Context, userID string, periodStart time.Time) (persistence.Counters, error) {
	c, err := loadCounters(ctx, s.read, userID, periodStart)
	return c, s.translate("load usage", err)
}

// loadCounters reads one usage row; a missing row is zero counters.
func loadCounters(ctx context.Context, q querier, userID string, periodStart time.Time) (persistence.Counters, error) {
	return persistence.ScanCounters(q.QueryRowContext(ctx, `
		SELECT sessions, seconds, version FROM usage
		WHERE user_id = ? AND period_start = ?`,
		userID, micros(periodStart)).Scan, sql.ErrNoRows)
}

// LoadUserUsage reads the user and one period's usage in one statement.
func (s *Store) LoadUserUsage(ctx context.Context, userID string, periodStart time.Time) (domain.User, persistence.Counters, error) {
	var (
		u                        domain.User
		c                        persistence.Counters
		anchor, created, updated int64
	)
	err := s.read.QueryRowContext(ctx, `
		SELECT u.id, u.plan, u.billing_anchor, u.version, u.created_at, u.updated_at,
		       COALESCE(us.sessions, 0), COALESCE(us.seconds, 0), COALESCE(us.version, 0)
		FROM users u
		LEFT JOIN usage us ON us.user_id = u.id AND us.period_start = ?
		WHERE u.id = ?`, micros(periodStart), userID).
		Scan(&u.ID, &u.Plan, &anchor, &u.Version, &created, &updated, &c.Sessions, &c.Seconds, &c.Version)
	if errors.Is(err, sql.ErrNoRows) {
		return domain.User{}, persistence.Counters{}, domain.ErrNotFound
	}
	if err != nil {
		return domain.User{}, persistence.Counters{}, s.translate("load user usage", err)
	}
	u.BillingAnchor, u.CreatedAt, u.UpdatedAt = fromMicros(anchor), fromMicros(created), fromMicros(updated)
	return u, c, nil
}

// EnsureUsersUsage provisions the loads' new users in one write transaction
// (known users need none) and reads every user's current usage. Reads and
// writes are in-process here, so batching saves fsyncs, not round trips.
func (s *Store) EnsureUsersUsage(ctx context.Context, loads []persistence.UserLoad) ([]persistence.UserLoaded, error) {
	out := make([]persistence.UserLoaded, len(loads))
	nows := make([]time.Time, len(loads))
	var missing []int
	for i, l := range loads {
		nows[i] = l.Now.UTC().Truncate(time.Microsecond)
		u, err := s.getUser(ctx, s.read, l.ID)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			missing = append(missing, i)
		case err != nil:
			return nil, s.translate("ensure users usage", err)
		default:
			out[i].User = u
		}
	}
	if len(missing) > 0 {
		err := s.inTx(ctx, "ensure users usage", func(tx *sql.Tx) error {
			for _, i := range missing {
				n := micros(nows[i])
				if _, err := tx.ExecContext(ctx, `
					INSERT INTO users (`+persistence.UserColumns+`) VALUES (?, ?, ?, 1, ?, ?)
					ON CONFLICT (id) DO NOTHING`,
					loads[i].ID, domain.DefaultPlan, n, n, n); err != nil {
					return err
				}
				// Ours, an earlier load's of the same id, or another
				// request's that provisioned it first.
				u, err := s.getUser(ctx, tx, loads[i].ID)
				if err != nil {
					return err
				}
				out[i].User = u
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	for i := range out {
		out[i].Period = out[i].User.Period(nows[i])
		c, err := loadCounters(ctx, s.read, loads[i].ID, out[i].Period.Start)
		if err != nil {
			return nil, s.translate("ensure users usage", err)
		}
		out[i].Counters = c
	}
	return out, nil
}
