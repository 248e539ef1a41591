package storetest

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// The outbox of usage alerts (persistence/outbox.go): alerts written with
// their cause, exactly once per user, period, kind, metric, threshold and
// limit, and handed out for delivery in order per user.

// alertTests are the outbox's cases, run by Run like the others.
var alertTests = []struct {
	name string
	test func(t *testing.T, s persistence.Store)
}{
	{"AlertsOnAdmission", testAlertsOnAdmission},
	{"AlertsOnAdmissionBatch", testAlertsOnAdmissionBatch},
	{"AlertsOnKeyedAdmission", testAlertsOnKeyedAdmission},
	{"AlertsOffRecordsNothing", testAlertsOffRecordsNothing},
	{"AlertsNotWithoutTheirCause", testAlertsNotWithoutTheirCause},
	{"AlertsOnCompletion", testAlertsOnCompletion},
	{"AlertsAfterPlanChangeAndReset", testAlertsAfterPlanChangeAndReset},
	{"AlertsOnConcurrentAdmissions", testAlertsOnConcurrentAdmissions},
	{"LimitReachedOnce", testLimitReachedOnce},
	{"ClaimDeliveriesInOrderPerUser", testClaimDeliveriesInOrderPerUser},
	{"SettleDeliveryNeedsTheClaim", testSettleDeliveryNeedsTheClaim},
	{"ListAndRetryDeliveries", testListAndRetryDeliveries},
}

// free is the plan the alert cases run on: 10 sessions, 2 minutes.
var free = domain.Plan{Name: "free", MaxSessions: 10, MaxTotalMinutes: 2, MaxFileSizeMB: 60}

// alerting is r with alerts on for plan p at 80 and 100 percent.
func alerting(r persistence.AdmitRequest, p domain.Plan) persistence.AdmitRequest {
	r.Alerts = domain.NewAlertPlan(p, []int{80, 100})
	r.PlanName = p.Name
	r.MaxSessions, r.MaxSeconds = p.MaxSessions, p.MaxSeconds()
	return r
}

// allAlerts reads every alert of the store, oldest first.
func allAlerts(t *testing.T, s persistence.Store) []domain.Delivery {
	t.Helper()
	ds, err := s.ListDeliveries(t.Context(), "", 1000, 0)
	if err != nil {
		t.Fatalf("ListDeliveries: %v", err)
	}
	slices.Reverse(ds)
	return ds
}

// alertString is the part of an alert the cases compare.
func alertString(d domain.Delivery) string {
	return fmt.Sprintf("%s %s %s/%d used=%d limit=%d plan=%s session=%s restart=%q",
		d.UserID, d.Kind, d.Metric, d.Percent, d.Used, d.Limit, d.Plan, d.SessionID, d.Restart)
}

func wantAlerts(t *testing.T, s persistence.Store, want ...string) []domain.Delivery {
	t.Helper()
	ds := allAlerts(t, s)
	got := make([]string, len(ds))
	for i, d := range ds {
		got[i] = alertString(d)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("alerts:\n got  %s\n want %s", strings.Join(got, "\n      "), strings.Join(want, "\n      "))
	}
	return ds
}

func testAlertsOnAdmission(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	for i := 1; i <= 11; i++ {
		admit(t, s, alerting(request(u, fmt.Sprintf("s%02d", i), t0.Add(time.Duration(i)*time.Second), 0, 0), free))
	}
	ds := wantAlerts(t, s,
		`alice usage.threshold_crossed sessions/80 used=8 limit=10 plan=free session=s08 restart=""`,
		`alice usage.threshold_crossed sessions/100 used=10 limit=10 plan=free session=s10 restart=""`)
	p := u.Period(t0)
	for _, d := range ds {
		if !d.PeriodStart.Equal(us(p.Start)) || !d.PeriodEnd.Equal(us(p.End)) || d.Status != domain.DeliveryPending || d.Attempts != 0 {
			t.Fatalf("alert %s: period %v–%v status %s attempts %d, want %v–%v pending 0", d.WebhookID(),
				d.PeriodStart, d.PeriodEnd, d.Status, d.Attempts, p.Start, p.End)
		}
	}
	if want := us(t0.Add(8 * time.Second)); !ds[0].OccurredAt.Equal(want) || !ds[0].NextAttemptAt.Equal(want) {
		t.Fatalf("80%% alert occurred %v, due %v; want both the crossing session's creation %v", ds[0].OccurredAt, ds[0].NextAttemptAt, want)
	}
}

