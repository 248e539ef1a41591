package app_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tally-dev/tally/app"
	"github.com/tally-dev/tally/config"
	"github.com/tally-dev/tally/internal/testenv"
)

// With TALLY_JWT_JWKS_URL set, a whole Tally (embedded store) accepts the
// identity provider's RS256, ES256 and EdDSA tokens: each creates a session
// counted in its sub's usage, and a token whose alg is not its key's
// changes nothing.
func TestIdentityProviderTokens(t *testing.T) {
	const iss, aud = "https://idp.example.test/", "tally"
	keys := []*testenv.SigningKey{testenv.RSAKey(t, "rsa-1", 0), testenv.P256Key(t, "ec-1"), testenv.Ed25519Key(t, "ed-1")}
	idp := testenv.NewIdP(t)
	idp.Serve(t, keys...)
	env := embeddedEnv(t)
	env["TALLY_JWT_JWKS_URL"] = idp.URL
	env["TALLY_JWT_ISSUER"] = iss
	env["TALLY_JWT_AUDIENCE"] = aud
	s := startServer(t, env)
	c := newClient(t)

	for _, k := range keys {
		user := "idp-" + k.KID
		tok := k.Token(t, user, time.Now(), time.Hour, iss, aud)
		r := c.do(http.MethodPost, s.URL+"/api/v1/sessions", tok, newSessionBody)
		if r.Status != http.StatusOK {
			t.Fatalf("%s: %d %s", k.Method.Alg(), r.Status, r.Body)
		}
		var sess sessionBody
		r.json(t, &sess)
		if sess.UserID != user {
			t.Errorf("%s: session of %q, want %q", k.Method.Alg(), sess.UserID, user)
		}
		r = c.do(http.MethodGet, s.URL+"/api/v1/usage", tok, nil)
		var u usageBody
		r.json(t, &u)
		if r.Status != http.StatusOK || u.UserID != user || u.Sessions.Used != 1 {
			t.Errorf("%s: usage %d %s", k.Method.Alg(), r.Status, r.Body)
		}
		// The issuer and audience checks hold for these tokens too.
		if r := c.do(http.MethodGet, s.URL+"/api/v1/usage", k.Token(t, user, time.Now(), time.Hour, "https://other.example.test/", aud), nil); r.Status != http.StatusUnauthorized {
			t.Errorf("%s from another issuer: %d %s", k.Method.Alg(), r.Status, r.Body)
		}
	}

	confused := keys[1].Sign(t, jwt.MapClaims{"kid": "rsa-1"}, jwt.RegisteredClaims{
		Subject: "mallory", Issuer: iss, Audience: jwt.ClaimStrings{aud}, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour)),
	})
	if r := c.do(http.MethodPost, s.URL+"/api/v1/sessions", confused, newSessionBody); r.Status != http.StatusUnauthorized {
		t.Errorf("ES256 naming the RSA key: %d %s", r.Status, r.Body)
	}
	if r := c.admin(http.MethodGet, s, "/admin/v1/users/mallory", nil); r.Status != http.StatusNotFound {
		t.Errorf("a refused token provisioned its sub: %d %s", r.Status, r.Body)
	}
}

// A Tally whose identity provider cannot be reached at start does not
// start, and says which variable to look at.
func TestUnreachableJWKSStopsStart(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String() + "/jwks"
	ln.Close()
	env := embeddedEnv(t)
	env["TALLY_JWT_JWKS_URL"] = url
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil {
		a.Close()
		t.Fatal("app.New succeeded without the key set")
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "TALLY_JWT_JWKS_URL: ") || !strings.Contains(msg, url) {
		t.Errorf("error %q; want it to name TALLY_JWT_JWKS_URL and the URL", msg)
	}
}
