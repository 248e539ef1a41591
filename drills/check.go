package drills

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/tools/verify"
)

// Check audits a drill once its fault is healed: the history against
// Postgres, the API and Redis (see the package documentation for the list).
// Failures are reported with tb.Errorf, so that one run shows all of them.
type Check struct {
	Name   string
	Client *Client
	Target string // base URL of a healthy instance
	// Targets, when set, are the base URLs of every healthy instance (the
	// nodes of a cluster): the read-back and the exact-quota burst are
	// spread over them, request by request, and each must be ready.
	Targets []string
	Users   []string
	History *History
	// Limit is the users' max_sessions (default Limit, the free plan's).
	Limit int

	// DatabaseURL reaches the database directly, not through a fault proxy.
	DatabaseURL string
	// Redis is the counter cache to compare with Postgres; nil skips it.
	Redis       redis.UniversalClient
	RedisPrefix string

	// Allowed5xx are the 5xx statuses the drill tolerates during the load
	// (a 500 never is).
	Allowed5xx []int
	// Fault is when the fault began and Heal when it ended (zero: the
	// drill has no fault). A fault that heals itself (a Sentinel
	// failover) has Heal = Fault.
	Fault, Heal time.Time
	// Reseed, when Redis was the fault, tells when Tally re-seeded it.
	Reseed *ReseedProbe
	// Converge bounds the wait for Redis to equal Postgres (default 20s).
	Converge time.Duration
}

// Summary is a drill's figures: the line of the operations table.
type Summary struct {
	Scenario                                          string
	Requests, Creates, Admitted, Lost, OverLimitUsers int
	KeyLess                                           int         // creates sent without an Idempotency-Key
	ByStatus                                          map[int]int // status of every attempt (0: no answer)
	Unknown                                           int         // creates never answered definitively
	UnknownCommitted                                  int         // of which Postgres holds an admission
	// LostReplies counts outcomes committed during an attempt that got no
	// definite answer: a key's (its retry had to replay it) or a key-less
	// attempt's session (KeyLessLostReplies of them).
	LostReplies, KeyLessLostReplies int
	Recovery                        time.Duration
	RecoveryKnown                   bool
	Converged                       time.Duration // after the load, until Redis equalled Postgres
}

// Line is the summary as one greppable line.
func (s *Summary) Line() string {
	codes := []string{fmt.Sprintf("503:%d", s.ByStatus[503]), fmt.Sprintf("504:%d", s.ByStatus[504])}
	for _, st := range slices.Sorted(maps.Keys(s.ByStatus)) {
		if st >= 500 && st != 503 && st != 504 {
			codes = append(codes, fmt.Sprintf("%d:%d", st, s.ByStatus[st]))
		}
	}
	recovery := "n/a"
	if s.RecoveryKnown {
		recovery = fmt.Sprintf("%.2fs", s.Recovery.Seconds())
	}
	return fmt.Sprintf("DRILL scenario=%s requests=%d admitted=%d lost=%d over_limit_users=%d 5xx=%s recovery=%s"+
		" creates=%d keyless=%d unknown=%d unknown_committed=%d lost_replies=%d keyless_lost_replies=%d no_answer=%d status_403=%d converged=%.2fs",
		s.Scenario, s.Requests, s.Admitted, s.Lost, s.OverLimitUsers, strings.Join(codes, ","), recovery,
		s.Creates, s.KeyLess, s.Unknown, s.UnknownCommitted, s.LostReplies, s.KeyLessLostReplies, s.ByStatus[0], s.ByStatus[403], s.Converged.Seconds())
}

// pgKey is an idempotency_keys row.
type pgKey struct {
	outcome, sessionID string
	createdAt          time.Time
}

// pgSession is a sessions row.
type pgSession struct {
	id, user  string
	createdAt time.Time
}

func userKey(user, key string) string { return user + "\x00" + key }

