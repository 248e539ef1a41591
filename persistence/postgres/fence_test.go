package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/persistence/postgres"
)

// fenceEnv is a migrated store and a direct connection for the checks.
type fenceEnv struct {
	s    *postgres.Store
	conn *pgx.Conn
	now  time.Time
}

func newFenceEnv(t *testing.T) *fenceEnv {
	t.Helper()
	url := testenv.PostgresURL(t)
	s := openStore(t, url)
	if err := s.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return &fenceEnv{s: s, conn: conn, now: time.Now().UTC().Truncate(time.Microsecond)}
}

// usersIn provisions n users of partition p (ids prefix-0, prefix-1, … that
// hash there).
func (e *fenceEnv) usersIn(t *testing.T, p domain.Partition, n int, prefix string) []domain.User {
	t.Helper()
	var out []domain.User
	for i := 0; len(out) < n; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		if domain.PartitionOf(id) != p {
			continue
		}
		u, err := e.s.EnsureUser(t.Context(), id, e.now)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, u)
	}
	return out
}

func (e *fenceEnv) storedEpoch(t *testing.T, p domain.Partition) int64 {
	t.Helper()
	var epoch int64
	err := e.conn.QueryRow(t.Context(), `SELECT coalesce(max(epoch), 0) FROM partition_epochs WHERE partition = $1`, int32(p)).Scan(&epoch)
	if err != nil {
		t.Fatal(err)
	}
	return epoch
}

// written is what the store holds for a user: sessions, usage rows and
// Idempotency-Keys.
func (e *fenceEnv) written(t *testing.T, userID string) (sessions, usageRows, keys int) {
	t.Helper()
	err := e.conn.QueryRow(t.Context(), `
		SELECT (SELECT count(*) FROM sessions WHERE user_id = $1),
		       (SELECT count(*) FROM usage WHERE user_id = $1),
		       (SELECT count(*) FROM idempotency_keys WHERE user_id = $1)`, userID).Scan(&sessions, &usageRows, &keys)
	if err != nil {
		t.Fatal(err)
	}
	return sessions, usageRows, keys
}

func fenced(r persistence.AdmitRequest, epoch int64) persistence.AdmitRequest {
	r.Epoch = epoch
	return r
}

func TestClaimPartition(t *testing.T) {
	e := newFenceEnv(t)
	ctx := t.Context()
	const p = domain.Partition(17)
	for _, epoch := range []int64{5, 5, 9} { // a claim repeated is a no-op
		if err := e.s.ClaimPartition(ctx, p, epoch); err != nil {
			t.Fatalf("ClaimPartition(%d, %d): %v", p, epoch, err)
		}
		if got := e.storedEpoch(t, p); got != epoch {
			t.Fatalf("after claiming %d the stored epoch is %d", epoch, got)
		}
	}
	err := e.s.ClaimPartition(ctx, p, 7)
	if !errors.Is(err, persistence.ErrNewerEpoch) {
		t.Fatalf("claiming 7 over 9: %v, want ErrNewerEpoch", err)
	}
	if got := e.storedEpoch(t, p); got != 9 {
		t.Fatalf("a refused claim changed the stored epoch to %d", got)
	}
	// Bad input is refused and changes nothing.
	for _, c := range []struct {
		p     domain.Partition
		epoch int64
	}{{-1, 3}, {domain.Partitions, 3}, {p, 0}, {p, -4}} {
		if err := e.s.ClaimPartition(ctx, c.p, c.epoch); err == nil || errors.Is(err, persistence.ErrNewerEpoch) {
			t.Fatalf("ClaimPartition(%d, %d): %v, want an input error", c.p, c.epoch, err)
		}
	}
	var rows int
	if err := e.conn.QueryRow(ctx, `SELECT count(*) FROM partition_epochs`).Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("partition_epochs has %d rows (%v), want 1", rows, err)
	}
}

