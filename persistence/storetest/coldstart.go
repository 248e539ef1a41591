package storetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// What a cold start exercises: a period's first admission with the
// FirstOfPeriod hint (right or wrong), and users loaded in batches.

// hinted is r with its FirstOfPeriod hint set to first.
func hinted(r persistence.AdmitRequest, first bool) persistence.AdmitRequest {
	r.FirstOfPeriod = first
	return r
}

// wantNoUsageRow checks that no usage row exists for the user and period
// (LoadUsage cannot tell a missing row from a zero one; ScanUsage can).
func wantNoUsageRow(t *testing.T, s persistence.Store, userID string, periodStart time.Time) {
	t.Helper()
	for _, r := range scanUsage(t, s, time.Time{}) {
		if r.UserID == userID && r.PeriodStart.Equal(periodStart) {
			t.Fatalf("usage row %+v exists; want none", r)
		}
	}
}

func testAdmitFirstOfPeriodHints(t *testing.T, s persistence.Store) {
	// One batch mixing every case: counted rows (bob now, 2 of 3 used),
	// first admissions of a period hinted as such (amy now, bob next
	// month), a hint that is wrong both ways (cat's row exists although the
	// hint says new: another process created it; dan's is missing although
	// the hint says it exists), and limits of 0 with the hint (zoe, yan: no
	// row may be created). Each must be decided exactly once, exactly.
	amy, bob, cat, dan := ensureUser(t, s, "amy"), ensureUser(t, s, "bob"), ensureUser(t, s, "cat"), ensureUser(t, s, "dan")
	yan, zoe := ensureUser(t, s, "yan"), ensureUser(t, s, "zoe")
	admit(t, s, request(bob, "b1", t0, 3, unlimited), request(bob, "b2", t0, 3, unlimited))
	admit(t, s, request(cat, "c1", t0, 5, unlimited))
	next := bob.Period(t0).End
	reqs := []persistence.AdmitRequest{
		hinted(request(bob, "b3", t0, 3, unlimited), false),
		hinted(request(amy, "a1", t0, 2, unlimited), true),
		hinted(request(bob, "n1", next, 3, unlimited), true),
		hinted(request(zoe, "z1", t0, 0, unlimited), true),
		hinted(request(cat, "c2", t0, 5, unlimited), true),
		hinted(request(dan, "d1", t0, 2, unlimited), false),
		hinted(request(bob, "b4", t0, 3, unlimited), false),
		hinted(request(amy, "a2", t0, 2, unlimited), true),
		hinted(request(yan, "y1", t0, unlimited, 0), true),
		hinted(request(amy, "a3", t0, 2, unlimited), true),
		hinted(request(dan, "d2", t0, 2, unlimited), false),
		hinted(request(dan, "d3", t0, 2, unlimited), true),
	}
	res := admit(t, s, reqs...)
	wantResult(t, "b3", res[0], persistence.Admitted, counters(3, 0, 3))
	wantResult(t, "a1", res[1], persistence.Admitted, counters(1, 0, 1))
	wantResult(t, "n1", res[2], persistence.Admitted, counters(1, 0, 1))
	wantResult(t, "z1", res[3], persistence.OverLimit, persistence.Counters{})
	wantResult(t, "c2", res[4], persistence.Admitted, counters(2, 0, 2))
	wantResult(t, "d1", res[5], persistence.Admitted, counters(1, 0, 1))
	wantResult(t, "b4", res[6], persistence.OverLimit, counters(3, 0, 3))
	wantResult(t, "a2", res[7], persistence.Admitted, counters(2, 0, 2))
	wantResult(t, "y1", res[8], persistence.OverLimit, persistence.Counters{})
	wantResult(t, "a3", res[9], persistence.OverLimit, counters(2, 0, 2))
	wantResult(t, "d2", res[10], persistence.Admitted, counters(2, 0, 2))
	wantResult(t, "d3", res[11], persistence.OverLimit, counters(2, 0, 2))
	for i, r := range reqs {
		if res[i].Outcome == persistence.Admitted {
			wantSession(t, r.Session.ID, getSession(t, s, r.Session.ID), created(r))
		} else {
			wantNoSession(t, s, r.Session.ID)
		}
	}
	wantUsage(t, s, "bob", bob.Period(t0).Start, counters(3, 0, 3))
	wantUsage(t, s, "bob", next, counters(1, 0, 1))
	wantUsage(t, s, "amy", amy.Period(t0).Start, counters(2, 0, 2))
	wantUsage(t, s, "cat", cat.Period(t0).Start, counters(2, 0, 2))
	wantUsage(t, s, "dan", dan.Period(t0).Start, counters(2, 0, 2))
	wantNoUsageRow(t, s, "zoe", us(zoe.Period(t0).Start))
	wantNoUsageRow(t, s, "yan", us(yan.Period(t0).Start))

	// A hinted admission of a stale user creates nothing either.
	stale := amy
	stale.Version = 0
	wantResult(t, "stale, hinted", admit(t, s, hinted(request(stale, "x1", next, 2, unlimited), true))[0],
		persistence.StaleUser, persistence.Counters{})
	wantNoUsageRow(t, s, "amy", us(next))
}

