package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	msqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/persistence/storetest"
)

// openStore opens a migrated store in dir, closed when the test ends.
func openStore(t *testing.T, dir string, busy time.Duration) *Store {
	t.Helper()
	s, err := open(t.Context(), dir, busy)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(s.Close)
	if err := s.Migrate(t.Context()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return s
}

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) persistence.Store {
		s, err := Open(t.Context(), t.TempDir())
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(s.Close)
		return s
	})
}

func TestOpenCreatesTheFileInWALMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "data")
	s := openStore(t, dir, busyTimeout)
	if _, err := os.Stat(filepath.Join(dir, FileName)); err != nil {
		t.Fatalf("database file: %v", err)
	}
	var mode string
	var fk, sync int
	if err := s.write.QueryRowContext(t.Context(), "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v; want wal", mode, err)
	}
	if err := s.write.QueryRowContext(t.Context(), "PRAGMA foreign_keys").Scan(&fk); err != nil || fk != 1 {
		t.Fatalf("foreign_keys = %d, %v; want 1", fk, err)
	}
	if err := s.write.QueryRowContext(t.Context(), "PRAGMA synchronous").Scan(&sync); err != nil || sync != 2 {
		t.Fatalf("synchronous = %d, %v; want 2 (FULL)", sync, err)
	}
	// The read pool cannot write, so a write that slipped onto it would
	// fail loudly instead of bypassing the write lock.
	if _, err := s.read.ExecContext(t.Context(), "INSERT INTO users VALUES ('x', 'free', 0, 1, 0, 0)"); err == nil {
		t.Fatal("a write on the read pool succeeded")
	}
}

func TestOpenRejectsQuestionMark(t *testing.T) {
	if _, err := Open(t.Context(), filepath.Join(t.TempDir(), "what?")); err == nil {
		t.Fatal("Open accepted a path with '?'")
	}
}

func TestReopenKeepsData(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, busyTimeout)
	u, err := s.EnsureUser(t.Context(), "alice", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openStore(t, dir, busyTimeout)
	got, err := s.GetUser(t.Context(), "alice")
	if err != nil || got != u {
		t.Fatalf("after reopening: %+v, %v; want %+v", got, err, u)
	}
}

