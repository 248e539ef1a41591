package testenv

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sentinel timings. They are small so that a failover completes in a few
// seconds; the price is that a Redis that stalls for two seconds (a slow CI
// machine under -race) can be failed over too, which a fault test must
// tolerate anyway.
//
// down-after-milliseconds must stay well above one second: a Sentinel
// re-points its link to the primary on every switch (+switch-master) and
// restarts the down timer then, but reconnects a link at most once a
// second (its fixed ping period), so its first PING to the new primary may
// leave up to a second after the switch. At 1000 ms the new primary's PONG
// raced the timer, and lost it about once in ten failovers here: a +sdown
// of a primary nobody had killed, and at once an +odown, because the other
// Sentinels' "down" answers about the killed primary (under 5 s old) still
// counted for the quorum. That Sentinel then failed over again on its own:
// onto the killed node if it had been restarted as a replica by then (the
// Sentinels then named a primary the test did not expect), else aborted,
// which still held every Sentinel that voted off the next real failover
// for 2 × failover-timeout. Two seconds leaves the reconnect, and its PING
// under load, a second of room.
const (
	sentinelDownAfter       = 2000 * time.Millisecond
	sentinelFailoverTimeout = 3000 * time.Millisecond
)

// SentinelCluster is a private Redis primary, one replica and three
// Sentinels (quorum 2) on free ports of 127.0.0.1, for tests that kill the
// primary and watch a failover. Every process is killed with SIGKILL when
// the test ends. The shared Redis on 6379 is never touched.
type SentinelCluster struct {
	name string
	bin  string
	dir  string
	opts SentinelOptions
	// dataTLS and sentinelTLS are the client TLS settings of the helper's
	// own connections (nil without TLS), made once from the test's files.
	dataTLS, sentinelTLS *tls.Config

	mu        sync.Mutex
	nodes     []*redisNode // data nodes: the first one starts as the primary
	sentinels []*redisNode
}

// redisNode is one redis-server (data node or Sentinel) and its port, which
// it keeps across restarts.
type redisNode struct {
	name string
	port int
	dir  string
	proc *process
}

func (n *redisNode) addr() string { return fmt.Sprintf("127.0.0.1:%d", n.port) }

// StartSentinelCluster starts the cluster and returns once the three
// Sentinels agree on the primary, know the replica and each other, and the
// replica is in sync: a failover can happen from the first instruction of
// the test on.
func StartSentinelCluster(tb testing.TB) *SentinelCluster {
	tb.Helper()
	return StartSentinelClusterWith(tb, SentinelOptions{})
}

// SentinelOptions guard a SentinelCluster. The zero value is an open
// cluster without TLS.
type SentinelOptions struct {
	// Data guards the primary and the replica (its TLS is ignored: TLS
	// below applies to every process). The replica and the Sentinels
	// authenticate to them with it (masteruser/masterauth, sentinel
	// auth-user/auth-pass).
	Data RedisAuth
	// Sentinels guards the Sentinels themselves (TLS ignored likewise);
	// they authenticate to each other with it (sentinel sentinel-user/
	// sentinel-pass).
	Sentinels RedisAuth
	// TLS, when set, makes every process, data node and Sentinel, speak
	// TLS only, to clients and to each other (tls-replication yes).
	TLS *TLSFiles
}

func (o SentinelOptions) data() RedisAuth {
	a := o.Data
	a.TLS, a.ClientCerts = o.TLS, false
	return a
}

func (o SentinelOptions) sentinels() RedisAuth {
	a := o.Sentinels
	a.TLS, a.ClientCerts = o.TLS, false
	return a
}

