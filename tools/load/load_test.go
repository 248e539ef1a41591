package load

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func run(t *testing.T, cfg Config) *Result {
	t.Helper()
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return res
}

func violationsText(r *Result) string { return strings.Join(r.Violations, "\n") }

func TestClosedLoopCountsEveryOutcome(t *testing.T) {
	f := newFake(t)
	srv := f.start()
	cfg := fakeConfig(srv.URL)
	cfg.UserPrefix = "closed"
	res := run(t, cfg)

	if res.Mode != "closed" || res.Requests != 500 {
		t.Fatalf("mode %q, %d requests; want closed, 500", res.Mode, res.Requests)
	}
	if res.Admitted != 20*fakeLimit || res.Rejected != 500-20*fakeLimit || res.Errors != 0 {
		t.Fatalf("admitted %d rejected %d errors %d; want 200, 300, 0", res.Admitted, res.Rejected, res.Errors)
	}
	if got := f.creates.Load(); got != 500 {
		t.Errorf("the server saw %d creates, want exactly 500 (no hidden retries)", got)
	}
	if res.Statuses["200"] != 200 || res.Statuses["403"] != 300 || len(res.ErrorsByStatus) != 0 {
		t.Errorf("statuses %v, errors by status %v", res.Statuses, res.ErrorsByStatus)
	}
	if f.puts.Load() != 20 {
		t.Errorf("%d users provisioned, want 20", f.puts.Load())
	}
	for i := range 20 {
		if got := f.usedBy(fmt.Sprintf("closed-%d", i)); got != fakeLimit {
			t.Errorf("user closed-%d got %d sessions, want %d (round robin)", i, got, fakeLimit)
		}
	}
	if res.LatencyAdmitted.Count != 200 || res.LatencyRejected.Count != 300 {
		t.Errorf("latency counts %d/%d, want 200/300", res.LatencyAdmitted.Count, res.LatencyRejected.Count)
	}
	if l := res.LatencyRejected; l.P50Ms <= 0 || l.P50Ms > l.P99Ms || l.P99Ms > l.MaxMs {
		t.Errorf("rejected latency percentiles out of order: %+v", l)
	}
	var sum int64
	for _, s := range res.Series {
		sum += s.Admitted + s.Rejected + s.Errors
	}
	if sum != res.Requests {
		t.Errorf("the per-second series adds up to %d requests, want %d", sum, res.Requests)
	}
	if !res.Passed || res.Err() != nil || res.Verification == nil || res.Verification.Sessions != 200 || res.Verification.Users != 20 {
		t.Fatalf("verification: passed=%v %+v\n%s", res.Passed, res.Verification, violationsText(res))
	}
}

func TestHotUserAndDuration(t *testing.T) {
	f := newFake(t)
	srv := f.start()
	cfg := fakeConfig(srv.URL)
	cfg.Hot, cfg.Users, cfg.Requests, cfg.Duration = true, 0, 0, 300*time.Millisecond
	res := run(t, cfg)
	if res.Users != 1 || !res.Hot || res.Admitted != fakeLimit || res.Rejected == 0 {
		t.Fatalf("hot: users %d, admitted %d, rejected %d", res.Users, res.Admitted, res.Rejected)
	}
	if res.DurationS < 0.29 || res.DurationS > 2 {
		t.Errorf("a 300ms run measured %.3fs", res.DurationS)
	}
	if !res.Passed {
		t.Fatal(violationsText(res))
	}
	if _, err := Run(context.Background(), Config{URL: srv.URL, Hot: true, Users: 5, Secret: fakeSecret, AdminToken: fakeAdmin}); err == nil {
		t.Error("--hot with --users 5 was accepted")
	}
}

// TestOpenLoopPacing: slots are 1/Rate apart whatever the server does, so
// the requests sent plus those the end cut off are exactly Rate × Duration.
func TestOpenLoopPacing(t *testing.T) {
	f := newFake(t)
	srv := f.start()
	cfg := fakeConfig(srv.URL)
	cfg.Requests, cfg.Rate, cfg.Duration = 0, 400, time.Second
	res := run(t, cfg)
	if res.Mode != "open" || res.SendLag == nil {
		t.Fatalf("mode %q, send lag %v", res.Mode, res.SendLag)
	}
	if n := res.Requests + res.Unsent; n < 399 || n > 401 {
		t.Errorf("%d sent + %d unsent in 1s at 400/s, want 400", res.Requests, res.Unsent)
	}
	if res.Requests < 300 {
		t.Errorf("only %d of 400 requests were sent", res.Requests)
	}
	if res.DurationS < 0.95 {
		t.Errorf("a 1s open-loop run measured %.3fs: the pacer ran ahead", res.DurationS)
	}
	if !res.Passed {
		t.Fatal(violationsText(res))
	}
}

