package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tally-dev/tally/tools/load"
)

// The cpu phase (--base-ref REF) compares what an admitted create costs
// the machine in CPU: `tally serve` built from REF ("base") against the
// same built from the working tree ("new"), uncommitted changes
// included. Throughput on a shared 2-core machine moves with whatever
// else runs on it; the CPU a process spends per create moves far less,
// which makes it the figure to judge an efficiency change by.
//
// Each binary runs as `tally serve` with the Tally child's configuration
// (tallyEnvOn: the same Postgres and Redis, secrets, log level, idle
// timeout and GOGC) but its own fresh database, which it migrates itself
// (the two schemas may differ), and its own Redis key prefix under the
// run's. Both run for the whole phase; the rounds alternate between them
// (base then new in odd rounds, new then base in even ones, so that a
// drift over the phase does not favour one side). A round of one binary
// provisions 10 000 fresh users on enterprise (no limit: no round is
// refused for a full plan), touches each once and warms up, unmeasured;
// then it reads the process's utime+stime from /proc/<pid>/stat, runs the
// many phase's closed loop (256 workers) for --duration, reads it again,
// and divides by the creates admitted in that window. The window's runs
// are not verified: the many phase verifies the working tree's service.
type CPUResult struct {
	BaseRef    string     `json:"base_ref"`
	BaseCommit string     `json:"base_commit"`
	BaseDesc   string     `json:"base"`
	NewDesc    string     `json:"new"`
	Users      int        `json:"users"`
	Workers    int        `json:"workers"`
	Rounds     []CPURound `json:"rounds"`
}

// CPURound is one binary's measured window in one round.
type CPURound struct {
	Round        int     `json:"round"`
	Binary       string  `json:"binary"` // "base" or "new"
	CPUSeconds   float64 `json:"cpu_s"`
	WindowS      float64 `json:"window_s"`
	Admitted     int64   `json:"admitted"`
	AdmittedPerS float64 `json:"admitted_per_s"`
	// MicrosPerCreate is CPUSeconds / Admitted, in microseconds.
	MicrosPerCreate float64 `json:"cpu_us_per_admitted"`
	// CoresBusy is CPUSeconds / WindowS: how much of the machine the
	// server took.
	CoresBusy float64 `json:"cores_busy"`
}

// perCreate is one binary's CPU per admitted create, round by round.
func (c *CPUResult) perCreate(binary string) []float64 {
	var out []float64
	for _, x := range c.Rounds {
		if x.Binary == binary {
			out = append(out, x.MicrosPerCreate)
		}
	}
	return out
}

// cpuTarget is the ceiling on new/base CPU per admitted create.
const cpuTarget = 0.7

// cpuRow is the table's row: the working tree's median against the base
// binary's, through compared (rows).
func (r *runner) cpuRow(compared func(Row, []float64, []float64) Row) Row {
	row := Row{Key: "cpu_per_admitted", Unit: "µs", Target: atMostRatio(cpuTarget),
		Figure:       "CPU per admitted create, `tally serve` of the working tree (many users' load)",
		BaselineName: "built from " + r.opts.BaseRef}
	if r.cpu == nil {
		return compared(row, nil, nil)
	}
	row.BaselineName = "built from " + r.cpu.BaseDesc
	return compared(row, r.cpu.perCreate("new"), r.cpu.perCreate("base"))
}

// cpuCells is the cpu phase's rounds as a table.
func cpuCells(rounds []CPURound) ([]string, [][]string) {
	head := []string{"round", "binary", "CPU", "window", "admitted", "admitted/s", "CPU per create", "cores busy"}
	var rows [][]string
	for _, x := range rounds {
		rows = append(rows, []string{fmt.Sprint(x.Round), x.Binary, fmtValue(&x.CPUSeconds, "s"), fmtValue(&x.WindowS, "s"),
			groupDigits(float64(x.Admitted)), fmtValue(&x.AdmittedPerS, "/s"), fmtValue(&x.MicrosPerCreate, "µs"), fmt.Sprintf("%.2f", x.CoresBusy)})
	}
	return head, rows
}

// tallyBinary is one side of the cpu phase.
type tallyBinary struct {
	name, path, db string
	child          *child
}