// StartSentinelClusterWith is StartSentinelCluster with passwords, ACL
// users and TLS on the data nodes and on the Sentinels.
func StartSentinelClusterWith(tb testing.TB, opts SentinelOptions) *SentinelCluster {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		Unreachable(tb, "redis-server binary (apt-get install redis-server)", err)
	}
	c := &SentinelCluster{name: "tally", bin: bin, dir: tb.TempDir(), opts: opts}
	c.dataTLS, c.sentinelTLS = opts.data().TLSConfig(tb), opts.sentinels().TLSConfig(tb)
	tb.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, n := range append(c.sentinels, c.nodes...) {
			if n.proc != nil {
				n.proc.kill()
			}
		}
		if tb.Failed() {
			for _, n := range append(c.nodes, c.sentinels...) {
				if n.proc == nil {
					continue
				}
				tb.Logf("--- %s (%s) log tail:\n%s", n.name, n.addr(), logTail(n.proc.log, 30))
			}
		}
	})

	primary := c.newNode(tb, "redis-1")
	c.startData(tb, primary, "")
	replica := c.newNode(tb, "redis-2")
	c.startData(tb, replica, primary.addr())
	c.nodes = []*redisNode{primary, replica}
	c.waitInSync(tb, replica, primary.addr(), 15*time.Second)

	for i := range 3 {
		s := c.newNode(tb, fmt.Sprintf("sentinel-%d", i+1))
		c.startSentinel(tb, s, primary.addr())
		c.sentinels = append(c.sentinels, s)
	}
	c.waitSentinelsReady(tb, primary.addr(), []string{replica.addr()}, 20*time.Second)
	return c
}

// SentinelAddrs are the Sentinels' host:port addresses (for
// TALLY_REDIS_SENTINELS or redis.FailoverOptions).
func (c *SentinelCluster) SentinelAddrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	addrs := make([]string, len(c.sentinels))
	for i, s := range c.sentinels {
		addrs[i] = s.addr()
	}
	return addrs
}

// MasterName is the name the Sentinels monitor the primary under (for
// TALLY_REDIS_MASTER).
func (c *SentinelCluster) MasterName() string { return c.name }

// NodeAddrs are the data nodes' addresses, primary or replica, dead or alive.
func (c *SentinelCluster) NodeAddrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.addr()
	}
	return addrs
}

// Client returns a go-redis failover client on the cluster, with its
// credentials and TLS, closed when the test ends.
func (c *SentinelCluster) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	client := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:       c.name,
		SentinelAddrs:    c.SentinelAddrs(),
		SentinelUsername: c.opts.Sentinels.User,
		SentinelPassword: c.opts.Sentinels.Password,
		Username:         c.opts.Data.User,
		Password:         c.opts.Data.Password,
		TLSConfig:        c.dataTLS,
	})
	tb.Cleanup(func() { _ = client.Close() })
	return client
}

// MasterAddr asks the Sentinels, in turn, where the primary is; the first
// one that answers decides.
func (c *SentinelCluster) MasterAddr(ctx context.Context) (string, error) {
	var errs []error
	for _, a := range c.SentinelAddrs() {
		addr, err := c.askMaster(ctx, a)
		if err == nil {
			return addr, nil
		}
		errs = append(errs, fmt.Errorf("sentinel %s: %w", a, err))
	}
	return "", errors.Join(errs...)
}

// KillMaster kills the current primary with SIGKILL (no shutdown, no
// save: everything it had not replicated is gone) and returns its address.
func (c *SentinelCluster) KillMaster(tb testing.TB) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addr, err := c.MasterAddr(ctx)
	if err != nil {
		tb.Fatalf("sentinel cluster: find the primary: %v", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		if n.addr() == addr {
			if n.proc.exited() {
				tb.Fatalf("sentinel cluster: the Sentinels' primary %s is already dead", addr)
			}
			n.proc.kill()
			return addr
		}
	}
	tb.Fatalf("sentinel cluster: the Sentinels name %s as primary, which is not one of %v", addr, c.nodeAddrsLocked())
	return ""
}

