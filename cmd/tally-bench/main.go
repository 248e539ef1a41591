// Command tally-bench is the side-by-side benchmark (`make bench-compare`):
// Tally against the row-lock transaction through pgbench and against bare
// Gin with no accounting, measured in one run on this machine, printed as
// ratios with their targets; `--suite overload` (`make overload`) runs the
// overload, restart, slow-client and poison scenarios instead. Everything
// is in tools/bench; main only wires
// the process's signals and streams into bench.Run.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/tally-dev/tally/tools/bench"
)

func main() {
	// Ctrl-C cancels the context: the run stops its load, stops its
	// servers, drops its databases and deletes its Redis keys, then exits.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bench.Run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "tally-bench:", err)
		os.Exit(1)
	}
}
