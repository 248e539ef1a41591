package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the end-to-end test re-execute this test binary as the
// benchmark's server children, as cmd/tally-bench re-executes itself.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && IsChildCommand(os.Args[1]) {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// pgbench 15's summary, as printed on the development machine.
const pgbench15 = `pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: /tmp/tally-bench-1/rowlock.sql
scaling factor: 1
query mode: simple
number of clients: 64
number of threads: 2
maximum number of tries: 1
duration: 15 s
number of transactions actually processed: 37581
number of failed transactions: 0 (0.000%)
latency average = 25.478 ms
initial connection time = 61.337 ms
tps = 2511.934052 (without initial connection time)
`

// pgbench 13 and older printed two tps lines.
const pgbench13 = `transaction type: rowlock.sql
number of clients: 64
duration: 5 s
number of transactions actually processed: 6000
latency average = 53.3 ms
tps = 1180.500000 (including connections establishing)
tps = 1200.250000 (excluding connections establishing)
`

func TestParsePgbench(t *testing.T) {
	for _, tc := range []struct {
		name      string
		out       string
		tps       float64
		processed int64
		failed    int64
		latency   float64
	}{
		{"pgbench 15", pgbench15, 2511.934052, 37581, 0, 25.478},
		{"pgbench 13 prefers excluding connections", pgbench13, 1200.25, 6000, 0, 53.3},
		{"failed transactions and -t counts", "number of transactions actually processed: 90/100\nnumber of failed transactions: 10 (10.000%)\ntps = 42.5 (without initial connection time)\n", 42.5, 90, 10, 0},
		{"only an including line", "tps = 99.5 (including connections establishing)\n", 99.5, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parsePgbench([]byte(tc.out))
			if err != nil {
				t.Fatal(err)
			}
			if r.TPS != tc.tps || r.Processed != tc.processed || r.Failed != tc.failed || r.LatencyAvgMs != tc.latency {
				t.Errorf("got %+v, want tps %v processed %d failed %d latency %v", r, tc.tps, tc.processed, tc.failed, tc.latency)
			}
		})
	}
}

func TestParsePgbenchErrors(t *testing.T) {
	for name, out := range map[string]string{
		"no tps line (pgbench failed to connect)": "pgbench: error: connection to server failed\n",
		"empty":       "",
		"garbled tps": "tps = fast (without initial connection time)\n",
	} {
		if _, err := parsePgbench([]byte(out)); err == nil {
			t.Errorf("%s: parsed without error", name)
		}
	}
}

const procStatus = `Name:	tally-bench
Umask:	0022
State:	S (sleeping)
Pid:	4242
VmPeak:	 2345678 kB
VmSize:	 2345600 kB
VmHWM:	  812344 kB
VmRSS:	  654321 kB
RssAnon:	  640000 kB
Threads:	12
`

func TestParseProcStatus(t *testing.T) {
	st, err := parseProcStatus(strings.NewReader(procStatus))
	if err != nil {
		t.Fatal(err)
	}
	if st.RSSKB != 654321 || st.HWMKB != 812344 {
		t.Errorf("got %+v, want RSS 654321 kB, HWM 812344 kB", st)
	}
}

func TestParseProcStatusErrors(t *testing.T) {
	for name, in := range map[string]string{
		// A kernel thread has no Vm* lines: reading zero would make any
		// memory target look met.
		"kernel thread":   "Name:\tkthreadd\nState:\tS (sleeping)\n",
		"no HWM":          "VmRSS:\t 100 kB\n",
		"bad number":      "VmHWM:\t 100 kB\nVmRSS:\t lots kB\n",
		"unexpected unit": "VmHWM:\t 100 kB\nVmRSS:\t 100 MB\n",
		"negative":        "VmHWM:\t 100 kB\nVmRSS:\t -1 kB\n",
	} {
		if st, err := parseProcStatus(strings.NewReader(in)); err == nil {
			t.Errorf("%s: parsed as %+v without error", name, st)
		}
	}
}

func TestReadProcStatusSelf(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("skipping: /proc/<pid>/status is Linux's")
	}
	st, err := readProcStatus(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.RSSKB <= 0 || st.HWMKB < st.RSSKB {
		t.Errorf("implausible figures for this process: %+v", st)
	}
}

