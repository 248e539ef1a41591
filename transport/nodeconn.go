package transport

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// The connections between nodes
//
// A forward is one HTTP/1.1 exchange on a kept-alive connection to the
// owner, made by the goroutine serving the client's request: it writes the
// request (one write for anything up to 4 KiB), reads the answer with
// http.ReadResponse, and puts the connection back. net/http's Transport
// hands every request to a writer goroutine and every answer back from a
// reader goroutine, and allocates per request for what a forward does not
// need (redirects, proxies, cookies, retries); measured over loopback that
// made the forward cost more than the client's own request and the
// owner's answer together (docs/decisions/0023-forward-once-to-the-owner.md).
//
// Being the only one to write on a connection also makes "was it sent?"
// exact, which is what a create's answer being lost turns on (forward.go):
// a write that fails never delivered the whole request, so the owner
// cannot have acted on it; once the write succeeded, it may have.

const (
	// maxIdlePerOwner bounds the kept connections to one owner: enough
	// for every request in flight of a busy node.
	maxIdlePerOwner = 1024
	// idleLifetime is how long an unused connection is kept. It is well
	// under the server's idle timeout (2 minutes, app.Serve), so an owner
	// never closes a connection this node is about to use.
	idleLifetime = 30 * time.Second
)

var errNodeAnswerTooLarge = errors.New("the owner's answer is over 1 MiB")

// nodeClient keeps connections to the other nodes, per owner.
type nodeClient struct {
	dialer net.Dialer
	pools  sync.Map // owner's host:port → *nodePool
}

func newNodeClient() *nodeClient {
	return &nodeClient{dialer: net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}}
}

type nodePool struct {
	mu   sync.Mutex
	idle []*nodeConn // most recently used last
}

type nodeConn struct {
	conn      net.Conn
	raw       syscall.RawConn // for open's peek; nil: none
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
}

// outRequest is a request to an owner: a method, a request URI, header
// lines (at most a dozen: what forward sends) and a body.
type outRequest struct {
	method, uri string
	header      [12][2]string
	headers     int
	body        []byte
}

func (r *outRequest) add(name, value string) {
	if value != "" {
		r.header[r.headers] = [2]string{name, value}
		r.headers++
	}
}

// exchange sends req to the owner at base and reads its whole answer into
// ans, whose body is a pooled buffer the caller puts back. sent reports
// whether the owner may have received the whole request: false means it
// certainly did not. ctx bounds the dial; deadline bounds the exchange.
func (nc *nodeClient) exchange(ctx context.Context, base *url.URL, deadline time.Time, req *outRequest, ans *answer) (sent bool, err error) {
	pool := nc.pool(base)
	var c *nodeConn
	for attempt := 0; ; attempt++ {
		c = pool.get()
		reused := c != nil
		if !reused {
			if c, err = nc.dial(ctx, base, deadline); err != nil {
				return false, err
			}
		}
		if err = c.conn.SetDeadline(deadline); err == nil {
			err = req.write(c.bw, base.Host)
		}
		if err == nil {
			break
		}
		// A write that failed did not deliver the request whole: the
		// owner cannot have acted on it. On a kept connection that the
		// owner closed as it was taken, a new one is tried, once.
		c.conn.Close()
		if !reused || attempt > 0 {
			return false, err
		}
	}
	ans.body = answerBuffers.Get().(*bytes.Buffer)
	ans.body.Reset()
	if err = ans.read(c.br); err != nil {
		c.conn.Close()
		return true, err
	}
	if ans.close {
		c.conn.Close()
	} else {
		pool.put(c)
	}
	return true, nil
}

// answer is an owner's answer: its status, header lines (the owner is a
// Tally node, whose answers have a handful) and body.
type answer struct {
	status  int
	header  [16][2]string
	headers int
	close   bool // the owner closes the connection after it
	body    *bytes.Buffer
}

var errBadAnswer = errors.New("malformed answer from the owner")

// has reports whether the answer has a header of that (canonical) name.
func (a *answer) has(name string) bool { return a.named(name, a.headers) }

// named reports whether a header before the i-th has that name.
func (a *answer) named(name string, i int) bool {
	for _, kv := range a.header[:i] {
		if kv[0] == name {
			return true
		}
	}
	return false
}

// read reads one HTTP/1.1 answer to a request that is not HEAD. It reads
// what Go's net/http server writes — a status line, header lines, a body
// of Content-Length bytes or chunked — and refuses anything else: a node
// that gets an answer it cannot read treats it as lost.
func (a *answer) read(br *bufio.Reader) error {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return err
	}
	// "HTTP/1.1 403 Forbidden\r\n"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return errBadAnswer
	}
	a.close = line[7] == '0' // HTTP/1.0 keeps no connection unless asked
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil || status < 200 || status > 599 {
		return errBadAnswer // no 1xx: nothing this node sends asks for one
	}
	a.status = status
	length, chunked := int64(-1), false
	for {
		line, err = br.ReadSlice('\n')
		if err != nil {
			return err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return errBadAnswer
		}
		name, value := line[:colon], bytes.TrimSpace(line[colon+1:])
		switch {
		case equalFold(name, "Content-Length"):
			if length, err = strconv.ParseInt(string(value), 10, 64); err != nil || length < 0 {
				return errBadAnswer
			}
			continue
		case equalFold(name, "Transfer-Encoding"):
			if !equalFold(value, "chunked") {
				return errBadAnswer
			}
			chunked = true
			continue
		case equalFold(name, "Connection"):
			a.close = equalFold(value, "close") || (a.close && !equalFold(value, "keep-alive"))
			continue
		}
		if a.headers == len(a.header) {
			return errBadAnswer
		}
		a.header[a.headers] = [2]string{headerName(name), headerValue(value)}
		a.headers++
	}
	switch {
	case chunked: // never from a Tally node (gin sets Content-Length), but valid HTTP/1.1
		if err := readLimited(a.body, httputil.NewChunkedReader(br)); err != nil {
			return err
		}
		// The trailer section, empty from a Tally node, ends the answer.
		for {
			line, err = br.ReadSlice('\n')
			if err != nil {
				return err
			}
			if len(bytes.TrimRight(line, "\r\n")) == 0 {
				return nil
			}
		}
	case length > maxForwardAnswer:
		return errNodeAnswerTooLarge
	case length >= 0:
		a.body.Grow(int(length))
		b := a.body.AvailableBuffer()[:length]
		if _, err := io.ReadFull(br, b); err != nil {
			return err
		}
		a.body.Write(b)
		return nil
	default:
		return errBadAnswer // a body up to the connection's end is never kept-alive-safe
	}
}

