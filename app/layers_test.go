package app_test

import (
	"os/exec"
	"strings"
	"testing"
)

// Dependencies point inward: the accounting core (actors, persistence) and
// the rules (domain) never link the HTTP edge, domain stays standard
// library only, and cluster ownership links neither the core nor the edge. Go's own package graph is the evidence.
func TestDependenciesPointInward(t *testing.T) {
	goBin, err := exec.LookPath("go") // go test runs with it on PATH
	if err != nil {
		t.Skipf("no go command on PATH: %v", err)
	}
	// deps lists the packages outside the standard library that pkgs
	// import, directly or not (themselves included).
	deps := func(t *testing.T, pkgs ...string) []string {
		t.Helper()
		args := append([]string{"list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}"}, pkgs...)
		cmd := exec.Command(goBin, args...)
		cmd.Dir = ".."
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v\n%s", err, out)
		}
		return strings.Fields(string(out))
	}
	for _, p := range deps(t, "./actors", "./persistence/...") {
		if strings.Contains(p, "gin-gonic") || strings.HasSuffix(p, "/tally/transport") || strings.HasSuffix(p, "/tally/app") {
			t.Errorf("the core depends on %s", p)
		}
	}
	// Ownership is told to the core and the edge through cluster.Hooks and
	// Node.Route: the cluster package links neither.
	for _, p := range deps(t, "./cluster") {
		for _, bad := range []string{"gin-gonic", "/tally/transport", "/tally/app", "/tally/actors", "/tally/persistence"} {
			if strings.Contains(p, bad) {
				t.Errorf("cluster depends on %s", p)
			}
		}
	}
	for _, p := range deps(t, "./domain") {
		if p != "github.com/tally-dev/tally/domain" {
			t.Errorf("domain depends on %s, which is not the standard library", p)
		}
	}
}
