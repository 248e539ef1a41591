package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Target is what a figure of the table should reach. Of says whether the
// ratio to the baseline ("ratio") or Tally's own value ("value") is
// compared.
type Target struct {
	Of    string  `json:"of"`
	Op    string  `json:"op"` // ">=", "<=" or "<"
	Value float64 `json:"value"`
	Text  string  `json:"text"`
}

// The statuses a row can end in.
const (
	StatusMet     = "met"
	StatusMissed  = "missed"
	StatusNA      = "n/a"     // nothing to compare (no baseline, a zero baseline)
	StatusSkipped = "skipped" // the phase did not run or failed
	StatusInfo    = "info"    // a figure shown for context, with no target
)

// Row is one line of the comparison table.
type Row struct {
	Key    string `json:"key"`
	Figure string `json:"figure"`
	// Unit of Tally and Baseline: "/s", "ms", "µs", "KB", "MB".
	Unit         string   `json:"unit"`
	Tally        *float64 `json:"tally"`
	Baseline     *float64 `json:"baseline"`
	BaselineName string   `json:"baseline_name,omitempty"`
	Ratio        *float64 `json:"ratio"`
	Target       *Target  `json:"target"`
	Status       string   `json:"status"`
	// Partial marks a measurement made under weaker conditions than the
	// target's (fewer users than the target names): its status says how
	// the figure compares, not that the target was met.
	Partial bool   `json:"partial,omitempty"`
	Note    string `json:"note,omitempty"`
	// TallyRounds and BaselineRounds are the rounds behind a compared
	// figure, in the order measured (rounds.go): Tally and Baseline are
	// their medians.
	TallyRounds    []float64 `json:"tally_rounds,omitempty"`
	BaselineRounds []float64 `json:"baseline_rounds,omitempty"`
}

// ptr is a float64 pointer for the optional fields of a Row.
func ptr(v float64) *float64 { return &v }

// atLeastRatio, atMost and below are the table's three kinds of target.
func atLeastRatio(v float64) *Target {
	return &Target{Of: "ratio", Op: ">=", Value: v, Text: fmt.Sprintf("≥ %g×", v)}
}

// atMostRatio is a ceiling on the ratio to the baseline (a cost).
func atMostRatio(v float64) *Target {
	return &Target{Of: "ratio", Op: "<=", Value: v, Text: fmt.Sprintf("≤ %g×", v)}
}

func atMost(v float64, unit string) *Target {
	return &Target{Of: "value", Op: "<=", Value: v, Text: fmt.Sprintf("≤ %g %s", v, unit)}
}

// atLeast is a floor on the value itself (a percentage, a rate).
func atLeast(v float64, unit string) *Target {
	return &Target{Of: "value", Op: ">=", Value: v, Text: strings.TrimSpace(fmt.Sprintf("≥ %g %s", v, unit))}
}

// none is the target of a count of things that must not happen.
func none() *Target { return &Target{Of: "value", Op: "<=", Value: 0, Text: "0"} }

func below(v float64, text string) *Target {
	return &Target{Of: "value", Op: "<", Value: v, Text: "< " + text}
}

// evaluate fills in the ratio and the status from the values and the
// target. A row without a Tally value was not measured (skipped); a ratio
// needs a positive baseline, so a zero or missing one is n/a rather than
// an infinite ratio that would "meet" any target.
func (r *Row) evaluate() {
	r.Ratio = nil
	if r.Tally != nil && r.Baseline != nil && *r.Baseline > 0 {
		r.Ratio = ptr(*r.Tally / *r.Baseline)
	}
	switch {
	case r.Tally == nil:
		r.Status = StatusSkipped
		return
	case r.Target == nil:
		r.Status = StatusInfo
		return
	}
	var v *float64
	if r.Target.Of == "ratio" {
		v = r.Ratio
	} else {
		v = r.Tally
	}
	if v == nil {
		r.Status = StatusNA
		return
	}
	ok := false
	switch r.Target.Op {
	case ">=":
		ok = *v >= r.Target.Value
	case "<=":
		ok = *v <= r.Target.Value
	case "<":
		ok = *v < r.Target.Value
	}
	r.Status = StatusMissed
	if ok {
		r.Status = StatusMet
	}
}

