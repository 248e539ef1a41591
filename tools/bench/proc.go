package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ProcStatus is the part of /proc/<pid>/status the memory figures use, in
// KiB (the kernel's "kB").
type ProcStatus struct {
	// RSSKB is VmRSS: resident memory now.
	RSSKB int64 `json:"rss_kb"`
	// HWMKB is VmHWM: the peak of VmRSS over the process's life, which
	// catches a peak between two samples.
	HWMKB int64 `json:"hwm_kb"`
}

// parseProcStatus reads VmRSS and VmHWM out of a /proc/<pid>/status text.
// Both must be present: a kernel thread or a zombie has neither, and a
// zero read as "no memory" would make any target look met.
func parseProcStatus(r io.Reader) (ProcStatus, error) {
	var st ProcStatus
	var haveRSS, haveHWM bool
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		kb, err := parseKB(val)
		if err != nil {
			return st, fmt.Errorf("%s: %w", key, err)
		}
		if key == "VmRSS" {
			st.RSSKB, haveRSS = kb, true
		} else {
			st.HWMKB, haveHWM = kb, true
		}
	}
	if err := sc.Err(); err != nil {
		return st, err
	}
	if !haveRSS || !haveHWM {
		return st, fmt.Errorf("no VmRSS/VmHWM lines (is it a live user process?)")
	}
	return st, nil
}

// parseKB parses the value part of a status line, "   123456 kB".
func parseKB(s string) (int64, error) {
	f := strings.Fields(s)
	if len(f) != 2 || f[1] != "kB" {
		return 0, fmt.Errorf("unexpected value %q (want \"<n> kB\")", strings.TrimSpace(s))
	}
	n, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("unexpected value %q", strings.TrimSpace(s))
	}
	return n, nil
}

// readProcStatus reads the memory figures of a live process.
func readProcStatus(pid int) (ProcStatus, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcStatus{}, err
	}
	st, err := parseProcStatus(bytes.NewReader(b))
	if err != nil {
		return st, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	return st, nil
}

// rssSampler records the highest VmRSS of a process, read every interval,
// until stopped. The kernel's VmHWM is read at the end as well, so a peak
// between two samples is not missed.
type rssSampler struct {
	pid  int
	mu   sync.Mutex
	max  int64
	last int64
	errs int
	stop chan struct{}
	done chan struct{}
}

func startRSSSampler(pid int, every time.Duration) *rssSampler {
	s := &rssSampler{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	s.sample()
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.sample()
			}
		}
	}()
	return s
}

func (s *rssSampler) sample() {
	st, err := readProcStatus(s.pid)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.errs++
		return
	}
	s.last = st.RSSKB
	s.max = max(s.max, st.RSSKB, st.HWMKB)
}

// current is the last sample and the maximum so far, in KiB.
func (s *rssSampler) current() (last, maxKB int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, s.max
}

// Stop ends the sampling after one last reading and returns the maximum.
func (s *rssSampler) Stop() int64 {
	close(s.stop)
	<-s.done
	s.sample()
	_, m := s.current()
	return m
}

// parseMetric finds an unlabelled sample of a Prometheus text exposition,
// e.g. "tally_live_actors 1234".
func parseMetric(body []byte, name string) (float64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || !strings.HasPrefix(rest, " ") {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		return v, true
	}
	return 0, false
}

// cpuModel is the first "model name" of /proc/cpuinfo ("" if unknown).
func cpuModel(r io.Reader) string {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// userHZ is the unit of /proc/<pid>/stat's times: USER_HZ, which the
// kernel fixes at 100 for what it exports to user space, whatever its
// internal tick.
const userHZ = 100

// parseProcStatCPU reads utime + stime (fields 14 and 15) out of a
// /proc/<pid>/stat line: the CPU the whole process (all its threads) has
// used, in user and kernel mode. The command name (field 2, in
// parentheses) may hold spaces and parentheses itself, so the fields are
// counted from the last ')'.
func parseProcStatCPU(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("no ')' after the command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): utime, field 14, is f[11]; stime f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields after the command name, want at least 13", len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("unexpected CPU time %q", s)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// readProcCPU is the CPU time a live process has used so far.
func readProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	d, err := parseProcStatCPU(b)
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return d, nil
}
