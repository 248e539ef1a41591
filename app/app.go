// Package app wires one Tally process together: configuration → stores
// (Postgres or the embedded store, Redis or an in-process one) → the
// per-user actors → the Gin HTTP edge, and the ops listener beside it.
// cmd/tally calls it; tests build whole servers with it, so what is tested
// is what runs.
package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"golang.org/x/net/netutil"

	"github.com/tally-dev/tally/actors"
	"github.com/tally-dev/tally/config"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/persistence/postgres"
	"github.com/tally-dev/tally/persistence/rediscache"
	"github.com/tally-dev/tally/persistence/sqlite"
	"github.com/tally-dev/tally/transport"
	"github.com/tally-dev/tally/webhooks"
)

// Bounds of the HTTP server that are not configuration: headers are small
// (the largest is a bearer token, refused over 8 KiB by the transport), and
// a client that has not sent them after 5 s is not going to.
const (
	maxHeaderBytes = 16 << 10
	maxHeaderTime  = 5 * time.Second
)

// opsMaxConns caps the ops listener's connections: a scraper, a probe and
// an operator's profile need a handful, and a runaway client must not take
// the process's file descriptors.
const opsMaxConns = 64

// opsShutdownTimeout bounds the ops listener's own drain, after the API's:
// a scrape takes milliseconds, and a profile still running is cut off
// rather than holding up the exit (whose whole budget the API's drain,
// TALLY_SHUTDOWN_TIMEOUT, may already have used).
const opsShutdownTimeout = 2 * time.Second

// App is one running Tally: its stores, actors and HTTP handlers.
type App struct {
	cfg      config.Config
	log      *slog.Logger
	store    persistence.Store
	redis    redis.UniversalClient
	mini     *miniredis.Miniredis // in-process Redis of embedded mode, or nil
	jwks     *transport.JWKS      // the identity provider's keys, or nil
	cache    *rediscache.Cache
	accounts *actors.Service
	node     *nodeRef // cluster mode's node (app/cluster.go), or nil
	// dispatcher delivers the usage alerts (app/webhooks.go); nil when
	// alerts are off.
	dispatcher *webhooks.Dispatcher
	handler    http.Handler
	ops        http.Handler // the ops listener's (transport.NewOps)
	registry   *prometheus.Registry
	conns      connGauge
}

// connGauge counts the HTTP connections open now (tally_http_open_connections),
// which TALLY_MAX_CONNS caps: an operator sees how close to the cap the
// process runs and whether slow clients pile up.
type connGauge struct{ g prometheus.Gauge }

// track is the http.Server's ConnState hook: a connection is counted from
// its first state to its last (closed, or taken over by a handler).
func (c connGauge) track(_ net.Conn, state http.ConnState) {
	switch state {
	case http.StateNew:
		c.g.Inc()
	case http.StateClosed, http.StateHijacked:
		c.g.Dec()
	}
}

// OpenStore opens the configured store: Postgres when TALLY_DATABASE_URL
// is set, else the embedded store in TALLY_DATA_DIR.
func OpenStore(ctx context.Context, cfg config.Config) (persistence.Store, error) {
	if cfg.Embedded() {
		return sqlite.Open(ctx, cfg.DataDir)
	}
	return postgres.Open(ctx, cfg.DatabaseURL, postgres.MaxConns(cfg.DatabaseMaxConns))
}

