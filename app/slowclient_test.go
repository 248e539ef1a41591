package app_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// readTimeout is the TALLY_HTTP_READ_TIMEOUT of the slow-client tests:
// short, so that the tests are, and long enough that a loaded machine
// serves a create well within it.
const readTimeout = time.Second

// Bounds of "closed at the read deadline": the server cannot close sooner
// (its deadline starts after the client's clock did), so the lower slack
// only absorbs timer granularity; the upper one is generous for a machine
// running other tests.
const (
	earlySlack = 200 * time.Millisecond
	lateSlack  = 3 * time.Second
)

// stalledConn is a client that starts a request and stops sending.
type stalledConn struct {
	name   string
	start  time.Time // before the dial
	closed time.Time // when the server closed the connection
	answer string    // the status line the server sent before closing, if any
	err    error
}

// stall dials addr, sends head (a request cut short) and waits for the
// server to close the connection. ready is called once head is sent.
func stall(name, addr, head string, ready func()) *stalledConn {
	s := &stalledConn{name: name, start: time.Now()}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		s.err = err
		ready()
		return s
	}
	defer conn.Close()
	_, s.err = io.WriteString(conn, head)
	ready()
	if s.err != nil {
		return s
	}
	// A safety net only: the server must close well before it.
	_ = conn.SetReadDeadline(time.Now().Add(readTimeout + lateSlack + 5*time.Second))
	br := bufio.NewReader(conn)
	if line, err := br.ReadString('\n'); err == nil {
		s.answer = strings.TrimSpace(line)
	}
	_, err = io.Copy(io.Discard, br) // until the server closes
	s.closed = time.Now()
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		s.err = err // the server never closed it
	}
	return s
}

// checkClosedAtDeadline requires that the server closed s at its read
// deadline: not before, and not long after.
func checkClosedAtDeadline(t *testing.T, s *stalledConn) {
	t.Helper()
	if s.err != nil {
		t.Errorf("%s: %v", s.name, s.err)
		return
	}
	elapsed := s.closed.Sub(s.start)
	if elapsed < readTimeout-earlySlack || elapsed > readTimeout+lateSlack {
		t.Errorf("%s: closed after %v; want the read deadline (%v, -%v/+%v)", s.name, elapsed, readTimeout, earlySlack, lateSlack)
	}
}

func slowEnv(t *testing.T) map[string]string {
	env := embeddedEnv(t)
	env["TALLY_HTTP_READ_TIMEOUT"] = readTimeout.String()
	// Fewer in-flight slots than stalled bodies: a client sending its body
	// slowly must not hold one, or the steady client would be shed.
	env["TALLY_MAX_IN_FLIGHT"] = "2"
	return env
}

