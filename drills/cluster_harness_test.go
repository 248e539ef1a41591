package drills_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/build"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/tally-dev/tally/cluster"
	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/drills"
	"github.com/tally-dev/tally/internal/testenv"
)

// The cluster drills' harness: a three-member etcd (testenv.StartEtcd),
// `tally serve` subprocesses built from this tree as the nodes, a fresh
// database on the machine's Postgres, and Redis under a private key prefix
// (or a Sentinel-managed Redis of the drill's own).

const (
	// clusterSecret is TALLY_CLUSTER_SECRET of every drill node.
	clusterSecret = "drill-cluster-secret-0123456789abcdef0123"
	// leaseTTL is TALLY_CLUSTER_LEASE_TTL: short, to keep the drills short;
	// a dead node's partitions move within it.
	leaseTTL = 2 * time.Second
	// studentLimit is the student plan's max_sessions (domain/plan.go):
	// the cluster drills' users are on it, so that each can be admitted
	// for long enough to see the fault.
	studentLimit = 100
	// clusterRequestTimeout is TALLY_REQUEST_TIMEOUT of the nodes.
	clusterRequestTimeout = 2 * time.Second
	// etcdPrefix is the nodes' key prefix in etcd (cluster.DefaultPrefix).
	etcdPrefix = cluster.DefaultPrefix
)

// tallyBinary builds ./cmd/tally of this tree once per test binary.
var tallyBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "tally-drill-bin-")
	if err != nil {
		return "", err
	}
	binDir = dir
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(build.Default.GOROOT, "bin", "go")
	}
	out := filepath.Join(dir, "tally")
	cmd := exec.Command(goBin, "build", "-o", out, "github.com/tally-dev/tally/cmd/tally")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/tally: %w\n%s", err, b)
	}
	return out, nil
})

// binDir holds the built binary; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// tallyCluster is a running cluster of Tally nodes.
type tallyCluster struct {
	t      *testing.T
	bin    string
	dir    string
	Etcd   *testenv.EtcdCluster
	env    map[string]string // every node's environment, without its own id and addresses
	DBURL  string
	Redis  redis.UniversalClient
	Prefix string // Redis key prefix
	etcd   *clientv3.Client
	Client *drills.Client

	mu    sync.Mutex
	nodes []*tallyNode
	next  atomic.Uint64 // round-robin over the nodes in the load
}

// tallyNode is one `tally serve` subprocess.
type tallyNode struct {
	ID     string
	URL    string // API base URL, also its TALLY_ADVERTISE_URL
	OpsURL string
	log    string
	cmd    *exec.Cmd
	done   chan struct{} // closed once reaped
	err    error         // Wait's, once done
	// inLoad: the load (and the checks) send requests to this node, as a
	// load balancer would to a node whose health checks pass.
	inLoad atomic.Bool
}

// clusterOptions choose a cluster's Redis.
type clusterOptions struct {
	// Sentinel, when set, is the Redis the nodes use (through Sentinel);
	// otherwise the machine's Redis under a private prefix.
	Sentinel *testenv.SentinelCluster
}

