// Package config reads Tally's configuration from TALLY_* environment
// variables: one table of variables with their defaults and meanings, one
// struct, and one validation pass whose errors name the variable and say what
// is expected, so that a bad deployment stops at start-up instead of failing
// on the first request.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/redis/go-redis/v9"
	"gopkg.in/yaml.v3"

	"github.com/tally-dev/tally/domain"
)

// MinSecretLen is the shortest JWT secret or admin token accepted, in
// bytes: 32 bytes is the HMAC-SHA256 key size, and anything shorter is
// within reach of an offline guess against one captured token.
const MinSecretLen = 32

// Config is the whole configuration of one Tally process. Load builds it;
// callers may fill in the generated secrets of embedded mode afterwards.
//
// Config implements fmt.Stringer and slog.LogValuer with secrets redacted,
// so printing or logging it never leaks them.
type Config struct {
	// HTTPAddr is the listen address (TALLY_HTTP_ADDR), host:port.
	HTTPAddr string
	// DatabaseURL is the Postgres URL (TALLY_DATABASE_URL). Empty means
	// embedded mode: an embedded SQL store in DataDir.
	DatabaseURL string
	// DataDir is the embedded store's directory (TALLY_DATA_DIR).
	DataDir string
	// DatabaseMaxConns is the Postgres pool size (TALLY_DATABASE_MAX_CONNS).
	DatabaseMaxConns int

	// RedisURL is the Redis URL (TALLY_REDIS_URL). Empty, with no
	// sentinels, means an in-process Redis.
	RedisURL string
	// RedisSentinels are Sentinel host:port addresses (TALLY_REDIS_SENTINELS);
	// set together with RedisMaster, never with RedisURL.
	RedisSentinels []string
	// RedisMaster is the Sentinel master name (TALLY_REDIS_MASTER).
	RedisMaster string
	// RedisKeyPrefix starts every key Tally writes to Redis
	// (TALLY_REDIS_KEY_PREFIX), so that one Redis can be shared.
	RedisKeyPrefix string
	// RedisUsername and RedisPassword authenticate Tally to the Redis
	// that holds the data: TALLY_REDIS_URL's server, or the master the
	// Sentinels name (TALLY_REDIS_USERNAME, TALLY_REDIS_PASSWORD). They
	// exclude credentials in the URL itself (config/redis.go).
	RedisUsername, RedisPassword string
	// RedisSentinelUsername and RedisSentinelPassword authenticate Tally
	// to the Sentinels themselves (TALLY_REDIS_SENTINEL_USERNAME,
	// TALLY_REDIS_SENTINEL_PASSWORD).
	RedisSentinelUsername, RedisSentinelPassword string
	// RedisTLS turns TLS on in Sentinel mode, towards the Sentinels and
	// the master (TALLY_REDIS_TLS); a URL asks for it with rediss://.
	RedisTLS bool
	// RedisTLSCAFile, RedisTLSCertFile and RedisTLSKeyFile are PEM files:
	// the CA that signs Redis's certificates (unset: the system roots),
	// and a client certificate with its key (TALLY_REDIS_TLS_CA_FILE,
	// TALLY_REDIS_TLS_CERT_FILE, TALLY_REDIS_TLS_KEY_FILE).
	RedisTLSCAFile, RedisTLSCertFile, RedisTLSKeyFile string

	// JWTSecret is the HS256 secret user tokens are signed with
	// (TALLY_JWT_SECRET). Empty only in embedded mode, where the caller
	// generates one.
	JWTSecret string
	// JWTMaxTTL is the longest lifetime a user token may have left: a
	// token whose exp lies further ahead is refused (TALLY_JWT_MAX_TTL), so
	// that a leaked long-lived token cannot outlive a rotation.
	JWTMaxTTL time.Duration
	// JWTIssuer and JWTAudience, when set, must be the token's iss and one
	// of its aud (TALLY_JWT_ISSUER, TALLY_JWT_AUDIENCE): a token minted by
	// the same secret for another service or by another issuer is refused.
	JWTIssuer   string
	JWTAudience string
	// JWTJWKSURL, when set, is an identity provider's JSON Web Key Set
	// (TALLY_JWT_JWKS_URL): RS256, ES256 and EdDSA user tokens signed by
	// its keys are accepted beside HS256 ones (transport.JWKS).
	JWTJWKSURL string
	// UploadSecret, when set, signs upload URLs (TALLY_UPLOAD_SECRET), so
	// that the service checking uploads holds no key that mints tokens.
	UploadSecret string
	// AdminToken is the bearer token of admin endpoints (TALLY_ADMIN_TOKEN),
	// the credential named "admin". Empty in embedded mode, where the
	// caller generates one, or when AdminTokens has credentials.
	AdminToken string
	// AdminTokens are named admin credentials (TALLY_ADMIN_TOKENS): the
	// name is who the audit trail says made a change.
	AdminTokens []NamedToken

	// PlansFile is the YAML file the catalog was read from
	// (TALLY_PLANS_FILE); empty for the built-in catalog.
	PlansFile string
	// Plans is the plan catalog: PlansFile's, or domain.DefaultCatalog().
	Plans *domain.Catalog

	// UploadBaseURL is the base of signed upload URLs
	// (TALLY_UPLOAD_BASE_URL), absolute http(s), without a trailing slash.
	UploadBaseURL string
	// STTProviders are the accepted stt_provider values (TALLY_STT_PROVIDERS).
	STTProviders []string

	// LogLevel is the minimum level logged (TALLY_LOG_LEVEL).
	LogLevel slog.Level

	// RequestTimeout bounds each HTTP request, including the wait for the
	// user's actor (TALLY_REQUEST_TIMEOUT); past it the answer is 504.
	RequestTimeout time.Duration
	// ShutdownTimeout bounds the graceful drain on SIGINT/SIGTERM
	// (TALLY_SHUTDOWN_TIMEOUT).
	ShutdownTimeout time.Duration
	// IdleTimeout is how long a user's actor stays in memory unused before
	// it is passivated (TALLY_IDLE_TIMEOUT).
	IdleTimeout time.Duration
	// OpsAddr, when set, is the ops listener (TALLY_OPS_ADDR), host:port:
	// /metrics, the detailed /readyz, /healthz, and pprof when OpsPprof.
	// Empty: no ops listener, and none of these but /healthz and the bare
	// /readyz of the API listener.
	OpsAddr string
	// OpsPprof mounts net/http/pprof on the ops listener (TALLY_OPS_PPROF).
	// It needs a loopback OpsAddr unless OpsPprofAllowRemote
	// (TALLY_OPS_PPROF_ALLOW_REMOTE): pprof hands out heap contents (tokens,
	// request bodies) and goroutine stacks to whoever can reach it.
	OpsPprof            bool
	OpsPprofAllowRemote bool

	// HTTPReadTimeout bounds reading one whole request, headers and body
	// (TALLY_HTTP_READ_TIMEOUT): a client that stalls mid-body is cut off.
	HTTPReadTimeout time.Duration
	// HTTPWriteTimeout bounds handling and writing one response, counted
	// from the end of its headers (TALLY_HTTP_WRITE_TIMEOUT); it must exceed
	// RequestTimeout so that a 504 or 503 can still be written.
	HTTPWriteTimeout time.Duration
	// MaxConns caps the connections served at once (TALLY_MAX_CONNS); more
	// wait in the listen backlog.
	MaxConns int
	// MaxInFlight bounds the API and admin requests being served at once
	// (TALLY_MAX_IN_FLIGHT); the excess is answered 503 with Retry-After at
	// once instead of queueing toward its deadline.
	MaxInFlight int
	// MaxUserInFlight bounds one user's requests being served at once
	// (TALLY_MAX_USER_IN_FLIGHT), so that one user's volume cannot take the
	// whole process's budget.
	MaxUserInFlight int

	// Cluster mode (config/cluster.go): on when EtcdEndpoints is set.
	// EtcdEndpoints are etcd client URLs (TALLY_ETCD_ENDPOINTS); NodeID
	// names this node (TALLY_NODE_ID, default derived from the host name
	// and the HTTP port); AdvertiseURL is the base URL other nodes forward
	// to (TALLY_ADVERTISE_URL); ClusterLeaseTTL is the ownership lease
	// (TALLY_CLUSTER_LEASE_TTL); ClusterSecret authenticates requests
	// between nodes (TALLY_CLUSTER_SECRET).
	EtcdEndpoints   []string
	NodeID          string
	AdvertiseURL    string
	ClusterLeaseTTL time.Duration
	ClusterSecret   string

	// Usage alerts (config/webhooks.go): on when WebhookURL is set
	// (Webhooks). WebhookURL is where they are delivered
	// (TALLY_WEBHOOK_URL). WebhookSecret is TALLY_WEBHOOK_SECRET as given,
	// whsec_…; WebhookKey is its decoded key, 24 to 64 bytes, which signs
	// the webhooks. AlertPercents are the thresholds
	// (TALLY_ALERT_THRESHOLDS), ascending, parsed even when alerts are off
	// (check Webhooks before recording any). WebhookTimeout bounds one
	// attempt (TALLY_WEBHOOK_TIMEOUT); WebhookRetryHorizon is how long a
	// delivery is retried before it is dead-lettered
	// (TALLY_WEBHOOK_RETRY_HORIZON); WebhookConcurrency is how many
	// attempts one process makes at once (TALLY_WEBHOOK_CONCURRENCY);
	// WebhookMaxBackoff the longest wait between two attempts
	// (TALLY_WEBHOOK_MAX_BACKOFF).
	WebhookURL          string
	WebhookSecret       string
	WebhookKey          []byte
	AlertPercents       []int
	WebhookTimeout      time.Duration
	WebhookRetryHorizon time.Duration
	WebhookConcurrency  int
	WebhookMaxBackoff   time.Duration
}

