package transport_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/transport"
)

// fakeDeliveries is an outbox in memory: deliveries with ids 1..n, listed
// newest first as the store lists them, and the calls it received.
type fakeDeliveries struct {
	mu    sync.Mutex
	all   []domain.Delivery // ascending by id
	calls []string
	err   error // when set, every call answers it
}

var _ transport.Deliveries = (*fakeDeliveries)(nil)

func (f *fakeDeliveries) record(format string, args ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *fakeDeliveries) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeDeliveries) ListDeliveries(_ context.Context, status domain.DeliveryStatus, limit int, before int64) ([]domain.Delivery, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("ListDeliveries %q %d %d", status, limit, before)
	if f.err != nil {
		return nil, f.err
	}
	var out []domain.Delivery
	for i := len(f.all) - 1; i >= 0 && len(out) < limit; i-- {
		d := f.all[i]
		if (before == 0 || d.ID < before) && (status == "" || d.Status == status) {
			out = append(out, d)
		}
	}
	return out, nil
}

func (f *fakeDeliveries) find(id int64) (int, error) {
	i := slices.IndexFunc(f.all, func(d domain.Delivery) bool { return d.ID == id })
	if i < 0 {
		return 0, domain.ErrNotFound
	}
	return i, nil
}

func (f *fakeDeliveries) GetDelivery(_ context.Context, id int64) (domain.Delivery, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("GetDelivery %d", id)
	if f.err != nil {
		return domain.Delivery{}, f.err
	}
	i, err := f.find(id)
	if err != nil {
		return domain.Delivery{}, err
	}
	return f.all[i], nil
}

func (f *fakeDeliveries) RetryDelivery(_ context.Context, id int64) (domain.Delivery, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("RetryDelivery %d", id)
	if f.err != nil {
		return domain.Delivery{}, f.err
	}
	i, err := f.find(id)
	if err != nil {
		return domain.Delivery{}, err
	}
	d := &f.all[i]
	if d.Status != domain.DeliveryFailed {
		return domain.Delivery{}, domain.Errorf(domain.CodeConflict, "delivery %s is %s, not failed", d.WebhookID(), d.Status)
	}
	d.Status, d.NextAttemptAt = domain.DeliveryPending, t0
	return *d, nil
}

// outbox returns n deliveries: ids 1..n, statuses cycling failed,
// delivered, pending; odd ids are minutes thresholds crossed, even ones
// sessions limits reached.
func outbox(n int) *fakeDeliveries {
	f := &fakeDeliveries{}
	for i := 1; i <= n; i++ {
		a := domain.Alert{ID: int64(i), UserID: "alice", Plan: "free",
			PeriodStart: period.Start, PeriodEnd: period.End, OccurredAt: t0.Add(time.Duration(i) * time.Second)}
		if i%2 == 1 {
			a.Kind, a.Metric, a.Percent, a.Used, a.Limit, a.SessionID = domain.AlertThresholdCrossed, domain.MetricMinutes, 80, 96*60+30, 120, "s-1"
		} else {
			a.Kind, a.Metric, a.Used, a.Limit = domain.AlertLimitReached, domain.MetricSessions, 10, 10
		}
		d := domain.Delivery{Alert: a, Attempts: 1, LastAttemptAt: a.OccurredAt.Add(time.Second), Claim: 99}
		switch i % 3 {
		case 1:
			d.Status, d.LastStatus, d.LastError = domain.DeliveryFailed, 500, "receiver answered 500"
		case 2:
			d.Status, d.LastStatus, d.DeliveredAt = domain.DeliveryDelivered, 204, d.LastAttemptAt
		case 0:
			d.Status, d.NextAttemptAt = domain.DeliveryPending, t0.Add(time.Hour)
			d.LastError = "dial tcp: connection refused"
		}
		f.all = append(f.all, d)
	}
	return f
}

func withOutbox(f *fakeDeliveries) func(*transport.Options) {
	return func(o *transport.Options) { o.Deliveries = f }
}

type deliveryList struct {
	Items []struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	} `json:"items"`
	NextCursor *string `json:"next_cursor"`
}

