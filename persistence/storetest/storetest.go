// Package storetest is the contract of persistence.Store as one test suite,
// run against every implementation (postgres, sqlite) so that the embedded
// store cannot drift from the one production uses. Every assertion checks
// a value that would change if the behaviour broke: exact counters,
// outcomes, times and error codes.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// Run runs the contract against the stores open returns. open must return
// a fresh, empty, unmigrated store private to t and close it when t ends
// (t.Cleanup); Run migrates it. Subtests run in parallel.
func Run(t *testing.T, open func(t *testing.T) persistence.Store) {
	tests := []struct {
		name string
		test func(t *testing.T, s persistence.Store)
	}{
		{"MigrateIsRepeatable", testMigrateIsRepeatable},
		{"Ping", testPing},
		{"EnsureUser", testEnsureUser},
		{"EnsureUserConcurrently", testEnsureUserConcurrently},
		{"GetUserNotFound", testGetUserNotFound},
		{"PutUser", testPutUser},
		{"LoadUsageEmpty", testLoadUsageEmpty},
		{"LoadUserUsage", testLoadUserUsage},
		{"EnsureUsersUsage", testEnsureUsersUsage},
		{"EnsureUsersUsagePicksThePeriod", testEnsureUsersUsagePicksThePeriod},
		{"EnsureUsersUsageMany", testEnsureUsersUsageMany},
		{"EnsureUsersUsageConcurrently", testEnsureUsersUsageConcurrently},
		{"Admit", testAdmit},
		{"AdmitEmptyBatch", testAdmitEmptyBatch},
		{"AdmitBatchCountsInOrder", testAdmitBatchCountsInOrder},
		{"AdmitBatchResultsInRequestOrder", testAdmitBatchResultsInRequestOrder},
		{"AdmitBatchMixesCountedAndNewPeriods", testAdmitBatchMixesCountedAndNewPeriods},
		{"AdmitFirstOfPeriodHints", testAdmitFirstOfPeriodHints},
		{"AdmitFirstOfPeriodConcurrently", testAdmitFirstOfPeriodConcurrently},
		{"AdmitStaleUser", testAdmitStaleUser},
		{"AdmitUnknownUser", testAdmitUnknownUser},
		{"AdmitOverLimitSessions", testAdmitOverLimitSessions},
		{"AdmitOverLimitSeconds", testAdmitOverLimitSeconds},
		{"AdmitZeroLimits", testAdmitZeroLimits},
		{"AdmitUnlimited", testAdmitUnlimited},
		{"AdmitLimitTable", testAdmitLimitTable},
		{"AdmitPeriodsAreSeparate", testAdmitPeriodsAreSeparate},
		{"AdmitDuplicateSessionID", testAdmitDuplicateSessionID},
		{"AdmitConcurrently", testAdmitConcurrently},
		{"AdmitConcurrentBatchesCrossUsers", testAdmitConcurrentBatchesCrossUsers},
		{"AdmitKeyReplaysAdmission", testAdmitKeyReplaysAdmission},
		{"AdmitKeyReplaysRejection", testAdmitKeyReplaysRejection},
		{"AdmitKeyZeroLimitRejection", testAdmitKeyZeroLimitRejection},
		{"AdmitKeyIsPerUser", testAdmitKeyIsPerUser},
		{"AdmitKeyConcurrently", testAdmitKeyConcurrently},
		{"AdmitKeyTwiceInOneBatch", testAdmitKeyTwiceInOneBatch},
		{"AdmitKeyConcurrentBatches", testAdmitKeyConcurrentBatches},
		{"AdmitKeyFencedOffStoresNothing", testAdmitKeyFencedOffStoresNothing},
		{"AdmitKeyResolvesLostReply", testAdmitKeyResolvesLostReply},
		{"LookupIdempotencyKey", testLookupIdempotencyKey},
		{"PruneIdempotencyKeys", testPruneIdempotencyKeys},
		{"ScanUsage", testScanUsage},
		{"ScanUsageStopsAtError", testScanUsageStopsAtError},
		{"TimesRoundTrip", testTimesRoundTrip},
		{"GetSessionNotFound", testGetSessionNotFound},
		{"ListSessions", testListSessions},
		{"MarkUploading", testMarkUploading},
		{"CompleteSession", testCompleteSession},
		{"CompleteSessionZeroSeconds", testCompleteSessionZeroSeconds},
		{"CompleteSessionCountsInAdmissionPeriod", testCompleteSessionCountsInAdmissionPeriod},
		{"FailSession", testFailSession},
		{"PutUserRecordsEvents", testPutUserRecordsEvents},
		{"PutUserConcurrently", testPutUserConcurrently},
		{"SessionChangesRecordEvents", testSessionChangesRecordEvents},
		{"ChangeWithoutActorChangesNothing", testChangeWithoutActorChangesNothing},
		{"ListUserEvents", testListUserEvents},
		{"CanceledContextIsUnavailable", testCanceledContextIsUnavailable},
		{"ClosedStoreIsUnavailable", testClosedStoreIsUnavailable},
	}
	tests = append(tests, alertTests...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := open(t)
			if err := s.Migrate(t.Context()); err != nil {
				t.Fatalf("Migrate: %v", err)
			}
			tc.test(t, s)
		})
	}
}

// t0 is the suite's clock. It is not in UTC and has nanoseconds, so that
// every test also checks that stores normalize times to UTC microseconds.
var t0 = time.Date(2026, time.March, 14, 15, 9, 26, 535897932, time.FixedZone("IST", 5*3600+1800))

