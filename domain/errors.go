package domain

import (
	"errors"
	"fmt"
)

// Code is a machine-readable error code: the "error" field of every error
// body. The transport maps each code to one HTTP status in one place.
type Code string

// The codes Tally answers with. Anything else is CodeInternal.
const (
	CodeBadRequest          Code = "bad_request"  // malformed JSON, unknown fields, trailing data
	CodeUnauthorized        Code = "unauthorized" // missing, invalid or expired token
	CodeForbidden           Code = "forbidden"    // a user token on an admin path
	CodeSessionLimit        Code = "session_limit_exceeded"
	CodeTranscriptionLimit  Code = "transcription_limit_exceeded"
	CodeFileSizeLimit       Code = "file_size_limit_exceeded"
	CodeNotFound            Code = "not_found"
	CodeConflict            Code = "conflict"             // a state conflict (complete twice with another duration…)
	CodeIdempotencyConflict Code = "idempotency_conflict" // same Idempotency-Key, another body
	CodeTooLarge            Code = "payload_too_large"
	CodeRequestTimeout      Code = "request_timeout"   // the client did not send its body within the read timeout
	CodeValidation          Code = "validation_failed" // invalid values; Fields lists them
	CodeUnavailable         Code = "unavailable"       // infrastructure failure; retry later
	CodeTimeout             Code = "timeout"           // the user's actor did not answer in time
	CodeInternal            Code = "internal"          // a bug
)

// Error is a coded error with a message that is safe to show to a client.
// Err, when set, is the cause; it is logged, never sent.
type Error struct {
	Code    Code
	Message string
	Fields  []FieldError
	Err     error
}

// FieldError names one invalid input value and why it is invalid.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf builds a coded error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Unavailable wraps an infrastructure failure (a database or cache that
// cannot be reached). Clients get 503 with Retry-After; the cause is logged.
func Unavailable(what string, cause error) *Error {
	return &Error{Code: CodeUnavailable, Message: what + " is unavailable; retry later", Err: cause}
}

// ErrShed is the cause of a request refused, before any work was done for
// it, because a queue it would wait in is full (load shedding): a 503 with
// Retry-After, not a failure worth a log line each.
var ErrShed = errors.New("load shed: too many requests in flight")

// Shed answers a request that a full queue refused; what names the queue.
func Shed(what string) *Error {
	return &Error{Code: CodeUnavailable, Message: what + "; retry later", Err: ErrShed}
}

// ErrNotFound is returned by lookups of things that do not exist, or that
// belong to someone else (the caller must not learn which).
var ErrNotFound = &Error{Code: CodeNotFound, Message: "not found"}

// LimitExceededError is a rejection by a plan limit. It carries everything
// the client shows: which limit, on which plan, the usage and the period.
type LimitExceededError struct {
	Code   Code
	Plan   string
	Usage  int64 // sessions, whole minutes, or the requested file size in MB
	Limit  Limit
	Period Period
}

func (e *LimitExceededError) Error() string { return e.Message() }

// Message is the client-facing message; the two admission messages are
// fixed by the contract (the existing web client shows them).
func (e *LimitExceededError) Message() string {
	switch e.Code {
	case CodeSessionLimit:
		return fmt.Sprintf("Session limit exceeded: %d", e.Limit)
	case CodeTranscriptionLimit:
		return fmt.Sprintf("Total minutes limit exceeded: %d", e.Limit)
	default:
		return fmt.Sprintf("File size limit exceeded: %d MB", e.Limit)
	}
}

// ErrorCode returns the code of err: the code of the first *Error or
// *LimitExceededError in its chain, CodeInternal otherwise (an unknown error
// is a bug, never a client mistake).
func ErrorCode(err error) Code {
	if err == nil {
		return ""
	}
	var le *LimitExceededError
	if errors.As(err, &le) {
		return le.Code
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// ErrorMessage returns the client-safe message of err; internal errors get a
// generic message so that no detail of a bug leaks.
func ErrorMessage(err error) string {
	var le *LimitExceededError
	if errors.As(err, &le) {
		return le.Message()
	}
	var e *Error
	if errors.As(err, &e) && e.Code != CodeInternal {
		return e.Message
	}
	return "internal error"
}
