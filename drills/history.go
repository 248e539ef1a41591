package drills

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/transport"
	"github.com/tally-dev/tally/transport/apitest"
)

// Limit is the free plan's max_sessions. Every drill user is on the free
// plan: it is provisioned there by its first request.
const Limit = 10

// CreateBody is the body of every create a drill sends.
var CreateBody = []byte(`{"title":"drill","language":"en-US","stt_provider":"google"}`)

// Attempt is one HTTP request of a create and what came back.
type Attempt struct {
	Start, End time.Time
	Target     string // base URL it was sent to
	Node       string // X-Tally-Node of the answer: the cluster node that decided it ("" on a single node)
	Status     int    // 0: no HTTP answer (the error is in Err)
	Err        string
	Code       string // detail.error of an error body
	SessionID  string // id of a 200's session
	RetryAfter string
	Body       string // the body of an unexpected answer, for failure messages
}

// Unknown reports whether the attempt left the outcome unknown: no answer,
// 503 or 504. A client retries those with the same key.
func (a Attempt) Unknown() bool {
	return a.Status == 0 || a.Status == http.StatusServiceUnavailable || a.Status == http.StatusGatewayTimeout
}

// Definite reports whether the attempt got an answer that decides the
// create: admitted (200) or refused by a limit (403).
func (a Attempt) Definite() bool {
	return a.Status == http.StatusOK || a.Status == http.StatusForbidden
}

func (a Attempt) String() string {
	s := fmt.Sprintf("%s→%s %s", a.Start.Format("15:04:05.000"), a.End.Format("15:04:05.000"), a.Target)
	if a.Status == 0 {
		return s + " error: " + a.Err
	}
	s += fmt.Sprintf(" %d", a.Status)
	if a.Node != "" {
		s += " node=" + a.Node
	}
	if a.Code != "" {
		s += " " + a.Code
	}
	if a.SessionID != "" {
		s += " id=" + a.SessionID
	}
	if a.Body != "" {
		s += " body=" + a.Body
	}
	return s
}

// Outcome is what a create's client finally learned.
type Outcome string

// The outcomes of a create.
const (
	Admitted Outcome = "admitted" // a 200
	Rejected Outcome = "rejected" // a 403
	Unknown  Outcome = "unknown"  // no definite answer within the retry bound
	Failed   Outcome = "failed"   // another answer (4xx, 500…): always a checker failure
)

// Create is one logical create: a user, its Idempotency-Key, and every
// attempt made with that key. A create with an empty Key is key-less: each
// of its attempts is a create of its own for the service, which may admit
// any of them that got no definite answer (docs/contract.md §4,
// Idempotency-Key).
type Create struct {
	User, Key string
	Attempts  []Attempt
	Outcome   Outcome
	SessionID string // of the 200, when Admitted
}

// answered reports whether an attempt of the create got a definite answer.
func (c *Create) answered() bool {
	return slices.ContainsFunc(c.Attempts, Attempt.Definite)
}

// History is every create of a drill, safe for concurrent use.
type History struct {
	mu      sync.Mutex
	creates []*Create
}

// Add records a finished create.
func (h *History) Add(c *Create) {
	h.mu.Lock()
	h.creates = append(h.creates, c)
	h.mu.Unlock()
}

// Creates returns the creates recorded so far.
func (h *History) Creates() []*Create {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*Create(nil), h.creates...)
}

// Attempts returns every attempt of every create.
func (h *History) Attempts() []Attempt {
	var all []Attempt
	for _, c := range h.Creates() {
		all = append(all, c.Attempts...)
	}
	return all
}

// AdmittedBetween counts the attempts answered 200 that were sent and
// answered within [from, to]: admissions made while a fault was on.
func (h *History) AdmittedBetween(from, to time.Time) int {
	n := 0
	for _, a := range h.Attempts() {
		if a.Status == http.StatusOK && !a.Start.Before(from) && !a.End.After(to) {
			n++
		}
	}
	return n
}

// Client is a drill's HTTP client: many idle connections, a timeout beyond
// the service's request deadline, every answer checked against the
// OpenAPI document (a mismatch fails the test), and tokens signed with the
// service's secret.
type Client struct {
	tb     testing.TB
	http   *http.Client
	check  *apitest.Validator
	secret []byte

	mu     sync.Mutex
	tokens map[string]string
}

// NewClient returns a Client whose requests give up after timeout.
func NewClient(tb testing.TB, jwtSecret string, timeout time.Duration) *Client {
	tb.Helper()
	tr := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: 30 * time.Second}
	tb.Cleanup(tr.CloseIdleConnections)
	return &Client{
		tb:     tb,
		http:   &http.Client{Transport: tr, Timeout: timeout},
		check:  apitest.NewValidator(tb),
		secret: []byte(jwtSecret),
		tokens: map[string]string{},
	}
}

