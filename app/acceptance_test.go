package app_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// The seed bug report's scenarios, over HTTP, on every backend.
func TestSeedScenarios(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			s := startServer(t, b.env(t))
			c := newClient(t)

			t.Run("limit hit is the contract's 403", func(t *testing.T) {
				user := "seed-limit"
				for i := 0; i < 10; i++ {
					if r := c.create(s, user); r.Status != http.StatusOK {
						t.Fatalf("create %d: %d %s", i+1, r.Status, r.Body)
					}
				}
				r := c.create(s, user)
				if r.Status != http.StatusForbidden {
					t.Fatalf("11th create: %d %s, want 403", r.Status, r.Body)
				}
				u := c.usage(s, user)
				var e errorBody
				r.json(t, &e)
				d := e.Detail
				if d.Error != "session_limit_exceeded" || d.Message != "Session limit exceeded: 10" || d.Plan != "free" ||
					d.CurrentUsage == nil || *d.CurrentUsage != 10 || d.Limit == nil || *d.Limit != 10 ||
					d.PeriodStart != u.PeriodStart || d.ResetsAt != u.PeriodEnd {
					t.Fatalf("403 body %s does not match the contract (period %s–%s)", r.Body, u.PeriodStart, u.PeriodEnd)
				}
				if u.Sessions.Used != 10 || u.Sessions.Remaining == nil || *u.Sessions.Remaining != 0 {
					t.Fatalf("usage after the limit: %+v", u.Sessions)
				}
			})

			t.Run("history does not count after a reset", func(t *testing.T) {
				user := "seed-reset"
				for i := 0; i < 10; i++ {
					c.create(s, user)
				}
				if r := c.create(s, user); r.Status != http.StatusForbidden {
					t.Fatalf("at the limit: %d", r.Status)
				}
				r := c.admin(http.MethodPost, s, "/admin/v1/users/"+user+"/reset-usage", nil)
				if r.Status != http.StatusOK {
					t.Fatalf("reset: %d %s", r.Status, r.Body)
				}
				var after usageBody
				r.json(t, &after)
				if after.Sessions.Used != 0 || after.Minutes.UsedSeconds != 0 {
					t.Fatalf("usage after reset: %s", r.Body)
				}
				if r := c.create(s, user); r.Status != http.StatusOK {
					t.Fatalf("create after reset: %d %s (the seed's bug: history counted)", r.Status, r.Body)
				}
				if u := c.usage(s, user); u.Sessions.Used != 1 {
					t.Fatalf("usage after reset and one create: %+v", u.Sessions)
				}
			})

			t.Run("minutes over the limit after a completion", func(t *testing.T) {
				user := "seed-minutes"
				var ids []string
				for i := 0; i < 2; i++ {
					r := c.create(s, user)
					if r.Status != http.StatusOK {
						t.Fatalf("create: %d %s", r.Status, r.Body)
					}
					var sb sessionBody
					r.json(t, &sb)
					ids = append(ids, sb.ID)
				}
				// 61 + 60 minutes = 121 > free's 120.
				for i, secs := range []int{61 * 60, 60 * 60} {
					r := c.admin(http.MethodPost, s, "/admin/v1/sessions/"+ids[i]+"/complete", map[string]int{"duration_seconds": secs})
					if r.Status != http.StatusOK {
						t.Fatalf("complete: %d %s", r.Status, r.Body)
					}
				}
				r := c.create(s, user)
				var e errorBody
				r.json(t, &e)
				if r.Status != http.StatusForbidden || e.Detail.Error != "transcription_limit_exceeded" ||
					e.Detail.Message != "Total minutes limit exceeded: 120" || *e.Detail.CurrentUsage != 121 || *e.Detail.Limit != 120 {
					t.Fatalf("after 121 minutes: %d %s", r.Status, r.Body)
				}
				u := c.usage(s, user)
				if u.Minutes.Used != 121 || u.Minutes.UsedSeconds != 121*60 || *u.Minutes.Remaining != 0 {
					t.Fatalf("usage minutes: %+v", u.Minutes)
				}
				// Completing again with the same duration is a no-op; with another, 409.
				if r := c.admin(http.MethodPost, s, "/admin/v1/sessions/"+ids[0]+"/complete", map[string]int{"duration_seconds": 61 * 60}); r.Status != http.StatusOK {
					t.Fatalf("same completion again: %d %s", r.Status, r.Body)
				}
				if r := c.admin(http.MethodPost, s, "/admin/v1/sessions/"+ids[0]+"/complete", map[string]int{"duration_seconds": 5}); r.Status != http.StatusConflict {
					t.Fatalf("other completion: %d %s", r.Status, r.Body)
				}
				if u2 := c.usage(s, user); u2.Minutes.UsedSeconds != u.Minutes.UsedSeconds {
					t.Fatalf("a repeated completion changed usage: %d → %d", u.Minutes.UsedSeconds, u2.Minutes.UsedSeconds)
				}
			})

			t.Run("plan upgrade mid-period admits at once", func(t *testing.T) {
				user := "seed-upgrade"
				for i := 0; i < 10; i++ {
					c.create(s, user)
				}
				if r := c.create(s, user); r.Status != http.StatusForbidden {
					t.Fatalf("at the limit: %d", r.Status)
				}
				before := c.usage(s, user)
				r := c.admin(http.MethodPut, s, "/admin/v1/users/"+user, map[string]string{"plan": "student"})
				if r.Status != http.StatusOK {
					t.Fatalf("upgrade: %d %s", r.Status, r.Body)
				}
				if r := c.create(s, user); r.Status != http.StatusOK {
					t.Fatalf("create right after the upgrade: %d %s", r.Status, r.Body)
				}
				u := c.usage(s, user)
				if u.Plan != "student" || u.Sessions.Used != 11 || u.Sessions.Limit != 100 || u.PeriodStart != before.PeriodStart {
					t.Fatalf("usage after upgrade: %+v (usage so far in the period must be kept)", u)
				}
			})

			t.Run("upload-url enforces max_file_size_mb", func(t *testing.T) {
				user := "seed-upload"
				r := c.create(s, user)
				var sb sessionBody
				r.json(t, &sb)
				url := s.URL + "/api/v1/sessions/" + sb.ID + "/upload-url"
				r = c.do(http.MethodPost, url, c.token(user), map[string]any{"filename": "a.wav", "file_size_mb": 60})
				if r.Status != http.StatusOK || !strings.Contains(string(r.Body), "https://uploads.example.test/u/") {
					t.Fatalf("60 MB on free: %d %s", r.Status, r.Body)
				}
				r = c.do(http.MethodPost, url, c.token(user), map[string]any{"filename": "a.wav", "file_size_mb": 61})
				var e errorBody
				r.json(t, &e)
				if r.Status != http.StatusForbidden || e.Detail.Error != "file_size_limit_exceeded" || *e.Detail.Limit != 60 {
					t.Fatalf("61 MB on free: %d %s", r.Status, r.Body)
				}
				r = c.do(http.MethodGet, s.URL+"/api/v1/sessions/"+sb.ID, c.token(user), nil)
				r.json(t, &sb)
				if sb.Status != "uploading" {
					t.Fatalf("status after upload-url: %s", sb.Status)
				}
			})

			t.Run("create then GET is 200 at once", func(t *testing.T) {
				user := "seed-readback"
				c.admin(http.MethodPut, s, "/admin/v1/users/"+user, map[string]string{"plan": "enterprise"})
				for i := 0; i < 30; i++ {
					r := c.create(s, user)
					var sb sessionBody
					r.json(t, &sb)
					g := c.do(http.MethodGet, s.URL+"/api/v1/sessions/"+sb.ID, c.token(user), nil)
					if g.Status != http.StatusOK {
						t.Fatalf("GET right after create: %d %s", g.Status, g.Body)
					}
				}
				r := c.do(http.MethodGet, s.URL+"/api/v1/sessions?limit=100", c.token(user), nil)
				var list struct {
					Items []sessionBody `json:"items"`
				}
				r.json(t, &list)
				if len(list.Items) != 30 {
					t.Fatalf("list: %d items, want 30", len(list.Items))
				}
			})

			t.Run("another user's session is 404", func(t *testing.T) {
				r := c.create(s, "owner")
				var sb sessionBody
				r.json(t, &sb)
				if g := c.do(http.MethodGet, s.URL+"/api/v1/sessions/"+sb.ID, c.token("intruder"), nil); g.Status != http.StatusNotFound {
					t.Fatalf("other user's session: %d %s", g.Status, g.Body)
				}
				url := s.URL + "/api/v1/sessions/" + sb.ID + "/upload-url"
				if g := c.do(http.MethodPost, url, c.token("intruder"), map[string]any{"filename": "a.wav", "file_size_mb": 1}); g.Status != http.StatusNotFound {
					t.Fatalf("upload-url on another user's session: %d %s", g.Status, g.Body)
				}
			})
		})
	}
}

