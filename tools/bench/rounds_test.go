package bench

import (
	"bytes"
	"io"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/tools/load"
)

func TestMedianOf(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{5}, 5},
		{[]float64{9, 1, 5}, 5},
		// An even count takes the mean of the middle two, not the lower
		// one: with two rounds, one slow round must not decide alone.
		{[]float64{10, 2}, 6},
		{[]float64{4, 1, 3, 100}, 3.5},
	} {
		if got, ok := medianOf(c.in); !ok || got != c.want {
			t.Errorf("medianOf(%v) = %v, %v; want %v", c.in, got, ok, c.want)
		}
	}
	if _, ok := medianOf(nil); ok {
		t.Error("medianOf(nil) has a value")
	}
	in := []float64{3, 1, 2}
	medianOf(in)
	if in[0] != 3 {
		t.Error("medianOf sorted its argument")
	}
}

func TestBaselineRounds(t *testing.T) {
	r := &runner{opts: Options{Rounds: 3}}
	if r.baselineRounds("many") != 1 {
		t.Error("with the Tally phase selected, the baseline phase measures round 1 only")
	}
	r.opts.Only = []string{"rowlock"}
	if r.baselineRounds("many") != 3 {
		t.Error("without the Tally phase, the baseline phase measures every round itself")
	}
}

// result is a load result with the figures the rows read.
func result(admitted, rejected float64) *load.Result {
	return &load.Result{AdmittedPerS: admitted, RejectedPerS: rejected, Admitted: 1}
}

// TestComparedRows checks that each compared row is the ratio of the
// medians of its rounds, with the rounds listed in its note.
func TestComparedRows(t *testing.T) {
	r := &runner{opts: Options{Rounds: 3, Duration: 5 * time.Second, BaseRef: "68189be"}}
	r.rowManyRuns = []PgbenchResult{{TPS: 2000}, {TPS: 3000}, {TPS: 2500}}
	r.manyRuns = []map[int]*load.Result{
		{64: result(9000, 0), 256: result(11000, 0)},
		{64: result(12000, 0), 256: result(10000, 0)},
		{64: result(8000, 0), 256: result(10500, 0)},
	}
	r.rowHotRuns = []PgbenchResult{{TPS: 900}, {TPS: 1000}, {TPS: 800}}
	r.hotRuns = []*load.Result{result(10000, 0), result(9000, 0), result(12000, 0)}
	r.ginRuns = []*load.Result{result(50000, 0), result(60000, 0), result(55000, 0)}
	r.overRuns = []*load.Result{result(0, 45000), result(0, 40000), result(0, 50000)}
	r.cpu = &CPUResult{BaseDesc: "68189be", Rounds: []CPURound{
		{Round: 1, Binary: "base", MicrosPerCreate: 200}, {Round: 1, Binary: "new", MicrosPerCreate: 130},
		{Round: 2, Binary: "new", MicrosPerCreate: 150}, {Round: 2, Binary: "base", MicrosPerCreate: 210},
		{Round: 3, Binary: "base", MicrosPerCreate: 190}, {Round: 3, Binary: "new", MicrosPerCreate: 140},
	}}
	rows := map[string]Row{}
	for _, row := range r.rows() {
		rows[row.Key] = row
	}
	for _, c := range []struct {
		key                   string
		tally, baseline, rati float64
		status                string
		note                  string
	}{
		// Best of 64/256 per round: 11 000, 12 000, 10 500.
		{"admitted_many_max", 11000, 2500, 4.4, StatusMet, "Tally 11 000/s, 12 000/s, 10 500/s; row-lock tps, 100k users 2 000/s, 3 000/s, 2 500/s; round by round 5.50×, 4.00×, 4.20×"},
		{"admitted_many_64", 9000, 2500, 3.6, StatusInfo, ""},
		{"admitted_hot", 10000, 900, 10000.0 / 900, StatusMissed, "medians of 3 alternating rounds"},
		{"rejected_overlimit", 45000, 55000, 45000.0 / 55000, StatusMet, "bare Gin, no accounting 50 000/s, 60 000/s, 55 000/s"},
		{"cpu_per_admitted", 140, 200, 0.7, StatusMet, "Tally 130.0 µs, 150.0 µs, 140.0 µs; built from 68189be 200.0 µs, 210.0 µs, 190.0 µs"},
	} {
		row, ok := rows[c.key]
		if !ok {
			t.Errorf("no row %s", c.key)
			continue
		}
		if row.Tally == nil || *row.Tally != c.tally || row.Baseline == nil || *row.Baseline != c.baseline ||
			row.Ratio == nil || math.Abs(*row.Ratio-c.rati) > 1e-9 || row.Status != c.status {
			t.Errorf("%s: %+v; want Tally %v, baseline %v, ratio %v, %s", c.key, row, c.tally, c.baseline, c.rati, c.status)
		}
		if !strings.Contains(row.Note, c.note) {
			t.Errorf("%s: note %q lacks %q", c.key, row.Note, c.note)
		}
	}
	if r.maxAdmitted() != 11000 {
		t.Errorf("maxAdmitted = %v, want the median of the rounds' best, 11000", r.maxAdmitted())
	}
}

