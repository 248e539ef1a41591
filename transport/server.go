// Package transport is Tally's HTTP edge (Gin): it authenticates callers,
// decodes and validates requests strictly, forwards them to the accounting
// core through the Accounts interface, and maps every error to one status
// code in one place (errors.go). Beside the API it serves /healthz, a bare
// /readyz and the OpenAPI document (/openapi.yaml) that describes all of it;
// the ops handler (NewOps, ops.go) serves /metrics, the detailed /readyz and
// pprof on a listener of their own.
package transport

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/domain"
)

// Options configures the HTTP edge. Accounts, Catalog, JWTSecret,
// AdminToken or AdminTokens, UploadBaseURL and Providers are required.
type Options struct {
	Accounts  domain.Accounts
	Catalog   *domain.Catalog
	JWTSecret []byte // HS256 key of user tokens; also the root of the upload-URL key when UploadSecret is unset
	// UploadSecret, when set, signs upload URLs instead of a key derived
	// from JWTSecret, so that the service checking uploads shares nothing
	// with the token key.
	UploadSecret []byte
	// JWTMaxTTL refuses a user token whose exp lies further ahead; zero
	// means DefaultJWTMaxTTL.
	JWTMaxTTL time.Duration
	// JWTIssuer and JWTAudience, when set, are required of every user
	// token (its iss, and one of its aud).
	JWTIssuer, JWTAudience string
	// JWKS, when set, is the identity provider's key set: RS256, ES256
	// and EdDSA user tokens are verified with its keys, beside HS256 ones
	// with JWTSecret (authenticator.keyFor). The caller closes it.
	JWKS *JWKS
	// AdminToken is the admin credential named AdminTokenName ("admin");
	// AdminTokens are more, each with its name. Names and tokens must be
	// distinct: the name is who the audit trail says made a change.
	AdminToken  string
	AdminTokens []AdminCredential
	// UploadBaseURL is the absolute http(s) URL signed upload URLs are
	// built under: <base>/<session id>/<filename>?expires=…&size_mb=…&sig=….
	UploadBaseURL string
	Providers     []string // the configured speech-to-text providers
	Logger        *slog.Logger
	// Registry receives the HTTP and admission metrics; the ops handler
	// (NewOps) serves it. Nil means a private registry.
	Registry *prometheus.Registry
	Checkers []Checker // run by /readyz, which answers ready or not only
	// MaxInFlight bounds the API and admin requests being served at once;
	// more are answered 503 with Retry-After at once instead of queueing
	// in the actors' unbounded mailboxes. Zero means no bound.
	MaxInFlight int
	Now         func() time.Time // the clock; nil means time.Now

	// Cluster, when set, makes this node one of a cluster: API and admin
	// requests are served here only for users whose partition this node
	// owns, and forwarded once to the owner otherwise (cluster.go). Nil:
	// a single node, which serves everything itself.
	Cluster Cluster
	// ClusterSecret (TALLY_CLUSTER_SECRET, at least MinClusterSecret
	// bytes, the same on every node) authenticates forwarded requests
	// between nodes. Required with Cluster.
	ClusterSecret []byte
	// Lookups reads the shared store for routing (the user of a session,
	// the outcome of a create whose answer was lost). Required with
	// Cluster; actors.Service implements it.
	Lookups Lookups
	// Deliveries, when set, is the webhook outbox of usage alerts
	// (TALLY_WEBHOOK_URL set): the admin routes under
	// /admin/v1/webhooks/deliveries list, read and retry its deliveries.
	// Nil: webhooks are not configured, and those routes answer 404.
	Deliveries Deliveries
	// RequestTimeout is the core's request deadline (TALLY_REQUEST_TIMEOUT,
	// actors.Options.RequestTimeout). In cluster mode it bounds waiting
	// for a moving partition, forwarding, and resolving a lost answer, and
	// what is left of it travels with a forwarded request; zero means 5s.
	RequestTimeout time.Duration
}

// server holds what the handlers share. It is immutable after New, apart
// from the token cache, which guards itself.
type server struct {
	accounts   domain.Accounts
	catalog    *domain.Catalog
	plansJSON  []byte // the catalog never changes, so its answer is encoded once
	providers  []string
	auth       *authenticator
	admins     *admins
	uploadBase string
	uploadKey  []byte
	log        *slog.Logger
	metrics    *metrics
	checkers   []Checker
	slots      chan struct{} // nil: no in-flight bound
	now        func() time.Time
	limits     limitAnswers
	cluster    *clusterEdge // nil: a single node
	deliveries Deliveries   // nil: webhooks not configured
}