// Run audits and logs the summary line (also when the audit fails).
func (c *Check) Run(tb testing.TB) *Summary {
	tb.Helper()
	if c.Converge == 0 {
		c.Converge = 20 * time.Second
	}
	if c.Limit == 0 {
		c.Limit = Limit
	}
	if len(c.Targets) == 0 {
		c.Targets = []string{c.Target}
	}
	s := &Summary{Scenario: c.Name, ByStatus: map[int]int{}}
	defer func() { tb.Log(s.Line()) }()

	creates := c.History.Creates()
	if len(creates) == 0 {
		tb.Fatalf("%s: the load made no create at all", c.Name)
	}
	h := c.auditHistory(tb, creates, s)
	acked := h.acked
	c.recovery(tb, creates, s)

	c.waitReady(tb)
	sessions, keys := c.snapshot(tb)

	// Nothing acknowledged is lost: in Postgres, for its user, and
	// readable through the API.
	lost := map[string]bool{}
	for id, user := range acked {
		if row, ok := sessions[id]; !ok || row.user != user {
			lost[id] = true
			tb.Errorf("LOST: session %s of %s was acknowledged (200) but is not in Postgres", id, user)
		}
	}
	for id, status := range c.readBack(acked) {
		if status != http.StatusOK {
			lost[id] = true
			tb.Errorf("LOST: GET of acknowledged session %s of %s answered %d", id, acked[id], status)
		}
	}
	s.Lost = len(lost)

	// Per user: never over the limit, and Postgres counts exactly what
	// was acknowledged plus some of what stayed unknown (keyed creates,
	// and key-less attempts: each of those may have admitted a session).
	over := map[string]bool{}
	ackedBy := map[string]int{}
	for _, u := range acked {
		ackedBy[u]++
	}
	pgBy := map[string]int{}
	for _, row := range sessions {
		pgBy[row.user]++
	}
	for _, u := range c.Users {
		if pgBy[u] > c.Limit || ackedBy[u] > c.Limit {
			over[u] = true
			tb.Errorf("OVER LIMIT: user %s has %d sessions in Postgres, %d acknowledged; the limit is %d", u, pgBy[u], ackedBy[u], c.Limit)
		}
		if pgBy[u] > ackedBy[u]+h.unknownBy[u] {
			tb.Errorf("user %s: %d sessions in Postgres, but only %d acknowledged and %d creates (or key-less attempts) left unknown: sessions nobody was told about",
				u, pgBy[u], ackedBy[u], h.unknownBy[u])
		}
	}

	c.auditKeys(tb, h, sessions, keys, s)
	s.LostReplies += lostReplies(h.byKey, keys)

	rep := c.converge(tb, s)
	if rep != nil {
		for _, v := range rep.Violations {
			if v.Check == verify.OverLimit {
				over[v.UserID] = true
			}
		}
	}
	s.OverLimitUsers = len(over)

	c.exactQuota(tb, pgBy)
	c.converge(tb, nil)
	return s
}

// keyResult is what the clients of one (user, key) learned, over every
// create sent with it (several when a drill repeats a key on purpose).
type keyResult struct {
	user, key string
	outcome   Outcome
	sessionID string
	creates   []*Create
}

// unanswered is an attempt of a key-less create that got no definite
// answer: the service may have admitted a session for it, or not.
type unanswered struct {
	Attempt
	create *Create
}

// learned is what the clients learned, as auditHistory sums it up.
type learned struct {
	acked        map[string]string // acknowledged session id → user
	keyLessAcked map[string]bool   // of which, the sessions of key-less creates
	// unknownBy is, per user, how many admissions may have happened
	// unseen: keys whose outcome stayed unknown, and key-less attempts
	// without a definite answer.
	unknownBy  map[string]int
	byKey      map[string]*keyResult
	unanswered map[string][]unanswered // key-less attempts, per user
}

// describe names a create in failure messages.
func describe(cr *Create) string {
	if cr.Key == "" {
		return "key-less create of " + cr.User
	}
	return fmt.Sprintf("%s key %s", cr.User, cr.Key)
}

