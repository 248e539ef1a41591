package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"time"
)

// Migrations are append-only: a released file is never edited, a change is
// a new file with the next number (NNNN_what.sql). They are this dialect's
// twins of the Postgres migrations and keep the same numbers.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// migration is one numbered schema change.
type migration struct {
	version int
	name    string // file name without .sql, recorded in schema_migrations
	sql     string
}

// loadMigrations reads the numbered migrations in order and checks that the
// numbers run 1, 2, 3… without gaps or duplicates, so that a file lost or
// numbered twice in a merge stops Migrate instead of being skipped.
func loadMigrations(fsys fs.FS, dir string) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".sql")
		if !ok || e.IsDir() {
			continue
		}
		num, _, _ := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if err != nil || v < 1 {
			return nil, fmt.Errorf("migration %s: name must start with a positive number, as in 0001_init.sql", e.Name())
		}
		b, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: name, sql: string(b)})
	}
	// ReadDir sorts by name and the numbers are zero-padded, but check the
	// sequence rather than trust the padding.
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: expected number %d; migrations must be numbered 1, 2, 3… without gaps or duplicates", m.name, i+1)
		}
	}
	return ms, nil
}

// Migrate applies the migrations not yet recorded in schema_migrations, in
// order, in one write transaction: BEGIN IMMEDIATE makes another process
// migrating the same file wait for it, then find nothing left to do.
func (s *Store) Migrate(ctx context.Context) error {
	ms, err := loadMigrations(migrationFiles, "migrations")
	if err != nil {
		return fmt.Errorf("sqlite: %w", err)
	}
	return s.inTx(ctx, "migrate", func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `
			CREATE TABLE IF NOT EXISTS schema_migrations (
			    version    INTEGER PRIMARY KEY,
			    name       TEXT    NOT NULL,
			    applied_at INTEGER NOT NULL
			) STRICT`); err != nil {
			return err
		}
		applied, err := appliedMigrations(ctx, tx)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if name, ok := applied[m.version]; ok {
				if name != m.name {
					return fmt.Errorf("migration %d is recorded as %q but this build has %q; migrations must never be renumbered", m.version, name, m.name)
				}
				continue
			}
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("apply %s: %w", m.name, err)
			}
			if _, err := tx.ExecContext(ctx,
				"INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
				m.version, m.name, micros(time.Now())); err != nil {
				return err
			}
		}
		// Versions recorded here but unknown to this build come from a
		// newer build; migrations are additive, so an older build may run.
		return nil
	})
}

func appliedMigrations(ctx context.Context, tx *sql.Tx) (map[int]string, error) {
	rows, err := tx.QueryContext(ctx, "SELECT version, name FROM schema_migrations")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	applied := make(map[int]string)
	for rows.Next() {
		var (
			v    int
			name string
		)
		if err := rows.Scan(&v, &name); err != nil {
			return nil, err
		}
		applied[v] = name
	}
	return applied, rows.Err()
}