// Embedded reports whether the service runs without Postgres, on the
// embedded store. Only then may JWTSecret and AdminToken be empty.
func (c Config) Embedded() bool { return c.DatabaseURL == "" }

// EmbeddedRedis reports whether the service runs an in-process Redis,
// because neither a Redis URL nor Sentinels are configured.
func (c Config) EmbeddedRedis() bool { return c.RedisURL == "" && len(c.RedisSentinels) == 0 }

// Var describes one environment variable: the single place its name,
// default, meaning and parsing live, so that Load, --help and the README
// table cannot disagree.
type Var struct {
	// Name is the environment variable, e.g. TALLY_HTTP_ADDR.
	Name string
	// Default is the value used when the variable is unset or empty; ""
	// means "unset", with the consequence given in Meaning.
	Default string
	// Meaning says what the variable does and what it accepts.
	Meaning string
	// Secret values are never printed, in errors or in Redacted.
	Secret bool
	// optional marks a Secret that embedded mode does not generate: empty
	// means unused, and Redacted prints it empty rather than "(generate)".
	optional bool

	// show turns a value into something safe to print (URL passwords
	// masked); nil prints it as is.
	show func(string) string
	// parse validates v (never empty unless Default is) and stores it in c;
	// its error says what is wanted.
	parse func(c *Config, v string) error
	// get is the inverse of parse, for Redacted.
	get func(c Config) string
}