func testAdmitFirstOfPeriodConcurrently(t *testing.T, s persistence.Store) {
	// Many transactions racing for a period that has no row yet, some
	// hinted and some not: the row is created once and the limit holds.
	const (
		limit   = 10
		callers = 40
	)
	u := ensureUser(t, s, "alice")
	results := make([]persistence.AdmitResult, callers)
	errs := make([]error, callers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			<-start
			r := hinted(request(u, fmt.Sprintf("c%02d", i), t0, limit, unlimited), i%4 != 3)
			res, err := s.Admit(t.Context(), []persistence.AdmitRequest{r})
			if err == nil {
				results[i] = res[0]
			}
			errs[i] = err
		})
	}
	close(start)
	wg.Wait()
	admitted := 0
	seen := map[int64]bool{}
	for i, r := range results {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		switch r.Outcome {
		case persistence.Admitted:
			admitted++
			if seen[r.Counters.Sessions] || r.Counters.Sessions < 1 || r.Counters.Sessions > limit {
				t.Fatalf("caller %d admitted with counters %+v", i, r.Counters)
			}
			seen[r.Counters.Sessions] = true
		case persistence.OverLimit:
			if r.Counters.Sessions != limit {
				t.Fatalf("caller %d refused with counters %+v", i, r.Counters)
			}
		default:
			t.Fatalf("caller %d: outcome %v", i, r.Outcome)
		}
	}
	if admitted != limit {
		t.Fatalf("%d admitted, want %d", admitted, limit)
	}
	wantUsage(t, s, u.ID, u.Period(t0).Start, counters(limit, 0, limit))
}

// ensureUsersUsage calls EnsureUsersUsage and checks the answer's shape.
func ensureUsersUsage(t *testing.T, s persistence.Store, loads ...persistence.UserLoad) []persistence.UserLoaded {
	t.Helper()
	got, err := s.EnsureUsersUsage(t.Context(), loads)
	if err != nil {
		t.Fatalf("EnsureUsersUsage: %v", err)
	}
	if len(got) != len(loads) {
		t.Fatalf("EnsureUsersUsage returned %d results for %d loads", len(got), len(loads))
	}
	return got
}

// wantLoaded checks one result against what EnsureUser, then LoadUsage of
// the user's period at now, read apart, say now — and against want.
func wantLoaded(t *testing.T, s persistence.Store, what string, got persistence.UserLoaded, now time.Time, want persistence.Counters) {
	t.Helper()
	u, err := s.GetUser(t.Context(), got.User.ID)
	if err != nil {
		t.Fatalf("%s: GetUser: %v", what, err)
	}
	p := u.Period(now)
	c, err := s.LoadUsage(t.Context(), u.ID, p.Start)
	if err != nil {
		t.Fatalf("%s: LoadUsage: %v", what, err)
	}
	if got.User != u || got.Period != p || got.Counters != c || c != want {
		t.Fatalf("%s: got %+v %+v %+v; read apart %+v %+v %+v; want counters %+v", what, got.User, got.Period, got.Counters, u, p, c, want)
	}
}