// WaitForFailover waits until every Sentinel names the same primary, other
// than oldAddr, and that node answers as a primary (it takes writes). It
// returns the new primary's address. Here a failover after KillMaster took
// about 3-5 s: 2 s for down-after-milliseconds, then the vote and the
// promotion; allow at least 15 s.
func (c *SentinelCluster) WaitForFailover(tb testing.TB, oldAddr string, timeout time.Duration) string {
	tb.Helper()
	var newAddr string
	err := waitUntil(timeout, 100*time.Millisecond, func() error {
		addr, err := c.agreedMaster()
		if err != nil {
			return err
		}
		if addr == oldAddr {
			return fmt.Errorf("the Sentinels still name %s", oldAddr)
		}
		if role, err := c.nodeRole(addr); err != nil || role != "master" {
			return fmt.Errorf("the Sentinels name %s, which answers role %q (%v)", addr, role, err)
		}
		newAddr = addr
		return nil
	})
	if err != nil {
		tb.Fatalf("sentinel cluster: no failover away from %s: %v\n%s", oldAddr, err, c.sentinelViews())
	}
	return newAddr
}

// RestartKilled restarts every killed data node, empty, on its old port.
// After a failover it starts as a replica of the current primary and this
// returns once it is in sync and the Sentinels count it as a healthy
// replica again (so that a second failover can pick it). Without a
// failover it comes back as an empty primary, and the replica resyncs from
// it: the "Redis restarted without its data" drill.
func (c *SentinelCluster) RestartKilled(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	master, err := c.MasterAddr(ctx)
	if err != nil {
		tb.Fatalf("sentinel cluster: find the primary: %v", err)
	}
	c.mu.Lock()
	var restarted []*redisNode
	for _, n := range c.nodes {
		if !n.proc.exited() {
			continue
		}
		// An empty restart: the node's dir may hold the RDB file it
		// received as a replica, which it would otherwise load.
		_ = os.Remove(filepath.Join(n.dir, "dump.rdb"))
		if n.addr() == master {
			c.startData(tb, n, "")
		} else {
			c.startData(tb, n, master)
		}
		restarted = append(restarted, n)
	}
	c.mu.Unlock()

	var replicas []string
	for _, n := range restarted {
		if n.addr() != master {
			c.waitInSync(tb, n, master, 15*time.Second)
			replicas = append(replicas, n.addr())
		}
	}
	c.waitSentinelsReady(tb, master, replicas, 30*time.Second)
}

