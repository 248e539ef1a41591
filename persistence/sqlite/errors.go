package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	msqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

// errClosed is the cause reported by a store used after Close.
var errClosed = errors.New("sqlite store is closed")

// translate maps err like translate does, and reports any failure of a
// closed store as CodeUnavailable.
func (s *Store) translate(op string, err error) error {
	if err != nil && s.closed.Load() {
		var de *domain.Error
		if !errors.As(err, &de) {
			err = fmt.Errorf("%w: %w", errClosed, err)
		}
	}
	return translate(op, err)
}

// driverErrors tells the driver's errors apart for
// persistence.DriverErrors.
var driverErrors = persistence.DriverErrors{Name: "sqlite", Unavailable: unavailable, RowFault: rowFault}

// translate maps a driver error to the domain's vocabulary at this edge
// (persistence.DriverErrors.Translate): a locked or failing database
// becomes CodeUnavailable, a duplicate key CodeConflict.
func translate(op string, err error) error { return driverErrors.Translate(op, err) }

// rowFault says which errors are about the rows of the statement: a
// constraint one row violates, as Postgres's class 23.
func rowFault(err error) (persistence.RowFault, bool) {
	var se *msqlite.Error
	if !errors.As(err, &se) || se.Code()&0xff != sqlite3.SQLITE_CONSTRAINT {
		return persistence.RowFault{}, false
	}
	if se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE {
		return persistence.RowFault{Conflict: "the record already exists"}, true
	}
	return persistence.RowFault{}, true
}

// unavailable reports whether err means the database could not serve the
// request right now: a lock still held after busy_timeout, an I/O failure,
// a full disk, a closed store or an expired context. Retrying later may
// succeed.
func unavailable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, errClosed) || errors.Is(err, sql.ErrConnDone) {
		return true
	}
	var se *msqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	// Extended result codes carry the primary code in their low byte.
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL,
		sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_INTERRUPT:
		return true
	}
	return false
}
