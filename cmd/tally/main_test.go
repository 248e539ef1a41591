package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/transport"
)

// TestMain lets the test binary stand in for the tally binary: a subprocess
// started with TALLY_TEST_EXEC_MAIN=1 runs main, so crash tests kill a real
// process without a separate build step.
func TestMain(m *testing.M) {
	if os.Getenv("TALLY_TEST_EXEC_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestHelpListsCommands(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, func(string) string { return "" }, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"serve", "migrate", "token", "healthcheck"} {
		if !strings.Contains(out.String(), c) {
			t.Errorf("help does not list %q:\n%s", c, out.String())
		}
	}
	if err := run(context.Background(), []string{"nope"}, func(string) string { return "" }, io.Discard, io.Discard); err == nil {
		t.Fatal("an unknown command succeeded")
	}
}

func TestTokenCommand(t *testing.T) {
	env := map[string]string{"TALLY_JWT_SECRET": "token-test-secret-0123456789abcdef", "TALLY_DATABASE_URL": "postgres://x@127.0.0.1/x", "TALLY_ADMIN_TOKEN": "token-test-admin-0123456789abcdef"}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"token", "--user", "alice", "--ttl", "2h"}, func(k string) string { return env[k] }, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if parts := strings.Split(strings.TrimSpace(out.String()), "."); len(parts) != 3 {
		t.Fatalf("not a JWT: %q", out.String())
	}
	if err := run(context.Background(), []string{"token", "--user", "bad user"}, func(k string) string { return env[k] }, io.Discard, io.Discard); err == nil {
		t.Fatal("an invalid user id was accepted")
	}
	// A 100-year token is refused, naming the bound it is over.
	err := run(context.Background(), []string{"token", "--user", "alice", "--ttl", "876000h"}, func(k string) string { return env[k] }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "TALLY_JWT_MAX_TTL") {
		t.Fatalf("--ttl 876000h: %v, want a refusal naming TALLY_JWT_MAX_TTL", err)
	}
}

func TestBadConfigNamesTheVariable(t *testing.T) {
	env := map[string]string{"TALLY_HTTP_ADDR": "nonsense"}
	err := run(context.Background(), []string{"serve"}, func(k string) string { return env[k] }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "TALLY_HTTP_ADDR") {
		t.Fatalf("got %v, want an error naming TALLY_HTTP_ADDR", err)
	}
}

// process is a tally serve subprocess.
type process struct {
	cmd  *exec.Cmd
	addr string
}

func startProcess(t *testing.T, env map[string]string) *process {
	t.Helper()
	return startProcessOn(t, env, testenv.FreePort(t))
}

