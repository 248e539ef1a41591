package testenv_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tally-dev/tally/internal/testenv"
)

// TestPrivatePostgresStopStart stops the private server in the middle of a
// pool's life and starts it again on the same port: the committed row
// survives the immediate stop, queries fail while it is down, and the same
// pool recovers without being rebuilt.
func TestPrivatePostgresStopStart(t *testing.T) {
	pg := testenv.StartPostgres(t)
	ctx := t.Context()
	pool, err := pgxpool.New(ctx, pg.CreateDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := pool.Exec(ctx, `CREATE TABLE t (v int); INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}

	pg.Stop(t)
	down, cancel := context.WithTimeout(ctx, 2*time.Second)
	err = pool.QueryRow(down, `SELECT count(*) FROM t`).Scan(new(int))
	cancel()
	if err == nil {
		t.Fatal("a query succeeded while the server was stopped")
	}

	pg.Start(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM t`).Scan(&n)
		if err == nil {
			if n != 1 {
				t.Fatalf("after restart the table has %d rows, want 1", n)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pool did not recover after Start: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := pg.URL("postgres"); got != "postgres://postgres@"+pg.Addr()+"/postgres?sslmode=disable" {
		t.Errorf("URL(postgres) = %s", got)
	}
}
