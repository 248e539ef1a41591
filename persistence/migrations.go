package persistence

import (
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// Migration is one numbered schema change of a store's dialect. Migrations
// are append-only: a released file is never edited, a change is a new file
// with the next number (NNNN_what.sql).
type Migration struct {
	Version int
	Name    string // file name without .sql, recorded by the store
	SQL     string
}

// LoadMigrations reads the numbered migrations in dir in order and checks
// that the numbers run 1, 2, 3… without gaps or duplicates, so that a file
// lost or numbered twice in a merge stops Migrate instead of being skipped.
func LoadMigrations(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, err
	}
	var ms []Migration
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".sql")
		if !ok || e.IsDir() {
			continue
		}
		num, _, _ := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if err != nil || v < 1 {
			return nil, fmt.Errorf("migration %s: name must start with a positive number, as in 0001_init.sql", e.Name())
		}
		b, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		ms = append(ms, Migration{Version: v, Name: name, SQL: string(b)})
	}
	// ReadDir sorts by name and the numbers are zero-padded, but check the
	// sequence rather than trust the padding.
	for i, m := range ms {
		if m.Version != i+1 {
			return nil, fmt.Errorf("migration %s: expected number %d; migrations must be numbered 1, 2, 3… without gaps or duplicates", m.Name, i+1)
		}
	}
	return ms, nil
}
