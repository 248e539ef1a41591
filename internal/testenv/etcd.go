package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// etcd timings for tests: a 50 ms heartbeat and a 500 ms election timeout
// elect a new leader within about a second of the old one's death (the
// defaults, 100 ms and 1 s, take two). They also set etcd's shortest lease:
// 1.5 election timeouts, rounded up to whole seconds, here 1 s.
const (
	etcdHeartbeatMS = 50
	etcdElectionMS  = 500
)

// EtcdBinary is the etcd server tests run: TALLY_ETCD_BIN, else bin/etcd
// of the repository (`make etcd` builds it; `make test` does first).
func EtcdBinary() (string, error) {
	if b := os.Getenv("TALLY_ETCD_BIN"); b != "" {
		if _, err := os.Stat(b); err != nil {
			return "", fmt.Errorf("TALLY_ETCD_BIN: %w", err)
		}
		return b, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	b := filepath.Join(root, "bin", "etcd")
	if _, err := os.Stat(b); err != nil {
		return "", fmt.Errorf("%s missing (run `make etcd`): %w", b, err)
	}
	return b, nil
}

// moduleRoot is the nearest directory above the working directory (a
// test's package directory) holding go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// EtcdCluster is a private etcd cluster of real processes on free ports of
// 127.0.0.1, data in the test's temporary directory, for tests that kill,
// stop and restart its members. Every member is killed when the test ends.
type EtcdCluster struct {
	bin   string
	token string

	mu      sync.Mutex
	members []*etcdMember
}

type etcdMember struct {
	name       string
	clientPort int
	peerPort   int
	dir        string
	log        string
	proc       *process // nil while stopped
}

func (m *etcdMember) clientURL() string { return fmt.Sprintf("http://127.0.0.1:%d", m.clientPort) }
func (m *etcdMember) peerURL() string   { return fmt.Sprintf("http://127.0.0.1:%d", m.peerPort) }

// StartEtcd starts an n-member cluster and returns once it has a leader
// every member agrees on. Without the etcd binary the test is skipped, or
// fails under TALLY_TEST_REQUIRE_SERVICES=1.
func StartEtcd(tb testing.TB, n int) *EtcdCluster {
	tb.Helper()
	bin, err := EtcdBinary()
	if err != nil {
		Unreachable(tb, "etcd binary", err)
	}
	dir := tb.TempDir()
	c := &EtcdCluster{bin: bin, token: RandomName("tally-test-")}
	for i := range n {
		name := fmt.Sprintf("etcd-%d", i)
		c.members = append(c.members, &etcdMember{
			name:       name,
			clientPort: FreePort(tb),
			peerPort:   FreePort(tb),
			dir:        filepath.Join(dir, name),
			log:        filepath.Join(dir, name+".log"),
		})
	}
	tb.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, m := range c.members {
			if m.proc != nil {
				m.proc.kill()
			}
		}
		if tb.Failed() {
			for _, m := range c.members {
				tb.Logf("--- %s (%s) log tail:\n%s", m.name, m.clientURL(), logTail(m.log, 20))
			}
		}
	})
	c.mu.Lock()
	for _, m := range c.members {
		c.startLocked(tb, m)
	}
	c.mu.Unlock()
	c.WaitLeader(tb, 30*time.Second)
	return c
}

// startLocked starts m's process; on a data directory that exists already
// etcd ignores the initial-cluster flags and rejoins with what it stored.
func (c *EtcdCluster) startLocked(tb testing.TB, m *etcdMember) {
	tb.Helper()
	if m.proc != nil && !m.proc.exited() {
		return
	}
	peers := make([]string, len(c.members))
	for i, o := range c.members {
		peers[i] = o.name + "=" + o.peerURL()
	}
	m.proc = startProcess(tb, m.name, m.log, c.bin,
		"--name", m.name,
		"--data-dir", m.dir,
		"--listen-client-urls", m.clientURL(),
		"--advertise-client-urls", m.clientURL(),
		"--listen-peer-urls", m.peerURL(),
		"--initial-advertise-peer-urls", m.peerURL(),
		"--initial-cluster", strings.Join(peers, ","),
		"--initial-cluster-state", "new",
		"--initial-cluster-token", c.token,
		"--heartbeat-interval", strconv.Itoa(etcdHeartbeatMS),
		"--election-timeout", strconv.Itoa(etcdElectionMS),
		"--log-level", "warn",
	)
}

