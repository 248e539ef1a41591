package transport

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// A forwarded create's session id is a UUIDv7 of its time, like the
// core's own, and two are never the same.
func TestNewSessionIDIsAUUIDv7(t *testing.T) {
	now := time.Date(2026, 11, 30, 7, 30, 0, 123e6, time.UTC)
	seen := map[string]bool{}
	for range 1000 {
		id := newSessionID(now)
		u, err := uuid.Parse(id)
		if err != nil || u.Version() != 7 || u.Variant() != uuid.RFC4122 || id != u.String() {
			t.Fatalf("%q: %v version %d variant %v", id, err, u.Version(), u.Variant())
		}
		if sec, nsec := u.Time().UnixTime(); time.Unix(sec, nsec).UnixMilli() != now.UnixMilli() {
			t.Fatalf("%q carries %v, want %v", id, time.Unix(sec, nsec).UTC(), now)
		}
		if seen[id] {
			t.Fatalf("%q drawn twice", id)
		}
		seen[id] = true
	}
}

// A signature covers every field: changing any one of them, or the key,
// changes it.
func TestForwardSignatureCoversEveryField(t *testing.T) {
	a := newNodeAuth([]byte("cluster-secret-0123456789abcdef-0123456789"))
	fields := [6]string{"node-b", "1790000000000", "4500", "0190b6a4-6d1e-7b8e-9c39-5d2b7a3f1e20", "POST", "/api/v1/sessions"}
	sign := func(a *nodeAuth, f [6]string) string { return a.sign(f[0], f[1], f[2], f[3], f[4], f[5]) }
	base := sign(a, fields)
	if base != sign(a, fields) {
		t.Fatal("the same fields signed twice differ")
	}
	for i := range fields {
		f := fields
		f[i] += "x"
		if sign(a, f) == base {
			t.Errorf("field %d is not covered", i)
		}
	}
	// Moving text from one field to the next is another message.
	f := fields
	f[0], f[1] = "node-b1", "790000000000"
	if sign(a, f) == base {
		t.Error("fields can run into each other")
	}
	if sign(newNodeAuth([]byte("another-cluster-secret-0123456789abcdef")), fields) == base {
		t.Error("another secret signs the same")
	}
}

// A kept connection that the owner closed while it was idle is never used
// again: nothing could be sent on it, and a create sent on it would have
// to be looked up instead of answered.
func TestNodePoolDropsConnectionsTheOwnerClosed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	nc := newNodeClient()
	base := &url.URL{Scheme: "http", Host: ln.Addr().String()}
	c, err := nc.dial(context.Background(), base, time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	server := <-accepted
	pool := nc.pool(base)
	pool.put(c)
	if got := pool.get(); got != c {
		t.Fatalf("an open idle connection was not reused: %v", got)
	}
	pool.put(c)

	_ = server.Close()
	// The FIN travels over loopback; wait (bounded) until it is seen.
	for i := 0; open(c.raw); i++ {
		if i == 500 {
			t.Fatal("the owner's close was never seen")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := pool.get(); got != nil {
		t.Fatalf("got a connection the owner closed")
	}
	if _, err := c.conn.Write([]byte("x")); err == nil {
		t.Error("the dropped connection was not closed")
	}
}

// An owner's answer is read as net/http writes it, and anything else is
// refused (the forwarding node then treats the answer as lost).
func TestAnswerRead(t *testing.T) {
	for _, tc := range []struct {
		name, raw string
		status    int
		headers   [][2]string
		body      string
		close     bool
		bad       bool
	}{
		{name: "content-length",
			raw:    "HTTP/1.1 403 Forbidden\r\nCache-Control: no-store\r\nContent-Type: application/json; charset=utf-8\r\nX-Request-Id: r1\r\nX-Tally-Node: a\r\nDate: Mon, 30 Nov 2026 07:00:00 GMT\r\nContent-Length: 2\r\n\r\n{}",
			status: 403, headers: [][2]string{{"Cache-Control", "no-store"}, {"Content-Type", "application/json; charset=utf-8"}, {"X-Request-Id", "r1"}, {"X-Tally-Node", "a"}, {"Date", "Mon, 30 Nov 2026 07:00:00 GMT"}},
			body: "{}"},
		{name: "chunked, lower-case names",
			raw:    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-custom:  v \r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
			status: 200, headers: [][2]string{{"X-Custom", "v"}}, body: "abcde"},
		{name: "connection close",
			raw:    "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n",
			status: 503, headers: [][2]string{{"Retry-After", "1"}}, close: true},
		{name: "HTTP/1.0", raw: "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", status: 200, body: "x", close: true},
		{name: "no length", raw: "HTTP/1.1 200 OK\r\n\r\nx", bad: true},
		{name: "1xx", raw: "HTTP/1.1 100 Continue\r\n\r\n", bad: true},
		{name: "not HTTP", raw: "SSH-2.0-OpenSSH\r\n\r\n", bad: true},
		{name: "cut short", raw: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", bad: true},
		{name: "gzip", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", bad: true},
		{name: "no colon", raw: "HTTP/1.1 200 OK\r\nbroken\r\nContent-Length: 0\r\n\r\n", bad: true},
		{name: "too large", raw: "HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n", bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := answer{body: new(bytes.Buffer)}
			err := a.read(bufio.NewReader(strings.NewReader(tc.raw)))
			if tc.bad {
				if err == nil {
					t.Fatalf("read %q without an error", tc.raw)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := append([][2]string(nil), a.header[:a.headers]...)
			if a.status != tc.status || !slices.Equal(got, tc.headers) || a.body.String() != tc.body || a.close != tc.close {
				t.Errorf("got %d %q %q close=%v", a.status, got, a.body, a.close)
			}
		})
	}
}
