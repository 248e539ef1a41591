package persistence

import "errors"

// ErrRequestData marks a store error caused by the data of the requests it
// was given — a value the database refuses (a character it cannot store, a
// string too long) or a constraint one row violates — rather than by the
// store's state or reachability. The statement failed, so nothing of that
// call was committed: a caller that batched several requests into one call
// may run them again apart to find the one at fault, and answer the others
// as if it had not been there (actors/writer.go does).
var ErrRequestData = errors.New("the store refused the data of a request")