func (r *runner) phaseCPU(ctx context.Context, p *Phase) error {
	root, err := gitOutput(ctx, "", "rev-parse", "--show-toplevel")
	if err != nil {
		return fmt.Errorf("--base-ref needs to run inside the repository's git checkout: %w", err)
	}
	res := &CPUResult{BaseRef: r.opts.BaseRef, Users: manyUsers, Workers: highWorkers}
	basePath, baseSHA, err := r.buildAtRef(ctx, root, r.opts.BaseRef)
	if err != nil {
		return err
	}
	res.BaseCommit = baseSHA
	res.BaseDesc = r.opts.BaseRef
	if !strings.HasPrefix(baseSHA, r.opts.BaseRef) {
		res.BaseDesc += " (" + baseSHA[:12] + ")"
	}
	newPath, newDesc, err := r.buildWorkingTree(ctx, root)
	if err != nil {
		return err
	}
	res.NewDesc = newDesc
	r.cpu = res
	bins := []*tallyBinary{{name: "base", path: basePath}, {name: "new", path: newPath}}
	// Servers stop before their databases are dropped.
	defer func() {
		for _, b := range bins {
			if b.child != nil {
				if e := b.child.stop(); e != nil {
					r.note("cpu: the %s tally did not stop cleanly: %v", b.name, e)
				}
			}
			if b.db != "" {
				if e := r.st.dropDB(b.db); e != nil {
					r.logf("cpu: %v (dropped at the end instead)", e)
				}
			}
			// The binaries were built for this phase only.
			if e := os.Remove(b.path); e != nil && !errors.Is(e, os.ErrNotExist) {
				r.logf("cpu: %v", e)
			}
		}
	}()
	for _, b := range bins {
		if b.db, err = r.st.extraDB(ctx, "cpu_"+b.name); err != nil {
			return err
		}
		logPath := filepath.Join(r.outDir, r.stem+"-cpu-"+b.name+".log")
		p.LogFiles = append(p.LogFiles, logPath)
		env := r.tallyEnvOn(b.db, r.st.redisPrefix+"cpu-"+b.name+":", mainIdle, childGOGC)
		if b.child, err = startServe(ctx, b.path, env, logPath); err != nil {
			return fmt.Errorf("%s: %w", b.name, err)
		}
		r.logf("cpu: %s serving on %s (pid %d, database %s), log %s", b.path, b.child.addr, b.child.pid(), b.db, logPath)
	}
	for round := 1; round <= r.opts.Rounds; round++ {
		order := slices.Clone(bins)
		if round%2 == 0 {
			slices.Reverse(order)
		}
		for _, b := range order {
			r.settle(ctx, "cpu")
			x, err := r.cpuRound(ctx, p, b, round)
			if err != nil {
				return err
			}
			res.Rounds = append(res.Rounds, x)
			r.logf("cpu, round %d, %s: %.2f CPU-s for %d admitted creates (%.0f/s, %.2f cores busy): %.1f µs per create",
				round, b.name, x.CPUSeconds, x.Admitted, x.AdmittedPerS, x.CoresBusy, x.MicrosPerCreate)
		}
	}
	mb, _ := medianOf(res.perCreate("base"))
	mn, _ := medianOf(res.perCreate("new"))
	if mb > 0 {
		r.logf("cpu: median %.1f µs per admitted create (base) → %.1f µs (new): %.2f×", mb, mn, mn/mb)
	}
	return nil
}

