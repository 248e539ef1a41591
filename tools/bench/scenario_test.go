package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"

	"github.com/tally-dev/tally/tools/load"
)

// windows builds a series of 250 ms intervals with the given admitted p99s
// (ms); a negative p99 means an interval without a single admitted create.
func windows(p99s ...float64) []load.Second {
	out := make([]load.Second, len(p99s))
	for i, p := range p99s {
		out[i] = load.Second{T: 0.25 * float64(i+1), Length: 0.25, Admitted: 100, AdmittedP99Ms: p}
		if p < 0 {
			out[i].Admitted, out[i].AdmittedP99Ms = 0, 0
		}
	}
	return out
}

func TestRecovery(t *testing.T) {
	for _, c := range []struct {
		name      string
		series    []load.Second
		want      time.Duration
		recovered bool
	}{
		{"never above", windows(5, 6, 4, 5), 0, true},
		{"two windows above", windows(900, 40, 9, 8, 7), 500 * time.Millisecond, true},
		// A window back to normal in the middle does not end the
		// recovery: the last window above does.
		{"dip then above again", windows(900, 5, 300, 6, 7), 750 * time.Millisecond, true},
		{"an empty window counts as above", windows(5, -1, 5, 5), 500 * time.Millisecond, true},
		{"still above at the end", windows(900, 800, 700), 750 * time.Millisecond, false},
		{"empty series", nil, 0, false},
	} {
		got, ok := recovery(c.series, 10)
		if got != c.want || ok != c.recovered {
			t.Errorf("%s: recovery = %s, %v; want %s, %v", c.name, got, ok, c.want, c.recovered)
		}
	}
	// A ragged last interval (less than half a window) is not judged.
	s := windows(900, 5, 5)
	s = append(s, load.Second{T: 0.8, Length: 0.05, Admitted: 1, AdmittedP99Ms: 999})
	if got, ok := recovery(s, 10); got != 250*time.Millisecond || !ok {
		t.Errorf("ragged end: %s, %v", got, ok)
	}
}

func TestCountWithin(t *testing.T) {
	s := windows(1, 1, 1, 1, 1, 1) // ends at 0.25 … 1.5 s, 100 admitted each
	if n := countWithin(s, 0, 1, func(x load.Second) int64 { return x.Admitted }); n != 400 {
		t.Errorf("(0, 1s]: %d, want 400", n)
	}
	if n := countWithin(s, 1, 1.5, func(x load.Second) int64 { return x.Admitted }); n != 200 {
		t.Errorf("(1s, 1.5s]: %d, want 200", n)
	}
}

func TestMergeOverlapping(t *testing.T) {
	s := windows(1, 1, 1, 1)
	hists := make([]*hdrhistogram.Histogram, len(s))
	for i := range hists {
		hists[i] = hdrhistogram.New(1, int64(10*time.Minute/time.Microsecond), 2)
		// Interval i holds 100 values of (i+1) ms.
		for range 100 {
			_ = hists[i].RecordValue(int64(i+1) * 1000)
		}
	}
	// [0.3, 0.6) overlaps the intervals (0.25, 0.5] and (0.5, 0.75].
	h := mergeOverlapping(s, hists, 0.3, 0.6)
	if h == nil || h.TotalCount() != 200 {
		t.Fatalf("merged %v", h)
	}
	if p, ok := p99Ms(h); !ok || math.Abs(p-3) > 0.05 {
		t.Errorf("p99 %.3f ms, want 3", p)
	}
	if mergeOverlapping(s, hists, 5, 6) != nil {
		t.Error("a stretch after the series merged something")
	}
	if mergeOverlapping(s, hists[:2], 0, 1) != nil {
		t.Error("histograms that do not match the series were merged")
	}
	if _, ok := p99Ms(nil); ok {
		t.Error("p99 of nothing")
	}
}

// vegeta 12.13's `report -type=json`, as printed on the development machine.
const vegetaJSON = `{"latencies":{"total":25648916,"mean":1282445,"50th":1014969,"90th":1830222,"95th":3307199,"99th":4770282,"max":4770282,"min":724249},` +
	`"bytes_in":{"total":680,"mean":34},"bytes_out":{"total":40,"mean":2},"earliest":"2026-11-30T02:26:46.422420043Z",` +
	`"latest":"2026-11-30T02:26:47.372690883Z","end":"2026-11-30T02:26:47.374220233Z","duration":950270840,"wait":1529350,` +
	`"requests":20,"rate":21.04663129513687,"throughput":0,"success":0,"status_codes":{"200":12,"503":8},"errors":["503 Service Unavailable"]}`

