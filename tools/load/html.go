package load

import (
	"fmt"
	"html/template"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// Series colours: admitted green-blue, rejected orange, errors red, late
// grey; dashed lines are the p99 of the solid p50 of the same colour.
const (
	colAdmitted = "#1f77b4"
	colRejected = "#ff7f0e"
	colErrors   = "#d62728"
	colLate     = "#7f7f7f"
	colOK       = "#2ca02c"
)

// maxHTMLViolations bounds the list in the report; the text summary and
// the JSON carry all of them.
const maxHTMLViolations = 1000

// WriteHTML writes a self-contained report (inline CSS and SVG, nothing
// fetched): the verdict, the figures, throughput and latency over time, the
// latency histogram and percentile spectrum, and the violations.
func (r *Result) WriteHTML(w io.Writer) error {
	v := htmlView{R: r, Title: "Tally load report", Run: r.describeRun(),
		Started: r.StartedAt.Format(time.RFC3339)}
	switch {
	case r.Interrupted:
		v.Verdict, v.VerdictClass = "INTERRUPTED", "warn"
	case !r.Passed:
		v.Verdict, v.VerdictClass = fmt.Sprintf("FAILED — %d violation(s)", len(r.Violations)), "bad"
	case r.Verification == nil:
		v.Verdict, v.VerdictClass = "NOT VERIFIED (--no-verify)", "warn"
	default:
		v.Verdict, v.VerdictClass = "PASSED — invariants hold", "good"
	}
	v.Violations = r.Violations
	if len(v.Violations) > maxHTMLViolations {
		v.MoreViolations = len(v.Violations) - maxHTMLViolations
		v.Violations = v.Violations[:maxHTMLViolations]
	}
	for _, l := range []struct {
		name string
		l    Latency
	}{{"admitted (200)", r.LatencyAdmitted}, {"rejected (403)", r.LatencyRejected}} {
		v.Latencies = append(v.Latencies, latencyRow{l.name, l.l})
	}
	if r.SendLag != nil {
		v.Latencies = append(v.Latencies, latencyRow{"send lag (open loop)", *r.SendLag})
	}
	for _, k := range slices.Sorted(maps.Keys(r.Statuses)) {
		v.Statuses = append(v.Statuses, countRow{k, r.Statuses[k]})
	}
	for _, k := range slices.Sorted(maps.Keys(r.TransportErrors)) {
		v.Statuses = append(v.Statuses, countRow{"transport: " + k, r.TransportErrors[k]})
	}
	v.Charts = []template.HTML{
		template.HTML(throughputChart(r).svg()),
		template.HTML(latencyOverTimeChart(r).svg()),
		template.HTML(histogramChart(r).svg()),
		template.HTML(percentileChart(r).svg()),
	}
	return reportTemplate.Execute(w, v)
}

type htmlView struct {
	R                     *Result
	Title, Run, Started   string
	Verdict, VerdictClass string
	Latencies             []latencyRow
	Statuses              []countRow
	Charts                []template.HTML
	Violations            []string
	MoreViolations        int
}

type latencyRow struct {
	Name string
	L    Latency
}

type countRow struct {
	Key   string
	Count int64
}

// throughputChart: admitted, rejected, error (and late) requests per
// second over the measured phase.
func throughputChart(r *Result) chart {
	c := chart{id: "throughput", title: "Throughput over time", xLabel: "time since the start of measurement (s)",
		yLabel: "requests per second", empty: "no measured interval"}
	adm := series{name: "admitted/s", color: colAdmitted}
	rej := series{name: "rejected/s", color: colRejected}
	errs := series{name: "errors/s", color: colErrors}
	late := series{name: "late/s", color: colLate, dash: true}
	var top, anyErr, anyLate float64
	for _, s := range chartable(r.Series) {
		x := s.T - s.Length/2
		a, rj, e, l := float64(s.Admitted)/s.Length, float64(s.Rejected)/s.Length, float64(s.Errors)/s.Length, float64(s.Late)/s.Length
		adm.pts = append(adm.pts, [2]float64{x, a})
		rej.pts = append(rej.pts, [2]float64{x, rj})
		errs.pts = append(errs.pts, [2]float64{x, e})
		late.pts = append(late.pts, [2]float64{x, l})
		top = math.Max(top, math.Max(math.Max(a, rj), math.Max(e, l)))
		anyErr += e
		anyLate += l
	}
	c.series = []series{adm, rej}
	if anyErr > 0 {
		c.series = append(c.series, errs)
	}
	if anyLate > 0 {
		c.series = append(c.series, late)
	}
	c.xTicks, c.x.lo, c.x.hi = linearTicks(0, timeAxisEnd(r), 10, plainLabel)
	c.yTicks, c.y.lo, c.y.hi = linearTicks(0, math.Max(top*1.05, 1), 6, rateLabel)
	return c
}

// timeAxisEnd is where the time axes end: the measured duration without
// the few milliseconds of the last answers, which would otherwise add a
// whole empty tick step.
func timeAxisEnd(r *Result) float64 { return math.Max(1, math.Floor(r.DurationS*10)/10) }

// chartable drops a last interval too short for its rate or percentiles
// to mean anything (the few milliseconds after the last full second).
func chartable(series []Second) []Second {
	if n := len(series); n > 1 && series[n-1].Length < 0.25 {
		return series[:n-1]
	}
	return series
}

// latencyOverTimeChart: p50 and p99 of admitted and rejected creates per
// second.
func latencyOverTimeChart(r *Result) chart {
	c := chart{id: "latency-time", title: "Latency over time (per second)", xLabel: "time since the start of measurement (s)",
		yLabel: "latency (ms)", empty: "no measured interval"}
	mk := func(name, color string, dash bool, count func(Second) int64, val func(Second) float64) series {
		s := series{name: name, color: color, dash: dash}
		for _, sec := range chartable(r.Series) {
			if count(sec) > 0 {
				s.pts = append(s.pts, [2]float64{sec.T - sec.Length/2, val(sec)})
			}
		}
		return s
	}
	adm := func(s Second) int64 { return s.Admitted }
	rej := func(s Second) int64 { return s.Rejected }
	all := []series{
		mk("admitted p50", colAdmitted, false, adm, func(s Second) float64 { return s.AdmittedP50Ms }),
		mk("admitted p99", colAdmitted, true, adm, func(s Second) float64 { return s.AdmittedP99Ms }),
		mk("rejected p50", colRejected, false, rej, func(s Second) float64 { return s.RejectedP50Ms }),
		mk("rejected p99", colRejected, true, rej, func(s Second) float64 { return s.RejectedP99Ms }),
	}
	lo, hi := math.Inf(1), 0.0
	for _, s := range all {
		if len(s.pts) == 0 {
			continue
		}
		c.series = append(c.series, s)
		for _, p := range s.pts {
			lo, hi = math.Min(lo, p[1]), math.Max(hi, p[1])
		}
	}
	if hi == 0 {
		lo, hi = 0, 1
	}
	c.y, c.yTicks = latencyAxis(lo, hi)
	c.xTicks, c.x.lo, c.x.hi = linearTicks(0, timeAxisEnd(r), 10, plainLabel)
	return c
}

// histogramChart: the share of admitted and of rejected creates per
// latency bin, ten bins per decade on a log axis (latency distributions
// span decades; linear bins would put everything in the first one).
func histogramChart(r *Result) chart {
	c := chart{id: "histogram", title: "Latency histogram", xLabel: "latency (ms, log scale)",
		yLabel: "% of that outcome's requests", empty: "no admitted or rejected request"}
	lo, hi := math.Inf(1), 0.0
	for _, h := range []*hdrhistogram.Histogram{r.AdmittedHist, r.RejectedHist} {
		if h != nil && h.TotalCount() > 0 {
			lo, hi = math.Min(lo, float64(h.Min())), math.Max(hi, float64(h.Max()))
		}
	}
	if hi == 0 {
		c.xTicks, c.x.lo, c.x.hi = logTicks(0.01, 10, msLabel)
		c.x.log = true
		c.yTicks, c.y.lo, c.y.hi = linearTicks(0, 100, 5, plainLabel)
		return c
	}
	const perDecade = 10
	first := math.Floor(math.Log10(lo) * perDecade)
	last := math.Ceil(math.Log10(hi+1) * perDecade)
	edges := make([]float64, 0, int(last-first)+1) // µs
	for k := first; k <= last; k++ {
		edges = append(edges, math.Pow(10, k/perDecade))
	}
	top := 0.0
	for _, x := range []struct {
		name, color string
		h           *hdrhistogram.Histogram
	}{{"admitted (200)", colAdmitted, r.AdmittedHist}, {"rejected (403)", colRejected, r.RejectedHist}} {
		if x.h == nil || x.h.TotalCount() == 0 {
			continue
		}
		counts := make([]float64, len(edges)-1)
		for _, bar := range x.h.Distribution() {
			if bar.Count == 0 {
				continue
			}
			mid := (float64(bar.From) + float64(bar.To)) / 2
			i := max(0, min(len(counts)-1, sortSearch(edges, mid)-1))
			counts[i] += float64(bar.Count)
		}
		s := series{name: x.name, color: x.color, fill: true}
		total := float64(x.h.TotalCount())
		for i, n := range counts {
			pct := 100 * n / total
			top = math.Max(top, pct)
			s.pts = append(s.pts, [2]float64{edges[i] / 1000, pct}, [2]float64{edges[i+1] / 1000, pct})
		}
		c.series = append(c.series, s)
	}
	c.xTicks, c.x.lo, c.x.hi = logTicks(edges[0]/1000, edges[len(edges)-1]/1000, msLabel)
	c.x.log = true
	c.yTicks, c.y.lo, c.y.hi = linearTicks(0, math.Max(top*1.08, 1), 6, plainLabel)
	return c
}

// sortSearch is the index of the first edge above v.
func sortSearch(edges []float64, v float64) int {
	i, _ := slices.BinarySearch(edges, v)
	for i < len(edges) && edges[i] <= v {
		i++
	}
	return i
}

// percentileChart: latency by percentile, the x axis stretched towards
// 100% (90%, 99%, 99.9% equally spaced) so that the tail is visible.
func percentileChart(r *Result) chart {
	c := chart{id: "percentiles", title: "Latency by percentile", xLabel: "percentile",
		yLabel: "latency (ms)", empty: "no admitted or rejected request"}
	lo, hi := math.Inf(1), 0.0
	maxNines := 1.0
	for _, x := range []struct {
		name, color string
		h           *hdrhistogram.Histogram
	}{{"admitted (200)", colAdmitted, r.AdmittedHist}, {"rejected (403)", colRejected, r.RejectedHist}} {
		if x.h == nil || x.h.TotalCount() == 0 {
			continue
		}
		// Beyond 1/count the percentiles are all the maximum.
		nines := math.Max(1, math.Ceil(math.Log10(float64(x.h.TotalCount()))))
		maxNines = math.Max(maxNines, nines)
		s := series{name: x.name, color: x.color}
		for k := 0.0; k <= nines+1e-9; k += 0.025 {
			q := 100 * (1 - math.Pow(10, -k))
			v := float64(x.h.ValueAtQuantile(q)) / 1000
			s.pts = append(s.pts, [2]float64{k, v})
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
		c.series = append(c.series, s)
	}
	if hi == 0 {
		lo, hi = 0, 1
	}
	c.y, c.yTicks = latencyAxis(lo, hi)
	c.x = scale{lo: 0, hi: maxNines}
	for k := 0.0; k <= maxNines; k++ {
		// 90%, 99%, 99.9%…: k nines, shown with max(0, k-2) decimals.
		label := strconv.FormatFloat(100*(1-math.Pow(10, -k)), 'f', max(0, int(k)-2), 64) + "%"
		c.xTicks = append(c.xTicks, tick{k, label})
	}
	return c
}

var reportTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"f1": func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) },
	"f3": func(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) },
	"g":  func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) },
	// lat shows a latency card's value with about three digits and its unit.
	"lat": func(v float64) template.HTML {
		num, unit := strconv.FormatFloat(v, 'f', 3, 64), "ms"
		switch {
		case v >= 1000:
			num, unit = strconv.FormatFloat(v/1000, 'f', 2, 64), "s"
		case v >= 100:
			num = strconv.FormatFloat(v, 'f', 0, 64)
		case v >= 10:
			num = strconv.FormatFloat(v, 'f', 1, 64)
		case v >= 1:
			num = strconv.FormatFloat(v, 'f', 2, 64)
		}
		return template.HTML(num + ` <span class="u">` + unit + `</span>`)
	},
}).Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; background: #f5f6f8; color: #222; }
main { max-width: 1080px; margin: 0 auto; padding: 24px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 10px; }
.sub { color: #555; margin-bottom: 16px; }
.verdict { display: inline-block; padding: 6px 14px; border-radius: 6px; font-weight: 700; color: #fff; }
.good { background: #2e7d32; } .bad { background: #c62828; } .warn { background: #ef8f00; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 12px; margin: 18px 0; }
.card { background: #fff; border-radius: 8px; padding: 12px 14px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.card .k { color: #666; font-size: 13px; } .card .v { font-size: 24px; font-weight: 650; margin-top: 2px; }
.card .u { font-size: 13px; color: #666; font-weight: 400; }
table { border-collapse: collapse; background: #fff; border-radius: 8px; overflow: hidden; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
th, td { padding: 6px 12px; text-align: right; border-bottom: 1px solid #eee; font-variant-numeric: tabular-nums; }
th:first-child, td:first-child { text-align: left; }
th { background: #fafafa; font-weight: 600; }
.chart { background: #fff; border-radius: 8px; box-shadow: 0 1px 2px rgba(0,0,0,.08); margin: 14px 0; padding: 6px; }
.chart svg { width: 100%; height: auto; display: block; }
.violations li { font-family: ui-monospace, Menlo, monospace; font-size: 13px; margin: 3px 0; color: #b71c1c; }
.note { color: #666; font-size: 13px; }
.kv td { text-align: left; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; align-items: start; }
</style>
</head>
<body><main>
<h1>{{.Title}}</h1>
<div class="sub">{{.Run}}<br>started {{.Started}}</div>
<span class="verdict {{.VerdictClass}}">{{.Verdict}}</span>

<div class="cards">
<div class="card"><div class="k">admitted</div><div class="v">{{f1 .R.AdmittedPerS}} <span class="u">/s</span></div><div class="k">{{.R.Admitted}} in total</div></div>
<div class="card"><div class="k">rejected</div><div class="v">{{f1 .R.RejectedPerS}} <span class="u">/s</span></div><div class="k">{{.R.Rejected}} in total</div></div>
<div class="card"><div class="k">errors</div><div class="v">{{.R.Errors}}</div><div class="k">{{f1 .R.ErrorsPerS}}/s</div></div>
{{with .R.LatencyAdmitted}}<div class="card"><div class="k">admitted p99</div>{{if .Count}}<div class="v">{{lat .P99Ms}}</div><div class="k">p50 {{f3 .P50Ms}} ms</div>{{else}}<div class="v">–</div><div class="k">none admitted</div>{{end}}</div>{{end}}
{{with .R.LatencyRejected}}<div class="card"><div class="k">rejected p99</div>{{if .Count}}<div class="v">{{lat .P99Ms}}</div><div class="k">p50 {{f3 .P50Ms}} ms</div>{{else}}<div class="v">–</div><div class="k">none rejected</div>{{end}}</div>{{end}}
<div class="card"><div class="k">measured</div><div class="v">{{f1 .R.DurationS}} <span class="u">s</span></div><div class="k">{{.R.Requests}} requests, {{f1 .R.RequestsPerS}}/s</div></div>
</div>

{{range .Charts}}<div class="chart">{{.}}</div>
{{end}}
<p class="note">{{if eq .R.Mode "open"}}Open loop: every latency counts from the request's scheduled send time (no coordinated omission); late = sent more than {{g .R.LateAfterMs}} ms behind schedule (all workers busy, or the client short of CPU) ({{.R.Late}} late, {{.R.Unsent}} never sent before the end).{{else}}Closed loop: every latency counts from the moment the request was sent; when the server stalls the workers stall too, so the tail is optimistic (use --rate for an open-loop measurement).{{end}}
Latency histograms are HDR histograms with microsecond resolution; per-second percentiles use two significant digits.</p>

<div class="grid2">
<div>
<h2>Latency (ms)</h2>
<table>
<tr><th></th><th>count</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>
{{range .Latencies}}<tr><td>{{.Name}}</td><td>{{.L.Count}}</td><td>{{f3 .L.MeanMs}}</td><td>{{f3 .L.P50Ms}}</td><td>{{f3 .L.P90Ms}}</td><td>{{f3 .L.P99Ms}}</td><td>{{f3 .L.P999Ms}}</td><td>{{f3 .L.MaxMs}}</td></tr>
{{end}}</table>
</div>
<div>
<h2>Answers</h2>
<table>
<tr><th>status</th><th>count</th></tr>
{{range .Statuses}}<tr><td>{{.Key}}</td><td>{{.Count}}</td></tr>
{{else}}<tr><td>none</td><td>0</td></tr>
{{end}}</table>
</div>
</div>

<h2>Run</h2>
<table class="kv">
<tr><td>target</td><td>{{.R.URL}}{{.R.Path}}</td></tr>
<tr><td>mode</td><td>{{.R.Mode}} loop{{if eq .R.Mode "open"}}, {{g .R.Rate}} req/s{{end}}, concurrency {{.R.Concurrency}}</td></tr>
<tr><td>users</td><td>{{.R.Users}}{{if .R.Hot}} (hot){{end}}, ids {{.R.UserPrefix}}-N, plan {{.R.Plan}}</td></tr>
<tr><td>warm-up / measured</td><td>{{g .R.WarmupS}} s / {{f3 .R.DurationS}} s</td></tr>
{{with .R.Verification}}<tr><td>verification</td><td>usage of {{.Users}} user(s), {{.Sessions}} session(s) read back</td></tr>{{end}}
</table>

{{if .Violations}}<h2>Violations</h2>
<ul class="violations">{{range .Violations}}<li>{{.}}</li>
{{end}}</ul>{{if .MoreViolations}}<p class="note">… and {{.MoreViolations}} more (see the text or JSON output).</p>{{end}}{{end}}
</main></body>
</html>
`))