// Endpoints are the members' client URLs, running or not.
func (c *EtcdCluster) Endpoints() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientURL()
	}
	return eps
}

// Size is the number of members, running or not.
func (c *EtcdCluster) Size() int { return len(c.members) }

// Leader is the index of the member the running members agree is the
// leader, or -1 if they do not agree (an election, no quorum) or none
// answers. It asks each member's status through etcd's JSON gateway.
func (c *EtcdCluster) Leader() int {
	c.mu.Lock()
	members := append([]*etcdMember(nil), c.members...)
	running := make([]bool, len(members))
	for i, m := range members {
		running[i] = m.proc != nil && !m.proc.exited()
	}
	c.mu.Unlock()
	leader, idx := uint64(0), -1
	answered := 0
	for i, m := range members {
		if !running[i] {
			continue
		}
		st, err := etcdStatus(m.clientURL())
		if err != nil || st.leader == 0 {
			return -1
		}
		if leader != 0 && st.leader != leader {
			return -1
		}
		leader = st.leader
		if st.member == st.leader {
			idx = i
		}
		answered++
	}
	if answered == 0 {
		return -1
	}
	return idx
}

// WaitLeader waits until the running members agree on a leader that is
// one of them, and returns its index.
func (c *EtcdCluster) WaitLeader(tb testing.TB, timeout time.Duration) int {
	tb.Helper()
	idx := -1
	err := waitUntil(timeout, 50*time.Millisecond, func() error {
		if idx = c.Leader(); idx < 0 {
			return errors.New("no leader every running member agrees on")
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("etcd: %v", err)
	}
	return idx
}

// Kill kills member i with SIGKILL.
func (c *EtcdCluster) Kill(tb testing.TB, i int) {
	tb.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.members[i].proc; p != nil {
		p.kill()
	}
}

// Stop stops member i with SIGTERM (a clean shutdown), SIGKILL after 10 s.
func (c *EtcdCluster) Stop(tb testing.TB, i int) {
	tb.Helper()
	c.mu.Lock()
	p := c.members[i].proc
	c.mu.Unlock()
	if p == nil || p.exited() {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		tb.Logf("etcd %s: no exit 10 s after SIGTERM; killing it", c.members[i].name)
		p.kill()
	}
}

// Start starts member i again on its data directory and ports and waits
// until it answers with the leader the cluster agrees on.
func (c *EtcdCluster) Start(tb testing.TB, i int) {
	tb.Helper()
	c.mu.Lock()
	c.startLocked(tb, c.members[i])
	c.mu.Unlock()
	c.WaitLeader(tb, 30*time.Second)
}

// StopAll stops every member at once, as a power loss would: SIGKILL.
// etcd syncs each committed entry to disk, so nothing committed is lost;
// a clean SIGTERM of every member at once took six seconds here (each one
// waits for peers that are going away too), for the same end state.
func (c *EtcdCluster) StopAll(tb testing.TB) {
	tb.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.members {
		if m.proc != nil {
			m.proc.kill()
		}
	}
}

// StartAll starts every stopped member and waits for a leader.
func (c *EtcdCluster) StartAll(tb testing.TB) {
	tb.Helper()
	c.mu.Lock()
	for _, m := range c.members {
		c.startLocked(tb, m)
	}
	c.mu.Unlock()
	c.WaitLeader(tb, 30*time.Second)
}

type etcdMemberStatus struct{ member, leader uint64 }

// etcdStatus asks one member for its status (Maintenance.Status) through
// the JSON gateway every etcd serves on its client URL, so that this
// package needs no gRPC client. 64-bit ids come as JSON strings.
func etcdStatus(clientURL string) (etcdMemberStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, clientURL+"/v3/maintenance/status", bytes.NewReader([]byte("{}")))
	if err != nil {
		return etcdMemberStatus{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return etcdMemberStatus{}, err
	}
	defer resp.Body.Close()
	var body struct {
		Header struct {
			MemberID string `json:"member_id"`
		} `json:"header"`
		Leader string `json:"leader"`
	}
	if resp.StatusCode != http.StatusOK {
		return etcdMemberStatus{}, fmt.Errorf("%s: status %s", clientURL, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return etcdMemberStatus{}, fmt.Errorf("%s: %w", clientURL, err)
	}
	var st etcdMemberStatus
	st.member, _ = strconv.ParseUint(body.Header.MemberID, 10, 64)
	st.leader, _ = strconv.ParseUint(body.Leader, 10, 64)
	return st, nil
}
