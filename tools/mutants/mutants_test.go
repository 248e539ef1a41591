package mutants

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestApply(t *testing.T) {
	m := Mutant{Name: "m", File: "f.go", From: "a < b", To: "a <= b"}
	if got, err := Apply("if a < b {", m); err != nil || got != "if a <= b {" {
		t.Fatalf("Apply = %q, %v", got, err)
	}
	if _, err := Apply("if a > b {", m); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("a mutant whose code moved must be an error, got %v", err)
	}
	if _, err := Apply("a < b; a < b", m); err == nil || !strings.Contains(err.Error(), "2 times") {
		t.Fatalf("an ambiguous mutant must be an error, got %v", err)
	}
}

// Every mutant in the list applies to the code as it is: exactly one
// occurrence of From in its file, a distinct name, and packages to run.
// (Whether the tests kill it is `make mutants`' job, not this test's.)
func TestListAppliesToTheCode(t *testing.T) {
	seen := map[string]bool{}
	for _, m := range List {
		if seen[m.Name] {
			t.Errorf("two mutants named %q", m.Name)
		}
		seen[m.Name] = true
		if len(m.Packages) == 0 || m.Invariant == "" || m.From == m.To {
			t.Errorf("%s: needs packages, an invariant, and a change", m.Name)
		}
		src, err := os.ReadFile(filepath.Join("..", "..", m.File))
		if err != nil {
			t.Errorf("%s: %v", m.Name, err)
			continue
		}
		if _, err := Apply(string(src), m); err != nil {
			t.Error(err)
		}
	}
}