// vars is the table Load walks, in the order of the original contract's variables (docs/contract.md), then the extras,
// then the usage alerts' (config/webhooks.go).
var vars = append([]Var{
	{
		Name: "TALLY_HTTP_ADDR", Default: "127.0.0.1:8080",
		Meaning: "listen address, host:port (port 0 picks a free port)",
		parse: func(c *Config, v string) error {
			if err := checkHostPort(v, false); err != nil {
				return err
			}
			c.HTTPAddr = v
			return nil
		},
		get: func(c Config) string { return c.HTTPAddr },
	},
	{
		Name:    "TALLY_DATABASE_URL",
		Meaning: "Postgres URL (postgres://user:pass@host:5432/db?sslmode=disable); unset runs the embedded store in TALLY_DATA_DIR",
		show:    redactURL,
		parse: func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			if err := checkURL(v, "postgres", "postgresql"); err != nil {
				return fmt.Errorf("want postgres://user:password@host:port/database (%w)", err)
			}
			c.DatabaseURL = v
			return nil
		},
		get: func(c Config) string { return c.DatabaseURL },
	},
	{
		Name: "TALLY_DATA_DIR", Default: "./data",
		Meaning: "directory of the embedded store (embedded mode only)",
		parse:   func(c *Config, v string) error { c.DataDir = v; return nil },
		get:     func(c Config) string { return c.DataDir },
	},
	{
		Name:    "TALLY_REDIS_URL",
		Meaning: "Redis URL (redis://host:port/db or rediss:// for TLS); unset, with no Sentinels, runs an in-process Redis",
		show:    redactURL,
		parse: func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			if err := checkURL(v, "redis", "rediss"); err != nil {
				return fmt.Errorf("want redis://[user:password@]host:port/db (%w)", err)
			}
			// go-redis is the client that will use the URL: if it cannot
			// parse it (a bad db number, an unknown option), fail now.
			o, err := redis.ParseURL(v)
			if err != nil {
				return fmt.Errorf("want redis://[user:password@]host:port/db (%s)", strings.TrimPrefix(err.Error(), "redis: "))
			}
			if o.TLSConfig != nil && o.TLSConfig.InsecureSkipVerify {
				return errors.New("skip_verify is refused: Tally always verifies Redis's certificate (a private CA goes in TALLY_REDIS_TLS_CA_FILE)")
			}
			c.RedisURL = v
			return nil
		},
		get: func(c Config) string { return c.RedisURL },
	},
	{
		Name:    "TALLY_REDIS_SENTINELS",
		Meaning: "Redis Sentinel addresses, comma-separated host:port; requires TALLY_REDIS_MASTER, excludes TALLY_REDIS_URL",
		parse: func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			addrs := splitList(v)
			for _, a := range addrs {
				if err := checkHostPort(a, true); err != nil {
					return fmt.Errorf("want a comma-separated list of host:port (%q: %w)", a, err)
				}
			}
			c.RedisSentinels = addrs
			return nil
		},
		get: func(c Config) string { return strings.Join(c.RedisSentinels, ",") },
	},
	{
		Name:    "TALLY_REDIS_MASTER",
		Meaning: "Sentinel master name; set together with TALLY_REDIS_SENTINELS",
		parse: func(c *Config, v string) error {
			if strings.IndexFunc(v, unicode.IsSpace) >= 0 {
				return errors.New("want a master name without spaces")
			}
			c.RedisMaster = v
			return nil
		},
		get: func(c Config) string { return c.RedisMaster },
	},
	{
		Name: "TALLY_JWT_SECRET", Secret: true,
		Meaning: fmt.Sprintf("HS256 secret of user tokens, at least %d bytes; required with TALLY_DATABASE_URL, generated and printed in embedded mode", MinSecretLen),
		parse:   func(c *Config, v string) error { return setSecret(&c.JWTSecret, v) },
		get:     func(c Config) string { return c.JWTSecret },
	},
	{
		Name: "TALLY_JWT_MAX_TTL", Default: "24h",
		Meaning: "a user token whose exp lies further ahead than this is refused, and `tally token` issues none longer; Go duration > 0",
		parse:   durationInto(func(c *Config) *time.Duration { return &c.JWTMaxTTL }),
		get:     func(c Config) string { return c.JWTMaxTTL.String() },
	},
	{
		Name:    "TALLY_JWT_ISSUER",
		Meaning: "when set, a user token's iss must equal it; unset: not checked",
		parse:   func(c *Config, v string) error { c.JWTIssuer = v; return nil },
		get:     func(c Config) string { return c.JWTIssuer },
	},
	{
		Name:    "TALLY_JWT_AUDIENCE",
		Meaning: "when set, a user token's aud must contain it; unset: not checked",
		parse:   func(c *Config, v string) error { c.JWTAudience = v; return nil },
		get:     func(c Config) string { return c.JWTAudience },
	},
	{
		Name:    "TALLY_JWT_JWKS_URL",
		Meaning: "identity provider's JWK Set URL (https://, or http:// to a loopback host); when set, RS256, ES256 and EdDSA user tokens signed by its keys are accepted beside HS256 ones, and the set must be fetchable at start; unset: HS256 only",
		show:    redactURL,
		parse: func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			if err := checkJWKSURL(v); err != nil {
				return err
			}
			c.JWTJWKSURL = v
			return nil
		},
		get: func(c Config) string { return c.JWTJWKSURL },
	},
	{
		Name: "TALLY_UPLOAD_SECRET", Secret: true,
		Meaning: fmt.Sprintf("key that signs upload URLs, at least %d bytes, unlike the JWT secret and the admin token; give it to the service that checks uploads; unset: a key derived from TALLY_JWT_SECRET", MinSecretLen),
		parse:   func(c *Config, v string) error { return setSecret(&c.UploadSecret, v) },
		get:     func(c Config) string { return c.UploadSecret },
	},
	{
		Name: "TALLY_ADMIN_TOKEN", Secret: true,
		Meaning: fmt.Sprintf("bearer token of admin endpoints, at least %d bytes; required with TALLY_DATABASE_URL, generated and printed in embedded mode", MinSecretLen),
		parse:   func(c *Config, v string) error { return setSecret(&c.AdminToken, v) },
		get:     func(c Config) string { return c.AdminToken },
	},
	{
		Name: "TALLY_ADMIN_TOKENS", Secret: true,
		Meaning: fmt.Sprintf("more admin credentials, comma-separated name:token pairs: names of [a-z0-9._-] (1-64), tokens at least %d bytes, all distinct; the name is who the audit trail records; TALLY_ADMIN_TOKEN, when set, is the credential named admin", MinSecretLen),
		parse:   func(c *Config, v string) error { return parseAdminTokens(&c.AdminTokens, v) },
		get: func(c Config) string {
			pairs := make([]string, len(c.AdminTokens))
			for i, t := range c.AdminTokens {
				pairs[i] = t.Name + ":" + t.Token
			}
			return strings.Join(pairs, ",")
		},
	},
	{
		Name:    "TALLY_PLANS_FILE",
		Meaning: "YAML plan catalog, plans: {name: {max_sessions, max_total_minutes, max_file_size_mb}} (-1 unlimited, 0 none); must define free; unset uses the built-in catalog",
		parse: func(c *Config, v string) error {
			if v == "" {
				c.Plans = domain.DefaultCatalog()
				return nil
			}
			cat, err := LoadPlans(v)
			if err != nil {
				return err
			}
			c.PlansFile, c.Plans = v, cat
			return nil
		},
		get: func(c Config) string { return c.PlansFile },
	},
	{
		Name: "TALLY_UPLOAD_BASE_URL", Default: "http://127.0.0.1:8080/uploads",
		Meaning: "base of signed upload URLs, absolute http(s) URL without query (a trailing slash is dropped)",
		show:    redactURL,
		parse: func(c *Config, v string) error {
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
				return errors.New("want an absolute http:// or https:// URL without query or fragment")
			}
			c.UploadBaseURL = strings.TrimRight(v, "/")
			return nil
		},
		get: func(c Config) string { return c.UploadBaseURL },
	},
	{
		Name: "TALLY_LOG_LEVEL", Default: "info",
		Meaning: "minimum log level: debug, info, warn or error (logs are JSON)",
		parse: func(c *Config, v string) error {
			l, ok := logLevels[strings.ToLower(v)]
			if !ok {
				return errors.New("want one of debug, info, warn, error")
			}
			c.LogLevel = l
			return nil
		},
		get: func(c Config) string { return strings.ToLower(c.LogLevel.String()) },
	},
	{
		Name: "TALLY_REDIS_KEY_PREFIX", Default: "tally:",
		Meaning: "prefix of every Redis key Tally writes, so that one Redis can serve several deployments",
		parse: func(c *Config, v string) error {
			if len(v) > 64 || strings.IndexFunc(v, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
				return errors.New("want at most 64 characters without spaces or control characters")
			}
			c.RedisKeyPrefix = v
			return nil
		},
		get: func(c Config) string { return c.RedisKeyPrefix },
	},
	// The credentials and TLS of the Redis connection; config/redis.go
	// checks how they combine with the URL or the Sentinels.
	{
		Name:    "TALLY_REDIS_USERNAME",
		Meaning: "ACL user Tally logs in to Redis as (the master, in Sentinel mode); requires TALLY_REDIS_PASSWORD; unset: the default user",
		parse:   func(c *Config, v string) error { return setRedisUser(&c.RedisUsername, v) },
		get:     func(c Config) string { return c.RedisUsername },
	},
	{
		Name: "TALLY_REDIS_PASSWORD", Secret: true, optional: true,
		Meaning: "password of that user, or the requirepass of the default user; with TALLY_REDIS_URL or TALLY_REDIS_SENTINELS, and never with user info in TALLY_REDIS_URL",
		parse:   func(c *Config, v string) error { c.RedisPassword = v; return nil },
		get:     func(c Config) string { return c.RedisPassword },
	},
	{
		Name:    "TALLY_REDIS_SENTINEL_USERNAME",
		Meaning: "ACL user Tally logs in to the Sentinels as; requires TALLY_REDIS_SENTINEL_PASSWORD; unset: the default user",
		parse:   func(c *Config, v string) error { return setRedisUser(&c.RedisSentinelUsername, v) },
		get:     func(c Config) string { return c.RedisSentinelUsername },
	},
	{
		Name: "TALLY_REDIS_SENTINEL_PASSWORD", Secret: true, optional: true,
		Meaning: "password the Sentinels themselves require (their requirepass, or that user's); Sentinel mode only",
		parse:   func(c *Config, v string) error { c.RedisSentinelPassword = v; return nil },
		get:     func(c Config) string { return c.RedisSentinelPassword },
	},
	{
		Name: "TALLY_REDIS_TLS", Default: "false",
		Meaning: "true: TLS to the Sentinels and to the master they name, each certificate checked against the address dialled (Sentinel mode; a URL asks for TLS with rediss://)",
		parse: func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return errors.New("want true or false")
			}
			c.RedisTLS = b
			return nil
		},
		get: func(c Config) string { return strconv.FormatBool(c.RedisTLS) },
	},
	{
		Name:    "TALLY_REDIS_TLS_CA_FILE",
		Meaning: "PEM file of the CA certificates that sign Redis's (and the Sentinels') certificates, for rediss:// or TALLY_REDIS_TLS; unset: the system's roots",
		parse:   func(c *Config, v string) error { c.RedisTLSCAFile = v; return nil },
		get:     func(c Config) string { return c.RedisTLSCAFile },
	},
	{
		Name:    "TALLY_REDIS_TLS_CERT_FILE",
		Meaning: "PEM client certificate Tally presents to Redis (for tls-auth-clients yes); with TALLY_REDIS_TLS_KEY_FILE, for rediss:// or TALLY_REDIS_TLS",
		parse:   func(c *Config, v string) error { c.RedisTLSCertFile = v; return nil },
		get:     func(c Config) string { return c.RedisTLSCertFile },
	},
	{
		Name:    "TALLY_REDIS_TLS_KEY_FILE",
		Meaning: "PEM private key of TALLY_REDIS_TLS_CERT_FILE",
		parse:   func(c *Config, v string) error { c.RedisTLSKeyFile = v; return nil },
		get:     func(c Config) string { return c.RedisTLSKeyFile },
	},
	{
		Name: "TALLY_REQUEST_TIMEOUT", Default: "5s",
		Meaning: "deadline of each HTTP request, including the wait for the user's actor (504 past it); Go duration > 0",
		parse:   durationInto(func(c *Config) *time.Duration { return &c.RequestTimeout }),
		get:     func(c Config) string { return c.RequestTimeout.String() },
	},
	{
		Name: "TALLY_SHUTDOWN_TIMEOUT", Default: "15s",
		Meaning: "how long a stopping service drains in-flight requests and writes; Go duration > 0",
		parse:   durationInto(func(c *Config) *time.Duration { return &c.ShutdownTimeout }),
		get:     func(c Config) string { return c.ShutdownTimeout.String() },
	},
	{
		Name: "TALLY_IDLE_TIMEOUT", Default: "2m",
		Meaning: "how long a user's actor stays in memory unused before it is passivated; Go duration > 0",
		parse:   durationInto(func(c *Config) *time.Duration { return &c.IdleTimeout }),
		get:     func(c Config) string { return c.IdleTimeout.String() },
	},
	{
		Name:    "TALLY_OPS_ADDR",
		Meaning: "host:port of the ops listener: /metrics, /readyz with each check's detail, /healthz, and /debug/pprof with TALLY_OPS_PPROF; keep it off the public network; unset: no ops listener (no metrics)",
		parse: func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			if err := checkHostPort(v, false); err != nil {
				return err
			}
			c.OpsAddr = v
			return nil
		},
		get: func(c Config) string { return c.OpsAddr },
	},
	{
		Name: "TALLY_OPS_PPROF", Default: "false",
		Meaning: "true serves /debug/pprof (profiling) on the ops listener; needs TALLY_OPS_ADDR on loopback (127.0.0.1, [::1], localhost)",
		parse:   boolInto(func(c *Config) *bool { return &c.OpsPprof }),
		get:     func(c Config) string { return strconv.FormatBool(c.OpsPprof) },
	},
	{
		Name: "TALLY_OPS_PPROF_ALLOW_REMOTE", Default: "false",
		Meaning: "true lets TALLY_OPS_PPROF serve on a non-loopback TALLY_OPS_ADDR (pprof exposes memory contents: only behind a firewall)",
		parse:   boolInto(func(c *Config) *bool { return &c.OpsPprofAllowRemote }),
		get:     func(c Config) string { return strconv.FormatBool(c.OpsPprofAllowRemote) },
	},
	{
		Name: "TALLY_STT_PROVIDERS", Default: "google,assemblyai",
		Meaning: "accepted stt_provider values, comma-separated",
		parse: func(c *Config, v string) error {
			names := splitList(v)
			seen := make(map[string]bool, len(names))
			for _, n := range names {
				if !validProvider(n) || seen[n] {
					return fmt.Errorf("want a comma-separated list of distinct names of 1-64 characters [A-Za-z0-9._-] (bad: %q)", n)
				}
				seen[n] = true
			}
			c.STTProviders = names
			return nil
		},
		get: func(c Config) string { return strings.Join(c.STTProviders, ",") },
	},
	{
		Name: "TALLY_HTTP_READ_TIMEOUT", Default: "10s",
		Meaning: "longest time to read one whole request, headers and body (a stalled client is cut off); Go duration > 0",
		parse:   durationInto(func(c *Config) *time.Duration { return &c.HTTPReadTimeout }),
		get:     func(c Config) string { return c.HTTPReadTimeout.String() },
	},
	{
		Name: "TALLY_HTTP_WRITE_TIMEOUT", Default: "15s",
		Meaning: "longest time to handle and write one response after its headers were read; Go duration > TALLY_REQUEST_TIMEOUT",
		parse:   durationInto(func(c *Config) *time.Duration { return &c.HTTPWriteTimeout }),
		get:     func(c Config) string { return c.HTTPWriteTimeout.String() },
	},
	{
		Name: "TALLY_MAX_CONNS", Default: "4096",
		Meaning: "connections served at once; more wait in the listen backlog; integer >= 1",
		parse:   intInto(1, func(c *Config) *int { return &c.MaxConns }),
		get:     func(c Config) string { return strconv.Itoa(c.MaxConns) },
	},
	{
		Name: "TALLY_MAX_IN_FLIGHT", Default: "512",
		Meaning: "API and admin requests served at once; the excess is answered 503 with Retry-After at once; integer >= 1",
		parse:   intInto(1, func(c *Config) *int { return &c.MaxInFlight }),
		get:     func(c Config) string { return strconv.Itoa(c.MaxInFlight) },
	},
	{
		Name: "TALLY_MAX_USER_IN_FLIGHT", Default: "128",
		Meaning: "one user's requests served at once (its share of TALLY_MAX_IN_FLIGHT); the excess is answered 503 with Retry-After; integer >= 1",
		parse:   intInto(1, func(c *Config) *int { return &c.MaxUserInFlight }),
		get:     func(c Config) string { return strconv.Itoa(c.MaxUserInFlight) },
	},
	{
		Name: "TALLY_DATABASE_MAX_CONNS", Default: "16",
		Meaning: "Postgres connection pool size; integer >= 1",
		parse: func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return errors.New("want an integer >= 1")
			}
			c.DatabaseMaxConns = n
			return nil
		},
		get: func(c Config) string { return strconv.Itoa(c.DatabaseMaxConns) },
	},
	{
		Name:    "TALLY_ETCD_ENDPOINTS",
		Meaning: "etcd client URLs, comma-separated (http://127.0.0.1:2379,…); set: cluster mode (needs TALLY_DATABASE_URL); unset: a single node",
		parse:   parseEtcdEndpoints,
		get:     func(c Config) string { return strings.Join(c.EtcdEndpoints, ",") },
	},
	{
		Name:    "TALLY_NODE_ID",
		Meaning: "this node's id in the cluster, 1-64 characters of [A-Za-z0-9._-], unique; unset: host name and HTTP port (host-port)",
		parse:   parseNodeID,
		get:     func(c Config) string { return c.NodeID },
	},
	{
		Name:    "TALLY_ADVERTISE_URL",
		Meaning: "base URL the other nodes reach this one at (http://10.0.0.5:8080); unset: http://TALLY_HTTP_ADDR when that names a host and a port",
		parse:   parseAdvertiseURL,
		get:     func(c Config) string { return c.AdvertiseURL },
	},
	{
		Name: "TALLY_CLUSTER_LEASE_TTL", Default: "5s",
		Meaning: "ownership lease in etcd, whole seconds >= 1: a node that stops renewing it loses its partitions this long after",
		parse:   parseLeaseTTL,
		get:     func(c Config) string { return c.ClusterLeaseTTL.String() },
	},
	{
		Name: "TALLY_CLUSTER_SECRET", Secret: true, optional: true,
		Meaning: fmt.Sprintf("key that authenticates requests forwarded between nodes, at least %d bytes, the same on every node and unlike every other secret; required in cluster mode", MinSecretLen),
		parse:   func(c *Config, v string) error { return setSecret(&c.ClusterSecret, v) },
		get:     func(c Config) string { return c.ClusterSecret },
	},
}, webhookVars...)

