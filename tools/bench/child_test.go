package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A Tally child announces its ops listener before it serves, and
// liveActors reads the metrics there (the API listener serves none). The
// child runs on the embedded store: only the protocol is under test.
func TestTallyChildOpsListener(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	env := []string{
		"TALLY_HTTP_ADDR=127.0.0.1:0",
		"TALLY_OPS_ADDR=127.0.0.1:0",
		"TALLY_DATA_DIR=" + dir,
		"TALLY_JWT_SECRET=bench-child-test-secret-0123456789abcdef",
		"TALLY_ADMIN_TOKEN=bench-child-test-admin-0123456789abcdef",
		"TALLY_LOG_LEVEL=warn",
	}
	c, err := startChild(context.Background(), exe, cmdServeTally, env, filepath.Join(dir, "tally.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	}()
	if c.opsAddr == "" || c.opsAddr == c.addr || !strings.HasPrefix(c.opsAddr, "127.0.0.1:") {
		t.Fatalf("ops address %q (API %q)", c.opsAddr, c.addr)
	}
	if n := liveActors(context.Background(), c); n != 0 {
		t.Errorf("tally_live_actors = %v on a fresh child, want 0 (-1: not read)", n)
	}
}
