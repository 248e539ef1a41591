package bench

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/tools/load"
)

// The cluster phases measure Tally in cluster mode (TALLY_ETCD_ENDPOINTS:
// one owner node per partition of users, a non-owner forwarding a request
// once to the owner; docs/decisions/0021-cluster-ownership-on-etcd.md and
// 0023-forward-once-to-the-owner.md) against what the same load gets
// without it, in one run on this machine:
//
//   - cluster-hot: one hot user on enterprise (no limit), the 64 clients
//     spread over three cluster nodes, against the same load spread over
//     three single-node Tallies on one database and Redis prefix
//     ("ownership off": every process admits for the user and they
//     contend on its rows in Postgres), target ≥ 2×; and against all of
//     it sent to one single-node Tally alone, target ≥ 0.8×.
//   - cluster-forward: over-limit rejections of 1 000 full users on free,
//     all owned by one node (found from X-Tally-Node on a first request
//     per partition), sent through another node (one forward each)
//     against sent to the owner itself, target ≥ 0.5×.
//   - cluster-many: durable admitted creates/s of 10 000 users on
//     enterprise, 256 clients spread over three cluster nodes, against
//     all of it sent to one single-node Tally, target ≥ 1×.
//
// The hot and many phases also measure the cluster with every request
// sent to its user's owner ("cluster-to-owner": the hot user's owner; for
// many users, one load per node with users that node owns), as a client
// or a load balancer that knew the owners would: the cluster without its
// forwards, shown for what it says, with no target.
//
// Each phase starts its own three-member etcd (etcd.go) and its own Tally
// children, each side on a fresh database and its own Redis key prefix,
// and stops them all at its end. The sides are measured in rounds
// (--rounds), their order rotating from round to round so that a drift
// over the phase favours none; the figure compared is the ratio of the
// sides' medians, as everywhere in this benchmark (rounds.go).
//
// Everything shares the machine's two cores: three nodes on one machine
// get no more CPU than one node, and every forwarded request costs a
// second HTTP exchange on the same cores. So besides the rate, each
// round records the CPU its side's Tally processes spent in the measured
// window (/proc/<pid>/stat, sampled every 100 ms; cpuTrace) per answer:
// it moves far less with the machine's other work than the rate, and it
// is what says how the cluster would scale with a machine per node
// (docs/performance.md, "Cluster on one machine").

// clusterPhaseNames are the cluster phases, in the order they run.
var clusterPhaseNames = []string{"cluster-hot", "cluster-forward", "cluster-many"}

// The cluster phases' shapes and targets.
const (
	clusterNodes       = 3
	etcdMembers        = 3
	clusterHotTarget   = 2.0 // vs ownership off
	clusterOneTarget   = 0.8 // vs one node alone
	clusterFwdTarget   = 0.5 // non-owner vs owner
	clusterManyTarget  = 1.0 // vs one node
	ownershipTimeout   = 90 * time.Second
	cpuSampleEvery     = 100 * time.Millisecond
	probeConcurrency   = 16
	clusterProfileSecs = 10
	clusterPoolSize    = 8
)

// The sides of the cluster phases' comparisons.
const (
	sideCluster  = "cluster"
	sideOff      = "ownership-off"
	sideOne      = "one-node"
	sideRouted   = "cluster-to-owner" // each request sent to its user's owner: no forward
	sideOwner    = "owner"
	sideNonOwner = "non-owner"
)

