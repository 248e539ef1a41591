package bench

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The row-lock baseline's schema and transaction are embedded, so the
// benchmark runs from any working directory and always measures the files
// in the repository it was built from.
var (
	//go:embed rowlock_schema.sql
	rowlockSchemaSQL []byte
	//go:embed rowlock.sql
	rowlockSQL []byte
)

// PgbenchResult is what one pgbench run printed.
type PgbenchResult struct {
	// TPS excludes the connection set-up when pgbench reports it both
	// ways, so that 64 connections' start does not count against the
	// baseline.
	TPS          float64 `json:"tps"`
	Processed    int64   `json:"transactions"`
	Failed       int64   `json:"failed"`
	LatencyAvgMs float64 `json:"latency_avg_ms"`
	Command      string  `json:"command"`
}

// parsePgbench reads pgbench's summary. Its tps line changed over the
// versions: 14+ prints one "tps = N (without initial connection time)";
// older ones print "(including connections establishing)" and then
// "(excluding connections establishing)". The figure without connection
// time is preferred wherever both exist.
func parsePgbench(out []byte) (PgbenchResult, error) {
	var r PgbenchResult
	var tpsExcl, tpsAny float64
	haveExcl, haveAny := false, false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "tps = "):
			f := strings.Fields(strings.TrimPrefix(line, "tps = "))
			if len(f) == 0 {
				continue
			}
			v, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				return r, fmt.Errorf("pgbench: bad tps line %q", line)
			}
			if strings.Contains(line, "without initial connection") || strings.Contains(line, "excluding connections") {
				tpsExcl, haveExcl = v, true
			} else if !haveAny {
				tpsAny, haveAny = v, true
			}
		case strings.HasPrefix(line, "number of transactions actually processed:"):
			v := strings.Fields(strings.TrimPrefix(line, "number of transactions actually processed:"))
			if len(v) > 0 {
				// "12345" or, with -t, "12345/12800".
				n, _, _ := strings.Cut(v[0], "/")
				r.Processed, _ = strconv.ParseInt(n, 10, 64)
			}
		case strings.HasPrefix(line, "number of failed transactions:"):
			v := strings.Fields(strings.TrimPrefix(line, "number of failed transactions:"))
			if len(v) > 0 {
				r.Failed, _ = strconv.ParseInt(v[0], 10, 64)
			}
		case strings.HasPrefix(line, "latency average ="):
			v := strings.Fields(strings.TrimPrefix(line, "latency average ="))
			if len(v) >= 2 && v[1] == "ms" {
				r.LatencyAvgMs, _ = strconv.ParseFloat(v[0], 64)
			}
		}
	}
	switch {
	case haveExcl:
		r.TPS = tpsExcl
	case haveAny:
		r.TPS = tpsAny
	default:
		return r, errors.New("pgbench printed no \"tps = …\" line")
	}
	return r, nil
}

// rowlockBench runs the row-lock baseline on its own database: the schema
// is loaded with psql (VACUUM cannot run inside the implicit transaction
// of a multi-statement query, which is what a driver would send), then
// pgbench runs the transaction with 64 clients for each uid_max.
type rowlockBench struct {
	dbURL string
	dir   string // where the SQL files are written for psql and pgbench
	log   func(format string, args ...any)
}

func (b *rowlockBench) prepare(ctx context.Context) error {
	for _, tool := range []string{"psql", "pgbench"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (apt-get install postgresql-client): %w", tool, err)
		}
	}
	schema := filepath.Join(b.dir, "rowlock_schema.sql")
	if err := os.WriteFile(schema, rowlockSchemaSQL, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.dir, "rowlock.sql"), rowlockSQL, 0o644); err != nil {
		return err
	}
	b.log("row-lock: loading tools/bench/rowlock_schema.sql (100 000 counter rows)")
	cmd := exec.CommandContext(ctx, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", b.dbURL, "-f", schema)
	// The schema's DROP … IF EXISTS notices are noise on a fresh database.
	cmd.Env = append(os.Environ(), "PGOPTIONS=-c client_min_messages=warning")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("psql -f rowlock_schema.sql: %w\n%s", err, out)
	}
	return nil
}

// run runs pgbench for d with uid_max users and parses its summary.
func (b *rowlockBench) run(ctx context.Context, d time.Duration, uidMax int) (PgbenchResult, error) {
	secs := max(int(d.Round(time.Second)/time.Second), 1)
	args := []string{"-n", "-c", "64", "-j", "2", "-T", strconv.Itoa(secs),
		"-D", "uid_max=" + strconv.Itoa(uidMax), "-f", filepath.Join(b.dir, "rowlock.sql"), b.dbURL}
	shown := "pgbench " + strings.Join(args[:len(args)-2], " ") + " tools/bench/rowlock.sql <bench database>"
	b.log("row-lock: %s", shown)
	cmd := exec.CommandContext(ctx, "pgbench", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return PgbenchResult{}, ctx.Err()
		}
		return PgbenchResult{}, fmt.Errorf("%s: %w\n%s", shown, err, tail(out.String(), 20))
	}
	r, err := parsePgbench(out.Bytes())
	if err != nil {
		return r, fmt.Errorf("%w\n%s", err, tail(out.String(), 20))
	}
	r.Command = shown
	return r, nil
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
