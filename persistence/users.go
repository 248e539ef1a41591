package persistence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tally-dev/tally/domain"
)

// UserTx is one write transaction of a store, as admin user changes use it.
// Each store implements it on its driver; what a change does with it is
// written once, in UserChanges, so that both stores record the same events
// (docs/contract.md, "Audit trail").
type UserTx interface {
	// LockUser reads the user and keeps it from changing until the
	// transaction ends; domain.ErrNotFound when there is none.
	LockUser(ctx context.Context, id string) (domain.User, error)
	// InsertUser inserts u unless a user with its id exists (another
	// transaction provisioned it first: false).
	InsertUser(ctx context.Context, u domain.User) (bool, error)
	// UpdateUser sets the plan and/or anchor (nil keeps the value), bumps
	// the version, stamps updated_at with now and returns the row.
	UpdateUser(ctx context.Context, id string, plan *string, anchor *time.Time, now time.Time) (domain.User, error)
	// LoadCounters reads one period's usage; zero counters when it has no
	// row.
	LoadCounters(ctx context.Context, userID string, periodStart time.Time) (Counters, error)
	// InsertEvent records an admin change in the audit trail.
	InsertEvent(ctx context.Context, e domain.UserEvent) error
}

// UserChanges implements Store's PutUser over a store's transactions.
// Stores embed it, as they embed SessionStatus.
type UserChanges struct {
	// InTx runs fn in one write transaction, committing when fn returns
	// nil; op names the operation in errors. Errors are translated to the
	// domain's vocabulary; a *domain.Error returned by fn passes through.
	InTx func(ctx context.Context, op string, fn func(UserTx) error) error
}

// micro is how a time is stored by both stores: UTC, microseconds.
func micro(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// PutUser creates the user or changes its plan and/or anchor, bumping its
// version on every call, even one that sets the values the user already
// has: that is what fences off admissions decided before it. The change
// and its event commit together or not at all, so that the trail has
// exactly one event per version bump (which `tally verify` checks). The
// plan name is not checked against a catalog: that is the caller's concern.
func (s UserChanges) PutUser(ctx context.Context, c UserChange) (domain.User, error) {
	switch c.Kind {
	case "":
		c.Kind = domain.EventPutUser
	case domain.EventPutUser, domain.EventResetUsage:
	default:
		return domain.User{}, fmt.Errorf("put user %s: %q is not a user change", c.ID, c.Kind)
	}
	now := micro(c.Now)
	if c.Anchor != nil {
		a := micro(*c.Anchor)
		c.Anchor = &a
	}
	var (
		u  domain.User
		ev domain.UserEvent
	)
	err := s.InTx(ctx, "put user", func(tx UserTx) error {
		var err error
		if u, ev, err = applyUserChange(ctx, tx, c, now); err != nil {
			return err
		}
		return tx.InsertEvent(ctx, ev)
	})
	if err != nil {
		return domain.User{}, err
	}
	return u, nil
}

// applyUserChange makes the change in tx and returns the user after it and
// the event that records it: the user's state before (none when the change
// created the user) and after, each with the usage of the period current
// at now under that state's anchor.
func applyUserChange(ctx context.Context, tx UserTx, c UserChange, now time.Time) (domain.User, domain.UserEvent, error) {
	ev := domain.UserEvent{UserID: c.ID, Kind: c.Kind, Actor: c.By.Admin, RequestID: c.By.RequestID, OccurredAt: now}
	old, err := tx.LockUser(ctx, c.ID)
	if errors.Is(err, domain.ErrNotFound) {
		u := domain.User{ID: c.ID, Plan: domain.DefaultPlan, BillingAnchor: now, Version: 1, CreatedAt: now, UpdatedAt: now}
		if c.Plan != nil {
			u.Plan = *c.Plan
		}
		if c.Anchor != nil {
			u.BillingAnchor = *c.Anchor
		}
		inserted, ierr := tx.InsertUser(ctx, u)
		if ierr != nil {
			return domain.User{}, ev, ierr
		}
		if inserted {
			ev.UserVersion = u.Version
			ev.After, err = userState(ctx, tx, u, now)
			return u, ev, err
		}
		// Provisioned by another transaction since we looked: change it
		// like any existing user.
		old, err = tx.LockUser(ctx, c.ID)
	}
	if err != nil {
		return domain.User{}, ev, err
	}
	if ev.Before, err = userState(ctx, tx, old, now); err != nil {
		return domain.User{}, ev, err
	}
	u, err := tx.UpdateUser(ctx, c.ID, c.Plan, c.Anchor, now)
	if err != nil {
		return domain.User{}, ev, err
	}
	ev.UserVersion = u.Version
	ev.After, err = userState(ctx, tx, u, now)
	return u, ev, err
}

// userState is the JSON document of u's state at now.
func userState(ctx context.Context, tx UserTx, u domain.User, now time.Time) (json.RawMessage, error) {
	p := u.Period(now)
	c, err := tx.LoadCounters(ctx, u.ID, p.Start)
	if err != nil {
		return nil, err
	}
	return json.Marshal(domain.UserState{
		Plan: u.Plan, BillingAnchor: u.BillingAnchor.UTC(), Version: u.Version,
		PeriodStart: p.Start.UTC(), PeriodEnd: p.End.UTC(), Sessions: c.Sessions, Seconds: c.Seconds,
	})
}
