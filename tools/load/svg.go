package load

import (
	"fmt"
	"html"
	"math"
	"strconv"
	"strings"
)

// The HTML report's charts are SVG drawn here, so that the report is one
// file that opens anywhere, offline, with nothing fetched from a CDN.

// Chart geometry in SVG user units (the SVG scales to the page width).
const (
	chartW      = 1000
	chartH      = 380
	chartLeft   = 78
	chartRight  = 44
	chartTop    = 58
	chartBottom = 58
)

// scale maps data values onto pixels, linearly or by decades.
type scale struct {
	lo, hi   float64
	log      bool
	px0, px1 float64
}

func (s scale) at(v float64) float64 {
	lo, hi := s.lo, s.hi
	if s.log {
		v, lo, hi = math.Log10(math.Max(v, 1e-12)), math.Log10(lo), math.Log10(hi)
	}
	if hi == lo {
		return (s.px0 + s.px1) / 2
	}
	return s.px0 + (v-lo)/(hi-lo)*(s.px1-s.px0)
}

func (s scale) contains(v float64) bool {
	return v >= s.lo*(1-1e-9) && v <= s.hi*(1+1e-9) && (!s.log || v > 0)
}

type tick struct {
	v     float64
	label string
}

// series is one line (or filled area) of a chart.
type series struct {
	name  string
	color string
	dash  bool // dashed line
	fill  bool // fill down to the x axis (histograms)
	pts   [][2]float64
}

// chart is one plot with axes, grid, labels and a legend.
type chart struct {
	id                    string // unique in the page (names the clip path)
	title, xLabel, yLabel string
	x, y                  scale
	xTicks, yTicks        []tick
	series                []series
	empty                 string // message drawn when there is nothing to plot
}