// N concurrent creates with k remaining admit exactly k, per user, over
// real HTTP (invariant 1).
func TestConcurrentCreatesAdmitExactlyTheLimit(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			s := startServer(t, b.env(t))
			c := newClient(t)
			burst(t, c, []*server{s}, 20, 50)
		})
	}
}

// Two Tally instances sharing one Postgres and Redis: each user's requests
// are split across both, and still exactly 10 are admitted (the Postgres
// fence, not the actor, is what makes this hold).
func TestTwoInstancesShareOneTruth(t *testing.T) {
	env := postgresEnv(t)
	a := startServer(t, env)
	b := startServer(t, env)
	c := newClient(t)
	burst(t, c, []*server{a, b}, 20, 50)
}

// burst fires perUser concurrent creates for each of users free-plan users,
// alternating between servers, and checks exactly 10 are admitted per user.
func burst(t *testing.T, c *client, servers []*server, users, perUser int) {
	t.Helper()
	run := fmt.Sprintf("burst-%d", time.Now().UnixNano())
	type tally struct{ ok, limited int }
	results := make([]tally, users)
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := make(chan struct{})
	for u := 0; u < users; u++ {
		for i := 0; i < perUser; i++ {
			wg.Add(1)
			go func(u, i int) {
				defer wg.Done()
				<-start
				r := c.create(servers[i%len(servers)], fmt.Sprintf("%s-%d", run, u))
				mu.Lock()
				defer mu.Unlock()
				switch r.Status {
				case http.StatusOK:
					results[u].ok++
				case http.StatusForbidden:
					var e errorBody
					r.json(t, &e)
					if e.Detail.Error != "session_limit_exceeded" {
						t.Errorf("403 with %s", r.Body)
					}
					results[u].limited++
				default:
					t.Errorf("user %d: %d %s", u, r.Status, r.Body)
				}
			}(u, i)
		}
	}
	close(start)
	wg.Wait()
	for u, r := range results {
		if r.ok != 10 || r.limited != perUser-10 {
			t.Errorf("user %d: %d admitted, %d rejected; want exactly 10 and %d", u, r.ok, r.limited, perUser-10)
		}
		for _, s := range servers {
			if got := c.usage(s, fmt.Sprintf("%s-%d", run, u)).Sessions.Used; got != 10 {
				t.Errorf("user %d: usage on %s says %d sessions, want 10", u, s.URL, got)
			}
		}
	}
}

