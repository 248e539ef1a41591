package postgres

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"

	"github.com/tally-dev/tally/persistence"
)

// errClosed is the cause reported by a store used after Close.
var errClosed = errors.New("postgres store is closed")

// driverErrors tells pgx's errors apart for persistence.DriverErrors.
var driverErrors = persistence.DriverErrors{Name: "postgres", Unavailable: unavailable, RowFault: rowFault}

// translate maps a driver error to the domain's vocabulary at this edge
// (persistence.DriverErrors.Translate).
func translate(op string, err error) error { return driverErrors.Translate(op, err) }

// rowFault says which server errors are about the rows of the statement,
// not the server: classes 22 (data exception) and 23 (integrity constraint
// violation).
func rowFault(err error) (persistence.RowFault, bool) {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return persistence.RowFault{}, false
	}
	switch code := pgErr.Code; {
	case code == "23505": // unique_violation
		msg := "the record already exists"
		if pgErr.ConstraintName == "sessions_pkey" {
			msg = "a session with this id already exists"
		}
		return persistence.RowFault{Conflict: msg}, true
	case clientDataCodes[code]:
		// The client sent what the database cannot keep.
		return persistence.RowFault{Invalid: pgErr.Message}, true
	case strings.HasPrefix(code, "22"), strings.HasPrefix(code, "23"):
		return persistence.RowFault{}, true // a bug of ours about one row
	}
	return persistence.RowFault{}, false
}

// clientDataCodes are the data exceptions that only a client's value can
// cause: characters outside the database's encoding (NUL included) and
// strings longer than a column allows.
var clientDataCodes = map[string]bool{
	"22021": true, // character_not_in_repertoire (e.g. NUL in text)
	"22P05": true, // untranslatable_character
	"22001": true, // string_data_right_truncation
}

// unavailable reports whether err means the database could not be reached
// or could not serve the request right now, as opposed to a request it
// refused. Retrying later may succeed.
func unavailable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, errClosed) || errors.Is(err, puddle.ErrClosedPool) ||
		errors.Is(err, pgconn.ErrConnClosed) || pgconn.Timeout(err) {
		return true
	}
	// A server's answer is decided by its SQLSTATE, before the connection
	// checks below: a ConnectError may wrap one (e.g. a failed login, which
	// is a configuration mistake, not an outage).
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		code := pgErr.Code
		switch {
		case strings.HasPrefix(code, "08"): // connection exception
			return true
		case strings.HasPrefix(code, "53"): // insufficient resources: too many connections, disk full, out of memory
			return true
		case code == "57P01", code == "57P02", code == "57P03": // admin/crash shutdown, cannot connect now
			return true
		case code == "57014": // query canceled (statement_timeout)
			return true
		case code == "40001", code == "40P01": // serialization failure, deadlock: nothing committed, retry
			return true
		}
		return false
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		return true
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var netErr net.Error
	return errors.As(err, &netErr)
}
