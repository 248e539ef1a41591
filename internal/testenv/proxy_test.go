package testenv_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/tally-dev/tally/internal/testenv"
)

// lineServer answers each line it reads with the same line, and remembers
// how many lines it received: a lost reply must still have been acted on.
type lineServer struct {
	ln       net.Listener
	mu       sync.Mutex
	received int
}

func startLineServer(t *testing.T) *lineServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &lineServer{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				r := bufio.NewReader(conn)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					s.mu.Lock()
					s.received++
					s.mu.Unlock()
					if _, err := io.WriteString(conn, line); err != nil {
						return
					}
				}
			})
		}
	})
	return s
}

func (s *lineServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.received
}

type lineClient struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialLine(t *testing.T, addr string) *lineClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &lineClient{conn: conn, r: bufio.NewReader(conn)}
}

// call sends a line and waits up to wait for the echo.
func (c *lineClient) call(line string, wait time.Duration) (string, error) {
	_ = c.conn.SetDeadline(time.Now().Add(wait))
	if _, err := io.WriteString(c.conn, line+"\n"); err != nil {
		return "", err
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return got[:len(got)-1], nil
}

func TestProxyLatency(t *testing.T) {
	srv := startLineServer(t)
	p := testenv.Proxy(t, srv.ln.Addr().String())
	c := dialLine(t, p.Addr())
	if got, err := c.call("a", 2*time.Second); err != nil || got != "a" {
		t.Fatalf("through a clean proxy: %q, %v", got, err)
	}

	const latency = 200 * time.Millisecond
	name := p.Latency(t, testenv.Downstream, latency, 0)
	start := time.Now()
	if got, err := c.call("b", 5*time.Second); err != nil || got != "b" {
		t.Fatalf("with latency: %q, %v", got, err)
	}
	if d := time.Since(start); d < latency {
		t.Fatalf("a round trip with %s of latency took %s", latency, d)
	}

	p.Remove(t, name)
	if got, err := c.call("c", 2*time.Second); err != nil || got != "c" {
		t.Fatalf("after removing the latency: %q, %v", got, err)
	}
}

// TestProxyDropReplies is the unknown outcome: the server received and
// acted on the request, the client never hears back.
func TestProxyDropReplies(t *testing.T) {
	srv := startLineServer(t)
	p := testenv.Proxy(t, srv.ln.Addr().String())
	c := dialLine(t, p.Addr())
	if _, err := c.call("a", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	p.DropReplies(t)
	_, err := c.call("b", 300*time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("with replies dropped the call ended with %v, want a timeout", err)
	}
	if n := srv.count(); n != 2 {
		t.Fatalf("the server received %d lines, want 2: the request must arrive, only the reply is lost", n)
	}
	p.Reset()
	c2 := dialLine(t, p.Addr())
	if got, err := c2.call("c", 2*time.Second); err != nil || got != "c" {
		t.Fatalf("after Reset: %q, %v", got, err)
	}
}

func TestProxyCutAndRestore(t *testing.T) {
	srv := startLineServer(t)
	p := testenv.Proxy(t, srv.ln.Addr().String())
	c := dialLine(t, p.Addr())
	if _, err := c.call("a", 2*time.Second); err != nil {
		t.Fatal(err)
	}

	p.Disable()
	if _, err := c.call("b", 2*time.Second); err == nil {
		t.Fatal("an open connection survived Disable")
	}
	if conn, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		_ = conn.Close()
		t.Fatal("a new connection was accepted while the proxy was disabled")
	}

	p.Enable(t)
	c2 := dialLine(t, p.Addr())
	if got, err := c2.call("c", 2*time.Second); err != nil || got != "c" {
		t.Fatalf("after Enable: %q, %v", got, err)
	}

	// Reset and a cut reply close the connection instead of hanging it.
	p.ResetPeer(t, testenv.Downstream, 0)
	if _, err := c2.call("d", 2*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("with reset_peer the call ended with %v, want the connection closed", err)
	}
	p.Reset()
	c3 := dialLine(t, p.Addr())
	p.LimitData(t, testenv.Downstream, 3)
	if _, err := c3.call("0123456789", 2*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("with limit_data the call ended with %v, want the connection closed mid-reply", err)
	}
}
