package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// Every figure compared with a baseline (durable admitted creates against
// the row-lock many-users tps, the hot user against the row-lock hot user,
// over-limit rejections against bare Gin, CPU per create against the
// --base-ref binary) is measured in rounds, the baseline and Tally in turn
// within each round, and compared by the medians of the rounds. Both sides
// move with whatever else the shared machine does (the Gin ceiling moved
// 50–66k/s within one day, row-lock tps by a third between two runs
// minutes apart); alternating them and comparing medians keeps one noisy
// measurement, or a drift over the run, from deciding the ratio.
const defaultRounds = 3

// quickRounds is --quick's default: enough to show the spread, not to
// settle a ratio.
const quickRounds = 2

// medianOf is the median of xs (the mean of the two middle values for an
// even count); false for none.
func medianOf(xs []float64) (float64, bool) {
	if len(xs) == 0 {
		return 0, false
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2], true
	}
	return (s[n/2-1] + s[n/2]) / 2, true
}

// medianPtr is medianOf for a Row's optional value.
func medianPtr(xs []float64) *float64 {
	m, ok := medianOf(xs)
	if !ok {
		return nil
	}
	return ptr(m)
}

// each maps the rounds' results to the figure compared.
func each[T any](rs []T, f func(T) float64) []float64 {
	out := make([]float64, 0, len(rs))
	for _, x := range rs {
		out = append(out, f(x))
	}
	return out
}

// baselineRounds is how many rounds a baseline phase measures by itself:
// one when the Tally phase it is compared with runs too (that phase
// measures the baseline again between its own rounds), all of them when
// it does not.
func (r *runner) baselineRounds(tallyPhase string) int {
	if r.want(tallyPhase) {
		return 1
	}
	return r.opts.Rounds
}

// alternate runs the rounds of a compared figure: round 1's baseline was
// measured by the baseline's own phase, before; each later round measures
// the baseline (when there is one) and then Tally. Every measurement after
// the first starts right after a checkpoint, as every phase does, so that
// neither side pays for the other's dirty pages.
func (r *runner) alternate(ctx context.Context, name string, haveBase bool, base, tally func(round int) error) error {
	for round := 1; round <= r.opts.Rounds; round++ {
		if round > 1 && haveBase {
			r.settle(ctx, name)
			if err := base(round); err != nil {
				return err
			}
		}
		if round > 1 {
			r.settle(ctx, name)
		}
		if err := tally(round); err != nil {
			return err
		}
	}
	return nil
}

// settle forces a checkpoint before a measurement inside a phase.
func (r *runner) settle(ctx context.Context, name string) {
	if err := r.st.checkpoint(ctx); err != nil {
		r.logf("%s: CHECKPOINT before the round failed (figures may carry the previous round's I/O): %v", name, err)
	}
}

// roundsNote lists the rounds behind a compared row's medians, and the
// ratio of each round where both sides were measured.
func roundsNote(row Row) string {
	if len(row.TallyRounds) < 2 && len(row.BaselineRounds) < 2 {
		return ""
	}
	list := func(xs []float64) string {
		parts := make([]string, len(xs))
		for i, x := range xs {
			parts[i] = fmtValue(&x, row.Unit)
		}
		return strings.Join(parts, ", ")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "medians of %d alternating rounds", max(len(row.TallyRounds), len(row.BaselineRounds)))
	if len(row.TallyRounds) > 0 {
		fmt.Fprintf(&b, "; Tally %s", list(row.TallyRounds))
	}
	if len(row.BaselineRounds) > 0 {
		name := row.BaselineName
		if name == "" {
			name = "baseline"
		}
		fmt.Fprintf(&b, "; %s %s", name, list(row.BaselineRounds))
	}
	var ratios []string
	for i := 0; i < min(len(row.TallyRounds), len(row.BaselineRounds)); i++ {
		if row.BaselineRounds[i] > 0 {
			ratios = append(ratios, fmt.Sprintf("%.2f×", row.TallyRounds[i]/row.BaselineRounds[i]))
		}
	}
	if len(ratios) > 0 {
		fmt.Fprintf(&b, "; round by round %s", strings.Join(ratios, ", "))
	}
	return b.String()
}
