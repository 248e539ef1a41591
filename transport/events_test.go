package transport_test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/transport"
)

const (
	opsToken     = "ops-token-0123456789"
	billingToken = "billing-token-0123456789"
)

// namedAdmins adds two named admin credentials to TALLY_ADMIN_TOKEN's.
func namedAdmins(o *transport.Options) {
	o.AdminTokens = []transport.AdminCredential{{Name: "ops.alice", Token: opsToken}, {Name: "billing-bot", Token: billingToken}}
}

// Every admin change goes to the core with who made it (the credential's
// name) and the request's id: the client's X-Request-Id, or the one
// generated for the request, as the response says.
func TestAdminChangesCarryWhoAndRequestID(t *testing.T) {
	e := newEnv(t, namedAdmins)
	type step struct {
		method, path, token, body, requestID string
		admin                                string
	}
	steps := []step{
		{"PUT", "/admin/v1/users/alice", opsToken, `{"plan":"pro"}`, "req-put-1", "ops.alice"},
		{"POST", "/admin/v1/users/alice/reset-usage", billingToken, ``, "", "billing-bot"},
		{"POST", "/admin/v1/sessions/s-1/complete", adminToken, `{"duration_seconds":60}`, "req:complete.2", "admin"},
		{"POST", "/admin/v1/sessions/s-2/fail", opsToken, `{}`, "", "ops.alice"},
	}
	var want []domain.Origin
	for _, st := range steps {
		var headers []string
		if st.requestID != "" {
			headers = []string{"X-Request-Id", st.requestID}
		}
		var body any
		if st.body != "" {
			body = st.body
		}
		r := e.do(st.method, st.path, st.token, body, headers...)
		if r.Status != 200 {
			t.Fatalf("%s %s: %d %s", st.method, st.path, r.Status, r.Body)
		}
		id := r.Header.Get("X-Request-Id")
		if st.requestID != "" && id != st.requestID {
			t.Fatalf("%s %s: X-Request-Id %q, want the client's %q", st.method, st.path, id, st.requestID)
		}
		want = append(want, domain.Origin{Admin: st.admin, RequestID: id})
	}
	if got := e.accounts.Origins(); !reflect.DeepEqual(got, want) {
		t.Fatalf("origins\n got  %+v\n want %+v", got, want)
	}
}

func TestNamedAdminCredentials(t *testing.T) {
	e := newEnv(t, namedAdmins)
	for _, tok := range []string{adminToken, opsToken, billingToken} {
		if r := e.do("GET", "/admin/v1/users/bob", tok, nil); r.Status != 200 {
			t.Errorf("credential %q…: %d %s", tok[:4], r.Status, r.Body)
		}
	}
	for _, tok := range []string{opsToken + "x", opsToken[:len(opsToken)-1], "ops.alice", "ops.alice:" + opsToken} {
		wantError(t, e.do("GET", "/admin/v1/users/bob", tok, nil), 401, "unauthorized")
	}
	wantError(t, e.do("GET", "/admin/v1/users/bob", e.token("ops.alice"), nil), 403, "forbidden")

	// Named credentials alone are enough.
	only := newEnv(t, namedAdmins, func(o *transport.Options) { o.AdminToken = "" })
	if r := only.do("GET", "/admin/v1/users/bob", billingToken, nil); r.Status != 200 {
		t.Errorf("named credential without TALLY_ADMIN_TOKEN: %d %s", r.Status, r.Body)
	}
	wantError(t, only.do("GET", "/admin/v1/users/bob", adminToken, nil), 401, "unauthorized")
}

