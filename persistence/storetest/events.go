package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// The audit trail (docs/contract.md, "Audit trail"): every admin change
// that writes something records one event in its own transaction, with
// who, the request, and the state before and after.

// events lists all of a user's events, newest first.
func events(t *testing.T, s persistence.Store, userID string) []domain.UserEvent {
	t.Helper()
	evs, err := s.ListUserEvents(t.Context(), userID, 1000, nil)
	if err != nil {
		t.Fatalf("ListUserEvents(%s): %v", userID, err)
	}
	return evs
}

// wantEvent checks everything of an event but its id.
func wantEvent(t *testing.T, what string, got domain.UserEvent, want domain.UserEvent, before, after any) {
	t.Helper()
	if got.ID <= 0 {
		t.Errorf("%s: id %d, want a positive id", what, got.ID)
	}
	if got.UserID != want.UserID || got.SessionID != want.SessionID || got.Kind != want.Kind || got.Actor != want.Actor ||
		got.RequestID != want.RequestID || got.OccurredAt != want.OccurredAt || got.OccurredAt.Location() != time.UTC ||
		got.UserVersion != want.UserVersion {
		t.Fatalf("%s:\n got  %+v\n want %+v (id, documents aside)", what, got, want)
	}
	wantDoc(t, what+" before", got.Before, before)
	wantDoc(t, what+" after", got.After, after)
}

// wantDoc decodes doc into a value of want's type and compares; a nil want
// means no document.
func wantDoc(t *testing.T, what string, doc json.RawMessage, want any) {
	t.Helper()
	if want == nil {
		if doc != nil {
			t.Fatalf("%s = %s, want none", what, doc)
		}
		return
	}
	got := reflect.New(reflect.TypeOf(want))
	if err := json.Unmarshal(doc, got.Interface()); err != nil {
		t.Fatalf("%s = %s: %v", what, doc, err)
	}
	if !reflect.DeepEqual(got.Elem().Interface(), want) {
		t.Fatalf("%s:\n got  %s\n want %+v", what, doc, want)
	}
}

func state(u domain.User, at time.Time, c persistence.Counters) domain.UserState {
	p := u.Period(at)
	return domain.UserState{Plan: u.Plan, BillingAnchor: u.BillingAnchor, Version: u.Version,
		PeriodStart: p.Start, PeriodEnd: p.End, Sessions: c.Sessions, Seconds: c.Seconds}
}