// TestOpenLoopCountsQueueing: a server that stalls once, with one request
// allowed in flight. A closed loop would report one slow request; the open
// loop reports every request that was due during the stall as late, with
// the wait in its latency (no coordinated omission).
func TestOpenLoopCountsQueueing(t *testing.T) {
	f := newFake(t)
	f.stallFirst = 300 * time.Millisecond
	srv := f.start()
	cfg := fakeConfig(srv.URL)
	cfg.Requests, cfg.Rate, cfg.Duration, cfg.Concurrency = 100, 100, 0, 1
	cfg.Users = 10
	res := run(t, cfg)
	if res.Requests != 100 || res.Unsent != 0 {
		t.Fatalf("%d requests, %d unsent; want 100, 0", res.Requests, res.Unsent)
	}
	// ~30 slots fell due during the 300ms stall.
	if res.Late < 20 {
		t.Errorf("late = %d, want the ~29 requests due during the stall", res.Late)
	}
	if res.SendLag.MaxMs < 250 {
		t.Errorf("max send lag %.1fms, want about 290ms", res.SendLag.MaxMs)
	}
	// Latency from the schedule: the 2nd request waited ~290ms for the
	// single worker, the ~30 after it less and less, so more than 10% of
	// the requests took over 100ms although the server answered all but
	// one in well under 10ms.
	all := res.AdmittedHist.Clone()
	all.Merge(res.RejectedHist)
	if p90 := float64(all.ValueAtQuantile(90)) / 1000; p90 < 100 {
		t.Errorf("open-loop p90 = %.1fms, want > 100ms (the queueing behind the stall)", p90)
	}

	// The same stall in closed loop: one slow request, nothing late.
	f2 := newFake(t)
	f2.stallFirst = 300 * time.Millisecond
	srv2 := f2.start()
	cfg.URL, cfg.Rate = srv2.URL, 0
	closed := run(t, cfg)
	if closed.Late != 0 || closed.SendLag != nil {
		t.Errorf("closed loop reports late %d, send lag %v", closed.Late, closed.SendLag)
	}
	all = closed.AdmittedHist.Clone()
	all.Merge(closed.RejectedHist)
	if p90 := float64(all.ValueAtQuantile(90)) / 1000; p90 > 100 {
		t.Errorf("closed-loop p90 = %.1fms; only one request was slow", p90)
	}
}

func TestWarmupIsVerifiedButNotMeasured(t *testing.T) {
	f := newFake(t)
	srv := f.start()
	cfg := fakeConfig(srv.URL)
	cfg.Requests, cfg.Warmup, cfg.Duration = 0, 200*time.Millisecond, 200*time.Millisecond
	res := run(t, cfg)
	if got := f.creates.Load(); res.Requests >= got {
		t.Errorf("%d measured of %d sent: the warm-up was measured", res.Requests, got)
	}
	if res.Admitted >= 200 {
		t.Errorf("admitted %d: the warm-up's admissions were counted", res.Admitted)
	}
	// Verification still accounts for the warm-up's admissions.
	if !res.Passed || res.Verification.Sessions != 200 {
		t.Fatalf("verification: %+v\n%s", res.Verification, violationsText(res))
	}
}

func TestVerificationCatchesOverAdmission(t *testing.T) {
	f := newFake(t)
	f.overAdmit = 1
	srv := f.start()
	res := run(t, fakeConfig(srv.URL))
	if res.Passed || res.Err() == nil {
		t.Fatal("a server admitting 11 of 10 passed")
	}
	if !strings.Contains(violationsText(res), "over-admitted: the plan allows 10 sessions per period; sessions.used is 11, and this run got 11 create(s) admitted on top of 0 before it") {
		t.Errorf("violations do not name the over-admission:\n%s", violationsText(res))
	}
}

