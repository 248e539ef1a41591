package actors_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/actors"
	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/persistence/postgres"
	"github.com/tally-dev/tally/tools/verify"
)

// fakeOwnership is actors.Ownership as a test sets it: what one node
// believes it owns, under which epoch.
type fakeOwnership struct {
	epochs [domain.Partitions]atomic.Int64
}

func (o *fakeOwnership) Epoch(p domain.Partition) int64 { return o.epochs[p].Load() }

func (o *fakeOwnership) set(p domain.Partition, epoch int64) { o.epochs[p].Store(epoch) }

// node is one cluster node of a test: a Service with its own store (its
// own connection pool, as another process would have) on a shared database.
type node struct {
	svc *actors.Service
	own *fakeOwnership
}

// openPostgres opens a migrated store on url.
func openPostgres(t *testing.T, url string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

func newNode(t *testing.T, store persistence.Store, now func() time.Time) *node {
	t.Helper()
	own := &fakeOwnership{}
	svc, err := actors.New(actors.Options{Store: store, Catalog: domain.DefaultCatalog(), IdleTimeout: time.Hour, Shards: 4,
		RequestTimeout: 30 * time.Second, Logger: slog.New(slog.DiscardHandler), Ownership: own, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	return &node{svc: svc, own: own}
}

// acquire makes n p's owner under epoch, in the order the cluster does it:
// the claim in the store first, then what Ownership reports.
func (n *node) acquire(t *testing.T, p domain.Partition, epoch int64) {
	t.Helper()
	if err := n.svc.Acquire(ctxFor(t, 10*time.Second), p, epoch); err != nil {
		t.Fatalf("Acquire(%d, %d): %v", p, epoch, err)
	}
	n.own.set(p, epoch)
}

// userIn returns an id of partition p: prefix-0, prefix-1, … whichever
// hashes there first.
func userIn(p domain.Partition, prefix string) string {
	for i := 0; ; i++ {
		if id := fmt.Sprintf("%s-%d", prefix, i); domain.PartitionOf(id) == p {
			return id
		}
	}
}

func isNotOwner(err error) bool {
	return errors.Is(err, domain.ErrNotOwner) && domain.ErrorCode(err) == domain.CodeUnavailable
}

// epochCounts returns how many of the user's sessions the store holds per
// epoch.
func epochCounts(t *testing.T, url, userID string) map[int64]int {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(t.Context(), `SELECT epoch, count(*) FROM sessions WHERE user_id = $1 GROUP BY epoch`, userID)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]int{}
	var (
		epoch int64
		n     int
	)
	if _, err := pgx.ForEachRow(rows, []any{&epoch, &n}, func() error { out[epoch] = n; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// A hot user's partition moves from node 1 to node 2 in the middle of a
// storm of creates, while node 1 still believes it owns it (a zombie:
// paused, partitioned, slow to learn). Once node 2's claim has returned,
// node 1 commits nothing more: its admissions are fenced off (503, nothing
// written). The user never exceeds its limit, and its remaining quota is
// admitted exactly once across the two nodes.
func TestZombieOwnerCommitsNothingAfterTheClaim(t *testing.T) {
	url := testenv.PostgresURL(t)
	n1 := newNode(t, openPostgres(t, url), nil)
	n2 := newNode(t, openPostgres(t, url), nil)
	const user = "hot"
	p := domain.PartitionOf(user)
	n1.acquire(t, p, 10)
	if _, _, err := n1.svc.PutUser(ctxFor(t, 10*time.Second), testAdmin, user, ptr("student"), nil); err != nil {
		t.Fatal(err)
	}
	const limit = 100 // student

	type tally struct {
		ok          atomic.Int64
		full        atomic.Int64
		notOwner    atomic.Int64
		afterClaim  atomic.Int64 // 200s node 1 gave to creates sent after the claim returned
		claimedOnce atomic.Bool
	}
	var t1, t2 tally
	var (
		mu  sync.Mutex
		ids = map[string]bool{}
	)
	storm := func(n *node, tl *tally, stop <-chan struct{}, untilFull bool) {
		for {
			select {
			case <-stop:
				return
			default:
			}
			claimed := t1.claimedOnce.Load()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			s, err := n.svc.CreateSession(ctx, user, in, "")
			cancel()
			switch {
			case err == nil:
				tl.ok.Add(1)
				if n == n1 && claimed {
					tl.afterClaim.Add(1)
				}
				mu.Lock()
				if ids[s.ID] {
					t.Errorf("session %s acknowledged twice", s.ID)
				}
				ids[s.ID] = true
				mu.Unlock()
			case domain.ErrorCode(err) == domain.CodeSessionLimit:
				tl.full.Add(1)
				if untilFull {
					return
				}
			case isNotOwner(err):
				tl.notOwner.Add(1)
			default:
				t.Errorf("create on node %p: %v", n, err)
				return
			}
		}
	}

	stop1 := make(chan struct{})
	var zombies, owners sync.WaitGroup
	for range 4 {
		zombies.Go(func() { storm(n1, &t1, stop1, false) })
	}
	for deadline := time.Now().Add(30 * time.Second); t1.ok.Load() < 30; {
		if time.Now().After(deadline) || t.Failed() {
			close(stop1)
			zombies.Wait()
			t.Fatalf("node 1 admitted only %d sessions", t1.ok.Load())
		}
		time.Sleep(time.Millisecond)
	}
	// The move: node 2 claims; node 1 is not told.
	n2.acquire(t, p, 11)
	t1.claimedOnce.Store(true)
	atClaim := epochCounts(t, url, user)[10]
	for range 4 {
		owners.Go(func() { storm(n2, &t2, nil, true) })
	}
	owners.Wait()
	close(stop1)
	zombies.Wait()
	if t.Failed() {
		return
	}

	counts := epochCounts(t, url, user)
	if counts[10] != atClaim {
		t.Errorf("node 1 committed %d sessions under epoch 10 after node 2's claim returned", counts[10]-atClaim)
	}
	if t1.afterClaim.Load() != 0 {
		t.Errorf("node 1 acknowledged %d creates sent after the claim", t1.afterClaim.Load())
	}
	if int64(counts[10]) != t1.ok.Load() || int64(counts[11]) != t2.ok.Load() || len(counts) != 2 {
		t.Errorf("stored per epoch %v; node 1 acknowledged %d (epoch 10), node 2 %d (epoch 11)", counts, t1.ok.Load(), t2.ok.Load())
	}
	if total := counts[10] + counts[11]; total != limit || len(ids) != limit {
		t.Errorf("%d sessions stored, %d acknowledged; want exactly the limit, %d", total, len(ids), limit)
	}
	if t1.notOwner.Load() == 0 {
		t.Error("node 1 was never fenced off: the zombie never tried after the claim, the test proved nothing")
	}
	rep, err := n2.svc.Usage(ctxFor(t, 10*time.Second), user)
	if err != nil || rep.Usage.Sessions != limit {
		t.Errorf("usage on the new owner: %+v, %v; want %d sessions", rep.Usage, err, limit)
	}
	audit, err := verify.Run(t.Context(), verify.Options{DatabaseURL: url})
	if err != nil {
		t.Fatal(err)
	}
	if !audit.OK() || audit.Fenced != limit {
		t.Errorf("tally verify: %d violation(s) %+v, %d fenced sessions", audit.Total, audit.Violations, audit.Fenced)
	}
	t.Logf("node 1: %d admitted, %d fenced off or refused as not the owner, %d full; node 2: %d admitted, %d not owner, %d full",
		t1.ok.Load(), t1.notOwner.Load(), t1.full.Load(), t2.ok.Load(), t2.notOwner.Load(), t2.full.Load())
}

// gatedStore holds every Admit until release is closed, and says when one
// has started.
type gatedStore struct {
	persistence.Store
	started chan struct{}
	release chan struct{}
}

func (g *gatedStore) Admit(ctx context.Context, reqs []persistence.AdmitRequest) ([]persistence.AdmitResult, error) {
	select {
	case g.started <- struct{}{}:
	default:
	}
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.Store.Admit(ctx, reqs)
}

// Release stops new work for the partition at once, waits for what is in
// flight to be answered (or for its context), and passivates the
// partition's actors; a later Acquire serves it again, under the new epoch.
func TestReleaseWaitsForInFlight(t *testing.T) {
	url := testenv.PostgresURL(t)
	gs := &gatedStore{Store: openPostgres(t, url), started: make(chan struct{}, 1), release: make(chan struct{})}
	n := newNode(t, gs, nil)
	const user = "leaving"
	p := domain.PartitionOf(user)
	other := userIn(p+1, "staying")
	n.acquire(t, p, 5)
	n.acquire(t, p+1, 5)

	type result struct {
		s   domain.Session
		err error
	}
	created := make(chan result, 1)
	go func() {
		s, err := n.svc.CreateSession(ctxFor(t, 20*time.Second), user, in, "")
		created <- result{s, err}
	}()
	<-gs.started // the create is in the group commit

	// A release bounded by a context that ends first says so.
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	err := n.svc.Release(short, p)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Release while a create is in flight, past its context: %v", err)
	}
	released := make(chan error, 1)
	go func() { released <- n.svc.Release(ctxFor(t, 20*time.Second), p) }()

	// From now on the partition's users are refused at once, by every
	// operation that goes through the actors; others are served.
	if _, err := n.svc.CreateSession(ctxFor(t, 5*time.Second), user, in, ""); !isNotOwner(err) {
		t.Fatalf("create during the release: %v, want not owner", err)
	}
	if _, err := n.svc.Usage(ctxFor(t, 5*time.Second), user); !isNotOwner(err) {
		t.Fatalf("usage during the release: %v, want not owner", err)
	}
	if _, err := n.svc.Usage(ctxFor(t, 5*time.Second), other); err != nil {
		t.Fatalf("usage of another partition's user: %v", err)
	}
	select {
	case err := <-released:
		t.Fatalf("Release returned (%v) while a create was in flight", err)
	default:
	}

	close(gs.release)
	r := <-created
	if r.err != nil || r.s.Epoch != 5 {
		t.Fatalf("the create in flight: %+v, %v; want admitted under epoch 5", r.s, r.err)
	}
	if err := <-released; err != nil {
		t.Fatalf("Release: %v", err)
	}
	// The partition's actor is passivated; the other user's stays.
	for deadline := time.Now().Add(10 * time.Second); n.svc.LiveActors() != 1; {
		if time.Now().After(deadline) {
			t.Fatalf("%d live actors after the release, want 1 (the other partition's)", n.svc.LiveActors())
		}
		time.Sleep(5 * time.Millisecond)
	}

	// Taken back under a new epoch: served again, and what it admits
	// records the new epoch.
	n.acquire(t, p, 7)
	s, err := n.svc.CreateSession(ctxFor(t, 10*time.Second), user, in, "")
	if err != nil || s.Epoch != 7 {
		t.Fatalf("create after Acquire: %+v, %v; want epoch 7", s, err)
	}
	rep, err := n.svc.Usage(ctxFor(t, 10*time.Second), user)
	if err != nil || rep.Usage.Sessions != 2 {
		t.Fatalf("usage after the hand-back: %+v, %v; want 2 sessions", rep.Usage, err)
	}
}

// When the epoch under which a node owns a partition changes — here it
// lost the partition without hearing of it, another node owned it and
// changed the user, and it got it back — the user's actor reloads before
// its next decision instead of deciding on what it held. The clock is
// frozen, so the old counters would never age out on their own.
func TestActorReloadsOnEpochChange(t *testing.T) {
	url := testenv.PostgresURL(t)
	now := time.Now().UTC().Truncate(time.Microsecond)
	clock := func() time.Time { return now }
	n1 := newNode(t, openPostgres(t, url), clock)
	n2 := newNode(t, openPostgres(t, url), clock)
	const user = "mover"
	p := domain.PartitionOf(user)
	n1.acquire(t, p, 20)
	for i := range 10 { // the free plan's limit
		if _, err := n1.svc.CreateSession(ctxFor(t, 10*time.Second), user, in, ""); err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
	}
	if _, err := n1.svc.CreateSession(ctxFor(t, 10*time.Second), user, in, ""); domain.ErrorCode(err) != domain.CodeSessionLimit {
		t.Fatalf("the 11th create: %v, want the session limit", err)
	}

	// Node 2 owns the partition for a while: the user moves to a bigger
	// plan and admits more there.
	n2.acquire(t, p, 21)
	if _, _, err := n2.svc.PutUser(ctxFor(t, 10*time.Second), testAdmin, user, ptr("student"), nil); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := n2.svc.CreateSession(ctxFor(t, 10*time.Second), user, in, ""); err != nil {
			t.Fatalf("create %d on node 2: %v", i, err)
		}
	}

	// Back to node 1, whose actor still holds "free, 10 of 10".
	n2.own.set(p, 0)
	n1.acquire(t, p, 22)
	s, err := n1.svc.CreateSession(ctxFor(t, 10*time.Second), user, in, "")
	if err != nil {
		t.Fatalf("create on node 1 after it got the partition back: %v (decided on the state it held before the move)", err)
	}
	if s.Epoch != 22 {
		t.Fatalf("session epoch %d, want 22", s.Epoch)
	}
	rep, err := n1.svc.Usage(ctxFor(t, 10*time.Second), user)
	if err != nil || rep.Usage.Sessions != 16 || rep.Plan.Name != "student" {
		t.Fatalf("usage on node 1: %+v on %q, %v; want 16 sessions on student", rep.Usage, rep.Plan.Name, err)
	}
}

// A node refuses at once what it does not own, with an error the edge can
// tell apart (and forward); the hooks of cluster mode need a store with
// partition epochs and a Service with Ownership.
func TestNotOwnerIsRefusedAtOnce(t *testing.T) {
	store := openStore(t) // the embedded store: single-node only
	own := &fakeOwnership{}
	svc, err := actors.New(actors.Options{Store: store, Catalog: domain.DefaultCatalog(), Shards: 2,
		Logger: slog.New(slog.DiscardHandler), Ownership: own})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	const user = "elsewhere"
	p := domain.PartitionOf(user)
	ctx := ctxFor(t, 5*time.Second)
	if _, err := svc.CreateSession(ctx, user, in, ""); !isNotOwner(err) {
		t.Fatalf("create: %v, want not owner", err)
	}
	if _, _, err := svc.PutUser(ctx, testAdmin, user, ptr("pro"), nil); !isNotOwner(err) {
		t.Fatalf("put user: %v, want not owner", err)
	}
	if _, err := store.GetUser(ctx, user); domain.ErrorCode(err) != domain.CodeNotFound {
		t.Fatalf("a refused request wrote the user: %v", err)
	}
	if err := svc.Acquire(ctx, p, 3); !errors.Is(err, persistence.ErrSingleNode) {
		t.Fatalf("Acquire on the embedded store: %v, want ErrSingleNode", err)
	}
	if err := svc.Acquire(ctx, domain.Partitions, 3); err == nil {
		t.Fatal("Acquire of a partition out of range succeeded")
	}

	single := newService(t, store, time.Minute)
	if err := single.Acquire(ctx, p, 3); err == nil {
		t.Fatal("Acquire on a single-node Service succeeded")
	}
	if err := single.Release(ctx, p); err == nil {
		t.Fatal("Release on a single-node Service succeeded")
	}
	single.Lost(p) // ignored
	if _, err := single.CreateSession(ctx, user, in, ""); err != nil {
		t.Fatalf("single node: %v", err)
	}
}
