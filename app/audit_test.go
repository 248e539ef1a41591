package app_test

import (
	"encoding/json"
	"net/http"
	"reflect"
	"testing"
)

const (
	opsToken = "acceptance-ops-token-0123456789abcdef"
	botToken = "acceptance-bot-token-0123456789abcdef"
)

type auditEvent struct {
	ID         int64           `json:"id"`
	UserID     string          `json:"user_id"`
	SessionID  *string         `json:"session_id"`
	Kind       string          `json:"kind"`
	Actor      string          `json:"actor"`
	RequestID  string          `json:"request_id"`
	OccurredAt string          `json:"occurred_at"`
	Before     json.RawMessage `json:"before"`
	After      json.RawMessage `json:"after"`
}

type auditPage struct {
	Items      []auditEvent `json:"items"`
	NextCursor *string      `json:"next_cursor"`
}

// userState and sessionState are the documents of openapi.yaml's
// UserState and SessionState.
type userState struct {
	Plan          string `json:"plan"`
	BillingAnchor string `json:"billing_anchor"`
	Version       int64  `json:"version"`
	PeriodStart   string `json:"period_start"`
	Sessions      int64  `json:"sessions"`
	Seconds       int64  `json:"seconds"`
}

type sessionState struct {
	Status          string `json:"status"`
	DurationSeconds *int64 `json:"duration_seconds"`
	PeriodSeconds   int64  `json:"period_seconds"`
}

func decodeDoc[T any](t *testing.T, raw json.RawMessage) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("document %s: %v", raw, err)
	}
	return v
}