// retired are variables Tally no longer reads, with what replaced them.
// Load refuses them: a deployment that still sets one would otherwise lose
// what it asked for without a word.
var retired = []struct{ name, problem string }{
	{"TALLY_DEBUG_ADDR", "is no longer read: pprof is served on the ops listener; set TALLY_OPS_ADDR=127.0.0.1:PORT and TALLY_OPS_PPROF=true instead"},
	{"TALLY_DEBUG_ALLOW_REMOTE", "is no longer read: set TALLY_OPS_PPROF_ALLOW_REMOTE instead"},
}

// Vars lists every variable Load reads, with its default and meaning, in a
// stable order; it is what --help and the README table are made from.
func Vars() []Var { return append([]Var(nil), vars...) }

// WriteVars prints the variables as an aligned table, for --help.
func WriteVars(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tDEFAULT\tMEANING")
	for _, v := range vars {
		def := v.Default
		if def == "" {
			def = "(unset)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", v.Name, def, v.Meaning)
	}
	return tw.Flush()
}

// VarError is one variable whose value cannot be used.
type VarError struct {
	// Name is the variable, e.g. TALLY_HTTP_ADDR.
	Name string
	// Problem completes the sentence that starts with Name: the value (when
	// it may be printed) and what is wanted instead.
	Problem string
}