// ClusterRun is one side of one round of a cluster phase.
type ClusterRun struct {
	Phase string `json:"phase"`
	Round int    `json:"round"`
	Side  string `json:"side"`
	// Targets is how many Tally processes the load was spread over;
	// Processes how many were counted in CPU.
	Targets   int `json:"targets"`
	Processes int `json:"processes"`
	// PerS is admitted/s (rejected/s in cluster-forward), Answers their
	// count in the measured window.
	PerS    float64 `json:"per_s"`
	Answers int64   `json:"answers"`
	P99Ms   float64 `json:"p99_ms"`
	// CPUSeconds is what the side's Tally processes spent in the window;
	// MicrosPerAnswer is that per answer, CoresBusy per second of window.
	CPUSeconds      float64 `json:"cpu_s"`
	WindowS         float64 `json:"window_s"`
	MicrosPerAnswer float64 `json:"cpu_us_per_answer"`
	CoresBusy       float64 `json:"cores_busy"`
	// MachineBusy is the machine's busy cores in the window (/proc/stat:
	// the load client, Postgres, Redis, etcd and anything else running).
	MachineBusy float64 `json:"machine_cores_busy"`
	// The group commits of the side's nodes in the window
	// (tally_commit_batch_size, tally_commit_seconds): transactions a
	// second, admissions per transaction, and a transaction's mean time.
	CommitsPerS  float64 `json:"commits_per_s"`
	MeanBatch    float64 `json:"mean_batch"`
	MeanCommitMs float64 `json:"mean_commit_ms"`
	// Profiles are CPU profiles taken in the window (--cluster-pprof),
	// by node: the file of each.
	Profiles map[string]string `json:"profiles,omitempty"`
}

// clusterSide is one side of a comparison: where the load goes and whose
// CPU counts.
type clusterSide struct {
	name    string
	targets []*child // the load is spread over these
	counted []*child // their CPU is the side's (targets, and any node a forward reaches)
}

// nodeGroup is a set of Tally children of one side: cluster nodes (ids
// set) or single nodes.
type nodeGroup struct {
	label string
	ids   []string
	nodes []*child
}

func (g *nodeGroup) urls() []string {
	out := make([]string, len(g.nodes))
	for i, c := range g.nodes {
		out[i] = c.url()
	}
	return out
}

// nodeOf is the child whose cluster node id is id.
func (g *nodeGroup) nodeOf(id string) *child {
	if i := slices.Index(g.ids, id); i >= 0 {
		return g.nodes[i]
	}
	return nil
}

// groupSpec is how to start a nodeGroup.
type groupSpec struct {
	label      string
	db, prefix string
	n          int
	etcd       *etcdCluster // nil: single-node mode
}

// startGroup starts the group's Tally children one after the other (the
// first migrates the fresh database). Cluster nodes get a port chosen
// before they start, since the other nodes must be told where to forward
// (TALLY_ADVERTISE_URL); they join once they serve (app/cluster.go), so
// the caller waits for ownership to settle (waitOwnership) before
// measuring.
func (r *runner) startGroup(ctx context.Context, p *Phase, s groupSpec) (*nodeGroup, error) {
	g := &nodeGroup{label: s.label}
	var ports []int
	secret := randomSecret()
	if s.etcd != nil {
		var err error
		if ports, err = freePorts(s.n); err != nil {
			return nil, err
		}
	}
	for i := range s.n {
		// Up to seven Tallies run at once here, and pgx keeps the
		// connections it opened (a verification's reads open many): at
		// the default 16 each they could take the machine's Postgres past
		// its max_connections (100 here). Every side gets the same pool.
		env := append(r.tallyEnvOn(s.db, s.prefix, mainIdle, childGOGC), "TALLY_DATABASE_MAX_CONNS="+strconv.Itoa(clusterPoolSize))
		if s.etcd != nil {
			id := fmt.Sprintf("%s-%d", s.label, i+1)
			addr := fmt.Sprintf("127.0.0.1:%d", ports[i])
			env = append(env,
				"TALLY_HTTP_ADDR="+addr, // the last of a duplicated variable wins
				"TALLY_ADVERTISE_URL=http://"+addr,
				"TALLY_NODE_ID="+id,
				"TALLY_ETCD_ENDPOINTS="+s.etcd.endpoints(),
				"TALLY_CLUSTER_SECRET="+secret,
			)
			g.ids = append(g.ids, id)
		}
		if r.opts.ClusterPprof {
			env = append(env, "TALLY_OPS_PPROF=true")
		}
		logPath := filepath.Join(r.outDir, fmt.Sprintf("%s-%s-%d.log", r.stem, s.label, i+1))
		p.LogFiles = append(p.LogFiles, logPath)
		c, err := startChild(ctx, r.exe, cmdServeTally, env, logPath)
		if err != nil {
			r.stopGroup(g)
			return nil, fmt.Errorf("%s node %d: %w", s.label, i+1, err)
		}
		g.nodes = append(g.nodes, c)
	}
	mode := "single-node mode"
	if s.etcd != nil {
		mode = "cluster mode, etcd " + s.etcd.endpoints()
	}
	r.logf("%s: %d Tally node(s) on %s (%s), database %s", s.label, s.n, strings.Join(g.urls(), ", "), mode, s.db)
	return g, nil
}

