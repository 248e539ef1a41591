package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/tally-dev/tally/app"
	"github.com/tally-dev/tally/config"
	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/transport"
)

func runMigrate(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := loadConfig(env)
	if err != nil {
		return err
	}
	store, err := app.OpenStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer store.Close()
	if err := store.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	fmt.Fprintln(stdout, "migrations applied")
	return nil
}

func runToken(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	user := fs.String("user", "", "user id (the token's sub); required")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !domain.ValidUserID(*user) {
		return fmt.Errorf("--user must be 1-128 characters of [A-Za-z0-9._@:-], got %q", *user)
	}
	if *ttl <= 0 {
		return fmt.Errorf("--ttl must be positive, got %s", *ttl)
	}
	cfg, err := loadConfig(env)
	if err != nil {
		return err
	}
	if cfg.JWTSecret == "" && cfg.Embedded() {
		if err := embeddedCredentials(&cfg); err != nil {
			return err
		}
	}
	if *ttl > cfg.JWTMaxTTL {
		return fmt.Errorf("--ttl %s is longer than TALLY_JWT_MAX_TTL (%s): the service would refuse the token", *ttl, cfg.JWTMaxTTL)
	}
	tok, err := transport.IssueTokenFor([]byte(cfg.JWTSecret), *user, *ttl, time.Now(), cfg.JWTIssuer, cfg.JWTAudience)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

func runHealthcheck(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "", "readiness URL (default: http://TALLY_HTTP_ADDR/readyz)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *url == "" {
		addr := env("TALLY_HTTP_ADDR")
		if addr == "" {
			addr = "127.0.0.1:8080"
		}
		*url = "http://" + loopback(addr) + "/readyz"
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("not ready: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("not ready: %s %s", resp.Status, body)
	}
	fmt.Fprintln(stdout, "ready")
	return nil
}

// loopback turns a wildcard listen address (0.0.0.0:8080, :8080) into one a
// local client can dial.
func loopback(addr string) string {
	switch {
	case len(addr) > 0 && addr[0] == ':':
		return "127.0.0.1" + addr
	case len(addr) > 8 && addr[:8] == "0.0.0.0:":
		return "127.0.0.1" + addr[7:]
	}
	return addr
}

func runEnv(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	return config.WriteVars(stdout)
}
