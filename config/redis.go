package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"unicode"

	"github.com/redis/go-redis/v9"
)

// The Redis connection: a URL (TALLY_REDIS_URL), or Sentinels that name
// the master (TALLY_REDIS_SENTINELS, TALLY_REDIS_MASTER), or neither, for
// the in-process Redis of embedded mode. Credentials and TLS come from
// variables of their own so that Sentinel mode, which has no URL, can have
// them; with a URL they are an alternative to its user info (a password
// kept out of the URL, in a secret of its own), never an addition to it,
// so that which password is used is never a question.

func setRedisUser(dst *string, v string) error {
	if strings.IndexFunc(v, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return errors.New("want an ACL user name without spaces or control characters")
	}
	*dst = v
	return nil
}

// crossCheckRedis refuses Redis credentials and TLS settings that would be
// ignored or that contradict each other. It says nothing when the URL or
// the Sentinels themselves were refused: which mode was meant is unknown.
func (c Config) crossCheckRedis(bad map[string]bool, report func(name, problem string)) {
	if bad["TALLY_REDIS_URL"] || bad["TALLY_REDIS_SENTINELS"] {
		return
	}
	said := map[string]bool{} // one problem per variable is enough
	add := func(name, problem string) {
		if !said[name] {
			said[name] = true
			report(name, problem)
		}
	}
	type setting struct {
		name string
		set  bool
	}
	credentials := []setting{
		{"TALLY_REDIS_USERNAME", c.RedisUsername != ""},
		{"TALLY_REDIS_PASSWORD", c.RedisPassword != ""},
	}
	sentinelOnly := []setting{
		{"TALLY_REDIS_SENTINEL_USERNAME", c.RedisSentinelUsername != ""},
		{"TALLY_REDIS_SENTINEL_PASSWORD", c.RedisSentinelPassword != ""},
		{"TALLY_REDIS_TLS", c.RedisTLS},
	}
	tlsFiles := []setting{
		{"TALLY_REDIS_TLS_CA_FILE", c.RedisTLSCAFile != ""},
		{"TALLY_REDIS_TLS_CERT_FILE", c.RedisTLSCertFile != ""},
		{"TALLY_REDIS_TLS_KEY_FILE", c.RedisTLSKeyFile != ""},
	}
	if c.EmbeddedRedis() {
		for _, s := range slices.Concat(credentials, sentinelOnly, tlsFiles) {
			if s.set {
				add(s.name, "is set but no Redis is configured: it applies with TALLY_REDIS_URL or TALLY_REDIS_SENTINELS (the in-process Redis has a generated password of its own)")
			}
		}
		return
	}
	if len(c.RedisSentinels) == 0 {
		for _, s := range sentinelOnly {
			switch {
			case !s.set:
			case s.name == "TALLY_REDIS_TLS":
				add(s.name, "applies to Sentinel mode: with TALLY_REDIS_URL, TLS is the rediss:// scheme")
			default:
				add(s.name, "applies to Sentinel mode only (TALLY_REDIS_SENTINELS)")
			}
		}
		if u, err := url.Parse(c.RedisURL); err == nil && u.User != nil {
			for _, s := range credentials {
				if s.set {
					add(s.name, "cannot be combined with a user or password in TALLY_REDIS_URL: give the credentials in one place")
				}
			}
		}
	}
	if c.RedisUsername != "" && c.RedisPassword == "" {
		add("TALLY_REDIS_USERNAME", "requires TALLY_REDIS_PASSWORD: want the user's password")
	}
	if c.RedisSentinelUsername != "" && c.RedisSentinelPassword == "" {
		add("TALLY_REDIS_SENTINEL_USERNAME", "requires TALLY_REDIS_SENTINEL_PASSWORD: want the user's password")
	}
	if !c.redisTLSOn() {
		for _, s := range tlsFiles {
			if s.set {
				add(s.name, "has no effect without TLS: use a rediss:// URL, or TALLY_REDIS_TLS=true with Sentinels")
			}
		}
		return
	}
	switch {
	case c.RedisTLSCertFile != "" && c.RedisTLSKeyFile == "":
		add("TALLY_REDIS_TLS_KEY_FILE", "is required with TALLY_REDIS_TLS_CERT_FILE: want the PEM file of its private key")
	case c.RedisTLSKeyFile != "" && c.RedisTLSCertFile == "":
		add("TALLY_REDIS_TLS_CERT_FILE", "is required with TALLY_REDIS_TLS_KEY_FILE: want the PEM file of the client certificate")
	default:
		// The files are read now so that a missing or malformed one stops
		// start-up, instead of every connection failing later.
		if _, err := c.RedisTLSConfig(); err != nil {
			var ve *VarError
			if errors.As(err, &ve) {
				add(ve.Name, ve.Problem)
			}
		}
	}
}