// New builds the HTTP handler. It fails on missing or invalid options, or
// when the metrics cannot be registered (New called twice with one registry).
func New(opts Options) (http.Handler, error) {
	if opts.Accounts == nil {
		return nil, errors.New("transport: Accounts is required")
	}
	if opts.Catalog == nil {
		return nil, errors.New("transport: Catalog is required")
	}
	if len(opts.JWTSecret) == 0 {
		return nil, errors.New("transport: JWTSecret is required")
	}
	creds := opts.AdminTokens
	if opts.AdminToken != "" {
		creds = append([]AdminCredential{{Name: AdminTokenName, Token: opts.AdminToken}}, creds...)
	}
	admins, err := newAdmins(creds)
	if err != nil {
		return nil, err
	}
	if len(opts.Providers) == 0 {
		return nil, errors.New("transport: at least one STT provider is required")
	}
	base, err := parseUploadBase(opts.UploadBaseURL)
	if err != nil {
		return nil, err
	}
	if err := checkCheckers(opts.Checkers); err != nil {
		return nil, err
	}
	s := &server{
		accounts:   opts.Accounts,
		catalog:    opts.Catalog,
		providers:  append([]string(nil), opts.Providers...),
		uploadBase: base,
		uploadKey:  UploadKey(opts.JWTSecret),
		log:        opts.Logger,
		checkers:   append([]Checker(nil), opts.Checkers...),
		now:        opts.Now,
		admins:     admins,
		deliveries: opts.Deliveries,
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if opts.MaxInFlight > 0 {
		s.slots = make(chan struct{}, opts.MaxInFlight)
	}
	if len(opts.UploadSecret) > 0 {
		s.uploadKey = append([]byte(nil), opts.UploadSecret...)
	}
	s.auth = newAuthenticator(opts.JWTSecret, opts.JWKS, opts.JWTMaxTTL, s.now,
		tokenClaims{issuer: opts.JWTIssuer, audience: opts.JWTAudience})
	if s.plansJSON, err = encodePlans(opts.Catalog); err != nil {
		return nil, err
	}
	reg := opts.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if s.metrics, err = newMetrics(reg, s.slots); err != nil {
		return nil, err
	}
	if opts.Cluster != nil {
		if s.cluster, err = newClusterEdge(opts, reg); err != nil {
			return nil, err
		}
	}
	engine := s.routes()
	if s.slots == nil {
		return engine, nil
	}
	return &bounded{s: s, next: engine}, nil
}

func parseUploadBase(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("transport: UploadBaseURL %q must be an absolute http(s) URL without query or fragment", raw)
	}
	return strings.TrimRight(raw, "/"), nil
}

