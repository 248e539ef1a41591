package testenv_test

import (
	"testing"
	"time"

	"github.com/tally-dev/tally/internal/testenv"
)

// TestEtcdClusterKillStopRestart checks the helper the cluster tests rely
// on: a killed leader is replaced by another member, a cluster stopped
// whole has no leader, and the same members restarted on their data
// directories elect one again.
func TestEtcdClusterKillStopRestart(t *testing.T) {
	c := testenv.StartEtcd(t, 3)
	if got := len(c.Endpoints()); got != 3 {
		t.Fatalf("%d endpoints, want 3", got)
	}
	first := c.WaitLeader(t, 10*time.Second)
	c.Kill(t, first)
	second := c.WaitLeader(t, 20*time.Second)
	if second == first {
		t.Fatalf("the killed member %d is still the leader", first)
	}
	c.Start(t, first)

	c.StopAll(t)
	if l := c.Leader(); l != -1 {
		t.Fatalf("leader %d with every member stopped", l)
	}
	c.StartAll(t)
	if l := c.Leader(); l < 0 {
		t.Fatal("no leader after restarting every member")
	}
}
