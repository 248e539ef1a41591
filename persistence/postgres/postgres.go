// Package postgres is Tally's source of truth: persistence.Store on
// PostgreSQL with pgx v5.
//
// Every admission is decided by a fenced, conditional write in Postgres, so
// that limits stay exact whatever runs in front of the database: several
// service processes, two activations of one user's actor, or retries. Driver
// errors are translated here (see errors.go); nothing above this package
// sees pgx.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

var _ persistence.Store = (*Store)(nil)

// sessionStatus and userChanges are embedded in Store under unexported
// names: they provide MarkUploading, CompleteSession and FailSession
// (persistence/sessions.go) and PutUser (persistence/users.go) without
// exporting a field.
type (
	sessionStatus = persistence.SessionStatus
	userChanges   = persistence.UserChanges
)

// Store is persistence.Store on a pgx connection pool.
type Store struct {
	sessionStatus // on inSessionTx (sessions.go)
	userChanges   // on inUserTx (events.go)
	pool          *pgxpool.Pool
	// closed makes Migrate, which dials its own connection, fail like the
	// pool-backed methods once the store is closed.
	closed atomic.Bool
	// pruneBatch is how many idempotency keys one pruning statement
	// deletes at most.
	pruneBatch int
	// secondPasses counts group commits that needed the second
	// transaction of admitBulk (a usage row missing without a
	// FirstOfPeriod hint), so that tests can tell the hint works.
	secondPasses atomic.Int64
}

// Open connects to the database at url (postgres://…) and checks that it
// answers. It does not migrate; call Migrate. An unreachable server is a
// CodeUnavailable *domain.Error; a malformed URL is a plain error.
func Open(ctx context.Context, url string, opts ...Option) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres: parse database URL: %w", err)
	}
	for _, o := range opts {
		o(url, cfg)
	}
	// Group commits run as implicit transactions (a pipeline ending in one
	// Sync, admit_bulk.go), which take the session's default isolation, and
	// the fences rely on READ COMMITTED: state it instead of trusting the
	// server's configuration.
	cfg.ConnConfig.RuntimeParams["default_transaction_isolation"] = "read committed"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, translate("connect", err)
	}
	// The pool dials lazily; ping now so that a wrong address or a server
	// that is down is reported at start-up, not at the first request.
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, translate("connect", err)
	}
	s := &Store{pool: pool, pruneBatch: defaultPruneBatch}
	s.sessionStatus.InTx = s.inSessionTx
	s.userChanges.InTx = s.inUserTx
	return s, nil
}

// Option adjusts the pool's configuration in Open.
type Option func(url string, cfg *pgxpool.Config)

// MaxConns sizes the connection pool, unless the URL sets pool_max_conns
// itself (an operator's explicit setting wins over the service's default).
func MaxConns(n int) Option {
	return func(url string, cfg *pgxpool.Config) {
		if n > 0 && !strings.Contains(url, "pool_max_conns=") {
			cfg.MaxConns = int32(n)
		}
	}
}

// Ping checks that the database answers a query.
func (s *Store) Ping(ctx context.Context) error {
	return translate("ping", s.pool.Ping(ctx))
}

// Close closes the pool, waiting for connections in use to be returned. It
// is idempotent; every method called afterwards fails with CodeUnavailable.
func (s *Store) Close() {
	s.closed.Store(true)
	s.pool.Close()
}

// querier is what both the pool and a transaction offer, so that a read
// can run on its own or inside a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// inTx runs fn in a transaction, committing when it returns nil. Errors are
// translated; a *domain.Error returned by fn passes through unchanged.
//
// The isolation level is stated rather than left to the server's default:
// the fences rely on READ COMMITTED's rules (each statement sees the latest
// committed rows; a locked row is re-read once its writer commits).
func (s *Store) inTx(ctx context.Context, op string, fn func(tx pgx.Tx) error) error {
	return translate(op, pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, fn))
}

// ts normalizes a time on its way in: UTC at the microsecond precision of
// timestamptz, so that what is written is exactly what is read back.
func ts(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// notFound turns "no row" into domain.ErrNotFound and leaves other errors
// for translate.
func notFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return domain.ErrNotFound
	}
	return err
}
