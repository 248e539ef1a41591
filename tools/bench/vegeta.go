package bench

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/tally-dev/tally/transport"
)

// The vegeta cross-check: the 2× overload again, offered by a load tool
// that is not ours (github.com/tsenart/vegeta, installed with
// `go install github.com/tsenart/vegeta/v12@v12.13.0`), so that a figure
// that only tools/load sees can be told from a figure of Tally. Vegeta
// measures latency from the moment it actually sent a request, not from
// its scheduled time, and sends with net/http: it is the harsher judge of
// throughput (it costs the shared cores more) and the kinder one of
// latency under queueing.

// findVegeta is the vegeta binary: --vegeta as given (a path or a name on
// PATH), else $GOPATH/bin/vegeta, where `go install` puts it.
func findVegeta(flagValue string) (string, error) {
	if p, err := exec.LookPath(flagValue); err == nil {
		return p, nil
	}
	if flagValue == "vegeta" {
		for _, dir := range filepath.SplitList(build.Default.GOPATH) {
			p := filepath.Join(dir, "bin", "vegeta")
			if st, err := os.Stat(p); err == nil && !st.IsDir() {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("vegeta not found (--vegeta %q, PATH, $GOPATH/bin)", flagValue)
}

// vegetaTarget is one line of vegeta's JSON targets format.
type vegetaTarget struct {
	Method string              `json:"method"`
	URL    string              `json:"url"`
	Body   string              `json:"body"` // base64
	Header map[string][]string `json:"header"`
}

// writeVegetaTargets writes one target per user (vegeta goes round robin
// over them): the same create, with the user's token signed by the run's
// secret, that tools/load sends.
func writeVegetaTargets(path, url, secret, prefix string, users int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	body := base64.StdEncoding.EncodeToString([]byte(`{"title":"tally load","language":"en-US","stt_provider":"google"}`))
	now := time.Now()
	for i := range users {
		tok, err := transport.IssueToken([]byte(secret), fmt.Sprintf("%s-%d", prefix, i), 2*time.Hour, now)
		if err != nil {
			f.Close()
			return err
		}
		if err := enc.Encode(vegetaTarget{Method: "POST", URL: url + "/api/v1/sessions", Body: body,
			Header: map[string][]string{"Authorization": {"Bearer " + tok}, "Content-Type": {"application/json"}}}); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (r *runner) phaseVegeta(ctx context.Context, p *Phase) error {
	capacity, err := r.needCapacity()
	if err != nil {
		return err
	}
	run := &VegetaRun{Rate: float64(int(vegetaFactor * capacity))}
	r.vegeta = run
	p.Details = run
	bin, err := findVegeta(r.opts.Vegeta)
	if err != nil {
		run.SkippedReason = "SKIPPED: " + err.Error() + "; install it with `go install github.com/tsenart/vegeta/v12@v12.13.0`"
		r.logf("vegeta: %s", run.SkippedReason)
		r.note("vegeta cross-check %s", run.SkippedReason)
		return nil
	}
	c, err := r.suiteTally(ctx, p)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(r.tmp, "vegeta-")
	if err != nil {
		return err
	}
	targets := filepath.Join(dir, "targets.json")
	results := filepath.Join(dir, "results.bin")
	if err := writeVegetaTargets(targets, c.url(), r.secret, r.suitePrefix, suiteUsers); err != nil {
		return err
	}
	od := r.opts.OverloadDuration
	run.Command = []string{bin, "attack", "-format=json", "-targets=" + targets,
		"-rate=" + strconv.Itoa(int(run.Rate)) + "/s", "-duration=" + od.String(), "-timeout=10s",
		// The same cap on connections as tools/load's overload, and no
		// response bodies kept (hundreds of MB at these rates).
		"-max-workers=" + strconv.Itoa(r.opts.OverloadConns), "-max-connections=" + strconv.Itoa(r.opts.OverloadConns),
		"-max-body=0", "-output=" + results}
	r.logf("vegeta: %d× capacity, %.0f/s for %s, up to %d connections", vegetaFactor, run.Rate, od, r.opts.OverloadConns)
	// Bounded: the attack's duration, its last requests' timeout, margin.
	actx, cancel := context.WithTimeout(ctx, od+time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(actx, bin, run.Command[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("vegeta attack: %w: %s", err, tail(string(out), 10))
	}
	rep, err := exec.CommandContext(actx, bin, "report", "-type=json", results).Output()
	if err != nil {
		return fmt.Errorf("vegeta report: %w", err)
	}
	if run.Report, err = parseVegetaReport(rep); err != nil {
		return err
	}
	enc := exec.CommandContext(actx, bin, "encode", "--to", "csv", results)
	stdout, err := enc.StdoutPipe()
	if err != nil {
		return err
	}
	if err := enc.Start(); err != nil {
		return fmt.Errorf("vegeta encode: %w", err)
	}
	codes, perr := parseVegetaCSV(stdout)
	if werr := enc.Wait(); werr != nil && perr == nil {
		perr = fmt.Errorf("vegeta encode: %w", werr)
	}
	if perr != nil {
		return perr
	}
	run.P99ByCode, run.RetryAfter = map[string]float64{}, map[string]int64{}
	for code, h := range codes.Hists {
		run.P99ByCode[strconv.Itoa(code)] = float64(h.ValueAtQuantile(99)) / 1000
	}
	for code, n := range codes.RetryAfter {
		run.RetryAfter[strconv.Itoa(code)] = n
	}
	if secs := float64(run.Report.Duration) / 1e9; secs > 0 {
		run.GoodputPerS = float64(run.Report.StatusCodes["200"]) / secs
	}
	run.GoodputPct = 100 * run.GoodputPerS / capacity
	if codes.Count != run.Report.Requests {
		r.note("vegeta: the report counts %d requests, its CSV %d", run.Report.Requests, codes.Count)
	}
	if run.Report.Requests == 0 {
		return errors.New("vegeta sent nothing")
	}
	r.logf("vegeta: sent %.0f/s, 200s %.0f/s (%.0f%% of capacity), statuses %v, p99 by code %v",
		run.Report.Rate, run.GoodputPerS, run.GoodputPct, run.Report.StatusCodes, run.P99ByCode)
	time.Sleep(2 * time.Second) // let its last answers go before the next phase
	return nil
}