// startCluster starts etcd and n Tally nodes and waits until every
// partition is owned by its desired owner. Everything is killed when the
// test ends.
func startCluster(t *testing.T, n int, opts clusterOptions) *tallyCluster {
	t.Helper()
	etcd := testenv.StartEtcd(t, 3) // skips (or fails) without bin/etcd
	bin, err := tallyBinary()
	if err != nil {
		t.Fatalf("build tally: %v", err)
	}
	c := &tallyCluster{t: t, bin: bin, dir: t.TempDir(), Etcd: etcd, DBURL: testenv.PostgresURL(t)}
	c.env = map[string]string{
		"TALLY_DATABASE_URL":      c.DBURL,
		"TALLY_JWT_SECRET":        jwtSecret,
		"TALLY_ADMIN_TOKEN":       adminToken,
		"TALLY_UPLOAD_BASE_URL":   "https://uploads.example.test/u",
		"TALLY_LOG_LEVEL":         "warn",
		"TALLY_SHUTDOWN_TIMEOUT":  "10s",
		"TALLY_REQUEST_TIMEOUT":   clusterRequestTimeout.String(),
		"TALLY_ETCD_ENDPOINTS":    strings.Join(etcd.Endpoints(), ","),
		"TALLY_CLUSTER_SECRET":    clusterSecret,
		"TALLY_CLUSTER_LEASE_TTL": leaseTTL.String(),
		"TALLY_REDIS_KEY_PREFIX":  prefix,
	}
	if s := opts.Sentinel; s != nil {
		c.env["TALLY_REDIS_SENTINELS"] = strings.Join(s.SentinelAddrs(), ",")
		c.env["TALLY_REDIS_MASTER"] = s.MasterName()
		c.Redis, c.Prefix = s.Client(t), prefix
	} else {
		addr, p := testenv.Redis(t)
		c.env["TALLY_REDIS_URL"] = testenv.RedisURL(addr)
		c.env["TALLY_REDIS_KEY_PREFIX"] = p
		c.Redis, c.Prefix = redisClient(t, addr), p
	}
	// A short reconnect backoff, as the nodes' own (cluster.Start): after
	// etcd's outage the drill reads the claims again at once.
	c.etcd, err = clientv3.New(clientv3.Config{
		Endpoints: etcd.Endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 400 * time.Millisecond},
			MinConnectTimeout: time.Second,
		})},
	})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { _ = c.etcd.Close() })
	c.Client = drills.NewClient(t, jwtSecret, 10*time.Second)
	t.Cleanup(c.killAll)

	var wg sync.WaitGroup
	for range n {
		node := c.addNode()
		wg.Go(func() { c.startNode(node) })
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	c.waitSettled(c.ids(), 30*time.Second)
	return c
}

// addNode registers the next node (node-1, node-2…) on free ports.
func (c *tallyCluster) addNode() *tallyNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := len(c.nodes) + 1
	node := &tallyNode{
		ID:     fmt.Sprintf("node-%d", i),
		URL:    fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(c.t)),
		OpsURL: fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(c.t)),
		log:    filepath.Join(c.dir, fmt.Sprintf("node-%d.log", i)),
	}
	c.nodes = append(c.nodes, node)
	return node
}

// startNode starts node's process and waits until it answers /readyz;
// then the load sends to it. It reports failures with t.Errorf (it may
// run on another goroutine than the test's).
func (c *tallyCluster) startNode(node *tallyNode) {
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TALLY_") {
			env = append(env, kv)
		}
	}
	for k, v := range c.env {
		env = append(env, k+"="+v)
	}
	env = append(env,
		"TALLY_HTTP_ADDR="+strings.TrimPrefix(node.URL, "http://"),
		"TALLY_OPS_ADDR="+strings.TrimPrefix(node.OpsURL, "http://"),
	)
	// A node's id and advertised URL are for cluster mode only; without
	// etcd (a single process, as the webhooks drill runs) Tally refuses
	// them.
	if c.env["TALLY_ETCD_ENDPOINTS"] != "" {
		env = append(env, "TALLY_NODE_ID="+node.ID, "TALLY_ADVERTISE_URL="+node.URL)
	}
	out, err := os.OpenFile(node.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Errorf("%s: log: %v", node.ID, err)
		return
	}
	defer out.Close()
	cmd := exec.Command(c.bin, "serve")
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	// A node dies with the test binary, even one killed by go test's
	// timeout.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Errorf("%s: start: %v", node.ID, err)
		return
	}
	node.cmd, node.done = cmd, make(chan struct{})
	go func() {
		node.err = cmd.Wait()
		close(node.done)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-node.done:
			c.t.Errorf("%s exited before it was ready: %v\n%s", node.ID, node.err, logTail(node.log, 30))
			return
		default:
		}
		if readyz(c.Client, node.URL) == http.StatusOK {
			node.inLoad.Store(true)
			return
		}
		if time.Now().After(deadline) {
			c.t.Errorf("%s not ready after 30s\n%s", node.ID, logTail(node.log, 30))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// killAll kills every node still running (SIGKILL also ends a stopped
// one) and, if the test failed, prints the end of each node's log.
func (c *tallyCluster) killAll() {
	c.mu.Lock()
	nodes := slices.Clone(c.nodes)
	c.mu.Unlock()
	for _, n := range nodes {
		n.kill()
	}
	if c.t.Failed() {
		for _, n := range nodes {
			c.t.Logf("--- %s log tail:\n%s", n.ID, logTail(n.log, 40))
		}
	}
}

// kill sends SIGKILL and waits until the process is reaped.
func (n *tallyNode) kill() {
	if n.cmd == nil {
		return
	}
	select {
	case <-n.done:
		return
	default:
	}
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.done
}

// signal sends sig to the node's process.
func (n *tallyNode) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := n.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s: %s: %v", n.ID, sig, err)
	}
}