// auditHistory checks every create's attempts, and returns what their
// clients learned.
func (c *Check) auditHistory(tb testing.TB, creates []*Create, s *Summary) *learned {
	tb.Helper()
	allowed := map[int]bool{}
	for _, st := range c.Allowed5xx {
		allowed[st] = true
	}
	h := &learned{
		acked: map[string]string{}, keyLessAcked: map[string]bool{}, unknownBy: map[string]int{},
		byKey: map[string]*keyResult{}, unanswered: map[string][]unanswered{},
	}
	ackedTo := map[string]string{} // session id → the create told so
	reported := 0
	report := func(format string, args ...any) {
		if reported++; reported <= 20 {
			tb.Errorf(format, args...)
		}
	}
	for _, cr := range creates {
		s.Creates++
		var k *keyResult
		if cr.Key != "" {
			if k = h.byKey[userKey(cr.User, cr.Key)]; k == nil {
				k = &keyResult{user: cr.User, key: cr.Key, outcome: Unknown}
				h.byKey[userKey(cr.User, cr.Key)] = k
			}
			k.creates = append(k.creates, cr)
		} else {
			s.KeyLess++
		}
		for _, a := range cr.Attempts {
			s.Requests++
			s.ByStatus[a.Status]++
			switch {
			case a.Status == http.StatusInternalServerError:
				report("500 (a bug) for %s: %s", describe(cr), a)
			case a.Status >= 500 && !allowed[a.Status]:
				report("%d, which this drill does not allow, for %s: %s", a.Status, describe(cr), a)
			case a.Status == http.StatusServiceUnavailable && a.RetryAfter == "":
				report("503 without Retry-After for %s: %s", describe(cr), a)
			}
			if k == nil {
				// Key-less: every attempt is a create of its own for the
				// service. A 200 is one more acknowledged session; an
				// attempt without a definite answer may have admitted one.
				switch {
				case a.Status == http.StatusOK:
					if other, dup := ackedTo[a.SessionID]; dup {
						report("ONE SESSION, TWO CREATES: session %s was acknowledged to the %s and to %s", a.SessionID, describe(cr), other)
						continue
					}
					ackedTo[a.SessionID] = "the " + describe(cr)
					h.acked[a.SessionID] = cr.User
					h.keyLessAcked[a.SessionID] = true
				case a.Definite(): // a 403: nothing to account for
				default:
					h.unanswered[cr.User] = append(h.unanswered[cr.User], unanswered{Attempt: a, create: cr})
					h.unknownBy[cr.User]++
				}
				continue
			}
			switch {
			case a.Status == http.StatusOK && k.outcome == Rejected, a.Status == http.StatusForbidden && k.outcome == Admitted:
				report("key %s of %s was answered both 200 and 403: %v", cr.Key, cr.User, k.creates)
			case a.Status == http.StatusOK && k.sessionID != "" && a.SessionID != k.sessionID:
				report("COUNTED TWICE: key %s of %s was answered 200 with sessions %s and %s", cr.Key, cr.User, k.sessionID, a.SessionID)
			case a.Status == http.StatusOK:
				k.outcome, k.sessionID = Admitted, a.SessionID
			case a.Status == http.StatusForbidden && a.Code == "session_limit_exceeded":
				k.outcome = Rejected
			}
		}
		if cr.Outcome == Failed {
			report("%s ended with an answer a client cannot act on: %v", describe(cr), cr.Attempts)
		}
		if k == nil && !cr.answered() {
			s.Unknown++
		}
	}
	for _, k := range h.byKey {
		switch k.outcome {
		case Admitted:
			if other, dup := ackedTo[k.sessionID]; dup {
				report("ONE SESSION, TWO CREATES: session %s was acknowledged to key %s of %s and to %s", k.sessionID, k.key, k.user, other)
				continue
			}
			ackedTo[k.sessionID] = fmt.Sprintf("key %s of %s", k.key, k.user)
			h.acked[k.sessionID] = k.user
		case Unknown:
			s.Unknown++
			h.unknownBy[k.user]++
		}
	}
	if reported > 20 {
		tb.Errorf("... and %d more history failures", reported-20)
	}
	s.Admitted = len(h.acked)
	return h
}

// recovery is the time from the heal until creates were answered
// definitively again and, when Redis was the fault, Redis was re-seeded.
func (c *Check) recovery(tb testing.TB, creates []*Create, s *Summary) {
	tb.Helper()
	if c.Heal.IsZero() {
		return
	}
	var first time.Time
	for _, cr := range creates {
		for _, a := range cr.Attempts {
			if a.Definite() && !a.Start.Before(c.Heal) && (first.IsZero() || a.End.Before(first)) {
				first = a.End
			}
		}
	}
	if first.IsZero() {
		tb.Errorf("no create was answered 200 or 403 after the fault was healed at %s", c.Heal.Format("15:04:05.000"))
		return
	}
	s.Recovery, s.RecoveryKnown = first.Sub(c.Heal), true
	if c.Reseed != nil {
		if at, ok := c.Reseed.ReseededAfter(c.Fault); ok {
			s.Recovery = max(s.Recovery, at.Sub(c.Heal))
		} else {
			tb.Logf("%s: Redis's re-seed marker did not change after the fault (no re-seed seen)", c.Name)
		}
	}
}

