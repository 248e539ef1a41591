package rediscache

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/redis/go-redis/v9"
)

// RouteDriverLogs sends go-redis's own log lines — a pool that cannot dial,
// a Sentinel naming a new master — to log as structured records, instead
// of the plain-text lines go-redis writes to stderr by default, which a
// JSON log pipeline cannot parse. go-redis keeps one logger per process:
// the last call wins.
//
// hint, when not nil, is asked about each error a line carries; a
// non-empty answer (what configuration to check, when the error says it is
// wrong) goes with the line as "hint". Some failures reach nothing else
// in time: a Sentinel client retries dials inside dials, and its error can
// come back after /readyz gave up on it.
func RouteDriverLogs(log *slog.Logger, hint func(error) string) {
	redis.SetLogger(driverLogger{log, hint})
}

type driverLogger struct {
	log  *slog.Logger
	hint func(error) string
}

func (d driverLogger) Printf(ctx context.Context, format string, v ...any) {
	msg := strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: ")
	attrs := []slog.Attr{slog.String("component", "go-redis")}
	if d.hint != nil {
		for _, a := range v {
			if err, ok := a.(error); ok {
				if h := d.hint(err); h != "" {
					attrs = append(attrs, slog.String("hint", h))
					break
				}
			}
		}
	}
	d.log.LogAttrs(ctx, slog.LevelWarn, msg, attrs...)
}
