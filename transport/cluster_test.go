package transport_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/actors"
	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/persistence/sqlite"
	"github.com/tally-dev/tally/transport"
	"github.com/tally-dev/tally/transport/apitest"
)

// Cluster tests: real HTTP between in-process nodes on 127.0.0.1, a fake
// Cluster deciding who owns what, and real accounting (actors over one
// embedded store, which every node shares as they share Postgres).

var clusterSecret = []byte("cluster-secret-0123456789abcdef-0123456789")

// fakeCluster routes by a function the test sets; every Route call is
// signalled on asked (without blocking) when it is not nil.
type fakeCluster struct {
	id    string
	mu    sync.Mutex
	route func(domain.Partition) transport.Route
	asked chan domain.Partition
}

func (f *fakeCluster) NodeID() string { return f.id }

func (f *fakeCluster) Route(p domain.Partition) transport.Route {
	f.mu.Lock()
	route, asked := f.route, f.asked
	f.mu.Unlock()
	if asked != nil {
		select {
		case asked <- p:
		default:
		}
	}
	return route(p)
}

func (f *fakeCluster) set(route func(domain.Partition) transport.Route) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.route = route
}

func self(domain.Partition) transport.Route { return transport.Route{Self: true, Epoch: 1} }

func ownedBy(n *node) func(domain.Partition) transport.Route {
	return func(domain.Partition) transport.Route {
		return transport.Route{NodeID: n.id, URL: n.url, Epoch: 1}
	}
}

// counted counts the calls each node's accounting receives. With refuse
// set, CreateSession answers refuse(user) instead of creating: the core's
// refusal of a partition it has just released (domain.NotOwner, nothing
// written), or a store that failed mid-way (the create may have
// committed).
type counted struct {
	domain.Accounts
	mu     sync.Mutex
	n      map[string]int
	refuse func(user string) error
}

func (c *counted) hit(m string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[m]++
}

func (c *counted) count(m string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[m]
}

func (c *counted) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := 0
	for _, v := range c.n {
		t += v
	}
	return t
}

func (c *counted) CreateSession(ctx context.Context, u string, in domain.NewSession, key string) (domain.Session, error) {
	c.hit("CreateSession")
	c.mu.Lock()
	refuse := c.refuse
	c.mu.Unlock()
	if refuse != nil {
		return domain.Session{}, refuse(u)
	}
	return c.Accounts.CreateSession(ctx, u, in, key)
}
func (c *counted) GetSession(ctx context.Context, u, id string) (domain.Session, error) {
	c.hit("GetSession")
	return c.Accounts.GetSession(ctx, u, id)
}
func (c *counted) ListSessions(ctx context.Context, u string, limit int, after *domain.Cursor) ([]domain.Session, error) {
	c.hit("ListSessions")
	return c.Accounts.ListSessions(ctx, u, limit, after)
}
func (c *counted) PrepareUpload(ctx context.Context, u, id string, mb float64) (domain.Session, domain.Plan, error) {
	c.hit("PrepareUpload")
	return c.Accounts.PrepareUpload(ctx, u, id, mb)
}
func (c *counted) Usage(ctx context.Context, u string) (domain.Report, error) {
	c.hit("Usage")
	return c.Accounts.Usage(ctx, u)
}
func (c *counted) PutUser(ctx context.Context, by domain.Origin, u string, plan *string, anchor *time.Time) (domain.User, domain.Report, error) {
	c.hit("PutUser")
	return c.Accounts.PutUser(ctx, by, u, plan, anchor)
}
func (c *counted) GetUser(ctx context.Context, u string) (domain.User, domain.Report, error) {
	c.hit("GetUser")
	return c.Accounts.GetUser(ctx, u)
}
func (c *counted) ResetUsage(ctx context.Context, by domain.Origin, u string) (domain.Report, error) {
	c.hit("ResetUsage")
	return c.Accounts.ResetUsage(ctx, by, u)
}
func (c *counted) CompleteSession(ctx context.Context, by domain.Origin, id string, s int64) (domain.Session, error) {
	c.hit("CompleteSession")
	return c.Accounts.CompleteSession(ctx, by, id, s)
}
func (c *counted) FailSession(ctx context.Context, by domain.Origin, id string) (domain.Session, error) {
	c.hit("FailSession")
	return c.Accounts.FailSession(ctx, by, id)
}
func (c *counted) ListUserEvents(ctx context.Context, u string, limit int, after *domain.EventCursor) ([]domain.UserEvent, error) {
	c.hit("ListUserEvents")
	return c.Accounts.ListUserEvents(ctx, u, limit, after)
}

