package transport

import (
	"context"
	_ "embed"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"

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

// checkTimeout bounds each readiness check.
const checkTimeout = 2 * time.Second

// maxCheckText keeps a chatty driver error from bloating the answer.
const maxCheckText = 300

// readyz runs every checker concurrently. A checker that ignores its
// context still cannot hold the answer past the timeout: its goroutine is
// left to finish on its own and its result is "timeout".
func (s *server) readyz(c *gin.Context) {
	ctx, cancel := context.WithTimeout(c.Request.Context(), checkTimeout)
	defer cancel()
	type result struct {
		i   int
		err error
	}
	results := make(chan result, len(s.checkers)) // buffered: late finishers never block
	for i, ch := range s.checkers {
		go func() { results <- result{i, ch.Check(ctx)} }()
	}
	texts := make([]string, len(s.checkers))
collect:
	for range s.checkers {
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
	checks := make(map[string]string, len(s.checkers))
	var failed []string
	degraded := false
	for i, ch := range s.checkers {
		t := texts[i]
		if t == "" {
			t = "timeout after " + checkTimeout.String()
		}
		checks[ch.Name()] = t
		switch {
		case t == "ok":
		case optional(ch):
			degraded = true
		default:
			failed = append(failed, ch.Name())
		}
	}
	if len(failed) == 0 {
		status := "ready"
		if degraded {
			status = "degraded"
		}
		s.writeJSON(c, http.StatusOK, readyJSON{Status: status, Checks: checks})
		return
	}
	c.Header("Retry-After", "1")
	s.writeJSON(c, http.StatusServiceUnavailable, notReadyJSON{
		Detail: errorDetail{Error: domain.CodeUnavailable, Message: "not ready: " + strings.Join(failed, ", ")},
		Checks: checks,
	})
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
