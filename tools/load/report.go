package load

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// WriteJSON writes the result as indented JSON (see the package
// documentation for the fields).
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the human summary: what ran, the rates, the errors, the
// latency percentiles and the verification's verdict with every violation.
func (r *Result) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "tally load: %s\n", r.describeRun())
	fmt.Fprintf(&b, "  measured  %.2f s", r.DurationS)
	if r.WarmupS > 0 {
		fmt.Fprintf(&b, " (after a %gs warm-up)", r.WarmupS)
	}
	fmt.Fprintf(&b, ", %d requests, %.1f req/s\n", r.Requests, r.RequestsPerS)
	fmt.Fprintf(&b, "  admitted  %10d  %10.1f/s\n", r.Admitted, r.AdmittedPerS)
	fmt.Fprintf(&b, "  rejected  %10d  %10.1f/s\n", r.Rejected, r.RejectedPerS)
	fmt.Fprintf(&b, "  errors    %10d  %10.1f/s\n", r.Errors, r.ErrorsPerS)
	fmt.Fprintf(&b, "  statuses  %s\n", CountsText(r.Statuses, "none"))
	if r.Errors > 0 {
		fmt.Fprintf(&b, "  errors by status  %s\n", CountsText(r.ErrorsByStatus, "none"))
		if len(r.TransportErrors) > 0 {
			fmt.Fprintf(&b, "  transport errors  %s\n", CountsText(r.TransportErrors, "none"))
			for _, k := range slices.Sorted(maps.Keys(r.TransportErrorSamples)) {
				fmt.Fprintf(&b, "    e.g. %s: %s\n", k, r.TransportErrorSamples[k])
			}
		}
	}
	if r.Mode == "open" {
		fmt.Fprintf(&b, "  open loop  target %g req/s; late (sent > %gms behind schedule): %d; unsent at the end: %d\n",
			r.Rate, r.LateAfterMs, r.Late, r.Unsent)
		if r.SendLag != nil && r.SendLag.Count > 0 {
			fmt.Fprintf(&b, "  send lag   p50 %.3f ms, p99 %.3f ms, max %.3f ms (how far behind schedule requests left; included in their latency)\n",
				r.SendLag.P50Ms, r.SendLag.P99Ms, r.SendLag.MaxMs)
		}
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "  latency (ms)\tcount\tmean\tp50\tp90\tp99\tp99.9\tmax\t\n")
	for _, row := range []struct {
		name string
		l    Latency
	}{{"admitted", r.LatencyAdmitted}, {"rejected", r.LatencyRejected}} {
		if row.l.Count == 0 {
			fmt.Fprintf(tw, "  %s\t0\t-\t-\t-\t-\t-\t-\t\n", row.name)
			continue
		}
		l := row.l
		fmt.Fprintf(tw, "  %s\t%d\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t\n", row.name, l.Count, l.MeanMs, l.P50Ms, l.P90Ms, l.P99Ms, l.P999Ms, l.MaxMs)
	}
	_ = tw.Flush()
	if r.Mode == "open" {
		b.WriteString("  (open loop: latency counts from each request's scheduled send time)\n")
	}
	b.WriteString("\n")
	switch v := r.Verification; {
	case r.Interrupted:
		b.WriteString("interrupted: the run was cut short; verification skipped\n")
	case v == nil:
		b.WriteString("verification: skipped (--no-verify)\n")
	default:
		fmt.Fprintf(&b, "verification: usage of %d user(s), %d admitted session(s) read back\n", v.Users, v.Sessions)
	}
	if len(r.Violations) == 0 {
		if !r.Interrupted {
			b.WriteString("PASSED: no invariant violation\n")
		}
	} else {
		fmt.Fprintf(&b, "FAILED: %d violation(s)\n", len(r.Violations))
		for _, v := range r.Violations {
			fmt.Fprintf(&b, "  - %s\n", v)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// describeRun is one line saying what the run was.
func (r *Result) describeRun() string {
	who := fmt.Sprintf("%d users", r.Users)
	if r.Hot {
		who = "1 hot user"
	} else if r.Users == 1 {
		who = "1 user"
	}
	load := fmt.Sprintf("closed loop, %d workers", r.Concurrency)
	if r.Mode == "open" {
		load = fmt.Sprintf("open loop at %g req/s, at most %d in flight", r.Rate, r.Concurrency)
	}
	against := r.URL + r.Path
	if len(r.URLs) > 1 {
		against = strings.Join(r.URLs, ", ") + " (creates spread over them) at " + r.Path
	}
	ids := r.UserPrefix + "-N"
	if r.UserPrefix == "" {
		ids = "ids given" // Config.UserIDs
	}
	return fmt.Sprintf("%s, %s (%s) on plan %q, against %s", load, who, ids, r.Plan, against)
}

// CountsText renders {"403": 5, "200": 10} as "200: 10, 403: 5", numeric
// keys in numeric order, and an empty map as empty.
func CountsText[N int | int64](m map[string]N, empty string) string {
	if len(m) == 0 {
		return empty
	}
	keys := slices.SortedFunc(maps.Keys(m), func(a, b string) int {
		x, errA := strconv.Atoi(a)
		y, errB := strconv.Atoi(b)
		if errA == nil && errB == nil {
			return x - y
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// human shortens a rate for narrow displays: 950, 9.5k, 95k, 1.2M.
func human(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.0fk", v/1e3)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// fmtMs shows a latency with a unit that keeps about three digits.
func fmtMs(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.2fs", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0fms", v)
	case v >= 10:
		return fmt.Sprintf("%.1fms", v)
	case v >= 1:
		return fmt.Sprintf("%.2fms", v)
	}
	return fmt.Sprintf("%.0fµs", v*1000)
}