// stopGroup stops the group's children, all at once: cluster nodes hand
// their partitions off as they leave (bounded by TALLY_SHUTDOWN_TIMEOUT).
func (r *runner) stopGroup(g *nodeGroup) {
	var wg sync.WaitGroup
	for _, c := range g.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.stop(); err != nil {
				r.note("%s: a node did not stop cleanly: %v", g.label, err)
			}
		}()
	}
	wg.Wait()
}

// ---- the phases ----

// withEtcd runs a cluster phase f on an etcd of its own, with the probe
// users f finds partition owners with; etcd stops after f has returned
// (f stops its nodes before it returns).
func (r *runner) withEtcd(ctx context.Context, p *Phase, f func(e *etcdCluster, ps *probeSet) error) error {
	bin, err := etcdBinary(r.opts.EtcdBin)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(r.tmp, p.Name+"-etcd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	logPrefix := filepath.Join(r.outDir, r.stem+"-"+p.Name)
	e, err := startEtcd(ctx, bin, dir, logPrefix, etcdMembers)
	if err != nil {
		return err
	}
	for _, m := range e.members {
		p.LogFiles = append(p.LogFiles, m.log)
	}
	defer e.stop()
	r.logf("%s: etcd (%s) serving on %s", p.Name, bin, e.endpoints())
	ps, err := newProbeSet("bench-probe-"+randomHex(3), r.secret)
	if err != nil {
		return err
	}
	return f(e, ps)
}

// phaseDB creates a fresh database for one side of a phase, dropped when
// the returned function is called (after the side's nodes stopped).
func (r *runner) phaseDB(ctx context.Context, suffix string) (string, func(), error) {
	db, err := r.st.extraDB(ctx, suffix)
	if err != nil {
		return "", nil, err
	}
	return db, func() {
		if e := r.st.dropDB(db); e != nil {
			r.logf("%v (dropped at the end instead)", e)
		}
	}, nil
}

func (r *runner) phaseClusterHot(ctx context.Context, p *Phase) error {
	return r.withEtcd(ctx, p, func(e *etcdCluster, ps *probeSet) error {
		dbC, dropC, err := r.phaseDB(ctx, "clhot")
		if err != nil {
			return err
		}
		defer dropC()
		dbO, dropO, err := r.phaseDB(ctx, "clhot_off")
		if err != nil {
			return err
		}
		defer dropO()
		cl, err := r.startGroup(ctx, p, groupSpec{label: "clhot", db: dbC, prefix: r.st.redisPrefix + "clhot:", n: clusterNodes, etcd: e})
		if err != nil {
			return err
		}
		defer r.stopGroup(cl)
		// Ownership off: three single-node Tallies on one database and one
		// Redis prefix, as several processes behind a load balancer are
		// deployed without a cluster; the first of them is also the "one
		// node alone".
		off, err := r.startGroup(ctx, p, groupSpec{label: "clhot-off", db: dbO, prefix: r.st.redisPrefix + "clhotoff:", n: clusterNodes})
		if err != nil {
			return err
		}
		defer r.stopGroup(off)
		own, err := r.waitOwnership(ctx, cl, ps)
		if err != nil {
			return err
		}
		sides := []clusterSide{
			{name: sideOff, targets: off.nodes, counted: off.nodes},
			{name: sideOne, targets: off.nodes[:1], counted: off.nodes[:1]},
			{name: sideCluster, targets: cl.nodes, counted: cl.nodes},
			{name: sideRouted, counted: cl.nodes}, // targets: the round's owner
		}
		tag := randomHex(3)
		for round := 1; round <= r.opts.Rounds; round++ {
			for _, s := range rotated(sides, round) {
				r.settle(ctx, p.Name)
				prefix := fmt.Sprintf("bench-clhot-%s-%s-r%d", tag, s.name, round)
				if s.name == sideRouted {
					s.targets = []*child{cl.nodeOf(own[domain.PartitionOf(prefix+"-0")])}
				}
				cfg := r.loadConfig(s.targets[0].url())
				cfg.URLs = urlsOf(s.targets)
				cfg.Hot, cfg.Plan, cfg.UserPrefix = true, "enterprise", prefix
				cfgs := []load.Config{cfg}
				var profs []profileReq
				if r.opts.ClusterPprof && round == r.opts.Rounds {
					switch s.name {
					case sideOne:
						profs = []profileReq{{node: off.nodes[0], id: "single"}}
					case sideCluster:
						// The hot user's owner, and a node that forwards
						// to it.
						owner := own[domain.PartitionOf(cfg.UserPrefix+"-0")]
						profs = []profileReq{{node: cl.nodeOf(owner), id: owner}}
						for i, id := range cl.ids {
							if id != owner {
								profs = append(profs, profileReq{node: cl.nodes[i], id: id})
								break
							}
						}
					}
				}
				x, err := r.measureSide(ctx, p, round, s, cfgs, false, profs)
				if err != nil {
					return err
				}
				r.clusterRuns = append(r.clusterRuns, x)
			}
		}
		return nil
	})
}

func (r *runner) phaseClusterForward(ctx context.Context, p *Phase) error {
	return r.withEtcd(ctx, p, func(e *etcdCluster, ps *probeSet) error {
		db, drop, err := r.phaseDB(ctx, "clfwd")
		if err != nil {
			return err
		}
		defer drop()
		cl, err := r.startGroup(ctx, p, groupSpec{label: "clfwd", db: db, prefix: r.st.redisPrefix + "clfwd:", n: clusterNodes, etcd: e})
		if err != nil {
			return err
		}
		defer r.stopGroup(cl)
		own, err := r.waitOwnership(ctx, cl, ps)
		if err != nil {
			return err
		}
		// Every user is owned by the first node; the second forwards.
		ownerID, fwdID := cl.ids[0], cl.ids[1]
		owner, fwd := cl.nodes[0], cl.nodes[1]
		users := usersOwnedBy(own, ownerID, "bench-clfwd-"+randomHex(3), overUsers)
		r.logf("%s: %d users on free, all owned by %s (X-Tally-Node of a first request per partition); %s forwards", p.Name, len(users), ownerID, fwdID)
		if err := r.fillUsers(ctx, p, owner.url(), users); err != nil {
			return err
		}
		sides := []clusterSide{
			{name: sideOwner, targets: []*child{owner}, counted: cl.nodes},
			{name: sideNonOwner, targets: []*child{fwd}, counted: cl.nodes},
		}
		for round := 1; round <= r.opts.Rounds; round++ {
			for _, s := range rotated(sides, round) {
				r.settle(ctx, p.Name)
				cfg := r.loadConfig(s.targets[0].url())
				cfg.UserIDs, cfg.Plan, cfg.NoProvision = users, "free", true
				var profs []profileReq
				if r.opts.ClusterPprof && round == r.opts.Rounds {
					profs = []profileReq{{node: owner, id: ownerID}}
					if s.name == sideNonOwner {
						profs = append(profs, profileReq{node: fwd, id: fwdID})
					}
				}
				x, err := r.measureSide(ctx, p, round, s, []load.Config{cfg}, true, profs)
				if err != nil {
					return err
				}
				r.clusterRuns = append(r.clusterRuns, x)
			}
		}
		// The comparison means something only if the users stayed with
		// their owner throughout.
		client := &http.Client{Timeout: 5 * time.Second}
		defer client.CloseIdleConnections()
		if after := sweep(ctx, client, cl.urls(), ps); after != own {
			r.note("%s: partition ownership changed during the phase: some rejections may have taken another path", p.Name)
		}
		return nil
	})
}

// fillUsers fills the given users on free to their limit, verified, as
// the over-limit phase fills its own.
func (r *runner) fillUsers(ctx context.Context, p *Phase, url string, users []string) error {
	fill := r.loadConfig(url)
	fill.UserIDs, fill.Plan = users, "free"
	fill.Duration, fill.Warmup, fill.Requests = 0, 0, int64(len(users)*(freeLimit+1))
	fill.NoVerify, fill.Progress = false, nil
	want := int64(len(users) * freeLimit)
	var admitted int64
	for round := 1; admitted < want; round++ {
		if round > 5 {
			return fmt.Errorf("the users are still not full after 5 fill rounds (%d of %d sessions admitted)", admitted, want)
		}
		res, err := r.runLoad(ctx, p, fmt.Sprintf("%s: fill round %d", p.Name, round), fill)
		if err != nil {
			return err
		}
		admitted += res.Admitted
		r.logf("%s: fill round %d: %d admitted (%d of %d), %d rejected", p.Name, round, res.Admitted, admitted, want, res.Rejected)
		fill.NoProvision, fill.NoVerify, fill.Requests = true, true, int64(len(users)*2)
	}
	return nil
}

func (r *runner) phaseClusterMany(ctx context.Context, p *Phase) error {
	return r.withEtcd(ctx, p, func(e *etcdCluster, ps *probeSet) error {
		dbC, dropC, err := r.phaseDB(ctx, "clmany")
		if err != nil {
			return err
		}
		defer dropC()
		dbO, dropO, err := r.phaseDB(ctx, "clmany_one")
		if err != nil {
			return err
		}
		defer dropO()
		cl, err := r.startGroup(ctx, p, groupSpec{label: "clmany", db: dbC, prefix: r.st.redisPrefix + "clmany:", n: clusterNodes, etcd: e})
		if err != nil {
			return err
		}
		defer r.stopGroup(cl)
		one, err := r.startGroup(ctx, p, groupSpec{label: "clmany-one", db: dbO, prefix: r.st.redisPrefix + "clmanyone:", n: 1})
		if err != nil {
			return err
		}
		defer r.stopGroup(one)
		own, err := r.waitOwnership(ctx, cl, ps)
		if err != nil {
			return err
		}
		sides := []clusterSide{
			{name: sideOne, targets: one.nodes, counted: one.nodes},
			{name: sideCluster, targets: cl.nodes, counted: cl.nodes},
			{name: sideRouted, targets: cl.nodes, counted: cl.nodes},
		}
		tag := randomHex(3)
		for round := 1; round <= r.opts.Rounds; round++ {
			for _, s := range rotated(sides, round) {
				r.settle(ctx, p.Name)
				prefix := fmt.Sprintf("bench-clmany-%s-%s-r%d", tag, s.name, round)
				var cfgs []load.Config
				if s.name == sideRouted {
					if cfgs, err = r.routedLoads(ctx, p, cl, own, prefix, round); err != nil {
						return err
					}
				} else {
					cfg := r.loadConfig(s.targets[0].url())
					cfg.URLs = urlsOf(s.targets)
					cfg.Users, cfg.Plan, cfg.Concurrency, cfg.UserPrefix = manyUsers, "enterprise", highWorkers, prefix
					cfgs = []load.Config{cfg}
				}
				var profs []profileReq
				if r.opts.ClusterPprof && round == r.opts.Rounds {
					// Every cluster node takes a third of the load and
					// forwards two thirds of it: one is every node.
					profs = []profileReq{{node: s.targets[0], id: map[bool]string{true: cl.ids[0], false: "single"}[s.name != sideOne]}}
				}
				x, err := r.measureSide(ctx, p, round, s, cfgs, false, profs)
				if err != nil {
					return err
				}
				r.clusterRuns = append(r.clusterRuns, x)
			}
		}
		return nil
	})
}

// routedLoads are the many-users load split by owner: one load per node,
// with the node's share of the users (manyUsers in all, each owned by
// that node) and of the clients, sent to that node only, so that nothing
// is forwarded. Each part's users are provisioned and touched once first,
// through their owner and verified, and the parts themselves run
// unverified and without provisioning, so that all three start at once.
func (r *runner) routedLoads(ctx context.Context, p *Phase, cl *nodeGroup, own owners, prefix string, round int) ([]load.Config, error) {
	var cfgs []load.Config
	for i, node := range cl.nodes {
		users := usersOwnedBy(own, cl.ids[i], fmt.Sprintf("%s-%d", prefix, i+1), manyUsers/len(cl.nodes))
		touch := r.loadConfig(node.url())
		touch.UserIDs, touch.Plan, touch.Progress = users, "enterprise", nil
		touch.Duration, touch.Warmup, touch.Requests, touch.NoVerify = 0, 0, int64(len(users)), false
		if _, err := r.runLoad(ctx, p, fmt.Sprintf("%s, %s, round %d: provision and touch %s's users", p.Name, sideRouted, round, cl.ids[i]), touch); err != nil {
			return nil, err
		}
		cfg := r.loadConfig(node.url())
		cfg.UserIDs, cfg.Plan, cfg.NoProvision, cfg.NoVerify = users, "enterprise", true, true
		// 256 clients in all: 86 + 85 + 85.
		cfg.Concurrency = highWorkers / len(cl.nodes)
		if i < highWorkers%len(cl.nodes) {
			cfg.Concurrency++
		}
		cfgs = append(cfgs, cfg)
	}
	return cfgs, nil
}

func urlsOf(cs []*child) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.url()
	}
	return out
}