// node is one Tally node: its accounting on the shared store, its edge
// on a listener of its own.
type node struct {
	id       string
	url      string
	cluster  *fakeCluster
	accounts *counted
	client   *apitest.Client
}

func sharedStore(t *testing.T) persistence.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// startNode starts a node serving every partition itself until the test
// routes otherwise (n.cluster.set).
func startNode(t *testing.T, id string, store persistence.Store, tweak ...func(*transport.Options)) *node {
	t.Helper()
	svc, err := actors.New(actors.Options{Store: store, Catalog: domain.DefaultCatalog(), Shards: 4,
		RequestTimeout: 5 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &node{id: id, url: "http://" + ln.Addr().String(), cluster: &fakeCluster{id: id, route: self},
		accounts: &counted{Accounts: svc}}
	opts := transport.Options{
		Accounts: n.accounts, Catalog: domain.DefaultCatalog(), JWTSecret: secret, AdminToken: adminToken,
		UploadBaseURL: "http://127.0.0.1/uploads", Providers: []string{"google"},
		Logger:   slog.New(slog.DiscardHandler),
		Registry: prometheus.NewRegistry(),
		Cluster:  n.cluster, ClusterSecret: clusterSecret, Lookups: svc,
		RequestTimeout: 5 * time.Second,
	}
	for _, f := range tweak {
		f(&opts)
	}
	h, err := transport.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	n.client = apitest.NewClient(t, n.url)
	return n
}

func userToken(t *testing.T, user string) string {
	t.Helper()
	tok, err := transport.IssueToken(secret, user, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func wantNode(t *testing.T, r *apitest.Response, id string) {
	t.Helper()
	if got := r.Header.Get(transport.HeaderNode); got != id {
		t.Errorf("X-Tally-Node %q, want %q (status %d, body %s)", got, id, r.Status, r.Body)
	}
}

func wantStatus(t *testing.T, r *apitest.Response, status int) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d; body %s", r.Status, status, r.Body)
	}
}

// want503 checks an infrastructure refusal: 503, unavailable, Retry-After.
func want503(t *testing.T, r *apitest.Response) {
	t.Helper()
	wantStatus(t, r, http.StatusServiceUnavailable)
	if r.ErrorCode() != "unavailable" || r.Header.Get("Retry-After") == "" {
		t.Errorf("503 without unavailable/Retry-After: %v %s", r.Header, r.Body)
	}
}

func sessionID(t *testing.T, r *apitest.Response) string {
	t.Helper()
	var s struct {
		ID string `json:"id"`
	}
	r.Decode(t, &s)
	if s.ID == "" {
		t.Fatalf("no session id in %s", r.Body)
	}
	return s.ID
}

// A request to a node that does not own the user is answered by the
// owner, forwarded once; the answer names the owner. Plans and the probes
// are served by the node that receives them.
func TestClusterForwardsToTheOwner(t *testing.T) {
	store := sharedStore(t)
	logs := &testenv.LockedBuffer{}
	a := startNode(t, "a", store, func(o *transport.Options) { o.Logger = slog.New(slog.NewJSONHandler(logs, nil)) })
	b := startNode(t, "b", store)
	b.cluster.set(ownedBy(a))
	tok := userToken(t, "u1")

	r := b.client.MustCall("POST", "/api/v1/sessions", tok, validCreate)
	wantStatus(t, r, 200)
	wantNode(t, r, "a")
	id := sessionID(t, r)
	// The owner logs the request under the forwarding node's request id,
	// and says who forwarded it.
	if id := r.Header.Get("X-Request-Id"); id == "" || !strings.Contains(logs.String(), `"request_id":"`+id+`"`) ||
		!strings.Contains(logs.String(), `"forwarded_by":"b"`) {
		t.Errorf("request id %q; the owner's log:\n%s", id, logs.String())
	}

	r = b.client.MustCall("GET", "/api/v1/sessions/"+id, tok, nil)
	wantStatus(t, r, 200)
	wantNode(t, r, "a")
	r = b.client.MustCall("GET", "/api/v1/usage", tok, nil)
	wantStatus(t, r, 200)
	wantNode(t, r, "a")
	r = b.client.MustCall("PUT", "/admin/v1/users/u1", adminToken, map[string]string{"plan": "free"})
	wantStatus(t, r, 200)
	wantNode(t, r, "a")

	// The free plan admits 10: the 11th is the owner's 403, relayed.
	for i := 1; i < 10; i++ {
		wantStatus(t, b.client.MustCall("POST", "/api/v1/sessions", tok, validCreate), 200)
	}
	r = b.client.MustCall("POST", "/api/v1/sessions", tok, validCreate)
	wantStatus(t, r, 403)
	wantNode(t, r, "a")
	if r.ErrorCode() != "session_limit_exceeded" {
		t.Errorf("over the limit: %s", r.Body)
	}

	// A page of sessions (a few KiB) is relayed whole.
	r = b.client.MustCall("GET", "/api/v1/sessions?limit=100", tok, nil)
	wantStatus(t, r, 200)
	wantNode(t, r, "a")
	var page struct {
		Items []json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(r.Body, &page); err != nil || len(page.Items) != 10 {
		t.Errorf("list through b: %d items (%v): %s", len(page.Items), err, r.Body)
	}

	// Errors the owner decides travel back as they are: a 401 for a bad
	// token, a 422 for a bad body.
	r = b.client.MustCall("POST", "/api/v1/sessions", tok, map[string]string{"title": "", "language": "en", "stt_provider": "google"})
	wantStatus(t, r, 422)
	wantNode(t, r, "a")

	for _, path := range []string{"/api/v1/plans", "/healthz", "/readyz", "/openapi.yaml"} {
		r = b.client.MustCall("GET", path, "", nil)
		wantStatus(t, r, 200)
		wantNode(t, r, "b")
	}
	resp, err := http.Get(b.url + "/no/such/route")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 404 || resp.Header.Get(transport.HeaderNode) != "b" {
		t.Errorf("no such route: %d %v", resp.StatusCode, resp.Header)
	}

	// 11 valid creates; the 422 is the owner's edge's, before its core.
	if n := a.accounts.count("CreateSession"); n != 11 {
		t.Errorf("owner's CreateSession called %d times, want 11 (each create once)", n)
	}
	if n := b.accounts.total(); n != 0 {
		t.Errorf("the non-owner's accounting was called %d times", n)
	}
}

// A request carrying forwarding headers that are forged, expired, signed
// with another secret, or incomplete is refused 401 and does nothing.
func TestClusterForwardAuthentication(t *testing.T) {
	store := sharedStore(t)
	a := startNode(t, "a", store)
	tok := userToken(t, "u1")
	ts := strconv.FormatInt(time.Now().UnixMilli(), 10)

	for name, headers := range map[string][]string{
		"forged signature": {"X-Tally-Forwarded-By", "b", "X-Tally-Forward-Time", ts, "X-Tally-Forward-Budget", "4000",
			"X-Tally-Forward-Signature", "c2lnbmVkIGJ5IG5vYm9keQ"},
		"no signature":            {"X-Tally-Forwarded-By", "b", "X-Tally-Forward-Time", ts, "X-Tally-Forward-Budget", "4000"},
		"a session id on its own": {"X-Tally-Forward-Session", "0190b6a4-6d1e-7b8e-9c39-5d2b7a3f1e20"},
		"a signature on its own":  {"X-Tally-Forward-Signature", "c2lnbmVkIGJ5IG5vYm9keQ"},
	} {
		t.Run(name, func(t *testing.T) {
			r := a.client.MustCall("POST", "/api/v1/sessions", tok, validCreate, headers...)
			wantStatus(t, r, 401)
			wantNode(t, r, "a")
			r = a.client.MustCall("POST", "/admin/v1/users/u1/reset-usage", adminToken, nil, headers...)
			wantStatus(t, r, 401)
		})
	}

	// Through nodes: one whose clock is a minute behind (its signature
	// is expired on arrival), one with another cluster secret.
	late := startNode(t, "late", store, func(o *transport.Options) {
		o.Now = func() time.Time { return time.Now().Add(-time.Minute) }
	})
	late.cluster.set(ownedBy(a))
	other := startNode(t, "other", store, func(o *transport.Options) {
		o.ClusterSecret = []byte("another-cluster-secret-0123456789abcdef")
	})
	other.cluster.set(ownedBy(a))
	for _, n := range []*node{late, other} {
		r := n.client.MustCall("POST", "/api/v1/sessions", tok, validCreate)
		wantStatus(t, r, 401)
		wantNode(t, r, "a") // the owner refused it
	}

	if n := a.accounts.total(); n != 0 {
		t.Errorf("the owner's accounting was called %d times for unauthenticated forwards", n)
	}
	if n := late.accounts.total() + other.accounts.total(); n != 0 {
		t.Errorf("the forwarding nodes' accounting was called %d times", n)
	}
}

// On a single node, forwarding headers mean nothing: the request is
// served as it always was, and no answer carries X-Tally-Node.
func TestSingleNodeIgnoresForwardingHeaders(t *testing.T) {
	e := newEnv(t)
	r := e.do("POST", "/api/v1/sessions", e.token("u1"), validCreate, "X-Tally-Forward-Signature", "bogus",
		"X-Tally-Forward-Session", "0190b6a4-6d1e-7b8e-9c39-5d2b7a3f1e20")
	if r.Status != 200 || r.Header.Get(transport.HeaderNode) != "" {
		t.Fatalf("single node: %d %v %s", r.Status, r.Header, r.Body)
	}
	if calls := e.accounts.Calls(); len(calls) != 1 || calls[0] != `CreateSession u1 Weekly sync/en-US/google key=""` {
		t.Errorf("calls %q", calls)
	}
}

// A forwarded request that reaches a node which no longer owns the
// partition is refused there (503, nothing done), never forwarded a second
// time by it. The node that forwarded it, which the client waits on, routes
// it again once its own route has left the refusing node: to the new
// owner, or to itself. If its route does not move within the wait, it
// answers 503 itself.
func TestClusterForwardedRequestIsFinal(t *testing.T) {
	store := sharedStore(t)
	c := startNode(t, "c", store)
	a := startNode(t, "a", store)
	a.cluster.set(ownedBy(c)) // a lost the partition to c
	short := func(o *transport.Options) { o.RequestTimeout = 300 * time.Millisecond }
	tok := userToken(t, "u1")

	t.Run("the forwarding node does not hear of the move", func(t *testing.T) {
		b := startNode(t, "b", store, short)
		b.cluster.set(ownedBy(a)) // b has not heard, and does not within the wait
		r := b.client.MustCall("POST", "/api/v1/sessions", tok, validCreate)
		want503(t, r)
		wantNode(t, r, "b")
		r = b.client.MustCall("GET", "/admin/v1/users/u1", adminToken, nil)
		want503(t, r)
		wantNode(t, r, "b")
		if n := c.accounts.total() + a.accounts.total() + b.accounts.total(); n != 0 {
			t.Errorf("accounting called %d times; a forwarded request must not be forwarded again", n)
		}
	})

	// movesAfterRefusal starts a node that routes u1 to first, and to then
	// once it has routed the request the first time: it hears of the move
	// while the request is on its way to the old owner.
	movesAfterRefusal := func(t *testing.T, id string, first, then func(domain.Partition) transport.Route) *node {
		b := startNode(t, id, store)
		b.cluster.set(first)
		asked := make(chan domain.Partition, 1)
		b.cluster.mu.Lock()
		b.cluster.asked = asked
		b.cluster.mu.Unlock()
		go func() {
			<-asked
			b.cluster.set(then)
		}()
		return b
	}
	for _, tc := range []struct {
		name, want string
		then       func(domain.Partition) transport.Route
	}{
		{"to the new owner", "c", ownedBy(c)},
		{"to itself", "b", self},
	} {
		t.Run("the forwarding node routes it again "+tc.name, func(t *testing.T) {
			atC := c.accounts.count("CreateSession")
			b := movesAfterRefusal(t, "b", ownedBy(a), tc.then)
			r := b.client.MustCall("POST", "/api/v1/sessions", tok, validCreate)
			wantStatus(t, r, 200)
			wantNode(t, r, tc.want)
			if r.Header.Get("X-Tally-Not-Owner") != "" {
				t.Errorf("the refusal's marker reached the client: %v", r.Header)
			}
			created := b.accounts.count("CreateSession") + c.accounts.count("CreateSession") - atC
			if n := a.accounts.total(); n != 0 || created != 1 {
				t.Errorf("the old owner's accounting was called %d times and the others' %d; want 0 and 1", n, created)
			}
		})
	}

	// The old owner's edge still routed the request to itself, but its
	// core had released the partition: the core's refusal (nothing
	// written) is the same refusal.
	t.Run("the old owner's core refuses", func(t *testing.T) {
		old := startNode(t, "old", store)
		old.accounts.mu.Lock()
		old.accounts.refuse = func(u string) error { return domain.NotOwner(domain.PartitionOf(u)) }
		old.accounts.mu.Unlock()
		atC := c.accounts.count("CreateSession")
		b := movesAfterRefusal(t, "b", ownedBy(old), ownedBy(c))
		r := b.client.MustCall("POST", "/api/v1/sessions", tok, validCreate)
		wantStatus(t, r, 200)
		wantNode(t, r, "c")
		if n, m := old.accounts.count("CreateSession"), c.accounts.count("CreateSession")-atC; n != 1 || m != 1 {
			t.Errorf("the old owner's core was asked %d times, the new owner's %d; want 1 and 1", n, m)
		}
	})

	// Any other 503 of the owner is relayed as it is, even if the route
	// has moved meanwhile: the create may have committed there, and must
	// not be sent to a second owner.
	t.Run("another 503 is final", func(t *testing.T) {
		old := startNode(t, "old", store)
		old.accounts.mu.Lock()
		old.accounts.refuse = func(string) error {
			return domain.Unavailable("database", errors.New("the connection broke during COMMIT"))
		}
		old.accounts.mu.Unlock()
		atC := c.accounts.count("CreateSession")
		b := movesAfterRefusal(t, "b", ownedBy(old), ownedBy(c))
		r := b.client.MustCall("POST", "/api/v1/sessions", tok, validCreate)
		want503(t, r)
		wantNode(t, r, "old")
		if n := c.accounts.count("CreateSession") - atC; n != 0 {
			t.Errorf("a create the old owner may have committed was sent to the new owner too (%d times)", n)
		}
	})

	// The second owner's answer is final, a refusal too: the request has
	// reached two nodes, each once, and the client gets a 503 without the
	// marker, which only nodes read.
	t.Run("a second refusal is relayed", func(t *testing.T) {
		other := startNode(t, "other", store)
		other.cluster.set(ownedBy(c)) // it lost the partition to c as well
		atC := c.accounts.count("CreateSession")
		b := movesAfterRefusal(t, "b", ownedBy(a), ownedBy(other))
		r := b.client.MustCall("POST", "/api/v1/sessions", tok, validCreate)
		want503(t, r)
		wantNode(t, r, "other")
		if r.Header.Get("X-Tally-Not-Owner") != "" {
			t.Errorf("the refusal's marker reached the client: %v", r.Header)
		}
		if n := c.accounts.count("CreateSession") - atC; n != 0 {
			t.Errorf("the request reached a third node: c's accounting was called %d times", n)
		}
	})
}

// An owner that cannot be reached is a 503 with Retry-After at once, not a
// 500 and not a wait for the request's deadline (here ten minutes).
func TestClusterDeadOwnerIs503(t *testing.T) {
	store := sharedStore(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	_ = ln.Close() // nothing listens there any more
	b := startNode(t, "b", store, func(o *transport.Options) { o.RequestTimeout = 10 * time.Minute })
	b.cluster.set(func(domain.Partition) transport.Route { return transport.Route{NodeID: "a", URL: dead, Epoch: 3} })
	b.client.HTTP.Timeout = time.Minute // far less than the deadline
	tok := userToken(t, "u1")

	for _, call := range []struct{ method, path, token string }{
		{"POST", "/api/v1/sessions", tok},
		{"GET", "/api/v1/usage", tok},
		{"POST", "/admin/v1/users/u1/reset-usage", adminToken},
	} {
		var body any
		if call.path == "/api/v1/sessions" {
			body = validCreate
		}
		r := b.client.MustCall(call.method, call.path, call.token, body)
		want503(t, r)
		wantNode(t, r, "b")
	}
	// An owner URL no node could have (a path, https) is as unreachable.
	for _, bad := range []string{dead + "/prefix", "https://127.0.0.1:1", "not a url"} {
		b.cluster.set(func(domain.Partition) transport.Route { return transport.Route{NodeID: "a", URL: bad, Epoch: 3} })
		r := b.client.MustCall("GET", "/api/v1/usage", tok, nil)
		want503(t, r)
		wantNode(t, r, "b")
	}
	if n := b.accounts.total(); n != 0 {
		t.Errorf("the non-owner's accounting was called %d times", n)
	}
}

// A partition without an owner (moving) is waited for: when its
// ownership settles the request goes where it now belongs; if it does not
// settle within the deadline the answer is 503.
func TestClusterWaitsForAMovingPartition(t *testing.T) {
	store := sharedStore(t)
	a := startNode(t, "a", store)
	tok := userToken(t, "u1")

	for _, tc := range []struct {
		name  string
		after func(*node) func(domain.Partition) transport.Route
		want  string
	}{
		{"settles here", func(*node) func(domain.Partition) transport.Route { return self }, "b"},
		{"settles on another node", func(*node) func(domain.Partition) transport.Route { return ownedBy(a) }, "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := startNode(t, "b", store)
			settled := make(chan struct{})
			b.cluster.set(func(domain.Partition) transport.Route { return transport.Route{Settled: settled} })
			asked := make(chan domain.Partition, 1)
			b.cluster.mu.Lock()
			b.cluster.asked = asked
			b.cluster.mu.Unlock()

			done := make(chan *apitest.Response, 1)
			go func() {
				r, err := b.client.Call("GET", "/api/v1/usage", tok, nil)
				if err != nil {
					t.Error(err)
				}
				done <- r
			}()
			if p := <-asked; p != domain.PartitionOf("u1") {
				t.Errorf("routed partition %d, want u1's %d", p, domain.PartitionOf("u1"))
			}
			b.cluster.set(tc.after(a))
			close(settled)
			r := <-done
			if r == nil {
				return
			}
			wantStatus(t, r, 200)
			wantNode(t, r, tc.want)
		})
	}

	// A move changes the route more than once before it settles: the old
	// owner releasing, then nobody, then the new owner acquiring. Each
	// change closes the previous Settled; the request waits for the last.
	t.Run("settles after several changes", func(t *testing.T) {
		b := startNode(t, "b", store)
		first, second := make(chan struct{}), make(chan struct{})
		b.cluster.set(func(domain.Partition) transport.Route {
			return transport.Route{NodeID: "a", URL: a.url, Settled: first}
		})
		asked := make(chan domain.Partition, 4)
		b.cluster.mu.Lock()
		b.cluster.asked = asked
		b.cluster.mu.Unlock()

		done := make(chan *apitest.Response, 1)
		go func() {
			r, err := b.client.Call("POST", "/api/v1/sessions", tok, validCreate)
			if err != nil {
				t.Error(err)
			}
			done <- r
		}()
		<-asked
		b.cluster.set(func(domain.Partition) transport.Route { return transport.Route{Settled: second} }) // released: nobody
		close(first)
		<-asked // routed again, and unsettled again
		b.cluster.set(self)
		close(second)
		r := <-done
		if r == nil {
			return
		}
		wantStatus(t, r, 200)
		wantNode(t, r, "b")
	})

	t.Run("never settles", func(t *testing.T) {
		b := startNode(t, "b", store, func(o *transport.Options) { o.RequestTimeout = 200 * time.Millisecond })
		b.cluster.set(func(domain.Partition) transport.Route { return transport.Route{Settled: make(chan struct{})} })
		r := b.client.MustCall("GET", "/api/v1/usage", tok, nil)
		want503(t, r)
		wantNode(t, r, "b")
		if n := b.accounts.total(); n != 0 {
			t.Errorf("accounting called %d times for an unowned partition", n)
		}
	})
}

// A request is not forwarded with less of its deadline left than the
// owner needs to serve it (transport's serveReserve, 250 ms): it would
// reach the owner's group commit about to expire and cut the batch's
// transaction short for every request in it. It is answered 503 at once
// instead, nothing done anywhere. Here the whole deadline is shorter than
// that.
func TestClusterKeepsTimeToServe(t *testing.T) {
	store := sharedStore(t)
	a := startNode(t, "a", store)
	b := startNode(t, "b", store, func(o *transport.Options) { o.RequestTimeout = 200 * time.Millisecond })
	b.cluster.set(ownedBy(a))
	r := b.client.MustCall("POST", "/api/v1/sessions", userToken(t, "u1"), validCreate)
	want503(t, r)
	wantNode(t, r, "b")
	if n := a.accounts.total(); n != 0 {
		t.Errorf("the owner's accounting was called %d times", n)
	}
}

// dropProxy stands between a forwarding node and the owner. It relays
// every request but creates, on keep-alive connections; a create it reads
// whole, passes on to the owner (when it has one) and waits for the
// owner's answer — then closes the connection without answering. The
// forwarding node has sent the create; its answer is lost. Creates come
// on a connection the forwarding node reuses when a relayed request went
// first: the case where net/http may send a request again by itself.
type dropProxy struct {
	url    string
	target string // "": creates never reach an owner
	mu     sync.Mutex
	sids   []string // X-Tally-Forward-Session of each create
	status []int    // the owner's answers to them, unseen by the forwarding node
}

func startDropProxy(t *testing.T, target string) *dropProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &dropProxy{url: "http://" + ln.Addr().String(), target: target}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	pass := func(req *http.Request, body []byte) (*http.Response, error) {
		out, err := http.NewRequest(req.Method, p.target+req.RequestURI, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		out.Header = req.Header.Clone()
		return client.Do(out)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				br := bufio.NewReader(conn)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					body, _ := io.ReadAll(req.Body)
					create := req.Method == "POST" && req.URL.Path == "/api/v1/sessions"
					if create {
						p.mu.Lock()
						p.sids = append(p.sids, req.Header.Get("X-Tally-Forward-Session"))
						p.mu.Unlock()
						if p.target == "" {
							return
						}
					}
					resp, err := pass(req, body)
					if err != nil {
						t.Error(err)
						return
					}
					if create {
						_, _ = io.Copy(io.Discard, resp.Body)
						_ = resp.Body.Close()
						p.mu.Lock()
						p.status = append(p.status, resp.StatusCode)
						p.mu.Unlock()
						return // the answer is lost
					}
					// Keep the connection for the forwarding node to reuse,
					// whatever the proxy's own connection to the owner did.
					resp.Close = false
					resp.Header.Del("Connection")
					err = resp.Write(conn)
					_ = resp.Body.Close()
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return p
}

func (p *dropProxy) seen() ([]string, []int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.sids), slices.Clone(p.status)
}

// A create whose answer is lost after it reached the owner is never sent
// again: its outcome is found in the store, by Idempotency-Key or by the
// session id the forwarding node chose. One that never reached the owner
// is not found, and is a 503 at the deadline.
func TestClusterLostCreateAnswer(t *testing.T) {
	store := sharedStore(t)
	a := startNode(t, "a", store)

	for _, tc := range []struct {
		name string
		user string
		key  string
	}{
		{"resolved by Idempotency-Key", "u-key", "k-1"},
		{"resolved by session id", "u-id", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy := startDropProxy(t, a.url)
			b := startNode(t, "b", store)
			b.cluster.set(func(domain.Partition) transport.Route { return transport.Route{NodeID: "a", URL: proxy.url, Epoch: 1} })
			before := a.accounts.count("CreateSession")
			var headers []string
			if tc.key != "" {
				headers = []string{"Idempotency-Key", tc.key}
			}
			tok := userToken(t, tc.user)
			// A request first, so that b keeps a connection to reuse.
			wantStatus(t, b.client.MustCall("GET", "/api/v1/usage", tok, nil), 200)
			r := b.client.MustCall("POST", "/api/v1/sessions", tok, validCreate, headers...)
			wantStatus(t, r, 200)
			wantNode(t, r, "a") // the owner decided; b found its decision
			id := sessionID(t, r)

			sids, status := proxy.seen()
			if len(sids) != 1 || !slices.Equal(status, []int{200}) {
				t.Fatalf("the owner got %d requests (answers %v), want exactly one", len(sids), status)
			}
			if n := a.accounts.count("CreateSession") - before; n != 1 {
				t.Errorf("owner's CreateSession called %d times, want 1", n)
			}
			if tc.key == "" && id != sids[0] {
				t.Errorf("answered session %s, the forwarded create chose %s", id, sids[0])
			}
			// Exactly one session exists, the one answered.
			list, err := store.ListSessions(context.Background(), tc.user, 10, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(list) != 1 || list[0].ID != id {
				t.Errorf("stored sessions %v, want just %s", list, id)
			}
			if n := b.accounts.total(); n != 0 {
				t.Errorf("the non-owner's accounting was called %d times", n)
			}
		})
	}

	t.Run("never reached the owner", func(t *testing.T) {
		proxy := startDropProxy(t, "")
		b := startNode(t, "b", store, func(o *transport.Options) { o.RequestTimeout = 300 * time.Millisecond })
		b.cluster.set(func(domain.Partition) transport.Route { return transport.Route{NodeID: "a", URL: proxy.url, Epoch: 1} })
		before := a.accounts.count("CreateSession")
		for _, headers := range [][]string{nil, {"Idempotency-Key", "k-2"}} {
			r := b.client.MustCall("POST", "/api/v1/sessions", userToken(t, "u-lost"), validCreate, headers...)
			want503(t, r)
			wantNode(t, r, "b")
		}
		if sids, _ := proxy.seen(); len(sids) != 2 {
			t.Errorf("the proxy saw %d requests, want 2 (one each, none re-sent)", len(sids))
		}
		if n := a.accounts.count("CreateSession") - before; n != 0 {
			t.Errorf("owner's CreateSession called %d times", n)
		}
		if list, err := store.ListSessions(context.Background(), "u-lost", 10, nil); err != nil || len(list) != 0 {
			t.Errorf("stored %v (%v), want none", list, err)
		}
	})
}

// Session-id requests reach the owner of the session's user: admin ones
// through the session's stored user, user ones through the token's sub.
func TestClusterSessionRequestsReachTheUsersOwner(t *testing.T) {
	store := sharedStore(t)
	a := startNode(t, "a", store)
	b := startNode(t, "b", store)
	// u1 belongs to a, u2 to b.
	pa, pb := domain.PartitionOf("u1"), domain.PartitionOf("u2")
	if pa == pb {
		t.Fatal("u1 and u2 share a partition; pick other users")
	}
	a.cluster.set(func(p domain.Partition) transport.Route {
		if p == pb {
			return transport.Route{NodeID: "b", URL: b.url, Epoch: 1}
		}
		return self(p)
	})
	b.cluster.set(func(p domain.Partition) transport.Route {
		if p == pb {
			return self(p)
		}
		return transport.Route{NodeID: "a", URL: a.url, Epoch: 1}
	})

	s1 := sessionID(t, a.client.MustCall("POST", "/api/v1/sessions", userToken(t, "u1"), validCreate))
	s2 := sessionID(t, b.client.MustCall("POST", "/api/v1/sessions", userToken(t, "u2"), validCreate))

	r := b.client.MustCall("POST", "/api/v1/sessions/"+s1+"/upload-url", userToken(t, "u1"), map[string]any{"filename": "a.wav", "file_size_mb": 1})
	wantStatus(t, r, 200)
	wantNode(t, r, "a")
	r = b.client.MustCall("POST", "/admin/v1/sessions/"+s1+"/complete", adminToken, map[string]int{"duration_seconds": 60})
	wantStatus(t, r, 200)
	wantNode(t, r, "a")
	r = a.client.MustCall("POST", "/admin/v1/sessions/"+s2+"/fail", adminToken, nil)
	wantStatus(t, r, 200)
	wantNode(t, r, "b")
	r = a.client.MustCall("GET", "/api/v1/sessions/"+s2, userToken(t, "u2"), nil)
	wantStatus(t, r, 200)
	wantNode(t, r, "b")

	for _, c := range []struct {
		n    *node
		m    string
		want int
	}{
		{a, "CompleteSession", 1}, {b, "CompleteSession", 0},
		{b, "FailSession", 1}, {a, "FailSession", 0},
		{a, "PrepareUpload", 1}, {b, "PrepareUpload", 0},
		{b, "GetSession", 1}, {a, "GetSession", 0},
	} {
		if got := c.n.accounts.count(c.m); got != c.want {
			t.Errorf("%s's %s called %d times, want %d", c.n.id, c.m, got, c.want)
		}
	}

	// A session that does not exist is answered by the node asked.
	r = b.client.MustCall("POST", "/admin/v1/sessions/no-such-session/fail", adminToken, nil)
	wantStatus(t, r, 404)
	wantNode(t, r, "b")

	// Read back through the other node: the completion is u1's usage.
	r = b.client.MustCall("GET", "/api/v1/usage", userToken(t, "u1"), nil)
	wantStatus(t, r, 200)
	wantNode(t, r, "a")
	var u struct {
		Minutes struct {
			UsedSeconds int64 `json:"used_seconds"`
		} `json:"minutes"`
	}
	if err := json.Unmarshal(r.Body, &u); err != nil || u.Minutes.UsedSeconds != 60 {
		t.Errorf("u1's usage %s (%v), want 60 seconds used", r.Body, err)
	}
}

// Cluster mode needs its secret and the store lookups.
func TestClusterOptionsAreChecked(t *testing.T) {
	base := func() transport.Options {
		return transport.Options{
			Accounts: &fakeAccounts{}, Catalog: domain.DefaultCatalog(), JWTSecret: secret, AdminToken: adminToken,
			UploadBaseURL: "http://127.0.0.1/uploads", Providers: []string{"google"},
			Cluster: &fakeCluster{id: "a", route: self}, ClusterSecret: clusterSecret, Lookups: noLookups{},
		}
	}
	if _, err := transport.New(base()); err != nil {
		t.Fatalf("valid options: %v", err)
	}
	for name, tweak := range map[string]func(*transport.Options){
		"short secret": func(o *transport.Options) { o.ClusterSecret = []byte("too short") },
		"no lookups":   func(o *transport.Options) { o.Lookups = nil },
		"bad node id":  func(o *transport.Options) { o.Cluster = &fakeCluster{id: "a b", route: self} },
	} {
		o := base()
		tweak(&o)
		if _, err := transport.New(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

type noLookups struct{}

func (noLookups) SessionUser(context.Context, string) (string, error) { return "", domain.ErrNotFound }
func (noLookups) CreateOutcome(context.Context, string, domain.NewSession, string) (domain.Session, error) {
	return domain.Session{}, domain.ErrNotFound
}

// Every answer of a cluster node names it, those given before any routing
// too: a shed 503 and the probes.
func TestClusterShedAnswerNamesTheNode(t *testing.T) {
	e := newEnv(t, func(o *transport.Options) {
		o.MaxInFlight = 1
		o.Cluster, o.ClusterSecret, o.Lookups = &fakeCluster{id: "n1", route: self}, clusterSecret, noLookups{}
	})
	entered, release := make(chan struct{}), make(chan struct{})
	e.accounts.usage = func(context.Context, string) (domain.Report, error) {
		close(entered)
		<-release
		return report("u1", freePlan(), domain.Usage{}), nil
	}
	tok := e.token("u1")
	done := make(chan *apitest.Response)
	go func() { done <- e.do("GET", "/api/v1/usage", tok, nil) }()
	<-entered
	r := e.do("POST", "/api/v1/sessions", tok, validCreate)
	wantError(t, r, 503, "unavailable")
	wantNode(t, r, "n1")
	wantNode(t, e.do("GET", "/healthz", "", nil), "n1")
	close(release)
	r = <-done
	wantStatus(t, r, 200)
	wantNode(t, r, "n1")
}
