package rediscache

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// syncBuffer is a bytes.Buffer safe for the pool's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// go-redis's own lines (here: a pool that cannot dial) reach the service's
// JSON logger as records, not plain text on stderr.
func TestDriverLogsGoThroughSlog(t *testing.T) {
	var buf syncBuffer
	RouteDriverLogs(slog.New(slog.NewJSONHandler(&buf, nil)))
	t.Cleanup(func() { RouteDriverLogs(slog.New(slog.DiscardHandler)) })
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 50 * time.Millisecond})
	t.Cleanup(func() { _ = client.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(buf.String(), "failed to dial") && time.Now().Before(deadline) {
		_ = client.Ping(context.Background()).Err()
	}
	var found bool
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var rec struct {
			Level, Msg, Component string
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("a log line that is not JSON: %q", line)
		}
		if strings.Contains(rec.Msg, "failed to dial") && rec.Component == "go-redis" && rec.Level == "WARN" {
			found = true
		}
	}
	if !found {
		t.Fatalf("no go-redis dial failure in the JSON log: %q", buf.String())
	}
}