// us is what a store must return for t: UTC, truncated to the microsecond.
func us(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

const unlimited = domain.Unlimited

func ensureUser(t *testing.T, s persistence.Store, id string) domain.User {
	t.Helper()
	u, err := s.EnsureUser(t.Context(), id, t0)
	if err != nil {
		t.Fatalf("EnsureUser(%s): %v", id, err)
	}
	return u
}

// ops is who the suite's admin changes are made by.
var ops = domain.Origin{Admin: "storetest", RequestID: "req-storetest"}

// putUser applies c, made by ops unless c says who.
func putUser(t *testing.T, s persistence.Store, c persistence.UserChange) domain.User {
	t.Helper()
	if c.By == (domain.Origin{}) {
		c.By = ops
	}
	u, err := s.PutUser(t.Context(), c)
	if err != nil {
		t.Fatalf("PutUser(%s): %v", c.ID, err)
	}
	return u
}

// request asks to admit session id for u at time at, in u's period then.
func request(u domain.User, id string, at time.Time, maxSessions, maxSeconds domain.Limit) persistence.AdmitRequest {
	p := u.Period(at)
	return persistence.AdmitRequest{
		Session: domain.Session{
			ID: id, UserID: u.ID, Title: "Lecture " + id, Language: "en-US", STTProvider: "google",
			PeriodStart: p.Start, CreatedAt: at,
		},
		UserVersion: u.Version,
		PeriodEnd:   p.End,
		PlanName:    u.Plan,
		MaxSessions: maxSessions,
		MaxSeconds:  maxSeconds,
	}
}

func admit(t *testing.T, s persistence.Store, reqs ...persistence.AdmitRequest) []persistence.AdmitResult {
	t.Helper()
	res, err := s.Admit(t.Context(), reqs)
	if err != nil {
		t.Fatalf("Admit: %v", err)
	}
	if len(res) != len(reqs) {
		t.Fatalf("Admit returned %d results for %d requests", len(res), len(reqs))
	}
	return res
}

func counters(sessions, seconds, version int64) persistence.Counters {
	return persistence.Counters{Usage: domain.Usage{Sessions: sessions, Seconds: seconds}, Version: version}
}

func wantResult(t *testing.T, what string, got persistence.AdmitResult, outcome persistence.AdmitOutcome, c persistence.Counters) {
	t.Helper()
	if got.Outcome != outcome || got.Counters != c {
		t.Fatalf("%s: got %v %+v, want %v %+v", what, got.Outcome, got.Counters, outcome, c)
	}
	if got.Record != nil {
		t.Fatalf("%s: %v with a record %+v; only a replay has one", what, got.Outcome, *got.Record)
	}
}

func wantUsage(t *testing.T, s persistence.Store, userID string, periodStart time.Time, want persistence.Counters) {
	t.Helper()
	got, err := s.LoadUsage(t.Context(), userID, periodStart)
	if err != nil {
		t.Fatalf("LoadUsage(%s, %v): %v", userID, periodStart, err)
	}
	if got != want {
		t.Fatalf("LoadUsage(%s, %v) = %+v, want %+v", userID, periodStart, got, want)
	}
}

func getSession(t *testing.T, s persistence.Store, id string) domain.Session {
	t.Helper()
	sess, err := s.GetSession(t.Context(), id)
	if err != nil {
		t.Fatalf("GetSession(%s): %v", id, err)
	}
	return sess
}

func wantNoSession(t *testing.T, s persistence.Store, id string) {
	t.Helper()
	_, err := s.GetSession(t.Context(), id)
	wantNotFound(t, "GetSession("+id+")", err)
}

func wantNotFound(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, domain.ErrNotFound) || domain.ErrorCode(err) != domain.CodeNotFound {
		t.Fatalf("%s: err = %v, want domain.ErrNotFound", what, err)
	}
}

func wantCode(t *testing.T, what string, err error, code domain.Code) {
	t.Helper()
	if got := domain.ErrorCode(err); got != code {
		t.Fatalf("%s: err = %v (code %q), want code %q", what, err, got, code)
	}
}

func sessionString(s domain.Session) string {
	d := "nil"
	if s.DurationSeconds != nil {
		d = fmt.Sprint(*s.DurationSeconds)
	}
	return fmt.Sprintf("{%s user=%s title=%q lang=%s stt=%s status=%s duration=%s period=%s created=%s updated=%s}",
		s.ID, s.UserID, s.Title, s.Language, s.STTProvider, s.Status, d,
		s.PeriodStart.Format(time.RFC3339Nano), s.CreatedAt.Format(time.RFC3339Nano), s.UpdatedAt.Format(time.RFC3339Nano))
}

// sameSession compares every field, times exactly (== also compares the
// location, so a time not in UTC differs).
func sameSession(a, b domain.Session) bool {
	da, db := a.DurationSeconds, b.DurationSeconds
	if (da == nil) != (db == nil) || (da != nil && *da != *db) {
		return false
	}
	a.DurationSeconds, b.DurationSeconds = nil, nil
	return a == b
}

func wantSession(t *testing.T, what string, got, want domain.Session) {
	t.Helper()
	if !sameSession(got, want) {
		t.Fatalf("%s:\n got  %s\n want %s", what, sessionString(got), sessionString(want))
	}
}

// created is the session a store must hold right after admitting r.
func created(r persistence.AdmitRequest) domain.Session {
	return domain.Session{
		ID: r.Session.ID, UserID: r.Session.UserID, Title: r.Session.Title, Language: r.Session.Language,
		STTProvider: r.Session.STTProvider, Status: domain.StatusCreated,
		PeriodStart: us(r.Session.PeriodStart), CreatedAt: us(r.Session.CreatedAt), UpdatedAt: us(r.Session.CreatedAt),
	}
}

func testMigrateIsRepeatable(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	r := request(u, "s1", t0, 10, 600)
	admit(t, s, r)
	for i := range 2 {
		if err := s.Migrate(t.Context()); err != nil {
			t.Fatalf("Migrate again (%d): %v", i+1, err)
		}
	}
	got, err := s.GetUser(t.Context(), "alice")
	if err != nil || got != u {
		t.Fatalf("after Migrate, GetUser = %+v, %v; want %+v", got, err, u)
	}
	wantSession(t, "after Migrate", getSession(t, s, "s1"), created(r))
	wantUsage(t, s, u.ID, r.Session.PeriodStart, counters(1, 0, 1))
}

func testPing(t *testing.T, s persistence.Store) {
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

func testEnsureUser(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	want := domain.User{ID: "alice", Plan: domain.DefaultPlan, BillingAnchor: us(t0), Version: 1, CreatedAt: us(t0), UpdatedAt: us(t0)}
	if u != want {
		t.Fatalf("EnsureUser of a new user = %+v, want %+v", u, want)
	}
	// Seen again later: the existing user, untouched (not re-anchored).
	again, err := s.EnsureUser(t.Context(), "alice", t0.Add(72*time.Hour))
	if err != nil || again != want {
		t.Fatalf("EnsureUser of a known user = %+v, %v; want %+v", again, err, want)
	}
	got, err := s.GetUser(t.Context(), "alice")
	if err != nil || got != want {
		t.Fatalf("GetUser = %+v, %v; want %+v", got, err, want)
	}
}

func testEnsureUserConcurrently(t *testing.T, s persistence.Store) {
	const n = 16
	users := make([]domain.User, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			// Different clocks: exactly one provisions, all see its row.
			users[i], errs[i] = s.EnsureUser(t.Context(), "racer", t0.Add(time.Duration(i)*time.Second))
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("EnsureUser #%d: %v", i, errs[i])
		}
		if users[i] != users[0] || users[i].Version != 1 {
			t.Fatalf("EnsureUser #%d = %+v, #0 = %+v; want one user at version 1", i, users[i], users[0])
		}
	}
}

func testGetUserNotFound(t *testing.T, s persistence.Store) {
	_, err := s.GetUser(t.Context(), "nobody")
	wantNotFound(t, "GetUser(nobody)", err)
}

