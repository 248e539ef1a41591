package load

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/tally-dev/tally/domain"
)

// Defaults of Config's zero fields.
const (
	DefaultURL         = "http://127.0.0.1:8080"
	DefaultPath        = "/api/v1/sessions"
	DefaultUsers       = 100
	DefaultPlan        = "free"
	DefaultConcurrency = 64
	DefaultTimeout     = 10 * time.Second
	// DefaultDuration applies when neither Duration nor Requests is set.
	DefaultDuration = 10 * time.Second
	// DefaultLateAfter is how far behind its scheduled time an open-loop
	// request may be sent before it counts as late. It is well above the
	// pacer's own jitter on an idle machine (tens of microseconds), so
	// "late" means that every worker was busy or that the client itself was
	// starved of CPU, not that a timer was a little slow.
	DefaultLateAfter = time.Millisecond
)

// baselineSecret signs tokens when no secret is given and neither
// provisioning nor verification needs the server to accept them (a bare
// baseline server): the requests still carry a realistic Authorization
// header, so the comparison with Tally stays fair.
const baselineSecret = "tally-load-baseline-secret-not-verified"

// Config is one load run. The zero value of a field means its default.
type Config struct {
	// URL is the server's base URL, e.g. http://127.0.0.1:8080. Users are
	// provisioned and the run verified through it.
	URL string
	// URLs, when set, are several base URLs of one service (the nodes of a
	// cluster): the creates are spread over them, worker by worker, so that
	// each gets an equal share. URL defaults to the first.
	URLs []string
	// Path is the path creates are POSTed to (default /api/v1/sessions).
	Path string
	// Users is the number of distinct users the requests are spread over,
	// round robin (default 100).
	Users int
	// Hot sends every request as one user (Users is then 1).
	Hot bool
	// Plan is the plan users are put on before the run (default "free").
	Plan string
	// UserPrefix starts every user id; ids are UserPrefix-0, UserPrefix-1…
	// Empty picks "load-" and 8 random hex digits, so that runs do not share
	// users (and start from zero usage).
	UserPrefix string
	// UserIDs, when set, are the users themselves, in place of UserPrefix-N
	// (Users is then their number): a caller that chose its users, e.g.
	// all owned by one node of a cluster, sends as exactly those.
	UserIDs []string

	// Duration is the measured phase's length. With Requests, whichever
	// comes first ends the run. Neither: DefaultDuration.
	Duration time.Duration
	// Requests stops the run after this many measured requests (0: no limit).
	Requests int64
	// Warmup runs the load this long before measuring; its requests count
	// for verification but not in the figures.
	Warmup time.Duration

	// Concurrency is the number of workers: requests in flight in closed
	// loop, the cap on requests in flight in open loop (default 64).
	Concurrency int
	// Rate, when > 0, switches to open loop: Rate requests per second at
	// fixed intervals, latency measured from each one's scheduled time.
	Rate float64
	// LateAfter is the open-loop lateness tolerance (default 1ms).
	LateAfter time.Duration

	// Secret is the HS256 secret user tokens are signed with
	// (TALLY_JWT_SECRET of the server).
	Secret string
	// Issuer and Audience, when set, are the iss and aud of every user
	// token (the server's TALLY_JWT_ISSUER and TALLY_JWT_AUDIENCE, which
	// refuse tokens without them).
	Issuer, Audience string
	// AdminToken authorizes provisioning (TALLY_ADMIN_TOKEN of the server).
	AdminToken string
	// Timeout bounds each request: connecting, sending and reading the
	// answer (with StdClient: connecting and waiting for the answer's
	// headers). Default 10s.
	Timeout time.Duration

	// NoProvision skips the PUT /admin/v1/users calls (for a non-Tally
	// endpoint, or users that already exist).
	NoProvision bool
	// NoVerify skips the invariant checks after the run (for a non-Tally
	// endpoint). Admitted session ids are then not even kept.
	NoVerify bool

	// StdClient sends the creates with net/http's Transport instead of the
	// built-in HTTP/1.1 client (which costs the machine far less CPU per
	// request; see rawhttp.go). For comparing the two.
	StdClient bool

	// Body is the JSON body of each create; nil means a valid NewSession.
	Body []byte

	// Interval is the length of the intervals of Result.Series (default
	// 1s). Shorter intervals show how fast latency recovers after a
	// disturbance (an overload, a restart) at a finer grain.
	Interval time.Duration
	// KeepIntervalHists keeps each interval's admitted-latency histogram
	// in Result.IntervalHists (tens of KB each: for runs of minutes, not
	// hours).
	KeepIntervalHists bool

	// Progress, when set, receives a progress bar while the load runs.
	Progress io.Writer
	// Log, when set, receives a line per phase (provisioning, load,
	// verification).
	Log io.Writer
	// OnLoad, when set, is called once provisioning is done and the load
	// begins, with the time its measured phase starts (after the warm-up):
	// for a caller that watches the server over that phase alone (a CPU
	// profile). It must not block.
	OnLoad func(measureStart time.Time)
}

