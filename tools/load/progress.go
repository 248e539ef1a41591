package load

import (
	"fmt"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progress draws a bar on cfg.Progress until done: the run's time (or its
// request count with Requests alone) and the last second's figures. It
// reads only what the collector already computed, so the hot path pays
// nothing for it.
func (e *engine) progress(done <-chan struct{}) {
	cfg := e.cfg
	byTime := cfg.Duration > 0
	total := cfg.Requests
	if byTime {
		total = int64((cfg.Warmup + cfg.Duration) / time.Millisecond)
	}
	bar := progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(cfg.Progress),
		progressbar.OptionSetWidth(24),
		progressbar.OptionThrottle(150*time.Millisecond),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionSetRenderBlankState(true),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetDescription(e.describe()),
	)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			_ = bar.Finish()
			return
		case <-tick.C:
		}
		bar.Describe(e.describe())
		if byTime {
			_ = bar.Set64(min(int64(time.Since(e.start)/time.Millisecond), total))
		} else {
			_ = bar.Set64(min(e.measured.Load(), total))
		}
	}
}

// describe is the bar's text: the phase, and the last full second, in
// fixed-width fields so that the bar does not jump about.
func (e *engine) describe() string {
	if time.Now().Before(e.measureStart) {
		return fmt.Sprintf("%-62s", "warm-up")
	}
	s, ok := e.coll.last()
	if !ok || s.Length <= 0 {
		return fmt.Sprintf("%-62s", "load")
	}
	p99 := func(n int64, v float64) string {
		if n == 0 {
			return "-"
		}
		return fmtMs(v)
	}
	text := fmt.Sprintf("%6s adm/s %6s rej/s %5s err/s  p99 adm %6s rej %6s",
		human(float64(s.Admitted)/s.Length), human(float64(s.Rejected)/s.Length), human(float64(s.Errors)/s.Length),
		p99(s.Admitted, s.AdmittedP99Ms), p99(s.Rejected, s.RejectedP99Ms))
	if e.cfg.Rate > 0 {
		text += fmt.Sprintf(" late %d", s.Late)
	}
	return text
}
