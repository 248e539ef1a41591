package transport

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tally-dev/tally/domain"
)

//go:embed openapi.yaml
var openapiYAML []byte

// OpenAPI returns the OpenAPI 3.0 document of the HTTP API, as served at
// /openapi.yaml. Package apitest validates responses against it.
func OpenAPI() []byte { return slices.Clone(openapiYAML) }

func (s *server) openAPI(c *gin.Context) {
	c.Data(http.StatusOK, "application/yaml", openapiYAML)
}

func (s *server) healthz(c *gin.Context) {
	s.writeJSON(c, http.StatusOK, healthJSON{Status: "ok"})
}

// notReadyMessage is all the public /readyz says when a required check
// fails.
const notReadyMessage = "not ready"

// readyz is the public readiness answer: ready (200) or not (503), and
// nothing else. Which dependency failed and how — a driver's error such as
// "dial tcp 10.0.0.5:5432: connect: connection refused" — maps the network
// behind the service for anyone who asks, so that detail is served only by
// the ops listener's /readyz (NewOps) and written to the log here. An
// optional check failing (Redis) still answers "ready": the instance serves
// correctly without it, and a load balancer acts on the status code alone.
func (s *server) readyz(c *gin.Context) {
	r := readiness(c.Request.Context(), s.checkers)
	if len(r.failed) == 0 {
		s.writeJSON(c, http.StatusOK, healthJSON{Status: "ready"})
		return
	}
	// The log is the operator's, not the caller's: without an ops listener
	// it is the only place that says why.
	s.log.LogAttrs(c.Request.Context(), slog.LevelWarn, "not ready",
		slog.String("request_id", c.Writer.Header().Get(headerRequestID)),
		slog.String("failed", strings.Join(r.failed, ", ")), slog.Any("checks", r.checks))
	c.Header("Retry-After", "1")
	s.writeJSON(c, http.StatusServiceUnavailable, errorBody{Detail: errorDetail{Error: domain.CodeUnavailable, Message: notReadyMessage}})
}

// checkTimeout bounds each readiness check.
const checkTimeout = 2 * time.Second

// maxCheckText keeps a chatty driver error from bloating the answer.
const maxCheckText = 300

// readinessResult is one round of readiness checks.
type readinessResult struct {
	checks   map[string]string // check name → "ok" or its failure's text
	failed   []string          // the required checks that failed, in order
	degraded bool              // an optional check failed
}

// readiness runs every checker concurrently. A checker that ignores its
// context still cannot hold the answer past the timeout: its goroutine is
// left to finish on its own and its result is "timeout".
func readiness(ctx context.Context, checkers []Checker) readinessResult {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	type result struct {
		i   int
		err error
	}
	results := make(chan result, len(checkers)) // buffered: late finishers never block
	for i, ch := range checkers {
		go func() { results <- result{i, ch.Check(ctx)} }()
	}
	texts := make([]string, len(checkers))
collect:
	for range checkers {
		select {
		case r := <-results:
			texts[r.i] = "ok"
			if r.err != nil {
				texts[r.i] = checkText(r.err)
			}
		case <-ctx.Done():
			break collect
		}
	}
	out := readinessResult{checks: make(map[string]string, len(checkers))}
	for i, ch := range checkers {
		t := texts[i]
		if t == "" {
			t = "timeout after " + checkTimeout.String()
		}
		out.checks[ch.Name()] = t
		switch {
		case t == "ok":
		case optional(ch):
			out.degraded = true
		default:
			out.failed = append(out.failed, ch.Name())
		}
	}
	return out
}

func checkText(err error) string {
	t := err.Error()
	if t == "" || t == "ok" {
		return "error" // never let a failure read as success
	}
	if len(t) > maxCheckText {
		// Cut on a rune boundary so the JSON stays valid UTF-8 text.
		cut := maxCheckText
		for cut > 0 && !utf8.RuneStart(t[cut]) {
			cut--
		}
		t = t[:cut] + "…"
	}
	return t
}

// checkCheckers refuses a readiness checker without a distinct name: the
// detailed answer is keyed by it.
func checkCheckers(checkers []Checker) error {
	seen := make(map[string]bool, len(checkers))
	for _, ch := range checkers {
		if ch == nil || ch.Name() == "" || seen[ch.Name()] {
			return errors.New("transport: every readiness checker needs a distinct, non-empty name")
		}
		seen[ch.Name()] = true
	}
	return nil
}

// OpsOptions configures the ops handler (NewOps). Registry is required.
type OpsOptions struct {
	// Registry is what /metrics serves.
	Registry *prometheus.Registry
	// Checkers are run by /readyz, which answers each one's result.
	Checkers []Checker
	// Pprof mounts net/http/pprof under /debug/pprof/. Profiles hand out
	// heap contents (tokens, request bodies) and goroutine stacks: config
	// keeps them on a loopback ops address unless told otherwise.
	Pprof bool
}

// NewOps builds the handler of the ops listener (TALLY_OPS_ADDR), which is
// meant for operators and their scrapers only and never for API clients:
//
//	GET /healthz       {"status":"ok"}
//	GET /readyz        readiness with every check's text (200 ready or
//	                   degraded, 503 with Retry-After when a required check
//	                   fails)
//	GET /metrics       Prometheus text exposition of Registry
//	/debug/pprof/...   net/http/pprof, when Pprof
//
// Anything else is 404 with the API's error body. It is a plain
// http.ServeMux rather than Gin: four fixed routes need no router, and its
// requests stay out of the API's access log and HTTP metrics.
func NewOps(opts OpsOptions) (http.Handler, error) {
	if opts.Registry == nil {
		return nil, errors.New("transport: the ops handler needs a Registry to serve")
	}
	if err := checkCheckers(opts.Checkers); err != nil {
		return nil, err
	}
	checkers := slices.Clone(opts.Checkers)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeOpsJSON(w, http.StatusOK, healthJSON{Status: "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		res := readiness(r.Context(), checkers)
		if len(res.failed) == 0 {
			status := "ready"
			if res.degraded {
				status = "degraded"
			}
			writeOpsJSON(w, http.StatusOK, readyJSON{Status: status, Checks: res.checks})
			return
		}
		w.Header().Set("Retry-After", "1")
		writeOpsJSON(w, http.StatusServiceUnavailable, notReadyJSON{
			Detail: errorDetail{Error: domain.CodeUnavailable, Message: notReadyMessage + ": " + strings.Join(res.failed, ", ")},
			Checks: res.checks,
		})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{}))
	if opts.Pprof {
		// The same handlers net/http/pprof puts on http.DefaultServeMux
		// (which nothing in Tally serves); Index also serves the named
		// profiles: heap, goroutine, allocs, block, mutex, threadcreate.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		writeOpsJSON(w, http.StatusNotFound, errorBody{Detail: errorDetail{Error: domain.CodeNotFound, Message: "no such route"}})
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secureHeaders(w.Header())
		mux.ServeHTTP(w, r)
	}), nil
}

// writeOpsJSON is writeJSON without Gin. Every value it is given is plain
// data, which always encodes.
func writeOpsJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"detail":{"error":"internal","message":"internal error"}}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
