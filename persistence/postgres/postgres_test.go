package postgres_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/persistence/postgres"
	"github.com/tally-dev/tally/persistence/storetest"
)

// openStore opens a store on url, closed when the test ends.
func openStore(t *testing.T, url string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), url)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) persistence.Store {
		return openStore(t, testenv.PostgresURL(t))
	})
}

// migrationFiles lists the migrations in the source tree (the test runs in
// the package directory), i.e. what Migrate must have recorded.
func migrationFiles(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("migrations")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".sql"); ok {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		t.Fatal("no migrations found")
	}
	return names
}

func TestMigrateConcurrently(t *testing.T) {
	// Several processes starting at once: without the advisory lock they
	// would race to create the same tables and all but one would fail.
	url := testenv.PostgresURL(t)
	stores := []*postgres.Store{openStore(t, url), openStore(t, url), openStore(t, url)}
	const perStore = 3
	errs := make(chan error, len(stores)*perStore)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, s := range stores {
		for range perStore {
			wg.Go(func() {
				<-start
				errs <- s.Migrate(t.Context())
			})
		}
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Migrate: %v", err)
		}
	}

	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(t.Context(), "SELECT version, name FROM schema_migrations ORDER BY version")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var (
		v    int
		name string
	)
	if _, err := pgx.ForEachRow(rows, []any{&v, &name}, func() error {
		got = append(got, fmt.Sprintf("%d %s", v, name))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i, name := range migrationFiles(t) {
		want = append(want, fmt.Sprintf("%d %s", i+1, name))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("schema_migrations = %v, want %v", got, want)
	}
	// And the schema works for every store.
	for i, s := range stores {
		if _, err := s.EnsureUser(t.Context(), fmt.Sprintf("u%d", i), time.Now()); err != nil {
			t.Fatalf("store %d after Migrate: %v", i, err)
		}
	}
}

func TestOpenUnreachableIsUnavailable(t *testing.T) {
	port := testenv.FreePort(t) // nothing listens there
	url := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/tally?sslmode=disable&connect_timeout=5", port)
	s, err := postgres.Open(t.Context(), url)
	if err == nil {
		s.Close()
		t.Fatal("Open of an unreachable server succeeded")
	}
	if code := domain.ErrorCode(err); code != domain.CodeUnavailable {
		t.Fatalf("Open of an unreachable server: code %q (%v), want %q", code, err, domain.CodeUnavailable)
	}
}

func TestOpenMalformedURLIsNotUnavailable(t *testing.T) {
	// A configuration mistake must stop start-up, not look like an outage
	// worth retrying.
	_, err := postgres.Open(t.Context(), "postgres://127.0.0.1:notaport/x")
	if err == nil || domain.ErrorCode(err) == domain.CodeUnavailable {
		t.Fatalf("Open of a malformed URL: %v; want a plain error", err)
	}
}

func TestServerGoneIsUnavailable(t *testing.T) {
	// The server ends every connection of the store (as on a restart or a
	// failover) while a transaction is in progress; the store must report
	// CodeUnavailable, then recover once connections can be made again.
	url := testenv.PostgresURL(t)
	s := openStore(t, url)
	if err := s.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	u, err := s.EnsureUser(t.Context(), "alice", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())

	// Hold the user row so that an admission blocks inside its transaction.
	tx, err := admin.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(t.Context(), "SELECT 1 FROM users WHERE id = $1 FOR UPDATE", u.ID); err != nil {
		t.Fatal(err)
	}
	p := u.Period(time.Now())
	done := make(chan error, 1)
	go func() {
		_, err := s.Admit(t.Context(), []persistence.AdmitRequest{{
			Session:     domain.Session{ID: "s1", UserID: u.ID, Title: "t", Language: "en", STTProvider: "google", PeriodStart: p.Start, CreatedAt: time.Now()},
			UserVersion: u.Version, PeriodEnd: p.End, MaxSessions: -1, MaxSeconds: -1,
		}})
		done <- err
	}()
	waitForLockWaiter(t, admin)
	if _, err := admin.Exec(t.Context(), `
		SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'`); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if code := domain.ErrorCode(err); code != domain.CodeUnavailable {
			t.Fatalf("Admit on a terminated connection: code %q (%v), want %q", code, err, domain.CodeUnavailable)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Admit did not return after its connection was terminated")
	}
	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The pool replaces the dead connection.
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("Ping after the outage: %v", err)
	}
	if _, err := s.GetUser(t.Context(), u.ID); err != nil {
		t.Fatalf("GetUser after the outage: %v", err)
	}
}

