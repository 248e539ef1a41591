package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
)

// Every code the domain defines has a deliberate status; a limit, however
// wrapped, is a 403 and never a 500.
func TestClassify(t *testing.T) {
	period := domain.Period{Start: time.Date(2026, 1, 31, 0, 0, 0, 0, time.UTC), End: time.Date(2026, 2, 28, 0, 0, 0, 0, time.UTC)}
	for _, tc := range []struct {
		err    error
		status int
		code   domain.Code
	}{
		{domain.Errorf(domain.CodeBadRequest, "x"), 400, domain.CodeBadRequest},
		{domain.Errorf(domain.CodeUnauthorized, "x"), 401, domain.CodeUnauthorized},
		{domain.Errorf(domain.CodeForbidden, "x"), 403, domain.CodeForbidden},
		{&domain.LimitExceededError{Code: domain.CodeSessionLimit, Plan: "free", Limit: 10, Period: period}, 403, domain.CodeSessionLimit},
		{fmt.Errorf("a: %w", fmt.Errorf("b: %w", &domain.LimitExceededError{Code: domain.CodeTranscriptionLimit, Plan: "free", Limit: 120, Period: period})), 403, domain.CodeTranscriptionLimit},
		{errors.Join(errors.New("other"), &domain.LimitExceededError{Code: domain.CodeFileSizeLimit, Plan: "free", Limit: 60, Period: period}), 403, domain.CodeFileSizeLimit},
		{domain.ErrNotFound, 404, domain.CodeNotFound},
		{domain.Errorf(domain.CodeConflict, "x"), 409, domain.CodeConflict},
		{domain.Errorf(domain.CodeIdempotencyConflict, "x"), 409, domain.CodeIdempotencyConflict},
		{errTooLarge, 413, domain.CodeTooLarge},
		{&domain.Error{Code: domain.CodeValidation, Message: "x"}, 422, domain.CodeValidation},
		{domain.Unavailable("redis", errors.New("EOF")), 503, domain.CodeUnavailable},
		{domain.Errorf(domain.CodeTimeout, "x"), 504, domain.CodeTimeout},
		{context.DeadlineExceeded, 504, domain.CodeTimeout},
		{context.Canceled, 503, domain.CodeUnavailable},
		{errors.New("boom"), 500, domain.CodeInternal},
		{nil, 500, domain.CodeInternal},
	} {
		status, body := classify(tc.err)
		if status != tc.status || body.Detail.Error != tc.code {
			t.Errorf("%v: got %d %s, want %d %s", tc.err, status, body.Detail.Error, tc.status, tc.code)
		}
		if (body.Detail.limitDetail != nil) != (status == 403 && tc.code != domain.CodeForbidden) {
			t.Errorf("%v: limit detail %+v", tc.err, body.Detail.limitDetail)
		}
		if status == 422 && len(body.Detail.Fields) == 0 {
			t.Errorf("%v: 422 without fields", tc.err)
		}
	}
	for code := range statusOf {
		if code != domain.CodeInternal && statusOf[code] == http.StatusInternalServerError {
			t.Errorf("%s maps to 500", code)
		}
	}
}

func TestTokenCacheIsBounded(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	a := newAuthenticator([]byte("k"), nil, 0, clock, tokenClaims{})
	a.cacheSize = 100
	for i := range a.cacheSize + 10 {
		tok, err := IssueToken([]byte("k"), fmt.Sprintf("u%d", i), time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		if sub, err := a.user(context.Background(), tok); err != nil || sub != fmt.Sprintf("u%d", i) {
			t.Fatalf("token %d: %q %v", i, sub, err)
		}
		if n := len(a.cache); n > a.cacheSize {
			t.Fatalf("cache holds %d tokens", n)
		}
	}
	// A cached token whose expiry passes is refused, as an uncached one is.
	tok, _ := IssueToken([]byte("k"), "late", time.Minute, now)
	if _, err := a.user(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute)
	if _, err := a.user(context.Background(), tok); err != errExpiredToken {
		t.Errorf("expired cached token: %v", err)
	}
}

func TestIssueTokenRefusesBadInput(t *testing.T) {
	now := time.Now()
	for name, f := range map[string]func() (string, error){
		"no secret": func() (string, error) { return IssueToken(nil, "u", time.Hour, now) },
		"bad user":  func() (string, error) { return IssueToken([]byte("k"), "a b", time.Hour, now) },
		"no ttl":    func() (string, error) { return IssueToken([]byte("k"), "u", 0, now) },
	} {
		if _, err := f(); err == nil {
			t.Errorf("%s: issued", name)
		}
	}
}

func TestCursorRoundTrip(t *testing.T) {
	s := domain.Session{ID: "s-1:x", CreatedAt: time.Date(2026, 11, 14, 9, 30, 0, 123456789, time.FixedZone("x", 3600))}
	c, err := decodeCursor(encodeCursor(s))
	if err != nil || !c.CreatedAt.Equal(s.CreatedAt) || c.ID != s.ID || c.CreatedAt.Location() != time.UTC {
		t.Errorf("%+v %v", c, err)
	}
}

// The remembered 403 of a limit error is byte for byte what classifying it
// gives, and exactly the errors with the same content get it back: another
// value with equal fields does (the body is a function of them), one that
// differs in any field does not.
func TestLimitAnswersAreTheClassifiedBody(t *testing.T) {
	var l limitAnswers
	period := domain.Period{Start: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), End: time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)}
	full := &domain.LimitExceededError{Code: domain.CodeSessionLimit, Plan: "free", Usage: 10, Limit: 10, Period: period}
	if b := l.body(full); b != nil {
		t.Fatalf("empty cache answered %s", b)
	}
	status, body := classify(full)
	if status != http.StatusForbidden {
		t.Fatalf("status %d", status)
	}
	l.remember(full, body)
	want, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.body(full); string(got) != string(want) {
		t.Fatalf("remembered %s, want %s", got, want)
	}
	equal := *full
	equal.Period.Start = period.Start.In(time.FixedZone("elsewhere", 3600)) // the same instant
	if got := l.body(&equal); string(got) != string(want) {
		t.Fatalf("an equal rejection got %s, want %s", got, want)
	}
	for name, change := range map[string]func(*domain.LimitExceededError){
		"usage":  func(e *domain.LimitExceededError) { e.Usage = 11 },
		"limit":  func(e *domain.LimitExceededError) { e.Limit = 100 },
		"plan":   func(e *domain.LimitExceededError) { e.Plan = "student" },
		"code":   func(e *domain.LimitExceededError) { e.Code = domain.CodeTranscriptionLimit },
		"period": func(e *domain.LimitExceededError) { e.Period.End = e.Period.End.AddDate(0, 1, 0) },
	} {
		other := *full
		change(&other)
		if got := l.body(&other); got != nil {
			t.Errorf("a rejection with another %s got %s", name, got)
		}
	}
	if got := l.body(domain.ErrNotFound); got != nil {
		t.Fatalf("a non-limit error got %s", got)
	}
}