func testPutUserRecordsEvents(t *testing.T, s persistence.Store) {
	ptr := func(v string) *string { return &v }
	by := func(n int) domain.Origin {
		return domain.Origin{Admin: "ops-" + fmt.Sprint(n), RequestID: fmt.Sprintf("req-%d", n)}
	}
	t1, t2, t3, t4, t5 := t0.Add(time.Hour), t0.Add(2*time.Hour), t0.Add(3*time.Hour), t0.Add(4*time.Hour), t0.Add(5*time.Hour)
	anchor := time.Date(2026, time.February, 20, 8, 0, 0, 0, time.UTC)

	// A user provisioned by its first request has no event: that is no
	// admin change.
	u0 := ensureUser(t, s, "alice")
	if evs := events(t, s, "alice"); len(evs) != 0 {
		t.Fatalf("a provisioned user has events %+v", evs)
	}
	admit(t, s, request(u0, "s1", t0, unlimited, unlimited), request(u0, "s2", t0, unlimited, unlimited))
	used := counters(2, 0, 2)

	u1 := putUser(t, s, persistence.UserChange{ID: "alice", Plan: ptr("pro"), Now: t1, By: by(1)})
	u2 := putUser(t, s, persistence.UserChange{ID: "alice", Anchor: &anchor, Now: t2, By: by(2)})
	// One session in the period the anchor moved to.
	admit(t, s, request(u2, "s3", t2, unlimited, unlimited))
	used2 := counters(1, 0, 1)
	// The same plan again changes nothing but the version, which fences
	// off admissions decided before it: recorded all the same.
	u3 := putUser(t, s, persistence.UserChange{ID: "alice", Plan: ptr("pro"), Now: t3, By: by(3)})
	reset := t4
	u4 := putUser(t, s, persistence.UserChange{ID: "alice", Anchor: &reset, Now: t4, Kind: domain.EventResetUsage, By: by(4)})
	// A PUT that creates the user has no before.
	bob := putUser(t, s, persistence.UserChange{ID: "bob", Plan: ptr("student"), Now: t5, By: by(5)})

	evs := events(t, s, "alice")
	if len(evs) != 4 {
		t.Fatalf("alice has %d events, want 4: %+v", len(evs), evs)
	}
	// Newest first.
	ev := func(n int, kind domain.EventKind, at time.Time, version int64) domain.UserEvent {
		return domain.UserEvent{UserID: "alice", Kind: kind, Actor: by(n).Admin, RequestID: by(n).RequestID, OccurredAt: us(at), UserVersion: version}
	}
	// The reset: the old period's counters before, the new period's
	// (nothing yet) after.
	wantEvent(t, "reset", evs[0], ev(4, domain.EventResetUsage, t4, 5), state(u3, t4, used2), state(u4, t4, persistence.Counters{}))
	if p := u4.Period(t4); !p.Start.Equal(us(t4)) {
		t.Fatalf("after the reset the period starts at %s, want %s", p.Start, us(t4))
	}
	wantEvent(t, "same plan again", evs[1], ev(3, domain.EventPutUser, t3, 4), state(u2, t3, used2), state(u3, t3, used2))
	// The anchor moved the period: its usage is another row's (none yet).
	wantEvent(t, "anchor change", evs[2], ev(2, domain.EventPutUser, t2, 3), state(u1, t2, used), state(u2, t2, persistence.Counters{}))
	wantEvent(t, "plan change", evs[3], ev(1, domain.EventPutUser, t1, 2), state(u0, t1, used), state(u1, t1, used))
	if evs[0].ID <= evs[1].ID || evs[1].ID <= evs[2].ID || evs[2].ID <= evs[3].ID {
		t.Errorf("ids %d %d %d %d do not rise with insertion", evs[3].ID, evs[2].ID, evs[1].ID, evs[0].ID)
	}

	bobs := events(t, s, "bob")
	if len(bobs) != 1 {
		t.Fatalf("bob has %d events, want 1", len(bobs))
	}
	wantEvent(t, "creation", bobs[0], domain.UserEvent{UserID: "bob", Kind: domain.EventPutUser, Actor: "ops-5", RequestID: "req-5",
		OccurredAt: us(t5), UserVersion: 1}, nil, state(bob, t5, persistence.Counters{}))
}

func testPutUserConcurrently(t *testing.T, s persistence.Store) {
	// Several admins create the same user at once: one creates it, the
	// others change it; every change is one event with its own version.
	const n = 8
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			plan := fmt.Sprintf("plan-%d", i)
			_, errs[i] = s.PutUser(t.Context(), persistence.UserChange{ID: "racer", Plan: &plan, Now: t0.Add(time.Duration(i) * time.Second),
				By: domain.Origin{Admin: fmt.Sprintf("admin-%d", i), RequestID: fmt.Sprint(i)}})
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("PutUser #%d: %v", i, err)
		}
	}
	u, err := s.GetUser(t.Context(), "racer")
	if err != nil || u.Version != n {
		t.Fatalf("GetUser = %+v, %v; want version %d", u, err, n)
	}
	evs := events(t, s, "racer")
	versions := map[int64]bool{}
	creations := 0
	for _, e := range evs {
		versions[e.UserVersion] = true
		if e.Before == nil {
			creations++
		}
		var after domain.UserState
		if err := json.Unmarshal(e.After, &after); err != nil || after.Version != e.UserVersion || after.Plan != "plan-"+e.RequestID {
			t.Fatalf("event %+v: after %s (%v) is not its own change", e, e.After, err)
		}
	}
	if len(evs) != n || len(versions) != n || !versions[1] || !versions[n] || creations != 1 {
		t.Fatalf("%d events, versions %v, %d creations; want %d events of versions 1..%d, one creation", len(evs), versions, creations, n, n)
	}
}