// fmtValue renders a value with its unit, with about three significant
// digits where that is what the measurement is worth.
func fmtValue(v *float64, unit string) string {
	if v == nil {
		return "—"
	}
	x := *v
	switch unit {
	case "/s":
		return fmt.Sprintf("%s/s", groupDigits(x))
	case "ms":
		if x >= 100 {
			return fmt.Sprintf("%.0f ms", x)
		}
		return fmt.Sprintf("%.2f ms", x)
	case "KB":
		return fmt.Sprintf("%.2f KB", x)
	case "MB":
		return fmt.Sprintf("%.0f MB", x)
	case "%":
		return fmt.Sprintf("%.1f %%", x)
	case "s":
		return fmt.Sprintf("%.2f s", x)
	case "µs":
		return fmt.Sprintf("%.1f µs", x)
	case "×":
		return fmt.Sprintf("%.2f×", x)
	case "":
		return groupDigits(x)
	}
	return fmt.Sprintf("%g %s", x, unit)
}

// groupDigits prints a rate rounded to an integer with thin groups of
// three digits (12 345), which is how the table's throughputs are read.
func groupDigits(x float64) string {
	s := fmt.Sprintf("%.0f", x)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(' ')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func fmtRatio(v *float64) string {
	if v == nil {
		return "—"
	}
	return fmt.Sprintf("%.2f×", *v)
}

// statusText is the "met?" column.
func (r Row) statusText() string {
	s := map[string]string{
		StatusMet: "yes", StatusMissed: "NO", StatusNA: "n/a", StatusSkipped: "skipped", StatusInfo: "",
	}[r.Status]
	if r.Partial && (r.Status == StatusMet || r.Status == StatusMissed) {
		s += " (partial)"
	}
	return s
}

func (r Row) targetText() string {
	if r.Target == nil {
		return ""
	}
	return r.Target.Text
}

func (r Row) baselineText() string {
	if r.Baseline == nil {
		return "—"
	}
	s := fmtValue(r.Baseline, r.Unit)
	if r.BaselineName != "" {
		s += " (" + r.BaselineName + ")"
	}
	return s
}

// WriteTable writes the rows as an aligned text table, notes below it.
func WriteTable(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tTally\tbaseline\tratio\ttarget\tmet?")
	fmt.Fprintln(tw, "------\t-----\t--------\t-----\t------\t----")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Figure, fmtValue(r.Tally, r.Unit), r.baselineText(),
			fmtRatio(r.Ratio), r.targetText(), r.statusText())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return writeRowNotes(w, rows, "")
}

// WriteMarkdown writes the rows as a Markdown table, notes below it.
func WriteMarkdown(w io.Writer, rows []Row) error {
	var b strings.Builder
	b.WriteString("| figure | Tally | baseline | ratio | target | met? |\n")
	b.WriteString("|---|---:|---:|---:|---|---|\n")
	esc := func(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", esc(r.Figure), fmtValue(r.Tally, r.Unit),
			esc(r.baselineText()), fmtRatio(r.Ratio), esc(r.targetText()), r.statusText())
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	return writeRowNotes(w, rows, "- ")
}

// WriteScenarioTable writes the overload suite's rows (no baselines: each
// figure is Tally's own, against its target) as an aligned text table,
// notes below it.
func WriteScenarioTable(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tmeasured\ttarget\tmet?")
	fmt.Fprintln(tw, "------\t--------\t------\t----")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Figure, fmtValue(r.Tally, r.Unit), r.targetText(), r.statusText())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return writeRowNotes(w, rows, "")
}

// WriteScenarioMarkdown is WriteScenarioTable in Markdown.
func WriteScenarioMarkdown(w io.Writer, rows []Row) error {
	var b strings.Builder
	b.WriteString("| figure | measured | target | met? |\n")
	b.WriteString("|---|---:|---|---|\n")
	esc := func(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", esc(r.Figure), fmtValue(r.Tally, r.Unit), esc(r.targetText()), r.statusText())
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	return writeRowNotes(w, rows, "- ")
}

func writeRowNotes(w io.Writer, rows []Row, bullet string) error {
	var b strings.Builder
	first := true
	for _, r := range rows {
		if r.Note == "" {
			continue
		}
		if first {
			b.WriteString("\n")
			first = false
		}
		fmt.Fprintf(&b, "%s%s: %s\n", bullet, strings.TrimSpace(r.Figure), r.Note)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