// waitReady waits until every instance reports ready.
func (c *Check) waitReady(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(c.Converge)
	for _, target := range c.Targets {
		for {
			r := c.Client.Do(http.MethodGet, target+"/readyz", "", nil)
			if r.Err == nil && r.Status == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("%s: %s not ready %s after the load: %d %s %v", c.Name, target, c.Converge, r.Status, r.Body, r.Err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// target is the i-th request's base URL: the targets in turn.
func (c *Check) target(i int) string { return c.Targets[i%len(c.Targets)] }

// snapshot reads the drill users' sessions (id → row) and
// Idempotency-Keys (user\x00key → row) from Postgres.
func (c *Check) snapshot(tb testing.TB) (map[string]pgSession, map[string]pgKey) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DatabaseURL)
	if err != nil {
		tb.Fatalf("connect to the drill's database: %v", err)
	}
	defer conn.Close(context.Background())
	sessions := map[string]pgSession{}
	rows, err := conn.Query(ctx, `SELECT id, user_id, created_at FROM sessions WHERE user_id = ANY($1)`, c.Users)
	if err != nil {
		tb.Fatalf("read sessions: %v", err)
	}
	for rows.Next() {
		var row pgSession
		if err := rows.Scan(&row.id, &row.user, &row.createdAt); err != nil {
			tb.Fatalf("read sessions: %v", err)
		}
		sessions[row.id] = row
	}
	if err := rows.Err(); err != nil {
		tb.Fatalf("read sessions: %v", err)
	}
	keys := map[string]pgKey{}
	rows, err = conn.Query(ctx, `SELECT user_id, key, outcome, coalesce(session_id, ''), created_at FROM idempotency_keys WHERE user_id = ANY($1)`, c.Users)
	if err != nil {
		tb.Fatalf("read idempotency keys: %v", err)
	}
	for rows.Next() {
		var user, key string
		var k pgKey
		if err := rows.Scan(&user, &key, &k.outcome, &k.sessionID, &k.createdAt); err != nil {
			tb.Fatalf("read idempotency keys: %v", err)
		}
		keys[userKey(user, key)] = k
	}
	if err := rows.Err(); err != nil {
		tb.Fatalf("read idempotency keys: %v", err)
	}
	return sessions, keys
}

// readBack GETs every acknowledged session through the API and returns
// the statuses.
func (c *Check) readBack(acked map[string]string) map[string]int {
	ids := slices.Collect(maps.Keys(acked))
	statuses := make([]int, len(ids))
	var wg sync.WaitGroup
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				r := c.Client.Do(http.MethodGet, c.target(i)+"/api/v1/sessions/"+ids[i], acked[ids[i]], nil)
				statuses[i] = r.Status
			}
		}()
	}
	for i := range ids {
		next <- i
	}
	close(next)
	wg.Wait()
	out := make(map[string]int, len(ids))
	for i, id := range ids {
		out[id] = statuses[i]
	}
	return out
}

