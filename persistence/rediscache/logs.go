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
func RouteDriverLogs(log *slog.Logger) { redis.SetLogger(driverLogger{log}) }

type driverLogger struct{ log *slog.Logger }

func (d driverLogger) Printf(ctx context.Context, format string, v ...any) {
	msg := strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: ")
	d.log.LogAttrs(ctx, slog.LevelWarn, msg, slog.String("component", "go-redis"))
}
