package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresCluster is a private PostgreSQL server (its own initdb, data
// directory and port on 127.0.0.1, trust auth), for tests that stop and
// restart the database. The machine's server on 5432 is never touched.
type PostgresCluster struct {
	bin  string // directory of initdb, pg_ctl, postgres
	root string // temporary directory: data/ and the server log
	data string
	port int

	mu      sync.Mutex
	running bool
}

// StartPostgres initializes a cluster in a temporary directory and starts
// it. When the test ends the server is stopped (immediately) and its files
// removed. Without the PostgreSQL server binaries the test is skipped, or
// fails under TALLY_TEST_REQUIRE_SERVICES=1.
func StartPostgres(tb testing.TB) *PostgresCluster {
	tb.Helper()
	bin, err := postgresBinDir()
	if err != nil {
		Unreachable(tb, "PostgreSQL server binaries (apt-get install postgresql)", err)
	}
	// Not tb.TempDir: its parent is private to root, and the server runs as
	// the postgres user, who must be able to reach the data directory.
	root, err := os.MkdirTemp("", "tally-pg-")
	if err != nil {
		tb.Fatal(err)
	}
	c := &PostgresCluster{bin: bin, root: root, data: filepath.Join(root, "data"), port: FreePort(tb)}
	tb.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.running {
			if out, err := c.pgCtl("stop", "-m", "immediate", "-w", "-t", "30"); err != nil {
				tb.Logf("private postgres: stop: %v\n%s", err, out)
			}
			c.running = false
		}
		if tb.Failed() {
			tb.Logf("--- private postgres (port %d) log tail:\n%s", c.port, logTail(c.logPath(), 20))
		}
		if err := os.RemoveAll(root); err != nil {
			tb.Logf("private postgres: remove %s: %v", root, err)
		}
	})
	if err := os.Chmod(root, 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := chownToPostgres(root); err != nil {
		tb.Fatal(err)
	}

	start := time.Now()
	// -N: no fsync of the new cluster, the data is thrown away anyway.
	out, err := c.asPostgres(filepath.Join(bin, "initdb"), "-D", c.data, "-U", "postgres",
		"-A", "trust", "-E", "UTF8", "--locale=C", "-N")
	if err != nil {
		tb.Fatalf("private postgres: initdb: %v\n%s", err, out)
	}
	// fsync=off is safe for a crash of the server (what Stop simulates):
	// committed WAL is in the OS's page cache. synchronous_commit stays on,
	// or an immediate stop would lose acknowledged commits, and a test of
	// "nothing acknowledged is lost" would fail for the wrong reason.
	conf := fmt.Sprintf(`
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = ''
fsync = off
shared_buffers = 32MB
max_connections = 100
log_min_messages = warning
`, c.port)
	f, err := os.OpenFile(filepath.Join(c.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		tb.Fatal(err)
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		tb.Fatal(err)
	}
	c.Start(tb)
	tb.Logf("private postgres on 127.0.0.1:%d ready in %s", c.port, time.Since(start).Round(time.Millisecond))
	return c
}

// Addr is the server's host:port.
func (c *PostgresCluster) Addr() string { return fmt.Sprintf("127.0.0.1:%d", c.port) }

// URL is the URL of database db on the server (the database "postgres"
// always exists). It creates nothing.
func (c *PostgresCluster) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, db)
}

// URLAt is URL(db) reached through addr instead, such as a FaultProxy's
// Addr in front of the server.
func (c *PostgresCluster) URLAt(addr, db string) string {
	return fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", addr, db)
}

// CreateDatabase creates a fresh database and returns its URL. It goes
// away with the cluster.
func (c *PostgresCluster) CreateDatabase(tb testing.TB) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		tb.Fatalf("private postgres: connect: %v", err)
	}
	defer conn.Close(context.Background())
	name := RandomName("tally_test_")
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		tb.Fatalf("private postgres: create database: %v", err)
	}
	return c.URL(name)
}

// Stop stops the server with `pg_ctl stop -m immediate`: no checkpoint,
// connections cut, the next Start runs crash recovery, as after a crash or
// an outage. It returns once the server is gone.
func (c *PostgresCluster) Stop(tb testing.TB) {
	tb.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.running {
		tb.Fatal("private postgres: Stop: it is not running")
	}
	if out, err := c.pgCtl("stop", "-m", "immediate", "-w", "-t", "30"); err != nil {
		tb.Fatalf("private postgres: stop: %v\n%s", err, out)
	}
	c.running = false
}

// Start starts the server on its data directory and port, and returns
// once it accepts connections (after crash recovery, if Stop left any).
func (c *PostgresCluster) Start(tb testing.TB) {
	tb.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		tb.Fatal("private postgres: Start: it is running already")
	}
	if out, err := c.pgCtl("start", "-w", "-t", "60", "-l", c.logPath()); err != nil {
		// It may be up but slow (pg_ctl gave up waiting): never leave a
		// server behind.
		_, _ = c.pgCtl("stop", "-m", "immediate", "-w", "-t", "30")
		tb.Fatalf("private postgres: start on port %d: %v\n%s\n%s", c.port, err, out, logTail(c.logPath(), 20))
	}
	c.running = true
	err := waitUntil(20*time.Second, 50*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, c.URL("postgres"))
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	})
	if err != nil {
		tb.Fatalf("private postgres: not accepting connections on port %d: %v", c.port, err)
	}
}

func (c *PostgresCluster) logPath() string { return filepath.Join(c.root, "server.log") }

func (c *PostgresCluster) pgCtl(args ...string) ([]byte, error) {
	return c.asPostgres(filepath.Join(c.bin, "pg_ctl"), append([]string{"-D", c.data}, args...)...)
}

// asPostgres runs a server binary, through runuser when running as root:
// initdb and postgres refuse to run as root.
func (c *PostgresCluster) asPostgres(bin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", bin}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, bin, args...)
	}
	// pg_ctl start points the server's output at its -l log, so that
	// CombinedOutput does not wait for the server to exit.
	return cmd.CombinedOutput()
}

// postgresBinDir finds the newest /usr/lib/postgresql/<version>/bin with
// the server binaries, or the directory of initdb on the PATH.
func postgresBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	type versioned struct {
		dir string
		v   int
	}
	var found []versioned
	for _, d := range dirs {
		v, err := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			found = append(found, versioned{d, v})
		}
	}
	if len(found) > 0 {
		sort.Slice(found, func(i, j int) bool { return found[i].v > found[j].v })
		return found[0].dir, nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("no initdb in /usr/lib/postgresql/*/bin or on the PATH")
}

// chownToPostgres gives dir to the postgres user when running as root.
func chownToPostgres(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("running as root needs a postgres user to run the server as: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return os.Chown(dir, uid, gid)
}
