package bench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// stalledConn is one slow client of the slowclients scenario: it sent a
// create's headers announcing a 100-byte body, one byte of that body, and
// nothing more. What the server does with it is the measurement: answer
// and close it once TALLY_HTTP_READ_TIMEOUT has passed, or keep it (and
// whatever it holds: a goroutine, a slot of TALLY_MAX_IN_FLIGHT) forever.
type stalledConn struct {
	c      net.Conn
	sentAt time.Time
	// closedAt is when the server closed the connection (EOF or reset),
	// zero while it is open; answer is the status line of what it wrote
	// before, if anything.
	closedAt time.Time
	answer   string
	authed   bool
	// clientClosed: the scenario gave up waiting and closed it itself.
	clientClosed bool
}

// stalledSet is the scenario's connections.
type stalledSet struct {
	mu    sync.Mutex
	conns []*stalledConn
	wg    sync.WaitGroup
}

// openStalled opens n connections to addr, half of them with a valid
// token (tokens[i] for the i-th authed one), and returns once every one
// has sent its headers and its single body byte. A connection that cannot
// be opened is an error: the scenario would not measure what it says.
func openStalled(ctx context.Context, addr string, n int, tokens []string) (*stalledSet, error) {
	s := &stalledSet{conns: make([]*stalledConn, n)}
	var firstErr error
	var errMu sync.Mutex
	parallel := 50 // dialling a thousand at once would overflow the listen backlog
	sem := make(chan struct{}, parallel)
	var dialWG sync.WaitGroup
	for i := range n {
		dialWG.Add(1)
		sem <- struct{}{}
		go func() {
			defer dialWG.Done()
			defer func() { <-sem }()
			sc, err := dialStalled(ctx, addr, i, tokens)
			if err != nil {
				errMu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				errMu.Unlock()
				return
			}
			s.conns[i] = sc
			s.wg.Add(1)
			go s.watch(sc)
		}()
	}
	dialWG.Wait()
	if firstErr != nil {
		s.closeAll()
		return nil, firstErr
	}
	return s, nil
}

func dialStalled(ctx context.Context, addr string, i int, tokens []string) (*stalledConn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("stalled connection %d: %w", i, err)
	}
	authed := i%2 == 0
	var b strings.Builder
	fmt.Fprintf(&b, "POST /api/v1/sessions HTTP/1.1\r\nHost: %s\r\nUser-Agent: tally-bench-slowclient\r\n", addr)
	if authed {
		fmt.Fprintf(&b, "Authorization: Bearer %s\r\n", tokens[(i/2)%len(tokens)])
	}
	b.WriteString("Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(b.String())); err != nil {
		c.Close()
		return nil, fmt.Errorf("stalled connection %d: write: %w", i, err)
	}
	return &stalledConn{c: c, sentAt: time.Now(), authed: authed}, nil
}

// watch reads until the server closes the connection, keeping the status
// line of whatever it answered.
func (s *stalledSet) watch(sc *stalledConn) {
	defer s.wg.Done()
	br := bufio.NewReader(sc.c)
	line, err := br.ReadString('\n')
	if err == nil {
		s.mu.Lock()
		sc.answer = strings.TrimSpace(line)
		s.mu.Unlock()
		_, err = br.Discard(1 << 30) // the rest, up to the close
	}
	_ = err // EOF, a reset, or our own close: the time says which
	s.mu.Lock()
	if !sc.clientClosed {
		sc.closedAt = time.Now()
	}
	s.mu.Unlock()
}

// waitClosed waits until the server has closed every connection or until
// deadline, and reports how many it closed.
func (s *stalledSet) waitClosed(ctx context.Context, deadline time.Time) int {
	for {
		closed := s.closedCount()
		if closed == len(s.conns) || !time.Now().Before(deadline) || ctx.Err() != nil {
			return closed
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *stalledSet) closedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.conns {
		if c != nil && !c.closedAt.IsZero() {
			n++
		}
	}
	return n
}

// closeAll closes what the server left open (those count as not closed
// by the server) and waits for the readers.
func (s *stalledSet) closeAll() {
	s.mu.Lock()
	for _, c := range s.conns {
		if c != nil && c.closedAt.IsZero() {
			c.clientClosed = true
		}
	}
	s.mu.Unlock()
	for _, c := range s.conns {
		if c != nil {
			_ = c.c.Close()
		}
	}
	s.wg.Wait()
}

// StalledSummary is what the server did with the stalled connections.
type StalledSummary struct {
	Conns int `json:"conns"`
	// ClosedByServer counts the connections the server closed by itself;
	// MaxCloseS is the longest time from a connection's last byte to its
	// close among them (the scenario's figure when all were closed).
	ClosedByServer int     `json:"closed_by_server"`
	MaxCloseS      float64 `json:"max_close_s"`
	P50CloseS      float64 `json:"p50_close_s"`
	// WaitedS is how long after the last connection's byte the scenario
	// waited for the server to close them all.
	WaitedS float64 `json:"waited_s"`
	// Answers are the status lines the server wrote before closing, by
	// authed ("with token") and not ("without token").
	Answers map[string]int `json:"answers"`
}

// summarize reads the set after closeAll.
func (s *stalledSet) summarize(waited time.Duration) StalledSummary {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := StalledSummary{Conns: len(s.conns), WaitedS: waited.Seconds(), Answers: map[string]int{}}
	var times []float64
	for _, c := range s.conns {
		if c == nil {
			continue
		}
		who := "without token"
		if c.authed {
			who = "with token"
		}
		ans := c.answer
		if ans == "" {
			ans = "no answer"
		} else if f := strings.Fields(ans); len(f) >= 2 {
			if _, err := strconv.Atoi(f[1]); err == nil {
				ans = f[1]
			}
		}
		out.Answers[who+": "+ans]++
		if !c.closedAt.IsZero() {
			out.ClosedByServer++
			times = append(times, c.closedAt.Sub(c.sentAt).Seconds())
		}
	}
	if len(times) > 0 {
		sort.Float64s(times)
		out.MaxCloseS = times[len(times)-1]
		out.P50CloseS = times[len(times)/2]
	}
	return out
}
