// Package app wires one Tally process together: configuration → stores
// (Postgres or the embedded store, Redis or an in-process one) → the
// per-user actors → the Gin HTTP edge. cmd/tally calls it; tests build whole
// servers with it, so what is tested is what runs.
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
)

// Bounds of the HTTP server that are not configuration: headers are small
// (the largest is a bearer token, refused over 8 KiB by the transport), and
// a client that has not sent them after 5 s is not going to.
const (
	maxHeaderBytes = 16 << 10
	maxHeaderTime  = 5 * time.Second
)

// App is one running Tally: its stores, actors and HTTP handler.
type App struct {
	cfg      config.Config
	log      *slog.Logger
	store    persistence.Store
	redis    redis.UniversalClient
	mini     *miniredis.Miniredis // in-process Redis of embedded mode, or nil
	cache    *rediscache.Cache
	accounts *actors.Service
	handler  http.Handler
	registry *prometheus.Registry
	conns    connGauge
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
	if cfg.JWTSecret == "" || cfg.AdminToken == "" {
		return nil, errors.New("app: the JWT secret and admin token must be set (embedded mode generates them in cmd/tally)")
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

	a.accounts, err = actors.New(actors.Options{
		Store:       a.store,
		Cache:       a.cache,
		Catalog:     cfg.Plans,
		Logger:      log.With("component", "actors"),
		Registry:    a.registry,
		IdleTimeout: cfg.IdleTimeout,
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
	a.handler, err = transport.New(transport.Options{
		Accounts:      a.accounts,
		Catalog:       cfg.Plans,
		JWTSecret:     []byte(cfg.JWTSecret),
		JWTMaxTTL:     cfg.JWTMaxTTL,
		JWTIssuer:     cfg.JWTIssuer,
		JWTAudience:   cfg.JWTAudience,
		UploadSecret:  []byte(cfg.UploadSecret),
		AdminToken:    cfg.AdminToken,
		UploadBaseURL: cfg.UploadBaseURL,
		Providers:     cfg.STTProviders,
		Logger:        log,
		Registry:      a.registry,
		Checkers:      []transport.Checker{storeChecker{a.store, cfg.Embedded()}, redisChecker{a.cache, cfg}},
		MaxInFlight:   cfg.MaxInFlight,
	})
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

// Handler is the HTTP handler of the service.
func (a *App) Handler() http.Handler { return a.handler }

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
func (a *App) Serve(ctx context.Context, ln net.Listener) error {
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
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	a.log.Info("shutting down: draining in-flight requests", "timeout", a.cfg.ShutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
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

// Close stops the actors, then the cache writer, then closes the stores.
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
}

// storeChecker reports the store's reachability to /readyz.
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
