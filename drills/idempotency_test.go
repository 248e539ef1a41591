package drills_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tally-dev/tally/drills"
	"github.com/tally-dev/tally/internal/testenv"
)

// Ten clients send the same create with the same Idempotency-Key at once,
// split across two Tally instances that share one Postgres: one session is
// created and all ten get it (invariant I5 in docs/contract.md, across processes). The key with
// another body is a 409 idempotency_conflict on either instance.
func TestSameKeyTenTimesAcrossTwoInstances(t *testing.T) {
	env := baseEnv()
	env["TALLY_DATABASE_URL"] = testenv.PostgresURL(t)
	rc, rprefix := sharedRedis(t, env)
	a := startServer(t, env)
	b := startServer(t, env)
	instances := []string{a.URL, b.URL}

	client := drills.NewClient(t, jwtSecret, 10*time.Second)
	users := drills.Users("samekey", 6)
	history := &drills.History{}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, u := range users {
		key := "same-" + u
		for i := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				target := at(instances[i%2])
				<-time.After(time.Duration(i%3) * time.Millisecond) // a little spread, as real retries have
				history.Add(client.Create(target, u, key, drills.CreateBody, drills.Retry{For: 10 * time.Second, Backoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}, nil))
			}()
		}
	}
	close(start)
	wg.Wait()

	byUser := map[string]map[string]int{}
	for _, cr := range history.Creates() {
		if byUser[cr.User] == nil {
			byUser[cr.User] = map[string]int{}
		}
		byUser[cr.User][cr.SessionID]++
		if cr.Outcome != drills.Admitted {
			t.Errorf("%s: a create with the shared key ended %s: %v", cr.User, cr.Outcome, cr.Attempts)
		}
	}
	for _, u := range users {
		if ids := byUser[u]; len(ids) != 1 {
			t.Errorf("%s: ten creates with one key were answered with %d sessions: %v; want one", u, len(ids), ids)
		}
		other := []byte(`{"title":"another body","language":"en-US","stt_provider":"google"}`)
		for _, base := range instances {
			r := client.Do(http.MethodPost, base+"/api/v1/sessions", u, other, "Idempotency-Key", "same-"+u)
			if r.Status != http.StatusConflict || !containsCode(r.Body, "idempotency_conflict") {
				t.Errorf("%s: the key with another body on %s: %d %s; want 409 idempotency_conflict", u, base, r.Status, r.Body)
			}
		}
		for id := range byUser[u] {
			for _, base := range instances {
				if r := client.Do(http.MethodGet, base+"/api/v1/sessions/"+id, u, nil); r.Status != http.StatusOK {
					t.Errorf("%s: GET %s on %s: %d %s", u, id, base, r.Status, r.Body)
				}
			}
		}
	}

	(&drills.Check{
		Name: "same-key-10x-two-instances", Client: client, Target: b.URL, Users: users, History: history,
		DatabaseURL: env["TALLY_DATABASE_URL"], Redis: rc, RedisPrefix: rprefix,
		Allowed5xx: []int{http.StatusServiceUnavailable},
	}).Run(t)
}

func containsCode(body []byte, code string) bool {
	return strings.Contains(string(body), fmt.Sprintf(`"error":%q`, code))
}