// terminate sends SIGTERM and waits (up to timeout) for a clean exit.
func (n *tallyNode) terminate(t *testing.T, timeout time.Duration) {
	t.Helper()
	n.signal(t, syscall.SIGTERM)
	select {
	case <-n.done:
		if n.err != nil {
			t.Errorf("%s exited with %v after SIGTERM, want 0\n%s", n.ID, n.err, logTail(n.log, 30))
		}
	case <-time.After(timeout):
		t.Errorf("%s still running %s after SIGTERM\n%s", n.ID, timeout, logTail(n.log, 30))
		n.kill()
	}
}

// Node returns the i-th node (from 0).
func (c *tallyCluster) Node(i int) *tallyNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// NodeByID returns the node of that id.
func (c *tallyCluster) NodeByID(id string) *tallyNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		if n.ID == id {
			return n
		}
	}
	c.t.Fatalf("no node %q", id)
	return nil
}

// ids are the ids of the nodes the load sends to.
func (c *tallyCluster) ids() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []string
	for _, n := range c.nodes {
		if n.inLoad.Load() {
			ids = append(ids, n.ID)
		}
	}
	return ids
}

// URLs are the base URLs of the nodes the load sends to.
func (c *tallyCluster) URLs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var urls []string
	for _, n := range c.nodes {
		if n.inLoad.Load() {
			urls = append(urls, n.URL)
		}
	}
	return urls
}

// Target is the load's target: the nodes in the load, in turn.
func (c *tallyCluster) Target() string {
	urls := c.URLs()
	if len(urls) == 0 {
		c.t.Error("no node left in the load")
		return "http://127.0.0.1:1"
	}
	return urls[int(c.next.Add(1))%len(urls)]
}

// ownership is the partitions' claims as etcd holds them.
type ownership struct {
	Members []string
	Owner   [domain.Partitions]string // "" unowned
	Epoch   [domain.Partitions]int64  // the claim's create revision
}

// Owned are the partitions owned by node.
func (o *ownership) Owned(node string) map[domain.Partition]bool {
	out := map[domain.Partition]bool{}
	for p, n := range o.Owner {
		if n == node {
			out[domain.Partition(p)] = true
		}
	}
	return out
}

// Moved are the partitions whose claim differs between o and later (owner
// or epoch).
func (o *ownership) Moved(later *ownership) map[domain.Partition]bool {
	out := map[domain.Partition]bool{}
	for p := range o.Owner {
		if o.Owner[p] != later.Owner[p] || o.Epoch[p] != later.Epoch[p] {
			out[domain.Partition(p)] = true
		}
	}
	return out
}

// read reads the member and owner keys (the layout of cluster/etcd.go).
func (c *tallyCluster) read(ctx context.Context) (*ownership, error) {
	resp, err := c.etcd.Get(ctx, etcdPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	o := &ownership{}
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		if id, ok := strings.CutPrefix(key, etcdPrefix+"members/"); ok {
			o.Members = append(o.Members, id)
			continue
		}
		if ps, ok := strings.CutPrefix(key, etcdPrefix+"owners/"); ok {
			var p int
			var v struct {
				Node string `json:"node"`
			}
			if _, err := fmt.Sscanf(ps, "%d", &p); err != nil || p < 0 || p >= domain.Partitions {
				return nil, fmt.Errorf("owner key %q", key)
			}
			if err := json.Unmarshal(kv.Value, &v); err != nil {
				return nil, fmt.Errorf("owner key %q: %w", key, err)
			}
			o.Owner[p], o.Epoch[p] = v.Node, kv.CreateRevision
		}
	}
	slices.Sort(o.Members)
	return o, nil
}