// redisTLSOn reports whether the Redis connection uses TLS: a rediss://
// URL, or Sentinels with TALLY_REDIS_TLS.
func (c Config) redisTLSOn() bool {
	if c.RedisURL != "" {
		return strings.HasPrefix(c.RedisURL, "rediss://")
	}
	return len(c.RedisSentinels) > 0 && c.RedisTLS
}

// RedisTLSConfig returns the client TLS settings of the Redis connection,
// or nil without TLS: TLS 1.2 at least, the CA file's certificates as the
// only roots (else the system's), the client certificate if one is set.
// The server name is left to the dial, which checks each certificate
// against the host it dialled: the URL's, a Sentinel's, or the master's
// address as the Sentinels announce it. A file that cannot be read or
// parsed is a *VarError naming its variable.
func (c Config) RedisTLSConfig() (*tls.Config, error) {
	if !c.redisTLSOn() {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.RedisTLSCAFile != "" {
		data, err := readVarFile("TALLY_REDIS_TLS_CA_FILE", c.RedisTLSCAFile)
		if err != nil {
			return nil, err
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(data) {
			return nil, &VarError{"TALLY_REDIS_TLS_CA_FILE", fmt.Sprintf("%q is invalid: want PEM CERTIFICATE blocks", c.RedisTLSCAFile)}
		}
	}
	if c.RedisTLSCertFile != "" || c.RedisTLSKeyFile != "" {
		certPEM, err := readVarFile("TALLY_REDIS_TLS_CERT_FILE", c.RedisTLSCertFile)
		if err != nil {
			return nil, err
		}
		if !hasPEM(certPEM, "CERTIFICATE") {
			return nil, &VarError{"TALLY_REDIS_TLS_CERT_FILE", fmt.Sprintf("%q is invalid: want a PEM CERTIFICATE block", c.RedisTLSCertFile)}
		}
		keyPEM, err := readVarFile("TALLY_REDIS_TLS_KEY_FILE", c.RedisTLSKeyFile)
		if err != nil {
			return nil, err
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, &VarError{"TALLY_REDIS_TLS_KEY_FILE", fmt.Sprintf("%q is invalid: want the PEM private key of TALLY_REDIS_TLS_CERT_FILE's certificate (%s)", c.RedisTLSKeyFile, strings.TrimPrefix(err.Error(), "tls: "))}
		}
		t.Certificates = []tls.Certificate{pair}
	}
	return t, nil
}

func readVarFile(name, path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var perr *fs.PathError
		if errors.As(err, &perr) {
			err = perr.Err
		}
		return nil, &VarError{name, fmt.Sprintf("%q is invalid: cannot read it: %v", path, err)}
	}
	return data, nil
}

func hasPEM(data []byte, typ string) bool {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return false
		}
		if b.Type == typ {
			return true
		}
	}
}

