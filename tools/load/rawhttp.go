package load

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"time"
)

// The creates go out through this minimal HTTP/1.1 client, not net/http.
//
// Measured on the 2-core machine this tool is for, against a bare net/http
// server answering a 403: net/http's Transport cost the client ~25µs of CPU
// per request, more than the server's ~21µs, so the client took more than
// half the machine and the "bare server ceiling" was really the client's.
// Its two goroutines per connection and the channel hand-offs between them
// and the caller are most of that. Here each worker owns one keep-alive
// connection and a request is one write of bytes rendered once per user and
// one buffered read of the answer, on the worker's goroutine.
//
// It speaks just what a load run needs: one request at a time per
// connection, Content-Length or chunked answers, Connection: close. Setup
// and verification requests still use net/http (Config.StdClient switches
// the creates back to it, for comparison).

// renderRequest is the complete wire form of one user's create.
func renderRequest(target *url.URL, bearer string, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tally-load\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
		target.RequestURI(), target.Host, bearer, len(body))
	b.Write(body)
	return b.Bytes()
}

// errMalformed is an answer this client cannot parse.
var errMalformed = errors.New("malformed HTTP response")

// rawConn is one worker's keep-alive connection. Not safe for concurrent
// use: it belongs to its worker.
type rawConn struct {
	dial    func() (net.Conn, error)
	timeout time.Duration
	c       net.Conn
	br      *bufio.Reader
	reused  bool // at least one answer was read on c
	// retryAfter: the last answer carried a Retry-After header.
	retryAfter bool
}

// newDialer dials the target's host:port, over TLS for https.
func newDialer(target *url.URL, timeout time.Duration) func() (net.Conn, error) {
	host := target.Host
	if target.Port() == "" {
		if target.Scheme == "https" {
			host = net.JoinHostPort(target.Hostname(), "443")
		} else {
			host = net.JoinHostPort(target.Hostname(), "80")
		}
	}
	d := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	if target.Scheme == "https" {
		td := &tls.Dialer{NetDialer: d, Config: &tls.Config{ServerName: target.Hostname(), NextProtos: []string{"http/1.1"}}}
		return func() (net.Conn, error) { return td.Dial("tcp", host) }
	}
	return func() (net.Conn, error) { return d.Dial("tcp", host) }
}

func (r *rawConn) close() {
	if r.c != nil {
		_ = r.c.Close()
		r.c = nil
	}
}

// do sends req and reads the answer, keeping up to len(buf) bytes of its
// body in buf. now is the caller's clock reading (saves one).
func (r *rawConn) do(req, buf []byte, now time.Time) (status, n int, err error) {
	for attempt := 0; ; attempt++ {
		if r.c == nil {
			c, err := r.dial()
			if err != nil {
				return 0, 0, err
			}
			r.c, r.reused = c, false
			if r.br == nil {
				r.br = bufio.NewReaderSize(c, 8<<10)
			} else {
				r.br.Reset(c)
			}
		}
		if err := r.c.SetDeadline(now.Add(r.timeout)); err != nil {
			r.close()
			return 0, 0, err
		}
		if _, err := r.c.Write(req); err != nil {
			reused := r.reused
			r.close()
			if reused && attempt == 0 {
				// The server closed the kept-alive connection before this
				// request: nothing reached it, so sending again is safe.
				continue
			}
			return 0, 0, err
		}
		status, n, keep, err := r.readResponse(buf)
		if err != nil {
			r.close()
			return 0, 0, err
		}
		if keep {
			r.reused = true
		} else {
			r.close()
		}
		return status, n, nil
	}
}

// readResponse reads one answer: status line, headers, body.
func (r *rawConn) readResponse(buf []byte) (status, n int, keep bool, err error) {
	for {
		line, err := r.br.ReadSlice('\n')
		if err != nil {
			return 0, 0, false, err
		}
		// "HTTP/1.1 200 OK\r\n"
		if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
			return 0, 0, false, errMalformed
		}
		status, err = strconv.Atoi(string(line[9:12]))
		if err != nil {
			return 0, 0, false, errMalformed
		}
		keep = line[7] == '1' // HTTP/1.1 keeps the connection unless told
		length, chunked := -1, false
		r.retryAfter = false
		for {
			h, err := r.br.ReadSlice('\n')
			if err != nil {
				return 0, 0, false, err
			}
			h = bytes.TrimRight(h, "\r\n")
			if len(h) == 0 {
				break
			}
			name, value, ok := bytes.Cut(h, []byte(":"))
			if !ok {
				return 0, 0, false, errMalformed
			}
			value = bytes.TrimSpace(value)
			switch {
			case bytes.EqualFold(name, []byte("Content-Length")):
				if length, err = strconv.Atoi(string(value)); err != nil || length < 0 {
					return 0, 0, false, errMalformed
				}
			case bytes.EqualFold(name, []byte("Transfer-Encoding")):
				chunked = bytes.Contains(bytes.ToLower(value), []byte("chunked"))
			case bytes.EqualFold(name, []byte("Retry-After")):
				r.retryAfter = len(value) > 0
			case bytes.EqualFold(name, []byte("Connection")):
				v := bytes.ToLower(value)
				if bytes.Contains(v, []byte("close")) {
					keep = false
				} else if bytes.Contains(v, []byte("keep-alive")) {
					keep = true
				}
			}
		}
		switch {
		case status >= 100 && status < 200:
			continue // an interim answer (100 Continue): the real one follows
		case status == 204 || status == 304:
			return status, 0, keep, nil
		case chunked:
			n, err = r.readChunked(buf)
		case length >= 0:
			n, err = r.readBody(buf, length)
		default:
			// No length: the body runs to the end of the connection.
			n, err = readInto(r.br, buf)
			keep = false
		}
		return status, n, keep, err
	}
}

// readBody reads length bytes, keeping what fits in buf.
func (r *rawConn) readBody(buf []byte, length int) (int, error) {
	n := min(length, len(buf))
	if _, err := io.ReadFull(r.br, buf[:n]); err != nil {
		return 0, err
	}
	if rest := length - n; rest > 0 {
		if _, err := r.br.Discard(rest); err != nil {
			return n, err
		}
	}
	return n, nil
}

// readChunked reads a chunked body and its trailers.
func (r *rawConn) readChunked(buf []byte) (int, error) {
	n := 0
	for {
		line, err := r.br.ReadSlice('\n')
		if err != nil {
			return n, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i]
		}
		size, err := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
		if err != nil || size < 0 {
			return n, errMalformed
		}
		if size == 0 {
			for { // trailers, up to the empty line
				t, err := r.br.ReadSlice('\n')
				if err != nil {
					return n, err
				}
				if len(bytes.TrimRight(t, "\r\n")) == 0 {
					return n, nil
				}
			}
		}
		k, err := r.readBody(buf[n:], int(size))
		n += k
		if err != nil {
			return n, err
		}
		if _, err := r.br.Discard(2); err != nil { // the chunk's CRLF
			return n, err
		}
	}
}