// Every admin change through the API is in the user's trail with who made
// it (the named credential), the request id, and before and after; what
// changes nothing, or is refused, is not.
func TestAuditTrail(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			env := b.env(t)
			env["TALLY_ADMIN_TOKENS"] = "ops.alice:" + opsToken + ",billing-bot:" + botToken
			s := startServer(t, env)
			c := newClient(t)
			const user = "audited"
			var ids []string
			for range 2 {
				r := c.create(s, user)
				var sb sessionBody
				r.json(t, &sb)
				if r.Status != http.StatusOK {
					t.Fatalf("create: %d %s", r.Status, r.Body)
				}
				ids = append(ids, sb.ID)
			}
			step := func(method, path, token string, body any, requestID string, want int) string {
				t.Helper()
				var h []string
				if requestID != "" {
					h = []string{"X-Request-Id", requestID}
				}
				r := c.do(method, s.URL+path, token, body, h...)
				if r.Status != want {
					t.Fatalf("%s %s: %d %s, want %d", method, path, r.Status, r.Body, want)
				}
				return r.Header.Get("X-Request-Id")
			}
			step("PUT", "/admin/v1/users/"+user, opsToken, map[string]string{"plan": "pro"}, "req-plan", 200)
			// The same plan again: a change of version only, recorded.
			step("PUT", "/admin/v1/users/"+user, botToken, map[string]string{"plan": "pro"}, "req-plan-again", 200)
			// Refused: no event.
			step("PUT", "/admin/v1/users/"+user, opsToken, map[string]string{"plan": "platinum"}, "req-refused", 422)
			step("POST", "/admin/v1/sessions/"+ids[0]+"/complete", testAdmin, map[string]int{"duration_seconds": 90}, "req-complete", 200)
			// Repeated (no change) and conflicting (refused): no event.
			step("POST", "/admin/v1/sessions/"+ids[0]+"/complete", testAdmin, map[string]int{"duration_seconds": 90}, "req-again", 200)
			step("POST", "/admin/v1/sessions/"+ids[0]+"/complete", testAdmin, map[string]int{"duration_seconds": 5}, "req-conflict", 409)
			step("POST", "/admin/v1/sessions/"+ids[1]+"/fail", opsToken, nil, "req-fail", 200)
			// Without a client's id, the generated one is recorded.
			resetID := step("POST", "/admin/v1/users/"+user+"/reset-usage", botToken, nil, "", 200)
			if resetID == "" {
				t.Fatal("no X-Request-Id on the reset's answer")
			}
			after := c.usage(s, user)

			r := c.do("GET", s.URL+"/admin/v1/users/"+user+"/events", testAdmin, nil)
			var page auditPage
			r.json(t, &page)
			if r.Status != 200 || page.NextCursor != nil {
				t.Fatalf("events: %d %s", r.Status, r.Body)
			}
			type row struct{ kind, actor, requestID, session string }
			var got []row
			for _, e := range page.Items {
				sid := ""
				if e.SessionID != nil {
					sid = *e.SessionID
				}
				if e.UserID != user {
					t.Errorf("event of user %q", e.UserID)
				}
				got = append(got, row{e.Kind, e.Actor, e.RequestID, sid})
			}
			want := []row{ // newest first
				{"reset_usage", "billing-bot", resetID, ""},
				{"fail_session", "ops.alice", "req-fail", ids[1]},
				{"complete_session", "admin", "req-complete", ids[0]},
				{"put_user", "billing-bot", "req-plan-again", ""},
				{"put_user", "ops.alice", "req-plan", ""},
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("events\n got  %+v\n want %+v", got, want)
			}

			ev := page.Items
			plan := [2]userState{decodeDoc[userState](t, ev[4].Before), decodeDoc[userState](t, ev[4].After)}
			if plan[0].Plan != "free" || plan[1].Plan != "pro" || plan[1].Version != plan[0].Version+1 || plan[1].Sessions != 2 {
				t.Errorf("plan change: %s → %s", ev[4].Before, ev[4].After)
			}
			again := [2]userState{decodeDoc[userState](t, ev[3].Before), decodeDoc[userState](t, ev[3].After)}
			if again[0].Plan != "pro" || again[1].Plan != "pro" || again[1].Version != plan[1].Version+1 {
				t.Errorf("same plan again: %s → %s", ev[3].Before, ev[3].After)
			}
			done := [2]sessionState{decodeDoc[sessionState](t, ev[2].Before), decodeDoc[sessionState](t, ev[2].After)}
			if done[0].Status != "created" || done[0].DurationSeconds != nil || done[0].PeriodSeconds != 0 ||
				done[1].Status != "completed" || done[1].DurationSeconds == nil || *done[1].DurationSeconds != 90 || done[1].PeriodSeconds != 90 {
				t.Errorf("completion: %s → %s", ev[2].Before, ev[2].After)
			}
			failed := decodeDoc[sessionState](t, ev[1].After)
			if failed.Status != "failed" || failed.PeriodSeconds != 90 {
				t.Errorf("failure: → %s", ev[1].After)
			}
			// The reset: the old period's counters before, the new
			// period's after — the one usage reports now.
			reset := [2]userState{decodeDoc[userState](t, ev[0].Before), decodeDoc[userState](t, ev[0].After)}
			if reset[0].Sessions != 2 || reset[0].Seconds != 90 || reset[1].Sessions != 0 || reset[1].Seconds != 0 ||
				reset[1].PeriodStart != after.PeriodStart || reset[1].BillingAnchor != after.PeriodStart ||
				reset[0].PeriodStart == reset[1].PeriodStart || ev[0].OccurredAt != after.PeriodStart {
				t.Errorf("reset: %s → %s (usage now from %s, event at %s)", ev[0].Before, ev[0].After, after.PeriodStart, ev[0].OccurredAt)
			}

			// Pages of 2 walk the same events, each once.
			var walked []int64
			path := "/admin/v1/users/" + user + "/events?limit=2"
			for range len(ev) + 1 {
				r := c.do("GET", s.URL+path, botToken, nil)
				var p auditPage
				r.json(t, &p)
				for _, e := range p.Items {
					walked = append(walked, e.ID)
				}
				if p.NextCursor == nil {
					break
				}
				path = "/admin/v1/users/" + user + "/events?limit=2&cursor=" + *p.NextCursor
			}
			var all []int64
			for _, e := range ev {
				all = append(all, e.ID)
			}
			if !reflect.DeepEqual(walked, all) {
				t.Errorf("pages walked %v, want %v", walked, all)
			}

			if r := c.do("GET", s.URL+"/admin/v1/users/nobody-here/events", testAdmin, nil); r.Status != http.StatusNotFound {
				t.Errorf("unknown user: %d %s", r.Status, r.Body)
			}
			if r := c.do("GET", s.URL+"/admin/v1/users/"+user+"/events?limit=501", testAdmin, nil); r.Status != http.StatusUnprocessableEntity {
				t.Errorf("limit 501: %d %s", r.Status, r.Body)
			}
			if r := c.do("GET", s.URL+"/admin/v1/users/"+user+"/events", c.token(user), nil); r.Status != http.StatusForbidden {
				t.Errorf("a user token: %d %s", r.Status, r.Body)
			}
		})
	}
}