func TestVerificationCatchesLostSessions(t *testing.T) {
	f := newFake(t)
	srv := f.start()
	cfg := fakeConfig(srv.URL)
	cfg.UserPrefix = "lossy"
	f.lose = "lossy-3"
	f.undercount = 1
	res := run(t, cfg)
	text := violationsText(res)
	if res.Passed {
		t.Fatal("a server losing sessions passed")
	}
	if !regexp.MustCompile(`session lossy-3-s1 of user lossy-3: GET answered 404`).MatchString(text) {
		t.Errorf("the unreadable session is not reported:\n%s", text)
	}
	if !strings.Contains(text, "user lossy-0: sessions.used is 9 but 0 before the run + 10 admitted during it = 10 (acknowledged sessions lost)") {
		t.Errorf("the undercounted usage is not reported:\n%s", text)
	}
}

func TestServer500Fails(t *testing.T) {
	f := newFake(t)
	f.fail500Every = 7
	srv := f.start()
	res := run(t, fakeConfig(srv.URL))
	if res.Server500 == 0 || res.ErrorsByStatus["500"] != res.Server500 {
		t.Fatalf("500s: %d, errors by status %v", res.Server500, res.ErrorsByStatus)
	}
	if res.Passed || !strings.Contains(violationsText(res), "answered 500") {
		t.Fatalf("a run with 500s passed:\n%s", violationsText(res))
	}
	// A 500 may hide an admission: usage above what the clients were told
	// by at most the number of 500s is not reported as unexplained.
	if strings.Contains(violationsText(res), "no client was told about") {
		t.Errorf("admissions behind 500s reported as unexplained:\n%s", violationsText(res))
	}
}

// TestWireVariants: chunked answers and servers closing the connection
// are read correctly by the built-in client (and by net/http's).
func TestWireVariants(t *testing.T) {
	for _, std := range []bool{false, true} {
		t.Run(fmt.Sprintf("std=%v", std), func(t *testing.T) {
			f := newFake(t)
			f.chunked, f.closeEvery = true, 3
			srv := f.start()
			cfg := fakeConfig(srv.URL)
			cfg.StdClient = std
			res := run(t, cfg)
			if res.Admitted != 200 || res.Rejected != 300 || res.Errors != 0 {
				t.Fatalf("admitted %d rejected %d errors %d %v %v", res.Admitted, res.Rejected, res.Errors, res.TransportErrors, res.TransportErrorSamples)
			}
			if !res.Passed {
				t.Fatal(violationsText(res))
			}
		})
	}
}

// TestBareEndpoint: with --no-provision --no-verify the tool loads any
// endpoint that takes the JSON body, e.g. a bare baseline server.
func TestBareEndpoint(t *testing.T) {
	var n, withAuth int64
	var mu = make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var v map[string]any
		if err := json.NewDecoder(r.Body).Decode(&v); err != nil || r.URL.Path != "/bare" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		mu <- struct{}{}
		n++
		if strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ey") {
			withAuth++
		}
		<-mu
		io.WriteString(w, `{}`)
	}))
	t.Cleanup(srv.Close)
	res := run(t, Config{URL: srv.URL, Path: "/bare", NoProvision: true, NoVerify: true, Requests: 300, Concurrency: 4})
	if res.Admitted != 300 || res.Verification != nil || !res.Passed {
		t.Fatalf("admitted %d, verification %v, violations %v", res.Admitted, res.Verification, res.Violations)
	}
	if n != 300 || withAuth != 300 {
		t.Errorf("server saw %d requests, %d with a bearer token; want 300, 300", n, withAuth)
	}
}

func TestConfigErrorsNameTheFlag(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		flag string
	}{
		{Config{URL: "ftp://x", Secret: "s", AdminToken: "a"}, "--url"},
		{Config{Secret: "", AdminToken: "a"}, "--secret"},
		{Config{Secret: "s"}, "--admin-token"},
		{Config{Secret: "s", AdminToken: "a", Rate: -1}, "--rate"},
		{Config{Secret: "s", AdminToken: "a", UserPrefix: "bad prefix"}, "--user-prefix"},
	} {
		_, err := Run(context.Background(), tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("%+v: error %v does not name %s", tc.cfg, err, tc.flag)
		}
	}
}

