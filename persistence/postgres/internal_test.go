package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/persistence"
)

func TestTranslate(t *testing.T) {
	pg := func(code string) error { return &pgconn.PgError{Code: code, Message: "m"} }
	tests := []struct {
		name    string
		err     error
		want    domain.Code
		rowData bool // marked persistence.ErrRequestData: the batch may be split
	}{
		{"connection failure 08006", pg("08006"), domain.CodeUnavailable, false},
		{"connection does not exist 08003", pg("08003"), domain.CodeUnavailable, false},
		{"admin shutdown 57P01", pg("57P01"), domain.CodeUnavailable, false},
		{"crash shutdown 57P02", pg("57P02"), domain.CodeUnavailable, false},
		{"cannot connect now 57P03", pg("57P03"), domain.CodeUnavailable, false},
		{"too many connections 53300", pg("53300"), domain.CodeUnavailable, false},
		{"disk full 53100", pg("53100"), domain.CodeUnavailable, false},
		{"statement timeout 57014", pg("57014"), domain.CodeUnavailable, false},
		{"deadlock 40P01", pg("40P01"), domain.CodeUnavailable, false},
		{"unique violation", pg("23505"), domain.CodeConflict, true},
		{"undefined table (a bug)", pg("42P01"), domain.CodeInternal, false},
		{"check violation (a bug)", pg("23514"), domain.CodeInternal, true},
		{"NUL in text 22021", pg("22021"), domain.CodeValidation, true},
		{"untranslatable character 22P05", pg("22P05"), domain.CodeValidation, true},
		{"string too long 22001", pg("22001"), domain.CodeValidation, true},
		{"numeric overflow 22003 (a bug)", pg("22003"), domain.CodeInternal, true},
		{"EOF", fmt.Errorf("read: %w", io.EOF), domain.CodeUnavailable, false},
		{"unexpected EOF", io.ErrUnexpectedEOF, domain.CodeUnavailable, false},
		{"connection refused", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, domain.CodeUnavailable, false},
		{"connection reset", fmt.Errorf("write: %w", syscall.ECONNRESET), domain.CodeUnavailable, false},
		{"deadline", context.DeadlineExceeded, domain.CodeUnavailable, false},
		{"canceled", fmt.Errorf("query: %w", context.Canceled), domain.CodeUnavailable, false},
		{"closed pool", puddle.ErrClosedPool, domain.CodeUnavailable, false},
		{"closed conn", pgconn.ErrConnClosed, domain.CodeUnavailable, false},
		{"closed store", errClosed, domain.CodeUnavailable, false},
		{"not found passes through", domain.ErrNotFound, domain.CodeNotFound, false},
		{"conflict passes through", domain.Errorf(domain.CodeConflict, "no"), domain.CodeConflict, false},
		{"anything else is a bug", errors.New("boom"), domain.CodeInternal, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := translate("op", tc.err)
			if code := domain.ErrorCode(got); code != tc.want {
				t.Fatalf("translate(%v) = %v (code %q), want code %q", tc.err, got, code, tc.want)
			}
			// The cause stays reachable for logs and errors.Is.
			if !errors.Is(got, tc.err) {
				t.Fatalf("translate(%v) = %v, which does not wrap the cause", tc.err, got)
			}
			if row := errors.Is(got, persistence.ErrRequestData); row != tc.rowData {
				t.Fatalf("translate(%v): marked as a request's data = %v, want %v", tc.err, row, tc.rowData)
			}
		})
	}
	if translate("op", nil) != nil {
		t.Fatal("translate(nil) != nil")
	}
}

// The embedded migrations load and start with 0001_init (the loader's
// rules are tested in package persistence).
func TestEmbeddedMigrations(t *testing.T) {
	ms, err := persistence.LoadMigrations(migrationFiles, "migrations")
	if err != nil {
		t.Fatalf("embedded migrations: %v", err)
	}
	if len(ms) == 0 || ms[0].Name != "0001_init" || ms[0].Version != 1 {
		t.Fatalf("embedded migrations start with %+v, want 0001_init", ms)
	}
}

func TestLockOrder(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	req := func(user string, month int) persistence.AdmitRequest {
		return persistence.AdmitRequest{Session: domain.Session{UserID: user, PeriodStart: at.AddDate(0, month, 0)}}
	}
	// One user's requests for one period keep their relative order (each
	// sees the previous one's count); users and periods come sorted.
	reqs := []persistence.AdmitRequest{req("b", 0), req("a", 1), req("b", 0), req("a", 0), req("a", 1), req("b", 0)}
	got := lockOrder(reqs)
	want := []int{3, 1, 4, 0, 2, 5}
	if !slices.Equal(got, want) {
		t.Fatalf("lockOrder = %v, want %v", got, want)
	}
}

// TALLY_DATABASE_MAX_CONNS sizes the pool, unless the URL's own
// pool_max_conns says otherwise.
func TestMaxConns(t *testing.T) {
	url := testenv.PostgresURL(t)
	s, err := Open(context.Background(), url, MaxConns(3))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.pool.Config().MaxConns; got != 3 {
		t.Errorf("MaxConns(3): pool of %d", got)
	}
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	s2, err := Open(context.Background(), url+sep+"pool_max_conns=5", MaxConns(3))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got := s2.pool.Config().MaxConns; got != 5 {
		t.Errorf("pool_max_conns=5 in the URL with MaxConns(3): pool of %d", got)
	}
}