func (e *VarError) Error() string { return e.Name + " " + e.Problem }

// Load reads the configuration through getenv (os.Getenv in main, a map in
// tests): defaults, then the environment's values, then one validation pass.
// An empty value counts as unset. The error, when there is one, joins one
// *VarError per bad variable, each naming it and saying what is expected.
func Load(getenv func(string) string) (Config, error) {
	var c Config
	var errs []error
	bad := map[string]bool{}
	for _, v := range vars {
		val := getenv(v.Name)
		if val == "" {
			val = v.Default
		}
		if err := v.parse(&c, val); err != nil {
			errs = append(errs, invalid(v, val, err))
			bad[v.Name] = true
		}
	}
	for _, r := range retired {
		if getenv(r.name) != "" {
			errs = append(errs, &VarError{r.name, r.problem})
		}
	}
	errs = append(errs, c.crossCheck(bad)...)
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return c, nil
}

// crossCheck applies the rules that involve more than one variable, once
// each variable's own value is known to be well formed. Variables in bad
// were refused already; one message per variable is enough.
func (c *Config) crossCheck(bad map[string]bool) []error {
	var errs []error
	add := func(name, problem string) {
		if !bad[name] {
			errs = append(errs, &VarError{name, problem})
		}
	}
	if len(c.RedisSentinels) > 0 && c.RedisURL != "" {
		add("TALLY_REDIS_SENTINELS", "cannot be combined with TALLY_REDIS_URL: set one of them")
	}
	if len(c.RedisSentinels) > 0 && c.RedisMaster == "" {
		add("TALLY_REDIS_MASTER", "is required when TALLY_REDIS_SENTINELS is set: want the Sentinel master name")
	}
	if len(c.RedisSentinels) == 0 && c.RedisMaster != "" {
		add("TALLY_REDIS_SENTINELS", "is required when TALLY_REDIS_MASTER is set: want a comma-separated list of host:port")
	}
	c.crossCheckRedis(bad, add)
	c.crossCheckCluster(bad, add)
	c.crossCheckWebhooks(bad, add)
	if c.OpsPprof && c.OpsAddr == "" {
		add("TALLY_OPS_PPROF", "is true but TALLY_OPS_ADDR is unset: pprof is served on the ops listener only; set TALLY_OPS_ADDR=127.0.0.1:PORT")
	}
	if c.OpsPprof && c.OpsAddr != "" && !c.OpsPprofAllowRemote && !loopback(c.OpsAddr) {
		add("TALLY_OPS_PPROF", fmt.Sprintf("is true but TALLY_OPS_ADDR (%s) is not a loopback address, and pprof hands out heap contents and goroutine stacks: want TALLY_OPS_ADDR=127.0.0.1:PORT, [::1]:PORT or localhost:PORT, or set TALLY_OPS_PPROF_ALLOW_REMOTE=true", c.OpsAddr))
	}
	if c.UploadSecret != "" && (c.UploadSecret == c.JWTSecret || c.UploadSecret == c.AdminToken) {
		add("TALLY_UPLOAD_SECRET", "must differ from TALLY_JWT_SECRET and TALLY_ADMIN_TOKEN: the service that checks uploads holds it")
	}
	if c.AdminToken != "" && c.AdminToken == c.JWTSecret {
		add("TALLY_ADMIN_TOKEN", "must differ from TALLY_JWT_SECRET: whoever holds the admin token could otherwise sign any user's token, and a leaked signing secret would open the admin API")
	}
	if problem := c.adminTokensClash(); problem != "" {
		add("TALLY_ADMIN_TOKENS", problem)
	}
	if c.HTTPWriteTimeout <= c.RequestTimeout {
		add("TALLY_HTTP_WRITE_TIMEOUT", fmt.Sprintf("must be longer than TALLY_REQUEST_TIMEOUT (%s), or the answer to a request that used its whole deadline could not be written", c.RequestTimeout))
	}
	// Outside embedded mode several processes share one Postgres, so a
	// secret generated by one of them would reject the others' tokens.
	if !c.Embedded() {
		want := fmt.Sprintf("is required when TALLY_DATABASE_URL is set: want at least %d bytes", MinSecretLen)
		if c.JWTSecret == "" {
			add("TALLY_JWT_SECRET", want)
		}
		if c.AdminToken == "" && len(c.AdminTokens) == 0 {
			add("TALLY_ADMIN_TOKEN", want+" (or set TALLY_ADMIN_TOKENS)")
		}
	}
	return errs
}