func readLimited(dst *bytes.Buffer, r io.Reader) error {
	n, err := dst.ReadFrom(io.LimitReader(r, maxForwardAnswer+1))
	if err == nil && n > maxForwardAnswer {
		err = errNodeAnswerTooLarge
	}
	return err
}

// equalFold compares ASCII case-insensitively without allocating.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// headerName returns the canonical form of a header name, without
// allocating for the names a Tally node answers with.
func headerName(b []byte) string {
	switch string(b) { // no allocation: the compiler compares the bytes
	case "Content-Type":
		return "Content-Type"
	case "Cache-Control":
		return "Cache-Control"
	case "X-Content-Type-Options":
		return "X-Content-Type-Options"
	case headerRequestID:
		return headerRequestID
	case HeaderNode:
		return HeaderNode
	case "Retry-After":
		return "Retry-After"
	case "Www-Authenticate":
		return "Www-Authenticate"
	case "Date":
		return "Date"
	}
	return textproto.CanonicalMIMEHeaderKey(string(b))
}

// headerValue returns the value as a string, without allocating for the
// values every answer of a Tally node has.
func headerValue(b []byte) string {
	switch string(b) {
	case "application/json; charset=utf-8":
		return "application/json; charset=utf-8"
	case "no-store":
		return "no-store"
	case "nosniff":
		return "nosniff"
	case "1":
		return "1"
	}
	return string(b)
}

// write writes the request and flushes it.
func (r *outRequest) write(w *bufio.Writer, host string) error {
	w.WriteString(r.method)
	w.WriteByte(' ')
	w.WriteString(r.uri)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(host)
	w.WriteString("\r\n")
	for _, h := range r.header[:r.headers] {
		// Values come from headers this node parsed (net/http refuses
		// control characters in them) or made itself.
		w.WriteString(h[0])
		w.WriteString(": ")
		w.WriteString(h[1])
		w.WriteString("\r\n")
	}
	if len(r.body) > 0 || r.method == http.MethodPost || r.method == http.MethodPut {
		var n [20]byte
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(n[:0], int64(len(r.body)), 10))
		w.WriteString("\r\n")
	}
	w.WriteString("\r\n")
	w.Write(r.body)
	return w.Flush()
}

func (nc *nodeClient) pool(base *url.URL) *nodePool {
	key := base.Host
	if p, ok := nc.pools.Load(key); ok {
		return p.(*nodePool)
	}
	p, _ := nc.pools.LoadOrStore(key, &nodePool{})
	return p.(*nodePool)
}

func (nc *nodeClient) dial(ctx context.Context, base *url.URL, deadline time.Time) (*nodeConn, error) {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	host := base.Host
	if base.Port() == "" {
		host = net.JoinHostPort(base.Hostname(), "80")
	}
	conn, err := nc.dialer.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	c := &nodeConn{conn: conn, br: bufio.NewReader(conn), bw: bufio.NewWriter(conn)}
	if sc, ok := conn.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
	}
	return c, nil
}

// get returns the most recently used idle connection that is still open,
// or nil. Older ones than idleLifetime are closed.
func (p *nodePool) get() *nodeConn {
	now := time.Now()
	for {
		p.mu.Lock()
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			return nil
		}
		c := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		var stale []*nodeConn
		if now.Sub(c.idleSince) > idleLifetime {
			// The rest are older still.
			stale = append(stale, p.idle...)
			clear(p.idle)
			p.idle = p.idle[:0]
		}
		p.mu.Unlock()
		for _, s := range stale {
			s.conn.Close()
		}
		if stale != nil {
			c.conn.Close()
			return nil
		}
		if c.br.Buffered() == 0 && open(c.raw) {
			return c
		}
		// The owner closed it while it was idle (it restarted, or is
		// shutting down): nothing was sent on it, so take another.
		c.conn.Close()
	}
}

func (p *nodePool) put(c *nodeConn) {
	c.idleSince = time.Now()
	p.mu.Lock()
	var drop *nodeConn
	if len(p.idle) >= maxIdlePerOwner {
		drop = p.idle[0]
		copy(p.idle, p.idle[1:])
		p.idle = p.idle[:len(p.idle)-1]
	}
	p.idle = append(p.idle, c)
	p.mu.Unlock()
	if drop != nil {
		drop.conn.Close()
	}
}