func testEnsureUsersUsage(t *testing.T, s persistence.Store) {
	if got := ensureUsersUsage(t, s); len(got) != 0 {
		t.Fatalf("no loads: %+v", got)
	}

	// A new user: provisioned like EnsureUser does, anchored at its now.
	got := ensureUsersUsage(t, s, persistence.UserLoad{ID: "new", Now: t0})
	want := domain.User{ID: "new", Plan: domain.DefaultPlan, BillingAnchor: us(t0), Version: 1, CreatedAt: us(t0), UpdatedAt: us(t0)}
	if got[0].User != want || got[0].Period != want.Period(us(t0)) || got[0].Counters != (persistence.Counters{}) {
		t.Fatalf("new user: %+v, want %+v in its first period with zero counters", got[0], want)
	}
	wantLoaded(t, s, "new user", got[0], t0, persistence.Counters{})

	// Known users: untouched (not re-anchored), with their usage.
	old := ensureUser(t, s, "old")
	busy := ensureUser(t, s, "busy")
	admit(t, s, request(busy, "b1", t0, unlimited, unlimited), request(busy, "b2", t0, unlimited, unlimited))
	if _, _, err := s.CompleteSession(t.Context(), ops, "b1", 90, t0, nil); err != nil {
		t.Fatal(err)
	}
	later := t0.Add(72 * time.Hour)
	got = ensureUsersUsage(t, s, persistence.UserLoad{ID: "old", Now: later}, persistence.UserLoad{ID: "busy", Now: later})
	if got[0].User != old || got[1].User != busy {
		t.Fatalf("known users changed: %+v %+v, want %+v %+v", got[0].User, got[1].User, old, busy)
	}
	wantLoaded(t, s, "known user", got[0], later, persistence.Counters{})
	wantLoaded(t, s, "known user with usage", got[1], later, counters(2, 90, 3))
}

func testEnsureUsersUsagePicksThePeriod(t *testing.T, s persistence.Store) {
	// An anchor months back: the current period is the k-th (k > 0), and
	// the usage of the previous periods is not it.
	anchor := t0.AddDate(0, -3, -5)
	ago := putUser(t, s, persistence.UserChange{ID: "ago", Anchor: &anchor, Now: t0})
	prev := t0.AddDate(0, -1, 0)
	if ago.Period(prev) == ago.Period(t0) || ago.Period(t0).Start.Equal(us(anchor)) {
		t.Fatalf("test setup: periods %+v %+v", ago.Period(prev), ago.Period(t0))
	}
	admit(t, s, request(ago, "p1", prev, unlimited, unlimited), request(ago, "p2", prev, unlimited, unlimited))
	admit(t, s, request(ago, "c1", t0, unlimited, unlimited))

	// An anchor moved within the month: the old period's row still starts
	// in the last month, before now, but the current period is another one
	// with no row yet. Its counters must be zero, not the old row's.
	moved := ensureUser(t, s, "moved")
	admit(t, s, request(moved, "m1", t0, unlimited, unlimited), request(moved, "m2", t0, unlimited, unlimited))
	reset := t0.Add(48 * time.Hour)
	moved = putUser(t, s, persistence.UserChange{ID: "moved", Anchor: &reset, Now: reset})
	// And one moved earlier than its usage: the old row starts after the
	// new period's start, and before now.
	back := ensureUser(t, s, "back")
	admit(t, s, request(back, "k1", t0, unlimited, unlimited))
	earlier := t0.Add(-10 * 24 * time.Hour)
	back = putUser(t, s, persistence.UserChange{ID: "back", Anchor: &earlier, Now: t0})

	// A clock behind the anchor (another process reset the usage an instant
	// ago): the first period, which starts at the anchor, not one before.
	ahead := t0.Add(time.Minute)
	fwd := putUser(t, s, persistence.UserChange{ID: "fwd", Anchor: &ahead, Now: t0})
	admit(t, s, request(fwd, "f1", ahead, unlimited, unlimited))

	now := reset.Add(time.Hour)
	got := ensureUsersUsage(t, s,
		persistence.UserLoad{ID: "ago", Now: t0},
		persistence.UserLoad{ID: "moved", Now: now},
		persistence.UserLoad{ID: "back", Now: t0.Add(time.Hour)},
		persistence.UserLoad{ID: "fwd", Now: t0},
	)
	wantLoaded(t, s, "anchor months back", got[0], t0, counters(1, 0, 1))
	if got[0].Period != ago.Period(t0) {
		t.Fatalf("anchor months back: period %+v, want %+v", got[0].Period, ago.Period(t0))
	}
	wantLoaded(t, s, "anchor moved forward", got[1], now, persistence.Counters{})
	if got[1].User != moved || !got[1].Period.Start.Equal(us(reset)) {
		t.Fatalf("anchor moved forward: %+v, want user %+v in the period starting %v", got[1], moved, us(reset))
	}
	wantLoaded(t, s, "anchor moved back", got[2], t0.Add(time.Hour), persistence.Counters{})
	if got[2].User != back || !got[2].Period.Start.Equal(us(earlier)) {
		t.Fatalf("anchor moved back: %+v, want the period starting %v", got[2], us(earlier))
	}
	wantLoaded(t, s, "clock behind the anchor", got[3], t0, counters(1, 0, 1))
	if !got[3].Period.Start.Equal(us(ahead)) {
		t.Fatalf("clock behind the anchor: period %+v, want it to start at %v", got[3].Period, us(ahead))
	}
}