// testAlertsOnAdmissionBatch: one batch crossing both thresholds records
// both, each with the session whose number reaches it, and nothing for the
// requests refused after the limit.
func testAlertsOnAdmissionBatch(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	v := ensureUser(t, s, "bob")
	admit(t, s, alerting(request(u, "a1", t0, 0, 0), free))
	var reqs []persistence.AdmitRequest
	for i := 2; i <= 12; i++ {
		reqs = append(reqs, alerting(request(u, fmt.Sprintf("a%02d", i), t0.Add(time.Second), 0, 0), free))
		if i <= 8 {
			reqs = append(reqs, alerting(request(v, fmt.Sprintf("b%02d", i), t0.Add(time.Second), 0, 0), free))
		}
	}
	res := admit(t, s, reqs...)
	refused := 0
	for _, r := range res {
		if r.Outcome == persistence.OverLimit {
			refused++
		}
	}
	if refused != 2 {
		t.Fatalf("%d refused, want 2 (alice's 11th and 12th)", refused)
	}
	wantAlerts(t, s,
		`alice usage.threshold_crossed sessions/80 used=8 limit=10 plan=free session=a08 restart=""`,
		`alice usage.threshold_crossed sessions/100 used=10 limit=10 plan=free session=a10 restart=""`)
	// bob has 7 sessions: the next one crosses 80%.
	admit(t, s, alerting(request(v, "b09", t0.Add(2*time.Second), 0, 0), free))
	wantAlerts(t, s,
		`alice usage.threshold_crossed sessions/80 used=8 limit=10 plan=free session=a08 restart=""`,
		`alice usage.threshold_crossed sessions/100 used=10 limit=10 plan=free session=a10 restart=""`,
		`bob usage.threshold_crossed sessions/80 used=8 limit=10 plan=free session=b09 restart=""`)
}

func testAlertsOnKeyedAdmission(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	for i := 1; i <= 8; i++ {
		r := keyed(alerting(request(u, fmt.Sprintf("s%02d", i), t0, 0, 0), free), fmt.Sprintf("k%d", i), "h")
		admit(t, s, r)
	}
	// A replay of the crossing key admits nothing and records nothing more.
	admit(t, s, keyed(alerting(request(u, "again", t0, 0, 0), free), "k8", "h"))
	wantAlerts(t, s, `alice usage.threshold_crossed sessions/80 used=8 limit=10 plan=free session=s08 restart=""`)
}

func testAlertsOffRecordsNothing(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	for i := 1; i <= 10; i++ {
		r := alerting(request(u, fmt.Sprintf("s%02d", i), t0, 0, 0), free)
		r.Alerts = nil
		admit(t, s, r)
	}
	if _, _, err := s.CompleteSession(t.Context(), ops, "s01", 120, t0, nil); err != nil {
		t.Fatalf("CompleteSession: %v", err)
	}
	wantAlerts(t, s)
}

// testAlertsNotWithoutTheirCause: a batch that fails as a whole commits
// none of its alerts.
func testAlertsNotWithoutTheirCause(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	for i := 1; i <= 7; i++ {
		admit(t, s, alerting(request(u, fmt.Sprintf("s%02d", i), t0, 0, 0), free))
	}
	_, err := s.Admit(t.Context(), []persistence.AdmitRequest{
		alerting(request(u, "s08", t0, 0, 0), free),
		alerting(request(u, "s01", t0, 0, 0), free), // a taken id: the batch fails
	})
	wantCode(t, "Admit with a taken session id", err, domain.CodeConflict)
	wantNoSession(t, s, "s08")
	wantAlerts(t, s)
}

func testAlertsOnCompletion(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	for _, id := range []string{"s1", "s2", "s3"} {
		admit(t, s, alerting(request(u, id, t0, 0, 0), free))
	}
	ap := domain.NewAlertPlan(free, []int{80, 100}) // 2 minutes: 96 s and 120 s
	complete := func(id string, seconds int64) {
		t.Helper()
		if _, _, err := s.CompleteSession(t.Context(), ops, id, seconds, t0.Add(time.Minute), ap); err != nil {
			t.Fatalf("CompleteSession(%s): %v", id, err)
		}
	}
	complete("s1", 95)
	wantAlerts(t, s)
	complete("s2", 30) // 125 s: both thresholds at once
	complete("s2", 30) // a repeated completion changes nothing
	complete("s3", 10)
	wantAlerts(t, s,
		`alice usage.threshold_crossed minutes/80 used=125 limit=2 plan=free session=s2 restart=""`,
		`alice usage.threshold_crossed minutes/100 used=125 limit=2 plan=free session=s2 restart=""`)
	ds := allAlerts(t, s)
	if p := u.Period(t0); !ds[0].PeriodEnd.Equal(us(p.End)) || ds[0].UsedReported() != 2 {
		t.Fatalf("minutes alert: period end %v, used %d minutes; want %v, 2", ds[0].PeriodEnd, ds[0].UsedReported(), p.End)
	}
}