// invalid builds the error of a value its variable's parser refused,
// printing the value only when it is safe to.
func invalid(v Var, val string, err error) *VarError {
	if v.show != nil {
		val = v.show(val)
	}
	if v.Secret || val == "" {
		return &VarError{v.Name, "is invalid: " + err.Error()}
	}
	return &VarError{v.Name, fmt.Sprintf("%q is invalid: %v", val, err)}
}

// Redacted returns every variable's effective value, safe to log at start:
// secrets are "[redacted]" (or "(generate)" when empty in embedded mode) and
// URL passwords are masked.
func (c Config) Redacted() map[string]string {
	out := make(map[string]string, len(vars))
	for _, v := range vars {
		val := v.get(c)
		switch {
		case v.Secret && val != "":
			val = "[redacted]"
		case v.Secret && c.Embedded() && !v.optional:
			val = "(generate)"
		case v.show != nil:
			val = v.show(val)
		}
		out[v.Name] = val
	}
	return out
}

// LogValue logs the configuration as a group, redacted, in table order.
func (c Config) LogValue() slog.Value {
	r := c.Redacted()
	attrs := make([]slog.Attr, 0, len(vars))
	for _, v := range vars {
		attrs = append(attrs, slog.String(v.Name, r[v.Name]))
	}
	return slog.GroupValue(attrs...)
}

