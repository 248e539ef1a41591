package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"
	jsonv2 "github.com/go-json-experiment/json"

	"github.com/tally-dev/tally/app"
	"github.com/tally-dev/tally/config"
)

// The servers under test run in child processes (this same binary,
// re-executed with a hidden command) rather than in the benchmark's own
// process: the load client's goroutines, allocations and GC would otherwise
// be mixed into the server's, and /proc/<pid>/status would measure both.
const (
	cmdServeGin   = "__serve-gin"
	cmdServeTally = "__serve-tally"
)

// IsChildCommand reports whether args[0] names one of the hidden server
// commands (for a test binary's TestMain, which must dispatch them too).
func IsChildCommand(arg string) bool { return arg == cmdServeGin || arg == cmdServeTally }

// The child → parent protocol is lines on the child's stdout: a Tally
// child first says "ops ADDR", where its ops listener (/metrics) is; every
// child then says "listening ADDR" once it serves, and "gc-done" after each
// forced GC.
const (
	lineOps       = "ops "
	lineListening = "listening "
	lineGCDone    = "gc-done"
)

// runChild serves until ctx is done (SIGINT/SIGTERM, wired by the caller).
func runChild(ctx context.Context, name string, stdout, stderr io.Writer) error {
	var out sync.Mutex
	say := func(s string) {
		out.Lock()
		defer out.Unlock()
		fmt.Fprintln(stdout, s)
	}
	switch name {
	case cmdServeGin:
		return serveGin(ctx, say)
	case cmdServeTally:
		return serveTally(ctx, say, stderr)
	}
	return fmt.Errorf("unknown hidden command %q", name)
}

// onGCRequest runs a full GC and returns freed memory to the OS whenever
// the parent asks (SIGUSR1), then says so: the memory phase reads RSS
// both as the operator would see it and after such a GC, which is what
// the live actors really keep.
func onGCRequest(ctx context.Context, say func(string)) {
	ch := gcSignal()
	if ch == nil {
		return
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				runtime.GC()
				debug.FreeOSMemory()
				say(lineGCDone)
			}
		}
	}()
}

// serveTally is a whole Tally, built by app.New from TALLY_* variables
// exactly as `tally serve` does, on TALLY_HTTP_ADDR (port 0 for a free
// one), with its ops listener on TALLY_OPS_ADDR when that is set.
func serveTally(ctx context.Context, say func(string), stderr io.Writer) error {
	cfg, err := config.Load(os.Getenv)
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return err
	}
	var opsLn net.Listener
	if cfg.OpsAddr != "" {
		if opsLn, err = net.Listen("tcp", cfg.OpsAddr); err != nil {
			ln.Close()
			return err
		}
	}
	a, err := app.New(ctx, cfg, log)
	if err != nil {
		ln.Close()
		if opsLn != nil {
			opsLn.Close()
		}
		return err
	}
	defer a.Close()
	// The handler first: the parent may ask for a GC as soon as it reads
	// the address (a signal before signal.Notify was lost, and the memory
	// phase timed out waiting for its GC).
	onGCRequest(ctx, say)
	if opsLn != nil {
		say(lineOps + opsLn.Addr().String()) // before "listening": the parent stops reading for it there
	}
	say(lineListening + ln.Addr().String())
	return a.Run(ctx, ln, opsLn)
}

// ginSession is the baseline's answer: a small object marshalled from a
// struct, because gin.H (a map) costs measurably more to encode and Tally
// does not use it either (docs/performance.md).
type ginSession struct {
	ID          string `json:"id"`
	Title       string `json:"title"`
	Language    string `json:"language"`
	STTProvider string `json:"stt_provider"`
	Status      string `json:"status"`
}

// ginNewSession is the body Tally's create decodes (domain.NewSession).
type ginNewSession struct {
	Title       string `json:"title"`
	Language    string `json:"language"`
	STTProvider string `json:"stt_provider"`
}

// ginCreate is "Gin decoding the same body with no accounting": the same
// size cap and strict decoding as Tally's transport (the v2 JSON decoder:
// unknown, case-variant and duplicate names, trailing data and text that
// is not Unicode refused), no auth, no actor, no store.
func ginCreate(c *gin.Context) {
	body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, 64<<10))
	if err != nil {
		c.Data(http.StatusRequestEntityTooLarge, "application/json", []byte(`{"detail":{"error":"payload_too_large"}}`))
		return
	}
	var in ginNewSession
	if err := jsonv2.Unmarshal(body, &in, jsonv2.RejectUnknownMembers(true)); err != nil {
		c.Data(http.StatusBadRequest, "application/json", []byte(`{"detail":{"error":"bad_request"}}`))
		return
	}
	out, err := json.Marshal(ginSession{ID: "00000000-0000-7000-8000-000000000000", Title: in.Title,
		Language: in.Language, STTProvider: in.STTProvider, Status: "created"})
	if err != nil {
		c.Status(http.StatusInternalServerError)
		return
	}
	c.Data(http.StatusOK, "application/json; charset=utf-8", out)
}