// An admission under an epoch that is no longer the stored one is Fenced
// and writes nothing — on the set-based path, on the keyed path, on a
// period's first admission (no usage row yet), and for a partition never
// claimed; one under the stored epoch records it with its session.
func TestFencedAdmissionWritesNothing(t *testing.T) {
	e := newFenceEnv(t)
	ctx := t.Context()
	const p = domain.Partition(3)
	users := e.usersIn(t, p, 3, "fence")
	if err := e.s.ClaimPartition(ctx, p, 5); err != nil {
		t.Fatal(err)
	}
	admitted := fenced(admitRequest(users[0], e.now), 5)
	res, err := e.s.Admit(ctx, []persistence.AdmitRequest{admitted})
	if err != nil || res[0].Outcome != persistence.Admitted {
		t.Fatalf("Admit under the stored epoch: %+v, %v", res, err)
	}
	sess, err := e.s.GetSession(ctx, admitted.Session.ID)
	if err != nil || sess.Epoch != 5 {
		t.Fatalf("the admitted session: %+v, %v; want epoch 5", sess, err)
	}

	if err := e.s.ClaimPartition(ctx, p, 6); err != nil {
		t.Fatal(err)
	}
	keyed := fenced(admitRequest(users[1], e.now), 5)
	keyed.IdempotencyKey, keyed.RequestHash = "k1", "h1"
	first := fenced(admitRequest(users[2], e.now), 5)
	first.FirstOfPeriod = true
	for name, batch := range map[string][]persistence.AdmitRequest{
		"set-based":         {fenced(admitRequest(users[0], e.now), 5), fenced(admitRequest(users[0], e.now), 5)},
		"keyed":             {keyed},
		"first of period":   {first},
		"older than stored": {fenced(admitRequest(users[0], e.now), 4)},
		"newer than stored": {fenced(admitRequest(users[0], e.now), 7)}, // a claim not made yet
	} {
		res, err := e.s.Admit(ctx, batch)
		if err != nil {
			t.Fatalf("%s: Admit: %v", name, err)
		}
		for i, r := range res {
			if r.Outcome != persistence.Fenced {
				t.Fatalf("%s: request %d: %v, want fenced", name, i, r.Outcome)
			}
		}
	}
	for i, want := range []int{1, 0, 0} {
		if s, u, k := e.written(t, users[i].ID); s != want || u != want || k != 0 {
			t.Fatalf("user %d holds %d sessions, %d usage rows, %d keys after fenced admissions; want %d, %d, 0", i, s, u, k, want, want)
		}
	}

	// A partition nobody claimed fences every epoch.
	other := e.usersIn(t, p+1, 1, "unclaimed")[0]
	res, err = e.s.Admit(ctx, []persistence.AdmitRequest{fenced(admitRequest(other, e.now), 1)})
	if err != nil || res[0].Outcome != persistence.Fenced {
		t.Fatalf("Admit in an unclaimed partition: %+v, %v; want fenced", res, err)
	}

	// The new owner's admissions go through, keyed or not, in one batch
	// with a stale request of the same user, which is fenced alone.
	keyed.Epoch, keyed.IdempotencyKey = 6, "k2"
	res, err = e.s.Admit(ctx, []persistence.AdmitRequest{keyed, fenced(admitRequest(users[1], e.now), 5)})
	if err != nil || res[0].Outcome != persistence.Admitted || res[1].Outcome != persistence.Fenced {
		t.Fatalf("keyed batch under the new epoch: %+v, %v; want admitted, fenced", res, err)
	}
	first.Epoch = 6
	res, err = e.s.Admit(ctx, []persistence.AdmitRequest{fenced(admitRequest(users[2], e.now), 5), first})
	if err != nil || res[0].Outcome != persistence.Fenced || res[1].Outcome != persistence.Admitted {
		t.Fatalf("a set-based batch with one stale request: %+v, %v; want fenced, admitted", res, err)
	}
	for _, id := range []string{keyed.Session.ID, first.Session.ID} {
		if sess, err := e.s.GetSession(ctx, id); err != nil || sess.Epoch != 6 {
			t.Fatalf("session %s: %+v, %v; want epoch 6", id, sess, err)
		}
	}
}

