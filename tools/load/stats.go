package load

import (
	"math"
	"strconv"
	"sync"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram geometry: microseconds from 1 µs to 10 minutes. The top is far
// above any timeout because an open-loop latency includes the time a
// request waited for a free worker, which grows without bound when the
// server cannot keep up. Three significant digits for the run's totals
// (percentiles exact to 0.1%); two for the per-second ones, which are
// many and only drawn.
const (
	histMin       = 1
	histMax       = int64(10 * time.Minute / time.Microsecond)
	histDigits    = 3
	secHistDigits = 2
)

func newHist(digits int) *hdrhistogram.Histogram { return hdrhistogram.New(histMin, histMax, digits) }

// micros converts a duration to a histogram value, clamped to the
// histogram's range so that no sample is ever dropped.
func micros(d time.Duration) int64 {
	v := int64(d / time.Microsecond)
	if v < histMin {
		return histMin
	}
	if v > histMax {
		return histMax
	}
	return v
}

// outcome is what one request produced.
type outcome struct {
	user     int32
	status   int    // HTTP status; 0 for a transport error
	errKind  string // transport error class when status is 0
	latency  time.Duration
	lag      time.Duration // open loop: actual − scheduled send time
	late     bool
	paced    bool   // open loop: lag is meaningful
	measured bool   // sent after the warm-up
	id       string // session id of an admitted create, when verifying
	// retryAfter: the answer carried a Retry-After header (a 503 from
	// load shedding must say when to come back).
	retryAfter bool
}

// uncertain reports whether the client cannot know if the request was
// admitted: the connection failed after sending, or the server answered an
// error that the contract (docs/contract.md) does not promise to be a refusal (500, 502, 504). A
// 503 is a refusal ("never a silent admit").
func (o outcome) uncertain() bool {
	return o.status == 0 || (o.status >= 500 && o.status != 503)
}

// admittedID is one admitted session, kept for verification.
type admittedID struct {
	user int32
	id   string
}

// interval accumulates one second of the measured phase.
type interval struct {
	admitted, rejected, errors, late int64
	adm, rej                         *hdrhistogram.Histogram
}

func newInterval() *interval {
	return &interval{adm: newHist(secHistDigits), rej: newHist(secHistDigits)}
}

func (iv *interval) reset() {
	iv.admitted, iv.rejected, iv.errors, iv.late = 0, 0, 0, 0
	iv.adm.Reset()
	iv.rej.Reset()
}

// shard is the recording state of a group of workers. Workers are spread
// over a few shards so that recording is a rarely contended lock and a few
// increments, and the run's memory does not grow with Concurrency.
type shard struct {
	mu sync.Mutex

	cur   *interval
	spare *interval

	adm, rej, lag      *hdrhistogram.Histogram
	admitted, rejected int64
	errors, late       int64
	statuses           map[int]int64
	transport          map[string]int64
	transportSample    map[string]string
	ids                []admittedID // only when keepIDs (verification is on)
	uncertainUsers     []int32
	keepIDs            bool
	// byStatus is the latency of every answer by HTTP status (200 and 403
	// included), created on first sight of a status: an overloaded server
	// answers 503 or 504 too, and how fast it refuses is a figure of its
	// own. retryAfter counts the answers that carried Retry-After.
	byStatus   map[int]*hdrhistogram.Histogram
	retryAfter map[int]int64
	// sentByStatus is the same latency counted from the actual send rather
	// than the scheduled one (they differ in open loop only, by the time
	// the request waited for a free worker): how fast the server answered,
	// apart from how far behind the client was.
	sentByStatus map[int]*hdrhistogram.Histogram
}

func newShard(keepIDs bool) *shard {
	return &shard{
		cur:             newInterval(),
		spare:           newInterval(),
		adm:             newHist(histDigits),
		rej:             newHist(histDigits),
		lag:             newHist(histDigits),
		statuses:        make(map[int]int64),
		transport:       make(map[string]int64),
		transportSample: make(map[string]string),
		keepIDs:         keepIDs,
		byStatus:        make(map[int]*hdrhistogram.Histogram),
		retryAfter:      make(map[int]int64),
		sentByStatus:    make(map[int]*hdrhistogram.Histogram),
	}
}

// record adds one request's outcome. sample is the transport error's text,
// kept once per class for the summary.
func (s *shard) record(o outcome, sample string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keepIDs {
		switch {
		case o.status == 200:
			s.ids = append(s.ids, admittedID{o.user, o.id})
		case o.uncertain():
			s.uncertainUsers = append(s.uncertainUsers, o.user)
		}
	}
	if !o.measured {
		return
	}
	lat := micros(o.latency)
	iv := s.cur
	switch o.status {
	case 200:
		s.admitted++
		iv.admitted++
		_ = s.adm.RecordValue(lat)
		_ = iv.adm.RecordValue(lat)
	case 403:
		s.rejected++
		iv.rejected++
		_ = s.rej.RecordValue(lat)
		_ = iv.rej.RecordValue(lat)
	default:
		s.errors++
		iv.errors++
	}
	if o.status == 0 {
		s.transport[o.errKind]++
		if _, ok := s.transportSample[o.errKind]; !ok {
			s.transportSample[o.errKind] = sample
		}
	} else {
		s.statuses[o.status]++
		h := s.byStatus[o.status]
		if h == nil {
			h = newHist(histDigits)
			s.byStatus[o.status] = h
		}
		_ = h.RecordValue(lat)
		hs := s.sentByStatus[o.status]
		if hs == nil {
			hs = newHist(histDigits)
			s.sentByStatus[o.status] = hs
		}
		_ = hs.RecordValue(micros(o.latency - o.lag))
		if o.retryAfter {
			s.retryAfter[o.status]++
		}
	}
	if o.paced {
		_ = s.lag.RecordValue(micros(o.lag))
	}
	if o.late {
		s.late++
		iv.late++
	}
}

// swap hands the current second to the collector and starts a new one.
// The returned interval is owned by the caller until the next swap.
func (s *shard) swap() *interval {
	s.mu.Lock()
	out := s.cur
	s.spare.reset()
	s.cur, s.spare = s.spare, out
	s.mu.Unlock()
	return out
}

// Latency summarizes a histogram, in milliseconds.
type Latency struct {
	Count  int64   `json:"count"`
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p999_ms"`
	MaxMs  float64 `json:"max_ms"`
}

func ms(us int64) float64 { return float64(us) / 1000 }

func summarize(h *hdrhistogram.Histogram) Latency {
	if h == nil || h.TotalCount() == 0 {
		return Latency{}
	}
	return Latency{
		Count:  h.TotalCount(),
		MeanMs: math.Round(h.Mean()) / 1000,
		P50Ms:  ms(h.ValueAtQuantile(50)),
		P90Ms:  ms(h.ValueAtQuantile(90)),
		P99Ms:  ms(h.ValueAtQuantile(99)),
		P999Ms: ms(h.ValueAtQuantile(99.9)),
		MaxMs:  ms(h.Max()),
	}
}

// Second is one interval of the measured phase, Config.Interval long (one
// second unless set; the last one may be shorter), by completion time. Counts are per interval, not rates;
// latency percentiles are 0 when the interval had no such request.
type Second struct {
	T             float64 `json:"t_s"`
	Length        float64 `json:"length_s"`
	Admitted      int64   `json:"admitted"`
	Rejected      int64   `json:"rejected"`
	Errors        int64   `json:"errors"`
	Late          int64   `json:"late"`
	AdmittedP50Ms float64 `json:"admitted_p50_ms"`
	AdmittedP99Ms float64 `json:"admitted_p99_ms"`
	RejectedP50Ms float64 `json:"rejected_p50_ms"`
	RejectedP99Ms float64 `json:"rejected_p99_ms"`
}

// collector turns the shards' intervals into the series.
type collector struct {
	shards   []*shard
	adm, rej *hdrhistogram.Histogram
	// keep: each interval's admitted histogram is kept too
	// (Config.KeepIntervalHists), so that a caller can merge the intervals
	// of any stretch of the run into exact percentiles of that stretch.
	keep bool

	mu       sync.Mutex
	series   []Second
	admHists []*hdrhistogram.Histogram
}

func newCollector(shards []*shard, keep bool) *collector {
	return &collector{shards: shards, adm: newHist(secHistDigits), rej: newHist(secHistDigits), keep: keep}
}

// flush closes the interval ending t seconds into the measured phase.
func (c *collector) flush(t, length float64) {
	c.adm.Reset()
	c.rej.Reset()
	var s Second
	for _, sh := range c.shards {
		iv := sh.swap()
		s.Admitted += iv.admitted
		s.Rejected += iv.rejected
		s.Errors += iv.errors
		s.Late += iv.late
		c.adm.Merge(iv.adm)
		c.rej.Merge(iv.rej)
	}
	s.T, s.Length = t, length
	if c.adm.TotalCount() > 0 {
		s.AdmittedP50Ms, s.AdmittedP99Ms = ms(c.adm.ValueAtQuantile(50)), ms(c.adm.ValueAtQuantile(99))
	}
	if c.rej.TotalCount() > 0 {
		s.RejectedP50Ms, s.RejectedP99Ms = ms(c.rej.ValueAtQuantile(50)), ms(c.rej.ValueAtQuantile(99))
	}
	var kept *hdrhistogram.Histogram
	if c.keep {
		kept = newHist(secHistDigits)
		kept.Merge(c.adm)
	}
	c.mu.Lock()
	c.series = append(c.series, s)
	if c.keep {
		c.admHists = append(c.admHists, kept)
	}
	c.mu.Unlock()
}

// last is the most recent complete interval, for the progress bar.
func (c *collector) last() (Second, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.series) == 0 {
		return Second{}, false
	}
	return c.series[len(c.series)-1], true
}