// TestJSONShape: the documented field names are the ones written.
func TestJSONShape(t *testing.T) {
	f := newFake(t)
	srv := f.start()
	cfg := fakeConfig(srv.URL)
	cfg.Rate, cfg.Requests = 2000, 200
	res := run(t, cfg)
	var buf bytes.Buffer
	if err := res.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, buf.String())
	}
	for _, k := range []string{"url", "path", "mode", "users", "hot", "plan", "user_prefix", "concurrency", "rate",
		"started_at", "warmup_s", "duration_s", "requests", "admitted", "rejected", "errors", "requests_per_s",
		"admitted_per_s", "rejected_per_s", "errors_per_s", "statuses", "errors_by_status", "transport_errors",
		"transport_error_samples", "late", "unsent", "late_after_ms", "send_lag", "latency_admitted",
		"latency_rejected", "series", "verification", "violations", "server_errors_500", "interrupted", "passed"} {
		if _, ok := m[k]; !ok {
			t.Errorf("field %q missing", k)
		}
		if !strings.Contains(packageDoc(t), k) {
			t.Errorf("field %q is not documented in doc.go", k)
		}
	}
	lat := m["latency_admitted"].(map[string]any)
	for _, k := range []string{"count", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"} {
		if _, ok := lat[k]; !ok {
			t.Errorf("latency field %q missing", k)
		}
	}
	series := m["series"].([]any)
	if len(series) == 0 {
		t.Fatal("no series")
	}
	for _, k := range []string{"t_s", "length_s", "admitted", "rejected", "errors", "late", "admitted_p50_ms", "admitted_p99_ms", "rejected_p50_ms", "rejected_p99_ms"} {
		if _, ok := series[0].(map[string]any)[k]; !ok {
			t.Errorf("series field %q missing", k)
		}
	}
	v := m["verification"].(map[string]any)
	for _, k := range []string{"users", "sessions", "passed"} {
		if _, ok := v[k]; !ok {
			t.Errorf("verification field %q missing", k)
		}
	}
	if m["mode"] != "open" || m["passed"] != true || m["admitted"].(float64) != 200 {
		t.Errorf("mode %v passed %v admitted %v", m["mode"], m["passed"], m["admitted"])
	}
}

