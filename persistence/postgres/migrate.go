package postgres

import (
	"context"
	"embed"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/persistence"
)

// Migrations are append-only: a released file is never edited, a change is
// a new file with the next number (NNNN_what.sql).
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrationLock is the pg_advisory_lock key that serializes Migrate across
// processes ("tally" in ASCII). Advisory locks are per database.
const migrationLock int64 = 0x74616c6c79

// Migrate applies the migrations not yet recorded in schema_migrations, in
// order, each in its own transaction with its record. It holds an advisory
// lock on a dedicated connection meanwhile, so processes starting together
// take turns: the first applies, the others find nothing left to do.
// Closing that connection releases the lock whatever happened.
func (s *Store) Migrate(ctx context.Context) error {
	if s.closed.Load() {
		return translate("migrate", errClosed)
	}
	ms, err := persistence.LoadMigrations(migrationFiles, "migrations")
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig)
	if err != nil {
		return translate("migrate: connect", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()

	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrationLock); err != nil {
		return translate("migrate: lock", err)
	}
	if _, err := conn.Exec(ctx, `
		CREATE TABLE IF NOT EXISTS schema_migrations (
		    version    integer     PRIMARY KEY,
		    name       text        NOT NULL,
		    applied_at timestamptz NOT NULL DEFAULT now()
		)`); err != nil {
		return translate("migrate: create schema_migrations", err)
	}
	applied, err := appliedMigrations(ctx, conn)
	if err != nil {
		return translate("migrate: read schema_migrations", err)
	}
	for _, m := range ms {
		if name, ok := applied[m.Version]; ok {
			if name != m.Name {
				return fmt.Errorf("postgres: migrate: migration %d is recorded as %q but this build has %q; migrations must never be renumbered", m.Version, name, m.Name)
			}
			continue
		}
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			// No arguments: pgx sends the file with the simple protocol,
			// which runs every statement in it.
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name)
			return err
		})
		if err != nil {
			return translate("migrate: apply "+m.Name, err)
		}
	}
	// Versions recorded here but unknown to this build come from a newer
	// build; migrations are additive, so an older build may still run.
	return nil
}

func appliedMigrations(ctx context.Context, conn *pgx.Conn) (map[int]string, error) {
	rows, err := conn.Query(ctx, "SELECT version, name FROM schema_migrations")
	if err != nil {
		return nil, err
	}
	applied := make(map[int]string)
	var (
		v    int
		name string
	)
	_, err = pgx.ForEachRow(rows, []any{&v, &name}, func() error {
		applied[v] = name
		return nil
	})
	return applied, err
}
