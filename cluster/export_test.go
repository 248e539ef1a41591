package cluster

import "time"

// PauseForTest makes n behave as a process stopped for d (SIGSTOP, then
// SIGCONT): its keepalives stop, and its event loop, watch, lease and
// heartbeat goroutines hold still until d has passed. Calls to Route from
// outside still run, as requests that were scheduled at the moment of the
// wake-up would.
func PauseForTest(n *Node, d time.Duration) {
	g := make(chan struct{})
	n.gate.Store(&g)
	if c := n.pauseKeepAlive.Load(); c != nil {
		(*c)()
	}
	time.Sleep(d)
	n.gate.Store(nil)
	close(g)
}