func TestParseMetric(t *testing.T) {
	body := []byte(`# HELP tally_live_actors Live user actors.
# TYPE tally_live_actors gauge
tally_live_actors_total_bogus 7
tally_live_actors 12345
tally_admissions_total{outcome="admitted"} 99
`)
	if v, ok := parseMetric(body, "tally_live_actors"); !ok || v != 12345 {
		t.Errorf("tally_live_actors = %v, %v; want 12345, true", v, ok)
	}
	if _, ok := parseMetric(body, "tally_missing"); ok {
		t.Error("found a metric that is not there")
	}
}

func TestCPUModel(t *testing.T) {
	in := "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\nprocessor\t: 1\nmodel name\t: other\n"
	if got := cpuModel(strings.NewReader(in)); got != "Intel(R) Xeon(R) CPU @ 2.20GHz" {
		t.Errorf("cpuModel = %q", got)
	}
	if got := cpuModel(strings.NewReader("processor: 0\n")); got != "" {
		t.Errorf("cpuModel without a model name = %q, want empty", got)
	}
}

func TestRowEvaluate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		row    Row
		status string
		ratio  float64 // NaN: no ratio
	}{
		{"ratio met", Row{Tally: ptr(20000), Baseline: ptr(2500), Target: atLeastRatio(4)}, StatusMet, 8},
		{"ratio exactly at the target is met", Row{Tally: ptr(10000), Baseline: ptr(2500), Target: atLeastRatio(4)}, StatusMet, 4},
		{"ratio missed", Row{Tally: ptr(9000), Baseline: ptr(2500), Target: atLeastRatio(4)}, StatusMissed, 3.6},
		{"fractional ratio target", Row{Tally: ptr(40000), Baseline: ptr(50000), Target: atLeastRatio(0.8)}, StatusMet, 0.8},
		// A zero baseline would make an infinite ratio that meets any
		// target: it is n/a instead.
		{"zero baseline", Row{Tally: ptr(100), Baseline: ptr(0), Target: atLeastRatio(4)}, StatusNA, math.NaN()},
		{"no baseline", Row{Tally: ptr(100), Target: atLeastRatio(4)}, StatusNA, math.NaN()},
		{"not measured", Row{Baseline: ptr(100), Target: atLeastRatio(4)}, StatusSkipped, math.NaN()},
		{"info row keeps its ratio", Row{Tally: ptr(300), Baseline: ptr(100)}, StatusInfo, 3},
		{"value at most, met", Row{Tally: ptr(9.9), Target: atMost(10, "ms")}, StatusMet, math.NaN()},
		{"value at most, boundary", Row{Tally: ptr(10), Target: atMost(10, "ms")}, StatusMet, math.NaN()},
		{"value at most, missed", Row{Tally: ptr(10.01), Target: atMost(10, "ms")}, StatusMissed, math.NaN()},
		{"strictly below, boundary missed", Row{Tally: ptr(2048), Target: below(2048, "2 GB")}, StatusMissed, math.NaN()},
		{"strictly below, met", Row{Tally: ptr(1500), Target: below(2048, "2 GB")}, StatusMet, math.NaN()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.row
			r.evaluate()
			if r.Status != tc.status {
				t.Errorf("status %q, want %q", r.Status, tc.status)
			}
			switch {
			case math.IsNaN(tc.ratio) && r.Ratio != nil:
				t.Errorf("ratio %v, want none", *r.Ratio)
			case !math.IsNaN(tc.ratio) && (r.Ratio == nil || math.Abs(*r.Ratio-tc.ratio) > 1e-9):
				t.Errorf("ratio %v, want %v", r.Ratio, tc.ratio)
			}
		})
	}
}

