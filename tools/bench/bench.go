// Package bench is Tally's side-by-side benchmark (`make bench-compare`,
// cmd/tally-bench): in one run, on one machine, it measures Tally and the
// two things Tally is meant to beat or match, and prints the ratios.
// Absolute numbers depend on the machine and on whatever else it is doing;
// ratios taken minutes apart on the same machine are what carry over, so
// every figure compared here is measured in the same run. Nothing here is
// asserted in tests.
//
// The baselines, and why each:
//
//   - The row-lock transaction (tools/bench/rowlock.sql through pgbench):
//     what a team would write instead of Tally — lock the user's counter
//     row with SELECT … FOR UPDATE, insert the session, bump the counter,
//     commit, once per request. It is as durable as Tally's admissions (a
//     committed row before the answer), so "durable admitted creates/s"
//     against its tps is a like-for-like comparison of the accounting
//     itself. pgbench is the fastest client such a transaction could have
//     (no HTTP, no JSON), which makes the ratio conservative. It runs over
//     100 000 users and over one hot user, whose row lock serializes every
//     request: the case Tally's in-memory reservation is for.
//   - Bare Gin decoding the same body with no accounting (a child process
//     of this binary): the ceiling of the HTTP edge on this machine. An
//     over-limit rejection needs no write, so Tally should refuse nearly
//     as fast as a server that does nothing but decode and answer.
//
// Tally itself runs as a child process built by app.New from TALLY_*
// variables (Postgres + Redis, as in production). The throughput phases run
// it with GOGC=400 (measured +5–10%, docs/decisions/0009-gc-defaults.md; the Gin child gets the
// same setting so the ratio is not GC tuning); the memory phases run a fresh
// child with Go's default GC (GOGC=100), as Tally ships, because with
// GOGC=400 the heap may grow to five times what is live before a GC, and
// RSS per user would measure that setting rather than the service. The load client is tools/load, in this process; it and
// the servers share the machine's cores, as they would in the figures the
// targets were set from.
//
// Every figure compared with a baseline is measured in rounds (--rounds,
// default 3, 2 with --quick), the baseline and Tally in turn within each
// round, and compared by the ratio of the two sides' medians; the table
// shows the medians and a note under it each round's figures and ratio
// (rounds.go). The baseline's phase measures round 1, and the Tally phase
// compared with it measures each later round's baseline just before its
// own (a baseline phase run without its Tally phase measures every round
// itself). Every measurement starts right after a Postgres checkpoint.
//
// Phases, in order: row-lock (pgbench, many users then one hot user), Gin,
// then Tally: many users (64 and 256 workers each round; group commit
// gains from concurrency, so a round's better one is its "durable
// admitted/s", and their median the "max durable admitted/s"), against the
// row-lock many-users tps (target ≥ 4×); one hot user, against the
// row-lock hot user (≥ 12×); over-limit rejections (users filled to their
// limit first), against bare Gin's answers (≥ 0.8×); p99 by load: open
// loop (a constant arrival rate, so stalls are not hidden by coordinated
// omission) at 10, 25, 50, 75 and 90% of the max durable admitted/s
// (--latency-levels), each rate's offered and achieved rate, p50, p90, p99
// and max in a table of its own, the 50% row checked against p99 ≤ 10 ms
// (latency.go); with --base-ref REF, CPU per admitted create of `tally
// serve` built from the working tree against the same built from REF,
// alternating rounds under the many phase's load (new/base ≤ 0.7×,
// cpu.go); memory per active user (VmRSS before and after touching users
// never seen, actors still live), and RSS while touching a million users
// with a short idle timeout (in a separate Tally child, so its VmHWM is
// that phase's peak alone); then the alerts phase (alerts.go;
// --skip-alerts leaves it out): durable admitted creates/s of fresh free
// users each pushed past their limit, on single nodes with usage alerts
// on (a receiver in this process answering 204) and on with the receiver
// down, each against alerts off (≥ 0.9× both); then the cluster phases (cluster.go, each on
// an etcd and Tally nodes of its own; --skip-cluster leaves them out):
// one hot user through three cluster nodes against three single nodes on
// one database (≥ 2×) and against one node alone (≥ 0.8×), over-limit
// rejections through a non-owner against through the owner (≥ 0.5×), and
// many users over three cluster nodes against one node (≥ 1×).
//
// `--suite overload` (`make overload`) runs another list of phases with the
// same harness: what Tally does past its capacity, through a restart, next
// to stalled clients and with a poisoned create in its batches
// (scenarios.go).
package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/tally-dev/tally/tools/load"
)

// The phases of the default suite ("compare"), in the order they run;
// --only takes these names (or the overload suite's, scenarios.go).
var phaseNames = append([]string{"rowlock", "gin", "many", "hot", "overlimit", "latency", "cpu", "memory", "million", alertsPhaseName}, clusterPhaseNames...)

// suites are the phase lists --suite chooses between: the side-by-side
// comparison, and the overload scenarios (scenarios.go).
var suites = map[string][]string{"compare": phaseNames, "overload": overloadPhases}

// Fixed shapes of the load, and the targets the figures are checked against (docs/performance.md).
const (
	manyUsers      = 10000
	overUsers      = 1000
	freeLimit      = 10 // sessions per period on the built-in free plan
	rowlockUsers   = 100000
	baseWorkers    = 64
	highWorkers    = 256
	childGOGC      = "400"
	mainIdle       = time.Hour // (e) needs every actor of the run still live
	millionIdle    = 20 * time.Second
	millionTarget  = 1000000
	rssLimitMB     = 2048
	defaultMemUser = 100000
)

// Options is one benchmark run.
type Options struct {
	Duration     time.Duration
	Warmup       time.Duration
	Quick        bool
	SkipMillion  bool
	MillionUsers int
	MemoryUsers  int
	PostgresURL  string
	RedisAddr    string
	Out          string
	NoVerify     bool
	Only         []string
	Command      string
	// Rounds is how many alternating rounds each compared figure is
	// measured in (rounds.go).
	Rounds int
	// BaseRef is the git ref whose ./cmd/tally the cpu phase compares the
	// working tree's with ("": no cpu phase).
	BaseRef string
	// LatencyLevels are the fractions of the max durable admitted/s the
	// latency phase offers, open loop, in order.
	LatencyLevels []float64

	// The overload suite (scenarios.go).
	Suite            string
	Capacity         float64
	OverloadDuration time.Duration
	Tail             time.Duration
	OverloadConns    int
	MaxInFlight      int
	SlowConns        int
	ReadTimeout      time.Duration
	Vegeta           string

	// The cluster phases (cluster.go): SkipCluster leaves them out,
	// EtcdBin is the etcd server they start ("": bin/etcd), ClusterPprof
	// takes a CPU profile of a node in each one's last round.
	SkipCluster  bool
	EtcdBin      string
	ClusterPprof bool

	// SkipAlerts leaves out the alerts phase (alerts.go).
	SkipAlerts bool
}

// Run is the benchmark's command line (cmd/tally-bench), and also the
// hidden server commands its children run.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && IsChildCommand(args[0]) {
		return runChild(ctx, args[0], stdout, stderr)
	}
	opts, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	opts.Command = commandLine(args)
	r, err := newRunner(opts, stdout, stderr)
	if err != nil {
		return err
	}
	return r.run(ctx)
}