func testPutUser(t *testing.T, s persistence.Store) {
	ptr := func(v string) *string { return &v }
	t1, t2, t3 := t0.Add(time.Hour), t0.Add(2*time.Hour), t0.Add(3*time.Hour)
	anchor := time.Date(2026, time.January, 31, 8, 0, 0, 123456789, time.UTC)

	// A new user without plan or anchor: the default plan, anchored now.
	bob := putUser(t, s, persistence.UserChange{ID: "bob", Now: t0})
	want := domain.User{ID: "bob", Plan: domain.DefaultPlan, BillingAnchor: us(t0), Version: 1, CreatedAt: us(t0), UpdatedAt: us(t0)}
	if bob != want {
		t.Fatalf("PutUser(new bob) = %+v, want %+v", bob, want)
	}
	// A new user with both.
	carol := putUser(t, s, persistence.UserChange{ID: "carol", Plan: ptr("pro"), Anchor: &anchor, Now: t0})
	if want := (domain.User{ID: "carol", Plan: "pro", BillingAnchor: us(anchor), Version: 1, CreatedAt: us(t0), UpdatedAt: us(t0)}); carol != want {
		t.Fatalf("PutUser(new carol) = %+v, want %+v", carol, want)
	}

	steps := []struct {
		change persistence.UserChange
		want   domain.User
	}{
		{ // plan only: anchor kept
			persistence.UserChange{ID: "bob", Plan: ptr("student"), Now: t1},
			domain.User{ID: "bob", Plan: "student", BillingAnchor: us(t0), Version: 2, CreatedAt: us(t0), UpdatedAt: us(t1)},
		},
		{ // anchor only: plan kept
			persistence.UserChange{ID: "bob", Anchor: &anchor, Now: t2},
			domain.User{ID: "bob", Plan: "student", BillingAnchor: us(anchor), Version: 3, CreatedAt: us(t0), UpdatedAt: us(t2)},
		},
		{ // nothing: still a new version, so in-flight decisions are fenced off
			persistence.UserChange{ID: "bob", Now: t3},
			domain.User{ID: "bob", Plan: "student", BillingAnchor: us(anchor), Version: 4, CreatedAt: us(t0), UpdatedAt: us(t3)},
		},
		{ // plan names are the caller's concern
			persistence.UserChange{ID: "bob", Plan: ptr("platinum"), Now: t3},
			domain.User{ID: "bob", Plan: "platinum", BillingAnchor: us(anchor), Version: 5, CreatedAt: us(t0), UpdatedAt: us(t3)},
		},
	}
	for i, st := range steps {
		got := putUser(t, s, st.change)
		if got != st.want {
			t.Fatalf("step %d: PutUser = %+v, want %+v", i, got, st.want)
		}
		read, err := s.GetUser(t.Context(), "bob")
		if err != nil || read != st.want {
			t.Fatalf("step %d: GetUser = %+v, %v; want %+v", i, read, err, st.want)
		}
	}
	// EnsureUser does not touch a user PutUser created.
	if got := ensureUser(t, s, "carol"); got != carol {
		t.Fatalf("EnsureUser(carol) = %+v, want %+v", got, carol)
	}
}

func testLoadUsageEmpty(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	wantUsage(t, s, u.ID, u.Period(t0).Start, persistence.Counters{})
	wantUsage(t, s, "nobody", u.Period(t0).Start, persistence.Counters{})
}