// NewRedisClient returns a client of the configured Redis: the URL's
// server, or the master the Sentinels name, with the credentials and TLS
// settings of the variables. The in-process Redis of embedded mode
// (EmbeddedRedis) is not one: app starts it.
func (c Config) NewRedisClient() (redis.UniversalClient, error) {
	t, err := c.RedisTLSConfig()
	if err != nil {
		return nil, err
	}
	switch {
	case len(c.RedisSentinels) > 0:
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:       c.RedisMaster,
			SentinelAddrs:    c.RedisSentinels,
			SentinelUsername: c.RedisSentinelUsername,
			SentinelPassword: c.RedisSentinelPassword,
			Username:         c.RedisUsername,
			Password:         c.RedisPassword,
			TLSConfig:        t,
		}), nil
	case c.RedisURL != "":
		o, err := redis.ParseURL(c.RedisURL)
		if err != nil {
			return nil, &VarError{"TALLY_REDIS_URL", "is invalid: " + strings.TrimPrefix(err.Error(), "redis: ")}
		}
		if c.RedisPassword != "" { // Load refused it beside user info in the URL
			o.Username, o.Password = c.RedisUsername, c.RedisPassword
		}
		if o.TLSConfig != nil {
			t.ServerName = o.TLSConfig.ServerName
			o.TLSConfig = t
		}
		return redis.NewClient(o), nil
	default:
		return nil, errors.New("config: no Redis is configured (TALLY_REDIS_URL or TALLY_REDIS_SENTINELS): the in-process one is app's")
	}
}

// ExplainRedisError puts in front of an error of the configured Redis the
// variables to check, when the error says the configuration is wrong —
// Redis or a Sentinel refused the credentials, or a certificate did not
// verify — rather than that Redis is down. Other errors come back as they
// are.
func (c Config) ExplainRedisError(err error) error {
	if err == nil {
		return nil
	}
	if hint := c.RedisHint(err); hint != "" {
		return fmt.Errorf("%s: %w", hint, err)
	}
	return err
}

// RedisHint says which configuration to check when err, an error of the
// configured Redis, says the configuration is wrong; "" otherwise.
func (c Config) RedisHint(err error) string {
	// go-redis reports that no Sentinel could be asked for the master as
	// "redis: all sentinels specified in configuration are unreachable:"
	// followed by each Sentinel's error (its sentinel.go); any other error
	// came from the master itself.
	sentinel := len(c.RedisSentinels) > 0 && strings.Contains(err.Error(), "all sentinels specified")
	var (
		hostErr x509.HostnameError
		caErr   x509.UnknownAuthorityError
		certErr x509.CertificateInvalidError
		opErr   *net.OpError
	)
	switch {
	case redis.IsAuthError(err) && sentinel:
		return "the Sentinels refused Tally's credentials: check " + c.credentialVars(true)
	case redis.IsAuthError(err):
		return "Redis refused Tally's credentials: check " + c.credentialVars(false)
	case redis.IsPermissionError(err):
		return "Tally's Redis user lacks a permission: check the ACL of " + c.credentialVars(sentinel)
	case errors.As(err, &caErr):
		return "Redis's certificate is not signed by a CA Tally trusts: check TALLY_REDIS_TLS_CA_FILE"
	case errors.As(err, &hostErr):
		return "Redis's certificate does not name the address Tally dialled: check the certificate's names against TALLY_REDIS_URL's host, the Sentinels' addresses and the master's address as they announce it"
	case errors.As(err, &certErr):
		return "Redis's certificate is not valid (expired, or not for a server): check the certificate"
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		return "Redis refused Tally's TLS handshake: check TALLY_REDIS_TLS_CERT_FILE and TALLY_REDIS_TLS_KEY_FILE (a server with tls-auth-clients yes wants a client certificate its CA signed)"
	}
	return ""
}

// credentialVars names where the credentials Tally presents come from.
func (c Config) credentialVars(sentinel bool) string {
	if sentinel {
		if c.RedisSentinelUsername != "" {
			return "TALLY_REDIS_SENTINEL_USERNAME and TALLY_REDIS_SENTINEL_PASSWORD"
		}
		return "TALLY_REDIS_SENTINEL_PASSWORD"
	}
	if u, err := url.Parse(c.RedisURL); err == nil && c.RedisURL != "" && u.User != nil {
		return "the user and password in TALLY_REDIS_URL"
	}
	if c.RedisUsername != "" {
		return "TALLY_REDIS_USERNAME and TALLY_REDIS_PASSWORD"
	}
	return "TALLY_REDIS_PASSWORD"
}