// String prints the configuration redacted, so that a stray %v cannot leak
// a secret into a log.
func (c Config) String() string {
	r := c.Redacted()
	var b strings.Builder
	for i, v := range vars {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%q", v.Name, r[v.Name])
	}
	return b.String()
}

// GoString keeps %#v as safe as %v.
func (c Config) GoString() string { return "config.Config{" + c.String() + "}" }

var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug,
	"info":  slog.LevelInfo,
	"warn":  slog.LevelWarn,
	"error": slog.LevelError,
}

func setSecret(dst *string, v string) error {
	if v != "" && len(v) < MinSecretLen {
		return fmt.Errorf("want at least %d bytes, got %d (e.g. openssl rand -hex 32)", MinSecretLen, len(v))
	}
	*dst = v
	return nil
}

func boolInto(field func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errors.New("want true or false")
		}
		*field(c) = b
		return nil
	}
}

func intInto(least int, field func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < least {
			return fmt.Errorf("want an integer >= %d", least)
		}
		*field(c) = n
		return nil
	}
}

func durationInto(field func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return errors.New("want a positive Go duration such as 500ms, 5s or 2m")
		}
		*field(c) = d
		return nil
	}
}

// checkHostPort accepts host:port with a numeric port. An empty host means
// every interface for a listener, but is refused where something is dialled.
func checkHostPort(s string, needHost bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("want host:port")
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return errors.New("want host:port with a numeric port 0-65535")
	}
	if host == "" && needHost {
		return errors.New("want host:port with a host")
	}
	if strings.ContainsAny(host, " /") {
		return errors.New("want host:port")
	}
	return nil
}

// checkJWKSURL accepts an absolute https URL, or http to a loopback host:
// whoever can change the keys on the way can sign any user's token.
func checkJWKSURL(v string) error {
	u, err := url.Parse(v)
	if err != nil || u.Host == "" || u.Opaque != "" || u.Fragment != "" || (u.Scheme != "https" && u.Scheme != "http") {
		return errors.New("want an absolute https:// URL without fragment")
	}
	if u.Scheme == "http" && !loopback(net.JoinHostPort(u.Hostname(), "0")) {
		return errors.New("want https://: keys fetched over plain http could be replaced on the way, letting anyone sign tokens (http:// is accepted for 127.0.0.1, [::1] and localhost only)")
	}
	return nil
}

// loopback reports whether host:port names a loopback interface only (an
// empty host, as in ":6060", is every interface).
func loopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkURL checks that s parses as scheme://… for one of the schemes. The
// parse error is stripped of the URL itself, which may hold a password.
func checkURL(s string, schemes ...string) error {
	u, err := url.Parse(s)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return err
	}
	for _, sc := range schemes {
		if u.Scheme == sc && strings.HasPrefix(s, sc+"://") {
			return nil
		}
	}
	return fmt.Errorf("scheme must be %s", strings.Join(schemes, " or "))
}

// redactURL masks the password of a URL, in its user info or in a password
// query parameter (both are valid for Postgres). A value that does not parse
// is hidden whole (""), as it could still hold a password.
func redactURL(s string) string {
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

func splitList(v string) []string {
	parts := strings.Split(v, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}

func validProvider(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// planFields are the limits every plan in a plans file must set.
var planFields = []string{"max_sessions", "max_total_minutes", "max_file_size_mb"}

// LoadPlans reads a plans file:
//
//	plans:
//	  free: {max_sessions: 10, max_total_minutes: 120, max_file_size_mb: 60}
//
// Every plan must set every limit to an integer >= -1; unknown keys are
// refused, because a misspelt limit silently left at a default would sell
// what the operator did not mean to. The errors name the plan and field.
func LoadPlans(path string) (*domain.Catalog, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var perr *fs.PathError
		if errors.As(err, &perr) {
			err = perr.Err
		}
		return nil, fmt.Errorf("cannot read it: %w", err)
	}
	// The document is walked as nodes rather than decoded into structs so
	// that every refusal can name the plan and field, with its line: a
	// struct decode (even with KnownFields) reports Go type names instead.
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the file is empty; want a top-level plans: mapping")
		}
		return nil, fmt.Errorf("want YAML with a top-level plans: mapping (%s)", oneLine(err))
	}
	if err := dec.Decode(new(yaml.Node)); !errors.Is(err, io.EOF) {
		return nil, errors.New("want a single YAML document")
	}
	var root *yaml.Node
	if len(doc.Content) == 0 {
		return nil, errors.New("want a top-level plans: mapping of plan names to limits")
	}
	if top := deref(doc.Content[0]); top.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(top.Content); i += 2 {
			key := top.Content[i]
			if key.Value != "plans" {
				return nil, fmt.Errorf("unknown top-level key %q (line %d); want plans", key.Value, key.Line)
			}
			if root != nil {
				return nil, fmt.Errorf("plans is set twice (line %d)", key.Line)
			}
			root = deref(top.Content[i+1])
		}
	}
	if root == nil || root.Kind != yaml.MappingNode {
		return nil, errors.New("want a top-level plans: mapping of plan names to limits")
	}
	var plans []domain.Plan
	seen := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		name := root.Content[i].Value
		if seen[name] {
			return nil, fmt.Errorf("plan %q is defined twice (line %d)", name, root.Content[i].Line)
		}
		seen[name] = true
		p, err := decodePlan(name, deref(root.Content[i+1]))
		if err != nil {
			return nil, fmt.Errorf("plan %q: %w", name, err)
		}
		plans = append(plans, p)
	}
	slices.SortFunc(plans, func(a, b domain.Plan) int { return strings.Compare(a.Name, b.Name) })
	cat, err := domain.NewCatalog(plans...)
	if err != nil {
		return nil, err
	}
	return cat, nil
}