// startProcessOn starts `tally serve` on 127.0.0.1:port and waits until it
// is ready; a restart on the same port is what clients of a crashed
// process see.
func startProcessOn(t *testing.T, env map[string]string, port int) *process {
	t.Helper()
	cmd := exec.Command(os.Args[0], "serve")
	cmd.Env = append(os.Environ(), "TALLY_TEST_EXEC_MAIN=1", fmt.Sprintf("TALLY_HTTP_ADDR=127.0.0.1:%d", port))
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			t.Log("tally:", sc.Text())
		}
	}()
	p := &process{cmd: cmd, addr: fmt.Sprintf("http://127.0.0.1:%d", port)}
	t.Cleanup(func() { p.kill() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(p.addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("tally subprocess not ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *process) kill() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.cmd.Wait()
	}
}

func call(t *testing.T, method, url, token string, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, url, err)
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// A process killed with SIGKILL, then Redis flushed, then restarted: every
// acknowledged session is readable, usage is exact, and exactly the rest of
// the quota is admitted (invariant 2).
func TestKillNineThenRedisFlushLosesNothing(t *testing.T) {
	redisAddr, _ := testenv.StartRedis(t)
	const secret = "durability-test-secret-0123456789"
	env := map[string]string{
		"TALLY_DATABASE_URL": testenv.PostgresURL(t),
		"TALLY_REDIS_URL":    testenv.RedisURL(redisAddr),
		"TALLY_JWT_SECRET":   secret,
		"TALLY_ADMIN_TOKEN":  "durability-test-admin-0123456789",
		"TALLY_LOG_LEVEL":    "warn",
	}
	tok, err := transport.IssueToken([]byte(secret), "durable", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	body := `{"title":"t","language":"en","stt_provider":"google"}`

	p := startProcess(t, env)
	var acked []string
	for i := 0; i < 7; i++ {
		status, b := call(t, http.MethodPost, p.addr+"/api/v1/sessions", tok, body)
		if status != http.StatusOK {
			t.Fatalf("create %d: %d %s", i, status, b)
		}
		var s struct{ ID string }
		_ = json.Unmarshal(b, &s)
		acked = append(acked, s.ID)
	}
	p.kill() // no shutdown, no flush of anything

	rc := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rc.Close()
	if err := rc.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}

	p = startProcess(t, env)
	for _, id := range acked {
		if status, b := call(t, http.MethodGet, p.addr+"/api/v1/sessions/"+id, tok, ""); status != http.StatusOK {
			t.Errorf("acknowledged session %s after kill -9: %d %s", id, status, b)
		}
	}
	status, b := call(t, http.MethodGet, p.addr+"/api/v1/usage", tok, "")
	var u struct {
		Sessions struct{ Used int } `json:"sessions"`
	}
	_ = json.Unmarshal(b, &u)
	if status != http.StatusOK || u.Sessions.Used != 7 {
		t.Fatalf("usage after restart: %d %s, want 7 sessions", status, b)
	}

	var mu sync.Mutex
	counts := map[int]int{}
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, _ := call(t, http.MethodPost, p.addr+"/api/v1/sessions", tok, body)
			mu.Lock()
			counts[status]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if counts[http.StatusOK] != 3 || counts[http.StatusForbidden] != 7 {
		t.Fatalf("after restart, 10 concurrent creates with 3 left: %v, want 3×200 and 7×403", counts)
	}
}

// SIGTERM drains: the process exits 0 on its own, and every create that
// was answered 200 before or during the drain is in the store afterwards.
func TestSIGTERMDrainsAndExitsCleanly(t *testing.T) {
	const secret = "shutdown-test-secret-0123456789abcdef"
	env := map[string]string{
		"TALLY_DATA_DIR":    t.TempDir(),
		"TALLY_JWT_SECRET":  secret,
		"TALLY_ADMIN_TOKEN": "shutdown-test-admin-0123456789abcdef",
		"TALLY_LOG_LEVEL":   "warn",
	}
	tok, _ := transport.IssueToken([]byte(secret), "drain", time.Hour, time.Now())
	p := startProcess(t, env)
	if status, b := call(t, http.MethodPut, p.addr+"/admin/v1/users/drain", env["TALLY_ADMIN_TOKEN"], `{"plan":"enterprise"}`); status != http.StatusOK {
		t.Fatalf("provision: %d %s", status, b)
	}
	body := `{"title":"t","language":"en","stt_provider":"google"}`
	var ok atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest(http.MethodPost, p.addr+"/api/v1/sessions", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					return // the listener is closed: the process is draining
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusOK:
					ok.Add(1)
				case http.StatusServiceUnavailable:
				default:
					t.Errorf("during drain: %d", resp.StatusCode)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("tally exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("tally did not exit within 20s of SIGTERM")
	}
	close(stop)
	wg.Wait()
	if ok.Load() == 0 {
		t.Fatal("no create succeeded before SIGTERM: the test proved nothing")
	}

	p = startProcess(t, env)
	status, b := call(t, http.MethodGet, p.addr+"/api/v1/usage", tok, "")
	var u struct {
		Sessions struct{ Used int64 } `json:"sessions"`
	}
	_ = json.Unmarshal(b, &u)
	if status != http.StatusOK || u.Sessions.Used != ok.Load() {
		t.Fatalf("after restart: %d %s; want %d sessions (every 200 durable)", status, b, ok.Load())
	}
}