func TestTableOutput(t *testing.T) {
	rows := []Row{
		{Figure: "durable admitted creates/s", Unit: "/s", Tally: ptr(21345.6), Baseline: ptr(2500), BaselineName: "row-lock tps", Target: atLeastRatio(4)},
		{Figure: "  … with 64 workers", Unit: "/s", Tally: ptr(19000), Baseline: ptr(2500), BaselineName: "row-lock tps"},
		{Figure: "p99 at half max", Unit: "ms", Tally: ptr(12.5), Target: atMost(10, "ms")},
		{Figure: "max RSS, 50 000 users", Unit: "MB", Tally: ptr(300), Target: below(2048, "2 GB"), Partial: true, Note: "only 50000 users"},
		{Figure: "hot user | piped", Unit: "/s", Baseline: ptr(900), Target: atLeastRatio(12)},
	}
	for i := range rows {
		rows[i].evaluate()
	}
	var txt bytes.Buffer
	if err := WriteTable(&txt, rows); err != nil {
		t.Fatal(err)
	}
	out := txt.String()
	for _, want := range []string{
		"figure", "met?",
		"21 346/s", "2 500/s (row-lock tps)", "8.54×", "≥ 4×", "yes",
		"12.50 ms", "≤ 10 ms", "NO",
		"300 MB", "< 2 GB", "yes (partial)",
		"skipped",
		"max RSS, 50 000 users: only 50000 users",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text table lacks %q:\n%s", want, out)
		}
	}
	// The info row shows its ratio but no verdict.
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "with 64 workers") && (strings.Contains(l, "yes") || strings.Contains(l, "NO") || !strings.Contains(l, "7.60×")) {
			t.Errorf("info row rendered as %q", l)
		}
	}

	var md bytes.Buffer
	if err := WriteMarkdown(&md, rows); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(md.String(), "\n")
	if lines[0] != "| figure | Tally | baseline | ratio | target | met? |" {
		t.Errorf("markdown header %q", lines[0])
	}
	if !strings.Contains(md.String(), `| hot user \| piped | — | 900/s | — | ≥ 12× | skipped |`) {
		t.Errorf("markdown row of an unmeasured figure (with an escaped pipe) missing:\n%s", md.String())
	}
	if !strings.Contains(md.String(), "- max RSS, 50 000 users: only 50000 users") {
		t.Errorf("markdown notes missing:\n%s", md.String())
	}
	// Every table line has the same number of cells.
	for _, l := range lines {
		if strings.HasPrefix(l, "|") && strings.Count(strings.ReplaceAll(l, `\|`, ""), "|") != 7 {
			t.Errorf("markdown line with a wrong cell count: %q", l)
		}
	}

	// The JSON form keeps the numbers and the verdicts.
	b, err := json.Marshal(rows[0])
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back["status"] != StatusMet || back["ratio"].(float64) < 8.5 || back["target"].(map[string]any)["op"] != ">=" {
		t.Errorf("JSON row: %s", b)
	}
}