// serveGin is the bare Gin baseline: gin.New() (no logger, no recovery) in
// release mode, behind the same http.Server settings as app.Serve.
func serveGin(ctx context.Context, say func(string)) error {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.POST("/api/v1/sessions", ginCreate)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: r, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	// The handler first: the parent may ask for a GC as soon as it reads
	// the address (a signal before signal.Notify was lost, and the memory
	// phase timed out waiting for its GC).
	onGCRequest(ctx, say)
	say(lineListening + ln.Addr().String())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// child is a running server child process.
type child struct {
	name    string
	cmd     *exec.Cmd
	addr    string
	opsAddr string // a Tally child's ops listener; "" for the others
	logPath string
	gcDone  chan struct{}
	exited  chan struct{}
	waitErr error
	stopped bool
}

// startChild re-executes this binary with a hidden command and env added
// to a copy of this process's environment without its TALLY_* and GOGC
// variables (so that nothing from the caller's shell changes the
// configuration under test). It returns once the child says where it
// listens. The child's stderr goes to logPath.
func startChild(ctx context.Context, exe, name string, env []string, logPath string) (*child, error) {
	return launch(ctx, name, exec.Command(exe, name), env, logPath, "")
}

// startServe runs `bin serve`, a tally binary (the cpu phase builds them),
// with env as startChild does, on a free loopback port; it returns once
// /readyz answers 200 (the binary says nothing on stdout).
func startServe(ctx context.Context, bin string, env []string, logPath string) (*child, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	env = append(slices.Clone(env), "TALLY_HTTP_ADDR="+addr) // the last of a duplicated variable wins
	return launch(ctx, filepath.Base(bin)+" serve", exec.Command(bin, "serve"), env, logPath, addr)
}

// pollReady sends addr on addrc once http://addr/readyz answers 200, and
// gives up when stop is closed.
func pollReady(addr string, addrc chan<- string, stop <-chan struct{}) {
	client := &http.Client{Timeout: 2 * time.Second}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		resp, err := client.Get("http://" + addr + "/readyz")
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			addrc <- addr
			return
		}
	}
}

// launch starts cmd with env and waits until it serves: until it prints
// "listening ADDR" (knownAddr empty), or until knownAddr is ready.
func launch(ctx context.Context, name string, cmd *exec.Cmd, env []string, logPath, knownAddr string) (*child, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Env = append(filterEnv(os.Environ()), env...)
	cmd.Stdout = pw
	cmd.Stderr = logf
	setChildAttrs(cmd)
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	pw.Close()
	c := &child{name: name, cmd: cmd, logPath: logPath, gcDone: make(chan struct{}, 4), exited: make(chan struct{})}
	addrc := make(chan string, 1)
	go func() {
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, lineOps):
				// Written before addrc is sent to, and read after it is
				// received from: the channel orders the two.
				c.opsAddr = strings.TrimPrefix(line, lineOps)
			case strings.HasPrefix(line, lineListening):
				addrc <- strings.TrimPrefix(line, lineListening)
			case line == lineGCDone:
				select {
				case c.gcDone <- struct{}{}:
				default:
				}
			}
		}
	}()
	go func() {
		c.waitErr = cmd.Wait()
		close(c.exited)
	}()
	if knownAddr != "" {
		stopPoll := make(chan struct{})
		defer close(stopPoll)
		go pollReady(knownAddr, addrc, stopPoll)
	}
	t := time.NewTimer(2 * time.Minute) // migrations on a busy machine
	defer t.Stop()
	select {
	case c.addr = <-addrc:
		return c, nil
	case <-c.exited:
		return nil, fmt.Errorf("%s exited before serving (%v); its log (%s) ends:\n%s", name, c.waitErr, logPath, fileTail(logPath, 15))
	case <-t.C:
		c.stop()
		return nil, fmt.Errorf("%s did not start serving within 2m; its log (%s) ends:\n%s", name, logPath, fileTail(logPath, 15))
	case <-ctx.Done():
		c.stop()
		return nil, ctx.Err()
	}
}

// filterEnv drops TALLY_* and GOGC from an environment.
func filterEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if strings.HasPrefix(kv, "TALLY_") || strings.HasPrefix(kv, "GOGC=") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) url() string { return "http://" + c.addr }

// opsURL is the base URL of a Tally child's ops listener (/metrics).
func (c *child) opsURL() string { return "http://" + c.opsAddr }

// gc asks the child for a full GC with memory returned to the OS, and
// waits for it to finish.
func (c *child) gc(ctx context.Context) error {
	if err := signalGC(c.cmd.Process); err != nil {
		return err
	}
	t := time.NewTimer(time.Minute)
	defer t.Stop()
	select {
	case <-c.gcDone:
		return nil
	case <-c.exited:
		return fmt.Errorf("%s exited", c.name)
	case <-t.C:
		return fmt.Errorf("%s did not finish a forced GC within 1m", c.name)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// alive reports whether the child is still running.
func (c *child) alive() bool {
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// stop asks the child to drain and exit (SIGTERM), and kills it if it has
// not exited in time (stopping 100k+ live actors takes a while). It
// returns the child's exit error, if any, other than being stopped.
func (c *child) stop() error {
	if c.stopped {
		return nil
	}
	c.stopped = true
	select {
	case <-c.exited:
		return c.exitError()
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(45 * time.Second)
	defer t.Stop()
	select {
	case <-c.exited:
		return c.exitError()
	case <-t.C:
		_ = c.cmd.Process.Kill()
		<-c.exited
		return fmt.Errorf("%s did not exit within 45s of SIGTERM; killed", c.name)
	}
}

func (c *child) exitError() error {
	if c.waitErr == nil {
		return nil
	}
	var ee *exec.ExitError
	if errors.As(c.waitErr, &ee) && !ee.Exited() {
		return nil // killed by a signal we (or the terminal) sent
	}
	return fmt.Errorf("%s: %w", c.name, c.waitErr)
}

// fileTail is the last n lines of a file, for error messages.
func fileTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return tail(string(b), n)
}