// testAlertsAfterPlanChangeAndReset: another limit, or another period,
// counts afresh, and the alert says which restarted it.
func testAlertsAfterPlanChangeAndReset(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	for i := 1; i <= 8; i++ {
		admit(t, s, alerting(request(u, fmt.Sprintf("a%02d", i), t0, 0, 0), free))
	}
	bigger := domain.Plan{Name: "student", MaxSessions: 12, MaxTotalMinutes: 10}
	plan := "student"
	u = putUser(t, s, persistence.UserChange{ID: u.ID, Plan: &plan, Now: t0.Add(time.Second)})
	for i := 9; i <= 10; i++ { // 10 of 12 crosses 80% of the new limit
		admit(t, s, alerting(request(u, fmt.Sprintf("a%02d", i), t0.Add(2*time.Second), 0, 0), bigger))
	}
	reset := t0.Add(time.Hour)
	u = putUser(t, s, persistence.UserChange{ID: u.ID, Anchor: &reset, Now: reset, Kind: domain.EventResetUsage})
	for i := 1; i <= 10; i++ {
		admit(t, s, alerting(request(u, fmt.Sprintf("b%02d", i), reset.Add(time.Second), 0, 0), bigger))
	}
	wantAlerts(t, s,
		`alice usage.threshold_crossed sessions/80 used=8 limit=10 plan=free session=a08 restart=""`,
		`alice usage.threshold_crossed sessions/80 used=10 limit=12 plan=student session=a10 restart="plan_change"`,
		`alice usage.threshold_crossed sessions/80 used=10 limit=12 plan=student session=b10 restart="reset"`)
}

// testAlertsOnConcurrentAdmissions: however admissions of one user race,
// each threshold is recorded once.
func testAlertsOnConcurrentAdmissions(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	errs := make(chan error, 20)
	for i := range 20 {
		go func() {
			_, err := s.Admit(t.Context(), []persistence.AdmitRequest{alerting(request(u, fmt.Sprintf("c%02d", i), t0, 0, 0), free)})
			errs <- err
		}()
	}
	for range 20 {
		if err := <-errs; err != nil {
			t.Fatalf("Admit: %v", err)
		}
	}
	ds := allAlerts(t, s)
	if len(ds) != 2 || ds[0].Percent != 80 || ds[0].Used != 8 || ds[1].Percent != 100 || ds[1].Used != 10 {
		t.Fatalf("alerts after 20 racing admissions: %v", ds)
	}
	for _, d := range ds {
		sess := getSession(t, s, d.SessionID)
		if sess.UserID != u.ID {
			t.Fatalf("alert %s names session %s of %s", d.WebhookID(), d.SessionID, sess.UserID)
		}
	}
}

func testLimitReachedOnce(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	v := ensureUser(t, s, "bob")
	p := u.Period(t0)
	a := domain.Alert{UserID: u.ID, Plan: "free", Metric: domain.MetricSessions, Used: 10, Limit: 10,
		PeriodStart: p.Start, PeriodEnd: p.End, OccurredAt: t0}
	b := a
	b.UserID = v.ID
	minutes := a
	minutes.Metric, minutes.Used, minutes.Limit = domain.MetricMinutes, 7200, 120
	for i, c := range []struct {
		alerts []domain.Alert
		want   int
	}{
		{[]domain.Alert{a}, 1},
		{[]domain.Alert{a, b, a}, 1}, // alice's again, and twice in one call: bob's only
		{[]domain.Alert{minutes, b}, 1},
		{nil, 0},
	} {
		got, err := s.RecordLimitReached(t.Context(), c.alerts)
		if err != nil || got != c.want {
			t.Fatalf("RecordLimitReached #%d = %d, %v; want %d", i+1, got, err, c.want)
		}
	}
	wantAlerts(t, s,
		`alice usage.limit_reached sessions/0 used=10 limit=10 plan=free session= restart=""`,
		`bob usage.limit_reached sessions/0 used=10 limit=10 plan=free session= restart=""`,
		`alice usage.limit_reached minutes/0 used=7200 limit=120 plan=free session= restart=""`)
}

