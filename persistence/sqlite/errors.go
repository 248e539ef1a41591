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

// translate maps a driver error to the domain's vocabulary at this edge:
// a locked or failing database becomes CodeUnavailable (503, retry later),
// a duplicate key becomes CodeConflict, and anything else stays an error
// wrapped with the operation's name (a 500: it is a bug). Errors that are
// already *domain.Error pass through.
func translate(op string, err error) error {
	if err == nil {
		return nil
	}
	var de *domain.Error
	if errors.As(err, &de) {
		return err
	}
	if unavailable(err) {
		return domain.Unavailable("database", fmt.Errorf("sqlite: %s: %w", op, err))
	}
	var se *msqlite.Error
	if errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_CONSTRAINT {
		// A constraint one row violates, as Postgres's class 23: marked so
		// that a batch can be retried apart (persistence.ErrRequestData).
		rowErr := fmt.Errorf("sqlite: %s: %w: %w", op, persistence.ErrRequestData, err)
		if se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE {
			return &domain.Error{Code: domain.CodeConflict, Message: "the record already exists", Err: rowErr}
		}
		return rowErr
	}
	return fmt.Errorf("sqlite: %s: %w", op, err)
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
