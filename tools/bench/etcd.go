package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The cluster phases (cluster.go) run their Tally nodes on a private etcd
// cluster of three members: bin/etcd (`make etcd`, the 3.7 server built
// from its Go module, tools/etcd), started here on free ports of
// 127.0.0.1 with its data in the run's temporary directory, and stopped
// at the end of the phase. internal/testenv has the same for tests; this
// one belongs to a command, not to a testing.TB.

// etcdBinary finds the etcd server: --etcd-bin when given, else bin/etcd
// of the module the benchmark runs in (the nearest go.mod above the
// working directory: `make bench-compare` and `go run ./cmd/tally-bench`
// run from the repository).
func etcdBinary(flagValue string) (string, error) {
	if flagValue != "" {
		if _, err := os.Stat(flagValue); err != nil {
			return "", fmt.Errorf("--etcd-bin: %w", err)
		}
		return flagValue, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory: run from the repository, or pass --etcd-bin")
		}
		dir = parent
	}
	bin := filepath.Join(dir, "bin", "etcd")
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("%s is missing (run `make etcd`, or pass --etcd-bin): %w", bin, err)
	}
	return bin, nil
}

// freePorts reserves n distinct free ports of 127.0.0.1 and releases them
// for the caller to bind: every listener is held until all are found, so
// none is handed out twice. Another process could take one in between;
// the child that needs it would then fail to start, visibly.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// etcdMember is one running etcd process.
type etcdMember struct {
	name    string
	client  string // its client URL
	log     string
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// etcdCluster is the phase's etcd.
type etcdCluster struct {
	members []*etcdMember
}

// endpoints is TALLY_ETCD_ENDPOINTS for the nodes.
func (e *etcdCluster) endpoints() string {
	eps := make([]string, len(e.members))
	for i, m := range e.members {
		eps[i] = m.client
	}
	return strings.Join(eps, ",")
}

// etcdStartTimeout bounds the wait for every member to report healthy (a
// new cluster elects its first leader within a couple of seconds).
const etcdStartTimeout = 30 * time.Second

// startEtcd starts an n-member etcd cluster and returns once every member
// answers /health with "true" (it has a leader and can serve). Members'
// data go under dataDir, their logs to logPrefix-etcd-N.log.
func startEtcd(ctx context.Context, bin, dataDir, logPrefix string, n int) (*etcdCluster, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	token := "tally-bench-" + randomHex(4)
	peers := make([]string, n)
	for i := range n {
		peers[i] = fmt.Sprintf("etcd-%d=http://127.0.0.1:%d", i+1, ports[n+i])
	}
	e := &etcdCluster{}
	for i := range n {
		name := fmt.Sprintf("etcd-%d", i+1)
		client := fmt.Sprintf("http://127.0.0.1:%d", ports[i])
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[n+i])
		m := &etcdMember{name: name, client: client, log: fmt.Sprintf("%s-%s.log", logPrefix, name), exited: make(chan struct{})}
		m.cmd = exec.Command(bin,
			"--name", name,
			"--data-dir", filepath.Join(dataDir, name),
			"--listen-client-urls", client,
			"--advertise-client-urls", client,
			"--listen-peer-urls", peer,
			"--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(peers, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", token,
			"--log-level", "warn",
		)
		if err := e.launch(m); err != nil {
			e.stop()
			return nil, err
		}
	}
	if err := e.waitHealthy(ctx, etcdStartTimeout); err != nil {
		e.stop()
		return nil, err
	}
	return e, nil
}

// launch starts one member with its output in its log file.
func (e *etcdCluster) launch(m *etcdMember) error {
	logf, err := os.Create(m.log)
	if err != nil {
		return err
	}
	defer logf.Close()
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	m.cmd.Env = filterEnv(os.Environ())
	setChildAttrs(m.cmd)
	if err := m.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", m.name, err)
	}
	e.members = append(e.members, m)
	go func() {
		m.waitErr = m.cmd.Wait()
		close(m.exited)
	}()
	return nil
}

// waitHealthy polls every member's /health until all answer healthy.
func (e *etcdCluster) waitHealthy(ctx context.Context, timeout time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		var bad error
		for _, m := range e.members {
			select {
			case <-m.exited:
				return fmt.Errorf("etcd %s exited (%v); its log (%s) ends:\n%s", m.name, m.waitErr, m.log, fileTail(m.log, 15))
			default:
			}
			if err := etcdHealthy(ctx, client, m.client); err != nil {
				bad = fmt.Errorf("etcd %s: %w", m.name, err)
				break
			}
		}
		if bad == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd not healthy within %s: %w; the logs are %s-*.log", timeout, bad, strings.TrimSuffix(e.members[0].log, "-etcd-1.log"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// etcdHealthy asks one member's /health, which answers {"health":"true"}
// once the member has a leader and serves.
func etcdHealthy(ctx context.Context, client *http.Client, base string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"health":"true"`) {
		return fmt.Errorf("/health answered %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}

// stop kills every member. Their data is the run's, thrown away with
// it, and the phase's Tally nodes have left the cluster before: a clean
// SIGTERM of every member at once takes seconds (each waits for peers
// that are going away too) for nothing.
func (e *etcdCluster) stop() {
	for _, m := range e.members {
		select {
		case <-m.exited:
		default:
			_ = m.cmd.Process.Kill()
		}
	}
	for _, m := range e.members {
		<-m.exited
	}
}