func testLoadUserUsage(t *testing.T, s persistence.Store) {
	ctx := t.Context()
	if _, _, err := s.LoadUserUsage(ctx, "nobody", t0); !errors.Is(err, domain.ErrNotFound) {
		t.Fatalf("unknown user: err = %v, want ErrNotFound", err)
	}
	u := ensureUser(t, s, "alice")
	start := u.Period(t0).Start
	got, c, err := s.LoadUserUsage(ctx, "alice", start)
	if err != nil {
		t.Fatal(err)
	}
	if got != u || c != (persistence.Counters{}) {
		t.Fatalf("before any admission: %+v %+v, want %+v and zero counters", got, c, u)
	}
	admit(t, s, request(u, "s1", t0, 10, unlimited), request(u, "s2", t0, 10, unlimited))
	plan := "pro"
	u = putUser(t, s, persistence.UserChange{ID: "alice", Plan: &plan, Now: t0})
	got, c, err = s.LoadUserUsage(ctx, "alice", start)
	if err != nil {
		t.Fatal(err)
	}
	// The same as GetUser and LoadUsage, read apart.
	wantUser, err := s.GetUser(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	wantCounters, err := s.LoadUsage(ctx, "alice", start)
	if err != nil {
		t.Fatal(err)
	}
	if got != wantUser || got != u || c != wantCounters || c != counters(2, 0, 2) {
		t.Fatalf("after two admissions and a plan change: %+v %+v, want %+v %+v", got, c, wantUser, wantCounters)
	}
	// Another period's usage is its own.
	if _, c, err := s.LoadUserUsage(ctx, "alice", u.Period(t0).End); err != nil || c != (persistence.Counters{}) {
		t.Fatalf("next period: %+v %v, want zero counters", c, err)
	}
}

func testAdmit(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	r1 := request(u, "s1", t0, 10, 600*60)
	wantResult(t, "first admission", admit(t, s, r1)[0], persistence.Admitted, counters(1, 0, 1))
	wantSession(t, "GetSession(s1)", getSession(t, s, "s1"), created(r1))
	wantUsage(t, s, u.ID, r1.Session.PeriodStart, counters(1, 0, 1))

	r2 := request(u, "s2", t0.Add(time.Minute), 10, 600*60)
	wantResult(t, "second admission", admit(t, s, r2)[0], persistence.Admitted, counters(2, 0, 2))
	wantSession(t, "GetSession(s2)", getSession(t, s, "s2"), created(r2))
	wantUsage(t, s, u.ID, r1.Session.PeriodStart, counters(2, 0, 2))
}

func testAdmitEmptyBatch(t *testing.T, s persistence.Store) {
	res, err := s.Admit(t.Context(), nil)
	if err != nil || len(res) != 0 {
		t.Fatalf("Admit(nil) = %v, %v; want no results, no error", res, err)
	}
}

func testAdmitBatchCountsInOrder(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	var reqs []persistence.AdmitRequest
	for i := range 4 {
		reqs = append(reqs, request(u, fmt.Sprintf("s%d", i+1), t0.Add(time.Duration(i)*time.Second), 3, unlimited))
	}
	res := admit(t, s, reqs...)
	wantResult(t, "request 1", res[0], persistence.Admitted, counters(1, 0, 1))
	wantResult(t, "request 2", res[1], persistence.Admitted, counters(2, 0, 2))
	wantResult(t, "request 3", res[2], persistence.Admitted, counters(3, 0, 3))
	wantResult(t, "request 4", res[3], persistence.OverLimit, counters(3, 0, 3))
	for _, r := range reqs[:3] {
		wantSession(t, "admitted "+r.Session.ID, getSession(t, s, r.Session.ID), created(r))
	}
	wantNoSession(t, s, "s4")
	wantUsage(t, s, u.ID, reqs[0].Session.PeriodStart, counters(3, 0, 3))
}

func testAdmitBatchResultsInRequestOrder(t *testing.T, s persistence.Store) {
	// Ids that sort the other way round from the requests, so that a store
	// that reorders requests (to lock rows in a fixed order) must put the
	// results back.
	zed, amy := ensureUser(t, s, "zed"), ensureUser(t, s, "amy")
	ghost := domain.User{ID: "ghost", Plan: domain.DefaultPlan, BillingAnchor: us(t0), Version: 1}
	stale := amy
	stale.Version = 0
	reqs := []persistence.AdmitRequest{
		request(zed, "z1", t0, 2, unlimited),
		request(amy, "a1", t0, 1, unlimited),
		request(ghost, "g1", t0, 2, unlimited),
		request(zed, "z2", t0, 2, unlimited),
		request(stale, "a0", t0, 5, unlimited),
		request(amy, "a2", t0, 1, unlimited),
		request(zed, "z3", t0, 2, unlimited),
	}
	res := admit(t, s, reqs...)
	wantResult(t, "z1", res[0], persistence.Admitted, counters(1, 0, 1))
	wantResult(t, "a1", res[1], persistence.Admitted, counters(1, 0, 1))
	wantResult(t, "g1", res[2], persistence.UnknownUser, persistence.Counters{})
	wantResult(t, "z2", res[3], persistence.Admitted, counters(2, 0, 2))
	wantResult(t, "a0", res[4], persistence.StaleUser, persistence.Counters{})
	wantResult(t, "a2", res[5], persistence.OverLimit, counters(1, 0, 1))
	wantResult(t, "z3", res[6], persistence.OverLimit, counters(2, 0, 2))
	for _, id := range []string{"z1", "z2", "a1"} {
		getSession(t, s, id)
	}
	for _, id := range []string{"z3", "a0", "a2", "g1"} {
		wantNoSession(t, s, id)
	}
}

func testAdmitBatchMixesCountedAndNewPeriods(t *testing.T, s persistence.Store) {
	// One batch with a period that already has a count (bob, 2 of 3 used),
	// periods that have none yet (amy now, bob next month), and a user whose
	// limit leaves nothing: a store that creates usage rows separately from
	// counting on them must still decide each group exactly once.
	amy, bob, zoe := ensureUser(t, s, "amy"), ensureUser(t, s, "bob"), ensureUser(t, s, "zoe")
	admit(t, s, request(bob, "b1", t0, 3, unlimited), request(bob, "b2", t0, 3, unlimited))
	next := bob.Period(t0).End
	reqs := []persistence.AdmitRequest{
		request(bob, "b3", t0, 3, unlimited),
		request(amy, "a1", t0, 2, unlimited),
		request(bob, "n1", next, 3, unlimited),
		request(zoe, "z1", t0, 0, unlimited),
		request(bob, "b4", t0, 3, unlimited),
		request(amy, "a2", t0, 2, unlimited),
		request(amy, "a3", t0, 2, unlimited),
	}
	res := admit(t, s, reqs...)
	wantResult(t, "b3", res[0], persistence.Admitted, counters(3, 0, 3))
	wantResult(t, "a1", res[1], persistence.Admitted, counters(1, 0, 1))
	wantResult(t, "n1", res[2], persistence.Admitted, counters(1, 0, 1))
	wantResult(t, "z1", res[3], persistence.OverLimit, persistence.Counters{})
	wantResult(t, "b4", res[4], persistence.OverLimit, counters(3, 0, 3))
	wantResult(t, "a2", res[5], persistence.Admitted, counters(2, 0, 2))
	wantResult(t, "a3", res[6], persistence.OverLimit, counters(2, 0, 2))
	for _, id := range []string{"b3", "a1", "n1", "a2"} {
		getSession(t, s, id)
	}
	for _, id := range []string{"z1", "b4", "a3"} {
		wantNoSession(t, s, id)
	}
	wantUsage(t, s, "bob", bob.Period(t0).Start, counters(3, 0, 3))
	wantUsage(t, s, "bob", next, counters(1, 0, 1))
	wantUsage(t, s, "amy", amy.Period(t0).Start, counters(2, 0, 2))
	wantUsage(t, s, "zoe", zoe.Period(t0).Start, persistence.Counters{})
}

func testAdmitStaleUser(t *testing.T, s persistence.Store) {
	v1 := ensureUser(t, s, "alice")
	plan := "pro"
	v2 := putUser(t, s, persistence.UserChange{ID: "alice", Plan: &plan, Now: t0})
	if v2.Version != v1.Version+1 {
		t.Fatalf("PutUser: version %d, want %d", v2.Version, v1.Version+1)
	}
	// Decided under the old plan: refused, and nothing recorded.
	wantResult(t, "admission at the old version", admit(t, s, request(v1, "old", t0, 10, unlimited))[0],
		persistence.StaleUser, persistence.Counters{})
	wantNoSession(t, s, "old")
	wantUsage(t, s, "alice", v1.Period(t0).Start, persistence.Counters{})

	// In one batch, a stale request does not disturb a fresh one.
	res := admit(t, s, request(v1, "old2", t0, 10, unlimited), request(v2, "new", t0, 10, unlimited))
	wantResult(t, "stale in batch", res[0], persistence.StaleUser, persistence.Counters{})
	wantResult(t, "fresh in batch", res[1], persistence.Admitted, counters(1, 0, 1))
	wantNoSession(t, s, "old2")
	getSession(t, s, "new")
}

func testAdmitUnknownUser(t *testing.T, s persistence.Store) {
	ghost := domain.User{ID: "ghost", Plan: domain.DefaultPlan, BillingAnchor: us(t0), Version: 1}
	r := request(ghost, "g1", t0, 10, unlimited)
	wantResult(t, "unknown user", admit(t, s, r)[0], persistence.UnknownUser, persistence.Counters{})
	wantNoSession(t, s, "g1")
	wantUsage(t, s, "ghost", r.Session.PeriodStart, persistence.Counters{})
	if _, err := s.GetUser(t.Context(), "ghost"); !errors.Is(err, domain.ErrNotFound) {
		t.Fatalf("Admit created the unknown user: GetUser err = %v", err)
	}
}

func testAdmitOverLimitSessions(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	admit(t, s, request(u, "s1", t0, 2, unlimited))
	admit(t, s, request(u, "s2", t0, 2, unlimited))
	r := request(u, "s3", t0, 2, unlimited)
	wantResult(t, "third of two", admit(t, s, r)[0], persistence.OverLimit, counters(2, 0, 2))
	wantNoSession(t, s, "s3")
	wantUsage(t, s, u.ID, r.Session.PeriodStart, counters(2, 0, 2))
	// A larger limit (a plan upgrade, with a new version) admits again.
	plan := "student"
	u = putUser(t, s, persistence.UserChange{ID: u.ID, Plan: &plan, Now: t0})
	wantResult(t, "after upgrade", admit(t, s, request(u, "s3", t0, 3, unlimited))[0], persistence.Admitted, counters(3, 0, 3))
}

func testAdmitOverLimitSeconds(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	const maxSeconds = 600
	period := u.Period(t0).Start
	complete := func(id string, seconds int64, want persistence.Counters) {
		t.Helper()
		_, c, err := s.CompleteSession(t.Context(), ops, id, seconds, t0, nil)
		if err != nil || c != want {
			t.Fatalf("CompleteSession(%s, %d) counters = %+v, %v; want %+v", id, seconds, c, err, want)
		}
	}
	wantResult(t, "s1", admit(t, s, request(u, "s1", t0, unlimited, maxSeconds))[0], persistence.Admitted, counters(1, 0, 1))
	complete("s1", maxSeconds-1, counters(1, maxSeconds-1, 2))
	// One second below the limit still admits.
	wantResult(t, "s2", admit(t, s, request(u, "s2", t0, unlimited, maxSeconds))[0], persistence.Admitted, counters(2, maxSeconds-1, 3))
	complete("s2", 1, counters(2, maxSeconds, 4))
	// At the limit: refused, by seconds, with the counters telling so.
	wantResult(t, "s3", admit(t, s, request(u, "s3", t0, unlimited, maxSeconds))[0], persistence.OverLimit, counters(2, maxSeconds, 4))
	wantNoSession(t, s, "s3")
	wantUsage(t, s, u.ID, period, counters(2, maxSeconds, 4))
}

func testAdmitZeroLimits(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	period := u.Period(t0).Start
	wantResult(t, "max_sessions 0", admit(t, s, request(u, "s1", t0, 0, unlimited))[0], persistence.OverLimit, persistence.Counters{})
	wantResult(t, "max_seconds 0", admit(t, s, request(u, "s2", t0, unlimited, 0))[0], persistence.OverLimit, persistence.Counters{})
	wantNoSession(t, s, "s1")
	wantNoSession(t, s, "s2")
	wantUsage(t, s, u.ID, period, persistence.Counters{})
	// With usage recorded, 0 still refuses and changes nothing.
	admit(t, s, request(u, "s3", t0, unlimited, unlimited))
	wantResult(t, "max_sessions 0 with usage", admit(t, s, request(u, "s4", t0, 0, unlimited))[0], persistence.OverLimit, counters(1, 0, 1))
	wantNoSession(t, s, "s4")
	wantUsage(t, s, u.ID, period, counters(1, 0, 1))
}

func testAdmitUnlimited(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	var reqs []persistence.AdmitRequest
	for i := range 25 {
		reqs = append(reqs, request(u, fmt.Sprintf("s%02d", i), t0, unlimited, unlimited))
	}
	for i, r := range admit(t, s, reqs...) {
		wantResult(t, reqs[i].Session.ID, r, persistence.Admitted, counters(int64(i+1), 0, int64(i+1)))
	}
	if _, _, err := s.CompleteSession(t.Context(), ops, "s00", domain.MaxDurationSeconds, t0, nil); err != nil {
		t.Fatalf("CompleteSession: %v", err)
	}
	wantResult(t, "after a day of minutes", admit(t, s, request(u, "s25", t0, unlimited, unlimited))[0],
		persistence.Admitted, counters(26, domain.MaxDurationSeconds, 27))
}

func testAdmitPeriodsAreSeparate(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	next := t0.AddDate(0, 1, 1) // in the following period
	admit(t, s, request(u, "s1", t0, 1, unlimited))
	wantResult(t, "same period", admit(t, s, request(u, "s2", t0, 1, unlimited))[0], persistence.OverLimit, counters(1, 0, 1))
	// A new period starts with zero usage, no job having run.
	r := request(u, "s3", next, 1, unlimited)
	if r.Session.PeriodStart.Equal(u.Period(t0).Start) {
		t.Fatalf("test setup: %v is in the same period as %v", next, t0)
	}
	wantResult(t, "next period", admit(t, s, r)[0], persistence.Admitted, counters(1, 0, 1))
	wantUsage(t, s, u.ID, u.Period(t0).Start, counters(1, 0, 1))
	wantUsage(t, s, u.ID, r.Session.PeriodStart, counters(1, 0, 1))
}

func testAdmitDuplicateSessionID(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	first := request(u, "s1", t0, unlimited, unlimited)
	admit(t, s, first)
	// The batch fails as a whole: the fresh request in it is not committed.
	_, err := s.Admit(t.Context(), []persistence.AdmitRequest{
		request(u, "s2", t0, unlimited, unlimited),
		request(u, "s1", t0.Add(time.Second), unlimited, unlimited),
	})
	wantCode(t, "Admit with a taken session id", err, domain.CodeConflict)
	wantNoSession(t, s, "s2")
	wantSession(t, "the first s1", getSession(t, s, "s1"), created(first))
	wantUsage(t, s, u.ID, first.Session.PeriodStart, counters(1, 0, 1))
}

func testAdmitConcurrently(t *testing.T, s persistence.Store) {
	const (
		before  = 3
		limit   = 13 // so 10 remain
		callers = 40
	)
	u := ensureUser(t, s, "alice")
	period := u.Period(t0).Start
	for i := range before {
		admit(t, s, request(u, fmt.Sprintf("pre%d", i), t0, limit, unlimited))
	}
	results := make([]persistence.AdmitResult, callers)
	errs := make([]error, callers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			<-start
			r := request(u, fmt.Sprintf("c%02d", i), t0.Add(time.Duration(i)*time.Millisecond), limit, unlimited)
			res, err := s.Admit(t.Context(), []persistence.AdmitRequest{r})
			if err == nil {
				results[i] = res[0]
			}
			errs[i] = err
		})
	}
	close(start)
	wg.Wait()

	admitted, over := 0, 0
	seen := map[int64]bool{}
	for i, r := range results {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		switch r.Outcome {
		case persistence.Admitted:
			admitted++
			// Each admission saw its own count: no two share one.
			if seen[r.Counters.Sessions] || r.Counters.Sessions <= before || r.Counters.Sessions > limit {
				t.Fatalf("caller %d admitted with counters %+v (seen before: %v)", i, r.Counters, seen[r.Counters.Sessions])
			}
			seen[r.Counters.Sessions] = true
		case persistence.OverLimit:
			over++
			if r.Counters.Sessions != limit {
				t.Fatalf("caller %d refused with counters %+v, want sessions %d", i, r.Counters, limit)
			}
		default:
			t.Fatalf("caller %d: outcome %v", i, r.Outcome)
		}
	}
	if admitted != limit-before || over != callers-(limit-before) {
		t.Fatalf("%d admitted and %d refused; want exactly %d admitted", admitted, over, limit-before)
	}
	wantUsage(t, s, u.ID, period, counters(limit, 0, limit))
	list, err := s.ListSessions(t.Context(), u.ID, 100, nil)
	if err != nil || len(list) != limit {
		t.Fatalf("ListSessions: %d sessions, %v; want %d", len(list), err, limit)
	}
}

