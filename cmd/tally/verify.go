package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/tally-dev/tally/tools/verify"
)

func runVerify(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: tally verify [--json] [--max-violations N]\n\n"+
			"Audits the configured store (TALLY_DATABASE_URL, or the embedded store in TALLY_DATA_DIR)\n"+
			"and Redis (TALLY_REDIS_URL or TALLY_REDIS_SENTINELS) for sessions admitted over a limit,\n"+
			"usage rows that miscount their sessions or seconds, sessions admitted by a node after it lost the\n"+
			"user's partition (epochs that decrease), Redis counters behind the store, and admin\n"+
			"changes without their audit event (or events without their change).\n"+
			"Exits non-zero on any violation. Run it while the service is quiet.\n\nFlags:")
		fs.PrintDefaults()
	}
	asJSON := fs.Bool("json", false, "print the report as JSON")
	maxViolations := fs.Int("max-violations", 1000, "list at most this many violations (0 lists all); all are counted")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("verify: unexpected arguments %q", fs.Args())
	}
	cfg, err := loadConfig(withoutSecrets(env))
	if err != nil {
		return err
	}
	opts, release, err := verify.FromConfig(cfg)
	if err != nil {
		return err
	}
	defer release()
	opts.MaxViolations = *maxViolations
	rep, err := verify.Run(ctx, opts)
	if err != nil {
		return err
	}
	if *asJSON {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		return err
	}
	if !rep.OK() {
		return fmt.Errorf("verify: %d violation(s)", rep.Total)
	}
	return nil
}

// withoutSecrets stands in for the JWT secret and admin token, which the
// configuration requires next to TALLY_DATABASE_URL but an audit never
// uses: an operator should not need the service's secrets to run it. The
// stand-ins pass the configuration's checks (at least config.MinSecretLen
// bytes, different from each other); TALLY_ADMIN_TOKENS, which nothing
// requires, is ignored.
func withoutSecrets(env func(string) string) func(string) string {
	standIns := map[string]string{
		"TALLY_JWT_SECRET":  "unused-by-tally-verify-jwt-secret-stand-in",
		"TALLY_ADMIN_TOKEN": "unused-by-tally-verify-admin-token-stand-in",
	}
	return func(k string) string {
		if k == "TALLY_ADMIN_TOKENS" {
			return ""
		}
		if v := env(k); v != "" || standIns[k] == "" {
			return v
		}
		return standIns[k]
	}
}