// auditKeys checks one key, one session: the stored record of every key
// agrees with what its clients were told, and every session row belongs to
// a key that was admitted with it or never answered — or, without a key,
// was acknowledged to a key-less create or is accounted for by a key-less
// attempt left unanswered (matchUnanswered).
func (c *Check) auditKeys(tb testing.TB, h *learned, sessions map[string]pgSession, keys map[string]pgKey, s *Summary) {
	tb.Helper()
	byKey := h.byKey
	keyOf := map[string]string{} // session id → user\x00key
	for k, row := range keys {
		if row.outcome == "admitted" {
			if other, dup := keyOf[row.sessionID]; dup {
				tb.Errorf("session %s is the admission of two keys: %q and %q", row.sessionID, other, k)
			}
			keyOf[row.sessionID] = k
		}
		if row.outcome == "pending" {
			tb.Errorf("key %q is stored as pending: a claim committed unsettled", k)
		}
	}
	for uk, kr := range byKey {
		row, ok := keys[uk]
		switch kr.outcome {
		case Admitted:
			if !ok || row.outcome != "admitted" || row.sessionID != kr.sessionID {
				tb.Errorf("key %s of %s was answered 200 with session %s, but Postgres stores %+v (found %v)", kr.key, kr.user, kr.sessionID, row, ok)
			}
		case Rejected:
			if !ok || row.outcome != "rejected" {
				tb.Errorf("key %s of %s was answered 403, but Postgres stores %+v (found %v)", kr.key, kr.user, row, ok)
			}
		case Unknown:
			if ok && row.outcome == "admitted" {
				s.UnknownCommitted++
			}
		}
	}
	unclaimed := map[string][]pgSession{} // key-less sessions nobody was told about, per user
	for id, row := range sessions {
		user := row.user
		uk, ok := keyOf[id]
		switch {
		case ok && h.keyLessAcked[id]:
			tb.Errorf("session %s of %s was acknowledged to a key-less create, but Postgres stores it as the admission of key %q", id, user, uk)
			continue
		case !ok && !h.keyLessAcked[id]:
			unclaimed[user] = append(unclaimed[user], row)
			continue
		case !ok:
			continue // a key-less 200: the LOST check compared it
		}
		kr := byKey[uk]
		switch {
		case kr == nil:
			tb.Errorf("session %s of %s belongs to key %q, which the drill never sent", id, user, uk)
		case kr.outcome == Admitted && kr.sessionID == id, kr.outcome == Unknown:
		default:
			tb.Errorf("SILENT ADMIT: session %s of %s is counted, but its key %s was answered %s (%v)", id, user, kr.key, kr.outcome, kr.creates)
		}
	}
	for user, rows := range unclaimed {
		matched, leftover := matchUnanswered(rows, h.unanswered[user])
		for _, m := range matched {
			s.LostReplies++
			s.KeyLessLostReplies++
			if !m.create.answered() {
				s.UnknownCommitted++
			}
		}
		for _, row := range leftover {
			tb.Errorf("SILENT ADMIT: session %s of %s has no Idempotency-Key record, was acknowledged to no create, and no key-less attempt "+
				"of that user left unanswered was in flight when it was created (%s), but for those that account for its other sessions",
				row.id, user, row.createdAt.Format("15:04:05.000000"))
		}
	}
}

// stampSlack widens an attempt's interval when an instant stamped by the
// service (on the same clock) is compared with it: Postgres keeps
// microseconds.
const stampSlack = time.Millisecond

// matchUnanswered gives each of one user's key-less sessions that no
// client was told about an attempt that accounts for it: a distinct
// key-less attempt of the user without a definite answer that was in
// flight when the session was created (the service stamps created_at while
// it handles the request, before it answers: actors/admit.go). Sessions
// are taken by creation time, each given, of the attempts in flight then,
// the one that ends first: for points and intervals that finds a match for
// as many sessions as any assignment can. The sessions left over were
// admitted behind a definite answer (a 403, or a 200 that named another
// session) or without a request at all.
func matchUnanswered(rows []pgSession, attempts []unanswered) (matched []unanswered, leftover []pgSession) {
	rows = slices.Clone(rows)
	slices.SortFunc(rows, func(a, b pgSession) int { return a.createdAt.Compare(b.createdAt) })
	used := make([]bool, len(attempts))
	for _, row := range rows {
		best := -1
		for i, a := range attempts {
			if used[i] || row.createdAt.Before(a.Start.Add(-stampSlack)) || row.createdAt.After(a.End.Add(stampSlack)) {
				continue
			}
			if best < 0 || a.End.Before(attempts[best].End) {
				best = i
			}
		}
		if best < 0 {
			leftover = append(leftover, row)
			continue
		}
		used[best] = true
		matched = append(matched, attempts[best])
	}
	return matched, leftover
}

// lostReplies counts the keys whose outcome (an admission or a rejection)
// was committed during an attempt whose client got no definite answer: the
// service stamps the key's created_at while that attempt is in flight.
// Their retries had to replay the stored outcome.
func lostReplies(byKey map[string]*keyResult, keys map[string]pgKey) int {
	n := 0
	for uk, row := range keys {
		kr := byKey[uk]
		if kr == nil || row.outcome == "pending" {
			continue
		}
		inFlight, answered := 0, false
		for _, cr := range kr.creates {
			for _, a := range cr.Attempts {
				if !row.createdAt.Before(a.Start.Add(-stampSlack)) && !row.createdAt.After(a.End.Add(stampSlack)) {
					inFlight++
					answered = answered || a.Definite()
				}
			}
		}
		if inFlight > 0 && !answered {
			n++
		}
	}
	return n
}

