package transport_test

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/transport"
)

// BenchmarkCreateSessionOverLimit measures the edge's own cost on the
// hottest answer: a valid (cached) token, a strict decode, validation and
// a 403 limit body, with Accounts answering at once.
func BenchmarkCreateSessionOverLimit(b *testing.B) {
	limit := &domain.LimitExceededError{Code: domain.CodeSessionLimit, Plan: "free", Usage: 10, Limit: 10, Period: period}
	h, err := transport.New(transport.Options{
		Accounts: &fakeAccounts{createSession: func(context.Context, string, domain.NewSession, string) (domain.Session, error) {
			return domain.Session{}, limit
		}},
		Catalog: domain.DefaultCatalog(), JWTSecret: secret, AdminToken: adminToken,
		UploadBaseURL: "http://127.0.0.1/uploads", Providers: []string{"google"},
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	tok, _ := transport.IssueToken(secret, "u1", time.Hour, time.Now())
	body := `{"title":"Weekly sync","language":"en-US","stt_provider":"google"}`
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest("POST", "/api/v1/sessions", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tok)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != 403 {
				b.Fatalf("status %d", rec.Code)
			}
		}
	})
}

// BenchmarkShed measures the edge's cost of refusing a request over
// MaxInFlight: under overload it is the most frequent answer, and every
// microsecond it costs is taken from the requests being served.
func BenchmarkShed(b *testing.B) {
	entered, release := make(chan struct{}), make(chan struct{})
	h, err := transport.New(transport.Options{
		Accounts: &fakeAccounts{usage: func(context.Context, string) (domain.Report, error) {
			close(entered)
			<-release
			return domain.Report{}, nil
		}},
		Catalog: domain.DefaultCatalog(), JWTSecret: secret, AdminToken: adminToken,
		UploadBaseURL: "http://127.0.0.1/uploads", Providers: []string{"google"},
		Logger:      slog.New(slog.NewJSONHandler(io.Discard, nil)),
		MaxInFlight: 1,
	})
	if err != nil {
		b.Fatal(err)
	}
	tok, _ := transport.IssueToken(secret, "u1", time.Hour, time.Now())
	held := make(chan struct{})
	go func() {
		defer close(held)
		req := httptest.NewRequest("GET", "/api/v1/usage", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		h.ServeHTTP(httptest.NewRecorder(), req)
	}()
	<-entered
	body := `{"title":"Weekly sync","language":"en-US","stt_provider":"google"}`
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest("POST", "/api/v1/sessions", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tok)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != 503 {
				b.Fatalf("status %d", rec.Code)
			}
		}
	})
	b.StopTimer()
	close(release)
	<-held
}
