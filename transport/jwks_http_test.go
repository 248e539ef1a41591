package transport_test

import (
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/transport"
)

// newJWKSEnv is newEnv with a JWKS served by a local IdP, on a clock of
// its own that starts where the env's does.
func newJWKSEnv(t *testing.T, idp *testenv.IdP) (*env, *clock) {
	t.Helper()
	jc := &clock{t: t0}
	jwks, err := transport.NewJWKS(t.Context(), transport.JWKSOptions{
		URL: idp.URL, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: jc.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(jwks.Close)
	return newEnv(t, func(o *transport.Options) { o.JWKS = jwks }), jc
}

// Through the HTTP handler: RS256, ES256 and EdDSA tokens of the identity
// provider create sessions for their sub, beside HS256 ones; a token whose
// alg is not its key's is a 401; a new kid the provider cannot be asked
// about is a 503 with Retry-After, in the contract's error shape.
func TestIdentityProviderTokensCreateSessions(t *testing.T) {
	rsaKey, ecKey, edKey := testenv.RSAKey(t, "rsa-1", 0), testenv.P256Key(t, "ec-1"), testenv.Ed25519Key(t, "ed-1")
	idp := testenv.NewIdP(t)
	idp.Serve(t, rsaKey, ecKey, edKey)
	e, jwksClock := newJWKSEnv(t, idp)

	var want []string
	for _, k := range []*testenv.SigningKey{rsaKey, ecKey, edKey} {
		user := "idp-user-" + k.Method.Alg()
		r := e.do("POST", "/api/v1/sessions", k.Token(t, user, e.clock.Now(), time.Hour), validCreate)
		if r.Status != http.StatusOK {
			t.Fatalf("%s: %d %s", k.Method.Alg(), r.Status, r.Body)
		}
		want = append(want, `CreateSession `+user+` Weekly sync/en-US/google key=""`)
	}
	r := e.do("POST", "/api/v1/sessions", e.token("hs-user"), validCreate)
	if r.Status != http.StatusOK {
		t.Fatalf("HS256: %d %s", r.Status, r.Body)
	}
	want = append(want, `CreateSession hs-user Weekly sync/en-US/google key=""`)
	if got := e.accounts.Calls(); !reflect.DeepEqual(got, want) {
		t.Errorf("calls %q, want %q", got, want)
	}

	// ES256 naming the RSA key.
	confused := ecKey.Sign(t, jwt.MapClaims{"kid": "rsa-1"}, jwt.RegisteredClaims{Subject: "mallory", ExpiresAt: jwt.NewNumericDate(e.clock.Now().Add(time.Hour))})
	b := wantError(t, e.do("POST", "/api/v1/sessions", confused, validCreate), 401, "unauthorized")
	if !strings.Contains(b.Detail.Message, "alg") {
		t.Errorf("message %q; want it to name the alg", b.Detail.Message)
	}

	// A key the IdP has not published yet, while it is down.
	idp.SetDown(true)
	jwksClock.Add(transport.DefaultJWKSMinRefresh)
	late := testenv.RSAKey(t, "rsa-2", 1)
	res := e.do("GET", "/api/v1/usage", late.Token(t, "bob", e.clock.Now(), time.Hour), nil)
	wantError(t, res, 503, "unavailable")
	if res.Header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	// Known keys keep working.
	if r := e.do("GET", "/api/v1/usage", edKey.Token(t, "carol", e.clock.Now(), time.Hour), nil); r.Status != http.StatusOK {
		t.Errorf("known key during the outage: %d %s", r.Status, r.Body)
	}
}
