package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/persistence/postgres"
)

// `tally verify` needs no secrets of the service, and fails when a usage
// reset has lost its audit event: the reset's only other trace is the
// anchor and version it left.
func TestVerifyFindsAResetWithoutItsEvent(t *testing.T) {
	url := testenv.PostgresURL(t)
	store, err := postgres.Open(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	if err := store.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	if _, err := store.EnsureUser(t.Context(), "alice", now); err != nil {
		t.Fatal(err)
	}
	reset := now.Add(time.Hour)
	if _, err := store.PutUser(t.Context(), persistence.UserChange{ID: "alice", Anchor: &reset, Now: reset,
		Kind: domain.EventResetUsage, By: domain.Origin{Admin: "ops", RequestID: "req-1"}}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"TALLY_DATABASE_URL": url} // no TALLY_JWT_SECRET, no TALLY_ADMIN_TOKEN
	verify := func() (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), []string{"verify"}, func(k string) string { return env[k] }, &out, io.Discard)
		return out.String(), err
	}
	if out, err := verify(); err != nil || !strings.Contains(out, "OK: no violations") || !strings.Contains(out, "1 audit events") {
		t.Fatalf("verify of a clean store: %v\n%s", err, out)
	}

	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if tag, err := conn.Exec(t.Context(), `DELETE FROM user_events WHERE kind = 'reset_usage'`); err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("delete the reset's event: %v %v", tag, err)
	}
	out, err := verify()
	if err == nil || !strings.Contains(err.Error(), "1 violation(s)") || !strings.Contains(out, "user_events") || !strings.Contains(out, "user=alice") {
		t.Fatalf("verify after the reset's event was deleted: %v\n%s", err, out)
	}
}