// defaultBody is a valid NewSession (docs/contract.md, transport/openapi.yaml).
var defaultBody = []byte(`{"title":"tally load","language":"en-US","stt_provider":"google"}`)

// normalize fills in defaults and checks the fields, naming the one that is
// wrong the way the command line spells it.
func (c Config) normalize() (Config, error) {
	if c.URL == "" && len(c.URLs) > 0 {
		c.URL = c.URLs[0]
	}
	if c.URL == "" {
		c.URL = DefaultURL
	}
	if len(c.URLs) == 0 {
		c.URLs = []string{c.URL}
	}
	c.URLs = append([]string(nil), c.URLs...)
	for i, raw := range c.URLs {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return c, fmt.Errorf("--url must be absolute http(s) URLs, got %q", raw)
		}
		c.URLs[i] = strings.TrimRight(raw, "/")
	}
	c.URL = strings.TrimRight(c.URL, "/")
	if c.Path == "" {
		c.Path = DefaultPath
	}
	if !strings.HasPrefix(c.Path, "/") {
		return c, fmt.Errorf("--path must start with /, got %q", c.Path)
	}
	if len(c.UserIDs) > 0 {
		if c.Hot || (c.Users != 0 && c.Users != len(c.UserIDs)) {
			return c, fmt.Errorf("user ids: %d given, which --hot (one user) or --users %d contradicts", len(c.UserIDs), c.Users)
		}
		seen := make(map[string]bool, len(c.UserIDs))
		for _, id := range c.UserIDs {
			if !domain.ValidUserID(id) || seen[id] {
				return c, fmt.Errorf("user ids: %q is not a valid user id (1-128 characters of [A-Za-z0-9._@:-]) or is given twice", id)
			}
			seen[id] = true
		}
		c.UserIDs = append([]string(nil), c.UserIDs...)
		c.Users = len(c.UserIDs)
	}
	if c.Hot {
		if c.Users > 1 {
			return c, fmt.Errorf("--hot sends as one user; it cannot be combined with --users %d", c.Users)
		}
		c.Users = 1
	}
	if c.Users == 0 {
		c.Users = DefaultUsers
	}
	if c.Users < 0 {
		return c, fmt.Errorf("--users must be positive, got %d", c.Users)
	}
	if c.Plan == "" {
		c.Plan = DefaultPlan
	}
	if c.UserPrefix == "" && len(c.UserIDs) == 0 {
		var b [4]byte
		_, _ = rand.Read(b[:])
		c.UserPrefix = "load-" + hex.EncodeToString(b[:])
	}
	if len(c.UserIDs) == 0 && !domain.ValidUserID(userID(c.UserPrefix, c.Users-1)) {
		return c, fmt.Errorf("--user-prefix %q does not make valid user ids (1-128 characters of [A-Za-z0-9._@:-])", c.UserPrefix)
	}
	if c.Duration < 0 || c.Requests < 0 || c.Warmup < 0 {
		return c, errors.New("--duration, --requests and --warmup must not be negative")
	}
	if c.Duration == 0 && c.Requests == 0 {
		c.Duration = DefaultDuration
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Concurrency < 0 {
		return c, fmt.Errorf("--concurrency must be positive, got %d", c.Concurrency)
	}
	if c.Rate < 0 {
		return c, fmt.Errorf("--rate must be positive (or 0 for closed loop), got %g", c.Rate)
	}
	if c.Interval == 0 {
		c.Interval = time.Second
	}
	if c.Interval < 10*time.Millisecond {
		return c, fmt.Errorf("--interval must be at least 10ms, got %s", c.Interval)
	}
	if c.LateAfter <= 0 {
		c.LateAfter = DefaultLateAfter
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Timeout < 0 {
		return c, fmt.Errorf("--timeout must be positive, got %s", c.Timeout)
	}
	if c.Secret == "" {
		if !c.NoProvision || !c.NoVerify {
			return c, errors.New("--secret (or TALLY_JWT_SECRET) is required to sign user tokens")
		}
		c.Secret = baselineSecret
	}
	if c.AdminToken == "" && !c.NoProvision {
		return c, errors.New("--admin-token (or TALLY_ADMIN_TOKEN) is required to provision users (or pass --no-provision)")
	}
	if c.Body == nil {
		c.Body = defaultBody
	}
	return c, nil
}

// userID is the id of the i-th user of a run made of a prefix.
func userID(prefix string, i int) string { return fmt.Sprintf("%s-%d", prefix, i) }

// userID is the id of the run's i-th user: UserIDs[i] when given.
func (c Config) userID(i int) string {
	if len(c.UserIDs) > 0 {
		return c.UserIDs[i]
	}
	return userID(c.UserPrefix, i)
}

// mode names the load model for the summary.
func (c Config) mode() string {
	if c.Rate > 0 {
		return "open"
	}
	return "closed"
}
