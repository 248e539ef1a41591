package persistence_test

import (
	"testing"
	"testing/fstest"

	"github.com/tally-dev/tally/persistence"
)

func TestLoadMigrations(t *testing.T) {
	file := &fstest.MapFile{Data: []byte("SELECT 1;")}
	bad := map[string]fstest.MapFS{
		"gap":        {"m/0001_a.sql": file, "m/0003_c.sql": file},
		"duplicate":  {"m/0001_a.sql": file, "m/0001_b.sql": file},
		"unnumbered": {"m/0001_a.sql": file, "m/init.sql": file},
		"zero":       {"m/0000_a.sql": file},
	}
	for name, fsys := range bad {
		if _, err := persistence.LoadMigrations(fsys, "m"); err == nil {
			t.Errorf("%s: LoadMigrations accepted it", name)
		}
	}
	ok := fstest.MapFS{"m/0002_b.sql": file, "m/0001_a.sql": file, "m/README": file}
	ms, err := persistence.LoadMigrations(ok, "m")
	if err != nil || len(ms) != 2 || ms[0].Name != "0001_a" || ms[1].Name != "0002_b" || ms[1].Version != 2 {
		t.Fatalf("LoadMigrations = %+v, %v; want 0001_a, 0002_b", ms, err)
	}
}
