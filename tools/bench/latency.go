package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/tally-dev/tally/tools/load"
)

// LoadLevel is one row of the latency phase's table: admitted creates,
// open loop (a constant arrival rate, latency measured from each
// request's scheduled time, so a stall shows in every request it delays
// instead of slowing the client down), at a fraction of the max durable
// admitted/s.
type LoadLevel struct {
	Percent      float64 `json:"percent"`
	OfferedPerS  float64 `json:"offered_per_s"`
	AchievedPerS float64 `json:"achieved_per_s"` // admitted/s
	Admitted     int64   `json:"admitted"`
	Errors       int64   `json:"errors"`
	P50Ms        float64 `json:"p50_ms"`
	P90Ms        float64 `json:"p90_ms"`
	P99Ms        float64 `json:"p99_ms"`
	P999Ms       float64 `json:"p999_ms"`
	MaxMs        float64 `json:"max_ms"`
	Late         int64   `json:"late"`
	Unsent       int64   `json:"unsent"`
	// Target and Status: the 50% row's p99 is checked against ≤ 10 ms.
	Target *Target `json:"target,omitempty"`
	Status string  `json:"status,omitempty"`
}

// p99Target is the latency target, checked at half the max.
const (
	p99TargetMs     = 10
	p99TargetAtLoad = 0.5
)

// levelsText is the levels for a phase description: "10%, 25%, 50%".
func levelsText(levels []float64) string {
	parts := make([]string, len(levels))
	for i, f := range levels {
		parts[i] = fmt.Sprintf("%g%%", f*100)
	}
	return strings.Join(parts, ", ")
}

// phaseLatency offers each level of --latency-levels in turn, open loop,
// to the same enterprise users, provisioned and touched once beforehand:
// every row then measures creates of live users, as the many phase's
// steady state does, rather than first sights at the low rates (which
// could not touch 10 000 users within a warm-up). Usage adds up over the
// levels, which tools/load's per-run check (usage = this run's admitted)
// cannot follow, so these runs are not verified; the many and hot phases
// verify the service under load.
func (r *runner) phaseLatency(ctx context.Context, p *Phase) error {
	best := r.maxAdmitted()
	if best <= 0 {
		return errors.New("needs the max durable admitted/s of the many-users phase (run it too: --only many,latency)")
	}
	c, err := r.mainTally(ctx, p)
	if err != nil {
		return err
	}
	prefix := "bench-lat-" + randomHex(4)
	if err := r.provision(ctx, p, c.url(), prefix, manyUsers); err != nil {
		return err
	}
	for i, f := range r.opts.LatencyLevels {
		if i > 0 {
			r.settle(ctx, "latency")
		}
		rate := float64(int(best * f))
		cfg := r.loadConfig(c.url())
		cfg.Users, cfg.Plan, cfg.UserPrefix, cfg.Rate = manyUsers, "enterprise", prefix, rate
		cfg.NoProvision, cfg.NoVerify = true, true
		// The cap on requests in flight is generous so that a short stall
		// queues requests (and shows in their latency) rather than being
		// refused by the client.
		cfg.Concurrency = highWorkers
		res, err := r.runLoad(ctx, p, fmt.Sprintf("open loop at %g%% (%.0f/s)", f*100, rate), cfg)
		if err != nil {
			return err
		}
		l := levelOf(f, rate, res)
		r.latLevels = append(r.latLevels, l)
		r.logf("open loop at %g%% (%.0f/s): %.0f admitted/s, p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms; %d late, %d unsent",
			l.Percent, rate, l.AchievedPerS, l.P50Ms, l.P90Ms, l.P99Ms, l.MaxMs, l.Late, l.Unsent)
		if res.Late > 0 || res.Unsent > 0 {
			r.note("open loop at %.0f/s: %d request(s) left more than %gms late and %d were never sent (client or server short of CPU); their wait is in the latency", rate, res.Late, res.LateAfterMs, res.Unsent)
		}
	}
	return nil
}

// levelOf is one level's row, the 50% row with its target evaluated.
func levelOf(fraction, rate float64, res *load.Result) LoadLevel {
	lat := res.LatencyAdmitted
	l := LoadLevel{Percent: fraction * 100, OfferedPerS: rate, AchievedPerS: res.AdmittedPerS, Admitted: res.Admitted, Errors: res.Errors,
		P50Ms: lat.P50Ms, P90Ms: lat.P90Ms, P99Ms: lat.P99Ms, P999Ms: lat.P999Ms, MaxMs: lat.MaxMs, Late: res.Late, Unsent: res.Unsent}
	if fraction == p99TargetAtLoad {
		row := Row{Target: atMost(p99TargetMs, "ms")}
		if lat.Count > 0 {
			row.Tally = ptr(lat.P99Ms)
		}
		row.evaluate()
		l.Target, l.Status = row.Target, row.Status
	}
	return l
}

// halfMax is the 50% level, the one the table's p99 rows show (nil when
// it was not measured).
func (r *runner) halfMax() *LoadLevel {
	for i := range r.latLevels {
		if r.latLevels[i].Percent == p99TargetAtLoad*100 && r.latLevels[i].Admitted > 0 {
			return &r.latLevels[i]
		}
	}
	return nil
}

// latencyCells is the latency table as header and cells.
func latencyCells(levels []LoadLevel) ([]string, [][]string) {
	head := []string{"load", "offered", "achieved (admitted)", "p50", "p90", "p99", "max", "late / unsent", "target", "met?"}
	var rows [][]string
	for _, l := range levels {
		row := Row{Target: l.Target, Status: l.Status}
		rows = append(rows, []string{fmt.Sprintf("%g%%", l.Percent), fmtValue(&l.OfferedPerS, "/s"), fmtValue(&l.AchievedPerS, "/s"),
			fmtValue(&l.P50Ms, "ms"), fmtValue(&l.P90Ms, "ms"), fmtValue(&l.P99Ms, "ms"), fmtValue(&l.MaxMs, "ms"),
			fmt.Sprintf("%d / %d", l.Late, l.Unsent), row.targetText(), row.statusText()})
	}
	return head, rows
}

// writeCells writes a small table as aligned text, or as Markdown with
// the first column left-aligned and the others right-aligned.
func writeCells(w io.Writer, head []string, rows [][]string, markdown bool) error {
	if markdown {
		var b strings.Builder
		esc := func(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
		line := func(cells []string) {
			for i := range cells {
				cells[i] = esc(cells[i])
			}
			fmt.Fprintf(&b, "| %s |\n", strings.Join(cells, " | "))
		}
		line(append([]string(nil), head...))
		b.WriteString("|---" + strings.Repeat("|---:", len(head)-1) + "|\n")
		for _, r := range rows {
			line(append([]string(nil), r...))
		}
		_, err := io.WriteString(w, b.String())
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	dashes := make([]string, len(head))
	for i, h := range head {
		dashes[i] = strings.Repeat("-", len([]rune(h)))
	}
	fmt.Fprintln(tw, strings.Join(dashes, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}