func TestAdmitWaitsForPlanChange(t *testing.T) {
	// A plan change in flight when an admission is decided: the admission
	// must wait for it and then be refused as stale, never commit under
	// the version the change is replacing.
	url := testenv.PostgresURL(t)
	s := openStore(t, url)
	if err := s.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	u, err := s.EnsureUser(t.Context(), "alice", now)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	tx, err := admin.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	// What PutUser does, left uncommitted for now.
	if _, err := tx.Exec(t.Context(), "UPDATE users SET plan = 'pro', version = version + 1 WHERE id = $1", u.ID); err != nil {
		t.Fatal(err)
	}

	p := u.Period(now)
	type result struct {
		res []persistence.AdmitResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := s.Admit(t.Context(), []persistence.AdmitRequest{{
			Session:     domain.Session{ID: "s1", UserID: u.ID, Title: "t", Language: "en", STTProvider: "google", PeriodStart: p.Start, CreatedAt: now},
			UserVersion: u.Version, PeriodEnd: p.End, MaxSessions: 10, MaxSeconds: -1,
		}})
		done <- result{res, err}
	}()
	waitForLockWaiter(t, admin)
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("Admit: %v", r.err)
	}
	if r.res[0].Outcome != persistence.StaleUser {
		t.Fatalf("Admit during a plan change: %v, want %v", r.res[0].Outcome, persistence.StaleUser)
	}
	if _, err := s.GetSession(t.Context(), "s1"); domain.ErrorCode(err) != domain.CodeNotFound {
		t.Fatalf("a stale admission left a session: %v", err)
	}
}

// waitForLockWaiter waits until a backend of the test database other than
// conn's waits for a lock, i.e. until the store's statement is blocked.
func waitForLockWaiter(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	waitForLockWaiters(t, conn, 1)
}

// waitForLockWaiters waits until at least n backends of the test database
// other than conn's wait for a lock.
func waitForLockWaiters(t *testing.T, conn *pgx.Conn, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Within a transaction, activity statistics are a snapshot taken
		// at their first read: clear it, or conn would never see a change.
		if _, err := conn.Exec(t.Context(), `SELECT pg_stat_clear_snapshot()`); err != nil {
			t.Fatal(err)
		}
		var n int
		err := conn.QueryRow(t.Context(), `
			SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the store's statement never waited for the row lock")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A period's first admission marked FirstOfPeriod creates its usage row in
// the admission's own transaction; only an unmarked one needs admitBulk's
// second transaction (the safety net).
func TestFirstOfPeriodTakesOneTransaction(t *testing.T) {
	ctx := t.Context()
	s := openStore(t, testenv.PostgresURL(t))
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	batch := func(prefix string, hint bool) []persistence.AdmitRequest {
		var reqs []persistence.AdmitRequest
		for i := range 8 {
			u, err := s.EnsureUser(ctx, fmt.Sprintf("%s%d", prefix, i), now)
			if err != nil {
				t.Fatal(err)
			}
			r := admitRequest(u, now)
			r.FirstOfPeriod = hint
			reqs = append(reqs, r, admitRequest(u, now))
		}
		return reqs
	}
	for _, tc := range []struct {
		prefix string
		hint   bool
		passes int64
	}{{"hinted", true, 0}, {"unhinted", false, 1}} {
		before := s.SecondPasses()
		res, err := s.Admit(ctx, batch(tc.prefix, tc.hint))
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range res {
			if r.Outcome != persistence.Admitted || r.Counters.Sessions != int64(i%2+1) {
				t.Fatalf("%s: request %d: %v %+v", tc.prefix, i, r.Outcome, r.Counters)
			}
		}
		if got := s.SecondPasses() - before; got != tc.passes {
			t.Fatalf("%s: %d second transactions, want %d", tc.prefix, got, tc.passes)
		}
	}
}
