package storetest

import (
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

// keyed gives r an Idempotency-Key and the fingerprint of its body.
func keyed(r persistence.AdmitRequest, key, hash string) persistence.AdmitRequest {
	r.IdempotencyKey, r.RequestHash = key, hash
	return r
}

// admittedRecord is the record a store must keep for keyed request r when
// it was admitted.
func admittedRecord(r persistence.AdmitRequest) persistence.IdempotencyRecord {
	return persistence.IdempotencyRecord{
		UserID: r.Session.UserID, Key: r.IdempotencyKey, RequestHash: r.RequestHash,
		Admitted: true, SessionID: r.Session.ID, CreatedAt: us(r.Session.CreatedAt),
	}
}

// rejectedRecord is the record a store must keep for keyed request r when
// it was rejected with the period's usage at used.
func rejectedRecord(r persistence.AdmitRequest, used domain.Usage) persistence.IdempotencyRecord {
	return persistence.IdempotencyRecord{
		UserID: r.Session.UserID, Key: r.IdempotencyKey, RequestHash: r.RequestHash,
		PlanName: r.PlanName, MaxSessions: r.MaxSessions, MaxSeconds: r.MaxSeconds, Usage: used,
		PeriodStart: us(r.Session.PeriodStart), PeriodEnd: us(r.PeriodEnd),
		CreatedAt: us(r.Session.CreatedAt),
	}
}

func recordString(r persistence.IdempotencyRecord) string {
	return fmt.Sprintf("{user=%s key=%q hash=%q admitted=%t session=%q plan=%q max_sessions=%d max_seconds=%d usage=%+v period=[%s, %s) created=%s}",
		r.UserID, r.Key, r.RequestHash, r.Admitted, r.SessionID, r.PlanName, r.MaxSessions, r.MaxSeconds, r.Usage,
		r.PeriodStart.Format(time.RFC3339Nano), r.PeriodEnd.Format(time.RFC3339Nano), r.CreatedAt.Format(time.RFC3339Nano))
}

// wantReplay checks that got replays want: no counters, the stored record.
func wantReplay(t *testing.T, what string, got persistence.AdmitResult, want persistence.IdempotencyRecord) {
	t.Helper()
	if got.Outcome != persistence.Replayed || got.Counters != (persistence.Counters{}) || got.Record == nil {
		t.Fatalf("%s: got %v %+v record %v, want %v with a record and zero counters", what, got.Outcome, got.Counters, got.Record, persistence.Replayed)
	}
	if *got.Record != want {
		t.Fatalf("%s: replayed\n got  %s\n want %s", what, recordString(*got.Record), recordString(want))
	}
}

// wantRecord checks what LookupIdempotencyKey returns.
func wantRecord(t *testing.T, s persistence.Store, want persistence.IdempotencyRecord) {
	t.Helper()
	got, err := s.LookupIdempotencyKey(t.Context(), want.UserID, want.Key)
	if err != nil {
		t.Fatalf("LookupIdempotencyKey(%s, %q): %v", want.UserID, want.Key, err)
	}
	if got != want {
		t.Fatalf("LookupIdempotencyKey(%s, %q):\n got  %s\n want %s", want.UserID, want.Key, recordString(got), recordString(want))
	}
}

func wantNoRecord(t *testing.T, s persistence.Store, userID, key string) {
	t.Helper()
	_, err := s.LookupIdempotencyKey(t.Context(), userID, key)
	wantNotFound(t, fmt.Sprintf("LookupIdempotencyKey(%s, %q)", userID, key), err)
}

func wantSessionCount(t *testing.T, s persistence.Store, userID string, n int) {
	t.Helper()
	list, err := s.ListSessions(t.Context(), userID, 100, nil)
	if err != nil || len(list) != n {
		t.Fatalf("ListSessions(%s): %d sessions, %v; want %d", userID, len(list), err, n)
	}
}

func testAdmitKeyReplaysAdmission(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	period := u.Period(t0).Start
	first := keyed(request(u, "s1", t0, 10, 600*60), "key-1", "hash-1")
	wantResult(t, "first keyed admission", admit(t, s, first)[0], persistence.Admitted, counters(1, 0, 1))
	wantSession(t, "GetSession(s1)", getSession(t, s, "s1"), created(first))
	rec := admittedRecord(first)
	wantRecord(t, s, rec)

	// A retry: the caller generates a new session id per attempt, later.
	retry := keyed(request(u, "s2", t0.Add(time.Minute), 10, 600*60), "key-1", "hash-1")
	wantReplay(t, "retry", admit(t, s, retry)[0], rec)
	wantNoSession(t, s, "s2")
	wantUsage(t, s, u.ID, period, counters(1, 0, 1))

	// Another body with the key: replayed too, with the first body's
	// fingerprint for the caller to tell the conflict; nothing counted.
	other := keyed(request(u, "s3", t0.Add(2*time.Minute), 10, 600*60), "key-1", "hash-other")
	wantReplay(t, "same key, another body", admit(t, s, other)[0], rec)
	wantNoSession(t, s, "s3")
	wantUsage(t, s, u.ID, period, counters(1, 0, 1))
	wantRecord(t, s, rec)

	// Keys are compared exactly; another key is decided afresh.
	fresh := keyed(request(u, "s4", t0.Add(3*time.Minute), 10, 600*60), "KEY-1", "hash-1")
	wantResult(t, "another key", admit(t, s, fresh)[0], persistence.Admitted, counters(2, 0, 2))
	wantRecord(t, s, admittedRecord(fresh))
	wantRecord(t, s, rec)
	wantSessionCount(t, s, u.ID, 2)
}

func testAdmitKeyReplaysRejection(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	period := u.Period(t0).Start
	admit(t, s, request(u, "s1", t0, 1, 600))
	if _, _, err := s.CompleteSession(t.Context(), ops, "s1", 30, t0, nil); err != nil {
		t.Fatal(err)
	}
	// Over the session limit: the record keeps the plan, its limits, the
	// usage that rejected it (the same counters as the result's) and the
	// period, which is what a replayed 403 is built from.
	over := keyed(request(u, "s2", t0.Add(time.Minute), 1, 600), "k-sessions", "h2")
	wantResult(t, "over the session limit", admit(t, s, over)[0], persistence.OverLimit, counters(1, 30, 2))
	rec := rejectedRecord(over, domain.Usage{Sessions: 1, Seconds: 30})
	if rec.PlanName != domain.DefaultPlan || rec.PeriodStart != us(period) {
		t.Fatalf("test setup: record %s", recordString(rec))
	}
	wantRecord(t, s, rec)
	wantNoSession(t, s, "s2")

	// After an upgrade that would admit it, the key still replays the
	// first answer (Stripe semantics), and counts nothing.
	plan := "student"
	u = putUser(t, s, persistence.UserChange{ID: u.ID, Plan: &plan, Now: t0})
	again := keyed(request(u, "s3", t0.Add(2*time.Minute), 100, 6000), "k-sessions", "h2")
	wantReplay(t, "replay after an upgrade", admit(t, s, again)[0], rec)
	wantNoSession(t, s, "s3")
	wantUsage(t, s, u.ID, period, counters(1, 30, 2))

	// Over the seconds limit, under the new plan.
	bySeconds := keyed(request(u, "s4", t0.Add(3*time.Minute), 100, 30), "k-seconds", "h4")
	wantResult(t, "over the seconds limit", admit(t, s, bySeconds)[0], persistence.OverLimit, counters(1, 30, 2))
	rec4 := rejectedRecord(bySeconds, domain.Usage{Sessions: 1, Seconds: 30})
	if rec4.PlanName != "student" {
		t.Fatalf("test setup: record %s", recordString(rec4))
	}
	wantRecord(t, s, rec4)
	wantReplay(t, "seconds rejection replayed", admit(t, s, keyed(request(u, "s5", t0, unlimited, unlimited), "k-seconds", "h4"))[0], rec4)
	wantNoSession(t, s, "s5")
	wantUsage(t, s, u.ID, period, counters(1, 30, 2))
	wantRecord(t, s, rec)
}

func testAdmitKeyZeroLimitRejection(t *testing.T, s persistence.Store) {
	// A limit of 0 rejects before any usage is recorded: the record says
	// zero usage, and still replays.
	u := ensureUser(t, s, "alice")
	r := keyed(request(u, "s1", t0, 0, unlimited), "k", "h")
	wantResult(t, "max_sessions 0", admit(t, s, r)[0], persistence.OverLimit, persistence.Counters{})
	rec := rejectedRecord(r, domain.Usage{})
	wantRecord(t, s, rec)
	wantReplay(t, "retry", admit(t, s, keyed(request(u, "s2", t0, unlimited, unlimited), "k", "h"))[0], rec)
	wantNoSession(t, s, "s1")
	wantNoSession(t, s, "s2")
	wantUsage(t, s, u.ID, r.Session.PeriodStart, persistence.Counters{})
}

func testAdmitKeyIsPerUser(t *testing.T, s persistence.Store) {
	alice, bob := ensureUser(t, s, "alice"), ensureUser(t, s, "bob")
	ra := keyed(request(alice, "a1", t0, 10, unlimited), "shared", "h")
	wantResult(t, "alice", admit(t, s, ra)[0], persistence.Admitted, counters(1, 0, 1))
	rb := keyed(request(bob, "b1", t0, 10, unlimited), "shared", "h")
	wantResult(t, "bob, alice's key", admit(t, s, rb)[0], persistence.Admitted, counters(1, 0, 1))
	wantRecord(t, s, admittedRecord(ra))
	wantRecord(t, s, admittedRecord(rb))

	// In one batch too.
	res := admit(t, s,
		keyed(request(bob, "b2", t0, 10, unlimited), "batch", "h"),
		keyed(request(alice, "a2", t0, 10, unlimited), "batch", "h"))
	wantResult(t, "bob in a batch", res[0], persistence.Admitted, counters(2, 0, 2))
	wantResult(t, "alice in a batch", res[1], persistence.Admitted, counters(2, 0, 2))
	getSession(t, s, "a2")
	getSession(t, s, "b2")
}

func testAdmitKeyConcurrently(t *testing.T, s persistence.Store) {
	// Clients retrying eagerly: callers send each key at once, each in its
	// own Admit. Exactly one per key is decided; the others wait for it and
	// replay it.
	const (
		keys    = 4
		callers = 10
	)
	u := ensureUser(t, s, "alice")
	period := u.Period(t0).Start
	type call struct {
		req persistence.AdmitRequest
		res persistence.AdmitResult
		err error
	}
	calls := make([]call, keys*callers)
	for i := range calls {
		key := fmt.Sprintf("key-%d", i%keys)
		calls[i].req = keyed(request(u, fmt.Sprintf("s%02d", i), t0.Add(time.Duration(i)*time.Millisecond), unlimited, unlimited), key, "h-"+key)
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range calls {
		wg.Go(func() {
			<-start
			res, err := s.Admit(t.Context(), []persistence.AdmitRequest{calls[i].req})
			calls[i].err = err
			if err == nil {
				calls[i].res = res[0]
			}
		})
	}
	close(start)
	wg.Wait()

	admitted := map[string]persistence.AdmitRequest{} // by key
	for i, c := range calls {
		if c.err != nil {
			t.Fatalf("caller %d: %v", i, c.err)
		}
		if c.res.Outcome == persistence.Admitted {
			if prev, ok := admitted[c.req.IdempotencyKey]; ok {
				t.Fatalf("key %s admitted twice: %s and %s", c.req.IdempotencyKey, prev.Session.ID, c.req.Session.ID)
			}
			admitted[c.req.IdempotencyKey] = c.req
		}
	}
	if len(admitted) != keys {
		t.Fatalf("%d keys admitted, want %d", len(admitted), keys)
	}
	for i, c := range calls {
		first := admitted[c.req.IdempotencyKey]
		if c.req.Session.ID == first.Session.ID {
			continue
		}
		wantReplay(t, fmt.Sprintf("caller %d", i), c.res, admittedRecord(first))
		wantNoSession(t, s, c.req.Session.ID)
	}
	for _, r := range admitted {
		wantRecord(t, s, admittedRecord(r))
	}
	wantUsage(t, s, u.ID, period, counters(keys, 0, keys))
	wantSessionCount(t, s, u.ID, keys)
}

func testAdmitKeyTwiceInOneBatch(t *testing.T, s persistence.Store) {
	// Group commit puts a client's retry in the same batch as its first
	// attempt: the later one replays the earlier one (in request order).
	u, bob := ensureUser(t, s, "alice"), ensureUser(t, s, "bob")
	period := u.Period(t0).Start
	first := keyed(request(u, "s1", t0, 2, unlimited), "k1", "h1")
	res := admit(t, s,
		first,
		keyed(request(bob, "b1", t0, 2, unlimited), "k1", "h1"),
		keyed(request(u, "s2", t0, 2, unlimited), "k1", "h1"),
		keyed(request(u, "s3", t0, 2, unlimited), "k1", "another body"))
	wantResult(t, "first", res[0], persistence.Admitted, counters(1, 0, 1))
	wantResult(t, "bob's", res[1], persistence.Admitted, counters(1, 0, 1))
	wantReplay(t, "repeated", res[2], admittedRecord(first))
	wantReplay(t, "repeated with another body", res[3], admittedRecord(first))
	wantNoSession(t, s, "s2")
	wantNoSession(t, s, "s3")
	wantUsage(t, s, u.ID, period, counters(1, 0, 1))

	// A rejection repeated in one batch replays the rejection; a keyless
	// request between them is decided as usual.
	fill := request(u, "s4", t0, 2, unlimited)
	over := keyed(request(u, "s5", t0, 2, unlimited), "k2", "h2")
	res = admit(t, s, fill, over, keyed(request(u, "s6", t0, 2, unlimited), "k2", "h2"))
	wantResult(t, "keyless fill", res[0], persistence.Admitted, counters(2, 0, 2))
	wantResult(t, "over", res[1], persistence.OverLimit, counters(2, 0, 2))
	wantReplay(t, "repeated rejection", res[2], rejectedRecord(over, domain.Usage{Sessions: 2}))
	wantNoSession(t, s, "s6")

	// The first in request order decides, even when it is for a later
	// period than its repetition (which a store may lock first).
	later := keyed(request(u, "s7", t0.AddDate(0, 1, 1), 2, unlimited), "k3", "h3")
	if later.Session.PeriodStart.Equal(period) {
		t.Fatal("test setup: same period")
	}
	res = admit(t, s, later, keyed(request(u, "s8", t0, 10, unlimited), "k3", "h3"))
	wantResult(t, "first, later period", res[0], persistence.Admitted, counters(1, 0, 1))
	wantReplay(t, "repeated, earlier period", res[1], admittedRecord(later))
	wantNoSession(t, s, "s8")
	wantUsage(t, s, u.ID, period, counters(2, 0, 2))

	// A stale request with the key does not claim it for the fresh one,
	// in either order; nor does a fresh one's claim let a stale one count.
	stale := u
	stale.Version--
	res = admit(t, s,
		keyed(request(stale, "s9", t0, 10, unlimited), "k4", "h4"),
		keyed(request(u, "s10", t0, 10, unlimited), "k4", "h4"),
		keyed(request(u, "s11", t0, 10, unlimited), "k5", "h5"),
		keyed(request(stale, "s12", t0, 10, unlimited), "k5", "h5"))
	wantResult(t, "stale before fresh", res[0], persistence.StaleUser, persistence.Counters{})
	wantResult(t, "fresh after stale", res[1], persistence.Admitted, counters(3, 0, 3))
	wantResult(t, "fresh before stale", res[2], persistence.Admitted, counters(4, 0, 4))
	wantResult(t, "stale after fresh", res[3], persistence.StaleUser, persistence.Counters{})
	wantNoSession(t, s, "s9")
	wantNoSession(t, s, "s12")
	wantRecord(t, s, admittedRecord(keyed(request(u, "s10", t0, 10, unlimited), "k4", "h4")))
	wantRecord(t, s, admittedRecord(keyed(request(u, "s11", t0, 10, unlimited), "k5", "h5")))

	// A repeated stale request shares the first one's refusal.
	res = admit(t, s,
		keyed(request(stale, "s13", t0, 10, unlimited), "k6", "h6"),
		keyed(request(stale, "s14", t0, 10, unlimited), "k6", "h6"))
	wantResult(t, "stale", res[0], persistence.StaleUser, persistence.Counters{})
	wantResult(t, "stale repeated", res[1], persistence.StaleUser, persistence.Counters{})
	wantNoRecord(t, s, u.ID, "k6")
	wantUsage(t, s, u.ID, period, counters(4, 0, 4))
}

func testAdmitKeyConcurrentBatches(t *testing.T, s persistence.Store) {
	// Batches that share keys of two users, in opposite orders, at once,
	// with a keyless request of each user before or after its keys: a
	// store that took the keys' locks in request order, or interleaved
	// them with the usage rows' locks, would deadlock. Every key is
	// admitted exactly once, whoever decides it.
	const (
		workers = 8
		rounds  = 8
		perUser = 3
	)
	users := []domain.User{ensureUser(t, s, "amy"), ensureUser(t, s, "bob")}
	type outcome struct {
		key     string
		replay  bool
		session string
	}
	var (
		mu  sync.Mutex
		got []outcome
	)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				var batch []persistence.AdmitRequest
				for _, u := range users {
					batch = append(batch, request(u, fmt.Sprintf("%s-%d-%d", u.ID, w, i), t0, unlimited, unlimited))
					for k := range perUser {
						id := fmt.Sprintf("%s-%d-%d-%d", u.ID, w, i, k)
						batch = append(batch, keyed(request(u, id, t0, unlimited, unlimited), fmt.Sprintf("r%d-k%d", i, k), "h"))
					}
				}
				if w%2 == 1 {
					slices.Reverse(batch)
				}
				res, err := s.Admit(t.Context(), batch)
				if err != nil {
					errs <- fmt.Errorf("worker %d round %d: %w", w, i, err)
					return
				}
				mu.Lock()
				for j, r := range res {
					key := batch[j].Session.UserID + "/" + batch[j].IdempotencyKey
					switch {
					case batch[j].IdempotencyKey == "" && r.Outcome == persistence.Admitted:
						continue
					case r.Outcome == persistence.Admitted:
						got = append(got, outcome{key, false, batch[j].Session.ID})
					case r.Outcome == persistence.Replayed:
						got = append(got, outcome{key, true, r.Record.SessionID})
					default:
						errs <- fmt.Errorf("worker %d round %d request %d: %v", w, i, j, r.Outcome)
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	admitted := map[string]string{}
	for _, o := range got {
		if !o.replay {
			if prev, ok := admitted[o.key]; ok {
				t.Fatalf("key %s admitted twice: %s and %s", o.key, prev, o.session)
			}
			admitted[o.key] = o.session
		}
	}
	if len(admitted) != len(users)*rounds*perUser {
		t.Fatalf("%d keys admitted, want %d", len(admitted), len(users)*rounds*perUser)
	}
	for _, o := range got {
		if o.session != admitted[o.key] {
			t.Fatalf("key %s: replayed session %s, but %s was admitted", o.key, o.session, admitted[o.key])
		}
	}
	// Each batch also admitted one keyless session per user.
	for _, u := range users {
		n := int64(rounds*perUser + workers*rounds)
		wantUsage(t, s, u.ID, u.Period(t0).Start, counters(n, 0, n))
	}
}

func testAdmitKeyFencedOffStoresNothing(t *testing.T, s persistence.Store) {
	v1 := ensureUser(t, s, "alice")
	plan := "pro"
	v2 := putUser(t, s, persistence.UserChange{ID: "alice", Plan: &plan, Now: t0})
	period := v1.Period(t0).Start

	// Decided under the old version: refused before the key is looked at,
	// and the key is not stored, so the retry is decided afresh.
	r := keyed(request(v1, "old", t0, 10, unlimited), "k", "h")
	wantResult(t, "stale with a key", admit(t, s, r)[0], persistence.StaleUser, persistence.Counters{})
	wantNoRecord(t, s, "alice", "k")
	wantNoSession(t, s, "old")
	wantUsage(t, s, "alice", period, persistence.Counters{})

	retry := keyed(request(v2, "new", t0.Add(time.Second), 10, unlimited), "k", "h")
	wantResult(t, "retry at the new version", admit(t, s, retry)[0], persistence.Admitted, counters(1, 0, 1))
	wantRecord(t, s, admittedRecord(retry))

	// A stale request with a stored key is refused too, not replayed: the
	// fence comes first.
	wantResult(t, "stale with a stored key", admit(t, s, keyed(request(v1, "old2", t0, 10, unlimited), "k", "h"))[0],
		persistence.StaleUser, persistence.Counters{})

	ghost := domain.User{ID: "ghost", Plan: domain.DefaultPlan, BillingAnchor: us(t0), Version: 1}
	wantResult(t, "unknown user with a key", admit(t, s, keyed(request(ghost, "g1", t0, 10, unlimited), "k", "h"))[0],
		persistence.UnknownUser, persistence.Counters{})
	wantNoRecord(t, s, "ghost", "k")
	wantNoSession(t, s, "g1")
}

func testAdmitKeyResolvesLostReply(t *testing.T, s persistence.Store) {
	// The caller loses Admit's reply (a COMMIT whose answer never came):
	// looking the key up tells what was committed, and a retry agrees.
	u := ensureUser(t, s, "alice")
	r := keyed(request(u, "s1", t0, 1, unlimited), "lost-1", "h1")
	if _, err := s.Admit(t.Context(), []persistence.AdmitRequest{r}); err != nil {
		t.Fatal(err)
	} // …the reply is lost here.
	rec, err := s.LookupIdempotencyKey(t.Context(), u.ID, "lost-1")
	if err != nil || rec != admittedRecord(r) {
		t.Fatalf("LookupIdempotencyKey after a lost reply = %s, %v; want %s", recordString(rec), err, recordString(admittedRecord(r)))
	}
	wantSession(t, "the session the record names", getSession(t, s, rec.SessionID), created(r))
	wantReplay(t, "retry after a lost reply", admit(t, s, keyed(request(u, "s2", t0, 1, unlimited), "lost-1", "h1"))[0], rec)

	// The same for a rejection.
	over := keyed(request(u, "s3", t0, 1, unlimited), "lost-2", "h2")
	if _, err := s.Admit(t.Context(), []persistence.AdmitRequest{over}); err != nil {
		t.Fatal(err)
	}
	want := rejectedRecord(over, domain.Usage{Sessions: 1})
	wantRecord(t, s, want)
	wantReplay(t, "retry of a lost rejection", admit(t, s, keyed(request(u, "s4", t0, 1, unlimited), "lost-2", "h2"))[0], want)
	wantUsage(t, s, u.ID, r.Session.PeriodStart, counters(1, 0, 1))
	wantSessionCount(t, s, u.ID, 1)
}

func testLookupIdempotencyKey(t *testing.T, s persistence.Store) {
	alice, bob := ensureUser(t, s, "alice"), ensureUser(t, s, "bob")
	wantNoRecord(t, s, "alice", "k")
	wantNoRecord(t, s, "nobody", "k")
	long := strings.Repeat("x", domain.MaxIdempotencyKeyLen)
	r := keyed(request(alice, "s1", t0, unlimited, unlimited), long, "h")
	admit(t, s, r)
	wantRecord(t, s, admittedRecord(r))
	wantNoRecord(t, s, "alice", long[1:])
	wantNoRecord(t, s, "alice", strings.ToUpper(long))
	wantNoRecord(t, s, bob.ID, long)
}

func testPruneIdempotencyKeys(t *testing.T, s persistence.Store) {
	u := ensureUser(t, s, "alice")
	period := u.Period(t0).Start
	var reqs []persistence.AdmitRequest
	for i := range 3 {
		// Keys are dated by the admission's time.
		at := t0.Add(time.Duration(i) * time.Hour)
		reqs = append(reqs, keyed(request(u, fmt.Sprintf("s%d", i), at, unlimited, unlimited), fmt.Sprintf("k%d", i), "h"))
	}
	admit(t, s, reqs...)
	prune := func(before time.Time, want int64) {
		t.Helper()
		n, err := s.PruneIdempotencyKeys(t.Context(), before)
		if err != nil || n != want {
			t.Fatalf("PruneIdempotencyKeys(%s) = %d, %v; want %d", before.Format(time.RFC3339Nano), n, err, want)
		}
	}
	// Strictly before: k1, stored at exactly that time, stays.
	prune(reqs[1].Session.CreatedAt, 1)
	wantNoRecord(t, s, u.ID, "k0")
	wantRecord(t, s, admittedRecord(reqs[1]))
	wantRecord(t, s, admittedRecord(reqs[2]))
	prune(reqs[1].Session.CreatedAt, 0)
	prune(us(reqs[2].Session.CreatedAt).Add(time.Microsecond), 2)
	wantNoRecord(t, s, u.ID, "k1")
	wantNoRecord(t, s, u.ID, "k2")
	// Sessions and usage are not touched.
	wantSessionCount(t, s, u.ID, 3)
	wantUsage(t, s, u.ID, period, counters(3, 0, 3))

	// A pruned key is decided afresh.
	again := keyed(request(u, "s3", t0.Add(48*time.Hour), unlimited, unlimited), "k0", "h")
	wantResult(t, "a pruned key", admit(t, s, again)[0], persistence.Admitted, counters(4, 0, 4))
	wantRecord(t, s, admittedRecord(again))
}

// scanUsage collects ScanUsage's rows by user and period start.
func scanUsage(t *testing.T, s persistence.Store, after time.Time) map[string]persistence.UsageRow {
	t.Helper()
	rows := map[string]persistence.UsageRow{}
	err := s.ScanUsage(t.Context(), after, func(r persistence.UsageRow) error {
		k := r.UserID + "@" + r.PeriodStart.Format(time.RFC3339Nano)
		if _, ok := rows[k]; ok {
			return fmt.Errorf("row %s reported twice", k)
		}
		rows[k] = r
		return nil
	})
	if err != nil {
		t.Fatalf("ScanUsage(%s): %v", after.Format(time.RFC3339Nano), err)
	}
	return rows
}

func testScanUsage(t *testing.T, s persistence.Store) {
	alice, bob, carol := ensureUser(t, s, "alice"), ensureUser(t, s, "bob"), ensureUser(t, s, "carol")
	first := alice.Period(t0)
	next := t0.AddDate(0, 1, 1)
	second := alice.Period(next)
	if !second.Start.Equal(first.End) {
		t.Fatalf("test setup: periods %+v, %+v", first, second)
	}
	admit(t, s,
		request(alice, "a1", t0, unlimited, unlimited),
		request(alice, "a2", next, unlimited, unlimited),
		request(alice, "a3", next, unlimited, unlimited),
		request(bob, "b1", t0, unlimited, unlimited),
		// Refused before anything was counted: no usage to report.
		request(carol, "c1", next, 0, unlimited))
	if _, _, err := s.CompleteSession(t.Context(), ops, "a1", 60, t0, nil); err != nil {
		t.Fatal(err)
	}
	row := func(u domain.User, p domain.Period, c persistence.Counters) persistence.UsageRow {
		return persistence.UsageRow{UserID: u.ID, PeriodStart: us(p.Start), PeriodEnd: us(p.End), Counters: c}
	}
	key := func(r persistence.UsageRow) string { return r.UserID + "@" + r.PeriodStart.Format(time.RFC3339Nano) }
	all := []persistence.UsageRow{
		row(alice, first, counters(1, 60, 2)),
		row(alice, second, counters(2, 0, 2)),
		row(bob, bob.Period(t0), counters(1, 0, 1)),
	}
	check := func(after time.Time, want []persistence.UsageRow) {
		t.Helper()
		got := scanUsage(t, s, after)
		if len(got) != len(want) {
			t.Fatalf("ScanUsage(%s): %d rows %+v, want %d %+v", after.Format(time.RFC3339Nano), len(got), got, len(want), want)
		}
		for _, w := range want {
			if g, ok := got[key(w)]; !ok || g != w {
				t.Fatalf("ScanUsage(%s): row %s = %+v, want %+v", after.Format(time.RFC3339Nano), key(w), g, w)
			}
		}
	}
	check(t0, all)
	check(us(first.End).Add(-time.Microsecond), all)
	// A period ending exactly then is over.
	check(first.End, all[1:2])
	check(second.End, nil)
}

func testScanUsageStopsAtError(t *testing.T, s persistence.Store) {
	var reqs []persistence.AdmitRequest
	for i := range 5 {
		u := ensureUser(t, s, fmt.Sprintf("user-%d", i))
		reqs = append(reqs, request(u, fmt.Sprintf("s%d", i), t0, unlimited, unlimited))
	}
	admit(t, s, reqs...)
	if n := len(scanUsage(t, s, t0)); n != 5 {
		t.Fatalf("ScanUsage: %d rows, want 5", n)
	}
	stop := errors.New("cache unavailable")
	calls := 0
	err := s.ScanUsage(t.Context(), t0, func(persistence.UsageRow) error {
		calls++
		if calls == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || calls != 2 {
		t.Fatalf("ScanUsage with fn failing at row 2: err %v after %d calls; want the fn's error after 2", err, calls)
	}
	// The store still works (the query was closed, its connection freed).
	if n := len(scanUsage(t, s, t0)); n != 5 {
		t.Fatalf("ScanUsage again: %d rows, want 5", n)
	}
}
