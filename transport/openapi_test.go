package transport_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/gin-gonic/gin"

	"github.com/tally-dev/tally/transport"
)

// The document and the router list the same operations: nothing served is
// undocumented, nothing documented is missing.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(transport.OpenAPI())
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatal(err)
	}
	var documented []string
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			documented = append(documented, method+" "+path)
			if _, ok := op.Responses.Map()["200"]; !ok {
				t.Errorf("%s %s documents no 200", method, path)
			}
		}
	}
	e := newEnv(t)
	engine, ok := e.h.(*gin.Engine)
	if !ok {
		t.Fatalf("handler is %T", e.h)
	}
	var served []string
	for _, r := range engine.Routes() {
		p := r.Path
		for seg := range strings.SplitSeq(p, "/") {
			if strings.HasPrefix(seg, ":") {
				p = strings.Replace(p, seg, "{"+seg[1:]+"}", 1)
			}
		}
		served = append(served, r.Method+" "+p)
	}
	slices.Sort(documented)
	slices.Sort(served)
	if !slices.Equal(documented, served) {
		t.Errorf("documented %q\nserved     %q", documented, served)
	}
}

// Every operation that needs a token documents the 401 it answers without
// one, every admin operation the 403 a user token gets, every user
// operation the 422 of a token whose sub is not a user id, and every
// operation that reads a body the 408 of a body that stalls.
func TestOpenAPIDocumentsAuthErrors(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(transport.OpenAPI())
	if err != nil {
		t.Fatal(err)
	}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			secured := op.Security != nil && len(*op.Security) > 0
			if secured != (strings.HasPrefix(path, "/api/") && path != "/api/v1/plans" || strings.HasPrefix(path, "/admin/")) {
				t.Errorf("%s %s: security %v", method, path, op.Security)
			}
			codes := op.Responses.Map()
			if secured && codes["401"] == nil {
				t.Errorf("%s %s: no 401", method, path)
			}
			if strings.HasPrefix(path, "/admin/") && codes["403"] == nil {
				t.Errorf("%s %s: no 403", method, path)
			}
			if method != http.MethodGet && secured && codes["413"] == nil {
				t.Errorf("%s %s: no 413", method, path)
			}
			// A body that stalls past the read timeout is a 408.
			if method != http.MethodGet && secured && codes["408"] == nil {
				t.Errorf("%s %s: no 408", method, path)
			}
			// An authentic user token with an unusable sub is a 422.
			if strings.HasPrefix(path, "/api/") && secured && codes["422"] == nil {
				t.Errorf("%s %s: no 422 (a token whose sub is not a user id)", method, path)
			}
		}
	}
}
