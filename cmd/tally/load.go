package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/tally-dev/tally/tools/load"
)

func runLoad(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: tally load [flags]

Fires concurrent session creates (POST /api/v1/sessions) at a running Tally,
then verifies over the API that no user went over its limit, that usage
matches what the clients were told, and that every admitted session is
readable. Exits non-zero on any violation or any 500.

Users are provisioned on --plan through the admin API first, and tokens are
signed with the service's secret. Closed loop by default (--concurrency
workers, each sending when the previous answer came back); --rate R makes it
open loop: R requests/s on a fixed schedule, latency measured from each
request's scheduled time (no coordinated omission).

Examples:
  tally load --duration 20s --users 100 --plan free
  tally load --duration 10s --hot --plan enterprise --html /tmp/load.html
  tally load --duration 10s --rate 2000 --json > result.json
  tally load --url http://127.0.0.1:9000 --no-provision --no-verify   # a non-Tally baseline

Flags:
`)
		fs.PrintDefaults()
	}
	var cfg load.Config
	urls := fs.String("url", load.DefaultURL, "base URL of the Tally to load; several, comma-separated (the nodes of a cluster), spread the creates over them, worker by worker")
	fs.StringVar(&cfg.Path, "path", load.DefaultPath, "path the creates are POSTed to")
	fs.IntVar(&cfg.Users, "users", load.DefaultUsers, "number of users the requests are spread over, round robin")
	fs.BoolVar(&cfg.Hot, "hot", false, "send every request as one user (--users 1, named)")
	fs.StringVar(&cfg.Plan, "plan", load.DefaultPlan, "plan the users are put on before the run (PUT /admin/v1/users/{id})")
	fs.StringVar(&cfg.UserPrefix, "user-prefix", "", `user ids are PREFIX-0, PREFIX-1, … (default "load-" + 8 random hex digits, so runs start from zero usage)`)
	fs.DurationVar(&cfg.Duration, "duration", 0, "length of the measured phase, e.g. 30s (default 10s unless --requests is given; with both, the first reached ends the run)")
	fs.Int64Var(&cfg.Requests, "requests", 0, "stop after this many measured requests (0: no limit)")
	fs.IntVar(&cfg.Concurrency, "concurrency", load.DefaultConcurrency, "closed loop: number of workers, each with one request in flight; open loop: the cap on requests in flight")
	fs.Float64Var(&cfg.Rate, "rate", 0, "open loop: requests per second on a fixed schedule, latency from each scheduled time; requests sent more than 1ms behind schedule (all workers busy) are counted as late (0: closed loop)")
	// The secrets' defaults are filled in after parsing, so that --help
	// never prints them.
	fs.StringVar(&cfg.Secret, "secret", "", "HS256 secret to sign user tokens with (default $TALLY_JWT_SECRET)")
	fs.StringVar(&cfg.AdminToken, "admin-token", "", "admin token for provisioning (default $TALLY_ADMIN_TOKEN)")
	fs.StringVar(&cfg.Issuer, "issuer", "", "iss of the user tokens, when the service checks it (default $TALLY_JWT_ISSUER)")
	fs.StringVar(&cfg.Audience, "audience", "", "aud of the user tokens, when the service checks it (default $TALLY_JWT_AUDIENCE)")
	fs.DurationVar(&cfg.Timeout, "timeout", load.DefaultTimeout, "bounds each request: connecting, sending and reading the answer")
	fs.DurationVar(&cfg.Warmup, "warmup", 0, "run the load this long before measuring (its requests are verified but not counted)")
	fs.BoolVar(&cfg.NoProvision, "no-provision", false, "do not PUT the users first (users that exist already, or a non-Tally endpoint)")
	fs.BoolVar(&cfg.NoVerify, "no-verify", false, "skip the invariant checks after the run (a non-Tally endpoint)")
	fs.BoolVar(&cfg.StdClient, "std-client", false, "send the creates with net/http instead of the built-in HTTP/1.1 client (costs more client CPU per request; for comparison)")
	fs.DurationVar(&cfg.Interval, "interval", time.Second, "length of the intervals of the JSON series and the HTML charts (at least 10ms)")
	asJSON := fs.Bool("json", false, "print the result as JSON on stdout instead of the text summary")
	htmlFile := fs.String("html", "", "write a self-contained HTML report (charts of throughput and latency) to this file")
	progress := fs.Bool("progress", false, "draw the progress bar on stderr even when it is not a terminal")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	for _, u := range strings.Split(*urls, ",") {
		if u = strings.TrimSpace(u); u != "" {
			cfg.URLs = append(cfg.URLs, u)
		}
	}
	if cfg.Secret == "" {
		cfg.Secret = env("TALLY_JWT_SECRET")
	}
	if cfg.AdminToken == "" {
		cfg.AdminToken = env("TALLY_ADMIN_TOKEN")
	}
	if cfg.Issuer == "" {
		cfg.Issuer = env("TALLY_JWT_ISSUER")
	}
	if cfg.Audience == "" {
		cfg.Audience = env("TALLY_JWT_AUDIENCE")
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("load takes no arguments, got %q (see tally load --help)", fs.Args())
	}
	if cfg.Hot {
		usersSet := false
		fs.Visit(func(f *flag.Flag) { usersSet = usersSet || f.Name == "users" })
		if !usersSet {
			cfg.Users = 0
		}
	}
	if *progress || isTerminal(stderr) {
		cfg.Progress = stderr
	}
	cfg.Log = stderr

	res, err := load.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if *asJSON {
		err = res.WriteJSON(stdout)
	} else {
		err = res.WriteText(stdout)
	}
	if err != nil {
		return err
	}
	if *htmlFile != "" {
		if err := writeHTML(*htmlFile, res); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "report written to %s\n", *htmlFile)
	}
	return res.Err()
}

func writeHTML(path string, res *load.Result) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("--html: %w", err)
	}
	if err := res.WriteHTML(f); err != nil {
		f.Close()
		return fmt.Errorf("--html: %w", err)
	}
	return f.Close()
}

// isTerminal reports whether w is a terminal, where a redrawn progress bar
// is welcome (in a log file or a pipe it is noise).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
