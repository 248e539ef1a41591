package rediscache

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-dev/tally/internal/testenv"
)

// go-redis's own lines (here: a pool that cannot dial) reach the service's
// JSON logger as records, not plain text on stderr.
func TestDriverLogsGoThroughSlog(t *testing.T) {
	var buf testenv.LockedBuffer
	RouteDriverLogs(slog.New(slog.NewJSONHandler(&buf, nil)), nil)
	t.Cleanup(func() { RouteDriverLogs(slog.New(slog.DiscardHandler), nil) })
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

// A go-redis line that carries an error gets the hint asked about that
// error: the error itself, not the line's text, is what the hint sees.
func TestDriverLogsCarryTheHint(t *testing.T) {
	var buf testenv.LockedBuffer
	var seen testenv.LockedBuffer
	RouteDriverLogs(slog.New(slog.NewJSONHandler(&buf, nil)), func(err error) string {
		fmt.Fprintf(&seen, "%T\n", err)
		return "check TALLY_EXAMPLE"
	})
	t.Cleanup(func() { RouteDriverLogs(slog.New(slog.DiscardHandler), nil) })
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 50 * time.Millisecond})
	t.Cleanup(func() { _ = client.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(buf.String(), "failed to dial") && time.Now().Before(deadline) {
		_ = client.Ping(context.Background()).Err()
	}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var rec struct{ Msg, Hint string }
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("a log line that is not JSON: %q", line)
		}
		if strings.Contains(rec.Msg, "failed to dial") {
			if rec.Hint != "check TALLY_EXAMPLE" {
				t.Errorf("dial failure logged with hint %q: %s", rec.Hint, line)
			}
			if !strings.Contains(seen.String(), "*net.OpError") {
				t.Errorf("the hint was asked about %q, want the dial's *net.OpError", seen.String())
			}
			return
		}
	}
	t.Fatalf("no go-redis dial failure in the JSON log: %q", buf.String())
}