func TestLatencyLevels(t *testing.T) {
	res := &load.Result{AdmittedPerS: 4990, Admitted: 24950, Late: 3,
		LatencyAdmitted: load.Latency{Count: 24950, P50Ms: 1.2, P90Ms: 2.5, P99Ms: 8.75, P999Ms: 20, MaxMs: 31}}
	half := levelOf(0.5, 5000, res)
	if half.Target == nil || half.Status != StatusMet || half.P99Ms != 8.75 || half.OfferedPerS != 5000 {
		t.Errorf("50%% level: %+v", half)
	}
	slow := *res
	slow.LatencyAdmitted.P99Ms = 12
	if l := levelOf(0.5, 5000, &slow); l.Status != StatusMissed {
		t.Errorf("a p99 of 12 ms at 50%% is %q, want missed", l.Status)
	}
	if l := levelOf(0.9, 9000, res); l.Target != nil || l.Status != "" {
		t.Errorf("the 90%% level has a target: %+v", l)
	}

	var stdout bytes.Buffer
	r := &runner{opts: Options{Duration: 5 * time.Second}, stdout: &stdout, stderr: io.Discard,
		latLevels: []LoadLevel{levelOf(0.1, 1000, res), half, levelOf(0.9, 9000, res)},
		manyRuns:  []map[int]*load.Result{{256: result(10000, 0)}}}
	if got := r.halfMax(); got == nil || got.OfferedPerS != 5000 {
		t.Errorf("halfMax = %+v", got)
	}
	if err := r.writeSections(&stdout, false); err != nil {
		t.Fatal(err)
	}
	out := stdout.String()
	for _, want := range []string{"p99 by load", "max durable 10 000/s", "load", "offered", "p90", "late / unsent",
		"50%", "5 000/s", "4 990/s", "8.75 ms", "31.00 ms", "3 / 0", "≤ 10 ms", "yes"} {
		if !strings.Contains(out, want) {
			t.Errorf("latency table lacks %q:\n%s", want, out)
		}
	}
	var md bytes.Buffer
	if err := r.writeSections(&md, true); err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(md.String(), "\n") {
		if strings.HasPrefix(l, "|") && strings.Count(l, "|") != 11 {
			t.Errorf("markdown line with a wrong cell count: %q", l)
		}
	}
	rows := map[string]Row{}
	for _, row := range r.rows() {
		rows[row.Key] = row
	}
	if p99 := rows["p99_half_max"]; p99.Tally == nil || *p99.Tally != 8.75 || p99.Status != StatusMet || !strings.Contains(p99.Figure, "5 000/s") {
		t.Errorf("p99_half_max row: %+v", p99)
	}
}

// /proc/<pid>/stat of a process whose name holds a space and a ')'.
const procStat = "4242 (tally (serve)) S 1 4242 4242 0 -1 4194560 12345 0 0 0 1234 567 0 0 20 0 12 0 100 123456789 4567 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"

func TestParseProcStatCPU(t *testing.T) {
	d, err := parseProcStatCPU([]byte(procStat))
	if err != nil {
		t.Fatal(err)
	}
	if want := 18010 * time.Millisecond; d != want { // (1234 + 567) ticks of 10 ms
		t.Errorf("CPU %s, want %s", d, want)
	}
	for name, in := range map[string]string{
		"no command":   "4242 S 1 2 3",
		"short":        "4242 (x) S 1 2 3 4 5 6 7 8 9 10",
		"bad utime":    "4242 (x) S 1 4242 4242 0 -1 4194560 12345 0 0 0 many 567 0",
		"negative cpu": "4242 (x) S 1 4242 4242 0 -1 4194560 12345 0 0 0 -5 567 0",
	} {
		if _, err := parseProcStatCPU([]byte(in)); err == nil {
			t.Errorf("%s: parsed without error", name)
		}
	}
}