// Bad tokens are refused with 401 and change nothing: the user is not even
// provisioned.
func TestBadTokensChangeNothing(t *testing.T) {
	s := startServer(t, embeddedEnv(t))
	c := newClient(t)
	good := c.token("victim")
	parts := strings.Split(good, ".")
	tampered := parts[0] + "." + strings.TrimRight(parts[1], "=") + "x." + parts[2]
	for name, tok := range map[string]string{
		"alg none":  "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ2aWN0aW0iLCJleHAiOjQxMDI0NDQ4MDB9.",
		"tampered":  tampered,
		"garbage":   "not-a-jwt",
		"admin tok": testAdmin,
	} {
		r := c.do(http.MethodPost, s.URL+"/api/v1/sessions", tok, newSessionBody)
		if r.Status != http.StatusUnauthorized {
			t.Errorf("%s: %d %s, want 401", name, r.Status, r.Body)
		}
	}
	if r := c.admin(http.MethodGet, s, "/admin/v1/users/victim", nil); r.Status != http.StatusNotFound {
		t.Fatalf("after refused requests the user exists: %d %s", r.Status, r.Body)
	}
	if r := c.do(http.MethodGet, s.URL+"/admin/v1/users/victim", good, nil); r.Status != http.StatusForbidden {
		t.Fatalf("user token on an admin path: %d %s, want 403", r.Status, r.Body)
	}
}