func testEnsureUsersUsageMany(t *testing.T, s persistence.Store) {
	// Hundreds of loads in one call: new and known users, some twice, each
	// with its own clock. The answer is what EnsureUser and LoadUsage would
	// have said, in load order.
	const n = 300
	var loads []persistence.UserLoad
	want := map[string]persistence.Counters{}
	for i := range n {
		id := fmt.Sprintf("u%03d", i)
		if i%3 == 0 {
			u := ensureUser(t, s, id)
			var reqs []persistence.AdmitRequest
			for j := range i % 7 {
				reqs = append(reqs, request(u, fmt.Sprintf("%s-s%d", id, j), t0, unlimited, unlimited))
			}
			if len(reqs) > 0 {
				admit(t, s, reqs...)
			}
			want[id] = counters(int64(len(reqs)), 0, int64(len(reqs)))
		} else {
			want[id] = persistence.Counters{}
		}
		loads = append(loads, persistence.UserLoad{ID: id, Now: t0.Add(time.Duration(i) * time.Millisecond)})
		if i%10 == 0 {
			loads = append(loads, persistence.UserLoad{ID: id, Now: t0.Add(time.Hour)})
		}
	}
	got := ensureUsersUsage(t, s, loads...)
	first := map[string]domain.User{}
	for i, l := range loads {
		if got[i].User.ID != l.ID {
			t.Fatalf("load %d (%s): answered for %s", i, l.ID, got[i].User.ID)
		}
		if u, ok := first[l.ID]; ok && got[i].User != u {
			t.Fatalf("user %s loaded twice: %+v and %+v", l.ID, u, got[i].User)
		}
		first[l.ID] = got[i].User
		wantLoaded(t, s, "load "+l.ID, got[i], l.Now, want[l.ID])
	}
}

func testEnsureUsersUsageConcurrently(t *testing.T, s persistence.Store) {
	// Calls racing to provision the same new users, in different orders
	// and with different clocks: each user is provisioned once and every
	// call sees that one row.
	const callers = 16
	got := make([][]persistence.UserLoaded, callers)
	errs := make([]error, callers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			<-start
			at := t0.Add(time.Duration(i) * time.Second)
			loads := []persistence.UserLoad{{ID: "racer", Now: at}, {ID: "rival", Now: at}, {ID: fmt.Sprintf("solo%d", i), Now: at}}
			if i%2 == 1 {
				loads[0], loads[1] = loads[1], loads[0]
			}
			got[i], errs[i] = s.EnsureUsersUsage(t.Context(), loads)
		})
	}
	close(start)
	wg.Wait()
	users := map[string]domain.User{}
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("call %d: %v", i, errs[i])
		}
		for _, l := range got[i] {
			if l.User.Version != 1 || l.Counters != (persistence.Counters{}) {
				t.Fatalf("call %d: %+v, want a user at version 1 with zero counters", i, l)
			}
			if u, ok := users[l.User.ID]; ok && u != l.User {
				t.Fatalf("call %d: %+v, another call got %+v", i, l.User, u)
			}
			users[l.User.ID] = l.User
		}
	}
	for _, id := range []string{"racer", "rival"} {
		u, err := s.GetUser(t.Context(), id)
		if err != nil || u != users[id] {
			t.Fatalf("GetUser(%s) = %+v, %v; the calls saw %+v", id, u, err, users[id])
		}
	}
}