func TestNewRejectsBadAdminCredentials(t *testing.T) {
	for name, creds := range map[string]struct {
		token string
		named []transport.AdminCredential
	}{
		"none":                    {"", nil},
		"no name":                 {"", []transport.AdminCredential{{Name: "", Token: "t1"}}},
		"empty token":             {"", []transport.AdminCredential{{Name: "a", Token: ""}}},
		"same name twice":         {"", []transport.AdminCredential{{Name: "a", Token: "t1"}, {Name: "a", Token: "t2"}}},
		"same token twice":        {"", []transport.AdminCredential{{Name: "a", Token: "t1"}, {Name: "b", Token: "t1"}}},
		"named admin twice":       {"t0", []transport.AdminCredential{{Name: transport.AdminTokenName, Token: "t1"}}},
		"admin token named again": {"t0", []transport.AdminCredential{{Name: "b", Token: "t0"}}},
	} {
		_, err := transport.New(transport.Options{
			Accounts: &fakeAccounts{}, Catalog: domain.DefaultCatalog(), JWTSecret: secret,
			AdminToken: creds.token, AdminTokens: creds.named,
			UploadBaseURL: "http://127.0.0.1:8080/uploads", Providers: []string{"google"},
		})
		if err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
}

// events returns n events of alice, newest first, with ids n..1.
func aliceEvents(n int) []domain.UserEvent {
	var out []domain.UserEvent
	for i := n; i >= 1; i-- {
		e := domain.UserEvent{
			ID: int64(i), UserID: "alice", Kind: domain.EventPutUser, Actor: "ops.alice", RequestID: fmt.Sprintf("req-%d", i),
			OccurredAt: t0.Add(time.Duration(i) * time.Microsecond), UserVersion: int64(i),
			After: json.RawMessage(fmt.Sprintf(`{"plan":"pro","billing_anchor":"2026-11-01T00:00:00Z","version":%d,`+
				`"period_start":"2026-11-01T00:00:00Z","period_end":"2026-12-01T00:00:00Z","sessions":3,"seconds":0}`, i)),
		}
		if i > 1 {
			e.Before = json.RawMessage(fmt.Sprintf(`{"plan":"free","billing_anchor":"2026-11-01T00:00:00Z","version":%d,`+
				`"period_start":"2026-11-01T00:00:00Z","period_end":"2026-12-01T00:00:00Z","sessions":3,"seconds":0}`, i-1))
		}
		out = append(out, e)
	}
	return out
}

type eventList struct {
	Items []struct {
		ID         int64           `json:"id"`
		UserID     string          `json:"user_id"`
		SessionID  *string         `json:"session_id"`
		Kind       string          `json:"kind"`
		Actor      string          `json:"actor"`
		RequestID  string          `json:"request_id"`
		OccurredAt string          `json:"occurred_at"`
		Before     json.RawMessage `json:"before"`
		After      json.RawMessage `json:"after"`
	} `json:"items"`
	NextCursor *string `json:"next_cursor"`
}

func TestListUserEvents(t *testing.T) {
	e := newEnv(t)
	stored := aliceEvents(7)
	var afters []*domain.EventCursor
	e.accounts.listUserEvents = func(_ context.Context, userID string, limit int, after *domain.EventCursor) ([]domain.UserEvent, error) {
		if userID != "alice" {
			return nil, domain.ErrNotFound
		}
		afters = append(afters, after)
		i := 0
		if after != nil {
			i = slices.IndexFunc(stored, func(ev domain.UserEvent) bool { return ev.ID == after.ID }) + 1
			if !stored[i-1].OccurredAt.Equal(after.OccurredAt) {
				t.Errorf("cursor time %s, want %s", after.OccurredAt, stored[i-1].OccurredAt)
			}
		}
		return stored[i:min(len(stored), i+limit)], nil
	}

	// The default page: everything, no next page; the core is asked one
	// more than the page (51) to know.
	r := e.do("GET", "/admin/v1/users/alice/events", adminToken, nil)
	var all eventList
	r.Decode(t, &all)
	if r.Status != 200 || len(all.Items) != 7 || all.NextCursor != nil {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	if calls := e.accounts.Calls(); calls[0] != "ListUserEvents alice 51 <nil>" {
		t.Errorf("call %q", calls[0])
	}
	first := all.Items[0]
	if first.ID != 7 || first.UserID != "alice" || first.SessionID != nil || first.Kind != "put_user" || first.Actor != "ops.alice" ||
		first.RequestID != "req-7" || first.OccurredAt != "2026-11-14T09:30:00.000007Z" ||
		!strings.Contains(string(first.Before), `"plan":"free"`) || !strings.Contains(string(first.After), `"plan":"pro"`) {
		t.Errorf("first event %s", r.Body)
	}
	if last := all.Items[6]; string(last.Before) != "null" {
		t.Errorf("the creation's before is %s, want null", last.Before)
	}

	// Pages of 3: every event once, in order.
	var walked []int64
	path := "/admin/v1/users/alice/events?limit=3"
	for range 5 {
		r := e.do("GET", path, adminToken, nil)
		var page eventList
		r.Decode(t, &page)
		if r.Status != 200 {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
		for _, it := range page.Items {
			walked = append(walked, it.ID)
		}
		if page.NextCursor == nil {
			break
		}
		path = "/admin/v1/users/alice/events?limit=3&cursor=" + *page.NextCursor
	}
	if want := []int64{7, 6, 5, 4, 3, 2, 1}; !slices.Equal(walked, want) {
		t.Fatalf("walked %v, want %v", walked, want)
	}

	// Bad parameters: 422 naming each, nothing asked of the core.
	calls := len(e.accounts.Calls())
	for _, tc := range []struct {
		query  string
		fields []string
	}{
		{"limit=0", []string{"limit"}},
		{"limit=501", []string{"limit"}},
		{"limit=ten", []string{"limit"}},
		{"cursor=", []string{"cursor"}},
		{"cursor=not-base64!", []string{"cursor"}},
		{"cursor=" + b64("2026-11-14T09:30:00Z"), []string{"cursor"}},
		{"cursor=" + b64("2026-11-14T09:30:00Z|x"), []string{"cursor"}},
		{"cursor=" + b64("2026-11-14T09:30:00Z|0"), []string{"cursor"}},
		{"cursor=" + b64("yesterday|7"), []string{"cursor"}},
		{"cursor=" + strings.Repeat("A", 513), []string{"cursor"}},
		{"limit=-1&cursor=" + b64("x"), []string{"limit", "cursor"}},
	} {
		b := wantError(t, e.do("GET", "/admin/v1/users/alice/events?"+tc.query, adminToken, nil), 422, "validation_failed")
		if got := fieldNames(b); !slices.Equal(got, tc.fields) {
			t.Errorf("%s: fields %v, want %v", tc.query, got, tc.fields)
		}
	}
	b := wantError(t, e.do("GET", "/admin/v1/users/b%20b/events", adminToken, nil), 422, "validation_failed")
	if got := fieldNames(b); !slices.Equal(got, []string{"id"}) {
		t.Errorf("bad id: fields %v", got)
	}
	if n := len(e.accounts.Calls()); n != calls {
		t.Errorf("bad parameters reached the core: %q", e.accounts.Calls()[calls:])
	}

	// An unknown user is a 404, as GET /admin/v1/users/{id} answers; a
	// user token is a 403.
	wantError(t, e.do("GET", "/admin/v1/users/nobody/events", adminToken, nil), 404, "not_found")
	wantError(t, e.do("GET", "/admin/v1/users/alice/events", e.token("alice"), nil), 403, "forbidden")
	wantError(t, e.do("GET", "/admin/v1/users/alice/events", "", nil), 401, "unauthorized")
}

// A session change's event carries its session id; the store's
// documents are passed through as they are.
func TestListUserEventsOfASession(t *testing.T) {
	e := newEnv(t)
	doc := `{"status":"completed","duration_seconds":60,"period_start":"2026-11-01T00:00:00Z","period_seconds":60}`
	e.accounts.listUserEvents = func(context.Context, string, int, *domain.EventCursor) ([]domain.UserEvent, error) {
		return []domain.UserEvent{{ID: 3, UserID: "alice", SessionID: "s-1", Kind: domain.EventCompleteSession, Actor: "admin",
			RequestID: "r", OccurredAt: t0,
			Before: json.RawMessage(`{"status":"created","duration_seconds":null,"period_start":"2026-11-01T00:00:00Z","period_seconds":0}`),
			After:  json.RawMessage(doc)}}, nil
	}
	r := e.do("GET", "/admin/v1/users/alice/events", adminToken, nil)
	want := `{"items":[{"id":3,"user_id":"alice","session_id":"s-1","kind":"complete_session","actor":"admin","request_id":"r",` +
		`"occurred_at":"2026-11-14T09:30:00Z","before":{"status":"created","duration_seconds":null,"period_start":"2026-11-01T00:00:00Z","period_seconds":0},` +
		`"after":` + doc + `}],"next_cursor":null}`
	if r.Status != 200 || string(r.Body) != want {
		t.Fatalf("got %d %s\nwant %s", r.Status, r.Body, want)
	}
}