// waitSettled waits until the members are exactly ids and every partition
// is claimed by its desired owner among them, and returns the ownership.
// A partition is served by its new owner a moment after its claim (the
// claim, then Acquire fences the store): requests meanwhile wait, they do
// not fail.
func (c *tallyCluster) waitSettled(ids []string, timeout time.Duration) *ownership {
	c.t.Helper()
	ids = slices.Sorted(slices.Values(ids))
	want := cluster.DesiredOwners(ids)
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		o, err := c.read(ctx)
		cancel()
		if err == nil {
			wrong := 0
			for p := range o.Owner {
				if o.Owner[p] != want[p] {
					wrong++
				}
			}
			if wrong == 0 && slices.Equal(o.Members, ids) {
				return o
			}
			last = fmt.Sprintf("members %v (want %v), %d partition(s) not claimed by their desired owner", o.Members, ids, wrong)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("cluster not settled after %s: %s", timeout, last)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// provision puts users on the student plan, through the nodes in turn.
func (c *tallyCluster) provision(users []string) {
	c.t.Helper()
	body := []byte(`{"plan":"student"}`)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, u := range users {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			r := c.Client.DoToken(http.MethodPut, c.Target()+"/admin/v1/users/"+u, adminToken, body)
			if r.Err != nil || r.Status != http.StatusOK {
				c.t.Errorf("provision %s on the student plan: %d %s %v", u, r.Status, r.Body, r.Err)
			}
		})
	}
	wg.Wait()
	if c.t.Failed() {
		c.t.FailNow()
	}
}

// verify runs `tally verify --json` against the cluster's stores, as an
// operator would after a drill, and checks that it finds no violation
// (epoch_order among its checks) and that the sessions were fenced.
func (c *tallyCluster) verify() {
	c.t.Helper()
	env := []string{"PATH=" + os.Getenv("PATH")}
	for _, k := range []string{"TALLY_DATABASE_URL", "TALLY_REDIS_URL", "TALLY_REDIS_SENTINELS", "TALLY_REDIS_MASTER", "TALLY_REDIS_KEY_PREFIX"} {
		if v := c.env[k]; v != "" {
			env = append(env, k+"="+v)
		}
	}
	var last string
	for attempt := 0; attempt < 20; attempt++ {
		cmd := exec.Command(c.bin, "verify", "--json")
		cmd.Env = env
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var rep struct {
			Sessions int64            `json:"sessions"`
			Fenced   int64            `json:"fenced_sessions"`
			Total    int64            `json:"violations_total"`
			Counts   map[string]int64 `json:"violation_counts"`
		}
		if jerr := json.Unmarshal(stdout.Bytes(), &rep); jerr != nil {
			c.t.Fatalf("tally verify: %v; output %q %q", errors.Join(err, jerr), stdout.String(), stderr.String())
		}
		if err == nil && rep.Total == 0 {
			if rep.Fenced != rep.Sessions || rep.Sessions == 0 {
				c.t.Errorf("tally verify: %d session(s), %d of them fenced: every session of a cluster is admitted under an epoch", rep.Sessions, rep.Fenced)
			}
			c.t.Logf("tally verify: %d sessions, all under an epoch; no violation (epoch_order, over_limit, seq, session_count… and Redis)", rep.Sessions)
			return
		}
		last = fmt.Sprintf("%v: %s %s", err, stdout.String(), stderr.String())
		// Only the Redis checks may still be catching up.
		store := false
		for check := range rep.Counts {
			if !strings.HasPrefix(check, "redis_") {
				store = true
			}
		}
		if store {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	c.t.Errorf("tally verify finds violations: %s", last)
}

// forwards sums tally_cluster_forwards_total by result over the nodes in
// the load, e.g. "answered 1200, unreachable 12".
func (c *tallyCluster) forwards() string {
	sums := map[string]float64{}
	c.mu.Lock()
	nodes := slices.Clone(c.nodes)
	c.mu.Unlock()
	for _, n := range nodes {
		if !n.inLoad.Load() {
			continue
		}
		resp, err := http.Get(n.OpsURL + "/metrics")
		if err != nil {
			c.t.Errorf("%s: GET /metrics: %v", n.ID, err)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			c.t.Errorf("%s: GET /metrics: %v", n.ID, err)
			continue
		}
		for _, line := range strings.Split(string(body), "\n") {
			rest, ok := strings.CutPrefix(line, `tally_cluster_forwards_total{result="`)
			if !ok {
				continue
			}
			result, value, ok := strings.Cut(rest, `"} `)
			if v, err := strconv.ParseFloat(value, 64); ok && err == nil {
				sums[result] += v
			}
		}
	}
	var parts []string
	for _, r := range slices.Sorted(maps.Keys(sums)) {
		if sums[r] > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", r, sums[r]))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// logTail is the last n lines of a log file.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