func testSessionChangesRecordEvents(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	t1, t2 := t0.Add(time.Minute), t0.Add(2*time.Minute)
	period := u.Period(t0).Start
	admit(t, s, request(u, "s1", t0, unlimited, unlimited), request(u, "s2", t0, unlimited, unlimited),
		request(u, "s3", t0, unlimited, unlimited))
	completer := domain.Origin{Admin: "billing", RequestID: "req-complete"}
	failer := domain.Origin{Admin: "support", RequestID: "req-fail"}

	// Moving to uploading is the user's, not an admin change.
	if _, err := s.MarkUploading(t.Context(), "s2", t0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CompleteSession(t.Context(), completer, "s1", 90, t1, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CompleteSession(t.Context(), completer, "s2", 30, t1, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FailSession(t.Context(), failer, "s3", t2); err != nil {
		t.Fatal(err)
	}
	// What changes nothing records nothing: a completion repeated, a
	// failure repeated; refusals neither.
	if _, _, err := s.CompleteSession(t.Context(), failer, "s1", 90, t2, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FailSession(t.Context(), completer, "s3", t2); err != nil {
		t.Fatal(err)
	}
	_, _, err := s.CompleteSession(t.Context(), failer, "s1", 91, t2, nil)
	wantCode(t, "another duration", err, domain.CodeConflict)
	_, err = s.FailSession(t.Context(), failer, "s2", t2)
	wantCode(t, "failing a completed session", err, domain.CodeConflict)

	evs := events(t, s, "alice")
	if len(evs) != 3 {
		t.Fatalf("%d events, want 3: %+v", len(evs), evs)
	}
	ninety, thirty := int64(90), int64(30)
	ss := func(status domain.Status, d *int64, secs int64) domain.SessionState {
		return domain.SessionState{Status: status, DurationSeconds: d, PeriodStart: period, PeriodSeconds: secs}
	}
	wantEvent(t, "fail s3", evs[0], domain.UserEvent{UserID: "alice", SessionID: "s3", Kind: domain.EventFailSession,
		Actor: "support", RequestID: "req-fail", OccurredAt: us(t2)},
		ss(domain.StatusCreated, nil, 120), ss(domain.StatusFailed, nil, 120))
	// Two events of one microsecond: the later id first.
	wantEvent(t, "complete s2", evs[1], domain.UserEvent{UserID: "alice", SessionID: "s2", Kind: domain.EventCompleteSession,
		Actor: "billing", RequestID: "req-complete", OccurredAt: us(t1)},
		ss(domain.StatusUploading, nil, 90), ss(domain.StatusCompleted, &thirty, 120))
	wantEvent(t, "complete s1", evs[2], domain.UserEvent{UserID: "alice", SessionID: "s1", Kind: domain.EventCompleteSession,
		Actor: "billing", RequestID: "req-complete", OccurredAt: us(t1)},
		ss(domain.StatusCreated, nil, 0), ss(domain.StatusCompleted, &ninety, 90))
}

// testChangeWithoutActorChangesNothing: the event is written in the
// change's transaction, so when the event cannot be written (a change with
// nobody behind it, which the table refuses) the change is not made either.
// An event written in a transaction of its own would leave the change
// behind without its event.
func testChangeWithoutActorChangesNothing(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	admit(t, s, request(u, "s1", t0, unlimited, unlimited), request(u, "s2", t0, unlimited, unlimited))
	nobody := domain.Origin{RequestID: "req-nobody"}
	plan := "pro"
	later := t0.Add(time.Hour)

	for _, c := range []persistence.UserChange{
		{ID: "alice", Plan: &plan, Now: later, By: nobody},
		{ID: "alice", Anchor: &later, Now: later, Kind: domain.EventResetUsage, By: nobody},
		{ID: "newcomer", Plan: &plan, Now: later, By: nobody},
	} {
		if _, err := s.PutUser(t.Context(), c); err == nil {
			t.Fatalf("PutUser(%+v) without an actor succeeded", c)
		}
	}
	if got, err := s.GetUser(t.Context(), "alice"); err != nil || got != u {
		t.Fatalf("after refused changes GetUser = %+v, %v; want %+v unchanged", got, err, u)
	}
	if _, err := s.GetUser(t.Context(), "newcomer"); !errors.Is(err, domain.ErrNotFound) {
		t.Fatalf("a refused creation created the user: %v", err)
	}

	before := getSession(t, s, "s1")
	if _, _, err := s.CompleteSession(t.Context(), nobody, "s1", 60, later, nil); err == nil {
		t.Fatal("CompleteSession without an actor succeeded")
	}
	if _, err := s.FailSession(t.Context(), nobody, "s2", later); err == nil {
		t.Fatal("FailSession without an actor succeeded")
	}
	wantSession(t, "s1 after a refused completion", getSession(t, s, "s1"), before)
	if got := getSession(t, s, "s2"); got.Status != domain.StatusCreated {
		t.Fatalf("s2 after a refused failure: %s", sessionString(got))
	}
	wantUsage(t, s, "alice", u.Period(t0).Start, counters(2, 0, 2))
	if evs := events(t, s, "alice"); len(evs) != 0 {
		t.Fatalf("refused changes left events %+v", evs)
	}
}

func testListUserEvents(t *testing.T, s persistence.Store) {
	_, err := s.ListUserEvents(t.Context(), "nobody", 10, nil)
	wantNotFound(t, "ListUserEvents(nobody)", err)
	ensureUser(t, s, "quiet")
	if evs, err := s.ListUserEvents(t.Context(), "quiet", 10, nil); err != nil || evs == nil || len(evs) != 0 {
		t.Fatalf("ListUserEvents of a user without events = %#v, %v; want an empty list", evs, err)
	}

	// 23 changes, several in one microsecond, so that pages must break
	// ties by id; another user's in between.
	var want []string
	for i := range 23 {
		at := t0.Add(time.Duration(i/4) * time.Second).Add(time.Duration(i%4) * time.Nanosecond) // four per microsecond
		by := domain.Origin{Admin: "ops", RequestID: fmt.Sprintf("r%02d", i)}
		putUser(t, s, persistence.UserChange{ID: "pager", Now: at, By: by})
		putUser(t, s, persistence.UserChange{ID: "other", Now: at, By: by})
		want = append([]string{by.RequestID}, want...) // newest first
	}
	all := events(t, s, "pager")
	for _, limit := range []int{1, 3, 4, 22, 23, 50} {
		var (
			got    []string
			cursor *domain.EventCursor
		)
		for page := 0; ; page++ {
			if page > len(want) {
				t.Fatalf("limit %d: more pages than events", limit)
			}
			items, err := s.ListUserEvents(t.Context(), "pager", limit, cursor)
			if err != nil {
				t.Fatal(err)
			}
			if len(items) > limit {
				t.Fatalf("limit %d: page of %d", limit, len(items))
			}
			if len(items) == 0 {
				break
			}
			for _, e := range items {
				if e.UserID != "pager" {
					t.Fatalf("another user's event %+v", e)
				}
				got = append(got, e.RequestID)
			}
			last := items[len(items)-1]
			cursor = &domain.EventCursor{OccurredAt: last.OccurredAt, ID: last.ID}
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("limit %d: walked %v, want %v", limit, got, want)
		}
	}
	// A cursor at an event's own position excludes it; with the same time
	// and a larger id it includes it.
	e := all[5]
	rest, err := s.ListUserEvents(t.Context(), "pager", 100, &domain.EventCursor{OccurredAt: e.OccurredAt, ID: e.ID})
	if err != nil || len(rest) != len(all)-6 || rest[0].ID != all[6].ID {
		t.Fatalf("after event 5: %d events, %v; want %d from event 6", len(rest), err, len(all)-6)
	}
	rest, err = s.ListUserEvents(t.Context(), "pager", 100, &domain.EventCursor{OccurredAt: e.OccurredAt, ID: e.ID + 1})
	if err != nil || len(rest) != len(all)-5 || rest[0].ID != e.ID {
		t.Fatalf("after (event 5's time, id+1): %d events, %v; want %d from event 5", len(rest), err, len(all)-5)
	}
}