func claim(t *testing.T, s persistence.Store, now time.Time, limit int) []domain.Delivery {
	t.Helper()
	ds, err := s.ClaimDeliveries(t.Context(), now, time.Minute, limit)
	if err != nil {
		t.Fatalf("ClaimDeliveries: %v", err)
	}
	return ds
}

func ids(ds []domain.Delivery) string {
	var b strings.Builder
	for _, d := range ds {
		fmt.Fprintf(&b, "%s/%d ", d.UserID, d.Percent)
	}
	return strings.TrimSpace(b.String())
}

func settle(t *testing.T, s persistence.Store, d domain.Delivery, st persistence.Settlement) bool {
	t.Helper()
	st.ID, st.Claim = d.ID, d.Claim
	ok, err := s.SettleDelivery(t.Context(), st)
	if err != nil {
		t.Fatalf("SettleDelivery: %v", err)
	}
	return ok
}

// testClaimDeliveriesInOrderPerUser: a user's next alert is handed out
// only once the one before it is settled; other users' go on meanwhile;
// an expired claim is taken over.
func testClaimDeliveriesInOrderPerUser(t *testing.T, s persistence.Store) {
	for _, id := range []string{"alice", "bob"} {
		u := ensureUser(t, s, id)
		for i := 1; i <= 10; i++ {
			admit(t, s, alerting(request(u, fmt.Sprintf("%s%02d", id, i), t0, 0, 0), free))
		}
	}
	now := t0.Add(time.Minute)
	first := claim(t, s, now, 10)
	if got := ids(first); got != "alice/80 bob/80" {
		t.Fatalf("first claim: %s, want each user's oldest: alice/80 bob/80", got)
	}
	if got := claim(t, s, now, 10); len(got) != 0 {
		t.Fatalf("second claim while the first runs: %s, want none", ids(got))
	}
	if first[0].Attempts != 1 || first[0].Claim == 0 || !first[0].LastAttemptAt.Equal(us(now)) {
		t.Fatalf("claimed: attempts %d claim %d last attempt %v", first[0].Attempts, first[0].Claim, first[0].LastAttemptAt)
	}
	if !settle(t, s, first[0], persistence.Settlement{At: now, Status: domain.DeliveryDelivered, HTTPStatus: 204}) {
		t.Fatal("settling alice's claim was refused")
	}
	if got := ids(claim(t, s, now, 10)); got != "alice/100" {
		t.Fatalf("after alice's 80%% is delivered: %s, want alice/100", got)
	}
	// bob's claim expires unsettled (its node died): taken over after the lease.
	later := now.Add(2 * time.Minute)
	again := claim(t, s, later, 10)
	if got := ids(again); got != "alice/100 bob/80" {
		t.Fatalf("after the leases ran out: %s, want alice/100 bob/80", got)
	}
	if again[1].Attempts != 2 {
		t.Fatalf("bob's taken-over claim: attempt %d, want 2", again[1].Attempts)
	}
	// A retry pushed into the future is not due before its time, and
	// still holds bob's next alert back.
	if !settle(t, s, again[1], persistence.Settlement{At: later, Status: domain.DeliveryPending, NextAttemptAt: later.Add(time.Hour), HTTPStatus: 503, Error: "receiver answered 503"}) {
		t.Fatal("settling bob's retry was refused")
	}
	if !settle(t, s, again[0], persistence.Settlement{At: later, Status: domain.DeliveryFailed, HTTPStatus: 410, Error: "receiver answered 410"}) {
		t.Fatal("settling alice's dead letter was refused")
	}
	if got := claim(t, s, later.Add(3*time.Minute), 10); len(got) != 0 {
		t.Fatalf("before bob's retry is due: %s, want none", ids(got))
	}
	due := claim(t, s, later.Add(time.Hour), 10)
	if got := ids(due); got != "bob/80" || due[0].LastStatus != 503 || due[0].LastError != "receiver answered 503" {
		t.Fatalf("when bob's retry is due: %s (last %d %q), want bob/80 after a 503", got, due[0].LastStatus, due[0].LastError)
	}
	n, oldest, err := s.OutboxDepth(t.Context())
	if err != nil || n != 2 || !oldest.Equal(us(t0)) {
		t.Fatalf("OutboxDepth = %d, %v, %v; want bob's 2 pending since %v", n, oldest, err, us(t0))
	}
}