// One process is a single node or a cluster node, never both: a batch that
// mixes epoch 0 with epochs is refused and writes nothing.
func TestMixedBatchIsRefused(t *testing.T) {
	e := newFenceEnv(t)
	ctx := t.Context()
	u := e.usersIn(t, 9, 1, "mixed")[0]
	if err := e.s.ClaimPartition(ctx, 9, 2); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"", "k"} {
		a, b := admitRequest(u, e.now), fenced(admitRequest(u, e.now), 2)
		a.IdempotencyKey, a.RequestHash = key, "h"
		if _, err := e.s.Admit(ctx, []persistence.AdmitRequest{a, b}); err == nil {
			t.Fatalf("a mixed batch (key %q) was accepted", key)
		}
	}
	if s, _, _ := e.written(t, u.ID); s != 0 {
		t.Fatalf("a refused batch wrote %d sessions", s)
	}
}

// Single-node admissions (epoch 0) ignore the epochs entirely: they are
// admitted whatever is stored, record epoch 0, and take no partition lock
// (one goes through while a claim of its partition holds the lock).
func TestEpochZeroIgnoresTheFence(t *testing.T) {
	e := newFenceEnv(t)
	ctx := t.Context()
	const p = domain.Partition(40)
	u := e.usersIn(t, p, 1, "single")[0]
	if err := e.s.ClaimPartition(ctx, p, 8); err != nil {
		t.Fatal(err)
	}
	tx, err := e.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, postgres.PartitionLockClass, int32(p)); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"", "k"} {
		r := admitRequest(u, e.now)
		r.IdempotencyKey, r.RequestHash = key, "h"
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := e.s.Admit(actx, []persistence.AdmitRequest{r})
		cancel()
		if err != nil || res[0].Outcome != persistence.Admitted {
			t.Fatalf("an epoch-0 admission (key %q) while a claim holds the partition's lock: %+v, %v", key, res, err)
		}
		if sess, err := e.s.GetSession(ctx, r.Session.ID); err != nil || sess.Epoch != 0 {
			t.Fatalf("session: %+v, %v; want epoch 0", sess, err)
		}
	}
}