func decodePlan(name string, n *yaml.Node) (domain.Plan, error) {
	if n.Kind != yaml.MappingNode {
		return domain.Plan{}, fmt.Errorf("want a mapping of %s (line %d)", strings.Join(planFields, ", "), n.Line)
	}
	limits := map[string]domain.Limit{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], deref(n.Content[i+1])
		if !slices.Contains(planFields, key.Value) {
			return domain.Plan{}, fmt.Errorf("unknown field %q (line %d); want %s", key.Value, key.Line, strings.Join(planFields, ", "))
		}
		if _, dup := limits[key.Value]; dup {
			return domain.Plan{}, fmt.Errorf("%s is set twice (line %d)", key.Value, key.Line)
		}
		var l int64
		// The tag check refuses what Decode would quietly accept: a null
		// (`max_sessions:`) decodes to 0, which would mean "none allowed".
		if val.Kind != yaml.ScalarNode || val.ShortTag() != "!!int" || val.Decode(&l) != nil || l < -1 {
			return domain.Plan{}, fmt.Errorf("%s is %q (line %d); want an integer >= -1 (-1 unlimited, 0 none allowed)", key.Value, val.Value, val.Line)
		}
		limits[key.Value] = domain.Limit(l)
	}
	for _, f := range planFields {
		if _, ok := limits[f]; !ok {
			return domain.Plan{}, fmt.Errorf("%s is missing; every plan sets %s", f, strings.Join(planFields, ", "))
		}
	}
	return domain.Plan{
		Name:            name,
		MaxSessions:     limits["max_sessions"],
		MaxTotalMinutes: limits["max_total_minutes"],
		MaxFileSizeMB:   limits["max_file_size_mb"],
	}, nil
}

// oneLine keeps a multi-line YAML error on the one line of its variable's
// message.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}

// deref follows YAML aliases (*name) to the node they stand for.
func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// NamedToken is one admin credential: a bearer token and the name the audit
// trail records for the changes made with it. Printing one never shows the
// token.
type NamedToken struct {
	Name  string
	Token string
}

func (t NamedToken) String() string   { return t.Name + ":[redacted]" }
func (t NamedToken) GoString() string { return "config.NamedToken{" + t.String() + "}" }

// AdminTokenName is the name of the credential TALLY_ADMIN_TOKEN gives.
const AdminTokenName = "admin"

// AdminCredentials lists every admin credential: TALLY_ADMIN_TOKEN's, named
// AdminTokenName, then TALLY_ADMIN_TOKENS'.
func (c Config) AdminCredentials() []NamedToken {
	var out []NamedToken
	if c.AdminToken != "" {
		out = append(out, NamedToken{Name: AdminTokenName, Token: c.AdminToken})
	}
	return append(out, c.AdminTokens...)
}

// parseAdminTokens reads TALLY_ADMIN_TOKENS. Its errors name an entry by
// its position, never by its name: a value written token:name has a token
// where the name goes, and a hex token is a valid name.
func parseAdminTokens(dst *[]NamedToken, v string) error {
	if v == "" {
		return nil
	}
	var out []NamedToken
	names := map[string]int{}  // entry of each name
	tokens := map[string]int{} // entry of each token
	for i, entry := range strings.Split(v, ",") {
		entry = strings.TrimSpace(entry)
		name, token, ok := strings.Cut(entry, ":")
		switch {
		case entry == "":
			return fmt.Errorf("entry %d is empty; want comma-separated name:token pairs", i+1)
		case !ok:
			return fmt.Errorf("entry %d is not name:token", i+1)
		case !validCredentialName(name):
			return fmt.Errorf("entry %d: the name before ':' must be 1 to 64 characters of [a-z0-9._-]", i+1)
		case len(token) < MinSecretLen:
			return fmt.Errorf("entry %d: want a token of at least %d bytes, got %d (e.g. openssl rand -hex 32)", i+1, MinSecretLen, len(token))
		case names[name] != 0:
			return fmt.Errorf("entry %d has the name of entry %d; every credential needs its own", i+1, names[name])
		case tokens[token] != 0:
			return fmt.Errorf("entry %d has the token of entry %d; tokens must be distinct, or the trail could not tell who acted", i+1, tokens[token])
		}
		names[name], tokens[token] = i+1, i+1
		out = append(out, NamedToken{Name: name, Token: token})
	}
	*dst = out
	return nil
}

func validCredentialName(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// adminTokensClash says how TALLY_ADMIN_TOKENS clashes with the other
// secrets, or "". Entries are named by position, as in parseAdminTokens.
func (c Config) adminTokensClash() string {
	for i, t := range c.AdminTokens {
		entry := fmt.Sprintf("entry %d", i+1)
		switch {
		case c.AdminToken != "" && t.Name == AdminTokenName:
			return entry + " is named " + AdminTokenName + ", which is TALLY_ADMIN_TOKEN's name: rename it, or unset TALLY_ADMIN_TOKEN"
		case t.Token == c.AdminToken:
			return entry + " has the token of TALLY_ADMIN_TOKEN; tokens must be distinct, or the trail could not tell who acted"
		case t.Token == c.JWTSecret:
			return entry + " has the token TALLY_JWT_SECRET is: it must differ, or its holder could sign any user's token"
		case t.Token == c.UploadSecret:
			return entry + " has the token TALLY_UPLOAD_SECRET is: it must differ, the service that checks uploads holds that one"
		}
	}
	return ""
}