func testSettleDeliveryNeedsTheClaim(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	for i := 1; i <= 8; i++ {
		admit(t, s, alerting(request(u, fmt.Sprintf("s%02d", i), t0, 0, 0), free))
	}
	d := claim(t, s, t0, 1)[0]
	stale := d
	stale.Claim++
	if settle(t, s, stale, persistence.Settlement{At: t0, Status: domain.DeliveryDelivered}) {
		t.Fatal("a settlement under another claim was taken")
	}
	// The lease runs out and another claim takes the delivery over: the
	// first claim can no longer settle it.
	over := claim(t, s, t0.Add(2*time.Minute), 1)
	if len(over) != 1 || over[0].Claim == d.Claim {
		t.Fatalf("take-over claim: %+v", over)
	}
	if settle(t, s, d, persistence.Settlement{At: t0, Status: domain.DeliveryDelivered}) {
		t.Fatal("the expired claim settled the delivery")
	}
	if !settle(t, s, over[0], persistence.Settlement{At: t0.Add(2 * time.Minute), Status: domain.DeliveryDelivered, HTTPStatus: 200}) {
		t.Fatal("the current claim could not settle")
	}
	got, err := s.GetDelivery(t.Context(), d.ID)
	if err != nil || got.Status != domain.DeliveryDelivered || !got.DeliveredAt.Equal(us(t0.Add(2*time.Minute))) || got.LastStatus != 200 {
		t.Fatalf("GetDelivery = %+v, %v", got, err)
	}
	if settle(t, s, over[0], persistence.Settlement{At: t0, Status: domain.DeliveryFailed}) {
		t.Fatal("a delivered delivery was settled again")
	}
}

func testListAndRetryDeliveries(t *testing.T, s persistence.Store) {
	for _, id := range []string{"a", "b", "c"} {
		u := ensureUser(t, s, id)
		for i := 1; i <= 8; i++ {
			admit(t, s, alerting(request(u, fmt.Sprintf("%s%02d", id, i), t0, 0, 0), free))
		}
	}
	ds := claim(t, s, t0, 10)
	for _, d := range ds[:2] {
		settle(t, s, d, persistence.Settlement{At: t0, Status: domain.DeliveryFailed, HTTPStatus: 400, Error: "receiver answered 400"})
	}
	failed, err := s.ListDeliveries(t.Context(), domain.DeliveryFailed, 1, 0)
	if err != nil || len(failed) != 1 || failed[0].UserID != "b" {
		t.Fatalf("first page of failed: %v, %v; want b's (newest first)", failed, err)
	}
	next, err := s.ListDeliveries(t.Context(), domain.DeliveryFailed, 1, failed[0].ID)
	if err != nil || len(next) != 1 || next[0].UserID != "a" {
		t.Fatalf("second page of failed: %v, %v; want a's", next, err)
	}
	if last, err := s.ListDeliveries(t.Context(), domain.DeliveryFailed, 1, next[0].ID); err != nil || len(last) != 0 {
		t.Fatalf("third page of failed: %v, %v; want none", last, err)
	}
	_, err = s.RetryDelivery(t.Context(), ds[2].ID, t0)
	wantCode(t, "RetryDelivery of a pending delivery", err, domain.CodeConflict)
	_, err = s.RetryDelivery(t.Context(), 1<<40, t0)
	wantNotFound(t, "RetryDelivery of no delivery", err)
	_, err = s.GetDelivery(t.Context(), 1<<40)
	wantNotFound(t, "GetDelivery of no delivery", err)
	back, err := s.RetryDelivery(t.Context(), failed[0].ID, t0.Add(time.Hour))
	if err != nil || back.Status != domain.DeliveryPending || !back.NextAttemptAt.Equal(us(t0.Add(time.Hour))) {
		t.Fatalf("RetryDelivery = %+v, %v", back, err)
	}
	// c's claim has run out by then too: both are handed out.
	if got := ids(claim(t, s, t0.Add(time.Hour), 10)); got != "b/80 c/80" {
		t.Fatalf("claim after the retry: %s, want b/80 c/80", got)
	}
}
