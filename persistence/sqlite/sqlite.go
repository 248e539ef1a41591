// Package sqlite is the embedded persistence.Store that `make run` uses when
// no TALLY_DATABASE_URL is set: one file, <data dir>/tally.db, with the same
// semantics as the Postgres store, on modernc.org/sqlite (pure Go, no cgo).
//
// It is meant for one process, and prefers exactness to speed: every write
// runs in a BEGIN IMMEDIATE transaction on the store's single write
// connection, so writes take turns and the admission fence cannot
// interleave. Reads run on a separate pool of read-only connections, which
// WAL mode lets proceed while a write is in progress.
package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/tally-dev/tally/persistence"
)

var _ persistence.Store = (*Store)(nil)

// FileName is the database file Open creates in the data directory.
const FileName = "tally.db"

// busyTimeout bounds how long a statement waits for a lock held by another
// connection (another process on the same file, or a WAL checkpoint) before
// failing with SQLITE_BUSY, which the store reports as CodeUnavailable.
const busyTimeout = 5 * time.Second

// sessionStatus and userChanges are embedded in Store under unexported
// names: they provide MarkUploading, CompleteSession and FailSession
// (persistence/sessions.go) and PutUser (persistence/users.go) without
// exporting a field.
type (
	sessionStatus = persistence.SessionStatus
	userChanges   = persistence.UserChanges
)

// Store is persistence.Store on a SQLite file.
type Store struct {
	sessionStatus // on inSessionTx (sessions.go)
	userChanges   // on inUserTx (events.go)
	// write has exactly one connection, whose transactions begin with
	// BEGIN IMMEDIATE (the DSN's _txlock): this process's writes queue for
	// it, and another process's writes wait on the file lock.
	write *sql.DB
	read  *sql.DB
	// closed turns the driver's "database is closed" (which it offers no
	// sentinel for) into CodeUnavailable.
	closed atomic.Bool
}

// Open opens, creating them when needed, dataDir and the database file in
// it. It does not migrate; call Migrate.
func Open(ctx context.Context, dataDir string) (*Store, error) {
	return open(ctx, dataDir, busyTimeout)
}

func open(ctx context.Context, dataDir string, busy time.Duration) (*Store, error) {
	dir, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, fmt.Errorf("sqlite: data directory %q: %w", dataDir, err)
	}
	// The driver reads everything after a '?' as connection parameters.
	if strings.ContainsRune(dir, '?') {
		return nil, fmt.Errorf("sqlite: data directory %q: the path must not contain '?'", dataDir)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("sqlite: create data directory: %w", err)
	}
	path := filepath.Join(dir, FileName)
	ms := busy.Milliseconds()

	// synchronous=FULL: an acknowledged write survives a power loss too,
	// not only a crash of the process.
	write, err := sql.Open("sqlite", fmt.Sprintf(
		"%s?_txlock=immediate&_busy_timeout=%d&_journal_mode=WAL&_synchronous=FULL&_foreign_keys=1", path, ms))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)
	write.SetConnMaxIdleTime(0)
	write.SetConnMaxLifetime(0)
	// Connect now: this creates the file and switches it to WAL before the
	// read pool opens it, and reports an unusable path at start-up.
	if err := write.PingContext(ctx); err != nil {
		_ = write.Close()
		return nil, translate("open "+path, err)
	}

	read, err := sql.Open("sqlite", fmt.Sprintf(
		"%s?_busy_timeout=%d&_foreign_keys=1&_query_only=1", path, ms))
	if err != nil {
		_ = write.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	read.SetMaxOpenConns(4)
	read.SetMaxIdleConns(4)
	s := &Store{write: write, read: read}
	s.sessionStatus.InTx = s.inSessionTx
	s.userChanges.InTx = s.inUserTx
	return s, nil
}

// Ping checks that the database file can be read.
func (s *Store) Ping(ctx context.Context) error {
	var n int
	return s.translate("ping", s.read.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema").Scan(&n))
}

// Close closes both pools. It is idempotent; every method called afterwards
// fails with CodeUnavailable.
func (s *Store) Close() {
	s.closed.Store(true)
	_ = s.read.Close()
	_ = s.write.Close()
}

// inTx runs fn in a write transaction (BEGIN IMMEDIATE), committing when it
// returns nil. Errors are translated; a *domain.Error returned by fn passes
// through unchanged.
func (s *Store) inTx(ctx context.Context, op string, fn func(tx *sql.Tx) error) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return s.translate(op, err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return s.translate(op, err)
	}
	return s.translate(op, tx.Commit())
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface {
	Scan(dest ...any) error
}

// querier is a pool or a transaction.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// micros is how times are stored: unix microseconds, which truncates to
// the precision Postgres keeps, so both stores return the same times.
func micros(t time.Time) int64 { return t.UnixMicro() }

// fromMicros is the stored time in UTC.
func fromMicros(v int64) time.Time { return time.UnixMicro(v).UTC() }