// The JSON of a delivery: the webhook-id as its id, the alert under data,
// the optional keys left out when they do not apply, the claim never.
func TestDeliveryJSON(t *testing.T) {
	f := outbox(3)
	e := newEnv(t, withOutbox(f))
	for id, want := range map[string]string{
		"msg_tally_1": `{"id":"msg_tally_1","type":"usage.threshold_crossed","status":"failed","attempts":1,` +
			`"last_attempt_at":"2026-11-14T09:30:02Z","last_status":500,"last_error":"receiver answered 500",` +
			`"data":{"user_id":"alice","plan":"free","metric":"minutes","threshold_percent":80,"used":96,"limit":120,"used_seconds":5790,` +
			`"period_start":"2026-11-01T00:00:00Z","period_end":"2026-12-01T00:00:00Z","occurred_at":"2026-11-14T09:30:01Z","session_id":"s-1"}}`,
		"2": `{"id":"msg_tally_2","type":"usage.limit_reached","status":"delivered","attempts":1,` +
			`"last_attempt_at":"2026-11-14T09:30:03Z","last_status":204,"delivered_at":"2026-11-14T09:30:03Z",` +
			`"data":{"user_id":"alice","plan":"free","metric":"sessions","used":10,"limit":10,` +
			`"period_start":"2026-11-01T00:00:00Z","period_end":"2026-12-01T00:00:00Z","occurred_at":"2026-11-14T09:30:02Z"}}`,
	} {
		r := e.do("GET", "/admin/v1/webhooks/deliveries/"+id, adminToken, nil)
		if r.Status != 200 || string(r.Body) != want {
			t.Errorf("%s: got %d %s\nwant %s", id, r.Status, r.Body, want)
		}
	}
	// A pending delivery says when it is next attempted; a restarted
	// count says why; a delivery never attempted has a null last attempt.
	f.mu.Lock()
	f.all[2].Alert.Restart = domain.RestartPlanChange
	f.all[2].Attempts, f.all[2].LastAttemptAt, f.all[2].LastError = 0, time.Time{}, ""
	f.mu.Unlock()
	r := e.do("GET", "/admin/v1/webhooks/deliveries/msg_tally_3", adminToken, nil)
	var d map[string]any
	r.Decode(t, &d)
	if r.Status != 200 || d["next_attempt_at"] != "2026-11-14T10:30:00Z" || d["last_attempt_at"] != nil ||
		d["data"].(map[string]any)["restarted_by"] != "plan_change" {
		t.Errorf("pending delivery: %d %s", r.Status, r.Body)
	}
	for _, k := range []string{"last_status", "last_error", "delivered_at", "claim"} {
		if _, ok := d[k]; ok {
			t.Errorf("pending, never attempted: %q is shown: %s", k, r.Body)
		}
	}
	if !strings.Contains(string(r.Body), `"last_attempt_at":null`) {
		t.Errorf("last_attempt_at must be null before any attempt: %s", r.Body)
	}
}