// ---- the table ----

// clusterFigure is one side's rounds of one phase: the rate, or the CPU
// per answer.
func (r *runner) clusterFigure(phase, side string, f func(ClusterRun) float64) []float64 {
	var out []float64
	for _, x := range r.clusterRuns {
		if x.Phase == phase && x.Side == side {
			out = append(out, f(x))
		}
	}
	return out
}

// clusterRows are the cluster phases' rows of the table.
func (r *runner) clusterRows(compared func(Row, []float64, []float64) Row) []Row {
	rate := func(x ClusterRun) float64 { return x.PerS }
	cpu := func(x ClusterRun) float64 { return x.MicrosPerAnswer }
	fig := func(phase, side string, f func(ClusterRun) float64) []float64 { return r.clusterFigure(phase, side, f) }
	hotCPU := compared(Row{Key: "cluster_hot_cpu", Figure: "  … Tally CPU per admitted create (3 nodes vs one node)", Unit: "µs",
		BaselineName: "one single node"},
		fig("cluster-hot", sideCluster, cpu), fig("cluster-hot", sideOne, cpu))
	hotRoutedCPU := compared(Row{Key: "cluster_hot_routed_cpu", Figure: "  … the same, each request sent to the owner (no forward)", Unit: "µs",
		BaselineName: "one single node"},
		fig("cluster-hot", sideRouted, cpu), fig("cluster-hot", sideOne, cpu))
	rows := []Row{
		compared(Row{Key: "cluster_hot_vs_off", Figure: "one hot user through 3 cluster nodes, 64 clients: admitted/s", Unit: "/s",
			BaselineName: "ownership off: 3 single nodes, one database", Target: atLeastRatio(clusterHotTarget)},
			fig("cluster-hot", sideCluster, rate), fig("cluster-hot", sideOff, rate)),
		compared(Row{Key: "cluster_hot_vs_one", Figure: "  … against one node alone", Unit: "/s",
			BaselineName: "all to one single node", Target: atLeastRatio(clusterOneTarget)},
			fig("cluster-hot", sideCluster, rate), fig("cluster-hot", sideOne, rate)),
		compared(Row{Key: "cluster_hot_routed", Figure: "  … the cluster with each request sent to the owner (no forward)", Unit: "/s",
			BaselineName: "all to one single node"},
			fig("cluster-hot", sideRouted, rate), fig("cluster-hot", sideOne, rate)),
		hotCPU,
		hotRoutedCPU,
		compared(Row{Key: "cluster_forward", Figure: fmt.Sprintf("over-limit rejections/s through a non-owner (one forward), %s full users", groupDigits(overUsers)), Unit: "/s",
			BaselineName: "through the owner", Target: atLeastRatio(clusterFwdTarget)},
			fig("cluster-forward", sideNonOwner, rate), fig("cluster-forward", sideOwner, rate)),
		compared(Row{Key: "cluster_forward_cpu", Figure: "  … Tally CPU per rejection (all 3 nodes)", Unit: "µs",
			BaselineName: "through the owner"},
			fig("cluster-forward", sideNonOwner, cpu), fig("cluster-forward", sideOwner, cpu)),
		compared(Row{Key: "cluster_many", Figure: fmt.Sprintf("durable admitted creates/s, %s users over 3 cluster nodes, 256 clients", groupDigits(manyUsers)), Unit: "/s",
			BaselineName: "one single node", Target: atLeastRatio(clusterManyTarget)},
			fig("cluster-many", sideCluster, rate), fig("cluster-many", sideOne, rate)),
		compared(Row{Key: "cluster_many_routed", Figure: "  … the cluster with each request sent to its user's owner (no forward)", Unit: "/s",
			BaselineName: "one single node"},
			fig("cluster-many", sideRouted, rate), fig("cluster-many", sideOne, rate)),
	}
	manyCPU := compared(Row{Key: "cluster_many_cpu", Figure: "  … Tally CPU per admitted create (3 nodes vs one node)", Unit: "µs",
		BaselineName: "one single node"},
		fig("cluster-many", sideCluster, cpu), fig("cluster-many", sideOne, cpu))
	manyRoutedCPU := compared(Row{Key: "cluster_many_routed_cpu", Figure: "  … the same, each request sent to its user's owner", Unit: "µs",
		BaselineName: "one single node"},
		fig("cluster-many", sideRouted, cpu), fig("cluster-many", sideOne, cpu))
	if m := projectedScaling(manyCPU.Tally, manyCPU.Baseline); m > 0 {
		manyCPU.Note = fmt.Sprintf("on one machine the nodes share its cores; with a machine per node, if Tally's CPU bounds each one (not Postgres), "+
			"requests spread evenly over the nodes would be admitted at about %.1f× one node's rate (3 × one node's CPU per create ÷ the cluster's; docs/performance.md, \"Cluster on one machine\")", m)
	}
	if m := projectedScaling(manyRoutedCPU.Tally, manyRoutedCPU.Baseline); m > 0 {
		manyRoutedCPU.Note = fmt.Sprintf("likewise, requests routed to their owner by the client or the load balancer: about %.1f× one node's rate on three machines", m)
	}
	return append(rows, manyCPU, manyRoutedCPU)
}

