//go:build !linux

package load

import "time"

// preciseSleep falls back to a Go timer where nanosleep is not wired up.
func preciseSleep(d time.Duration) { time.Sleep(d) }