func testAdmitConcurrentBatchesCrossUsers(t *testing.T, s persistence.Store) {
	// Batches naming two users in opposite orders, concurrently: a store
	// that locked rows in request order would deadlock here.
	const (
		workers = 8
		rounds  = 10
	)
	a, b := ensureUser(t, s, "amy"), ensureUser(t, s, "bob")
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				ra := request(a, fmt.Sprintf("a-%d-%d", w, i), t0, unlimited, unlimited)
				rb := request(b, fmt.Sprintf("b-%d-%d", w, i), t0, unlimited, unlimited)
				batch := []persistence.AdmitRequest{ra, rb}
				if w%2 == 1 {
					batch = []persistence.AdmitRequest{rb, ra}
				}
				res, err := s.Admit(t.Context(), batch)
				if err != nil {
					errs <- fmt.Errorf("worker %d round %d: %w", w, i, err)
					return
				}
				for j, r := range res {
					if r.Outcome != persistence.Admitted {
						errs <- fmt.Errorf("worker %d round %d request %d: %v", w, i, j, r.Outcome)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	wantUsage(t, s, a.ID, a.Period(t0).Start, counters(workers*rounds, 0, workers*rounds))
	wantUsage(t, s, b.ID, b.Period(t0).Start, counters(workers*rounds, 0, workers*rounds))
}

func testTimesRoundTrip(t *testing.T, s persistence.Store) {
	// The last nanoseconds of a second in a zone west of UTC: a store that
	// rounds instead of truncating, or keeps the zone, fails here.
	west := time.FixedZone("PDT", -7*3600)
	at := time.Date(2026, time.July, 4, 23, 59, 59, 999999999, west)
	wantTime := func(what string, got, want time.Time) {
		t.Helper()
		if got != want || got.Location() != time.UTC {
			t.Fatalf("%s = %s (%v), want %s in UTC", what, got.Format(time.RFC3339Nano), got.Location(), want.Format(time.RFC3339Nano))
		}
	}

	u, err := s.EnsureUser(t.Context(), "alice", at)
	if err != nil {
		t.Fatal(err)
	}
	wantTime("EnsureUser anchor", u.BillingAnchor, us(at))
	wantTime("EnsureUser created_at", u.CreatedAt, us(at))

	anchor := time.Date(2026, time.January, 31, 12, 30, 0, 456789123, west)
	u = putUser(t, s, persistence.UserChange{ID: "alice", Anchor: &anchor, Now: at})
	wantTime("PutUser anchor", u.BillingAnchor, us(anchor))
	wantTime("PutUser updated_at", u.UpdatedAt, us(at))
	got, err := s.GetUser(t.Context(), "alice")
	if err != nil || got != u {
		t.Fatalf("GetUser = %+v, %v; want %+v", got, err, u)
	}

	// A period start given with nanoseconds and a zone: stored, listed and
	// looked up by the same microsecond.
	periodStart := time.Date(2026, time.June, 30, 5, 30, 0, 456789999, west)
	r := request(u, "s1", at, unlimited, unlimited)
	r.Session.PeriodStart = periodStart
	admit(t, s, r)
	sess := getSession(t, s, "s1")
	wantTime("session period_start", sess.PeriodStart, us(periodStart))
	wantTime("session created_at", sess.CreatedAt, us(at))
	wantTime("session updated_at", sess.UpdatedAt, us(at))
	wantUsage(t, s, u.ID, periodStart, counters(1, 0, 1))
	wantUsage(t, s, u.ID, us(periodStart), counters(1, 0, 1))
	wantUsage(t, s, u.ID, us(periodStart).In(west), counters(1, 0, 1))

	// A cursor carrying the session's own time (with the nanoseconds it
	// was created with) and a larger id includes it; with its id, not.
	list, err := s.ListSessions(t.Context(), u.ID, 10, &domain.Cursor{CreatedAt: at, ID: "s2"})
	if err != nil || len(list) != 1 || list[0].ID != "s1" {
		t.Fatalf("ListSessions after (at, s2) = %d sessions, %v; want [s1]", len(list), err)
	}
	list, err = s.ListSessions(t.Context(), u.ID, 10, &domain.Cursor{CreatedAt: sess.CreatedAt, ID: sess.ID})
	if err != nil || len(list) != 0 {
		t.Fatalf("ListSessions after s1's own cursor = %d sessions, %v; want none", len(list), err)
	}

	done := at.Add(90*time.Minute + 1)
	sess, _, err = s.CompleteSession(t.Context(), ops, "s1", 60, done, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantTime("completed updated_at", sess.UpdatedAt, us(done))
	wantTime("completed created_at", sess.CreatedAt, us(at))
	wantSession(t, "GetSession after completion", getSession(t, s, "s1"), sess)
}

func testGetSessionNotFound(t *testing.T, s persistence.Store) {
	_, err := s.GetSession(t.Context(), "nope")
	wantNotFound(t, "GetSession(nope)", err)
}

func testListSessions(t *testing.T, s persistence.Store) {
	u, other := ensureUser(t, s, "lister"), ensureUser(t, s, "other")
	// Several sessions share a created_at (s-03, s-09, s-01 exactly; s-08
	// 50ns later, which is the same microsecond), so that pages must
	// break ties by id to neither repeat nor skip one.
	sec := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }
	mine := []struct {
		id string
		at time.Time
	}{
		{"s-07", sec(0)}, {"s-03", sec(1)}, {"s-09", sec(1)}, {"s-01", sec(1)}, {"s-08", sec(1).Add(50)},
		{"s-05", sec(2)}, {"s-02", sec(2)}, {"s-04", sec(3)},
	}
	var reqs []persistence.AdmitRequest
	for _, m := range mine {
		reqs = append(reqs, request(u, m.id, m.at, unlimited, unlimited))
	}
	// Another user's sessions at the same times must never show up.
	reqs = append(reqs, request(other, "o-1", sec(1), unlimited, unlimited), request(other, "o-2", sec(2), unlimited, unlimited))
	admit(t, s, reqs...)

	want := slices.Clone(reqs[:len(mine)])
	slices.SortFunc(want, func(a, b persistence.AdmitRequest) int {
		if c := us(b.Session.CreatedAt).Compare(us(a.Session.CreatedAt)); c != 0 {
			return c
		}
		return strings.Compare(b.Session.ID, a.Session.ID)
	})
	var wantIDs []string
	for _, r := range want {
		wantIDs = append(wantIDs, r.Session.ID)
	}
	if !slices.Equal(wantIDs, []string{"s-04", "s-05", "s-02", "s-09", "s-08", "s-03", "s-01", "s-07"}) {
		t.Fatalf("test setup: expected order %v", wantIDs)
	}

	for _, limit := range []int{1, 2, 3, 4, 8, 100} {
		var (
			got    []domain.Session
			cursor *domain.Cursor
		)
		for page := 0; ; page++ {
			if page > len(mine)+1 {
				t.Fatalf("limit %d: paging does not end", limit)
			}
			items, err := s.ListSessions(t.Context(), u.ID, limit, cursor)
			if err != nil {
				t.Fatalf("limit %d page %d: %v", limit, page, err)
			}
			if len(items) > limit {
				t.Fatalf("limit %d page %d: %d items", limit, page, len(items))
			}
			got = append(got, items...)
			if len(items) < limit {
				break
			}
			last := items[len(items)-1]
			cursor = &domain.Cursor{CreatedAt: last.CreatedAt, ID: last.ID}
		}
		var gotIDs []string
		for _, sess := range got {
			gotIDs = append(gotIDs, sess.ID)
		}
		if !slices.Equal(gotIDs, wantIDs) {
			t.Fatalf("limit %d: paged through %v, want %v", limit, gotIDs, wantIDs)
		}
		for i, sess := range got {
			wantSession(t, fmt.Sprintf("limit %d item %d", limit, i), sess, created(want[i]))
		}
	}

	if items, err := s.ListSessions(t.Context(), "nobody", 10, nil); err != nil || len(items) != 0 {
		t.Fatalf("ListSessions(nobody) = %d items, %v; want none", len(items), err)
	}
	if items, err := s.ListSessions(t.Context(), u.ID, 0, nil); err != nil || len(items) != 0 {
		t.Fatalf("ListSessions(limit 0) = %d items, %v; want none", len(items), err)
	}
}

func testMarkUploading(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	t1, t2 := t0.Add(time.Minute), t0.Add(2*time.Minute)
	var reqs []persistence.AdmitRequest
	for _, id := range []string{"s1", "done", "broken"} {
		reqs = append(reqs, request(u, id, t0, unlimited, unlimited))
	}
	admit(t, s, reqs...)

	want := created(reqs[0])
	want.Status, want.UpdatedAt = domain.StatusUploading, us(t1)
	got, err := s.MarkUploading(t.Context(), "s1", t1)
	if err != nil {
		t.Fatalf("MarkUploading(created): %v", err)
	}
	wantSession(t, "MarkUploading(created)", got, want)
	wantSession(t, "GetSession after MarkUploading", getSession(t, s, "s1"), want)
	// Again: a no-op, updated_at unchanged.
	got, err = s.MarkUploading(t.Context(), "s1", t2)
	if err != nil {
		t.Fatalf("MarkUploading(uploading): %v", err)
	}
	wantSession(t, "MarkUploading(uploading)", got, want)
	wantSession(t, "GetSession after second MarkUploading", getSession(t, s, "s1"), want)

	if _, _, err := s.CompleteSession(t.Context(), ops, "done", 10, t1, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FailSession(t.Context(), ops, "broken", t1); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"done", "broken"} {
		before := getSession(t, s, id)
		_, err := s.MarkUploading(t.Context(), id, t2)
		wantCode(t, "MarkUploading("+id+")", err, domain.CodeConflict)
		wantSession(t, "after refused MarkUploading("+id+")", getSession(t, s, id), before)
	}
	_, err = s.MarkUploading(t.Context(), "nope", t1)
	wantNotFound(t, "MarkUploading(nope)", err)
}

func testCompleteSession(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	t1, t2 := t0.Add(time.Minute), t0.Add(2*time.Minute)
	period := u.Period(t0).Start
	var reqs []persistence.AdmitRequest
	for _, id := range []string{"s1", "up", "broken"} {
		reqs = append(reqs, request(u, id, t0, unlimited, unlimited))
	}
	admit(t, s, reqs...) // usage (3, 0, 3)

	want := created(reqs[0])
	ninety := int64(90)
	want.Status, want.DurationSeconds, want.UpdatedAt = domain.StatusCompleted, &ninety, us(t1)
	got, c, err := s.CompleteSession(t.Context(), ops, "s1", 90, t1, nil)
	if err != nil {
		t.Fatalf("CompleteSession: %v", err)
	}
	wantSession(t, "CompleteSession", got, want)
	if c != counters(3, 90, 4) {
		t.Fatalf("CompleteSession counters = %+v, want %+v", c, counters(3, 90, 4))
	}
	wantSession(t, "GetSession after completion", getSession(t, s, "s1"), want)
	wantUsage(t, s, u.ID, period, counters(3, 90, 4))

	// The same completion again (a retry): unchanged, counted once.
	got, c, err = s.CompleteSession(t.Context(), ops, "s1", 90, t2, nil)
	if err != nil {
		t.Fatalf("CompleteSession again: %v", err)
	}
	wantSession(t, "CompleteSession again", got, want)
	if c != counters(3, 90, 4) {
		t.Fatalf("CompleteSession again: counters = %+v, want %+v", c, counters(3, 90, 4))
	}
	wantUsage(t, s, u.ID, period, counters(3, 90, 4))

	// Another duration: a conflict, nothing changes.
	_, _, err = s.CompleteSession(t.Context(), ops, "s1", 91, t2, nil)
	wantCode(t, "CompleteSession with another duration", err, domain.CodeConflict)
	wantSession(t, "after refused completion", getSession(t, s, "s1"), want)
	wantUsage(t, s, u.ID, period, counters(3, 90, 4))

	// From uploading.
	if _, err := s.MarkUploading(t.Context(), "up", t1); err != nil {
		t.Fatal(err)
	}
	got, c, err = s.CompleteSession(t.Context(), ops, "up", 30, t2, nil)
	if err != nil || got.Status != domain.StatusCompleted || got.DurationSeconds == nil || *got.DurationSeconds != 30 {
		t.Fatalf("CompleteSession(uploading) = %s, %v", sessionString(got), err)
	}
	if c != counters(3, 120, 5) {
		t.Fatalf("CompleteSession(uploading) counters = %+v, want %+v", c, counters(3, 120, 5))
	}

	// A failed session cannot complete.
	if _, err := s.FailSession(t.Context(), ops, "broken", t1); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.CompleteSession(t.Context(), ops, "broken", 10, t2, nil)
	wantCode(t, "CompleteSession(failed)", err, domain.CodeConflict)
	if got := getSession(t, s, "broken"); got.Status != domain.StatusFailed || got.DurationSeconds != nil {
		t.Fatalf("after refused completion: %s", sessionString(got))
	}
	wantUsage(t, s, u.ID, period, counters(3, 120, 5))

	_, _, err = s.CompleteSession(t.Context(), ops, "nope", 10, t1, nil)
	wantNotFound(t, "CompleteSession(nope)", err)
}

func testCompleteSessionZeroSeconds(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	admit(t, s, request(u, "s1", t0, unlimited, unlimited))
	got, c, err := s.CompleteSession(t.Context(), ops, "s1", 0, t0, nil)
	if err != nil || got.Status != domain.StatusCompleted || got.DurationSeconds == nil || *got.DurationSeconds != 0 {
		t.Fatalf("CompleteSession(0) = %s, %v; want completed with duration 0", sessionString(got), err)
	}
	if c != counters(1, 0, 2) {
		t.Fatalf("CompleteSession(0) counters = %+v, want %+v", c, counters(1, 0, 2))
	}
	if _, _, err := s.CompleteSession(t.Context(), ops, "s1", 0, t0, nil); err != nil {
		t.Fatalf("CompleteSession(0) again: %v", err)
	}
	_, _, err = s.CompleteSession(t.Context(), ops, "s1", 5, t0, nil)
	wantCode(t, "CompleteSession(5) after 0", err, domain.CodeConflict)
}

func testCompleteSessionCountsInAdmissionPeriod(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	first := u.Period(t0)
	admit(t, s, request(u, "s1", t0, unlimited, unlimited))
	// An admin reset starts a new period before the session completes.
	reset := t0.Add(40 * 24 * time.Hour)
	u = putUser(t, s, persistence.UserChange{ID: u.ID, Anchor: &reset, Now: reset})
	second := u.Period(reset)
	if second.Start.Equal(first.Start) {
		t.Fatal("test setup: the reset did not start a new period")
	}
	_, c, err := s.CompleteSession(t.Context(), ops, "s1", 120, reset, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c != counters(1, 120, 2) {
		t.Fatalf("CompleteSession counters = %+v, want the admission period's %+v", c, counters(1, 120, 2))
	}
	wantUsage(t, s, u.ID, first.Start, counters(1, 120, 2))
	wantUsage(t, s, u.ID, second.Start, persistence.Counters{})
}

func testFailSession(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	t1, t2 := t0.Add(time.Minute), t0.Add(2*time.Minute)
	period := u.Period(t0).Start
	var reqs []persistence.AdmitRequest
	for _, id := range []string{"s1", "up", "done"} {
		reqs = append(reqs, request(u, id, t0, unlimited, unlimited))
	}
	admit(t, s, reqs...)
	if _, _, err := s.CompleteSession(t.Context(), ops, "done", 45, t0, nil); err != nil {
		t.Fatal(err)
	}
	wantUsage(t, s, u.ID, period, counters(3, 45, 4))

	want := created(reqs[0])
	want.Status, want.UpdatedAt = domain.StatusFailed, us(t1)
	got, err := s.FailSession(t.Context(), ops, "s1", t1)
	if err != nil {
		t.Fatalf("FailSession: %v", err)
	}
	wantSession(t, "FailSession(created)", got, want)
	wantSession(t, "GetSession after FailSession", getSession(t, s, "s1"), want)
	// A failed session stays counted, with no seconds.
	wantUsage(t, s, u.ID, period, counters(3, 45, 4))

	got, err = s.FailSession(t.Context(), ops, "s1", t2)
	if err != nil {
		t.Fatalf("FailSession again: %v", err)
	}
	wantSession(t, "FailSession(failed)", got, want)

	if _, err := s.MarkUploading(t.Context(), "up", t1); err != nil {
		t.Fatal(err)
	}
	if got, err := s.FailSession(t.Context(), ops, "up", t2); err != nil || got.Status != domain.StatusFailed || !got.UpdatedAt.Equal(us(t2)) {
		t.Fatalf("FailSession(uploading) = %s, %v", sessionString(got), err)
	}

	before := getSession(t, s, "done")
	_, err = s.FailSession(t.Context(), ops, "done", t2)
	wantCode(t, "FailSession(completed)", err, domain.CodeConflict)
	wantSession(t, "after refused FailSession", getSession(t, s, "done"), before)
	wantUsage(t, s, u.ID, period, counters(3, 45, 4))

	_, err = s.FailSession(t.Context(), ops, "nope", t1)
	wantNotFound(t, "FailSession(nope)", err)
}

// everyMethod calls each method of the store and returns the errors by
// method name.
func everyMethod(ctx context.Context, s persistence.Store, u domain.User) map[string]error {
	r := request(u, "late", t0, unlimited, unlimited)
	errs := map[string]error{}
	errs["Migrate"] = s.Migrate(ctx)
	errs["Ping"] = s.Ping(ctx)
	_, errs["EnsureUser"] = s.EnsureUser(ctx, "newcomer", t0)
	_, errs["GetUser"] = s.GetUser(ctx, u.ID)
	_, errs["PutUser"] = s.PutUser(ctx, persistence.UserChange{ID: u.ID, Now: t0, By: ops})
	_, errs["LoadUsage"] = s.LoadUsage(ctx, u.ID, r.Session.PeriodStart)
	_, errs["EnsureUsersUsage"] = s.EnsureUsersUsage(ctx, []persistence.UserLoad{{ID: u.ID, Now: t0}, {ID: "newcomer2", Now: t0}})
	_, errs["Admit"] = s.Admit(ctx, []persistence.AdmitRequest{r})
	_, errs["Admit with a key"] = s.Admit(ctx, []persistence.AdmitRequest{keyed(request(u, "later", t0, unlimited, unlimited), "k", "h")})
	_, errs["LookupIdempotencyKey"] = s.LookupIdempotencyKey(ctx, u.ID, "k1")
	_, errs["PruneIdempotencyKeys"] = s.PruneIdempotencyKeys(ctx, t0.Add(time.Hour))
	errs["ScanUsage"] = s.ScanUsage(ctx, t0, func(persistence.UsageRow) error { return nil })
	_, errs["GetSession"] = s.GetSession(ctx, "s1")
	_, errs["ListSessions"] = s.ListSessions(ctx, u.ID, 10, nil)
	_, errs["MarkUploading"] = s.MarkUploading(ctx, "s1", t0)
	_, _, errs["CompleteSession"] = s.CompleteSession(ctx, ops, "s1", 10, t0, nil)
	_, errs["FailSession"] = s.FailSession(ctx, ops, "s1", t0)
	_, errs["ListUserEvents"] = s.ListUserEvents(ctx, u.ID, 10, nil)
	errs["RecordAlertSettings"] = s.RecordAlertSettings(ctx, []int{80}, t0)
	p := u.Period(t0)
	_, errs["RecordLimitReached"] = s.RecordLimitReached(ctx, []domain.Alert{{UserID: u.ID, Plan: "free", Metric: domain.MetricSessions,
		Limit: 1, PeriodStart: p.Start, PeriodEnd: p.End, OccurredAt: t0}})
	_, errs["ClaimDeliveries"] = s.ClaimDeliveries(ctx, t0, time.Minute, 10)
	_, errs["SettleDelivery"] = s.SettleDelivery(ctx, persistence.Settlement{ID: 1, Claim: 1, At: t0, Status: domain.DeliveryDelivered})
	_, _, errs["OutboxDepth"] = s.OutboxDepth(ctx)
	_, errs["ListDeliveries"] = s.ListDeliveries(ctx, "", 10, 0)
	_, errs["GetDelivery"] = s.GetDelivery(ctx, 1)
	_, errs["RetryDelivery"] = s.RetryDelivery(ctx, 1, t0)
	return errs
}

func testCanceledContextIsUnavailable(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	admit(t, s, keyed(request(u, "s1", t0, unlimited, unlimited), "k1", "h1"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for method, err := range everyMethod(ctx, s, u) {
		wantCode(t, method+" with a canceled context", err, domain.CodeUnavailable)
	}
}

func testClosedStoreIsUnavailable(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	admit(t, s, keyed(request(u, "s1", t0, unlimited, unlimited), "k1", "h1"))
	s.Close()
	for method, err := range everyMethod(t.Context(), s, u) {
		wantCode(t, method+" on a closed store", err, domain.CodeUnavailable)
	}
	s.Close() // idempotent: the open func's cleanup closes it again too
}
