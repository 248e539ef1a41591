package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"time"

	"github.com/tally-dev/tally/persistence"
)

// Migrations are append-only: a released file is never edited, a change is
// a new file with the next number (NNNN_what.sql). They are this dialect's
// twins of the Postgres migrations and keep the same numbers.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrate applies the migrations not yet recorded in schema_migrations, in
// order, in one write transaction: BEGIN IMMEDIATE makes another process
// migrating the same file wait for it, then find nothing left to do.
func (s *Store) Migrate(ctx context.Context) error {
	ms, err := persistence.LoadMigrations(migrationFiles, "migrations")
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
			if name, ok := applied[m.Version]; ok {
				if name != m.Name {
					return fmt.Errorf("migration %d is recorded as %q but this build has %q; migrations must never be renumbered", m.Version, name, m.Name)
				}
				continue
			}
			if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
				return fmt.Errorf("apply %s: %w", m.Name, err)
			}
			if _, err := tx.ExecContext(ctx,
				"INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
				m.Version, m.Name, micros(time.Now())); err != nil {
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
