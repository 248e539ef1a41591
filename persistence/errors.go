package persistence

import (
	"errors"
	"fmt"

	"github.com/tally-dev/tally/domain"
)

// ErrRequestData marks a store error caused by the data of the requests it
// was given — a value the database refuses (a character it cannot store, a
// string too long) or a constraint one row violates — rather than by the
// store's state or reachability. The statement failed, so nothing of that
// call was committed: a caller that batched several requests into one call
// may run them again apart to find the one at fault, and answer the others
// as if it had not been there (actors/writer.go does).
var ErrRequestData = errors.New("the store refused the data of a request")

// ErrNewerEpoch is the cause of a ClaimPartition refused because the
// partition's stored epoch is higher than the one claimed: a newer owner
// has claimed it since, and the caller must not take it.
var ErrNewerEpoch = errors.New("a newer owner has claimed the partition")

// ErrSingleNode is the cause of a cluster operation (ClaimPartition, an
// admission with an Epoch) refused by a store that keeps no partition
// epochs: the embedded store serves one process and cannot fence others.
var ErrSingleNode = errors.New("this store is single-node only: it keeps no partition epochs")

// DriverErrors is how one database driver's errors are told apart. Each
// store says that much about its driver; Translate, written once for both
// stores, turns the answer into the domain's vocabulary, so that the same
// failure is the same *domain.Error whichever store runs (docs/contract.md,
// error model).
type DriverErrors struct {
	// Name prefixes every message ("postgres", "sqlite").
	Name string
	// Unavailable reports whether err means the database could not be
	// reached or could not serve the request right now, as opposed to a
	// request it refused. Retrying later may succeed.
	Unavailable func(err error) bool
	// RowFault reports whether err is about the rows of the statement
	// rather than the database (a constraint one row violates, a value it
	// cannot keep), and if so which.
	RowFault func(err error) (RowFault, bool)
}

// RowFault is what a driver says of an error caused by the data of a
// statement's rows. With neither field set it is a bug of ours about one
// row: a 500 for that row alone.
type RowFault struct {
	// Conflict, when set, is the message of a duplicate key (CodeConflict).
	Conflict string
	// Invalid, when set, is what the database said of a value a client
	// sent that it cannot store (CodeValidation). Request validation
	// refuses such values first; this is the backstop.
	Invalid string
}

// Translate maps a driver error to the domain's vocabulary at the store's
// edge: infrastructure failures become CodeUnavailable (503, retry later),
// a duplicate key becomes CodeConflict, and anything else stays an error
// wrapped with the operation's name (a 500: it is a bug). Errors about the
// rows of a statement are marked ErrRequestData, so that a batch can be
// retried apart and fail only the request at fault. Errors that are
// already *domain.Error pass through.
func (d DriverErrors) Translate(op string, err error) error {
	if err == nil {
		return nil
	}
	var de *domain.Error
	if errors.As(err, &de) {
		return err
	}
	if d.Unavailable(err) {
		return domain.Unavailable("database", fmt.Errorf("%s: %s: %w", d.Name, op, err))
	}
	if f, ok := d.RowFault(err); ok {
		rowErr := fmt.Errorf("%s: %s: %w: %w", d.Name, op, ErrRequestData, err)
		switch {
		case f.Conflict != "":
			return &domain.Error{Code: domain.CodeConflict, Message: f.Conflict, Err: rowErr}
		case f.Invalid != "":
			return &domain.Error{Code: domain.CodeValidation, Message: "invalid request",
				Fields: []domain.FieldError{{Field: "body", Message: "contains a value the database cannot store (" + f.Invalid + ")"}},
				Err:    rowErr}
		}
		return rowErr
	}
	return fmt.Errorf("%s: %s: %w", d.Name, op, err)
}
