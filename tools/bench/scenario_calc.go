package bench

import (
	"bytes"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"

	"github.com/tally-dev/tally/tools/load"
)

// The pure parts of the overload scenarios (scenarios.go): the arithmetic
// over a load's interval series, and reading vegeta's output. They are
// kept apart from the code that drives processes so that they can be
// tested without a server or a clock.

// recoveryFactor is how far above the p99 measured at the same rate
// before the overload an interval's p99 may be and still count as
// "normal": the p99 of a 250 ms interval is the p99 of a few thousand
// requests and wanders by tens of percent between quiet intervals, so
// requiring the exact figure would never call anything recovered.
const recoveryFactor = 1.5

// recovery is how long after the start of series the p99 of admitted
// requests stayed above threshold (ms): the end of the last interval above
// it, or 0 when none was. An interval without a single admitted request
// counts as above (the server answered nothing, or only errors). The last
// interval is ignored when it is less than half a full one (the run's
// ragged end). recovered is false when no interval at or below the
// threshold follows the last one above it: the series ended before the
// p99 came back, and the figure is only a lower bound.
func recovery(series []load.Second, threshold float64) (after time.Duration, recovered bool) {
	series = fullIntervals(series)
	if len(series) == 0 {
		return 0, false
	}
	last := -1
	for i, s := range series {
		if s.Admitted == 0 || s.AdmittedP99Ms > threshold {
			last = i
		}
	}
	if last < 0 {
		return 0, true
	}
	end := time.Duration(series[last].T * float64(time.Second))
	return end, last < len(series)-1
}

// fullIntervals drops a last interval shorter than half of the first one.
func fullIntervals(series []load.Second) []load.Second {
	if n := len(series); n > 1 && series[n-1].Length < series[0].Length/2 {
		return series[:n-1]
	}
	return series
}

// countWithin sums f over the intervals that end within (from, to] seconds
// of the measured phase's start: the requests answered in that stretch.
func countWithin(series []load.Second, from, to float64, f func(load.Second) int64) int64 {
	var n int64
	for _, s := range series {
		if s.T > from+1e-9 && s.T <= to+1e-9 {
			n += f(s)
		}
	}
	return n
}

// mergeOverlapping merges the kept per-interval histograms of the
// intervals that overlap [from, to) seconds of the measured phase, and
// returns nil when none does (or the histograms were not kept).
func mergeOverlapping(series []load.Second, hists []*hdrhistogram.Histogram, from, to float64) *hdrhistogram.Histogram {
	if len(hists) != len(series) {
		return nil
	}
	var out *hdrhistogram.Histogram
	for i, s := range series {
		start := s.T - s.Length
		if s.T <= from || start >= to {
			continue
		}
		if out == nil {
			out = hdrhistogram.New(1, int64(10*time.Minute/time.Microsecond), 2)
		}
		out.Merge(hists[i])
	}
	return out
}

// p99Ms is the 99th percentile of a histogram of microseconds, in ms; ok
// is false for an empty or missing one.
func p99Ms(h *hdrhistogram.Histogram) (float64, bool) {
	if h == nil || h.TotalCount() == 0 {
		return 0, false
	}
	return float64(h.ValueAtQuantile(99)) / 1000, true
}

// vegetaReport is the part of `vegeta report -type=json` the suite reads.
// Durations are nanoseconds, as vegeta marshals time.Duration.
type vegetaReport struct {
	Latencies struct {
		Mean int64 `json:"mean"`
		P50  int64 `json:"50th"`
		P90  int64 `json:"90th"`
		P99  int64 `json:"99th"`
		Max  int64 `json:"max"`
	} `json:"latencies"`
	Duration    int64            `json:"duration"`
	Wait        int64            `json:"wait"`
	Requests    int64            `json:"requests"`
	Rate        float64          `json:"rate"`
	Throughput  float64          `json:"throughput"`
	Success     float64          `json:"success"`
	StatusCodes map[string]int64 `json:"status_codes"`
	Errors      []string         `json:"errors"`
}

func parseVegetaReport(b []byte) (*vegetaReport, error) {
	var r vegetaReport
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("vegeta report: %w", err)
	}
	if r.StatusCodes == nil {
		return nil, errors.New("vegeta report: no status_codes (is this `vegeta report -type=json` output?)")
	}
	return &r, nil
}

// vegetaCodes is what the suite computes from `vegeta encode --to csv`
// that vegeta's report does not give: latency by status code, and how
// many 503s carried Retry-After. Code 0 is vegeta's transport error.
type vegetaCodes struct {
	Hists      map[int]*hdrhistogram.Histogram
	RetryAfter map[int]int64
	Count      int64
}

// parseVegetaCSV reads vegeta's CSV encoding of results: timestamp (ns),
// code, latency (ns), bytes out, bytes in, error, body (base64), attack
// name, seq, method, URL, response headers (base64 of their wire form).
func parseVegetaCSV(r io.Reader) (*vegetaCodes, error) {
	out := &vegetaCodes{Hists: map[int]*hdrhistogram.Histogram{}, RetryAfter: map[int]int64{}}
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	for line := 1; ; line++ {
		rec, err := cr.Read()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("vegeta csv line %d: %w", line, err)
		}
		if len(rec) < 3 {
			return nil, fmt.Errorf("vegeta csv line %d: %d fields, want at least 3", line, len(rec))
		}
		code, err1 := strconv.Atoi(rec[1])
		ns, err2 := strconv.ParseInt(rec[2], 10, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("vegeta csv line %d: bad code %q or latency %q", line, rec[1], rec[2])
		}
		h := out.Hists[code]
		if h == nil {
			h = hdrhistogram.New(1, int64(10*time.Minute/time.Microsecond), 3)
			out.Hists[code] = h
		}
		_ = h.RecordValue(max(ns/1000, 1))
		out.Count++
		if len(rec) >= 12 && rec[11] != "" {
			if hdr, err := base64.StdEncoding.DecodeString(rec[11]); err == nil && hasHeader(hdr, "Retry-After") {
				out.RetryAfter[code]++
			}
		}
	}
}

// hasHeader reports whether a header block in wire form ("Name: value\r\n"
// lines) has a non-empty name header (case-insensitive).
func hasHeader(block []byte, name string) bool {
	for _, line := range bytes.Split(block, []byte("\n")) {
		k, v, ok := bytes.Cut(bytes.TrimRight(line, "\r"), []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(k), []byte(name)) && len(bytes.TrimSpace(v)) > 0 {
			return true
		}
	}
	return false
}