func (s *server) routes() *gin.Engine {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	// The API has one spelling per resource: no redirects that a client
	// would follow with its body dropped.
	r.RedirectTrailingSlash = false
	r.RedirectFixedPath = false
	r.Use(s.observe)
	// In cluster mode (cluster.go) every answer names its node; API and
	// admin requests check forwarding headers first and are routed to
	// their user's owner once authenticated. Without a cluster the chains
	// are the single node's, with nothing added.
	var (
		apiFirst, adminFirst    []gin.HandlerFunc
		byToken, byUser, bySess []gin.HandlerFunc
	)
	if s.cluster != nil {
		r.Use(s.nodeHeader)
		apiFirst = []gin.HandlerFunc{s.acceptForward}
		adminFirst = []gin.HandlerFunc{s.acceptForward}
		byToken = []gin.HandlerFunc{s.routeByToken}
		byUser = []gin.HandlerFunc{s.routeByPathUser}
		bySess = []gin.HandlerFunc{s.routeBySession}
	}
	routed := func(route []gin.HandlerFunc, h gin.HandlerFunc) []gin.HandlerFunc {
		return append(append([]gin.HandlerFunc(nil), route...), h)
	}
	r.NoRoute(func(c *gin.Context) {
		s.fail(c, &domain.Error{Code: domain.CodeNotFound, Message: "no such route"})
	})

	r.GET("/healthz", s.healthz)
	r.GET("/readyz", s.readyz)
	r.GET("/openapi.yaml", s.openAPI)
	r.GET("/api/v1/plans", s.listPlans)

	api := r.Group("/api/v1", append(apiFirst, s.requireUser)...)
	api.POST("/sessions", routed(byToken, s.createSession)...)
	api.GET("/sessions", routed(byToken, s.listSessions)...)
	api.GET("/sessions/:id", routed(byToken, s.getSession)...)
	api.POST("/sessions/:id/upload-url", routed(byToken, s.createUploadURL)...)
	api.GET("/usage", routed(byToken, s.usage)...)

	admin := r.Group("/admin/v1", append(adminFirst, s.requireAdmin)...)
	admin.PUT("/users/:id", routed(byUser, s.putUser)...)
	admin.GET("/users/:id", routed(byUser, s.getUser)...)
	admin.GET("/users/:id/events", routed(byUser, s.listUserEvents)...)
	admin.POST("/users/:id/reset-usage", routed(byUser, s.resetUsage)...)
	admin.POST("/sessions/:id/complete", routed(bySess, s.completeSession)...)
	admin.POST("/sessions/:id/fail", routed(bySess, s.failSession)...)
	// The webhook deliveries belong to no user: every node reads the
	// shared outbox, so whichever receives the request serves it, without
	// a routing middleware (webhooks.go).
	admin.GET("/webhooks/deliveries", s.listDeliveries)
	admin.GET("/webhooks/deliveries/:id", s.getDelivery)
	admin.POST("/webhooks/deliveries/:id/retry", s.retryDelivery)
	return r
}

const headerRequestID = "X-Request-Id"

// observe wraps every request: it assigns the request id, recovers panics
// into a 500, and writes the access log line and the HTTP metrics.
func (s *server) observe(c *gin.Context) {
	start := time.Now()
	id := c.GetHeader(headerRequestID)
	if !validRequestID(id) {
		id = newRequestID()
	}
	c.Header(headerRequestID, id)
	secureHeaders(c.Writer.Header())

	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p) // net/http's way to abort a response; not a bug
			}
			s.log.LogAttrs(c.Request.Context(), slog.LevelError, "panic in handler",
				slog.String("request_id", id), slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
			if !c.Writer.Written() {
				s.fail(c, errors.New("panic")) // unknown error: a generic 500
			}
			c.Abort()
		}
		s.record(c, id, start)
	}()
	c.Next()
}

func (s *server) record(c *gin.Context, id string, start time.Time) {
	latency := time.Since(start)
	route := c.FullPath()
	if route == "" {
		route = "unmatched" // bounded label values: never the raw path
	}
	method := c.Request.Method
	switch method {
	case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodHead, http.MethodOptions:
	default:
		method = "other"
	}
	status := c.Writer.Status()
	s.metrics.request(route, method, status, latency.Seconds())

	// Probes hit these every few seconds; their lines would drown the ones
	// that matter.
	level := slog.LevelInfo
	if route == "/healthz" || route == "/readyz" {
		level = slog.LevelDebug
	}
	if !s.log.Enabled(c.Request.Context(), level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("request_id", id),
		slog.String("method", method),
		slog.String("route", route),
		slog.String("path", c.Request.URL.Path),
		slog.Int("status", status),
		slog.Float64("latency_ms", float64(latency.Microseconds())/1000),
	}
	if uid := c.GetString(ctxUserID); uid != "" {
		attrs = append(attrs, slog.String("user_id", uid))
	}
	if s.cluster != nil {
		if f := forwardOf(c); f != nil {
			attrs = append(attrs, slog.String("forwarded_by", f.node))
		}
	}
	s.log.LogAttrs(c.Request.Context(), level, "http request", attrs...)
}

// validRequestID accepts a client's request id only when it cannot break a
// log line or a header: 1–128 characters of [A-Za-z0-9._:-].
func validRequestID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

// newRequestID returns 32 hex digits. math/rand/v2's global source is
// ChaCha8 seeded by the runtime: unpredictable enough for an id that only
// correlates log lines, and cheaper than crypto/rand.
func newRequestID() string {
	const hexdigits = "0123456789abcdef"
	var b [32]byte
	for half := 0; half < 2; half++ {
		v := rand.Uint64()
		for i := 0; i < 16; i++ {
			b[half*16+i] = hexdigits[v&0xf]
			v >>= 4
		}
	}
	return string(b[:])
}