func TestGroupDigits(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999.4: "999", 1000: "1 000", 21345.6: "21 346", 1e6: "1 000 000", -12345: "-12 345"} {
		if got := groupDigits(in); got != want {
			t.Errorf("groupDigits(%v) = %q, want %q", in, got, want)
		}
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.Duration != 15*time.Second || o.Warmup != 3*time.Second || o.MillionUsers != 1000000 || o.MemoryUsers != 100000 {
		t.Errorf("defaults: %+v", o)
	}
	if o.Out != filepath.Join("bin", "bench-results") {
		t.Errorf("default --out %q: results must go under the ignored bin/", o.Out)
	}
	o, err = parseFlags([]string{"--quick", "--skip-million"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.Duration != 5*time.Second || o.Warmup != time.Second || o.MillionUsers != 100000 || o.MemoryUsers != 20000 || !o.SkipMillion {
		t.Errorf("--quick: %+v", o)
	}
	// Explicit flags win over --quick's.
	o, err = parseFlags([]string{"--quick", "--duration", "7s", "--million-users", "50000"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.Duration != 7*time.Second || o.MillionUsers != 50000 {
		t.Errorf("--quick with explicit flags: %+v", o)
	}
	o, err = parseFlags([]string{"--only", "many, latency"}, io.Discard)
	if err != nil || len(o.Only) != 2 || o.Only[1] != "latency" {
		t.Errorf("--only: %+v, %v", o.Only, err)
	}
	if o.Rounds != 3 || len(o.LatencyLevels) != 5 || o.LatencyLevels[2] != 0.5 || o.BaseRef != "" {
		t.Errorf("defaults: rounds %d, levels %v, base ref %q", o.Rounds, o.LatencyLevels, o.BaseRef)
	}
	if o, _ = parseFlags([]string{"--quick"}, io.Discard); o.Rounds != quickRounds {
		t.Errorf("--quick: %d rounds, want %d", o.Rounds, quickRounds)
	}
	o, err = parseFlags([]string{"--quick", "--rounds", "5", "--base-ref", "68189be", "--only", "many,cpu", "--latency-levels", "20%, 50,95"}, io.Discard)
	if err != nil || o.Rounds != 5 || o.BaseRef != "68189be" || len(o.LatencyLevels) != 3 || o.LatencyLevels[2] != 0.95 {
		t.Errorf("--rounds/--base-ref/--latency-levels: %+v, %v", o, err)
	}
	for _, bad := range [][]string{{"--only", "rowlock,nope"}, {"--duration", "10ms"}, {"--million-users", "0"}, {"extra"},
		{"--rounds", "0"}, {"--only", "cpu"}, {"--latency-levels", "50,25"}, {"--latency-levels", "0"}, {"--latency-levels", "120"}} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestWantPhases(t *testing.T) {
	r := &runner{opts: Options{SkipMillion: true}}
	if !r.want("many") || r.want("million") {
		t.Error("--skip-million must skip million only")
	}
	r = &runner{opts: Options{Only: []string{"million"}}}
	if r.want("many") || !r.want("million") {
		t.Error("--only million must run million only")
	}
	r = &runner{opts: Options{}}
	if r.want("cpu") {
		t.Error("the cpu phase must run only with --base-ref")
	}
	r = &runner{opts: Options{BaseRef: "HEAD~1"}}
	if !r.want("cpu") || !r.want("many") {
		t.Error("--base-ref must add the cpu phase to the others")
	}
}

// TestEndToEnd runs the whole benchmark, short, against the machine's
// Postgres and Redis. It takes minutes and loads the machine, so it only
// runs when asked for.
func TestEndToEnd(t *testing.T) {
	if os.Getenv("TALLY_BENCH_E2E") != "1" {
		t.Skip("skipping: the end-to-end benchmark takes minutes and loads the machine; set TALLY_BENCH_E2E=1 to run it")
	}
	out := t.TempDir()
	args := []string{"--duration", "2s", "--memory-users", "2000", "--million-users", "10000", "--out", out}
	if u := os.Getenv("TALLY_TEST_POSTGRES_URL"); u != "" {
		args = append(args, "--postgres-url", u)
	}
	if a := os.Getenv("TALLY_TEST_REDIS_ADDR"); a != "" {
		args = append(args, "--redis-addr", a)
	}
	var stdout bytes.Buffer
	if err := Run(context.Background(), args, &stdout, testWriter{t}); err != nil {
		t.Fatalf("run: %v\n%s", err, stdout.String())
	}
	t.Log(stdout.String())
	files, _ := filepath.Glob(filepath.Join(out, "bench-*.json"))
	if len(files) != 1 {
		t.Fatalf("want one JSON result in %s, got %v", out, files)
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Figures {
		if r.Status == StatusSkipped || r.Status == StatusNA {
			t.Errorf("figure %q was not measured (%s)", r.Figure, r.Status)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestWriteResults checks the three outputs of a run agree: the table on
// stdout, and the JSON and Markdown files under --out.
func TestWriteResults(t *testing.T) {
	var stdout bytes.Buffer
	r := &runner{opts: Options{Duration: 5 * time.Second, Warmup: time.Second, MemoryUsers: 20000, MillionUsers: 50000},
		stdout: &stdout, stderr: io.Discard, outDir: t.TempDir(), stem: "bench-test"}
	r.report = Report{StartedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Command: "go run ./cmd/tally-bench --quick", Notes: []string{}}
	r.rowManyRuns = []PgbenchResult{{TPS: 2000}}
	r.millionRequested = true
	r.million = &MillionResult{Users: 50000, Touched: 50000, MaxRSSKB: 300 << 10}
	r.failed = []string{"gin: boom"}
	r.report.Figures = r.rows()
	if err := r.write(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"command: go run ./cmd/tally-bench --quick", "row-lock tps, 100k users", "300 MB", "yes (partial)", "phase failed: gin: boom"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
		}
	}
	md, err := os.ReadFile(filepath.Join(r.outDir, "bench-test.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"# Tally side-by-side benchmark", "- **started**: 2026-01-02T03:04:05Z", "- **command**: `go run ./cmd/tally-bench --quick`",
		"| figure | Tally |", "| 300 MB |", "- phase failed: gin: boom"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	b, err := os.ReadFile(filepath.Join(r.outDir, "bench-test.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range rep.Figures {
		got[f.Key] = f.Status
	}
	if got["million_max_rss"] != StatusMet || got["admitted_many_max"] != StatusSkipped || got["rss_per_user"] != StatusSkipped {
		t.Errorf("JSON statuses: %v", got)
	}
}
