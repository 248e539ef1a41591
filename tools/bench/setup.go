package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// randomHex is n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// randomSecret is a fresh JWT secret or admin token for a server child.
func randomSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// stores are the run's private databases and Redis key prefix. Nothing of
// the machine's shared services is touched outside them, and close
// removes them all.
type stores struct {
	tag         string // in every name below: tally_bench_<tag>…
	adminURL    string
	rowlockDB   string
	tallyDB     string
	redisAddr   string
	redisPrefix string
	created     []string
	log         func(format string, args ...any)
}

// createStores creates the two databases: one for the row-lock baseline
// (its tables are pgbench's alone) and one for Tally (migrated by the
// Tally child at start-up).
func createStores(ctx context.Context, adminURL, redisAddr string, log func(string, ...any)) (*stores, error) {
	tag := randomHex(4)
	s := &stores{
		tag:         tag,
		adminURL:    adminURL,
		rowlockDB:   "tally_bench_" + tag + "_rowlock",
		tallyDB:     "tally_bench_" + tag + "_tally",
		redisAddr:   redisAddr,
		redisPrefix: "tally_bench_" + tag + ":",
		log:         log,
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, adminURL)
	if err != nil {
		return nil, fmt.Errorf("connect to Postgres at %s (--postgres-url): %w", redactURL(adminURL), err)
	}
	defer conn.Close(context.Background())
	for _, db := range []string{s.rowlockDB, s.tallyDB} {
		if err := s.createDB(cctx, conn, db); err != nil {
			s.close()
			return nil, err
		}
	}
	rc := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rc.Close()
	if err := rc.Ping(cctx).Err(); err != nil {
		s.close()
		return nil, fmt.Errorf("reach Redis at %s (--redis-addr): %w", redisAddr, err)
	}
	log("setup: databases %s and %s, Redis key prefix %q on %s", s.rowlockDB, s.tallyDB, s.redisPrefix, redisAddr)
	return s, nil
}

// createDB creates a database of the run, which close drops.
func (s *stores) createDB(ctx context.Context, conn *pgx.Conn, db string) error {
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+db); err != nil {
		return fmt.Errorf("create database %s: %w", db, err)
	}
	s.created = append(s.created, db)
	return nil
}

// extraDB creates one more database of the run (the cpu phase gives each
// binary its own); close drops it with the others, or dropDB before.
func (s *stores) extraDB(ctx context.Context, suffix string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, s.adminURL)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	db := "tally_bench_" + s.tag + "_" + suffix
	return db, s.createDB(cctx, conn, db)
}

// dropDB drops one of the run's databases now (its servers stopped).
func (s *stores) dropDB(db string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if err := dropOn(ctx, conn, db); err != nil {
		return err
	}
	s.created = slices.DeleteFunc(s.created, func(x string) bool { return x == db })
	return nil
}

// dropOn drops a database, terminating any connection left to it.
func dropOn(ctx context.Context, conn *pgx.Conn, db string) error {
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", db, err)
	}
	return nil
}

// dbURL is the admin URL pointed at one of the run's databases.
func (s *stores) dbURL(db string) string {
	u, err := url.Parse(s.adminURL)
	if err != nil {
		return s.adminURL
	}
	u.Path = "/" + db
	return u.String()
}

// close drops the databases (terminating any connection left) and deletes
// the Redis keys under the prefix. It runs on a fresh context: it is what
// must still happen after an error or a Ctrl-C.
func (s *stores) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if len(s.created) > 0 {
		conn, err := pgx.Connect(ctx, s.adminURL)
		if err != nil {
			s.log("cleanup: cannot connect to drop %s: %v", strings.Join(s.created, ", "), err)
		} else {
			for _, db := range s.created {
				if err := dropOn(ctx, conn, db); err != nil {
					s.log("cleanup: %v", err)
				}
			}
			conn.Close(context.Background())
		}
		s.created = nil
	}
	rc := redis.NewClient(&redis.Options{Addr: s.redisAddr})
	defer rc.Close()
	n, err := deleteKeys(ctx, rc, s.redisPrefix)
	if err != nil {
		s.log("cleanup: delete Redis keys %s*: %v", s.redisPrefix, err)
	}
	s.log("cleanup: databases dropped, %d Redis key(s) under %q deleted", n, s.redisPrefix)
}

// deleteKeys deletes every key under prefix (SCAN, then UNLINK in batches),
// leaving the shared server's other keys alone.
func deleteKeys(ctx context.Context, c *redis.Client, prefix string) (int, error) {
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var batch []string
	n := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := c.Unlink(ctx, batch...).Err()
		n += len(batch)
		batch = batch[:0]
		return err
	}
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 1000 {
			if err := flush(); err != nil {
				return n, err
			}
		}
	}
	if err := iter.Err(); err != nil {
		return n, err
	}
	return n, flush()
}

// redactURL hides a password in a URL for messages.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// Machine describes where the run happened: ratios only mean something
// next to it.
type Machine struct {
	NumCPU    int    `json:"nproc"`
	CPUModel  string `json:"cpu_model"`
	MemTotal  string `json:"mem_total"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	OSArch    string `json:"os_arch"`
	Postgres  string `json:"postgres"`
	Pgbench   string `json:"pgbench"`
	Redis     string `json:"redis"`
	// LoadAvg at the start: other work on a shared machine shows here.
	LoadAvg string `json:"loadavg_at_start"`
}

func machineInfo(ctx context.Context, adminURL, redisAddr string) Machine {
	m := Machine{NumCPU: runtime.NumCPU(), GoVersion: runtime.Version(), OSArch: runtime.GOOS + "/" + runtime.GOARCH}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		m.CPUModel = cpuModel(f)
		f.Close()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				if kb, err := parseKB(v); err == nil {
					m.MemTotal = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if conn, err := pgx.Connect(cctx, adminURL); err == nil {
		_ = conn.QueryRow(cctx, "SHOW server_version").Scan(&m.Postgres)
		conn.Close(context.Background())
	}
	if out, err := exec.CommandContext(cctx, "pgbench", "--version").Output(); err == nil {
		m.Pgbench = strings.TrimSpace(string(out))
	}
	rc := redis.NewClient(&redis.Options{Addr: redisAddr})
	if info, err := rc.Info(cctx, "server").Result(); err == nil {
		for _, l := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), "redis_version:"); ok {
				m.Redis = v
			}
		}
	}
	_ = rc.Close()
	return m
}

// String is the machine in one paragraph, for the text and Markdown output.
func (m Machine) String() string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%d CPU(s) %s, %s RAM, Linux %s, %s %s; PostgreSQL %s; %s; Redis %s; load average at start %s",
		m.NumCPU, orUnknown(m.CPUModel), orUnknown(m.MemTotal), orUnknown(m.Kernel), m.GoVersion, m.OSArch,
		orUnknown(m.Postgres), orUnknown(m.Pgbench), orUnknown(m.Redis), orUnknown(m.LoadAvg))
	return b.String()
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

// checkpoint forces a Postgres checkpoint (needs a superuser, as the
// machine's postgres role is), flushing what earlier phases dirtied.
func (s *stores) checkpoint(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(cctx, s.adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(cctx, "CHECKPOINT")
	return err
}
