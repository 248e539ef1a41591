package webhooks

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// fakeOutbox is an in-memory persistence.Outbox that keeps the parts of
// the contract the dispatcher relies on: a claim hands out only each
// user's oldest pending alert, only when due, never while another claim
// of it is live, and counts as an attempt; a settlement must present the
// claim's token.
type fakeOutbox struct {
	mu        sync.Mutex
	rows      []*fakeRow // by id
	nextID    int64
	nextClaim int64
	settles   []persistence.Settlement
	claims    int
	claimErr  error // when set, ClaimDeliveries fails with it
	settleErr error // when set, SettleDelivery fails with it
	// onSettle, when set, is called (without the lock) after a settlement
	// is recorded.
	onSettle func(persistence.Settlement)
}

type fakeRow struct {
	d            domain.Delivery
	claimedUntil time.Time // zero: no live claim
}

var _ persistence.Outbox = (*fakeOutbox)(nil)

// add records a pending alert due at once and returns its id.
func (f *fakeOutbox) add(a domain.Alert) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nextID++
	a.ID = f.nextID
	f.rows = append(f.rows, &fakeRow{d: domain.Delivery{Alert: a, Status: domain.DeliveryPending, NextAttemptAt: a.OccurredAt}})
	return a.ID
}

func (f *fakeOutbox) RecordAlertSettings(context.Context, []int, time.Time) error { return nil }

func (f *fakeOutbox) RecordLimitReached(_ context.Context, alerts []domain.Alert) (int, error) {
	for _, a := range alerts {
		f.add(a)
	}
	return len(alerts), nil
}

func (f *fakeOutbox) ClaimDeliveries(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]domain.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.claims++
	if f.claimErr != nil {
		return nil, f.claimErr
	}
	if limit <= 0 || lease <= 0 {
		return nil, errors.New("fake outbox: limit and lease must be positive")
	}
	var out []domain.Delivery
	heads := map[string]bool{}
	for _, r := range f.rows {
		if r.d.Status != domain.DeliveryPending || heads[r.d.UserID] {
			continue
		}
		heads[r.d.UserID] = true // the user's oldest pending: later ones wait
		if r.d.NextAttemptAt.After(now) || r.claimedUntil.After(now) || len(out) == limit {
			continue
		}
		f.nextClaim++
		r.d.Claim = f.nextClaim
		r.d.Attempts++
		r.d.LastAttemptAt = now
		r.claimedUntil = now.Add(lease)
		out = append(out, r.d)
	}
	return out, nil
}

func (f *fakeOutbox) SettleDelivery(ctx context.Context, s persistence.Settlement) (bool, error) {
	f.mu.Lock()
	if f.settleErr != nil {
		f.mu.Unlock()
		return false, f.settleErr
	}
	r := f.row(s.ID)
	if r == nil || r.d.Claim != s.Claim || r.d.Status != domain.DeliveryPending {
		f.mu.Unlock()
		return false, nil
	}
	switch s.Status {
	case domain.DeliveryPending, domain.DeliveryDelivered, domain.DeliveryFailed:
	default:
		f.mu.Unlock()
		return false, errors.New("fake outbox: settlement with an invalid status")
	}
	r.d.Status = s.Status
	r.d.LastStatus = s.HTTPStatus
	r.d.LastError = s.Error
	r.d.LastAttemptAt = s.At
	r.claimedUntil = time.Time{}
	switch s.Status {
	case domain.DeliveryPending:
		r.d.NextAttemptAt = s.NextAttemptAt
	case domain.DeliveryDelivered:
		r.d.DeliveredAt = s.At
	}
	f.settles = append(f.settles, s)
	hook := f.onSettle
	f.mu.Unlock()
	if hook != nil {
		hook(s)
	}
	return true, nil
}

func (f *fakeOutbox) OutboxDepth(context.Context) (int64, time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n int64
	var oldest time.Time
	for _, r := range f.rows {
		if r.d.Status == domain.DeliveryPending {
			n++
			if oldest.IsZero() || r.d.OccurredAt.Before(oldest) {
				oldest = r.d.OccurredAt
			}
		}
	}
	return n, oldest, nil
}

func (f *fakeOutbox) ListDeliveries(_ context.Context, status domain.DeliveryStatus, limit int, before int64) ([]domain.Delivery, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []domain.Delivery
	for _, r := range slices.Backward(f.rows) {
		if (status == "" || r.d.Status == status) && (before == 0 || r.d.ID < before) && len(out) < limit {
			out = append(out, r.d)
		}
	}
	return out, nil
}

func (f *fakeOutbox) GetDelivery(_ context.Context, id int64) (domain.Delivery, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r := f.row(id); r != nil {
		return r.d, nil
	}
	return domain.Delivery{}, domain.ErrNotFound
}

func (f *fakeOutbox) RetryDelivery(_ context.Context, id int64, now time.Time) (domain.Delivery, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.row(id)
	if r == nil {
		return domain.Delivery{}, domain.ErrNotFound
	}
	if r.d.Status != domain.DeliveryFailed {
		return domain.Delivery{}, errors.New("fake outbox: not failed")
	}
	r.d.Status, r.d.NextAttemptAt = domain.DeliveryPending, now
	return r.d, nil
}

func (f *fakeOutbox) row(id int64) *fakeRow {
	for _, r := range f.rows {
		if r.d.ID == id {
			return r
		}
	}
	return nil
}

// get returns delivery id, failing t when there is none.
func (f *fakeOutbox) get(t *testing.T, id int64) domain.Delivery {
	t.Helper()
	d, err := f.GetDelivery(context.Background(), id)
	if err != nil {
		t.Fatalf("delivery %d: %v", id, err)
	}
	return d
}

// settleCount is how many settlements were recorded.
func (f *fakeOutbox) settleCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.settles)
}

// settlements returns the settlements of delivery id so far, in order.
func (f *fakeOutbox) settlements(id int64) []persistence.Settlement {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []persistence.Settlement
	for _, s := range f.settles {
		if s.ID == id {
			out = append(out, s)
		}
	}
	return out
}

// busy reports whether a claim is live at now: an attempt may be in
// flight.
func (f *fakeOutbox) busy(now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.rows {
		if r.d.Status == domain.DeliveryPending && r.claimedUntil.After(now) {
			return true
		}
	}
	return false
}

func (f *fakeOutbox) setClaimErr(err error) {
	f.mu.Lock()
	f.claimErr = err
	f.mu.Unlock()
}

// clock is a manual clock: tests move it past backoffs instead of
// waiting them out.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *clock { return &clock{t: t} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
