package verify

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // registers the "sqlite" database/sql driver

	"github.com/tally-dev/tally/persistence/sqlite"
)

// source is the store under audit, Postgres or SQLite, behind
// database/sql so that both run the same queries. Times are compared as
// unix microseconds, the precision both stores keep (and the unit of the
// Redis keys).
type source struct {
	db    *sql.DB
	label string
	// micros turns a timestamp column into unix microseconds.
	micros func(col string) string
	// jsonInt reads an integer member of a JSON column (NULL when it is
	// missing or null).
	jsonInt func(col, key string) string
	// text reads a column (an array, a JSON document) as its text.
	text func(col string) string
	// snapshot is how the audit's read transaction begins: all its queries
	// must see one state of the store.
	snapshot *sql.TxOptions
	// setup runs first in the audit's transaction.
	setup []string
	// existing returns the keys that have a usage row now.
	existing func(ctx context.Context, keys []periodKey) (map[periodKey]bool, error)
}

// periodKey names one (user, period).
type periodKey struct {
	userID      string
	startMicros int64
}

func openSource(ctx context.Context, opts Options) (*source, error) {
	if opts.DatabaseURL != "" {
		return openPostgres(ctx, opts.DatabaseURL)
	}
	return openSQLite(ctx, opts.DataDir)
}

func openPostgres(ctx context.Context, dsn string) (*source, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("verify: postgres: %w", err)
	}
	db.SetMaxOpenConns(2)
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("verify: postgres: connect: %w", err)
	}
	label := "postgres"
	if u, err := url.Parse(dsn); err == nil {
		label += " " + u.Host + u.Path // never the password
	}
	s := &source{
		db:       db,
		label:    label,
		micros:   func(col string) string { return "(extract(epoch FROM " + col + ") * 1000000)::bigint" },
		jsonInt:  func(col, key string) string { return "(" + col + " ->> '" + key + "')::bigint" },
		text:     func(col string) string { return col + "::text" },
		snapshot: &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true},
		// The per-period aggregate sorts every session; with the default
		// 4MB it spills to disk and takes twice as long on a million rows.
		setup: []string{"SET LOCAL work_mem = '64MB'"},
	}
	// 'epoch' + n microseconds compares period_start as it is stored, so
	// the primary key serves the lookup.
	s.existing = func(ctx context.Context, keys []periodKey) (map[periodKey]bool, error) {
		users := make([]string, len(keys))
		starts := make([]int64, len(keys))
		for i, k := range keys {
			users[i], starts[i] = k.userID, k.startMicros
		}
		return s.collectKeys(ctx, `
			SELECT k.u, k.p FROM unnest($1::text[], $2::bigint[]) AS k(u, p)
			WHERE EXISTS (SELECT 1 FROM usage
			              WHERE user_id = k.u
			                AND period_start = 'epoch'::timestamptz + k.p * interval '1 microsecond')`,
			users, starts)
	}
	return s, nil
}

func openSQLite(ctx context.Context, dataDir string) (*source, error) {
	dir, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, fmt.Errorf("verify: data directory %q: %w", dataDir, err)
	}
	path := filepath.Join(dir, sqlite.FileName)
	// Opening would create an empty database where there is none; an audit
	// of the wrong directory must say so instead of passing.
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("verify: no embedded store at %s (TALLY_DATA_DIR=%s)", path, dataDir)
	}
	// A file: URI, so that SQLite applies mode=ro: the audit can never
	// write to the store, even by mistake.
	dsn := (&url.URL{Scheme: "file", Path: path}).String() + "?mode=ro&_busy_timeout=5000"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("verify: sqlite %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("verify: sqlite %s: %w", path, err)
	}
	s := &source{
		db:      db,
		label:   "sqlite " + path,
		micros:  func(col string) string { return col }, // stored as unix microseconds
		jsonInt: func(col, key string) string { return "(" + col + " ->> '$." + key + "')" },
		text:    func(col string) string { return col },
		// A read transaction sees one snapshot of a WAL database.
		snapshot: nil,
	}
	s.existing = func(ctx context.Context, keys []periodKey) (map[periodKey]bool, error) {
		pairs := make([][2]any, len(keys))
		for i, k := range keys {
			pairs[i] = [2]any{k.userID, k.startMicros}
		}
		arg, err := json.Marshal(pairs)
		if err != nil {
			return nil, err
		}
		return s.collectKeys(ctx, `
			SELECT j.value ->> 0, j.value ->> 1 FROM json_each(?) AS j
			WHERE EXISTS (SELECT 1 FROM usage WHERE user_id = j.value ->> 0 AND period_start = j.value ->> 1)`,
			string(arg))
	}
	return s, nil
}