// Token is a user token for user, valid for an hour.
func (c *Client) Token(user string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if tok, ok := c.tokens[user]; ok {
		return tok
	}
	tok, err := transport.IssueToken(c.secret, user, time.Hour, time.Now())
	if err != nil {
		c.tb.Errorf("issue a token for %s: %v", user, err)
	}
	c.tokens[user] = tok
	return tok
}

// Response is an answer read in full; Err is set when there was none.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
	Err    error
}

// Do sends one request with a user's token (none when user is "") and
// checks the answer against the document.
func (c *Client) Do(method, url, user string, body []byte, headers ...string) Response {
	var tok string
	if user != "" {
		tok = c.Token(user)
	}
	return c.DoToken(method, url, tok, body, headers...)
}

// DoToken is Do with a bearer token of the caller's (none when ""): an
// admin token, for one.
func (c *Client) DoToken(method, url, tok string, body []byte, headers ...string) Response {
	var b any // nil: no body
	if body != nil {
		b = body
	}
	req, err := apitest.NewRequest(method, url, tok, b, headers...)
	if err != nil {
		return Response{Err: err}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return Response{Err: err}
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return Response{Err: fmt.Errorf("reading the answer: %w", err)}
	}
	c.check.Check(c.tb, req, resp.StatusCode, resp.Header, out)
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: out}
}

// CreateOnce sends one create and records it as an Attempt.
func (c *Client) CreateOnce(base, user, key string, body []byte) Attempt {
	a := Attempt{Start: time.Now(), Target: base}
	var headers []string
	if key != "" {
		headers = []string{"Idempotency-Key", key}
	}
	r := c.Do(http.MethodPost, base+"/api/v1/sessions", user, body, headers...)
	a.End = time.Now()
	if r.Err != nil {
		a.Err = r.Err.Error()
		return a
	}
	a.Status = r.Status
	a.Node = r.Header.Get("X-Tally-Node")
	a.RetryAfter = r.Header.Get("Retry-After")
	switch r.Status {
	case http.StatusOK:
		var s struct {
			ID     string `json:"id"`
			UserID string `json:"user_id"`
		}
		if err := json.Unmarshal(r.Body, &s); err != nil || s.ID == "" || s.UserID != user {
			a.Body = abbreviate(r.Body)
		}
		a.SessionID = s.ID
	default:
		var e struct {
			Detail struct {
				Error string `json:"error"`
			} `json:"detail"`
		}
		_ = json.Unmarshal(r.Body, &e)
		a.Code = e.Detail.Error
		if r.Status != http.StatusServiceUnavailable && r.Status != http.StatusGatewayTimeout &&
			(r.Status != http.StatusForbidden || a.Code != "session_limit_exceeded") {
			a.Body = abbreviate(r.Body)
		}
	}
	return a
}

// Retry is how a drill's client retries a create whose outcome is unknown.
type Retry struct {
	// For bounds the retries, from the first attempt: past it the create
	// is recorded as Unknown.
	For time.Duration
	// Backoff is the first pause; it grows by half each time up to
	// MaxBackoff, with jitter.
	Backoff, MaxBackoff time.Duration
}

// DefaultRetry rides out the drills' outages (a few seconds) with room.
var DefaultRetry = Retry{For: 20 * time.Second, Backoff: 50 * time.Millisecond, MaxBackoff: 400 * time.Millisecond}

// Create sends a create, retrying with the same key while the outcome is
// unknown, until a definite answer, the retry bound, or stop is closed
// (then the create stays Unknown). target picks the base URL of each
// attempt. Without a key (key == "") it retries the same way, as a client
// that would rather risk a second session than lose one: every retry may
// then admit one more session, which Check accounts for.
func (c *Client) Create(target func() string, user, key string, body []byte, retry Retry, stop <-chan struct{}) *Create {
	cr := &Create{User: user, Key: key, Outcome: Unknown}
	first := time.Now()
	pause := retry.Backoff
	for {
		a := c.CreateOnce(target(), user, key, body)
		cr.Attempts = append(cr.Attempts, a)
		switch {
		case a.Status == http.StatusOK:
			cr.Outcome, cr.SessionID = Admitted, a.SessionID
			return cr
		case a.Status == http.StatusForbidden && a.Code == "session_limit_exceeded":
			cr.Outcome = Rejected
			return cr
		case !a.Unknown():
			cr.Outcome = Failed
			return cr
		}
		if time.Since(first) > retry.For {
			return cr
		}
		jittered := pause/2 + rand.N(pause/2+1)
		select {
		case <-stop:
			return cr
		case <-time.After(jittered):
		}
		pause = min(pause*3/2, retry.MaxBackoff)
	}
}