// A claim waits for the admissions of its partition in flight, and an
// admission that asks while a claim is under way waits for it and then
// reads the new epoch: it is fenced, never committed under the old one.
func TestClaimSerializesWithAdmissions(t *testing.T) {
	e := newFenceEnv(t)
	ctx := t.Context()
	const p = domain.Partition(77)
	u := e.usersIn(t, p, 1, "serial")[0]
	if err := e.s.ClaimPartition(ctx, p, 1); err != nil {
		t.Fatal(err)
	}

	t.Run("claim waits for an admission in flight", func(t *testing.T) {
		// What an admission batch holds from its first statement to its
		// commit, left uncommitted for now.
		tx, err := e.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(context.Background())
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock_shared($1, $2)`, postgres.PartitionLockClass, int32(p)); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- e.s.ClaimPartition(ctx, p, 2) }()
		waitForLockWaiter(t, e.conn)
		select {
		case err := <-done:
			t.Fatalf("the claim returned (%v) while an admission held the partition", err)
		default:
		}
		if got := e.storedEpoch(t, p); got != 1 {
			t.Fatalf("the stored epoch moved to %d while an admission held the partition", got)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("the claim, once the admission committed: %v", err)
		}
	})

	t.Run("admission waits for a claim under way", func(t *testing.T) {
		// What ClaimPartition does, left uncommitted for now.
		tx, err := e.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(context.Background())
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, postgres.PartitionLockClass, int32(p)); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `UPDATE partition_epochs SET epoch = 3 WHERE partition = $1`, int32(p)); err != nil {
			t.Fatal(err)
		}
		type result struct {
			res []persistence.AdmitResult
			err error
		}
		done := make(chan result, 2)
		for _, key := range []string{"", "k"} { // the set-based path and the keyed one
			r := fenced(admitRequest(u, e.now), 2) // the epoch the claim is replacing
			r.IdempotencyKey, r.RequestHash = key, "h"
			go func() {
				res, err := e.s.Admit(ctx, []persistence.AdmitRequest{r})
				done <- result{res, err}
			}()
		}
		waitForLockWaiters(t, e.conn, 2)
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			r := <-done
			if r.err != nil || r.res[0].Outcome != persistence.Fenced {
				t.Fatalf("an admission under the replaced epoch, after the claim: %+v, %v; want fenced", r.res, r.err)
			}
		}
	})
	if s, u, k := e.written(t, u.ID); s != 0 || u != 0 || k != 0 {
		t.Fatalf("admissions under the replaced epoch wrote %d sessions, %d usage rows, %d keys", s, u, k)
	}
}

// Claims of a partition while admissions of its users stream in, under the
// stored epoch, the one it replaced (a zombie owner) and the next one (an
// owner whose claim is not done yet), on both paths, in batches that also
// hold a user of another partition: every committed session carries the
// epoch stored when it committed (none with an older epoch after a claim
// returned, none with a newer one before its claim began), so per user the
// epochs never decrease in seq order; what each caller was told matches
// what was stored; the other partition is untouched.
func TestClaimDuringAdmissionStream(t *testing.T) {
	e := newFenceEnv(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const p, q = domain.Partition(5), domain.Partition(6)
	hot := e.usersIn(t, p, 4, "stream")
	bystander := e.usersIn(t, q, 1, "bystander")[0]
	ids := []string{bystander.ID}
	for _, u := range hot {
		ids = append(ids, u.ID)
	}
	const first, last = 2, 6 // p's epochs; q stays at 1
	for part, epoch := range map[domain.Partition]int64{p: first, q: 1} {
		if err := e.s.ClaimPartition(ctx, part, epoch); err != nil {
			t.Fatal(err)
		}
	}

	var (
		current atomic.Int64 // the last epoch claimed for p
		calls   atomic.Int64 // Admit calls answered
		mu      sync.Mutex
		told    = map[int64]int{} // epoch → sessions callers were told were admitted
		fences  int
	)
	current.Store(first)
	maxSeqs := func() map[string]int64 {
		rows, err := e.conn.Query(ctx, `SELECT user_id, max(seq) FROM sessions WHERE user_id = ANY($1) GROUP BY user_id`, ids)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]int64{}
		var (
			id  string
			seq int64
		)
		if _, err := pgx.ForEachRow(rows, []any{&id, &seq}, func() error { m[id] = seq; return nil }); err != nil {
			t.Fatal(err)
		}
		return m
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				epoch := current.Load() + int64((w+i)%3) - 1 // stale, current or early
				var reqs []persistence.AdmitRequest
				for _, u := range hot {
					reqs = append(reqs, fenced(admitRequest(u, e.now), epoch), fenced(admitRequest(u, e.now), epoch))
				}
				if w%2 == 1 { // the keyed path
					reqs[0].IdempotencyKey, reqs[0].RequestHash = fmt.Sprintf("w%d-%d", w, i), "h"
				}
				reqs = append(reqs, fenced(admitRequest(bystander, e.now), 1))
				res, err := e.s.Admit(ctx, reqs)
				if err != nil {
					t.Errorf("Admit: %v", err)
					return
				}
				mu.Lock()
				for j, r := range res {
					switch r.Outcome {
					case persistence.Admitted:
						told[reqs[j].Epoch]++
					case persistence.Fenced:
						if reqs[j].Session.UserID == bystander.ID {
							t.Errorf("the other partition's admission was fenced")
						}
						fences++
					default:
						t.Errorf("outcome %v", r.Outcome)
					}
				}
				mu.Unlock()
				calls.Add(1)
			}
		})
	}
	waitCalls := func(n int64) {
		for target := calls.Load() + n; calls.Load() < target; {
			if ctx.Err() != nil || t.Failed() {
				t.Fatal("admissions stopped")
			}
			time.Sleep(time.Millisecond)
		}
	}
	type window struct{ before, after map[string]int64 } // max seqs around claim k
	windows := map[int64]window{}
	for k := int64(first + 1); k <= last; k++ {
		waitCalls(12)
		before := maxSeqs()
		if err := e.s.ClaimPartition(ctx, p, k); err != nil {
			t.Fatal(err)
		}
		windows[k] = window{before, maxSeqs()}
		current.Store(k)
	}
	waitCalls(12)
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}

	rows, err := e.conn.Query(ctx, `SELECT user_id, seq, epoch FROM sessions WHERE user_id = ANY($1) ORDER BY user_id, seq`, ids)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[int64]int{}
	var (
		id, prevID string
		seq, epoch int64
		prevEpoch  int64
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &seq, &epoch}, func() error {
		stored[epoch]++
		if id == prevID && epoch < prevEpoch {
			t.Errorf("user %s: seq %d has epoch %d after epoch %d", id, seq, epoch, prevEpoch)
		}
		prevID, prevEpoch = id, epoch
		if id == bystander.ID {
			return nil
		}
		for k, w := range windows {
			if epoch < k && seq > w.after[id] {
				t.Errorf("user %s: seq %d committed under epoch %d after the claim of epoch %d returned (seq %d then)", id, seq, epoch, k, w.after[id])
			}
			if epoch >= k && seq <= w.before[id] {
				t.Errorf("user %s: seq %d committed under epoch %d before the claim of epoch %d began (seq %d then)", id, seq, epoch, k, w.before[id])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for k := int64(1); k <= last; k++ { // 1: the other partition's
		if told[k] != stored[k] {
			t.Errorf("epoch %d: callers were told %d sessions were admitted, the store holds %d", k, told[k], stored[k])
		}
		if stored[k] == 0 {
			t.Errorf("no session was admitted under epoch %d: the stream did not cover it", k)
		}
	}
	if fences == 0 {
		t.Error("no admission was fenced: the stream proved nothing")
	}
	t.Logf("admitted per epoch %v, fenced %d", stored, fences)
}

// A cluster node's admissions record their alerts like a single node's,
// and a fenced-off one records none: an alert exists only with its cause.
func TestFencedAdmissionAlerts(t *testing.T) {
	e := newFenceEnv(t)
	ctx := t.Context()
	const p = domain.Partition(9)
	u := e.usersIn(t, p, 1, "alerted")[0]
	if err := e.s.ClaimPartition(ctx, p, 3); err != nil {
		t.Fatal(err)
	}
	plan := domain.Plan{Name: "free", MaxSessions: 2, MaxTotalMinutes: 10}
	req := func(epoch int64) persistence.AdmitRequest {
		r := fenced(admitRequest(u, e.now), epoch)
		r.PlanName, r.MaxSessions, r.MaxSeconds = plan.Name, plan.MaxSessions, plan.MaxSeconds()
		r.Alerts = domain.NewAlertPlan(plan, []int{50, 100})
		return r
	}
	alerts := func() (n int) {
		if err := e.conn.QueryRow(ctx, `SELECT count(*) FROM alerts WHERE user_id = $1`, u.ID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	res, err := e.s.Admit(ctx, []persistence.AdmitRequest{req(3)})
	if err != nil || res[0].Outcome != persistence.Admitted || alerts() != 1 {
		t.Fatalf("first fenced admission: %+v, %v, %d alerts; want admitted with the 50%% alert", res, err, alerts())
	}
	if err := e.s.ClaimPartition(ctx, p, 4); err != nil {
		t.Fatal(err)
	}
	keyed := req(3)
	keyed.IdempotencyKey, keyed.RequestHash = "k", "h"
	for _, batch := range [][]persistence.AdmitRequest{{req(3)}, {keyed}} {
		if res, err := e.s.Admit(ctx, batch); err != nil || res[0].Outcome != persistence.Fenced || alerts() != 1 {
			t.Fatalf("admission under the old epoch: %+v, %v, %d alerts; want fenced, still 1", res, err, alerts())
		}
	}
	if res, err := e.s.Admit(ctx, []persistence.AdmitRequest{req(4)}); err != nil || res[0].Outcome != persistence.Admitted || alerts() != 2 {
		t.Fatalf("admission under the new epoch: %+v, %v, %d alerts; want admitted with the 100%% alert", res, err, alerts())
	}
}
