package transport

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/tally-dev/tally/domain"
)

// statusOf is the one place an error code becomes an HTTP status. A code
// missing here is a bug and is answered 500.
var statusOf = map[domain.Code]int{
	domain.CodeBadRequest:          http.StatusBadRequest,
	domain.CodeUnauthorized:        http.StatusUnauthorized,
	domain.CodeForbidden:           http.StatusForbidden,
	domain.CodeSessionLimit:        http.StatusForbidden,
	domain.CodeTranscriptionLimit:  http.StatusForbidden,
	domain.CodeFileSizeLimit:       http.StatusForbidden,
	domain.CodeNotFound:            http.StatusNotFound,
	domain.CodeConflict:            http.StatusConflict,
	domain.CodeIdempotencyConflict: http.StatusConflict,
	domain.CodeTooLarge:            http.StatusRequestEntityTooLarge,
	domain.CodeRequestTimeout:      http.StatusRequestTimeout,
	domain.CodeValidation:          http.StatusUnprocessableEntity,
	domain.CodeUnavailable:         http.StatusServiceUnavailable,
	domain.CodeTimeout:             http.StatusGatewayTimeout,
	domain.CodeInternal:            http.StatusInternalServerError,
}

// errorBody is the shape of every error answer; the existing web client
// parses it.
type errorBody struct {
	Detail errorDetail `json:"detail"`
}

type errorDetail struct {
	Error   domain.Code         `json:"error"`
	Message string              `json:"message"`
	Fields  []domain.FieldError `json:"fields,omitempty"`
	// Limit errors carry what the client shows next to the message; the
	// pointer keeps these keys out of every other error.
	*limitDetail
}

type limitDetail struct {
	Plan         string `json:"plan"`
	CurrentUsage int64  `json:"current_usage"`
	Limit        int64  `json:"limit"`
	PeriodStart  string `json:"period_start"`
	ResetsAt     string `json:"resets_at"`
}

// classify turns any error into its status and client-facing body. It is
// pure so that tests and the fuzz target can check the mapping directly.
func classify(err error) (int, errorBody) {
	code := domain.ErrorCode(err)
	msg := domain.ErrorMessage(err)
	if code == domain.CodeInternal {
		// A deadline or cancellation that reached us unwrapped is still
		// not a bug: the caller ran out of time, or went away.
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			code, msg = domain.CodeTimeout, "the request did not finish within its deadline; retry later"
		case errors.Is(err, context.Canceled):
			code, msg = domain.CodeUnavailable, "the request was canceled; retry later"
		}
	}
	status, ok := statusOf[code]
	if !ok || status == http.StatusInternalServerError {
		return http.StatusInternalServerError, errorBody{Detail: errorDetail{Error: domain.CodeInternal, Message: "internal error"}}
	}
	d := errorDetail{Error: code, Message: msg}
	var le *domain.LimitExceededError
	var de *domain.Error
	switch {
	case errors.As(err, &le):
		d.limitDetail = &limitDetail{
			Plan:         le.Plan,
			CurrentUsage: le.Usage,
			Limit:        int64(le.Limit),
			PeriodStart:  timestamp(le.Period.Start),
			ResetsAt:     timestamp(le.Period.End),
		}
	case code == domain.CodeValidation:
		if errors.As(err, &de) {
			d.Fields = de.Fields
		}
		if len(d.Fields) == 0 {
			// The contract promises a list; never send an empty one.
			d.Fields = []domain.FieldError{{Field: "body", Message: msg}}
		}
	}
	return status, errorBody{Detail: d}
}

// fail answers err. Internal errors are logged with the request id and the
// real error, and the client only learns "internal error"; infrastructure
// errors are logged as warnings and tell the client when to retry.
func (s *server) fail(c *gin.Context, err error) {
	if b := s.limits.body(err); b != nil {
		c.Data(http.StatusForbidden, "application/json; charset=utf-8", b)
		c.Abort()
		return
	}
	status, body := classify(err)
	if status == http.StatusForbidden {
		if b := s.limits.remember(err, body); b != nil {
			c.Data(status, "application/json; charset=utf-8", b) // encoded once, kept for the next
			c.Abort()
			return
		}
	}
	switch status {
	case http.StatusInternalServerError:
		s.log.LogAttrs(c.Request.Context(), slog.LevelError, "internal error",
			slog.String("request_id", c.Writer.Header().Get(headerRequestID)),
			slog.String("route", c.FullPath()), slog.String("error", errString(err)))
	case http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		if errors.Is(err, domain.ErrShed) {
			break // overload: a line per shed request would add to it
		}
		s.log.LogAttrs(c.Request.Context(), slog.LevelWarn, "request not served",
			slog.String("request_id", c.Writer.Header().Get(headerRequestID)),
			slog.String("route", c.FullPath()), slog.Int("status", status), slog.String("error", errString(err)))
	}
	switch status {
	case http.StatusServiceUnavailable:
		c.Header("Retry-After", "1")
		if s.cluster != nil && (err == errNotOwner || errors.Is(err, domain.ErrNotOwner)) && forwardOf(c) != nil {
			// Nothing was done: the node that forwarded it may route it
			// again (forward.go).
			c.Header(hdrNotOwner, "1")
		}
	case http.StatusUnauthorized:
		c.Header("WWW-Authenticate", `Bearer realm="tally"`)
	case http.StatusRequestTimeout:
		// The rest of the body may still be on its way: the connection
		// cannot carry another request.
		c.Header("Connection", "close")
	}
	s.writeJSON(c, status, body)
	c.Abort()
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// writeJSON encodes a typed response. Structs (never maps) keep encoding
// cheap: encoding/json caches their layout.
func (s *server) writeJSON(c *gin.Context, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only a bug can get here (every response type is plain data).
		s.log.LogAttrs(c.Request.Context(), slog.LevelError, "encoding response",
			slog.String("request_id", c.Writer.Header().Get(headerRequestID)), slog.String("error", err.Error()))
		status = http.StatusInternalServerError
		b = []byte(`{"detail":{"error":"internal","message":"internal error"}}`)
	}
	c.Data(status, "application/json; charset=utf-8", b)
}