// New opens the stores, applies migrations and starts the actors. The
// caller must Close the App.
func New(ctx context.Context, cfg config.Config, log *slog.Logger) (_ *App, err error) {
	if cfg.JWTSecret == "" || len(cfg.AdminCredentials()) == 0 {
		return nil, errors.New("app: the JWT secret and an admin token must be set (embedded mode generates them in cmd/tally)")
	}
	a := &App{cfg: cfg, log: log, registry: prometheus.NewRegistry()}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	a.conns = connGauge{prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tally_http_open_connections",
		Help: "HTTP connections open now (capped by TALLY_MAX_CONNS).",
	})}
	a.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), a.conns.g)

	// The identity provider's keys are fetched before anything else is
	// opened: a deployment that cannot reach them stops here, saying so
	// (docs/decisions/0016-jwks-user-tokens.md).
	if cfg.JWTJWKSURL != "" {
		a.jwks, err = transport.NewJWKS(ctx, transport.JWKSOptions{URL: cfg.JWTJWKSURL, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("TALLY_JWT_JWKS_URL: cannot load the identity provider's key set at start: %w", err)
		}
	}
	if a.store, err = OpenStore(ctx, cfg); err != nil {
		return nil, err
	}
	if err = a.store.Migrate(ctx); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	// go-redis logs on its own (dial failures, Sentinel switches): into
	// the service's JSON log, not plain text on stderr, with the variables
	// to check when an error says the Redis settings are wrong.
	rediscache.RouteDriverLogs(log, cfg.RedisHint)
	if a.redis, a.mini, err = openRedis(cfg); err != nil {
		return nil, err
	}
	a.cache = rediscache.New(a.redis, cfg.RedisKeyPrefix, log.With("component", "rediscache"), a.registry)
	a.cache.Watch(a.store, time.Second)

	var ownership actors.Ownership // nil: a single node
	if cfg.Cluster() {
		a.node = newNodeRef(cfg.NodeID)
		a.node.registerMetrics(a.registry)
		ownership = a.node
	}
	alertPercents, err := a.setupAlerts(ctx)
	if err != nil {
		return nil, fmt.Errorf("usage alerts: %w", err)
	}
	a.accounts, err = actors.New(actors.Options{
		Ownership:     ownership,
		AlertPercents: alertPercents,
		Store:         a.store,
		Cache:         a.cache,
		Catalog:       cfg.Plans,
		Logger:        log.With("component", "actors"),
		Registry:      a.registry,
		IdleTimeout:   cfg.IdleTimeout,
		// The one request deadline (actors/budget.go).
		RequestTimeout: cfg.RequestTimeout,
		// Every queued admission is an in-flight request of the HTTP edge,
		// so its bound bounds the commit queue too; this is the backstop.
		WriterQueue:     cfg.MaxInFlight,
		MaxUserInFlight: cfg.MaxUserInFlight,
	})
	if err != nil {
		return nil, err
	}
	checkers := []transport.Checker{storeChecker{a.store, cfg.Embedded()}, redisChecker{a.cache, cfg}}
	topts := transport.Options{
		Accounts:      a.accounts,
		Catalog:       cfg.Plans,
		JWTSecret:     []byte(cfg.JWTSecret),
		JWTMaxTTL:     cfg.JWTMaxTTL,
		JWTIssuer:     cfg.JWTIssuer,
		JWTAudience:   cfg.JWTAudience,
		JWKS:          a.jwks,
		UploadSecret:  []byte(cfg.UploadSecret),
		AdminToken:    cfg.AdminToken,
		AdminTokens:   adminTokens(cfg.AdminTokens),
		UploadBaseURL: cfg.UploadBaseURL,
		Providers:     cfg.STTProviders,
		Logger:        log,
		Registry:      a.registry,
		Checkers:      checkers,
		MaxInFlight:   cfg.MaxInFlight,
	}
	if a.dispatcher != nil {
		topts.Deliveries = deliveries{a.store}
	}
	if a.node != nil {
		topts.Cluster = a.node
		topts.ClusterSecret = []byte(cfg.ClusterSecret)
		topts.Lookups = a.accounts
		topts.RequestTimeout = cfg.RequestTimeout
	}
	if a.handler, err = transport.New(topts); err != nil {
		return nil, err
	}
	a.ops, err = transport.NewOps(transport.OpsOptions{Registry: a.registry, Checkers: checkers, Pprof: cfg.OpsPprof})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// openRedis connects to Sentinel or a Redis URL, with the configured
// credentials and TLS (config/redis.go), or starts an in-process Redis
// (miniredis) when neither is configured.
//
// The in-process Redis listens on a loopback port, which every local
// process can reach: it requires a password generated here, which only
// this process's client knows, so that no other process can read or
// rewrite the counters.
func openRedis(cfg config.Config) (redis.UniversalClient, *miniredis.Miniredis, error) {
	if !cfg.EmbeddedRedis() {
		client, err := cfg.NewRedisClient()
		return client, nil, err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, nil, fmt.Errorf("generate the in-process redis password: %w", err)
	}
	password := hex.EncodeToString(b)
	mini := miniredis.NewMiniRedis()
	mini.RequireAuth(password)
	if err := mini.Start(); err != nil {
		return nil, nil, fmt.Errorf("start in-process redis: %w", err)
	}
	return redis.NewClient(&redis.Options{Addr: mini.Addr(), Password: password}), mini, nil
}

// redisChecker is the cache's readiness check, whose failure names the
// variables to check when Redis refused Tally's credentials or
// certificate: a misconfiguration that, unlike an outage, waiting will not
// heal. Redis stays optional all the same: a refused Redis is a down one
// (docs/decisions/0019-redis-credentials-and-tls.md).
type redisChecker struct {
	*rediscache.Cache
	cfg config.Config
}

func (r redisChecker) Check(ctx context.Context) error {
	return r.cfg.ExplainRedisError(r.Cache.Check(ctx))
}

// Handler is the HTTP handler of the service: the API, /healthz, a bare
// /readyz and /openapi.yaml.
func (a *App) Handler() http.Handler { return a.handler }

// OpsHandler is the ops listener's handler: /metrics, /readyz with each
// check's detail, /healthz, and /debug/pprof when TALLY_OPS_PPROF is true.
// It is never to be served where API clients reach it.
func (a *App) OpsHandler() http.Handler { return a.ops }

// Accounts is the accounting core (for tools and tests).
func (a *App) Accounts() *actors.Service { return a.accounts }

// Store is the store of truth (for tools and tests).
func (a *App) Store() persistence.Store { return a.store }

// Cache is the Redis counter cache (for tools and tests).
func (a *App) Cache() *rediscache.Cache { return a.cache }

// Serve answers HTTP on ln until ctx is done, then shuts down gracefully:
// it stops accepting, lets in-flight requests finish (bounded by
// TALLY_SHUTDOWN_TIMEOUT) and returns. Close the App afterwards.
//
// A client cannot hold a connection longer than the configured timeouts:
// the whole request, body included, must arrive within
// TALLY_HTTP_READ_TIMEOUT (a body cut off answers 408 and the connection
// closes), and the answer must be written within TALLY_HTTP_WRITE_TIMEOUT.
// At most TALLY_MAX_CONNS connections are served at once; more wait in the
// listen backlog until one closes.
func (a *App) Serve(ctx context.Context, ln net.Listener) error { return a.Run(ctx, ln, nil) }

// serveAPI serves the API handler on ln until ctx is done (Serve).
func (a *App) serveAPI(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler: a.handler,
		// Headers get their own, shorter bound (but never a longer one
		// than the whole request), so that a client trickling headers is
		// cut off before any handler runs.
		ReadHeaderTimeout: headerTimeout(a.cfg.HTTPReadTimeout),
		ReadTimeout:       a.cfg.HTTPReadTimeout,
		WriteTimeout:      a.cfg.HTTPWriteTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnState:         a.conns.track,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	if a.cfg.MaxConns > 0 {
		ln = netutil.LimitListener(ln, a.cfg.MaxConns)
	}
	return a.serve(ctx, srv, ln, "shutting down: draining in-flight requests", a.cfg.ShutdownTimeout)
}

// Run serves the API on api and, when ops is not nil, the ops handler on
// ops, until ctx is done or either fails; then it shuts both down and
// returns their errors. The ops listener outlives the API's drain (Serve),
// so that the drain can be watched on /metrics, and is shut down after it.
//
// In cluster mode the node joins the cluster once the listeners are bound
// (so that no node forwards to an address nobody listens on), and leaves it
// first when ctx is done: it hands its partitions to the others while the
// API still serves (forwarding what arrives for them), and only then does
// the API drain (app/cluster.go).
func (a *App) Run(ctx context.Context, api, ops net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	opsErr := make(chan error, 1)
	stopOps := func() {}
	if ops != nil {
		var opsCtx context.Context
		opsCtx, stopOps = context.WithCancel(context.Background())
		defer stopOps()
		go func() {
			err := a.serveOps(opsCtx, ops)
			if err != nil {
				cancel() // an ops listener that failed takes the process down, as the API's would
			}
			opsErr <- err
		}()
	} else {
		opsErr <- nil
	}
	// The dispatcher delivers usage alerts for as long as the API serves,
	// and finishes its attempts in flight (bounded by
	// TALLY_WEBHOOK_TIMEOUT) once it has drained; what it leaves pending
	// is delivered by the next process, or another node.
	dispatched := make(chan error, 1)
	stopDispatch := func() {}
	if a.dispatcher != nil {
		var dctx context.Context
		dctx, stopDispatch = context.WithCancel(context.Background())
		defer stopDispatch()
		go func() { dispatched <- a.dispatcher.Run(dctx) }()
	} else {
		dispatched <- nil
	}
	apiCtx := ctx
	var left <-chan error
	if a.node != nil {
		var err error
		if apiCtx, left, err = a.joinCluster(ctx); err != nil {
			stopOps()
			stopDispatch()
			return errors.Join(err, <-opsErr, <-dispatched)
		}
	}
	err := a.serveAPI(apiCtx, api)
	cancel()
	if left != nil {
		err = errors.Join(err, <-left)
	}
	stopDispatch()
	if e := <-dispatched; e != nil && !errors.Is(e, context.Canceled) {
		err = errors.Join(err, fmt.Errorf("webhook dispatcher: %w", e))
	}
	stopOps()
	if e := <-opsErr; e != nil {
		err = errors.Join(err, fmt.Errorf("ops listener: %w", e))
	}
	return err
}

// serveOps answers the ops handler on ln until ctx is done, with the API's
// timeouts (Serve), except that with pprof there is no write timeout: a
// CPU profile or trace writes for as long as it was asked to
// (?seconds=N), and net/http/pprof refuses any N past the server's write
// timeout. At most opsMaxConns connections are served at once. Requests
// still running opsShutdownTimeout after ctx is done are cut off, which is
// no error: nothing a client was promised is lost.
func (a *App) serveOps(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           a.ops,
		ReadHeaderTimeout: headerTimeout(a.cfg.HTTPReadTimeout),
		ReadTimeout:       a.cfg.HTTPReadTimeout,
		WriteTimeout:      a.cfg.HTTPWriteTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	if a.cfg.OpsPprof {
		srv.WriteTimeout = 0
	}
	err := a.serve(ctx, srv, netutil.LimitListener(ln, opsMaxConns), "ops listener shutting down", opsShutdownTimeout)
	if errors.Is(err, context.DeadlineExceeded) {
		a.log.Warn("ops listener: requests still running at shutdown were cut off", "timeout", opsShutdownTimeout.String())
		return nil
	}
	return err
}

// serve runs srv on ln until ctx is done, then shuts it down gracefully:
// it stops accepting and lets in-flight requests finish, bounded by
// timeout; what is still running then is cut off.
func (a *App) serve(ctx context.Context, srv *http.Server, ln net.Listener, stopping string, timeout time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	a.log.Info(stopping, "timeout", timeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close() // what did not finish in time is cut off, not leaked
		return fmt.Errorf("graceful shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// headerTimeout is maxHeaderTime, or the whole request's timeout when that
// is shorter.
func headerTimeout(read time.Duration) time.Duration {
	if read > 0 && read < maxHeaderTime {
		return read
	}
	return maxHeaderTime
}

// Close stops the actors, then the cache writer, then closes the stores
// and stops refreshing the identity provider's keys.
func (a *App) Close() {
	if a.accounts != nil {
		a.accounts.Close()
	}
	if a.cache != nil {
		a.cache.Close()
	}
	if a.redis != nil {
		_ = a.redis.Close()
	}
	if a.mini != nil {
		a.mini.Close()
	}
	if a.store != nil {
		a.store.Close()
	}
	if a.jwks != nil {
		a.jwks.Close()
	}
}

// adminTokens hands TALLY_ADMIN_TOKENS to the transport.
func adminTokens(named []config.NamedToken) []transport.AdminCredential {
	out := make([]transport.AdminCredential, len(named))
	for i, t := range named {
		out[i] = transport.AdminCredential{Name: t.Name, Token: t.Token}
	}
	return out
}

// storeChecker reports the store's reachability to both /readyz.
type storeChecker struct {
	store    persistence.Store
	embedded bool
}

func (c storeChecker) Name() string {
	if c.embedded {
		return "database"
	}
	return "postgres"
}

func (c storeChecker) Check(ctx context.Context) error { return c.store.Ping(ctx) }