// A client that announces a body and sends one byte of it holds its
// connection only until the read deadline, with or without a token, on
// user and admin paths alike; a client that never finishes its headers
// likewise. Meanwhile another client's creates are served.
func TestSlowClientsAreCutOff(t *testing.T) {
	s := startServer(t, slowEnv(t))
	c := newClient(t)
	addr := strings.TrimPrefix(s.URL, "http://")
	if r := c.create(s, "steady"); r.Status != http.StatusOK { // provisions the user before the clock matters
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}

	post := func(path, token string) string {
		h := "POST " + path + " HTTP/1.1\r\nHost: tally\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
		if token != "" {
			h += "Authorization: Bearer " + token + "\r\n"
		}
		return h + "\r\n{"
	}
	cases := []struct {
		name, head string
		answer     string // the status line expected before the close; "" for any
	}{
		{"create with a token", post("/api/v1/sessions", c.token("slow")), "HTTP/1.1 408 Request Timeout"},
		{"create without a token", post("/api/v1/sessions", ""), "HTTP/1.1 401 Unauthorized"},
		{"admin path", post("/admin/v1/users/slow/reset-usage", testAdmin), "HTTP/1.1 408 Request Timeout"},
		{"headers never finished", "POST /api/v1/sessions HTTP/1.1\r\nHost: tally\r\nContent-Le", ""}, // net/http's own answer
	}
	const each = 2
	var (
		ready   sync.WaitGroup
		done    sync.WaitGroup
		mu      sync.Mutex
		stalled []*stalledConn
	)
	for _, tc := range cases {
		for range each {
			ready.Add(1)
			done.Add(1)
			go func() {
				defer done.Done()
				sc := stall(tc.name, addr, tc.head, ready.Done)
				mu.Lock()
				stalled = append(stalled, sc)
				mu.Unlock()
			}()
		}
	}
	ready.Wait()

	// The steady client, on its own connection, while the slow ones hang.
	var served []time.Time
	for range 5 {
		if r := c.create(s, "steady"); r.Status != http.StatusOK {
			t.Errorf("create while slow clients hang: %d %s", r.Status, r.Body)
		}
		served = append(served, time.Now())
	}
	metrics := opsGet(t, s, "/metrics")
	metricsAt := time.Now()
	done.Wait()

	firstClose := time.Time{}
	for _, sc := range stalled {
		checkClosedAtDeadline(t, sc)
		for _, tc := range cases {
			if tc.name == sc.name && tc.answer != "" && sc.answer != tc.answer {
				t.Errorf("%s: answered %q before closing, want %q", sc.name, sc.answer, tc.answer)
			}
		}
		if firstClose.IsZero() || sc.closed.Before(firstClose) {
			firstClose = sc.closed
		}
	}
	if len(stalled) != len(cases)*each {
		t.Fatalf("%d stalled connections reported, want %d", len(stalled), len(cases)*each)
	}
	// The point of the test: the slow clients did not stop the service.
	if !served[0].Before(firstClose) {
		t.Errorf("no create was served while the slow connections were open (first served %v, first slow close %v)",
			served[0].Sub(stalled[0].start), firstClose.Sub(stalled[0].start))
	}
	// The gauge counted every API connection open then: the slow ones and
	// the steady client's, kept alive (the ops listener's are not its).
	open := openConnections(t, string(metrics.Body))
	if metricsAt.Before(firstClose) && open < float64(len(stalled)+1) {
		t.Errorf("tally_http_open_connections = %v with %d slow connections and a steady one open", open, len(stalled))
	}
	if open < 1 {
		t.Errorf("tally_http_open_connections = %v with the steady client's connection open", open)
	}
}

// openConnections reads tally_http_open_connections from a /metrics page.
func openConnections(t *testing.T, page string) float64 {
	t.Helper()
	for line := range strings.Lines(page) {
		if v, ok := strings.CutPrefix(line, "tally_http_open_connections "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return f
		}
	}
	t.Fatal("/metrics has no tally_http_open_connections")
	return 0
}

// With TALLY_MAX_CONNS connections open, the next client waits in the
// listen backlog until one closes — here, until a stalled one is cut off at
// its read deadline — and is then served.
func TestMaxConnsQueuesTheRest(t *testing.T) {
	env := slowEnv(t)
	env["TALLY_MAX_CONNS"] = "2"
	s := startServer(t, env)
	addr := strings.TrimPrefix(s.URL, "http://")
	head := "POST /api/v1/sessions HTTP/1.1\r\nHost: tally\r\nContent-Length: 100\r\n\r\n{"

	var done sync.WaitGroup
	stalled := make([]*stalledConn, 2)
	for i := range stalled {
		// One at a time, so that both are in the accept queue before the
		// client that must wait.
		ready := make(chan struct{})
		done.Add(1)
		go func() {
			defer done.Done()
			stalled[i] = stall("stalled", addr, head, func() { close(ready) })
		}()
		<-ready
	}

	c := newClient(t)
	r := c.create(s, "queued")
	served := time.Now()
	if r.Status != http.StatusOK {
		t.Fatalf("queued create: %d %s", r.Status, r.Body)
	}
	done.Wait()
	for _, sc := range stalled {
		checkClosedAtDeadline(t, sc)
	}
	// Served only once a slot was free: not before the first stalled
	// connection could have been cut off.
	if at := served.Sub(stalled[0].start); at < readTimeout-earlySlack {
		t.Errorf("the third connection was served %v after the first stalled one opened, before a slot could be free (cap 2)", at)
	}
}