// Every response says that its body is what its Content-Type says (no
// sniffing a JSON error into HTML) and that no cache may keep it: answers
// carry a user's usage and sessions. The values are shared, read-only
// slices (assigned, not Set, so no response allocates them); net/http
// copies header values when it writes them.
var (
	nosniff = []string{"nosniff"}
	noStore = []string{"no-store"}
)

func secureHeaders(h http.Header) {
	h["X-Content-Type-Options"] = nosniff
	h["Cache-Control"] = noStore
}

// errBusy answers requests over MaxInFlight.
var errBusy = domain.Shed("the server is busy")

// busyBody is errBusy's answer, encoded once: under overload it is the
// most frequent answer there is.
var busyBody = func() []byte {
	_, body := classify(errBusy)
	b, err := json.Marshal(body)
	if err != nil {
		panic(err)
	}
	return b
}()

// prereadBody replays a body read ahead by bounded, then the error that
// ended the read (a read deadline, a broken connection), so that the
// handler answers it as if it had read the body itself.
type prereadBody struct {
	*bytes.Reader
	err error
}

func (p *prereadBody) Read(b []byte) (int, error) {
	n, err := p.Reader.Read(b)
	if err == io.EOF && p.err != nil {
		err = p.err
	}
	return n, err
}

func (p *prereadBody) Close() error { return nil }

// bounded sheds load over MaxInFlight in front of the router: the excess
// is answered 503 with Retry-After at once rather than queued toward its
// deadline, which under sustained overload would walk every request up to
// it (and turn them into 504s). A request's body (at most 64 KiB) is read
// before it takes a slot; everything else — routing, authentication, the
// access log line — comes after, so that shedding costs a fraction of
// serving; tally_http_shed_total counts what it refuses. /healthz, /readyz
// and /openapi.yaml are never shed: probes must see an overloaded process
// (nothing on the ops listener, NewOps, is shed either).
// InFlight is how many API and admin requests h, a handler New returned,
// holds an in-flight slot for now (TALLY_MAX_IN_FLIGHT); 0 for any other
// handler, or without a bound. Background work reads it to step aside
// while clients are being served (app/webhooks.go).
func InFlight(h http.Handler) int {
	if b, ok := h.(*bounded); ok && b.s.slots != nil {
		return len(b.s.slots)
	}
	return 0
}

type bounded struct {
	s    *server
	next http.Handler
}

func (b *bounded) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/healthz", "/readyz", "/openapi.yaml":
		b.next.ServeHTTP(w, r)
		return
	}
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength <= maxBodyBytes {
		// The body arrives before the request takes a slot: a client that
		// sends it slowly (or stalls until TALLY_HTTP_READ_TIMEOUT) holds
		// its own connection only, never a share of the in-flight bound.
		buf := bodyBuffers.Get().(*bytes.Buffer)
		buf.Reset()
		defer func() {
			if buf.Cap() <= 16<<10 {
				bodyBuffers.Put(buf)
			}
		}()
		// One byte past the limit is enough for the handler to answer 413.
		_, err := buf.ReadFrom(io.LimitReader(r.Body, maxBodyBytes+1))
		r.Body = &prereadBody{Reader: bytes.NewReader(buf.Bytes()), err: err}
		if err != nil {
			// The body never arrived whole (read deadline, broken
			// connection): the answer is an error that costs nothing to
			// give (408, or 401 first without a token), and being shed
			// instead would tell the client to retry what it never sent.
			b.next.ServeHTTP(w, r)
			return
		}
	}
	select {
	case b.s.slots <- struct{}{}:
		defer func() { <-b.s.slots }()
		b.next.ServeHTTP(w, r)
	default:
		b.s.metrics.shed.Inc()
		h := w.Header()
		id := r.Header.Get(headerRequestID)
		if !validRequestID(id) {
			id = newRequestID()
		}
		secureHeaders(h)
		if b.s.cluster != nil {
			h[HeaderNode] = b.s.cluster.node
		}
		h.Set(headerRequestID, id)
		h.Set("Retry-After", "1")
		h.Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write(busyBody)
	}
}
