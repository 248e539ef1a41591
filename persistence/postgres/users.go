package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

const userColumns = `id, plan, billing_anchor, version, created_at, updated_at`

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
		INSERT INTO users (`+userColumns+`)
		VALUES ($1, $2, $3, 1, $3, $3)
		ON CONFLICT (id) DO NOTHING
		RETURNING `+userColumns,
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
	return scanUser(s.pool.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1`, id))
}

// PutUser creates the user or changes its plan and/or anchor, bumping its
// version on every call so that admissions decided under the old version
// are refused by the fence. The plan name is not checked against a catalog:
// that is the caller's concern.
func (s *Store) PutUser(ctx context.Context, c persistence.UserChange) (domain.User, error) {
	now := ts(c.Now)
	var anchor *time.Time
	if c.Anchor != nil {
		a := ts(*c.Anchor)
		anchor = &a
	}
	u, err := scanUser(s.pool.QueryRow(ctx, `
		INSERT INTO users AS u (`+userColumns+`)
		VALUES ($1, COALESCE($2::text, $4), COALESCE($3::timestamptz, $5::timestamptz), 1, $5, $5)
		ON CONFLICT (id) DO UPDATE SET
		    plan           = COALESCE($2::text, u.plan),
		    billing_anchor = COALESCE($3::timestamptz, u.billing_anchor),
		    version        = u.version + 1,
		    updated_at     = $5
		RETURNING `+userColumns,
		c.ID, c.Plan, anchor, domain.DefaultPlan, now))
	return u, translate("put user", err)
}

// LoadUsage returns the counters of the period starting at periodStart, or
// zero counters (version 0) when nothing was recorded in it.
func (s *Store) LoadUsage(ctx context.Context, userID string, periodStart time.Time) (persistence.Counters, error) {
	c, err := loadCounters(ctx, s.pool, userID, ts(periodStart))
	return c, translate("load usage", err)
}

// loadCounters reads one usage row; a missing row is zero counters.
func loadCounters(ctx context.Context, q querier, userID string, periodStart time.Time) (persistence.Counters, error) {
	var c persistence.Counters
	err := q.QueryRow(ctx, `
		SELECT sessions, seconds, version FROM usage
		WHERE user_id = $1 AND period_start = $2`,
		userID, periodStart).Scan(&c.Sessions, &c.Seconds, &c.Version)
	if errors.Is(err, pgx.ErrNoRows) {
		return persistence.Counters{}, nil
	}
	return c, err
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