func TestBusyIsUnavailable(t *testing.T) {
	// Another process holding the write lock longer than busy_timeout: the
	// store answers CodeUnavailable (retry later), and works again after.
	dir := t.TempDir()
	s := openStore(t, dir, 50*time.Millisecond)
	other, err := sql.Open("sqlite", filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	conn, err := other.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(t.Context(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	_, err = s.EnsureUser(t.Context(), "alice", time.Now())
	if code := domain.ErrorCode(err); code != domain.CodeUnavailable {
		t.Fatalf("EnsureUser while locked: code %q (%v), want %q", code, err, domain.CodeUnavailable)
	}
	var se *msqlite.Error
	if !errors.As(err, &se) || se.Code()&0xff != sqlite3.SQLITE_BUSY {
		t.Fatalf("EnsureUser while locked: %v, want SQLITE_BUSY as the cause", err)
	}
	if _, err := conn.ExecContext(t.Context(), "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EnsureUser(t.Context(), "alice", time.Now()); err != nil {
		t.Fatalf("EnsureUser after the lock was released: %v", err)
	}
}

func TestTwoStoresOnOneFileAdmitExactly(t *testing.T) {
	// Two stores on one file stand for two processes: the file lock (BEGIN
	// IMMEDIATE) must keep the fence exact across them too.
	dir := t.TempDir()
	stores := []*Store{openStore(t, dir, busyTimeout), openStore(t, dir, busyTimeout)}
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	u, err := stores[0].EnsureUser(t.Context(), "alice", now)
	if err != nil {
		t.Fatal(err)
	}
	p := u.Period(now)
	const (
		callers = 40
		limit   = 10
	)
	var (
		mu       sync.Mutex
		admitted int
		wg       sync.WaitGroup
	)
	errs := make(chan error, callers)
	for i := range callers {
		wg.Go(func() {
			res, err := stores[i%2].Admit(t.Context(), []persistence.AdmitRequest{{
				Session: domain.Session{ID: fmt.Sprintf("s%02d", i), UserID: u.ID, Title: "t", Language: "en",
					STTProvider: "google", PeriodStart: p.Start, CreatedAt: now},
				UserVersion: u.Version, PeriodEnd: p.End, MaxSessions: limit, MaxSeconds: domain.Unlimited,
			}})
			if err != nil {
				errs <- err
				return
			}
			if res[0].Outcome == persistence.Admitted {
				mu.Lock()
				admitted++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Admit: %v", err)
	}
	if admitted != limit {
		t.Fatalf("%d admitted across two stores, want exactly %d", admitted, limit)
	}
	for i, s := range stores {
		c, err := s.LoadUsage(t.Context(), u.ID, p.Start)
		if err != nil || c.Sessions != limit {
			t.Fatalf("store %d: LoadUsage = %+v, %v; want %d sessions", i, c, err, limit)
		}
	}
}

func TestMigrationsMatchPostgres(t *testing.T) {
	// The two dialects' migrations keep the same numbers and names, so that
	// a change made to one store is not forgotten in the other.
	names := func(dir string) []string {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range entries {
			if n, ok := strings.CutSuffix(e.Name(), ".sql"); ok {
				out = append(out, n)
			}
		}
		return out
	}
	if mine, theirs := names("migrations"), names("../postgres/migrations"); !slices.Equal(mine, theirs) {
		t.Fatalf("sqlite migrations %v, postgres migrations %v", mine, theirs)
	}
}

// The embedded migrations load (the loader's rules are tested in package
// persistence).
func TestEmbeddedMigrations(t *testing.T) {
	if _, err := persistence.LoadMigrations(migrationFiles, "migrations"); err != nil {
		t.Fatalf("embedded migrations: %v", err)
	}
}

func TestTranslate(t *testing.T) {
	if code := domain.ErrorCode(translate("op", context.DeadlineExceeded)); code != domain.CodeUnavailable {
		t.Fatalf("deadline: %q", code)
	}
	if code := domain.ErrorCode(translate("op", errors.New("boom"))); code != domain.CodeInternal {
		t.Fatalf("unknown error: %q", code)
	}
	if translate("op", nil) != nil {
		t.Fatal("translate(nil) != nil")
	}
}

// The embedded store is single-node only: a partition claim and an
// admission under an epoch (cluster mode) are refused with ErrSingleNode,
// and the refused batch writes nothing, not even its epoch-0 requests.
func TestClusterModeIsRefused(t *testing.T) {
	s := openStore(t, t.TempDir(), busyTimeout)
	ctx := t.Context()
	if err := s.ClaimPartition(ctx, 3, 1); !errors.Is(err, persistence.ErrSingleNode) {
		t.Fatalf("ClaimPartition: %v, want ErrSingleNode", err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	u, err := s.EnsureUser(ctx, "alice", now)
	if err != nil {
		t.Fatal(err)
	}
	p := u.Period(now)
	req := func(id string, epoch int64) persistence.AdmitRequest {
		return persistence.AdmitRequest{
			Session:     domain.Session{ID: id, UserID: u.ID, Title: "t", Language: "en", STTProvider: "google", PeriodStart: p.Start, CreatedAt: now},
			UserVersion: u.Version, PeriodEnd: p.End, MaxSessions: 10, MaxSeconds: -1, Epoch: epoch,
		}
	}
	if _, err := s.Admit(ctx, []persistence.AdmitRequest{req("s0", 0), req("s1", 4)}); !errors.Is(err, persistence.ErrSingleNode) {
		t.Fatalf("Admit under an epoch: %v, want ErrSingleNode", err)
	}
	if c, err := s.LoadUsage(ctx, u.ID, p.Start); err != nil || c.Sessions != 0 {
		t.Fatalf("usage after a refused batch: %+v, %v", c, err)
	}
	res, err := s.Admit(ctx, []persistence.AdmitRequest{req("s2", 0)})
	if err != nil || res[0].Outcome != persistence.Admitted {
		t.Fatalf("Admit: %+v, %v", res, err)
	}
	if sess, err := s.GetSession(ctx, "s2"); err != nil || sess.Epoch != 0 {
		t.Fatalf("session: %+v, %v; want epoch 0", sess, err)
	}
}
