// Command tally-mutants runs the curated invariant mutations of
// tools/mutants (`make mutants`) and exits non-zero if any survives.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/tally-dev/tally/tools/mutants"
)

func main() {
	only := flag.String("only", "", "comma-separated mutant names (default: all)")
	list := flag.Bool("list", false, "list the mutants and the invariant each breaks, then exit")
	flag.Parse()
	if *list {
		for _, m := range mutants.List {
			fmt.Printf("%-24s %-28s %s\n", m.Name, m.File, m.Invariant)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var names []string
	if *only != "" {
		names = strings.Split(*only, ",")
	}
	if _, err := mutants.Run(ctx, mutants.Options{Only: names, Out: os.Stdout}); err != nil {
		fmt.Fprintln(os.Stderr, "tally-mutants:", err)
		os.Exit(1)
	}
	fmt.Println("every mutant was killed")
}