func parseFlags(args []string, stderr io.Writer) (Options, error) {
	var o Options
	fs := flag.NewFlagSet("tally-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: tally-bench [flags]

Measures, in one run on this machine, Tally against the row-lock
transaction (tools/bench/rowlock.sql through pgbench) and against bare Gin
decoding the same body with no accounting, and prints the ratios with the
targets. Uses the machine's PostgreSQL (two fresh databases) and Redis (a
private key prefix), and removes them at the end, even on error or Ctrl-C.
Each compared figure is the ratio of the medians of --rounds alternating
rounds (baseline, then Tally). --base-ref REF adds the cpu phase: CPU per
admitted create of the working tree's ./cmd/tally against REF's.
Results go to --out as JSON and Markdown. A default run takes 35-45
minutes on a 2-core machine: about 10 the million-users phase
(--skip-million) and 15 the cluster phases (--skip-cluster: cluster-hot,
cluster-forward and cluster-many start three etcd members, bin/etcd from
make etcd, and Tally nodes of their own; about 4 with --quick); --quick
--skip-million --skip-cluster takes about 4. The alerts phase
(--skip-alerts) compares alerts off, on, and on with the receiver down:
a few minutes.

--suite overload runs the overload scenarios instead (capacity, 2x and 3x
capacity with the recovery after, a vegeta cross-check, a restart under
load, 1000 stalled clients, a poisoned create), each figure against its
target: about 5 minutes, 3 with --quick.

Flags:
`)
		fs.PrintDefaults()
	}
	fs.DurationVar(&o.Duration, "duration", 15*time.Second, "length of each measured phase")
	fs.DurationVar(&o.Warmup, "warmup", -1, "unmeasured load before each HTTP phase (default: duration/5, at most 3s)")
	fs.BoolVar(&o.Quick, "quick", false, "a quick run: 5s phases, 20 000 users for the memory phase, 100 000 for the million check; in the overload suite 10s overloads and 5s tails (explicit flags win)")
	fs.BoolVar(&o.SkipMillion, "skip-million", false, "skip the million-users RSS phase (the longest)")
	fs.BoolVar(&o.SkipCluster, "skip-cluster", false, "skip the cluster phases ("+strings.Join(clusterPhaseNames, ", ")+": three etcd members and three Tally nodes each, several minutes)")
	fs.BoolVar(&o.SkipAlerts, "skip-alerts", false, "skip the alerts phase (alerts off, on with a receiver, on with the receiver down: three Tally children in turn, a fresh database each)")
	fs.StringVar(&o.EtcdBin, "etcd-bin", "", "the etcd server the cluster phases start (default: bin/etcd of the repository, built by `make etcd`)")
	fs.BoolVar(&o.ClusterPprof, "cluster-pprof", false, "cluster phases: serve pprof on the nodes' ops listeners and write CPU profiles to --out, taken in each phase's last round: of the single node, of the owner and of a node forwarding to it, of a cluster node under many users")
	fs.IntVar(&o.MillionUsers, "million-users", millionTarget, "distinct users the million-users phase touches")
	fs.IntVar(&o.MemoryUsers, "memory-users", defaultMemUser, "new users the memory-per-user phase touches")
	fs.StringVar(&o.PostgresURL, "postgres-url", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL URL of a role that may CREATE DATABASE")
	fs.StringVar(&o.RedisAddr, "redis-addr", "127.0.0.1:6379", "Redis host:port (keys go under a private prefix)")
	fs.StringVar(&o.Out, "out", filepath.Join("bin", "bench-results"), "directory for the JSON and Markdown results and the servers' logs")
	fs.IntVar(&o.Rounds, "rounds", defaultRounds, "alternating rounds (baseline, then Tally) of each compared figure: row-lock vs many users and vs the hot user, bare Gin vs over-limit, --base-ref vs the working tree's CPU per create; each side's median is compared (--quick: 2)")
	fs.StringVar(&o.BaseRef, "base-ref", "", "a git `ref`: build its ./cmd/tally and the working tree's, run each as \"tally serve\" under the same closed-loop creates, and compare their CPU per admitted create (the cpu phase, run only with this flag)")
	levels := fs.String("latency-levels", "10,25,50,75,90", "the latency phase's open-loop rates, in % of the max durable admitted/s (the 50% row is checked against p99 ≤ 10 ms)")
	fs.BoolVar(&o.NoVerify, "no-verify", false, "skip tools/load's invariant checks after each Tally phase (faster; they read every admitted session back)")
	only := fs.String("only", "", "comma-separated phases of the suite to run (compare: "+strings.Join(phaseNames, ",")+"; overload: "+strings.Join(overloadPhases, ",")+"); default all")
	fs.StringVar(&o.Suite, "suite", "compare", "compare: Tally against the row-lock and bare-Gin baselines; overload: the overload, restart, slow-client and poison scenarios (make overload)")
	fs.Float64Var(&o.Capacity, "capacity", 0, "overload suite: use this many admitted creates/s as the capacity instead of measuring the closed-loop max (it is still run for --duration, open loop, to read RSS at capacity)")
	fs.DurationVar(&o.OverloadDuration, "overload-duration", 30*time.Second, "overload suite: how long each multiple of capacity (and vegeta's) is offered")
	fs.DurationVar(&o.Tail, "tail", 10*time.Second, "overload suite: the normal-rate load after each overload, in which p99 must come back")
	fs.IntVar(&o.OverloadConns, "overload-conns", 2048, "overload suite: the client's cap on connections (requests in flight) while overloading; above TALLY_MAX_IN_FLIGHT, so that Tally is what refuses")
	fs.IntVar(&o.MaxInFlight, "max-in-flight", 0, "overload suite: TALLY_MAX_IN_FLIGHT of the Tally children (0: Tally's default)")
	fs.IntVar(&o.SlowConns, "slow-conns", 1000, "overload suite: stalled connections in the slowclients scenario (half with a valid token)")
	fs.DurationVar(&o.ReadTimeout, "read-timeout", 2*time.Second, "overload suite: TALLY_HTTP_READ_TIMEOUT of the slowclients scenario's Tally")
	fs.StringVar(&o.Vegeta, "vegeta", "vegeta", "overload suite: the vegeta binary (a path, or a name looked up on PATH and in $GOPATH/bin); the cross-check is skipped, visibly, without it")
	err := fs.Parse(args)
	if err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("tally-bench takes no arguments, got %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.Quick {
		if !set["duration"] {
			o.Duration = 5 * time.Second
		}
		if !set["overload-duration"] {
			o.OverloadDuration = 10 * time.Second
		}
		if !set["tail"] {
			o.Tail = 5 * time.Second
		}
		if !set["million-users"] {
			o.MillionUsers = 100000
		}
		if !set["memory-users"] {
			o.MemoryUsers = 20000
		}
		if !set["rounds"] {
			o.Rounds = quickRounds
		}
	}
	if o.Rounds < 1 {
		return o, fmt.Errorf("--rounds must be at least 1, got %d", o.Rounds)
	}
	if o.LatencyLevels, err = parseLevels(*levels); err != nil {
		return o, err
	}
	if o.Duration < time.Second {
		return o, fmt.Errorf("--duration must be at least 1s, got %s", o.Duration)
	}
	if o.Warmup < 0 {
		o.Warmup = min(o.Duration/5, 3*time.Second)
	}
	if o.MillionUsers < 1 || o.MemoryUsers < 1 {
		return o, errors.New("--million-users and --memory-users must be positive")
	}
	names, ok := suites[o.Suite]
	if !ok {
		return o, fmt.Errorf("--suite must be compare or overload, got %q", o.Suite)
	}
	if o.OverloadDuration < time.Second || o.Tail < time.Second {
		return o, errors.New("--overload-duration and --tail must be at least 1s")
	}
	if o.Capacity < 0 || o.OverloadConns < 1 || o.SlowConns < 2 || o.MaxInFlight < 0 || o.ReadTimeout <= 0 {
		return o, errors.New("--capacity, --max-in-flight must not be negative; --overload-conns ≥ 1, --slow-conns ≥ 2, --read-timeout > 0")
	}
	if *only != "" {
		for _, p := range strings.Split(*only, ",") {
			p = strings.TrimSpace(p)
			if !slices.Contains(names, p) {
				return o, fmt.Errorf("--only: unknown phase %q of the %s suite (phases: %s)", p, o.Suite, strings.Join(names, ", "))
			}
			o.Only = append(o.Only, p)
		}
	}
	if o.BaseRef == "" && slices.Contains(o.Only, "cpu") {
		return o, errors.New("--only cpu: the cpu phase needs --base-ref REF (the git ref to compare the working tree with)")
	}
	return o, nil
}

// parseLevels reads --latency-levels: percentages in (0, 100], ascending.
func parseLevels(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(f), "%")), 64)
		if err != nil || v <= 0 || v > 100 || (len(out) > 0 && v/100 <= out[len(out)-1]) {
			return nil, fmt.Errorf("--latency-levels: want ascending percentages in (0, 100], got %q", s)
		}
		out = append(out, v/100)
	}
	return out, nil
}

// commandLine is how this run was started, for the report: `go run`
// builds into a temporary directory, whose path would mean nothing later.
func commandLine(args []string) string {
	exe, _ := os.Executable()
	name := filepath.Base(os.Args[0])
	if strings.Contains(exe, "go-build") {
		name = "go run ./cmd/tally-bench"
	}
	parts := []string{name}
	for _, a := range args {
		if strings.ContainsAny(a, " \t\"'$") {
			a = strconv.Quote(a)
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

// Report is the run's JSON document.
type Report struct {
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	Command    string    `json:"command"`
	Machine    Machine   `json:"machine"`
	Settings   Settings  `json:"settings"`
	Figures    []Row     `json:"figures"`
	// LatencyByLoad is the latency phase's table: one open-loop rate a row.
	LatencyByLoad []LoadLevel `json:"latency_by_load,omitempty"`
	// CPU is the cpu phase's rounds (--base-ref).
	CPU *CPUResult `json:"cpu,omitempty"`
	// Cluster is the cluster phases' rounds, every side of each.
	Cluster []ClusterRun `json:"cluster,omitempty"`
	// Alerts is the alerts phase's rounds, every side of each.
	Alerts []AlertsRun `json:"alerts,omitempty"`
	Phases []*Phase    `json:"phases"`
	Notes  []string    `json:"notes"`
}

// Settings are the knobs of the run.
type Settings struct {
	DurationS    float64  `json:"duration_s"`
	WarmupS      float64  `json:"warmup_s"`
	Verify       bool     `json:"verify"`
	GOGC         string   `json:"gogc"`
	MemoryUsers  int      `json:"memory_users"`
	MillionUsers int      `json:"million_users"`
	Phases       []string `json:"phases"`
	// Rounds of each compared figure (rounds.go).
	Rounds        int       `json:"rounds"`
	BaseRef       string    `json:"base_ref,omitempty"`
	LatencyLevels []float64 `json:"latency_levels"`
}

// Phase is what one phase did and measured, with the raw load results.
type Phase struct {
	Name    string          `json:"name"`
	What    string          `json:"what"`
	Seconds float64         `json:"wall_s"`
	Err     string          `json:"error,omitempty"`
	Pgbench []PgbenchResult `json:"pgbench,omitempty"`
	Loads   []LoadRun       `json:"loads,omitempty"`
	Memory  *MemoryResult   `json:"memory,omitempty"`
	Million *MillionResult  `json:"million,omitempty"`
	// Details is an overload-suite scenario's own result (scenarios.go).
	Details  any      `json:"details,omitempty"`
	LogFiles []string `json:"log_files,omitempty"`
}

// LoadRun is one tools/load run of a phase (its per-second series
// dropped, its violations capped, to keep the document readable).
type LoadRun struct {
	Label  string       `json:"label"`
	Result *load.Result `json:"result"`
}

// MemoryResult is phase (e): VmRSS of the Tally child around touching
// Users users it had never seen, with every actor still live.
type MemoryResult struct {
	Users            int     `json:"users"`
	Touched          int64   `json:"touched"`
	RSSBeforeKB      int64   `json:"rss_before_kb"`
	RSSAfterKB       int64   `json:"rss_after_kb"`
	RSSAfterGCKB     int64   `json:"rss_after_gc_kb"`
	KBPerUser        float64 `json:"kb_per_user"`
	KBPerUserAfterGC float64 `json:"kb_per_user_after_gc"`
	LiveActorsBefore float64 `json:"live_actors_before"`
	LiveActorsAfter  float64 `json:"live_actors_after"`
	IdleTimeout      string  `json:"idle_timeout"`
}

// MillionResult is phase (f): the peak VmRSS of a fresh Tally child while
// Users distinct users were touched as fast as it would take them.
type MillionResult struct {
	Users         int     `json:"users"`
	Touched       int64   `json:"touched"`
	Errors        int64   `json:"errors"`
	Seconds       float64 `json:"seconds"`
	UsersPerS     float64 `json:"users_per_s"`
	MaxRSSKB      int64   `json:"max_rss_kb"`
	FinalRSSKB    int64   `json:"final_rss_kb"`
	LiveActorsEnd float64 `json:"live_actors_end"`
	IdleTimeout   string  `json:"idle_timeout"`
}

// runner is one benchmark run in progress.
type runner struct {
	opts           Options
	stdout, stderr io.Writer
	progress       io.Writer // the load's progress bar, on a terminal only
	exe            string
	outDir, stem   string
	tmp            string
	st             *stores
	secret, admin  string
	tally          *child // the main Tally child (phases many … memory)
	ginChild       *child // the bare Gin child, kept for the over-limit rounds
	report         Report
	failed         []string

	// The compared figures, round by round (rounds.go): the row-lock
	// baseline (rowBench is kept for the rounds measured between
	// Tally's), Tally's many users (each round's runs by workers), the hot
	// user, and the over-limit comparison with bare Gin.
	rowBench                   *rowlockBench
	rowManyRuns, rowHotRuns    []PgbenchResult
	manyRuns                   []map[int]*load.Result
	hotRuns, ginRuns, overRuns []*load.Result
	latLevels                  []LoadLevel
	cpu                        *CPUResult
	mem                        *MemoryResult
	million                    *MillionResult
	memUsersPerS               float64
	millionRequested           bool
	clusterRuns                []ClusterRun
	alertRuns                  []AlertsRun

	// The overload suite (scenarios.go).
	capacity    float64
	capacityRun *load.Result
	capRSSKB    int64
	suitePrefix string
	normal      *load.Result
	overloads   []*OverloadRun
	vegeta      *VegetaRun
	cold        *ColdRun
	slow        *SlowRun
	poison      *PoisonRun
}

func newRunner(o Options, stdout, stderr io.Writer) (*runner, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this program to start the servers from: %w", err)
	}
	r := &runner{opts: o, stdout: stdout, stderr: stderr, exe: exe, secret: randomSecret(), admin: randomSecret()}
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		r.progress = stderr
	}
	return r, nil
}

func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(r.stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// want reports whether a phase is selected (--only, --skip-million).
func (r *runner) want(name string) bool {
	if name == "million" && r.opts.SkipMillion || name == "cpu" && r.opts.BaseRef == "" || r.opts.SkipCluster && slices.Contains(clusterPhaseNames, name) || r.opts.SkipAlerts && name == alertsPhaseName {
		return false
	}
	if len(r.opts.Only) == 0 {
		suite := cmp.Or(r.opts.Suite, "compare")
		return slices.Contains(suites[suite], name)
	}
	return slices.Contains(r.opts.Only, name)
}

func (r *runner) run(ctx context.Context) (err error) {
	o := r.opts
	r.report = Report{StartedAt: time.Now().UTC().Truncate(time.Second), Command: o.Command, Notes: []string{}}
	r.stem = "bench-" + r.report.StartedAt.Format("20060102T150405Z")
	if o.Suite == "overload" {
		r.stem = "overload-" + r.report.StartedAt.Format("20060102T150405Z")
	}
	r.outDir = o.Out
	if err := os.MkdirAll(r.outDir, 0o755); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	if r.tmp, err = os.MkdirTemp("", "tally-bench-"); err != nil {
		return err
	}
	defer os.RemoveAll(r.tmp)
	var phases []string
	for _, p := range suites[o.Suite] {
		if r.want(p) {
			phases = append(phases, p)
		}
	}
	r.report.Settings = Settings{DurationS: o.Duration.Seconds(), WarmupS: o.Warmup.Seconds(), Verify: !o.NoVerify,
		GOGC: childGOGC, MemoryUsers: o.MemoryUsers, MillionUsers: o.MillionUsers, Phases: phases,
		Rounds: o.Rounds, BaseRef: o.BaseRef, LatencyLevels: o.LatencyLevels}
	r.millionRequested = r.want("million")

	r.logf("tally-bench: %s", o.Command)
	r.logf("phases: %s; %s per phase (+%s warm-up); roughly %s in all", strings.Join(phases, ", "), o.Duration, o.Warmup, roundEstimate(r.estimate(phases)))
	r.report.Machine = machineInfo(ctx, o.PostgresURL, o.RedisAddr)
	r.logf("machine: %s", r.report.Machine)

	r.st, err = createStores(ctx, o.PostgresURL, o.RedisAddr, r.logf)
	if err != nil {
		return err
	}
	// Cleanup runs whatever happens below, on its own context: the run's
	// may be cancelled already (Ctrl-C). Children first, since they hold
	// connections to the databases about to be dropped.
	defer func() {
		if r.tally != nil {
			if e := r.tally.stop(); e != nil {
				r.logf("tally: %v", e)
			}
		}
		if r.ginChild != nil {
			if e := r.ginChild.stop(); e != nil {
				r.logf("gin: %v", e)
			}
		}
		r.st.close()
	}()

	r.phase(ctx, "rowlock", "the row-lock transaction through pgbench, 64 clients: 100 000 users, then one hot user (round 1; the Tally phases measure the later rounds between their own)", r.phaseRowlock)
	r.phase(ctx, "gin", "bare Gin decoding the same body, no accounting, closed loop 64 workers (round 1; the over-limit phase measures the later rounds)", r.phaseGin)
	r.phase(ctx, "many", fmt.Sprintf("Tally, %d users on enterprise, closed loop 64 and 256 workers, %d rounds alternating with the row-lock many-users baseline", manyUsers, o.Rounds), r.phaseMany)
	r.phase(ctx, "hot", fmt.Sprintf("Tally, one hot user on enterprise, closed loop 64 workers, %d rounds alternating with the row-lock hot user", o.Rounds), r.phaseHot)
	r.phase(ctx, "overlimit", fmt.Sprintf("Tally, %d users on free filled to their %d sessions, then rejections, 64 workers, %d rounds alternating with bare Gin", overUsers, freeLimit, o.Rounds), r.phaseOverLimit)
	r.phase(ctx, "latency", fmt.Sprintf("Tally, open loop at %s of the max durable admitted/s, %d enterprise users touched once before", levelsText(o.LatencyLevels), manyUsers), r.phaseLatency)
	if r.tally != nil && r.want("cpu") {
		// The cpu phase runs two Tallies of its own: the main one would
		// only take CPU and memory from them.
		if e := r.tally.stop(); e != nil {
			r.note("the main Tally child did not stop cleanly: %v", e)
		}
		r.tally = nil
	}
	r.phase(ctx, "cpu", fmt.Sprintf("CPU per admitted create of `tally serve` built from %s and from the working tree, %d alternating rounds of closed-loop creates (%d enterprise users, %d workers)", o.BaseRef, o.Rounds, manyUsers, highWorkers), r.phaseCPU)
	r.phase(ctx, "memory", fmt.Sprintf("Tally's VmRSS around touching %d new users, actors live (idle timeout %s)", o.MemoryUsers, mainIdle), r.phaseMemory)
	if r.tally != nil {
		if e := r.tally.stop(); e != nil {
			r.note("the main Tally child did not stop cleanly: %v", e)
		}
	}
	r.phase(ctx, "million", fmt.Sprintf("a fresh Tally (idle timeout %s): max VmRSS while touching %d distinct users", millionIdle, o.MillionUsers), r.phaseMillion)
	r.phase(ctx, alertsPhaseName, fmt.Sprintf("%d fresh users on free per round and side, each sent %d creates (past its %d: 80%%, 100%% and limit-reached alerts), 64 workers, on single nodes with alerts off, on (a receiver answering 204) and on with the receiver down; %d rounds, the sides' order rotating",
		alertsUsers(o.Duration), freeLimit+alertsOverLimit, freeLimit, o.Rounds), r.phaseAlerts)
	r.phase(ctx, "cluster-hot", fmt.Sprintf("one hot user on enterprise, 64 clients: over 3 cluster nodes (etcd ×3), over 3 single nodes on one database (ownership off), and all to one single node; %d rounds, the sides' order rotating", o.Rounds), r.phaseClusterHot)
	r.phase(ctx, "cluster-forward", fmt.Sprintf("%d users on free filled to their %d sessions, all owned by one of 3 cluster nodes, then rejections, 64 workers, through the owner and through another node (one forward); %d rounds alternating", overUsers, freeLimit, o.Rounds), r.phaseClusterForward)
	r.phase(ctx, "cluster-many", fmt.Sprintf("%d users on enterprise, 256 clients: over 3 cluster nodes, and all to one single node; %d rounds alternating", manyUsers, o.Rounds), r.phaseClusterMany)

	// The overload suite; each of these is selected only by --suite overload.
	r.phase(ctx, "capacity", fmt.Sprintf("Tally's max admitted creates/s, %d enterprise users, closed loop %d workers (or --capacity checked open loop)", suiteUsers, highWorkers), r.phaseCapacity)
	r.phase(ctx, "overload", fmt.Sprintf("open loop at the normal rate, then 2× and 3× capacity for %s each, each followed by the normal rate for %s", o.OverloadDuration, o.Tail), r.phaseOverload)
	r.phase(ctx, "vegeta", fmt.Sprintf("vegeta at %d× capacity for %s, the same creates and tokens", vegetaFactor, o.OverloadDuration), r.phaseVegeta)
	if r.tally != nil && r.want("coldstart") {
		// Coldstart and slowclients start Tallies of their own: the main
		// one would only take CPU and memory from them.
		if e := r.tally.stop(); e != nil {
			r.note("the main Tally child did not stop cleanly: %v", e)
		}
		r.tally = nil
	}
	r.phase(ctx, "coldstart", "open loop at half the capacity through a SIGTERM and restart of Tally on the same port", r.phaseColdstart)
	r.phase(ctx, "slowclients", fmt.Sprintf("open loop at half the capacity, without and with %d stalled connections (TALLY_HTTP_READ_TIMEOUT=%s)", o.SlowConns, o.ReadTimeout), r.phaseSlowclients)
	r.phase(ctx, "poison", fmt.Sprintf("%d users creating %d sessions while one user creates with a NUL in the title", poisonUsers, poisonCreates), r.phasePoison)

	if ctx.Err() != nil {
		r.logf("interrupted: cleaning up, writing what was measured")
	}
	r.report.FinishedAt = time.Now().UTC().Truncate(time.Second)
	if o.Suite == "overload" {
		r.report.Figures = r.scenarioRows()
	} else {
		r.report.Figures = r.rows()
		r.report.LatencyByLoad = r.latLevels
		r.report.CPU = r.cpu
		r.report.Cluster = r.clusterRuns
		r.report.Alerts = r.alertRuns
	}
	if werr := r.write(); werr != nil {
		return werr
	}
	switch {
	case ctx.Err() != nil:
		return errors.New("interrupted (servers stopped, databases and Redis keys removed; what was measured is written above)")
	case len(r.failed) > 0:
		return fmt.Errorf("%d phase(s) failed: %s", len(r.failed), strings.Join(r.failed, "; "))
	}
	return nil
}

// firstSightRate is a cautious guess of how many never-seen users per
// second Tally provisions (a user row, a session, an actor): 1 300–2 000/s
// was seen on a busy 2-core machine.
const firstSightRate = 1200

// estimate guesses the run's wall time from the phases chosen: the load
// itself plus provisioning and verification, which scale with what was
// admitted, and the first-sight phases, which scale with their users.
func (r *runner) estimate(phases []string) time.Duration {
	d, w := r.opts.Duration, r.opts.Warmup
	verify := time.Duration(0)
	if !r.opts.NoVerify {
		verify = 3 * d
	}
	var t time.Duration
	rounds := time.Duration(r.opts.Rounds)
	for _, p := range phases {
		switch p {
		case "rowlock":
			t += time.Duration(r.baselineRounds("many"))*(d+2*time.Second) + time.Duration(r.baselineRounds("hot"))*(d+2*time.Second) + 6*time.Second
		case "gin":
			t += time.Duration(r.baselineRounds("overlimit")) * (d + w + 5*time.Second)
		case "many":
			t += rounds * (2*(d+w+5*time.Second) + 2*verify + 15*time.Second)
			if r.want("rowlock") {
				t += (rounds - 1) * (d + 2*time.Second)
			}
		case "hot":
			t += rounds * (d + w + verify)
			if r.want("rowlock") {
				t += (rounds - 1) * (d + 2*time.Second)
			}
		case "overlimit":
			t += rounds*(d+w) + 15*time.Second
			if r.want("gin") {
				t += (rounds - 1) * (d + w + 5*time.Second)
			}
		case "latency":
			t += 10*time.Second + time.Duration(len(r.opts.LatencyLevels))*(d+w+time.Second)
		case "cpu":
			// Two builds (seconds with a warm build cache), then per round
			// and binary: 10 000 users provisioned and touched, the window.
			t += 60*time.Second + 2*rounds*(d+w+10*time.Second)
		case "memory":
			t += time.Duration(float64(r.opts.MemoryUsers)/firstSightRate*float64(time.Second)) + 10*time.Second
		case "million":
			t += time.Duration(float64(r.opts.MillionUsers)/firstSightRate*float64(time.Second)) + 30*time.Second
		case "capacity":
			t += d + w + 10*time.Second
		case "overload":
			t += d + 2*(r.opts.OverloadDuration+r.opts.Tail+5*time.Second)
		case "vegeta":
			t += r.opts.OverloadDuration + 15*time.Second
		case "coldstart":
			t += d + coldWindow + 15*time.Second
		case "slowclients":
			t += 2*d + max(3*r.opts.ReadTimeout, r.opts.ReadTimeout+5*time.Second) + 10*time.Second
		case "poison":
			t += 10 * time.Second
		case alertsPhaseName:
			// Three sides a round, each a child started, its users
			// provisioned, about --duration of creates, verification, and
			// the receiver's drain.
			t += 3 * rounds * (d + verify + 10*time.Second)
		case "cluster-hot":
			// etcd and six nodes, then four sides a round, each reading
			// its admissions back (about as long as it ran).
			t += 30*time.Second + 4*rounds*(d+w+verify/3+5*time.Second)
		case "cluster-forward":
			t += 40*time.Second + 2*rounds*(d+w+3*time.Second)
		case "cluster-many":
			// Three sides a round, each provisioning its 10 000 users first.
			t += 30*time.Second + 3*rounds*(d+w+verify/3+10*time.Second)
		}
	}
	return t
}

// phase runs one phase if it is selected, records its wall time and error,
// and lets the run go on after a failure (the other figures are still
// worth having), unless the run was interrupted.
func (r *runner) phase(ctx context.Context, name, what string, f func(context.Context, *Phase) error) {
	if !r.want(name) || ctx.Err() != nil {
		return
	}
	p := &Phase{Name: name, What: what}
	r.report.Phases = append(r.report.Phases, p)
	r.logf("== %s: %s", name, what)
	// Each phase starts right after a checkpoint, so that it does not pay
	// for the previous phase's dirty pages (a checkpoint triggered by the
	// pgbench phase's writes cut the next phases' figures by up to 3–4×).
	if err := r.st.checkpoint(ctx); err != nil {
		r.logf("%s: CHECKPOINT before the phase failed (figures may carry the previous phase's I/O): %v", name, err)
	}
	start := time.Now()
	err := f(ctx, p)
	p.Seconds = time.Since(start).Seconds()
	if err != nil {
		p.Err = err.Error()
		if ctx.Err() == nil {
			r.failed = append(r.failed, name+": "+firstLine(err.Error()))
		}
		r.logf("%s failed: %v", name, err)
		return
	}
	r.logf("%s done in %s", name, time.Since(start).Round(time.Second))
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func (r *runner) note(format string, args ...any) {
	n := fmt.Sprintf(format, args...)
	r.report.Notes = append(r.report.Notes, n)
	r.logf("note: %s", n)
}

// ---- baselines ----

func (r *runner) phaseRowlock(ctx context.Context, p *Phase) error {
	b := &rowlockBench{dbURL: r.st.dbURL(r.st.rowlockDB), dir: r.tmp, log: r.logf}
	if err := b.prepare(ctx); err != nil {
		return err
	}
	r.rowBench = b
	for i := range r.baselineRounds("many") {
		if i > 0 {
			r.settle(ctx, "rowlock")
		}
		if err := r.runRowlock(ctx, p, rowlockUsers, i+1); err != nil {
			return err
		}
	}
	for i := range r.baselineRounds("hot") {
		r.settle(ctx, "rowlock")
		if err := r.runRowlock(ctx, p, 1, i+1); err != nil {
			return err
		}
	}
	return nil
}

// runRowlock measures one round of the row-lock baseline over uids users
// (rowlockUsers, or 1: the hot user) and keeps it.
func (r *runner) runRowlock(ctx context.Context, p *Phase, uids, round int) error {
	if r.rowBench == nil {
		return errors.New("the row-lock baseline is not prepared")
	}
	res, err := r.rowBench.run(ctx, r.opts.Duration, uids)
	if err != nil {
		return err
	}
	p.Pgbench = append(p.Pgbench, res)
	if uids == 1 {
		r.rowHotRuns = append(r.rowHotRuns, res)
	} else {
		r.rowManyRuns = append(r.rowManyRuns, res)
	}
	r.logf("row-lock, uid_max=%d, round %d: %.0f tps (latency avg %.2f ms, %d failed)", uids, round, res.TPS, res.LatencyAvgMs, res.Failed)
	if res.Failed > 0 {
		r.note("pgbench uid_max=%d, round %d: %d failed transactions", uids, round, res.Failed)
	}
	return nil
}

func (r *runner) phaseGin(ctx context.Context, p *Phase) error {
	logPath := filepath.Join(r.outDir, r.stem+"-gin.log")
	p.LogFiles = append(p.LogFiles, logPath)
	c, err := startChild(ctx, r.exe, cmdServeGin, []string{"GOGC=" + childGOGC}, logPath)
	if err != nil {
		return err
	}
	// Kept running: the over-limit phase measures it again between its own
	// rounds (runGin), and the runner stops it at the end.
	r.ginChild = c
	for i := range r.baselineRounds("overlimit") {
		if err := r.runGin(ctx, p, i+1); err != nil {
			return err
		}
	}
	return nil
}

// runGin measures the bare Gin child once more and keeps the result.
func (r *runner) runGin(ctx context.Context, p *Phase, round int) error {
	if r.ginChild == nil || !r.ginChild.alive() {
		return errors.New("the bare Gin child is not running")
	}
	cfg := r.loadConfig(r.ginChild.url())
	cfg.Users = overUsers // the same request mix as the over-limit phase
	cfg.NoProvision, cfg.NoVerify = true, true
	res, err := r.runLoad(ctx, p, fmt.Sprintf("bare Gin, round %d", round), cfg)
	if err != nil {
		return err
	}
	r.ginRuns = append(r.ginRuns, res)
	r.logf("bare Gin, round %d: %.0f answers/s (200s: %.0f/s)", round, res.RequestsPerS, res.AdmittedPerS)
	return nil
}

// ---- Tally ----

// tallyEnv is the configuration of a Tally child: the run's database,
// Redis and prefix, fresh secrets, warn-level logs (no access log line per
// request), an ops listener on a free loopback port (liveActors reads its
// /metrics), and gogc as GOGC ("": Go's default).
func (r *runner) tallyEnv(idle time.Duration, gogc string) []string {
	return r.tallyEnvOn(r.st.tallyDB, r.st.redisPrefix, idle, gogc)
}

// tallyEnvOn is tallyEnv on another of the run's databases and Redis
// prefixes (the cpu phase's binaries each have their own).
func (r *runner) tallyEnvOn(db, redisPrefix string, idle time.Duration, gogc string) []string {
	env := []string{
		"TALLY_HTTP_ADDR=127.0.0.1:0",
		"TALLY_OPS_ADDR=127.0.0.1:0",
		"TALLY_DATABASE_URL=" + r.st.dbURL(db),
		"TALLY_REDIS_URL=redis://" + r.st.redisAddr + "/0",
		"TALLY_REDIS_KEY_PREFIX=" + redisPrefix,
		"TALLY_JWT_SECRET=" + r.secret,
		"TALLY_ADMIN_TOKEN=" + r.admin,
		"TALLY_LOG_LEVEL=warn",
		"TALLY_IDLE_TIMEOUT=" + idle.String(),
		"TALLY_SHUTDOWN_TIMEOUT=10s",
	}
	if gogc != "" {
		env = append(env, "GOGC="+gogc)
	}
	return env
}

// mainTally starts the main Tally child on first use.
func (r *runner) mainTally(ctx context.Context, p *Phase) (*child, error) {
	return r.sharedTally(ctx, p, func() []string {
		r.logf("starting Tally (app.New + Serve in a child process, GOGC=%s, idle timeout %s)", childGOGC, mainIdle)
		return r.tallyEnv(mainIdle, childGOGC)
	})
}

// sharedTally returns the run's Tally child, starting it on first use with
// the environment env gives; a child that has exited is an error naming
// the end of its log.
func (r *runner) sharedTally(ctx context.Context, p *Phase, env func() []string) (*child, error) {
	logPath := filepath.Join(r.outDir, r.stem+"-tally.log")
	p.LogFiles = append(p.LogFiles, logPath)
	if r.tally != nil {
		if !r.tally.alive() {
			return nil, fmt.Errorf("the Tally child has exited (%v); its log (%s) ends:\n%s", r.tally.waitErr, logPath, fileTail(logPath, 15))
		}
		return r.tally, nil
	}
	c, err := startChild(ctx, r.exe, cmdServeTally, env(), logPath)
	if err != nil {
		return nil, err
	}
	r.tally = c
	r.logf("Tally serving on %s (pid %d), log %s", c.addr, c.pid(), logPath)
	return c, nil
}

// loadConfig is the common shape of a phase's load.
func (r *runner) loadConfig(url string) load.Config {
	return load.Config{
		URL: url, Secret: r.secret, AdminToken: r.admin,
		Duration: r.opts.Duration, Warmup: r.opts.Warmup, Concurrency: baseWorkers,
		NoVerify: r.opts.NoVerify, Log: r.stderr, Progress: r.progress,
	}
}

// runLoad runs one load, keeps it in the phase, and turns what went wrong
// under it (errors, 500s, verification failures) into notes: the figures
// are only worth something if the service stayed correct while making them.
func (r *runner) runLoad(ctx context.Context, p *Phase, label string, cfg load.Config) (*load.Result, error) {
	res, err := load.Run(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	if res.Interrupted {
		return nil, fmt.Errorf("%s: interrupted", label)
	}
	kept := *res
	kept.Series = nil
	if len(kept.Violations) > 20 {
		kept.Violations = append(kept.Violations[:20:20], fmt.Sprintf("… and %d more", len(res.Violations)-20))
	}
	p.Loads = append(p.Loads, LoadRun{Label: label, Result: &kept})
	if res.Errors > 0 {
		r.note("%s: %d of %d requests were errors (statuses %v, transport %v)", label, res.Errors, res.Requests, res.ErrorsByStatus, res.TransportErrors)
	}
	if len(res.Violations) > 0 {
		r.note("%s: %d invariant violation(s); the first: %s", label, len(res.Violations), res.Violations[0])
	}
	return res, nil
}

func (r *runner) phaseMany(ctx context.Context, p *Phase) error {
	c, err := r.mainTally(ctx, p)
	if err != nil {
		return err
	}
	base := func(round int) error { return r.runRowlock(ctx, p, rowlockUsers, round) }
	return r.alternate(ctx, "many", r.rowBench != nil, base, func(round int) error {
		runs := map[int]*load.Result{}
		for _, w := range []int{baseWorkers, highWorkers} {
			cfg := r.loadConfig(c.url())
			cfg.Users, cfg.Plan, cfg.Concurrency = manyUsers, "enterprise", w
			res, err := r.runLoad(ctx, p, fmt.Sprintf("many users, %d workers, round %d", w, round), cfg)
			if err != nil {
				return err
			}
			runs[w] = res
			r.logf("many users, %d workers, round %d: %.0f admitted/s, p99 %.2f ms", w, round, res.AdmittedPerS, res.LatencyAdmitted.P99Ms)
		}
		r.manyRuns = append(r.manyRuns, runs)
		return nil
	})
}

// bestOfRound is a many-users round's durable admitted/s: the better of
// its worker counts (group commit gains from concurrency).
func bestOfRound(runs map[int]*load.Result) float64 {
	best := 0.0
	for _, res := range runs {
		best = max(best, res.AdmittedPerS)
	}
	return best
}

// maxAdmitted is the max durable admitted/s: the median over the rounds
// of each round's best (0 when the many phase did not run).
func (r *runner) maxAdmitted() float64 {
	m, _ := medianOf(each(r.manyRuns, bestOfRound))
	return m
}

func (r *runner) phaseHot(ctx context.Context, p *Phase) error {
	c, err := r.mainTally(ctx, p)
	if err != nil {
		return err
	}
	base := func(round int) error { return r.runRowlock(ctx, p, 1, round) }
	return r.alternate(ctx, "hot", r.rowBench != nil, base, func(round int) error {
		cfg := r.loadConfig(c.url())
		cfg.Hot, cfg.Plan = true, "enterprise"
		res, err := r.runLoad(ctx, p, fmt.Sprintf("one hot user, 64 workers, round %d", round), cfg)
		if err != nil {
			return err
		}
		r.hotRuns = append(r.hotRuns, res)
		r.logf("hot user, round %d: %.0f admitted/s, p99 %.2f ms", round, res.AdmittedPerS, res.LatencyAdmitted.P99Ms)
		return nil
	})
}

func (r *runner) phaseOverLimit(ctx context.Context, p *Phase) error {
	c, err := r.mainTally(ctx, p)
	if err != nil {
		return err
	}
	prefix := "bench-over-" + randomHex(4)
	// Fill: each user gets one request more than its limit (round robin),
	// so every user is full unless a request failed; then top up. The
	// first fill is always verified: it is what proves the users are full.
	fill := r.loadConfig(c.url())
	fill.Users, fill.Plan, fill.UserPrefix = overUsers, "free", prefix
	fill.Duration, fill.Warmup, fill.Requests = 0, 0, int64(overUsers*(freeLimit+1))
	fill.NoVerify = false
	fill.Progress = nil
	want := int64(overUsers * freeLimit)
	var admitted int64
	for round := 1; admitted < want; round++ {
		if round > 5 {
			return fmt.Errorf("the users are still not full after 5 fill rounds (%d of %d sessions admitted)", admitted, want)
		}
		res, err := r.runLoad(ctx, p, fmt.Sprintf("fill round %d", round), fill)
		if err != nil {
			return err
		}
		admitted += res.Admitted
		r.logf("fill round %d: %d admitted (%d of %d), %d rejected", round, res.Admitted, admitted, want, res.Rejected)
		fill.NoProvision, fill.NoVerify, fill.Requests = true, true, int64(overUsers*2)
	}
	cfg := r.loadConfig(c.url())
	cfg.Users, cfg.Plan, cfg.UserPrefix, cfg.NoProvision = overUsers, "free", prefix, true
	withGin := r.ginChild != nil && r.ginChild.alive()
	base := func(round int) error { return r.runGin(ctx, p, round) }
	err = r.alternate(ctx, "overlimit", withGin, base, func(round int) error {
		res, err := r.runLoad(ctx, p, fmt.Sprintf("over-limit, 64 workers, round %d", round), cfg)
		if err != nil {
			return err
		}
		r.overRuns = append(r.overRuns, res)
		if res.Admitted > 0 {
			r.note("over-limit: %d create(s) were admitted for users that were full", res.Admitted)
		}
		r.logf("over-limit round %d: %.0f rejected/s, p99 %.2f ms", round, res.RejectedPerS, res.LatencyRejected.P99Ms)
		return nil
	})
	if err != nil {
		return err
	}
	m, _ := medianOf(each(r.overRuns, func(x *load.Result) float64 { return x.RejectedPerS }))
	r.logf("over-limit: median %.0f rejected/s over %d rounds", m, len(r.overRuns))
	return nil
}

// liveActors reads tally_live_actors from the child's /metrics, on its ops
// listener (-1 when it cannot).
func liveActors(ctx context.Context, c *child) float64 {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.opsURL()+"/metrics", nil)
	if err != nil {
		return -1
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return -1
	}
	v, ok := parseMetric(body, "tally_live_actors")
	if !ok {
		return -1
	}
	return v
}

// touchConfig is a load that sends exactly one create per user, each user
// never seen before (a create provisions its user on free): it is how the
// memory phases make actors live.
func (r *runner) touchConfig(url, prefix string, users int) load.Config {
	return load.Config{
		URL: url, Secret: r.secret, Users: users, Requests: int64(users), UserPrefix: prefix,
		Concurrency: baseWorkers, NoProvision: true, NoVerify: true,
	}
}

func (r *runner) phaseMemory(ctx context.Context, p *Phase) error {
	logPath := filepath.Join(r.outDir, r.stem+"-memory-tally.log")
	p.LogFiles = append(p.LogFiles, logPath)
	r.logf("starting a fresh Tally for the memory phase (idle timeout %s, Go's default GC as shipped)", mainIdle)
	c, err := startChild(ctx, r.exe, cmdServeTally, r.tallyEnv(mainIdle, ""), logPath)
	if err != nil {
		return err
	}
	defer func() {
		if e := c.stop(); e != nil {
			r.note("memory: the Tally child did not stop cleanly: %v", e)
		}
	}()
	n := r.opts.MemoryUsers
	m := &MemoryResult{Users: n, IdleTimeout: mainIdle.String()}
	p.Memory = m
	// The baseline is read after a forced GC, so the growth measured is
	// the new users' and the heap headroom they cause, not garbage left by
	// the phases before.
	if err := c.gc(ctx); err != nil {
		return err
	}
	before, err := readProcStatus(c.pid())
	if err != nil {
		return err
	}
	m.RSSBeforeKB = before.RSSKB
	m.LiveActorsBefore = liveActors(ctx, c)
	r.logf("memory: VmRSS %d MB with %.0f live actors; touching %d new users", before.RSSKB>>10, m.LiveActorsBefore, n)
	cfg := r.touchConfig(c.url(), "bench-mem-"+randomHex(4), n)
	cfg.Log, cfg.Progress = r.stderr, r.progress
	start := time.Now()
	res, err := r.runLoad(ctx, p, fmt.Sprintf("touch %d new users", n), cfg)
	if err != nil {
		return err
	}
	r.memUsersPerS = float64(n) / time.Since(start).Seconds()
	after, err := readProcStatus(c.pid())
	if err != nil {
		return err
	}
	m.RSSAfterKB = after.RSSKB
	m.LiveActorsAfter = liveActors(ctx, c)
	if err := c.gc(ctx); err != nil {
		return err
	}
	gcd, err := readProcStatus(c.pid())
	if err != nil {
		return err
	}
	m.RSSAfterGCKB = gcd.RSSKB
	// A user is touched when the create was answered at all (200, or 403
	// if something refused it): either way it was provisioned and its
	// actor spawned.
	m.Touched = res.Admitted + res.Rejected
	if m.Touched == 0 {
		return errors.New("no user was touched")
	}
	m.KBPerUser = float64(m.RSSAfterKB-m.RSSBeforeKB) / float64(m.Touched)
	m.KBPerUserAfterGC = float64(m.RSSAfterGCKB-m.RSSBeforeKB) / float64(m.Touched)
	r.mem = m
	r.logf("memory: VmRSS %d → %d MB (%d MB after a forced GC), live actors %.0f → %.0f: %.2f KB/user (%.2f after GC)",
		m.RSSBeforeKB>>10, m.RSSAfterKB>>10, m.RSSAfterGCKB>>10, m.LiveActorsBefore, m.LiveActorsAfter, m.KBPerUser, m.KBPerUserAfterGC)
	if m.LiveActorsAfter >= 0 && m.LiveActorsBefore >= 0 && m.LiveActorsAfter-m.LiveActorsBefore < float64(m.Touched)*0.99 {
		r.note("memory: live actors grew by %.0f for %d users touched: some were passivated, so the per-user figure is low", m.LiveActorsAfter-m.LiveActorsBefore, m.Touched)
	}
	return nil
}

func (r *runner) phaseMillion(ctx context.Context, p *Phase) error {
	logPath := filepath.Join(r.outDir, r.stem+"-million-tally.log")
	p.LogFiles = append(p.LogFiles, logPath)
	r.logf("starting a fresh Tally for the million-users phase (idle timeout %s, Go's default GC as shipped)", millionIdle)
	c, err := startChild(ctx, r.exe, cmdServeTally, r.tallyEnv(millionIdle, ""), logPath)
	if err != nil {
		return err
	}
	defer func() {
		if e := c.stop(); e != nil {
			r.note("million: the Tally child did not stop cleanly: %v", e)
		}
	}()
	n := r.opts.MillionUsers
	m := &MillionResult{Users: n, IdleTimeout: millionIdle.String()}
	p.Million = m
	if r.memUsersPerS > 0 {
		r.logf("million: %d users at the memory phase's %.0f users/s would take about %s", n, r.memUsersPerS,
			(time.Duration(float64(n)/r.memUsersPerS) * time.Second).Round(time.Second))
	}
	sampler := startRSSSampler(c.pid(), time.Second)
	stopped := false
	defer func() {
		if !stopped {
			sampler.Stop()
		}
	}()
	// Chunks keep the client's memory flat (tools/load renders every
	// user's token and request up front) and give an ETA as they finish.
	chunk := max(5000, min(50000, n/20))
	prefix := "bench-m-" + randomHex(4)
	start := time.Now()
	lastLog := time.Time{}
	for done, i := 0, 0; done < n; i++ {
		size := min(chunk, n-done)
		cfg := r.touchConfig(c.url(), fmt.Sprintf("%s-%d", prefix, i), size)
		res, err := load.Run(ctx, cfg)
		if err != nil {
			return err
		}
		if res.Interrupted {
			return errors.New("interrupted")
		}
		if res.Server500 > 0 {
			r.note("million: %d answers were 500 in chunk %d", res.Server500, i)
		}
		m.Touched += res.Admitted + res.Rejected
		m.Errors += res.Errors
		done += size
		if !c.alive() {
			return fmt.Errorf("the Tally child exited (%v) after %d users; its log (%s) ends:\n%s", c.waitErr, done, logPath, fileTail(logPath, 15))
		}
		if time.Since(lastLog) >= 5*time.Second || done == n {
			lastLog = time.Now()
			el := time.Since(start)
			rate := float64(done) / el.Seconds()
			eta := time.Duration(float64(n-done)/rate) * time.Second
			last, mx := sampler.current()
			r.logf("million: %d/%d users in %s (%.0f/s), VmRSS %d MB (max %d MB), ETA %s",
				done, n, el.Round(time.Second), rate, last>>10, mx>>10, eta.Round(time.Second))
		}
	}
	m.Seconds = time.Since(start).Seconds()
	m.UsersPerS = float64(n) / m.Seconds
	m.LiveActorsEnd = liveActors(ctx, c)
	stopped = true
	m.MaxRSSKB = sampler.Stop()
	if st, err := readProcStatus(c.pid()); err == nil {
		m.FinalRSSKB = st.RSSKB
		m.MaxRSSKB = max(m.MaxRSSKB, st.HWMKB)
	}
	r.million = m
	r.logf("million: %d users touched (%d errors) in %s, max VmRSS %d MB, %.0f live actors at the end",
		m.Touched, m.Errors, time.Duration(m.Seconds*float64(time.Second)).Round(time.Second), m.MaxRSSKB>>10, m.LiveActorsEnd)
	if m.Errors > 0 {
		r.note("million: %d of %d touches were errors", m.Errors, n)
	}
	return nil
}

// ---- the table ----

func (r *runner) rows() []Row {
	var rows []Row
	tps := func(xs []PgbenchResult) []float64 { return each(xs, func(x PgbenchResult) float64 { return x.TPS }) }
	rate := func(xs []*load.Result, f func(*load.Result) float64) []float64 { return each(xs, f) }
	admitted := func(x *load.Result) float64 { return x.AdmittedPerS }
	// compared is a row whose Tally and baseline are the medians of their
	// rounds (rounds.go).
	compared := func(row Row, tally, base []float64) Row {
		row.TallyRounds, row.BaselineRounds = tally, base
		row.Tally, row.Baseline = medianPtr(tally), medianPtr(base)
		return row
	}
	rowMany := tps(r.rowManyRuns)
	rows = append(rows, compared(Row{Key: "admitted_many_max", Figure: fmt.Sprintf("durable admitted creates/s, %s users (best of 64/256 workers)", groupDigits(manyUsers)),
		Unit: "/s", BaselineName: "row-lock tps, 100k users", Target: atLeastRatio(4)}, each(r.manyRuns, bestOfRound), rowMany))
	for _, w := range []int{baseWorkers, highWorkers} {
		var xs []float64
		for _, runs := range r.manyRuns {
			if res := runs[w]; res != nil {
				xs = append(xs, res.AdmittedPerS)
			}
		}
		row := compared(Row{Key: fmt.Sprintf("admitted_many_%d", w), Figure: fmt.Sprintf("  … with %d workers", w),
			Unit: "/s", BaselineName: "row-lock tps"}, xs, rowMany)
		row.TallyRounds, row.BaselineRounds = nil, nil // the rounds are in the row above
		rows = append(rows, row)
	}
	rows = append(rows, compared(Row{Key: "admitted_hot", Figure: "one hot user, 64 clients: admitted/s", Unit: "/s",
		BaselineName: "row-lock tps, 1 user", Target: atLeastRatio(12)}, rate(r.hotRuns, admitted), tps(r.rowHotRuns)))
	rows = append(rows, compared(Row{Key: "rejected_overlimit", Figure: fmt.Sprintf("over-limit rejections/s (%s full users on free)", groupDigits(overUsers)), Unit: "/s",
		BaselineName: "bare Gin, no accounting", Target: atLeastRatio(0.8)},
		rate(r.overRuns, func(x *load.Result) float64 { return x.RejectedPerS }), rate(r.ginRuns, admitted)))

	latFig := "p99 of admitted creates at half the max (open loop)"
	half := r.halfMax()
	if half != nil {
		latFig = fmt.Sprintf("p99 of admitted creates at half the max (%s/s, open loop)", groupDigits(half.OfferedPerS))
	}
	lat := func(f func(*LoadLevel) float64) *float64 {
		if half == nil {
			return nil
		}
		return ptr(f(half))
	}
	rows = append(rows,
		Row{Key: "p99_half_max", Figure: latFig, Unit: "ms", Tally: lat(func(l *LoadLevel) float64 { return l.P99Ms }), Target: atMost(p99TargetMs, "ms")},
		Row{Key: "p50_half_max", Figure: "  … p50", Unit: "ms", Tally: lat(func(l *LoadLevel) float64 { return l.P50Ms })},
		Row{Key: "p999_half_max", Figure: "  … p99.9", Unit: "ms", Tally: lat(func(l *LoadLevel) float64 { return l.P999Ms })},
	)
	if r.opts.BaseRef != "" {
		rows = append(rows, r.cpuRow(compared))
	}

	memRow := Row{Key: "rss_per_user", Figure: fmt.Sprintf("RSS growth per active user (%s new users, actors live)", groupDigits(float64(r.opts.MemoryUsers))),
		Unit: "KB", Target: atMost(2, "KB")}
	gcRow := Row{Key: "rss_per_user_after_gc", Figure: "  … retained after a forced GC", Unit: "KB"}
	if m := r.mem; m != nil {
		memRow.Tally, gcRow.Tally = ptr(m.KBPerUser), ptr(m.KBPerUserAfterGC)
		memRow.Note = fmt.Sprintf("VmRSS %d → %d MB over %d users, a fresh Tally with Go's default GC (GOGC=100: the heap may grow to twice what is live before a GC); after runtime.GC + FreeOSMemory %d MB",
			m.RSSBeforeKB>>10, m.RSSAfterKB>>10, m.Touched, m.RSSAfterGCKB>>10)
	}
	rows = append(rows, memRow, gcRow)

	mil := Row{Key: "million_max_rss", Unit: "MB", Target: below(rssLimitMB, "2 GB"),
		Figure: fmt.Sprintf("max RSS touching %s distinct users (idle timeout %s)", groupDigits(float64(r.opts.MillionUsers)), millionIdle)}
	if m := r.million; m != nil {
		mil.Tally = ptr(float64(m.MaxRSSKB) / 1024)
		mil.Partial = m.Users < millionTarget
		mil.Note = fmt.Sprintf("%d users in %.0fs (%.0f/s), %d errors; VmRSS at the end %d MB, %.0f live actors",
			m.Touched, m.Seconds, m.UsersPerS, m.Errors, m.FinalRSSKB>>10, m.LiveActorsEnd)
		if mil.Partial {
			mil.Note += fmt.Sprintf("; only %d of the target's 1 000 000 users", m.Users)
		}
	} else if !r.millionRequested {
		mil.Note = "skipped (--skip-million or --only)"
	}
	rows = append(rows, mil)
	rows = append(rows, r.alertsRows(compared)...)
	rows = append(rows, r.clusterRows(compared)...)
	for i := range rows {
		rows[i].evaluate()
		if n := roundsNote(rows[i]); n != "" {
			rows[i].Note = strings.TrimPrefix(rows[i].Note+"; "+n, "; ")
		}
	}
	return rows
}

// ---- output ----

func (r *runner) header() string {
	if r.opts.Suite == "overload" {
		return r.scenarioHeader()
	}
	var b strings.Builder
	o := r.opts
	fmt.Fprintf(&b, "Tally side-by-side benchmark, %s\n", r.report.StartedAt.Format(time.RFC3339))
	fmt.Fprintf(&b, "command: %s\n", r.report.Command)
	fmt.Fprintf(&b, "machine: %s\n", r.report.Machine)
	verify := "every Tally phase verified afterwards by tools/load (usage = admitted, every admitted session readable)"
	if o.NoVerify {
		verify = "verification off (--no-verify)"
	}
	fmt.Fprintf(&b, "settings: %s measured per phase after a %s warm-up; closed loop with 64 workers unless said; Tally and bare Gin run with GOGC=%s in the throughput phases "+
		"(measured +5–10%% for Tally, docs/decisions/0009-gc-defaults.md; the Gin baseline gets the same so the ratio is not GC tuning), and the memory phases run a fresh Tally "+
		"with Go's default GC, as shipped; %s; each compared figure is the ratio of the medians of %d alternating rounds.\n", o.Duration, o.Warmup, childGOGC, verify, o.Rounds)
	b.WriteString("Ratios only: client, servers and Postgres share the machine's cores, and absolute figures move with whatever else runs on it.\n")
	return b.String()
}

func (r *runner) write() error {
	var text strings.Builder
	text.WriteString("\n")
	text.WriteString(r.header())
	text.WriteString("\n")
	writeTable, writeMD, title := WriteTable, WriteMarkdown, "Tally side-by-side benchmark"
	if r.opts.Suite == "overload" {
		writeTable, writeMD, title = WriteScenarioTable, WriteScenarioMarkdown, "Tally overload scenarios"
	}
	if err := writeTable(&text, r.report.Figures); err != nil {
		return err
	}
	if err := r.writeSections(&text, false); err != nil {
		return err
	}
	if len(r.report.Notes) > 0 || len(r.failed) > 0 {
		text.WriteString("\nnotes:\n")
		for _, n := range r.report.Notes {
			fmt.Fprintf(&text, "  - %s\n", n)
		}
		for _, f := range r.failed {
			fmt.Fprintf(&text, "  - phase failed: %s\n", f)
		}
	}
	jsonPath := filepath.Join(r.outDir, r.stem+".json")
	mdPath := filepath.Join(r.outDir, r.stem+".md")
	fmt.Fprintf(&text, "\nresults: %s, %s\n", jsonPath, mdPath)
	if _, err := io.WriteString(r.stdout, text.String()); err != nil {
		return err
	}

	for _, f := range r.failed {
		r.report.Notes = append(r.report.Notes, "phase failed: "+f)
	}
	j, err := json.MarshalIndent(r.report, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(jsonPath, append(j, '\n'), 0o644); err != nil {
		return err
	}
	var md strings.Builder
	fmt.Fprintf(&md, "# %s\n\n", title)
	for _, l := range strings.Split(strings.TrimSpace(r.header()), "\n") {
		k, v, ok := strings.Cut(l, ": ")
		switch {
		case strings.HasPrefix(l, title+", "):
			fmt.Fprintf(&md, "- **started**: %s\n", strings.TrimPrefix(l, title+", "))
		case ok && k == "command":
			fmt.Fprintf(&md, "- **command**: `%s`\n", v)
		case ok && (k == "machine" || k == "settings"):
			fmt.Fprintf(&md, "- **%s**: %s\n", k, v)
		default:
			fmt.Fprintf(&md, "\n%s\n", l)
		}
	}
	md.WriteString("\n")
	if err := writeMD(&md, r.report.Figures); err != nil {
		return err
	}
	if err := r.writeSections(&md, true); err != nil {
		return err
	}
	if len(r.report.Notes) > 0 {
		md.WriteString("\n## Notes\n\n")
		for _, n := range r.report.Notes {
			fmt.Fprintf(&md, "- %s\n", n)
		}
	}
	return os.WriteFile(mdPath, []byte(md.String()), 0o644)
}

// writeSections writes the tables below the main one: p99 by load, and
// the cpu phase's rounds, each when measured.
func (r *runner) writeSections(w io.Writer, markdown bool) error {
	title := func(s string) {
		if markdown {
			fmt.Fprintf(w, "\n## %s\n\n", s)
		} else {
			fmt.Fprintf(w, "\n%s:\n", s)
		}
	}
	if len(r.latLevels) > 0 {
		title(fmt.Sprintf("p99 by load: admitted creates, open loop at a fraction of the max durable %s/s (%s enterprise users), %s per rate",
			groupDigits(r.maxAdmitted()), groupDigits(manyUsers), r.opts.Duration))
		head, cells := latencyCells(r.latLevels)
		if err := writeCells(w, head, cells, markdown); err != nil {
			return err
		}
	}
	if len(r.clusterRuns) > 0 {
		title("Cluster phases, round by round (rate of the side's load; Tally CPU of the side's processes in the measured window)")
		head, cells := clusterCells(r.clusterRuns)
		if err := writeCells(w, head, cells, markdown); err != nil {
			return err
		}
	}
	if len(r.alertRuns) > 0 {
		title("Alerts phase, round by round (each side a fresh single-node Tally; the same creates, every one measured)")
		head, cells := alertsCells(r.alertRuns)
		if err := writeCells(w, head, cells, markdown); err != nil {
			return err
		}
	}
	if r.cpu != nil && len(r.cpu.Rounds) > 0 {
		title(fmt.Sprintf("CPU per admitted create, round by round: `tally serve` from %s (base) and from the working tree (new)", r.cpu.BaseDesc))
		head, cells := cpuCells(r.cpu.Rounds)
		if err := writeCells(w, head, cells, markdown); err != nil {
			return err
		}
	}
	return nil
}

// roundEstimate rounds a guess of the run's length to what it is worth:
// minutes, or tens of seconds for a short run.
func roundEstimate(d time.Duration) time.Duration {
	if d < 3*time.Minute {
		return d.Round(10 * time.Second)
	}
	return d.Round(time.Minute)
}
