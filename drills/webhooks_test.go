package drills_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/tally-dev/tally/drills"
	"github.com/tally-dev/tally/internal/testenv"
)

// The webhooks drill (docs/alerts.md): a `tally serve` process with usage
// alerts on is killed with SIGKILL while it is delivering them to a slow
// receiver, and restarted on the same database. Every alert is delivered
// afterwards (at least once: the deliveries in flight at the kill come
// again once their claims' lease ends), signed as Standard Webhooks say (an
// independent implementation verifies each signature), and each user's
// alerts arrive in order.
//
// 60 users on the free plan (10 sessions a period) make 12 creates each,
// concurrently: each crosses 80% and 100% of its sessions and is refused
// at least once, so each has exactly three alerts.
func TestWebhooksDeliveredAfterKillNine(t *testing.T) {
	const (
		nUsers       = 60
		createsEach  = 12
		freeLimit    = 10
		alertsEach   = 3 // sessions 80%, sessions 100%, limit reached
		webhookTO    = 2 * time.Second
		drainTimeout = 60 * time.Second
	)
	bin, err := tallyBinary()
	if err != nil {
		t.Fatalf("build tally: %v", err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	secret := "whsec_" + base64.StdEncoding.EncodeToString(key)
	rcv := newWebhookReceiver(t, secret)

	c := &tallyCluster{t: t, bin: bin, dir: t.TempDir(), DBURL: testenv.PostgresURL(t)}
	redisAddr, rprefix := testenv.Redis(t)
	c.env = map[string]string{
		"TALLY_DATABASE_URL":          c.DBURL,
		"TALLY_REDIS_URL":             testenv.RedisURL(redisAddr),
		"TALLY_REDIS_KEY_PREFIX":      rprefix,
		"TALLY_JWT_SECRET":            jwtSecret,
		"TALLY_ADMIN_TOKEN":           adminToken,
		"TALLY_UPLOAD_BASE_URL":       "https://uploads.example.test/u",
		"TALLY_LOG_LEVEL":             "warn",
		"TALLY_SHUTDOWN_TIMEOUT":      "3s",
		"TALLY_REQUEST_TIMEOUT":       "2s",
		"TALLY_WEBHOOK_URL":           rcv.srv.URL + "/hooks/tally",
		"TALLY_WEBHOOK_SECRET":        secret,
		"TALLY_WEBHOOK_TIMEOUT":       webhookTO.String(),
		"TALLY_WEBHOOK_MAX_BACKOFF":   "1s",
		"TALLY_WEBHOOK_RETRY_HORIZON": "10m",
	}
	c.Client = drills.NewClient(t, jwtSecret, 10*time.Second)
	t.Cleanup(c.killAll)
	node := c.addNode()
	c.startNode(node)
	if t.Failed() {
		t.FailNow()
	}

	// Every user past its limit, 12 concurrent creates each, half of them
	// without an Idempotency-Key (a key-less refusal is answered from the
	// actor's memory, a keyed one by the store: both record limit_reached).
	users := drills.Users("webhooks", nUsers)
	history := &drills.History{}
	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 48)
	for i := range nUsers * createsEach {
		user := users[i%nUsers]
		k := ""
		if i%2 == 0 {
			k = fmt.Sprintf("webhooks-drill-%d", i)
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			history.Add(c.Client.Create(at(node.URL), user, k, drills.CreateBody, drills.DefaultRetry, nil))
		})
	}
	wg.Wait()
	creates := time.Since(start)
	admitted := map[string]int{}
	for _, cr := range history.Creates() {
		switch cr.Outcome {
		case drills.Admitted:
			admitted[cr.User]++
		case drills.Rejected:
		default:
			t.Errorf("create for %s had no definite outcome before the kill: %+v", cr.User, cr.Attempts)
		}
	}
	for _, u := range users {
		if admitted[u] != freeLimit {
			t.Errorf("%s: %d sessions admitted of %d creates, want the free plan's %d", u, admitted[u], createsEach, freeLimit)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	expected := nUsers * alertsEach
	seenAtCreates := rcv.distinct()
	t.Logf("%d creates for %d users in %s; the receiver had %d of the %d alerts by then", nUsers*createsEach, nUsers, creates.Round(time.Millisecond), seenAtCreates, expected)

	// Kill while deliveries flow: the receiver has seen a part of them and
	// is answering some right now.
	deadline := time.Now().Add(10 * time.Second)
	for rcv.distinct() < expected/4 || rcv.inFlight() == 0 {
		if rcv.distinct() >= expected || time.Now().After(deadline) {
			t.Fatalf("no moment to kill: the receiver has %d of %d alerts, %d in flight", rcv.distinct(), expected, rcv.inFlight())
		}
		time.Sleep(2 * time.Millisecond)
	}
	killedSeen, killedInFlight := rcv.distinct(), rcv.inFlight()
	kill := time.Now()
	node.kill()
	t.Logf("killed with SIGKILL with %d of %d alerts seen by the receiver and %d deliveries in flight", killedSeen, expected, killedInFlight)

	c.startNode(node)
	if t.Failed() {
		t.FailNow()
	}
	restarted := time.Now()
	t.Logf("restarted on the same database, ready %s after the kill", restarted.Sub(kill).Round(time.Millisecond))

	// Bounded wait until the receiver has every alert and every row is
	// settled as delivered.
	var rows []alertRow
	var drained, settled time.Duration
	for {
		rows = readAlerts(t, c.DBURL)
		if drained == 0 && rcv.distinct() >= expected && len(rows) == expected && rcv.hasAll(rows) {
			drained = time.Since(restarted)
		}
		if drained != 0 && !slices.ContainsFunc(rows, func(r alertRow) bool { return r.Status != "delivered" }) {
			settled = time.Since(restarted)
			break
		}
		if time.Since(restarted) > drainTimeout {
			status := map[string]int{}
			for _, r := range rows {
				status[r.Status]++
			}
			t.Errorf("after %s the receiver has %d distinct alerts of %d (database: %d rows, by status %v)", drainTimeout, rcv.distinct(), expected, len(rows), status)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Let a straggling duplicate (a claim whose lease ends just now) show.
	time.Sleep(500 * time.Millisecond)

	rcv.check(t, rows, users)
	dels, dups, bad := rcv.figures()
	t.Logf("WEBHOOKS DRILL alerts=%d deliveries=%d distinct=%d duplicates=%d bad_signatures=%d seen_at_kill=%d in_flight_at_kill=%d drained=%s settled=%s (after restart)",
		len(rows), dels, rcv.distinct(), dups, bad, killedSeen, killedInFlight, drained.Round(time.Millisecond), settled.Round(time.Millisecond))
	if dups == 0 {
		t.Logf("no duplicate delivery: the kill caught no delivery between its send and its settlement")
	}
}

// alertRow is a row of the alerts table.
type alertRow struct {
	ID      int64
	User    string
	Kind    string
	Metric  string
	Percent int
	Status  string
}

func (r alertRow) webhookID() string { return fmt.Sprintf("msg_tally_%d", r.ID) }

func readAlerts(t *testing.T, dbURL string) []alertRow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT id, user_id, kind, metric, percent, status FROM alerts ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var out []alertRow
	var r alertRow
	if _, err := pgx.ForEachRow(rows, []any{&r.ID, &r.User, &r.Kind, &r.Metric, &r.Percent, &r.Status}, func() error {
		out = append(out, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// webhookReceiver is the product's receiver: it verifies every request
// with the Standard Webhooks library, records it by webhook-id, and takes
// 50 to 150 ms to answer 204.
type webhookReceiver struct {
	srv *httptest.Server
	wh  *standardwebhooks.Webhook

	mu       sync.Mutex
	arrivals []delivery     // every request, in order of arrival
	first    map[string]int // webhook-id → index of its first arrival
	bad      []string       // why a request failed verification
	in       int            // requests being answered
}

// delivery is one request the receiver got.
type delivery struct {
	ID    string
	At    time.Time
	Event struct {
		Type string `json:"type"`
		Data struct {
			UserID           string `json:"user_id"`
			Plan             string `json:"plan"`
			Metric           string `json:"metric"`
			ThresholdPercent *int   `json:"threshold_percent"`
			Used             int64  `json:"used"`
			Limit            int64  `json:"limit"`
		} `json:"data"`
	}
}

func newWebhookReceiver(t *testing.T, secret string) *webhookReceiver {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	r := &webhookReceiver{wh: wh, first: map[string]int{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *webhookReceiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	d := delivery{ID: req.Header.Get("webhook-id"), At: time.Now()}
	verr := r.wh.Verify(body, req.Header)
	if verr == nil {
		verr = json.Unmarshal(body, &d.Event)
	}
	r.mu.Lock()
	if verr != nil {
		r.bad = append(r.bad, fmt.Sprintf("%s: %v", d.ID, verr))
		r.mu.Unlock()
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	if _, ok := r.first[d.ID]; !ok {
		r.first[d.ID] = len(r.arrivals)
	}
	r.arrivals = append(r.arrivals, d)
	r.in++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.in--
		r.mu.Unlock()
	}()
	time.Sleep(50*time.Millisecond + mrand.N(100*time.Millisecond))
	w.WriteHeader(http.StatusNoContent)
}

func (r *webhookReceiver) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.first)
}

func (r *webhookReceiver) inFlight() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.in
}

func (r *webhookReceiver) hasAll(rows []alertRow) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, row := range rows {
		if _, ok := r.first[row.webhookID()]; !ok {
			return false
		}
	}
	return true
}

// figures are the deliveries, the duplicates among them (a webhook-id
// already seen) and the requests that failed verification.
func (r *webhookReceiver) figures() (deliveries, duplicates, bad int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.arrivals), len(r.arrivals) - len(r.first), len(r.bad)
}

// check compares what the receiver got with the alerts table: the same
// set of ids, each user's three alerts once each (after dedup), in order
// of id, every signature good, every row delivered.
func (r *webhookReceiver) check(t *testing.T, rows []alertRow, users []string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, b := range r.bad {
		if i == 5 {
			t.Errorf("… %d requests failed verification in all", len(r.bad))
			break
		}
		t.Errorf("a request failed verification: %s", b)
	}

	byID := map[string]alertRow{}
	for _, row := range rows {
		byID[row.webhookID()] = row
		if row.Status != "delivered" {
			t.Errorf("alert %d (%s %s %s %d) ends %s, want delivered", row.ID, row.User, row.Kind, row.Metric, row.Percent, row.Status)
		}
		if _, ok := r.first[row.webhookID()]; !ok {
			t.Errorf("alert %d (%s %s %s %d) never reached the receiver", row.ID, row.User, row.Kind, row.Metric, row.Percent)
		}
	}
	for id := range r.first {
		if _, ok := byID[id]; !ok {
			t.Errorf("the receiver got %s, which is no alert in the database", id)
		}
	}

	// Each user's distinct events, in order of first arrival.
	type event struct {
		kind, metric string
		percent      int
	}
	firsts := slices.Collect(func(yield func(int) bool) {
		for _, i := range r.first {
			if !yield(i) {
				return
			}
		}
	})
	slices.Sort(firsts)
	perUser := map[string][]alertRow{}
	for _, i := range firsts {
		d := r.arrivals[i]
		row, ok := byID[d.ID]
		if !ok {
			continue
		}
		e := d.Event
		p := 0
		if e.Data.ThresholdPercent != nil {
			p = *e.Data.ThresholdPercent
		}
		if e.Data.UserID != row.User || e.Type != row.Kind || e.Data.Metric != row.Metric || p != row.Percent {
			t.Errorf("%s: body says %s %s %s %d, the row %s %s %s %d", d.ID, e.Data.UserID, e.Type, e.Data.Metric, p, row.User, row.Kind, row.Metric, row.Percent)
		}
		if e.Data.Plan != "free" || e.Data.Limit != 10 {
			t.Errorf("%s: plan %q limit %d, want free and 10", d.ID, e.Data.Plan, e.Data.Limit)
		}
		perUser[row.User] = append(perUser[row.User], row)
	}
	want := []event{
		{"usage.threshold_crossed", "sessions", 80},
		{"usage.threshold_crossed", "sessions", 100},
		{"usage.limit_reached", "sessions", 0},
	}
	outOfOrder := 0
	for _, u := range users {
		got := perUser[u]
		var evs []event
		for i, row := range got {
			evs = append(evs, event{row.Kind, row.Metric, row.Percent})
			if i > 0 && row.ID < got[i-1].ID {
				outOfOrder++
				t.Errorf("%s: alert %d arrived (first) after alert %d: out of order", u, got[i-1].ID, row.ID)
			}
		}
		// Exactly one of each, and in the order their causes happened.
		if !slices.Equal(evs, want) {
			t.Errorf("%s: distinct events in order of arrival %v, want %v", u, evs, want)
		}
	}
	byCount := map[int]int{}
	seen := map[string]int{}
	for _, d := range r.arrivals {
		seen[d.ID]++
	}
	for _, n := range seen {
		byCount[n]++
	}
	t.Logf("deliveries per webhook-id: %v (count → ids); %d user(s) out of order", byCount, outOfOrder)
}