func TestParseVegetaReport(t *testing.T) {
	r, err := parseVegetaReport([]byte(vegetaJSON))
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 20 || r.StatusCodes["200"] != 12 || r.StatusCodes["503"] != 8 || r.Latencies.P99 != 4770282 || r.Duration != 950270840 {
		t.Errorf("parsed %+v", r)
	}
	for _, bad := range []string{"", "{}", `{"status_codes":`} {
		if _, err := parseVegetaReport([]byte(bad)); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestParseVegetaCSV(t *testing.T) {
	hdr := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	with := hdr("Content-Length: 34\r\nRetry-After: 1\r\n\r\n")
	without := hdr("Content-Length: 34\r\n\r\n")
	csv := strings.Join([]string{
		"1796005606422420043,503,4770282,2,34,503 Service Unavailable,eyJ9,,0,POST,http://127.0.0.1:1/x," + with,
		"1796005606422420044,503,1000000,2,34,503 Service Unavailable,eyJ9,,1,POST,http://127.0.0.1:1/x," + without,
		"1796005606422420045,200,20000000,2,34,,eyJ9,,2,POST,http://127.0.0.1:1/x," + without,
		`1796005606422420046,0,10000000000,0,0,"Post ""http://127.0.0.1:1/x"": dial tcp: connection refused",,,3,POST,http://127.0.0.1:1/x,`,
	}, "\n") + "\n"
	c, err := parseVegetaCSV(strings.NewReader(csv))
	if err != nil {
		t.Fatal(err)
	}
	if c.Count != 4 || c.Hists[503].TotalCount() != 2 || c.Hists[200].TotalCount() != 1 || c.Hists[0].TotalCount() != 1 {
		t.Errorf("counts: %d, %v", c.Count, c.Hists)
	}
	if c.RetryAfter[503] != 1 || c.RetryAfter[200] != 0 {
		t.Errorf("Retry-After: %v", c.RetryAfter)
	}
	if p, _ := p99Ms(c.Hists[200]); math.Abs(p-20) > 0.1 {
		t.Errorf("200 p99 %.2f ms, want 20", p)
	}
	if _, err := parseVegetaCSV(strings.NewReader("1,abc,2\n")); err == nil {
		t.Error("a bad code was accepted")
	}
}

func TestHasHeader(t *testing.T) {
	b := []byte("Date: x\r\nretry-after: 2\r\nEmpty:\r\n\r\n")
	if !hasHeader(b, "Retry-After") || hasHeader(b, "Empty") || hasHeader(b, "Missing") {
		t.Error("hasHeader")
	}
}

// TestScenarioTable renders the suite's rows from made-up results: the
// statuses follow the targets, a scenario that did not run is skipped, a
// 503 p99 without any 503 is n/a, and the text and Markdown tables agree.
func TestScenarioTable(t *testing.T) {
	r := &runner{opts: Options{Suite: "overload", Duration: 5 * time.Second, OverloadDuration: 10 * time.Second, Tail: 5 * time.Second,
		SlowConns: 1000, ReadTimeout: 2 * time.Second}}
	r.capacity, r.capRSSKB = 10000, 100<<10
	over := func(statuses map[string]int64, p200, p503 float64) *load.Result {
		return &load.Result{Requests: 200000, Statuses: statuses, RetryAfter: map[string]int64{"503": statuses["503"]},
			LatencyByStatus: map[string]load.Latency{"200": {Count: 1, P99Ms: p200}, "503": {Count: 1, P99Ms: p503}},
			TransportErrors: map[string]int64{}}
	}
	r.overloads = []*OverloadRun{
		{Factor: 2, Rate: 20000, GoodputPct: 95, GoodputPerS: 9500, PeakRSSKB: 150 << 10, RecoveryS: 0.5, Recovered: true, ThresholdP: 15,
			Overload: over(map[string]int64{"200": 95000, "503": 100000}, 120, 3)},
		{Factor: 3, Rate: 30000, GoodputPct: 40, GoodputPerS: 4000, PeakRSSKB: 400 << 10, RecoveryS: 5, Recovered: false, ThresholdP: 15,
			Overload: over(map[string]int64{"200": 40000, "504": 7}, 4800, 0)},
	}
	r.vegeta = &VegetaRun{SkippedReason: "SKIPPED: vegeta not found"}
	rows := r.scenarioRows()
	status := map[string]string{}
	for _, row := range rows {
		status[row.Key] = row.Status
	}
	for key, want := range map[string]string{
		"capacity":                       StatusInfo,
		"overload_2x_goodput_pct":        StatusMet,
		"overload_2x_p99_200":            StatusMet,
		"overload_2x_p99_503":            StatusMet,
		"overload_2x_rss_ratio":          StatusMet,
		"overload_2x_recovery_s":         StatusMet,
		"overload_3x_goodput_pct":        StatusMissed,
		"overload_3x_p99_200":            StatusMissed,
		"overload_3x_p99_503":            StatusNA,
		"overload_3x_504":                StatusMissed,
		"overload_3x_rss_ratio":          StatusMissed,
		"overload_3x_recovery_s":         StatusMissed,
		"vegeta_goodput_pct":             StatusSkipped,
		"coldstart_p99":                  StatusSkipped,
		"slow_all_closed_s":              StatusSkipped,
		"poison_innocent_5xx":            StatusSkipped,
		"overload_2x_503_no_retry_after": StatusMet,
	} {
		if status[key] != want {
			t.Errorf("%s: status %q, want %q", key, status[key], want)
		}
	}
	var text, md bytes.Buffer
	if err := WriteScenarioTable(&text, rows); err != nil {
		t.Fatal(err)
	}
	if err := WriteScenarioMarkdown(&md, rows); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"figure", "measured", "95.0 %", "≥ 90 %", "≤ 250 ms", "4800 ms", "NO", "n/a", "skipped", "SKIPPED: vegeta not found", "0.50 s", "4.00×"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("the text table lacks %q:\n%s", want, text.String())
		}
	}
	if !strings.Contains(md.String(), "| figure | measured | target | met? |") || !strings.Contains(md.String(), "| 2× capacity (20 000/s offered, 10s): goodput, % of capacity | 95.0 % | ≥ 90 % | yes |") {
		t.Errorf("markdown:\n%s", md.String())
	}
}