// projectedScaling is what three nodes on three machines would admit
// against one node, if CPU bounds each node: three times one node's
// capacity, each create costing the cluster's CPU instead of one node's.
func projectedScaling(clusterCPU, oneCPU *float64) float64 {
	if clusterCPU == nil || oneCPU == nil || *clusterCPU <= 0 {
		return 0
	}
	return clusterNodes * *oneCPU / *clusterCPU
}

// clusterCells is the cluster phases' rounds as a table.
func clusterCells(runs []ClusterRun) ([]string, [][]string) {
	head := []string{"phase", "round", "side", "nodes", "rate", "p99", "Tally cores", "Tally CPU per answer", "machine cores", "commits/s", "per commit", "commit time"}
	var rows [][]string
	for _, x := range runs {
		rate := fmtValue(&x.PerS, "/s")
		if x.Phase == "cluster-forward" {
			rate += " rejected"
		} else {
			rate += " admitted"
		}
		commits, batch, ms := "—", "—", "—"
		if x.CommitsPerS > 0 {
			commits, batch, ms = groupDigits(x.CommitsPerS), fmt.Sprintf("%.1f", x.MeanBatch), fmtValue(&x.MeanCommitMs, "ms")
		}
		rows = append(rows, []string{x.Phase, fmt.Sprint(x.Round), x.Side, fmt.Sprintf("%d (CPU of %d)", x.Targets, x.Processes), rate,
			fmtValue(&x.P99Ms, "ms"), fmt.Sprintf("%.2f", x.CoresBusy), fmtValue(&x.MicrosPerAnswer, "µs"), fmt.Sprintf("%.2f", x.MachineBusy),
			commits, batch, ms})
	}
	return head, rows
}