func (c *collector) all() []Second {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Second(nil), c.series...)
}

func (c *collector) hists() []*hdrhistogram.Histogram {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*hdrhistogram.Histogram(nil), c.admHists...)
}

// totals merges the shards after the workers have stopped.
type totals struct {
	adm, rej, lag              *hdrhistogram.Histogram
	admitted, rejected, errors int64
	late                       int64
	statuses                   map[string]int64
	errorsByStatus             map[string]int64
	transportSamples           map[string]string
	transportCounts            map[string]int64
	server500                  int64
	byStatus                   map[string]*hdrhistogram.Histogram
	sentByStatus               map[string]*hdrhistogram.Histogram
	retryAfter                 map[string]int64
}

func mergeShards(shards []*shard) totals {
	t := totals{
		adm: newHist(histDigits), rej: newHist(histDigits), lag: newHist(histDigits),
		statuses: map[string]int64{}, errorsByStatus: map[string]int64{},
		transportSamples: map[string]string{}, transportCounts: map[string]int64{},
		byStatus: map[string]*hdrhistogram.Histogram{}, sentByStatus: map[string]*hdrhistogram.Histogram{},
		retryAfter: map[string]int64{},
	}
	for _, s := range shards {
		s.mu.Lock()
		t.adm.Merge(s.adm)
		t.rej.Merge(s.rej)
		t.lag.Merge(s.lag)
		t.admitted += s.admitted
		t.rejected += s.rejected
		t.errors += s.errors
		t.late += s.late
		for code, n := range s.statuses {
			k := strconv.Itoa(code)
			t.statuses[k] += n
			if code != 200 && code != 403 {
				t.errorsByStatus[k] += n
			}
			if code == 500 {
				t.server500 += n
			}
		}
		for code, h := range s.byStatus {
			k := strconv.Itoa(code)
			if t.byStatus[k] == nil {
				t.byStatus[k] = newHist(histDigits)
			}
			t.byStatus[k].Merge(h)
		}
		for code, h := range s.sentByStatus {
			k := strconv.Itoa(code)
			if t.sentByStatus[k] == nil {
				t.sentByStatus[k] = newHist(histDigits)
			}
			t.sentByStatus[k].Merge(h)
		}
		for code, n := range s.retryAfter {
			t.retryAfter[strconv.Itoa(code)] += n
		}
		for kind, n := range s.transport {
			t.transportCounts[kind] += n
			if _, ok := t.transportSamples[kind]; !ok {
				t.transportSamples[kind] = s.transportSample[kind]
			}
		}
		s.mu.Unlock()
	}
	return t
}