// converge waits until verify.Run finds nothing wrong in Postgres and,
// with Redis, every counter equal to Postgres's (none missing, behind,
// ahead, mismatched or orphaned). s, when not nil, gets the time it took.
func (c *Check) converge(tb testing.TB, s *Summary) *verify.Report {
	tb.Helper()
	start := time.Now()
	var (
		rep     *verify.Report
		lastErr error
	)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		rep, lastErr = verify.Run(ctx, verify.Options{
			DatabaseURL: c.DatabaseURL, Redis: c.Redis, RedisKeyPrefix: c.RedisPrefix,
			RedisSkipped: "the drill does not check Redis", MaxViolations: 20,
		})
		cancel()
		if lastErr == nil {
			var store int64
			for check, n := range rep.Counts {
				if !strings.HasPrefix(string(check), "redis_") {
					store += n
				}
			}
			if store > 0 {
				var b strings.Builder
				_ = rep.WriteText(&b)
				tb.Errorf("%s: verify finds Postgres violations:\n%s", c.Name, b.String())
				return rep
			}
			if c.Redis == nil || (rep.OK() && rep.Redis.Keys == rep.Redis.Equal && rep.Redis.Orphans == 0) {
				if s != nil {
					s.Converged = time.Since(start)
				}
				return rep
			}
		}
		if time.Since(start) > c.Converge {
			if lastErr != nil {
				tb.Errorf("%s: verify could not run for %s: %v", c.Name, c.Converge, lastErr)
				return nil
			}
			var b strings.Builder
			_ = rep.WriteText(&b)
			tb.Errorf("%s: Redis counters did not converge on Postgres within %s:\n%s", c.Name, c.Converge, b.String())
			return rep
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// exactQuota fires a burst of concurrent creates (half keyed, half not)
// at every user below the limit, and at two users at it: a user with k
// sessions must get exactly limit-k admitted and the rest 403, nothing
// else. The burst is 20 creates, or limit-k+10 when that is more (a plan
// with a larger limit), so that it always asks for more than is left.
func (c *Check) exactQuota(tb testing.TB, pgBy map[string]int) {
	tb.Helper()
	var users []string
	full := 0
	for _, u := range c.Users {
		switch {
		case pgBy[u] < c.Limit:
			users = append(users, u)
		case full < 2:
			users = append(users, u)
			full++
		}
	}
	// Users bursting at once: 80 requests on the free plan; fewer users
	// with larger bursts keep the requests in flight under the servers'
	// in-flight bounds (TALLY_MAX_IN_FLIGHT, TALLY_MAX_USER_IN_FLIGHT).
	sem := make(chan struct{}, max(2, 80/(c.Limit+10)))
	var wg sync.WaitGroup
	next := 0 // spreads the bursts over c.Targets
	for _, u := range users {
		wg.Add(1)
		sem <- struct{}{}
		burst := max(20, c.Limit-pgBy[u]+10)
		first := next
		next += burst
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var mu sync.Mutex
			statuses := map[int]int{}
			var odd []string
			var bw sync.WaitGroup
			for i := range burst {
				bw.Add(1)
				go func() {
					defer bw.Done()
					key := ""
					if i%2 == 0 {
						key = fmt.Sprintf("quota-%s-%d", u, i)
					}
					a := c.Client.CreateOnce(c.target(first+i), u, key, CreateBody)
					mu.Lock()
					defer mu.Unlock()
					statuses[a.Status]++
					if !a.Definite() {
						odd = append(odd, a.String())
					}
				}()
			}
			bw.Wait()
			want := c.Limit - pgBy[u]
			if statuses[http.StatusOK] != want || statuses[http.StatusForbidden] != burst-want {
				tb.Errorf("EXACT QUOTA: user %s with %d sessions: %d concurrent creates gave %v; want %d×200 and %d×403 %v",
					u, pgBy[u], burst, statuses, want, burst-want, odd)
			}
			r := c.Client.Do(http.MethodGet, c.target(first)+"/api/v1/usage", u, nil)
			var usage struct {
				Sessions struct {
					Used int `json:"used"`
				} `json:"sessions"`
			}
			if err := json.Unmarshal(r.Body, &usage); r.Status != http.StatusOK || err != nil || usage.Sessions.Used != c.Limit {
				tb.Errorf("usage of %s after the burst: %d %s, want %d sessions used", u, r.Status, r.Body, c.Limit)
			}
		}()
	}
	wg.Wait()
}

// ReseedProbe watches the marker Tally's Redis cache writes after each
// re-seed from Postgres (<prefix>cache:epoch, a new random value each time;
// see rediscache.Cache.Reseed), to time when Redis was repaired after a
// fault.
type ReseedProbe struct {
	mu      sync.Mutex
	changes []time.Time // when the marker took a new value
}

// WatchReseed waits (up to 10s) for the start-up seed's marker, then polls
// it every 25ms until the test ends.
func WatchReseed(tb testing.TB, client redis.UniversalClient, prefix string) *ReseedProbe {
	tb.Helper()
	key := prefix + "cache:epoch"
	read := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		v, _ := client.Get(ctx, key).Result()
		return v
	}
	p := &ReseedProbe{}
	deadline := time.Now().Add(10 * time.Second)
	last := read()
	for last == "" {
		if time.Now().After(deadline) {
			tb.Fatalf("Tally did not seed Redis (no %s) within 10s of starting", key)
		}
		time.Sleep(25 * time.Millisecond)
		last = read()
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(25 * time.Millisecond):
			}
			// An empty read is Redis down or restarted empty, not a seed.
			if v := read(); v != "" && v != last {
				last = v
				p.mu.Lock()
				p.changes = append(p.changes, time.Now())
				p.mu.Unlock()
			}
		}
	}()
	tb.Cleanup(func() {
		close(stop)
		<-done
	})
	return p
}