func TestParseSuiteFlags(t *testing.T) {
	o, err := parseFlags([]string{"--suite", "overload", "--quick"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.OverloadDuration != 10*time.Second || o.Tail != 5*time.Second || o.ReadTimeout != 2*time.Second || o.SlowConns != 1000 {
		t.Errorf("--quick overload: %+v", o)
	}
	r := &runner{opts: o}
	if !r.want("capacity") || !r.want("poison") || r.want("many") {
		t.Error("--suite overload must select the overload phases only")
	}
	if _, err := parseFlags([]string{"--suite", "overload", "--only", "many"}, io.Discard); err == nil {
		t.Error("--only with another suite's phase was accepted")
	}
	if _, err := parseFlags([]string{"--suite", "nope"}, io.Discard); err == nil {
		t.Error("an unknown suite was accepted")
	}
	o, err = parseFlags([]string{"--suite", "overload", "--only", "capacity,poison", "--overload-duration", "45s"}, io.Discard)
	if err != nil || len(o.Only) != 2 || o.OverloadDuration != 45*time.Second {
		t.Errorf("--only/--overload-duration: %+v, %v", o, err)
	}
}

// TestStalledConns: against a listener that reads each stalled request's
// headers and its one body byte, then answers the unauthenticated ones 401
// and closes every connection, the set sees every connection closed by the
// server, with the answers by kind. No timing is asserted.
func TestStalledConns(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				head, err := br.ReadString('{') // headers, then the single body byte
				if err != nil {
					return
				}
				if !strings.Contains(head, "Content-Length: 100\r\n") {
					t.Errorf("a stalled request without Content-Length: 100:\n%s", head)
				}
				if !strings.Contains(head, "Authorization: Bearer ") {
					_, _ = io.WriteString(c, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
				}
			}()
		}
	}()
	s, err := openStalled(context.Background(), ln.Addr().String(), 10, []string{"tok-a", "tok-b"})
	if err != nil {
		t.Fatal(err)
	}
	if n := s.waitClosed(context.Background(), time.Now().Add(time.Minute)); n != 10 {
		t.Errorf("%d of 10 closed", n)
	}
	s.closeAll()
	sum := s.summarize(time.Second)
	if sum.Conns != 10 || sum.ClosedByServer != 10 {
		t.Errorf("summary %+v", sum)
	}
	if sum.Answers["with token: no answer"] != 5 || sum.Answers["without token: 401"] != 5 {
		t.Errorf("answers %v", sum.Answers)
	}
}