func TestListDeliveries(t *testing.T) {
	f := outbox(7) // failed: 1, 4, 7; delivered: 2, 5; pending: 3, 6
	e := newEnv(t, withOutbox(f))

	// The default page: everything, newest first, no next page; the
	// outbox is asked one more than the page to know.
	r := e.do("GET", "/admin/v1/webhooks/deliveries", adminToken, nil)
	var all deliveryList
	r.Decode(t, &all)
	var ids []string
	for _, it := range all.Items {
		ids = append(ids, it.ID)
	}
	if r.Status != 200 || all.NextCursor != nil || !slices.Equal(ids, []string{"msg_tally_7", "msg_tally_6", "msg_tally_5",
		"msg_tally_4", "msg_tally_3", "msg_tally_2", "msg_tally_1"}) {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	if calls := f.Calls(); calls[0] != `ListDeliveries "" 51 0` {
		t.Errorf("call %q", calls[0])
	}

	// The failed ones by pages of 2: each once, in order, and the status
	// goes to the outbox with every page.
	var walked []string
	path := "/admin/v1/webhooks/deliveries?status=failed&limit=2"
	for range 5 {
		r := e.do("GET", path, adminToken, nil)
		var page deliveryList
		r.Decode(t, &page)
		if r.Status != 200 {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
		for _, it := range page.Items {
			if it.Status != "failed" {
				t.Errorf("status %s in the failed list", it.Status)
			}
			walked = append(walked, it.ID)
		}
		if page.NextCursor == nil {
			break
		}
		path = "/admin/v1/webhooks/deliveries?status=failed&limit=2&cursor=" + *page.NextCursor
	}
	if want := []string{"msg_tally_7", "msg_tally_4", "msg_tally_1"}; !slices.Equal(walked, want) {
		t.Fatalf("walked %v, want %v", walked, want)
	}
	calls := f.Calls()
	if got := calls[len(calls)-2:]; !slices.Equal(got, []string{`ListDeliveries "failed" 3 0`, `ListDeliveries "failed" 3 4`}) {
		t.Errorf("calls %q", got)
	}
	for _, st := range []string{"pending", "delivered"} {
		var page deliveryList
		r := e.do("GET", "/admin/v1/webhooks/deliveries?status="+st, adminToken, nil)
		r.Decode(t, &page)
		if r.Status != 200 || len(page.Items) != 2 || page.Items[0].Status != st {
			t.Errorf("status=%s: %d %s", st, r.Status, r.Body)
		}
	}

	// Bad parameters: 422 naming each, nothing asked of the outbox.
	n := len(f.Calls())
	for _, tc := range []struct {
		query  string
		fields []string
	}{
		{"status=dead", []string{"status"}},
		{"status=", []string{"status"}},
		{"status=FAILED", []string{"status"}},
		{"limit=0", []string{"limit"}},
		{"limit=501", []string{"limit"}},
		{"limit=ten", []string{"limit"}},
		{"cursor=", []string{"cursor"}},
		{"cursor=not-base64!", []string{"cursor"}},
		{"cursor=" + b64("7"), []string{"cursor"}},
		{"cursor=" + b64("d|0"), []string{"cursor"}},
		{"cursor=" + b64("d|x"), []string{"cursor"}},
		{"cursor=" + b64("2026-11-14T09:30:00Z|7"), []string{"cursor"}},
		{"cursor=" + strings.Repeat("A", 513), []string{"cursor"}},
		{"status=x&limit=-1&cursor=" + b64("x"), []string{"status", "limit", "cursor"}},
	} {
		b := wantError(t, e.do("GET", "/admin/v1/webhooks/deliveries?"+tc.query, adminToken, nil), 422, "validation_failed")
		if got := fieldNames(b); !slices.Equal(got, tc.fields) {
			t.Errorf("%s: fields %v, want %v", tc.query, got, tc.fields)
		}
	}
	if got := f.Calls(); len(got) != n {
		t.Errorf("bad parameters reached the outbox: %q", got[n:])
	}

	// The outbox's failure is the answer's.
	f.mu.Lock()
	f.err = domain.Unavailable("the database", fmt.Errorf("down"))
	f.mu.Unlock()
	wantError(t, e.do("GET", "/admin/v1/webhooks/deliveries", adminToken, nil), 503, "unavailable")
}

func TestGetDeliveryIDs(t *testing.T) {
	f := outbox(3)
	e := newEnv(t, withOutbox(f))
	for _, id := range []string{"msg_tally_3", "3"} {
		if r := e.do("GET", "/admin/v1/webhooks/deliveries/"+id, adminToken, nil); r.Status != 200 || !strings.Contains(string(r.Body), `"id":"msg_tally_3"`) {
			t.Errorf("%s: %d %s", id, r.Status, r.Body)
		}
	}
	// Unknown ids and ids that cannot be one are 404s; only the possible
	// ones reach the outbox.
	n := len(f.Calls())
	for _, id := range []string{"msg_tally_0", "msg_tally_", "msg_tally_03", "msg_tally_-1", "msg_tally_+1", "msg_x_1", "x",
		"99999999999999999999", "msg_tally_9223372036854775808", "1e3", "%20"} {
		wantError(t, e.do("GET", "/admin/v1/webhooks/deliveries/"+id, adminToken, nil), 404, "not_found")
		wantError(t, e.do("POST", "/admin/v1/webhooks/deliveries/"+id+"/retry", adminToken, nil), 404, "not_found")
	}
	if got := f.Calls(); len(got) != n {
		t.Errorf("impossible ids reached the outbox: %q", got[n:])
	}
	b := wantError(t, e.do("GET", "/admin/v1/webhooks/deliveries/msg_tally_9223372036854775807", adminToken, nil), 404, "not_found")
	if b.Detail.Message != "not found" {
		t.Errorf("unknown id: %q", b.Detail.Message)
	}
}

func TestRetryDelivery(t *testing.T) {
	f := outbox(3) // 1 failed, 2 delivered, 3 pending
	e := newEnv(t, withOutbox(f), namedAdmins)

	r := e.do("POST", "/admin/v1/webhooks/deliveries/msg_tally_1/retry", opsToken, nil, "X-Request-Id", "req-retry-1")
	var d map[string]any
	r.Decode(t, &d)
	if r.Status != 200 || d["id"] != "msg_tally_1" || d["status"] != "pending" || d["next_attempt_at"] != "2026-11-14T09:30:00Z" {
		t.Fatalf("retry: %d %s", r.Status, r.Body)
	}
	// Logged with who asked and the request id, as audit events are.
	var logged map[string]any
	for line := range strings.Lines(e.logs.String()) {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "webhook delivery retried" {
			logged = m
		}
	}
	if logged == nil || logged["admin"] != "ops.alice" || logged["request_id"] != "req-retry-1" ||
		logged["webhook_id"] != "msg_tally_1" || logged["user_id"] != "alice" {
		t.Errorf("retry log line %v; logs:\n%s", logged, e.logs.String())
	}

	// Now pending: not failed any more, so a second retry is a conflict,
	// as is one of a delivered delivery.
	for _, id := range []string{"msg_tally_1", "msg_tally_2", "3"} {
		b := wantError(t, e.do("POST", "/admin/v1/webhooks/deliveries/"+id+"/retry", adminToken, nil), 409, "conflict")
		if !strings.Contains(b.Detail.Message, "not failed") {
			t.Errorf("%s: message %q", id, b.Detail.Message)
		}
	}
	wantError(t, e.do("POST", "/admin/v1/webhooks/deliveries/msg_tally_42/retry", adminToken, nil), 404, "not_found")

	// The body is empty or {}, as for the other admin actions without one.
	f.mu.Lock()
	f.all[0].Status = domain.DeliveryFailed
	f.mu.Unlock()
	wantError(t, e.do("POST", "/admin/v1/webhooks/deliveries/1/retry", adminToken, `{"force":true}`), 400, "bad_request")
	if r := e.do("POST", "/admin/v1/webhooks/deliveries/1/retry", adminToken, `{}`); r.Status != 200 {
		t.Errorf("retry with {}: %d %s", r.Status, r.Body)
	}
}

// Without an outbox (no TALLY_WEBHOOK_URL) the routes say so with a 404;
// they still need an admin credential first, as every admin route does.
func TestDeliveriesNotConfigured(t *testing.T) {
	e := newEnv(t)
	for _, rq := range []struct{ method, path string }{
		{"GET", "/admin/v1/webhooks/deliveries"},
		{"GET", "/admin/v1/webhooks/deliveries?status=nonsense"},
		{"GET", "/admin/v1/webhooks/deliveries/msg_tally_1"},
		{"POST", "/admin/v1/webhooks/deliveries/msg_tally_1/retry"},
	} {
		b := wantError(t, e.do(rq.method, rq.path, adminToken, nil), 404, "not_found")
		if b.Detail.Message != "webhooks are not configured (TALLY_WEBHOOK_URL)" {
			t.Errorf("%s %s: message %q", rq.method, rq.path, b.Detail.Message)
		}
		wantError(t, e.do(rq.method, rq.path, e.token("alice"), nil), 403, "forbidden")
		wantError(t, e.do(rq.method, rq.path, "", nil), 401, "unauthorized")
	}
}

func TestDeliveriesNeedAnAdmin(t *testing.T) {
	f := outbox(3)
	e := newEnv(t, withOutbox(f))
	for _, rq := range []struct{ method, path string }{
		{"GET", "/admin/v1/webhooks/deliveries"},
		{"GET", "/admin/v1/webhooks/deliveries/msg_tally_1"},
		{"POST", "/admin/v1/webhooks/deliveries/msg_tally_1/retry"},
	} {
		wantError(t, e.do(rq.method, rq.path, e.token("alice"), nil), 403, "forbidden")
		wantError(t, e.do(rq.method, rq.path, "", nil), 401, "unauthorized")
		wantError(t, e.do(rq.method, rq.path, "not-the-admin-token", nil), 401, "unauthorized")
	}
	if got := f.Calls(); len(got) != 0 {
		t.Errorf("unauthenticated requests reached the outbox: %q", got)
	}
}

// In cluster mode the delivery routes belong to no user: the node that
// receives one answers it, even when every partition is another node's,
// and nothing is forwarded.
func TestClusterServesDeliveriesLocally(t *testing.T) {
	var forwarded atomic.Int32
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		forwarded.Add(1)
		http.Error(w, "not here", http.StatusTeapot)
	}))
	t.Cleanup(owner.Close)
	elsewhere := func(domain.Partition) transport.Route {
		return transport.Route{NodeID: "n2", URL: owner.URL, Epoch: 1}
	}
	f := outbox(3)
	e := newEnv(t, withOutbox(f), func(o *transport.Options) {
		o.Cluster, o.ClusterSecret, o.Lookups = &fakeCluster{id: "n1", route: elsewhere}, clusterSecret, noLookups{}
	})
	for _, rq := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/admin/v1/webhooks/deliveries", 200},
		{"GET", "/admin/v1/webhooks/deliveries?status=failed", 200},
		{"GET", "/admin/v1/webhooks/deliveries/msg_tally_2", 200},
		{"POST", "/admin/v1/webhooks/deliveries/msg_tally_1/retry", 200},
		{"POST", "/admin/v1/webhooks/deliveries/msg_tally_1/retry", 409},
	} {
		r := e.do(rq.method, rq.path, adminToken, nil)
		wantStatus(t, r, rq.status)
		wantNode(t, r, "n1")
	}
	// A user's admin route on the same node is forwarded to its owner: the
	// routing above is the delivery routes' own.
	// (Served without the document's check: the owner here is a stub.)
	req := httptest.NewRequest("GET", "/admin/v1/users/alice", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	e.h.ServeHTTP(httptest.NewRecorder(), req)
	if n := forwarded.Load(); n != 1 {
		t.Errorf("%d requests reached the owner; want only the user's one", n)
	}
}
