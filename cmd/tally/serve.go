package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/tally-dev/tally/app"
	"github.com/tally-dev/tally/config"
	"github.com/tally-dev/tally/transport"
)

func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
}

func loadConfig(env func(string) string) (config.Config, error) {
	cfg, err := config.Load(env)
	if err != nil {
		return cfg, fmt.Errorf("configuration: %w", err)
	}
	return cfg, nil
}

func runServe(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := loadConfig(env)
	if err != nil {
		return err
	}
	log := newLogger(stderr, cfg.LogLevel)
	demo := false
	if cfg.Embedded() && (cfg.JWTSecret == "" || len(cfg.AdminCredentials()) == 0) {
		if err := embeddedCredentials(&cfg); err != nil {
			return err
		}
		demo = true
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s (TALLY_HTTP_ADDR): %w", cfg.HTTPAddr, err)
	}
	var opsLn net.Listener // nil: no ops listener
	if cfg.OpsAddr != "" {
		if opsLn, err = net.Listen("tcp", cfg.OpsAddr); err != nil {
			ln.Close()
			return fmt.Errorf("listen on %s (TALLY_OPS_ADDR): %w", cfg.OpsAddr, err)
		}
	}
	a, err := app.New(ctx, cfg, log)
	if err != nil {
		ln.Close()
		if opsLn != nil {
			opsLn.Close()
		}
		return err
	}
	defer a.Close()
	log.Info("tally serving", "addr", ln.Addr().String(), "config", cfg)
	if opsLn != nil {
		log.Info("ops listener serving /metrics, /readyz, /healthz", "addr", opsLn.Addr().String(), "pprof", cfg.OpsPprof)
	} else {
		log.Info("ops listener off: no /metrics and no detailed /readyz; set TALLY_OPS_ADDR (e.g. 127.0.0.1:9090) to serve them")
	}
	if demo {
		if err := printDemo(stdout, cfg, ln.Addr().String()); err != nil {
			return err
		}
	}
	return a.Run(ctx, ln, opsLn)
}

// credentials are the generated secrets of embedded mode, kept in the data
// directory so that tokens printed once keep working after a restart.
type credentials struct {
	JWTSecret  string `json:"jwt_secret"`
	AdminToken string `json:"admin_token"`
}

func embeddedCredentials(cfg *config.Config) error {
	path := filepath.Join(cfg.DataDir, "credentials.json")
	var cr credentials
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &cr); err != nil {
			return fmt.Errorf("read %s: %w (delete it to generate new credentials)", path, err)
		}
	case errors.Is(err, fs.ErrNotExist):
		cr = credentials{JWTSecret: randomSecret(), AdminToken: randomSecret()}
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("create TALLY_DATA_DIR %s: %w", cfg.DataDir, err)
		}
		b, _ := json.MarshalIndent(cr, "", "  ")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	default:
		return fmt.Errorf("read %s: %w", path, err)
	}
	if cfg.JWTSecret == "" {
		cfg.JWTSecret = cr.JWTSecret
	}
	if len(cfg.AdminCredentials()) == 0 {
		cfg.AdminToken = cr.AdminToken
	}
	return nil
}

func randomSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func printDemo(w io.Writer, cfg config.Config, addr string) error {
	tok, err := transport.IssueTokenFor([]byte(cfg.JWTSecret), "demo-user", min(24*time.Hour, cfg.JWTMaxTTL), time.Now(), cfg.JWTIssuer, cfg.JWTAudience)
	if err != nil {
		return err
	}
	base := "http://" + addr
	admin := cfg.AdminToken
	if admin == "" {
		admin = "(those of TALLY_ADMIN_TOKENS)"
	}
	_, err = fmt.Fprintf(w, `
Tally is running on %[1]s (embedded store in %[2]s, in-process Redis).
Credentials are kept in %[2]s/credentials.json.

  admin token:            %[3]s
  token for "demo-user":  %[4]s  (valid 24h; more with: TALLY_DATA_DIR=%[2]s bin/tally token --user ID)

Try it:

  curl -s -X POST %[1]s/api/v1/sessions \
    -H 'Authorization: Bearer %[4]s' \
    -H 'Content-Type: application/json' \
    -d '{"title":"Weekly sync","language":"en-US","stt_provider":"google"}'

  curl -s %[1]s/api/v1/usage -H 'Authorization: Bearer %[4]s'

`, base, cfg.DataDir, admin, tok)
	return err
}