// Load is a closed-loop load of creates: Workers goroutines, each picking
// a random active user, creating, pausing Pace. Initial users are active
// from the start, the others become active one after another over Ramp, so
// that admissions keep happening while the fault is on instead of filling
// every quota in the first second.
//
// A share KeyLess of the creates is sent without an Idempotency-Key: a
// key-less create goes through another path than a keyed one (a refusal
// from the actor's memory, a group-commit batch without keys run
// set-based by persistence/postgres/admit_bulk.go, an unknown COMMIT
// looked up by the session id: actors/admit.go), and a drill must put both
// under its fault. They come in spells: the first KeyLess of every
// keyLessPeriod starts key-less creates only, the rest keyed ones (a
// retry keeps its create's key, or none). Mixed create by create, nearly
// every batch held a keyed request — keyed creates go to the store even
// for a full user, key-less ones for a full user are refused from memory
// — and a batch with one key runs the per-request path
// (persistence/postgres/admit.go): the lost-COMMIT drill ran 3 of its 82
// batches (5 admissions) set-based, and 19 of 84 (114) in spells.
type Load struct {
	Client  *Client
	Target  func() string // base URL of each attempt
	Users   []string
	Workers int
	Initial int
	Ramp    time.Duration
	Pace    time.Duration
	Retry   Retry
	History *History
	// KeyLess is the share of creates sent without a key, in [0, 1]; 0
	// means DefaultKeyLess, a negative share none.
	KeyLess float64
}

// DefaultKeyLess sends half of the creates without a key.
const DefaultKeyLess = 0.5

// keyLessPeriod is the length of one key-less spell and one keyed spell
// together: short enough that the shortest fault of a drill (a 200 ms
// blackhole) sees both, long enough for many batches of each.
const keyLessPeriod = 100 * time.Millisecond

// keyLess reports whether a create started elapsed after the load goes
// without a key.
func keyLess(elapsed time.Duration, share float64) bool {
	return share > 0 && float64(elapsed%keyLessPeriod) < share*float64(keyLessPeriod)
}

// Running is a started Load.
type Running struct {
	started time.Time
	stop    chan struct{} // no new creates
	abort   chan struct{} // no more retries either
	done    chan struct{}
	once    sync.Once
	aborted sync.Once
}

// Start starts the workers. The test must Stop and Wait; if it ends
// without (a t.Fatal), its cleanup aborts the load and waits for it.
func (l *Load) Start(tb testing.TB) *Running {
	tb.Helper()
	if l.Retry == (Retry{}) {
		l.Retry = DefaultRetry
	}
	if l.KeyLess == 0 {
		l.KeyLess = DefaultKeyLess
	}
	r := &Running{started: time.Now(), stop: make(chan struct{}), abort: make(chan struct{}), done: make(chan struct{})}
	var keys atomic.Int64
	run := testenv.RandomName("")
	var wg sync.WaitGroup
	for w := 0; w < l.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-r.stop:
					return
				default:
				}
				active := len(l.Users)
				if l.Ramp > 0 {
					initial := max(1, l.Initial)
					ramped := float64(len(l.Users)-initial) * float64(time.Since(r.started)) / float64(l.Ramp)
					active = min(len(l.Users), initial+int(ramped))
				}
				user := l.Users[rand.N(active)]
				key := fmt.Sprintf("drill-%s-%d", run, keys.Add(1))
				if keyLess(time.Since(r.started), l.KeyLess) {
					key = ""
				}
				l.History.Add(l.Client.Create(l.Target, user, key, CreateBody, l.Retry, r.abort))
				if l.Pace > 0 {
					select {
					case <-r.stop:
						return
					case <-time.After(l.Pace/2 + rand.N(l.Pace+1)):
					}
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(r.done)
	}()
	tb.Cleanup(func() {
		r.aborted.Do(func() { close(r.abort) })
		r.Stop()
		<-r.done
	})
	return r
}

// Stop stops starting creates; creates in flight keep retrying.
func (r *Running) Stop() { r.once.Do(func() { close(r.stop) }) }

// Wait stops the load and waits until every create in flight has a
// definite answer or has given up.
func (r *Running) Wait() {
	r.Stop()
	<-r.done
}

// Users returns n user ids under a random prefix, so that drills sharing a
// database never share a user.
func Users(prefix string, n int) []string {
	run := testenv.RandomName(prefix + "-")
	users := make([]string, n)
	for i := range users {
		users[i] = fmt.Sprintf("%s-%02d", run, i)
	}
	return users
}

func abbreviate(b []byte) string {
	const max = 300
	if len(b) > max {
		return string(b[:max]) + "…"
	}
	return string(b)
}
