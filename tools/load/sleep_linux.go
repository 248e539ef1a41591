package load

import (
	"syscall"
	"time"
)

// preciseSleep sleeps d (under 2ms) with nanosleep: the thread is woken by
// a high-resolution timer (within the kernel's ~50µs slack), where a Go
// timer on an idle process waits for the poller's next whole millisecond.
func preciseSleep(d time.Duration) {
	ts := syscall.NsecToTimespec(int64(d))
	_ = syscall.Nanosleep(&ts, nil) // EINTR: the caller re-checks the clock
}