func packageDoc(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestTextSummary(t *testing.T) {
	f := newFake(t)
	f.overAdmit = 1
	srv := f.start()
	res := run(t, fakeConfig(srv.URL))
	var buf bytes.Buffer
	if err := res.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"closed loop, 8 workers, 20 users", "admitted", "rejected", "p99.9", "200: 220, 403: 280", "FAILED: 20 violation(s)", "over-admitted"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}

func TestHTMLReport(t *testing.T) {
	f := newFake(t)
	srv := f.start()
	cfg := fakeConfig(srv.URL)
	cfg.Requests, cfg.Duration = 0, 1200*time.Millisecond
	res := run(t, cfg)
	var buf bytes.Buffer
	if err := res.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	if n := strings.Count(page, "<svg"); n != 4 {
		t.Errorf("%d charts, want 4", n)
	}
	for _, want := range []string{"Throughput over time", "Latency over time", "Latency histogram", "Latency by percentile",
		"latency (ms)", "requests per second", "<polyline", "<polygon", "PASSED"} {
		if !strings.Contains(page, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// Self-contained: nothing is fetched.
	for _, bad := range []string{"<script", "<link", "src=", "@import", "url(http"} {
		if strings.Contains(page, bad) {
			t.Errorf("report contains %q: it must not fetch anything", bad)
		}
	}
	// No NaN or Inf slipped into the drawing.
	if strings.Contains(page, "NaN") || strings.Contains(page, "Inf") {
		t.Error("report contains NaN/Inf coordinates")
	}
}

// TestHTMLReportEmpty: a run that measured nothing still renders.
func TestHTMLReportEmpty(t *testing.T) {
	r := &Result{Mode: "closed", Statuses: map[string]int64{}, Violations: []string{"x <b>"}}
	var buf bytes.Buffer
	if err := r.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "no measured interval") || !strings.Contains(buf.String(), "x &lt;b&gt;") {
		t.Errorf("empty report:\n%s", buf.String())
	}
	if strings.Contains(buf.String(), "NaN") {
		t.Error("NaN in an empty report")
	}
}

func TestInterruptStopsAndSkipsVerification(t *testing.T) {
	f := newFake(t)
	srv := f.start()
	cfg := fakeConfig(srv.URL)
	cfg.Requests, cfg.Duration = 0, time.Hour
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("cancelling took %s", time.Since(start))
	}
	if !res.Interrupted || res.Verification != nil || res.Err() == nil {
		t.Errorf("interrupted %v, verification %v, err %v", res.Interrupted, res.Verification, res.Err())
	}
}

func TestSessionID(t *testing.T) {
	for body, want := range map[string]string{
		`{"id":"0190-abc","user_id":"u1"}`:     "0190-abc",
		`{"user_id":"u1","id":"x"}`:            "x",
		`{ "user_id": "u1", "id" : "spaced" }`: "spaced",
		`{"user_id":"u1"}`:                     "",
		`not json`:                             "",
		`{"id":"with\"quote","user_id":"u"}`:   `with"quote`,
	} {
		if got := sessionID([]byte(body)); got != want {
			t.Errorf("sessionID(%s) = %q, want %q", body, got, want)
		}
	}
}

func TestSlotsBetween(t *testing.T) {
	e := &engine{start: time.Unix(100, 0)}
	interval := float64(10 * time.Millisecond)
	// Slots at 0, 10, 20, … ms: [0, 1s) holds 100, [5ms, 25ms) holds 10 and 20.
	if n := e.slotsBetween(e.start, e.start.Add(time.Second), interval); n != 100 {
		t.Errorf("[0,1s): %d slots, want 100", n)
	}
	if n := e.slotsBetween(e.start.Add(5*time.Millisecond), e.start.Add(25*time.Millisecond), interval); n != 2 {
		t.Errorf("[5ms,25ms): %d slots, want 2", n)
	}
}

// TestLatencyByStatusAndRetryAfter: a server that sheds every other create
// with 503 + Retry-After and admits the rest. Each status gets its own
// latency summary, the Retry-After headers are counted by status (with
// both clients), and the series' intervals follow Config.Interval with one
// kept histogram per interval.
func TestLatencyByStatusAndRetryAfter(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		if n.Add(1)%2 == 0 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"detail":{"error":"unavailable","message":"overloaded"}}`)
			return
		}
		_, _ = io.WriteString(w, `{"id":"s1"}`)
	}))
	defer srv.Close()
	for _, std := range []bool{false, true} {
		n.Store(0)
		cfg := Config{URL: srv.URL, Users: 4, Concurrency: 2, Requests: 200, NoProvision: true, NoVerify: true,
			StdClient: std, Interval: 50 * time.Millisecond, KeepIntervalHists: true}
		res := run(t, cfg)
		ok, shed := res.LatencyByStatus["200"], res.LatencyByStatus["503"]
		if ok.Count+shed.Count != res.Requests || ok.Count == 0 || shed.Count == 0 {
			t.Fatalf("std=%v: latency by status %+v for %d requests", std, res.LatencyByStatus, res.Requests)
		}
		if res.RetryAfter["503"] != shed.Count || res.RetryAfter["200"] != 0 {
			t.Errorf("std=%v: Retry-After counted %v, want 503: %d and none on 200", std, res.RetryAfter, shed.Count)
		}
		if fs := res.LatencyByStatusFromSend["503"]; fs.Count != shed.Count || fs.P99Ms > shed.P99Ms {
			t.Errorf("std=%v: 503 latency from the send %+v, from the schedule %+v", std, fs, shed)
		}
		if res.StatusHists["503"] == nil || res.StatusHists["503"].TotalCount() != shed.Count {
			t.Errorf("std=%v: the 503 histogram does not match its summary", std)
		}
		if res.IntervalS != 0.05 || len(res.IntervalHists) != len(res.Series) || len(res.Series) == 0 {
			t.Fatalf("std=%v: interval %gs, %d hists for %d intervals", std, res.IntervalS, len(res.IntervalHists), len(res.Series))
		}
		var kept int64
		for i, s := range res.Series {
			kept += res.IntervalHists[i].TotalCount()
			if i < len(res.Series)-1 && math.Abs(s.T-0.05*float64(i+1)) > 1e-9 {
				t.Errorf("std=%v: interval %d ends at %gs, want %gs", std, i, s.T, 0.05*float64(i+1))
			}
		}
		if kept != res.Admitted {
			t.Errorf("std=%v: the interval histograms hold %d admitted, the run %d", std, kept, res.Admitted)
		}
	}
}

// Several targets (the nodes of a cluster) share the creates evenly,
// worker by worker, and the run is provisioned and verified through the
// first: one fake store behind three servers.
func TestSpreadsCreatesOverTargets(t *testing.T) {
	f := newFake(t)
	var counts [3]atomic.Int64
	var urls []string
	for i := range counts {
		h := f.handler()
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && r.URL.Path == DefaultPath {
				counts[i].Add(1)
			}
			h.ServeHTTP(w, r)
		}))
		t.Cleanup(srv.Close)
		urls = append(urls, srv.URL)
	}
	for _, std := range []bool{false, true} {
		for i := range counts {
			counts[i].Store(0)
		}
		res := run(t, Config{URLs: urls, Users: 12, Concurrency: 6, Requests: 600, Secret: fakeSecret, AdminToken: fakeAdmin,
			UserPrefix: fmt.Sprintf("spread-%v", std), StdClient: std})
		if !res.Passed || res.Errors != 0 {
			t.Fatalf("std client %v: passed %v, errors %d: %v", std, res.Passed, res.Errors, res.Violations)
		}
		var total int64
		for i := range counts {
			total += counts[i].Load()
		}
		for i := range counts {
			// Two workers per target; a closed loop gives each about a third.
			if n := counts[i].Load(); n < total/6 {
				t.Errorf("std client %v: target %d got %d of %d creates", std, i, n, total)
			}
		}
		if len(res.URLs) != 3 || res.URL != urls[0] {
			t.Errorf("result names %q / %v, want the first target and all three", res.URL, res.URLs)
		}
	}
}

// Users given by id are the ones provisioned, sent as and verified, round
// robin as with a prefix; contradictory or invalid lists are refused.
func TestGivenUserIDs(t *testing.T) {
	f := newFake(t)
	srv := f.start()
	cfg := fakeConfig(srv.URL)
	ids := []string{"owned-by-a-7", "owned-by-a-19", "owned-by-a-3"}
	cfg.Users, cfg.UserIDs, cfg.Requests = 0, ids, 60
	res := run(t, cfg)
	if !res.Passed || res.Users != 3 || res.Verification == nil || res.Verification.Users != 3 {
		t.Fatalf("passed %v, users %d, verification %+v: %v", res.Passed, res.Users, res.Verification, res.Violations)
	}
	if f.puts.Load() != 3 {
		t.Errorf("%d users provisioned, want the 3 given", f.puts.Load())
	}
	for _, id := range ids {
		if got := f.usedBy(id); got != fakeLimit {
			t.Errorf("user %s got %d sessions, want %d", id, got, fakeLimit)
		}
	}
	if !strings.Contains(res.describeRun(), "ids given") {
		t.Errorf("the summary names a prefix for given ids: %s", res.describeRun())
	}
	for _, bad := range []Config{
		{UserIDs: []string{"a", "a"}},
		{UserIDs: []string{"a", "bad id"}},
		{UserIDs: []string{"a", "b"}, Users: 3},
		{UserIDs: []string{"a", "b"}, Hot: true},
	} {
		bad.URL, bad.Secret, bad.AdminToken = srv.URL, fakeSecret, fakeAdmin
		if _, err := Run(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "user ids") {
			t.Errorf("%v: error %v, want one about the user ids", bad.UserIDs, err)
		}
	}
}

// OnLoad is called once, after every user is provisioned and before any
// create, with the measured phase's start: what the result reports.
func TestOnLoadMarksTheMeasuredPhase(t *testing.T) {
	f := newFake(t)
	srv := f.start()
	cfg := fakeConfig(srv.URL)
	cfg.Requests, cfg.Warmup, cfg.Duration = 0, 100*time.Millisecond, 100*time.Millisecond
	var calls int
	var at time.Time
	var puts, creates int64
	cfg.OnLoad = func(start time.Time) {
		calls++
		at = start
		puts, creates = f.puts.Load(), f.creates.Load()
	}
	res := run(t, cfg)
	if calls != 1 || !at.Equal(res.MeasureStart) {
		t.Errorf("OnLoad called %d time(s) with %v; want once with the measured start %v", calls, at, res.MeasureStart)
	}
	if puts != 20 || creates != 0 {
		t.Errorf("at OnLoad: %d users provisioned, %d creates sent; want 20 and 0", puts, creates)
	}
}