func (s *source) name() string { return s.label }

func (s *source) close() { _ = s.db.Close() }

// collectKeys runs a query that returns (user_id, period micros) pairs.
func (s *source) collectKeys(ctx context.Context, query string, args ...any) (map[periodKey]bool, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("verify: look up usage rows: %w", err)
	}
	defer rows.Close()
	found := map[periodKey]bool{}
	for rows.Next() {
		var k periodKey
		if err := rows.Scan(&k.userID, &k.startMicros); err != nil {
			return nil, err
		}
		found[k] = true
	}
	return found, rows.Err()
}

// periodsSQL is one row per (user, period) that has a usage row, sessions,
// or both: the usage row beside the aggregates of the sessions. It is one
// pass over each table, whatever their size.
const periodsSQL = `
WITH s AS (
    SELECT user_id, period_start,
           count(*) AS n,
           count(DISTINCT seq) AS nd,
           min(seq) AS lo,
           max(seq) AS hi,
           CAST(coalesce(sum(duration_seconds) FILTER (WHERE status = 'completed'), 0) AS BIGINT) AS secs,
           count(*) FILTER (WHERE max_sessions >= 0 AND seq > max_sessions) AS over_n,
           coalesce(max(seq) FILTER (WHERE max_sessions >= 0 AND seq > max_sessions), 0) AS over_seq,
           coalesce(min(max_sessions) FILTER (WHERE max_sessions >= 0 AND seq > max_sessions), 0) AS over_limit,
           coalesce(min(id) FILTER (WHERE max_sessions >= 0 AND seq > max_sessions), '') AS over_id,
           count(*) FILTER (WHERE epoch > 0) AS fenced
    FROM sessions
    GROUP BY user_id, period_start
)
SELECT coalesce(u.user_id, s.user_id),
       %s,
       u.user_id IS NOT NULL,
       coalesce(u.sessions, 0), coalesce(u.seconds, 0), coalesce(u.version, 0),
       coalesce(s.n, 0), coalesce(s.nd, 0), coalesce(s.lo, 0), coalesce(s.hi, 0), coalesce(s.secs, 0),
       coalesce(s.over_n, 0), coalesce(s.over_seq, 0), coalesce(s.over_limit, 0), coalesce(s.over_id, ''),
       coalesce(s.fenced, 0)
FROM usage AS u
FULL OUTER JOIN s ON s.user_id = u.user_id AND s.period_start = u.period_start
ORDER BY 1, 2`

// scan reads the store in one snapshot and hands every period to a.
func (s *source) scan(ctx context.Context, a *audit) (err error) {
	tx, err := s.db.BeginTx(ctx, s.snapshot)
	if err != nil {
		return fmt.Errorf("verify: begin a read transaction: %w", err)
	}
	defer func() { _ = tx.Rollback() }() // read-only: nothing to commit
	wrap := func(what string, err error) error {
		return fmt.Errorf("verify: %s (is the schema migrated? `tally migrate`): %w", what, err)
	}

	for _, q := range s.setup {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("verify: %s: %w", q, err)
		}
	}
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM users`).Scan(&a.rep.Users); err != nil {
		return wrap("count users", err)
	}

	rows, err := tx.QueryContext(ctx, fmt.Sprintf(periodsSQL, s.micros("coalesce(u.period_start, s.period_start)")))
	if err != nil {
		return wrap("aggregate usage and sessions", err)
	}
	defer rows.Close()
	for rows.Next() {
		var p period
		if err := rows.Scan(&p.userID, &p.startMicros, &p.hasUsage,
			&p.usageSessions, &p.usageSeconds, &p.version,
			&p.sessions, &p.distinctSeqs, &p.minSeq, &p.maxSeq, &p.completedSeconds,
			&p.over, &p.overMaxSeq, &p.overLimit, &p.overExample, &p.fenced); err != nil {
			return wrap("aggregate usage and sessions", err)
		}
		if err := a.check(ctx, &p); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return wrap("aggregate usage and sessions", err)
	}
	if err := s.scanEpochOrder(ctx, tx, a); err != nil {
		return wrap("compare the sessions' epochs", err)
	}
	if err := s.scanUserEvents(ctx, tx, a); err != nil {
		return wrap("compare users with their audit events", err)
	}
	if err := s.scanSessionEvents(ctx, tx, a); err != nil {
		return wrap("compare sessions with their audit events", err)
	}
	if err := s.scanAlerts(ctx, tx, a); err != nil {
		return wrap("compare usage alerts with their causes", err)
	}
	return nil
}