// newNode reserves a port and a directory for a node.
func (c *SentinelCluster) newNode(tb testing.TB, name string) *redisNode {
	tb.Helper()
	dir := filepath.Join(c.dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	return &redisNode{name: name, port: FreePort(tb), dir: dir}
}

// startData starts a data node, as a replica of master unless master is
// empty, and waits until it answers PING. Its configuration is a file
// because Sentinel sends CONFIG REWRITE to the nodes it reconfigures.
func (c *SentinelCluster) startData(tb testing.TB, n *redisNode, master string) {
	tb.Helper()
	conf := []string{
		"bind 127.0.0.1",
		"dir " + n.dir,
		`logfile ""`,
		`save ""`,
		"appendonly no",
		// Redis 7 waits 5 s before a diskless full sync by default, to
		// batch replicas; one replica gains nothing from the wait.
		"repl-diskless-sync yes",
		"repl-diskless-sync-delay 0",
	}
	conf = append(conf, confLines(c.opts.data().directives(n.port))...)
	// Every node may be a replica one day (after a failover): each knows
	// how to authenticate to the primary.
	if a := c.opts.Data; a.Password != "" {
		if a.User != "" {
			conf = append(conf, "masteruser "+a.User)
		}
		conf = append(conf, "masterauth "+a.Password)
	}
	if master != "" {
		host, port, _ := strings.Cut(master, ":")
		conf = append(conf, "replicaof "+host+" "+port)
	}
	path := filepath.Join(n.dir, "redis.conf")
	if err := os.WriteFile(path, []byte(strings.Join(conf, "\n")+"\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	n.proc = startProcess(tb, n.name, filepath.Join(n.dir, "redis.log"), c.bin, path)
	c.waitPing(tb, n, c.dataOpts(n.addr()))
}

// startSentinel starts a Sentinel that monitors master.
func (c *SentinelCluster) startSentinel(tb testing.TB, n *redisNode, master string) {
	tb.Helper()
	host, port, _ := strings.Cut(master, ":")
	conf := []string{
		"bind 127.0.0.1",
		"dir " + n.dir,
		`logfile ""`,
		"sentinel resolve-hostnames no",
		fmt.Sprintf("sentinel monitor %s %s %s 2", c.name, host, port),
		fmt.Sprintf("sentinel down-after-milliseconds %s %d", c.name, sentinelDownAfter.Milliseconds()),
		fmt.Sprintf("sentinel failover-timeout %s %d", c.name, sentinelFailoverTimeout.Milliseconds()),
		fmt.Sprintf("sentinel parallel-syncs %s 1", c.name),
	}
	conf = append(conf, confLines(c.opts.sentinels().directives(n.port))...)
	if a := c.opts.Data; a.Password != "" {
		if a.User != "" {
			conf = append(conf, fmt.Sprintf("sentinel auth-user %s %s", c.name, a.User))
		}
		conf = append(conf, fmt.Sprintf("sentinel auth-pass %s %s", c.name, a.Password))
	}
	if a := c.opts.Sentinels; a.Password != "" {
		if a.User != "" {
			conf = append(conf, "sentinel sentinel-user "+a.User)
		}
		conf = append(conf, "sentinel sentinel-pass "+a.Password)
	}
	path := filepath.Join(n.dir, "sentinel.conf")
	if err := os.WriteFile(path, []byte(strings.Join(conf, "\n")+"\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	n.proc = startProcess(tb, n.name, filepath.Join(n.dir, "sentinel.log"), c.bin, path, "--sentinel")
	c.waitPing(tb, n, c.sentinelOpts(n.addr()))
}

// confLines renders directives as redis.conf lines.
func confLines(directives [][]string) []string {
	lines := make([]string, len(directives))
	for i, d := range directives {
		lines[i] = strings.Join(d, " ")
	}
	return lines
}

// dataOpts and sentinelOpts are the options of the helper's own clients
// of a data node and of a Sentinel, with the cluster's credentials and
// TLS; a failed call is not retried (the callers poll).
func (c *SentinelCluster) dataOpts(addr string) *redis.Options {
	a := c.opts.Data
	return &redis.Options{Addr: addr, Username: a.User, Password: a.Password, TLSConfig: c.dataTLS, MaxRetries: -1}
}

func (c *SentinelCluster) sentinelOpts(addr string) *redis.Options {
	a := c.opts.Sentinels
	return &redis.Options{Addr: addr, Username: a.User, Password: a.Password, TLSConfig: c.sentinelTLS, MaxRetries: -1}
}

func (c *SentinelCluster) waitPing(tb testing.TB, n *redisNode, opts *redis.Options) {
	tb.Helper()
	client := redis.NewClient(opts)
	defer client.Close()
	err := waitUntil(10*time.Second, 20*time.Millisecond, func() error {
		if n.proc.exited() {
			return errors.New("the process exited")
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return client.Ping(ctx).Err()
	})
	if err != nil {
		tb.Fatalf("sentinel cluster: %s on %s does not answer: %v\n%s", n.name, n.addr(), err, logTail(n.proc.log, 20))
	}
}

// waitInSync waits until replica n reports an established link to master.
func (c *SentinelCluster) waitInSync(tb testing.TB, n *redisNode, master string, timeout time.Duration) {
	tb.Helper()
	host, port, _ := strings.Cut(master, ":")
	err := waitUntil(timeout, 50*time.Millisecond, func() error {
		info, err := c.replicationInfo(n.addr())
		if err != nil {
			return err
		}
		if info["role"] != "slave" || info["master_host"] != host || info["master_port"] != port || info["master_link_status"] != "up" {
			return fmt.Errorf("role=%s master=%s:%s link=%s", info["role"], info["master_host"], info["master_port"], info["master_link_status"])
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("sentinel cluster: %s is not in sync with %s: %v\n%s", n.addr(), master, err, logTail(n.proc.log, 20))
	}
}

// waitSentinelsReady waits until every Sentinel names master, sees it up,
// counts each of replicas as a healthy replica, and knows the other
// Sentinels (without which no failover can be authorized).
func (c *SentinelCluster) waitSentinelsReady(tb testing.TB, master string, replicas []string, timeout time.Duration) {
	tb.Helper()
	err := waitUntil(timeout, 100*time.Millisecond, func() error {
		for _, sa := range c.SentinelAddrs() {
			if err := c.sentinelReady(sa, master, replicas, len(c.sentinels)-1); err != nil {
				return fmt.Errorf("sentinel %s: %w", sa, err)
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("sentinel cluster: Sentinels not ready: %v\n%s", err, c.sentinelViews())
	}
}

func (c *SentinelCluster) sentinelReady(addr, master string, replicas []string, peers int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s := redis.NewSentinelClient(c.sentinelOpts(addr))
	defer s.Close()
	m, err := s.Master(ctx, c.name).Result()
	if err != nil {
		return err
	}
	if got := m["ip"] + ":" + m["port"]; got != master {
		return fmt.Errorf("names %s as primary, want %s", got, master)
	}
	if m["flags"] != "master" {
		return fmt.Errorf("primary flags %q", m["flags"])
	}
	reps, err := s.Replicas(ctx, c.name).Result()
	if err != nil {
		return err
	}
	for _, want := range replicas {
		ok := false
		for _, r := range reps {
			if r["ip"]+":"+r["port"] == want && r["flags"] == "slave" && r["master-link-status"] == "ok" {
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("does not count %s as a healthy replica (%v)", want, reps)
		}
	}
	sents, err := s.Sentinels(ctx, c.name).Result()
	if err != nil {
		return err
	}
	if len(sents) < peers {
		return fmt.Errorf("knows %d other Sentinels, want %d", len(sents), peers)
	}
	return nil
}

// agreedMaster returns the primary every live Sentinel names, or an error
// when they disagree.
func (c *SentinelCluster) agreedMaster() (string, error) {
	var agreed string
	for _, sa := range c.SentinelAddrs() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		addr, err := c.askMaster(ctx, sa)
		cancel()
		if err != nil {
			return "", fmt.Errorf("sentinel %s: %w", sa, err)
		}
		if agreed != "" && addr != agreed {
			return "", fmt.Errorf("the Sentinels disagree: %s and %s", agreed, addr)
		}
		agreed = addr
	}
	return agreed, nil
}

// sentinelViews describes what each Sentinel believes, for failure messages.
func (c *SentinelCluster) sentinelViews() string {
	var b strings.Builder
	for _, sa := range c.SentinelAddrs() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		s := redis.NewSentinelClient(c.sentinelOpts(sa))
		m, err := s.Master(ctx, c.name).Result()
		reps, _ := s.Replicas(ctx, c.name).Result()
		_ = s.Close()
		cancel()
		fmt.Fprintf(&b, "sentinel %s: master %v (err %v); replicas %v\n", sa, m, err, reps)
	}
	return b.String()
}

func (c *SentinelCluster) nodeAddrsLocked() []string {
	var addrs []string
	for _, n := range c.nodes {
		addrs = append(addrs, n.addr())
	}
	return addrs
}

func (c *SentinelCluster) askMaster(ctx context.Context, sentinel string) (string, error) {
	s := redis.NewSentinelClient(c.sentinelOpts(sentinel))
	defer s.Close()
	hp, err := s.GetMasterAddrByName(ctx, c.name).Result()
	if err != nil {
		return "", err
	}
	if len(hp) != 2 {
		return "", fmt.Errorf("unexpected answer %v", hp)
	}
	return hp[0] + ":" + hp[1], nil
}

// replicationInfo is INFO replication of the node at addr as a map.
func (c *SentinelCluster) replicationInfo(addr string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	client := redis.NewClient(c.dataOpts(addr))
	defer client.Close()
	text, err := client.Info(ctx, "replication").Result()
	if err != nil {
		return nil, err
	}
	info := map[string]string{}
	for _, line := range strings.Split(text, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			info[k] = v
		}
	}
	return info, nil
}

func (c *SentinelCluster) nodeRole(addr string) (string, error) {
	info, err := c.replicationInfo(addr)
	if err != nil {
		return "", err
	}
	return info["role"], nil
}