// ReseededAfter returns when the marker first took a new value after t:
// Redis had been re-seeded from Postgres.
func (p *ReseedProbe) ReseededAfter(t time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, at := range p.changes {
		if at.After(t) {
			return at, true
		}
	}
	return time.Time{}, false
}

// SlowCommits makes every COMMIT that writes on the PostgreSQL server of
// dbURL wait d before its WAL flush (fsync on, commit_delay d, with no
// concurrent transaction required). Transactions in flight are then mostly
// committing, so that a fault (a blackholed reply, a kill -9) catches
// COMMITs that take effect while their client never hears of it.
//
// The server must be a private one (testenv.StartPostgres): the delay is
// taken while holding the server's WAL write lock, so every commit of
// every database on it waits. It refuses the shared server.
func SlowCommits(tb testing.TB, dbURL string, d time.Duration) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		tb.Fatalf("slow commits: %v", err)
	}
	defer conn.Close(context.Background())
	shared, err := pgx.ParseConfig(testenv.PostgresAdminURL())
	if err == nil && shared.Host == conn.Config().Host && shared.Port == conn.Config().Port {
		tb.Fatalf("slow commits: %s:%d is the shared server; use a private one (testenv.StartPostgres)", shared.Host, shared.Port)
	}
	for _, q := range []string{
		"ALTER SYSTEM SET fsync = on", // commit_delay applies only with fsync
		fmt.Sprintf("ALTER SYSTEM SET commit_delay = %d", d.Microseconds()),
		"ALTER SYSTEM SET commit_siblings = 0",
		"SELECT pg_reload_conf()",
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			tb.Fatalf("slow commits: %s: %v", q, err)
		}
	}
}

// WaitForCommit polls the server of dbURL until a session on that
// database is running a COMMIT (with SlowCommits, one is most of the
// time), so that a fault injected right after it catches a COMMIT in
// flight. It reports false if none was seen within timeout.
func WaitForCommit(tb testing.TB, dbURL string, timeout time.Duration) bool {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout+5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		tb.Fatalf("wait for a commit: %v", err)
	}
	defer conn.Close(context.Background())
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var n int
		err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid()
			  AND state = 'active' AND lower(query) LIKE 'commit%'`).Scan(&n)
		if err != nil {
			tb.Fatalf("wait for a commit: %v", err)
		}
		if n > 0 {
			return true
		}
	}
	return false
}
