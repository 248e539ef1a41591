// Command tally is the Tally service and its operator tools in one binary:
// serve, migrate, token, healthcheck. main only wires the process's
// environment into run, so the whole program is testable in-process.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "tally:", err)
		os.Exit(1)
	}
}

// command is one subcommand of tally.
type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "run the service (applies migrations first)", runServe},
		{"migrate", "apply database migrations and exit", runMigrate},
		{"token", "print a user JWT signed with TALLY_JWT_SECRET: token --user ID [--ttl 1h]", runToken},
		{"healthcheck", "exit 0 when the service at --url answers /readyz with 200 (for container healthchecks)", runHealthcheck},
		{"env", "list the TALLY_* environment variables with defaults and meanings", runEnv},
		{"verify", "audit the store (and Redis) for limit overruns, lost or miscounted usage, admin changes without their audit event; exits non-zero on any violation", runVerify},
		{"load", "fire concurrent creates at a running Tally and verify the invariants afterwards (see tally load --help)", runLoad},
	}
}

func run(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], env, stdout, stderr)
		}
	}
	usage(stderr)
	return fmt.Errorf("unknown command %q", args[0])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: tally COMMAND [flags]\n\nTally decides, per user and billing period, whether a session may be created under the user's plan.\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nConfiguration is read from TALLY_* environment variables: `tally env` lists them.\nRun `tally COMMAND --help` for a command's flags.")
}