// svg renders the chart. Every piece of text is escaped.
func (c chart) svg() string {
	var b strings.Builder
	px0, px1 := float64(chartLeft), float64(chartW-chartRight)
	py0, py1 := float64(chartH-chartBottom), float64(chartTop)
	c.x.px0, c.x.px1, c.y.px0, c.y.px1 = px0, px1, py0, py1

	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" role="img" aria-label="%s" font-family="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif" font-size="13">`,
		chartW, chartH, esc(c.title))
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%d" height="%d" fill="#fff"/>`, chartW, chartH)
	fmt.Fprintf(&b, `<text x="%d" y="24" font-size="17" font-weight="600" fill="#222">%s</text>`, chartLeft, esc(c.title))

	// Grid and tick labels.
	for _, t := range c.yTicks {
		if !c.y.contains(t.v) {
			continue
		}
		y := c.y.at(t.v)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e6e6e6"/>`, px0, y, px1, y)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end" fill="#555">%s</text>`, px0-8, y+4, esc(t.label))
	}
	for _, t := range c.xTicks {
		if !c.x.contains(t.v) {
			continue
		}
		x := c.x.at(t.v)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#f0f0f0"/>`, x, py0, x, py1)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#888"/>`, x, py0, x, py0+5)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#555">%s</text>`, x, py0+20, esc(t.label))
	}
	// Axes.
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#888"/>`, px0, py0, px1, py0)
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#888"/>`, px0, py0, px0, py1)
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#333">%s</text>`, (px0+px1)/2, chartH-14, esc(c.xLabel))
	fmt.Fprintf(&b, `<text transform="translate(18 %.1f) rotate(-90)" text-anchor="middle" fill="#333">%s</text>`, (py0+py1)/2, esc(c.yLabel))

	drawn := false
	fmt.Fprintf(&b, `<clipPath id="clip-%s"><rect x="%.1f" y="%.1f" width="%.1f" height="%.1f"/></clipPath><g clip-path="url(#clip-%s)">`,
		esc(c.id), px0, py1-2, px1-px0, py0-py1+4, esc(c.id))
	for _, s := range c.series {
		var pts strings.Builder
		n := 0
		for _, p := range s.pts {
			if !c.x.contains(p[0]) || (c.y.log && p[1] <= 0) {
				continue
			}
			fmt.Fprintf(&pts, "%.1f,%.1f ", c.x.at(p[0]), c.y.at(p[1]))
			n++
		}
		if n == 0 {
			continue
		}
		drawn = true
		line := strings.TrimSpace(pts.String())
		if s.fill {
			first, last := strings.Split(line, " ")[0], line[strings.LastIndexByte(line, ' ')+1:]
			fx, _, _ := strings.Cut(first, ",")
			lx, _, _ := strings.Cut(last, ",")
			fmt.Fprintf(&b, `<polygon points="%s,%.1f %s %s,%.1f" fill="%s" fill-opacity="0.22" stroke="none"/>`, fx, py0, line, lx, py0, s.color)
		}
		dash := ""
		if s.dash {
			dash = ` stroke-dasharray="6 4"`
		}
		if n == 1 {
			xy := strings.Split(line, ",")
			fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="3" fill="%s"/>`, xy[0], xy[1], s.color)
			continue
		}
		fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2" stroke-linejoin="round"%s/>`, line, s.color, dash)
	}
	b.WriteString(`</g>`)
	if !drawn {
		msg := c.empty
		if msg == "" {
			msg = "no data"
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#999" font-size="16">%s</text>`, (px0+px1)/2, (py0+py1)/2, esc(msg))
	}

	// Legend, right-aligned above the plot.
	x := px1
	for i := len(c.series) - 1; i >= 0; i-- {
		s := c.series[i]
		w := 34 + 7.2*float64(len([]rune(s.name)))
		x -= w
		dash := ""
		if s.dash {
			dash = ` stroke-dasharray="6 4"`
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="44" x2="%.1f" y2="44" stroke="%s" stroke-width="3"%s/>`, x, x+24, s.color, dash)
		fmt.Fprintf(&b, `<text x="%.1f" y="48" fill="#333">%s</text>`, x+29, esc(s.name))
	}
	b.WriteString(`</svg>`)
	return b.String()
}

func esc(s string) string { return html.EscapeString(s) }

// linearTicks picks about n round tick values covering [lo, hi] and
// returns the widened range they span.
func linearTicks(lo, hi float64, n int, label func(float64) string) ([]tick, float64, float64) {
	if hi <= lo {
		hi = lo + 1
	}
	step := niceNum((hi-lo)/float64(max(n-1, 1)), true)
	nlo, nhi := math.Floor(lo/step)*step, math.Ceil(hi/step)*step
	var ts []tick
	for v := nlo; v <= nhi+step/2; v += step {
		v = math.Round(v/step) * step
		ts = append(ts, tick{v, label(v)})
	}
	return ts, nlo, nhi
}

// niceNum rounds x to 1, 2, 2.5 or 5 times a power of ten.
func niceNum(x float64, round bool) float64 {
	if x <= 0 {
		return 1
	}
	exp := math.Floor(math.Log10(x))
	f := x / math.Pow(10, exp)
	var nf float64
	switch {
	case round && f < 1.5, !round && f <= 1:
		nf = 1
	case round && f < 2.25, !round && f <= 2:
		nf = 2
	case round && f < 3.5, !round && f <= 2.5:
		nf = 2.5
	case round && f < 7.5, !round && f <= 5:
		nf = 5
	default:
		nf = 10
	}
	return nf * math.Pow(10, exp)
}

// logTicks covers [lo, hi] (both > 0) with whole decades; with few
// decades it also labels 2× and 5×.
func logTicks(lo, hi float64, label func(float64) string) ([]tick, float64, float64) {
	a, z := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if z == a {
		z++
	}
	var ts []tick
	for e := a; e <= z; e++ {
		p := math.Pow(10, e)
		ts = append(ts, tick{p, label(p)})
		if z-a <= 3 && e < z {
			ts = append(ts, tick{2 * p, label(2 * p)}, tick{5 * p, label(5 * p)})
		}
	}
	return ts, math.Pow(10, a), math.Pow(10, z)
}

// msLabel formats a latency axis value in milliseconds.
func msLabel(v float64) string {
	if v >= 1 {
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

// rateLabel formats a requests/s axis value: 500, 2k, 12.5k, 1.5M.
func rateLabel(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'f', -1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

func plainLabel(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// latencyAxis chooses the latency scale for values in [lo, hi]: by
// decades when they span more than a factor of 20 (a p99 ten times the
// p50 is common and a linear axis would flatten the p50), else linear
// from zero.
func latencyAxis(lo, hi float64) (scale, []tick) {
	if lo > 0 && hi/lo > 20 {
		ts, a, z := logTicks(lo, hi, msLabel)
		return scale{lo: a, hi: z, log: true}, ts
	}
	ts, a, z := linearTicks(0, hi, 6, msLabel)
	return scale{lo: a, hi: z}, ts
}