// cpuRound measures one binary once: fresh users provisioned, touched
// and warmed up outside the window, then the window itself.
func (r *runner) cpuRound(ctx context.Context, p *Phase, b *tallyBinary, round int) (CPURound, error) {
	x := CPURound{Round: round, Binary: b.name}
	label := fmt.Sprintf("cpu, %s, round %d", b.name, round)
	prefix := fmt.Sprintf("bench-cpu-%s-%d-%s", b.name, round, randomHex(3))
	shape := func() load.Config {
		cfg := r.loadConfig(b.child.url())
		cfg.Users, cfg.Plan, cfg.UserPrefix, cfg.Concurrency, cfg.NoVerify = manyUsers, "enterprise", prefix, highWorkers, true
		return cfg
	}
	warm := shape()
	warm.Duration, warm.Requests, warm.Progress = 0, manyUsers, nil
	if _, err := r.runLoad(ctx, p, label+": provision, touch each user once, warm up", warm); err != nil {
		return x, err
	}
	cfg := shape()
	cfg.NoProvision, cfg.Warmup = true, 0
	pid := b.child.pid()
	cpu0, err := readProcCPU(pid)
	if err != nil {
		return x, err
	}
	start := time.Now()
	res, err := r.runLoad(ctx, p, label, cfg)
	if err != nil {
		return x, err
	}
	cpu1, err := readProcCPU(pid)
	if err != nil {
		return x, err
	}
	if !b.child.alive() {
		return x, fmt.Errorf("%s: the %s tally exited (%v); its log (%s) ends:\n%s", label, b.name, b.child.waitErr, b.child.logPath, fileTail(b.child.logPath, 15))
	}
	if res.Admitted == 0 {
		return x, fmt.Errorf("%s: no create was admitted (answers %v)", label, res.Statuses)
	}
	x.CPUSeconds = (cpu1 - cpu0).Seconds()
	x.WindowS = time.Since(start).Seconds()
	x.Admitted = res.Admitted
	x.AdmittedPerS = res.AdmittedPerS
	x.MicrosPerCreate = x.CPUSeconds * 1e6 / float64(res.Admitted)
	x.CoresBusy = x.CPUSeconds / x.WindowS
	return x, nil
}

// buildAtRef builds REF's ./cmd/tally into bin/tally-base-<commit>, from a
// detached git worktree under bin/ that is removed afterwards.
func (r *runner) buildAtRef(ctx context.Context, root, ref string) (bin, sha string, err error) {
	sha, err = gitOutput(ctx, root, "rev-parse", "--verify", "--end-of-options", ref+"^{commit}")
	if err != nil {
		return "", "", fmt.Errorf("--base-ref %q: %w", ref, err)
	}
	short := sha[:12]
	bin = filepath.Join(root, "bin", "tally-base-"+short)
	wt := filepath.Join(root, "bin", "bench-base-"+short)
	// A worktree left by an interrupted run is replaced (-f: even when
	// git still has it registered with its directory gone).
	if err := os.RemoveAll(wt); err != nil {
		return "", "", err
	}
	r.logf("cpu: building ./cmd/tally at %s (%s) in a git worktree %s", ref, short, wt)
	if _, err := gitOutput(ctx, root, "worktree", "add", "-f", "--detach", wt, sha); err != nil {
		return "", "", err
	}
	defer func() {
		if _, e := gitOutput(context.Background(), root, "worktree", "remove", "--force", wt); e != nil {
			r.logf("cpu: remove the worktree %s: %v", wt, e)
		}
	}()
	if err := goBuild(ctx, wt, bin); err != nil {
		return "", "", fmt.Errorf("build %s: %w", ref, err)
	}
	return bin, sha, nil
}

// buildWorkingTree builds the working tree's ./cmd/tally into
// bin/tally-bench-new, and describes what it was built from.
func (r *runner) buildWorkingTree(ctx context.Context, root string) (bin, desc string, err error) {
	head, err := gitOutput(ctx, root, "rev-parse", "--short=12", "HEAD")
	if err != nil {
		return "", "", err
	}
	desc = "working tree at " + head
	if st, err := gitOutput(ctx, root, "status", "--porcelain", "--untracked-files=no"); err == nil && st != "" {
		desc += " with uncommitted changes"
	}
	bin = filepath.Join(root, "bin", "tally-bench-new")
	r.logf("cpu: building ./cmd/tally of the %s", desc)
	if err := goBuild(ctx, root, bin); err != nil {
		return "", "", fmt.Errorf("build the working tree: %w", err)
	}
	return bin, desc, nil
}

// goBuild builds dir's ./cmd/tally into out.
func goBuild(ctx context.Context, dir, out string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return errors.New("the go command is not on PATH")
	}
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, "./cmd/tally")
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, tail(string(b), 20))
	}
	return nil
}

// gitOutput runs git in dir ("" for the current directory) and returns
// its trimmed stdout.
func gitOutput(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}
