package storetest

import (
	"fmt"
	"testing"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// limitCase is one row of the limit table: a plan's session and minute
// limits, the period's usage, and whether one more session is admitted.
type limitCase struct {
	MaxSessions, MaxMinutes domain.Limit
	Used                    domain.Usage
	Admitted                bool
}

// Plan is the case's plan.
func (c limitCase) Plan() domain.Plan {
	return domain.Plan{Name: "table", MaxSessions: c.MaxSessions, MaxTotalMinutes: c.MaxMinutes, MaxFileSizeMB: domain.Unlimited}
}

func (c limitCase) String() string {
	return fmt.Sprintf("sessions %d/%d, seconds %d/%d min", c.Used.Sessions, c.MaxSessions, c.Used.Seconds, c.MaxMinutes)
}

// limitTable is the one table of the admission arithmetic
// (docs/contract.md, "Plans and limits"): limits -1, 0, 1, 10 sessions and
// -1, 0, 1, 10, 120 minutes, with usage below, at and above each. Both
// sides of the rule run it, domain.Admit (TestLimitTableDomain, and each
// store's run) and every store's Admit (the AdmitLimitTable contract
// test), and compare with the Admitted written here, so that a change to
// either side's comparison (< to <=, a lost unlimited case) fails it. The
// stores see the limits only as the ceilings domain.Limit.Ceiling
// computes.
//
// Seconds can only be recorded on an admitted session, so a case with
// seconds used has at least one session used.
var limitTable = []limitCase{
	// Sessions, minutes unlimited.
	{MaxSessions: domain.Unlimited, MaxMinutes: domain.Unlimited, Used: domain.Usage{}, Admitted: true},
	{MaxSessions: domain.Unlimited, MaxMinutes: domain.Unlimited, Used: domain.Usage{Sessions: 11}, Admitted: true},
	{MaxSessions: 0, MaxMinutes: domain.Unlimited, Used: domain.Usage{}, Admitted: false},
	{MaxSessions: 0, MaxMinutes: domain.Unlimited, Used: domain.Usage{Sessions: 1}, Admitted: false},
	{MaxSessions: 1, MaxMinutes: domain.Unlimited, Used: domain.Usage{}, Admitted: true},
	{MaxSessions: 1, MaxMinutes: domain.Unlimited, Used: domain.Usage{Sessions: 1}, Admitted: false},
	{MaxSessions: 1, MaxMinutes: domain.Unlimited, Used: domain.Usage{Sessions: 2}, Admitted: false},
	{MaxSessions: 10, MaxMinutes: domain.Unlimited, Used: domain.Usage{}, Admitted: true},
	{MaxSessions: 10, MaxMinutes: domain.Unlimited, Used: domain.Usage{Sessions: 9}, Admitted: true},
	{MaxSessions: 10, MaxMinutes: domain.Unlimited, Used: domain.Usage{Sessions: 10}, Admitted: false},
	{MaxSessions: 10, MaxMinutes: domain.Unlimited, Used: domain.Usage{Sessions: 11}, Admitted: false},

	// Minutes (kept in seconds), sessions unlimited.
	{MaxSessions: domain.Unlimited, MaxMinutes: domain.Unlimited, Used: domain.Usage{Sessions: 2, Seconds: 2 * domain.MaxDurationSeconds}, Admitted: true},
	{MaxSessions: domain.Unlimited, MaxMinutes: 0, Used: domain.Usage{}, Admitted: false},
	{MaxSessions: domain.Unlimited, MaxMinutes: 0, Used: domain.Usage{Sessions: 1, Seconds: 1}, Admitted: false},
	{MaxSessions: domain.Unlimited, MaxMinutes: 1, Used: domain.Usage{}, Admitted: true},
	{MaxSessions: domain.Unlimited, MaxMinutes: 1, Used: domain.Usage{Sessions: 1, Seconds: 59}, Admitted: true},
	{MaxSessions: domain.Unlimited, MaxMinutes: 1, Used: domain.Usage{Sessions: 1, Seconds: 60}, Admitted: false},
	{MaxSessions: domain.Unlimited, MaxMinutes: 1, Used: domain.Usage{Sessions: 1, Seconds: 61}, Admitted: false},
	{MaxSessions: domain.Unlimited, MaxMinutes: 10, Used: domain.Usage{Sessions: 1, Seconds: 599}, Admitted: true},
	{MaxSessions: domain.Unlimited, MaxMinutes: 10, Used: domain.Usage{Sessions: 1, Seconds: 600}, Admitted: false},
	{MaxSessions: domain.Unlimited, MaxMinutes: 10, Used: domain.Usage{Sessions: 1, Seconds: 601}, Admitted: false},
	{MaxSessions: domain.Unlimited, MaxMinutes: 120, Used: domain.Usage{Sessions: 1, Seconds: 7199}, Admitted: true},
	{MaxSessions: domain.Unlimited, MaxMinutes: 120, Used: domain.Usage{Sessions: 1, Seconds: 7200}, Admitted: false},
	{MaxSessions: domain.Unlimited, MaxMinutes: 120, Used: domain.Usage{Sessions: 1, Seconds: 7201}, Admitted: false},

	// Both limits finite (the free plan's): either one refuses alone.
	{MaxSessions: 10, MaxMinutes: 120, Used: domain.Usage{Sessions: 9, Seconds: 7199}, Admitted: true},
	{MaxSessions: 10, MaxMinutes: 120, Used: domain.Usage{Sessions: 10, Seconds: 7199}, Admitted: false},
	{MaxSessions: 10, MaxMinutes: 120, Used: domain.Usage{Sessions: 9, Seconds: 7200}, Admitted: false},
	{MaxSessions: 1, MaxMinutes: 1, Used: domain.Usage{}, Admitted: true},
	{MaxSessions: 0, MaxMinutes: 120, Used: domain.Usage{}, Admitted: false},
	{MaxSessions: 10, MaxMinutes: 0, Used: domain.Usage{}, Admitted: false},
}

// domainAdmits is domain.Admit's verdict on c.
func domainAdmits(t *testing.T, c limitCase) bool {
	t.Helper()
	err := domain.Admit(c.Plan(), c.Used, domain.Period{})
	if err != nil && domain.ErrorCode(err) != domain.CodeSessionLimit && domain.ErrorCode(err) != domain.CodeTranscriptionLimit {
		t.Fatalf("%v: domain.Admit: %v", c, err)
	}
	return err == nil
}

// testAdmitLimitTable runs limitTable through the store's Admit, on every
// path a store may decide on: without a key, with and without the
// FirstOfPeriod hint (on Postgres, the group commit's first and second
// pass), and with a key (Postgres' per-request statement). Each run seeds a
// fresh user's period to the case's usage, admits one session with the
// plan's limits, and compares the outcome with the table and with
// domain.Admit.
func testAdmitLimitTable(t *testing.T, s persistence.Store) {
	paths := []struct {
		name  string
		apply func(r persistence.AdmitRequest, c limitCase) persistence.AdmitRequest
	}{
		{"hinted", func(r persistence.AdmitRequest, c limitCase) persistence.AdmitRequest {
			r.FirstOfPeriod = c.Used == (domain.Usage{}) // what a caller that loaded the usage says
			return r
		}},
		{"unhinted", func(r persistence.AdmitRequest, _ limitCase) persistence.AdmitRequest { return r }},
		{"keyed", func(r persistence.AdmitRequest, _ limitCase) persistence.AdmitRequest {
			return keyed(r, "key", "hash")
		}},
	}
	for i, c := range limitTable {
		if got := domainAdmits(t, c); got != c.Admitted {
			t.Fatalf("%v: domain.Admit admits = %t, want %t", c, got, c.Admitted)
		}
		for _, p := range paths {
			u := ensureUser(t, s, fmt.Sprintf("limits-%02d-%s", i, p.name))
			seedUsage(t, s, u, c.Used)
			plan := c.Plan()
			r := p.apply(request(u, u.ID+"-admit", t0, plan.MaxSessions, plan.MaxSeconds()), c)
			got := admit(t, s, r)[0]
			want, wantUsed := persistence.OverLimit, c.Used
			if c.Admitted {
				want, wantUsed = persistence.Admitted, domain.Usage{Sessions: c.Used.Sessions + 1, Seconds: c.Used.Seconds}
			}
			if got.Outcome != want || got.Counters.Usage != wantUsed {
				t.Errorf("%v, %s: store says %v with usage %+v; domain.Admit and the table say %v with usage %+v",
					c, p.name, got.Outcome, got.Counters.Usage, want, wantUsed)
			}
		}
	}
}

// seedUsage brings u's period at t0 to used: that many sessions admitted
// without limits, the seconds recorded on them by completions.
func seedUsage(t *testing.T, s persistence.Store, u domain.User, used domain.Usage) {
	t.Helper()
	if used.Seconds > used.Sessions*domain.MaxDurationSeconds {
		t.Fatalf("usage %+v: seconds need more sessions to be recorded on", used)
	}
	var reqs []persistence.AdmitRequest
	for k := range used.Sessions {
		reqs = append(reqs, request(u, fmt.Sprintf("%s-seed-%02d", u.ID, k), t0, unlimited, unlimited))
	}
	if len(reqs) > 0 {
		for _, res := range admit(t, s, reqs...) {
			if res.Outcome != persistence.Admitted {
				t.Fatalf("seeding %s: %v", u.ID, res.Outcome)
			}
		}
	}
	left := used.Seconds
	for k := 0; left > 0; k++ {
		n := min(left, domain.MaxDurationSeconds)
		if _, _, err := s.CompleteSession(t.Context(), ops, reqs[k].Session.ID, n, t0, nil); err != nil {
			t.Fatalf("seeding %s: CompleteSession: %v", u.ID, err)
		}
		left -= n
	}
	c, err := s.LoadUsage(t.Context(), u.ID, u.Period(t0).Start)
	if err != nil || c.Usage != used {
		t.Fatalf("seeding %s: usage %+v, %v; want %+v", u.ID, c.Usage, err, used)
	}
}
