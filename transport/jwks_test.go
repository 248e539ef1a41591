package transport

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
)

var jwksSecret = []byte("jwks-test-secret-0123456789abcdef")

// testClock is a settable clock shared by the authenticator (token expiry)
// and the JWKS (MinRefreshInterval).
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// jwksEnv is an authenticator whose JWKS is served by a local IdP. The
// periodic refresh is an hour away: tests call jwks.refresh as its ticker
// would, and move the clock for MinRefreshInterval.
type jwksEnv struct {
	idp   *testenv.IdP
	clock *testClock
	jwks  *JWKS
	auth  *authenticator
	logs  *testenv.LockedBuffer
}

const testMinGap = 30 * time.Second

func newJWKSEnv(t *testing.T, keys ...*testenv.SigningKey) *jwksEnv {
	t.Helper()
	e := &jwksEnv{idp: testenv.NewIdP(t), clock: &testClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}, logs: &testenv.LockedBuffer{}}
	e.idp.Serve(t, keys...)
	var err error
	e.jwks, err = NewJWKS(t.Context(), JWKSOptions{
		URL: e.idp.URL, RefreshInterval: time.Hour, MinRefreshInterval: testMinGap,
		Logger: slog.New(slog.NewJSONHandler(e.logs, nil)), Now: e.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.jwks.Close)
	e.auth = newAuthenticator(jwksSecret, e.jwks, 0, e.clock.Now, tokenClaims{})
	return e
}

func (e *jwksEnv) user(tok string) (string, error) { return e.auth.user(context.Background(), tok) }

// accept fails unless tok is accepted as sub's.
func (e *jwksEnv) accept(t *testing.T, what, tok, sub string) {
	t.Helper()
	if got, err := e.user(tok); err != nil || got != sub {
		t.Fatalf("%s: got %q, %v; want it accepted as %q", what, got, err, sub)
	}
}

// refuse fails unless tok is refused with want (compared by identity for
// the package's error values, by code otherwise).
func (e *jwksEnv) refuse(t *testing.T, what, tok string, want error) {
	t.Helper()
	_, err := e.user(tok)
	var de *domain.Error
	switch {
	case err == nil:
		t.Fatalf("%s: accepted; want %v", what, want)
	case errors.As(want, &de) && de.Code == domain.CodeUnavailable:
		if domain.ErrorCode(err) != domain.CodeUnavailable {
			t.Fatalf("%s: %v; want a 503 (%s)", what, err, domain.CodeUnavailable)
		}
	case err != want:
		t.Fatalf("%s: %v; want %v", what, err, want)
	}
}

func (e *jwksEnv) token(t *testing.T, k *testenv.SigningKey, sub string) string {
	return k.Token(t, sub, e.clock.Now(), time.Hour)
}

// Tokens signed by RSA (RS256), P-256 (ES256) and Ed25519 (EdDSA) keys are
// accepted, whether the JWK announces its alg or not; the cache entry
// remembers the key.
func TestJWKSAcceptsEachKeyType(t *testing.T) {
	keys := []*testenv.SigningKey{
		testenv.RSAKey(t, "rsa", 0), testenv.P256Key(t, "ec"), testenv.Ed25519Key(t, "ed"),
		testenv.RSAKey(t, "rsa-noalg", 1), testenv.P256Key(t, "ec-noalg"), testenv.Ed25519Key(t, "ed-noalg"),
	}
	for _, k := range keys[3:] {
		k.Published = ""
	}
	e := newJWKSEnv(t, keys...)
	for _, k := range keys {
		tok := e.token(t, k, "user-"+k.KID)
		e.accept(t, k.KID, tok, "user-"+k.KID)
		e.accept(t, k.KID+" cached", tok, "user-"+k.KID)
		v := e.auth.cache[cacheKey(e.auth, tok)]
		if v.key == nil || v.key.kid != k.KID || v.key.alg != k.Method.Alg() {
			t.Errorf("%s: cache entry %+v; want it to remember key %s (%s)", k.KID, v, k.KID, k.Method.Alg())
		}
	}
	// HS256 with the shared secret still works beside them.
	hs, _ := IssueToken(jwksSecret, "hs-user", time.Hour, e.clock.Now())
	e.accept(t, "HS256", hs, "hs-user")
	if n := e.idp.Fetches(); n != 1 {
		t.Errorf("%d fetches; want the one at start", n)
	}
}

// The checks of HS256 tokens hold for identity-provider tokens: exp
// required and not past, TALLY_JWT_MAX_TTL, a valid sub (else 422).
func TestJWKSTokensMeetTheSameClaims(t *testing.T) {
	k := testenv.Ed25519Key(t, "ed")
	e := newJWKSEnv(t, k)
	now := e.clock.Now()
	sign := func(c jwt.RegisteredClaims) string { return k.Sign(t, nil, c) }
	e.refuse(t, "expired", k.Token(t, "u", now.Add(-2*time.Hour), time.Hour), errExpiredToken)
	e.refuse(t, "beyond TALLY_JWT_MAX_TTL", k.Token(t, "u", now, DefaultJWTMaxTTL+time.Minute), errTokenTooLong)
	e.refuse(t, "no exp", sign(jwt.RegisteredClaims{Subject: "u"}), errBadToken)
	e.refuse(t, "no sub", sign(jwt.RegisteredClaims{ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}), errBadToken)
	if _, err := e.user(k.Token(t, "auth0|123", now, time.Hour)); domain.ErrorCode(err) != domain.CodeValidation {
		t.Errorf("sub outside the user-id alphabet: %v; want 422", err)
	}
}

// The key set rotates: a new kid is fetched on first sight (after
// MinRefreshInterval), and once a refresh no longer finds a key, its
// tokens are refused — cached ones too — while the keys that stayed keep
// their cache entries.
func TestJWKSRotation(t *testing.T) {
	a, b := testenv.RSAKey(t, "a", 0), testenv.P256Key(t, "b")
	e := newJWKSEnv(t, a)
	tokA, tokB := e.token(t, a, "alice"), e.token(t, b, "bob")
	e.accept(t, "old key", tokA, "alice")

	// A new key: the IdP publishes it, a token names it.
	e.idp.Serve(t, a, b)
	e.refuse(t, "new kid within MinRefreshInterval of the last fetch", tokB, errUnknownKey)
	if n := e.idp.Fetches(); n != 1 {
		t.Fatalf("%d fetches; an unknown kid within MinRefreshInterval of the start must not fetch", n)
	}
	e.clock.Add(testMinGap)
	e.accept(t, "new kid after refresh-on-unknown-kid", tokB, "bob")
	if n := e.idp.Fetches(); n != 2 {
		t.Fatalf("%d fetches; want 2 (start, unknown kid)", n)
	}
	keyB := e.jwks.set.Load().keys["b"]

	// The old key is removed. Until a refresh sees that, its cached token
	// still passes; after, it does not — neither cached nor fresh.
	e.idp.Serve(t, b)
	e.accept(t, "removed key before the refresh", tokA, "alice")
	if err := e.jwks.refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	e.refuse(t, "removed key's cached token", tokA, errUnknownKey)
	e.refuse(t, "removed key's new token", e.token(t, a, "alice2"), errUnknownKey)
	e.accept(t, "kept key", tokB, "bob")
	if got := e.jwks.set.Load().keys["b"]; got != keyB || keyB.revoked.Load() {
		t.Errorf("the kept key was replaced or revoked: its cached tokens would be verified again")
	}

	// Same kid, new key material: tokens of the old material are refused.
	b2 := testenv.P256Key(t, "b")
	e.idp.Serve(t, b2)
	if err := e.jwks.refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	e.refuse(t, "token of the replaced material of kid b", tokB, errBadToken)
	e.accept(t, "token of the new material of kid b", e.token(t, b2, "bob"), "bob")
}

// A storm of tokens with made-up kids makes at most one fetch per
// MinRefreshInterval, with concurrent ones sharing it; each is refused 401.
func TestJWKSUnknownKidStorm(t *testing.T) {
	a := testenv.RSAKey(t, "a", 0)
	e := newJWKSEnv(t, a)
	storm := func(n int) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			tok := a.Sign(t, jwt.MapClaims{"kid": fmt.Sprintf("random-%d-%d", e.idp.Fetches(), i)},
				jwt.RegisteredClaims{Subject: "x", ExpiresAt: jwt.NewNumericDate(e.clock.Now().Add(time.Hour))})
			wg.Go(func() {
				if _, err := e.user(tok); err != errUnknownKey {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("made-up kid: %v; want %v", err, errUnknownKey)
		}
	}
	e.clock.Add(testMinGap)
	storm(200)
	if n := e.idp.Fetches(); n != 2 {
		t.Fatalf("%d fetches after 200 made-up kids; want 2 (start, one refresh)", n)
	}
	e.clock.Add(testMinGap - time.Nanosecond)
	storm(50)
	if n := e.idp.Fetches(); n != 2 {
		t.Fatalf("%d fetches; want no more within MinRefreshInterval", n)
	}
	e.clock.Add(time.Nanosecond)
	storm(50)
	if n := e.idp.Fetches(); n != 3 {
		t.Fatalf("%d fetches; want one more after MinRefreshInterval", n)
	}
}

// The algorithm is the key's, never the token's choice: a token whose alg
// differs from its key's is refused, HS256 never uses a public key as the
// HMAC secret, and none or a missing kid are refused.
func TestJWKSRefusesAlgConfusion(t *testing.T) {
	rsaKey, ecKey, edKey := testenv.RSAKey(t, "rsa", 0), testenv.P256Key(t, "ec"), testenv.Ed25519Key(t, "ed")
	bare := testenv.RSAKey(t, "rsa-noalg", 1)
	bare.Published = ""
	e := newJWKSEnv(t, rsaKey, ecKey, edKey, bare)
	now := e.clock.Now()
	claims := jwt.RegisteredClaims{Subject: "mallory", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}

	der, err := x509.MarshalPKIXPublicKey(rsaKey.Signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	jwkJSON, _ := json.Marshal(rsaKey.JWK(t))
	hmacWith := func(key []byte, header jwt.MapClaims) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
		for k, v := range header {
			tok.Header[k] = v
		}
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// An ES256-headed token signed with the P-256 key but naming the RSA
	// key, and the like: each is signed validly by some key.
	asKid := func(k *testenv.SigningKey, kid string) string {
		return k.Sign(t, jwt.MapClaims{"kid": kid}, claims)
	}
	for _, tc := range []struct {
		name string
		tok  string
		want error
	}{
		{"HS256 with the RSA public key (DER) as secret, naming it", hmacWith(der, jwt.MapClaims{"kid": "rsa"}), errAlgMismatch},
		{"HS256 with the RSA public key (PEM) as secret, naming it", hmacWith(pemBytes, jwt.MapClaims{"kid": "rsa"}), errAlgMismatch},
		{"HS256 with the RSA JWK as secret, naming it", hmacWith(jwkJSON, jwt.MapClaims{"kid": "rsa"}), errAlgMismatch},
		{"HS256 with the RSA public key as secret, no kid", hmacWith(pemBytes, nil), errBadToken},
		{"HS256 with the RSA public key as secret, unknown kid", hmacWith(pemBytes, jwt.MapClaims{"kid": "other"}), errBadToken},
		{"HS256 with the shared secret, naming a JWKS key", hmacWith(jwksSecret, jwt.MapClaims{"kid": "ec"}), errAlgMismatch},
		{"ES256 naming the RSA key", asKid(ecKey, "rsa"), errAlgMismatch},
		{"RS256 naming the P-256 key", asKid(rsaKey, "ec"), errAlgMismatch},
		{"EdDSA naming the P-256 key", asKid(edKey, "ec"), errAlgMismatch},
		{"RS256 naming the Ed25519 key", asKid(rsaKey, "ed"), errAlgMismatch},
		{"EdDSA naming an RSA key without alg (RS256 only)", asKid(edKey, "rsa-noalg"), errAlgMismatch},
		{"PS256 by an RSA key without alg", (&testenv.SigningKey{KID: "rsa-noalg", Method: jwt.SigningMethodPS256, Signer: bare.Signer}).Sign(t, nil, claims), errBadToken},
		{"RS384 by the RSA key", (&testenv.SigningKey{KID: "rsa", Method: jwt.SigningMethodRS384, Signer: rsaKey.Signer}).Sign(t, nil, claims), errBadToken},
		{"alg none naming the RSA key", unsignedToken(`{"alg":"none","kid":"rsa"}`, claims), errBadToken},
		{"RS256 without kid", rsaKey.Sign(t, jwt.MapClaims{"kid": nil}, claims), errNoKid},
		{"RS256 with a numeric kid", rsaKey.Sign(t, jwt.MapClaims{"kid": 7}, claims), errBadToken},
	} {
		e.refuse(t, tc.name, tc.tok, tc.want)
	}
	// An HS256 token signed with the secret passes whatever its kid, and
	// never makes Tally fetch the key set.
	e.clock.Add(testMinGap)
	e.accept(t, "HS256 with the secret and a kid unknown to the JWKS", hmacWith(jwksSecret, jwt.MapClaims{"kid": "hs-1"}), "mallory")
	if n := e.idp.Fetches(); n != 1 {
		t.Errorf("%d fetches; no token above may fetch the key set", n)
	}
}

func unsignedToken(header string, claims jwt.Claims) string {
	payload, _ := json.Marshal(claims)
	return b64url([]byte(header)) + "." + b64url(payload) + "."
}

// While the IdP is down, tokens of known keys keep working (cached or
// not); a token with an unknown kid is a 503 — the key may be new — with
// at most one fetch per MinRefreshInterval; when the IdP is back, new keys
// are found again.
func TestJWKSOutage(t *testing.T) {
	a, b := testenv.RSAKey(t, "a", 0), testenv.Ed25519Key(t, "b")
	e := newJWKSEnv(t, a)
	cached := e.token(t, a, "alice")
	e.accept(t, "before the outage", cached, "alice")
	unknown := e.token(t, b, "bob")

	e.idp.SetDown(true)
	e.clock.Add(testMinGap)
	if err := e.jwks.refresh(t.Context()); err == nil {
		t.Fatal("refresh from a down IdP succeeded")
	}
	if !strings.Contains(e.logs.String(), "cannot refresh the identity provider's key set") {
		t.Errorf("a failed refresh is not logged: %s", e.logs)
	}
	fetches := e.idp.Fetches()
	e.accept(t, "cached token of a known key", cached, "alice")
	e.accept(t, "new token of a known key", e.token(t, a, "alice2"), "alice2")
	unavailable := jwksUnavailable(nil)
	e.refuse(t, "unknown kid just after a failed refresh", unknown, unavailable)
	if n := e.idp.Fetches(); n != fetches {
		t.Errorf("%d fetches; want none within MinRefreshInterval", n-fetches)
	}
	e.clock.Add(testMinGap)
	e.refuse(t, "unknown kid, IdP still down", unknown, unavailable)
	if n := e.idp.Fetches(); n != fetches+1 {
		t.Errorf("%d fetches; want one", n-fetches)
	}
	status, _ := classify(func() error { _, err := e.user(unknown); return err }())
	if status != 503 {
		t.Errorf("an unknown kid during an outage is answered %d; want 503", status)
	}

	e.idp.SetDown(false)
	e.idp.Serve(t, a, b)
	e.clock.Add(testMinGap)
	e.accept(t, "new key after the outage", unknown, "bob")
}

// A request that gives up while waiting for the key set is a 503, and
// does not cancel the fetch the others wait for.
func TestJWKSWaitEndsWithTheRequest(t *testing.T) {
	a := testenv.RSAKey(t, "a", 0)
	e := newJWKSEnv(t, a)
	e.clock.Add(testMinGap)
	release := e.idp.Hold(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := e.auth.user(ctx, a.Sign(t, jwt.MapClaims{"kid": "new"}, jwt.RegisteredClaims{Subject: "x", ExpiresAt: jwt.NewNumericDate(e.clock.Now().Add(time.Hour))}))
	if domain.ErrorCode(err) != domain.CodeUnavailable {
		t.Fatalf("canceled wait: %v; want 503", err)
	}
	// The fetch it started goes on, and installs what it fetched.
	e.jwks.mu.Lock()
	c := e.jwks.inflight
	e.jwks.mu.Unlock()
	if c == nil {
		t.Fatal("the fetch ended with the request that started it")
	}
	release()
	<-c.done
	if c.err != nil || e.idp.Fetches() != 2 {
		t.Errorf("fetch: %v after %d fetches; want it to succeed, the second", c.err, e.idp.Fetches())
	}
}

// Without a key set at start, NewJWKS fails and says why.
func TestNewJWKSFailsWithoutKeys(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String() + "/jwks"
	ln.Close()

	down := testenv.NewIdP(t)
	down.SetDown(true)
	for name, tc := range map[string]struct {
		url, doc, want string
	}{
		"unreachable":  {url: closed, want: "connection refused"},
		"503":          {url: "down", want: "status 503"},
		"not a URL":    {url: "jwks.example.com/keys", want: "not an absolute http(s) URL"},
		"ftp":          {url: "ftp://jwks.example.com/keys", want: "not an absolute http(s) URL"},
		"not JSON":     {doc: "<html>", want: "not a JWK Set"},
		"no keys":      {doc: `{"keys":[]}`, want: "no usable signing key"},
		"no keys list": {doc: `{"kty":"RSA"}`, want: `no "keys" array`},
		"too large":    {doc: `{"keys":[],"x":"` + strings.Repeat("x", maxJWKSBytes) + `"}`, want: "over 1048576 bytes"},
	} {
		t.Run(name, func(t *testing.T) {
			u := tc.url
			switch {
			case u == "down":
				u = down.URL
			case u == "":
				idp := testenv.NewIdP(t)
				idp.ServeRaw([]byte(tc.doc))
				u = idp.URL
			}
			k, err := NewJWKS(t.Context(), JWKSOptions{URL: u, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err == nil {
				k.Close()
				t.Fatal("NewJWKS succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q; want it to say %q", err, tc.want)
			}
		})
	}
}

// Keys Tally cannot use are left out, each with a reason; what remains is
// the public half of the usable keys, each pinned to one algorithm.
func TestParseKeySetLeavesOutUnusableKeys(t *testing.T) {
	good := testenv.RSAKey(t, "good", 0)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk := func(key any, meta jwkset.JWKMetadataOptions, private bool) jwkset.JWKMarshal {
		j, err := jwkset.NewJWKFromKey(key, jwkset.JWKOptions{Metadata: meta, Marshal: jwkset.JWKMarshalOptions{Private: private}})
		if err != nil {
			t.Fatal(err)
		}
		return j.Marshal()
	}
	withPrivate := jwk(good.Signer, jwkset.JWKMetadataOptions{KID: "leaked", ALG: "RS256"}, true)
	if withPrivate.D == "" {
		t.Fatal("test setup: the leaked JWK has no private part")
	}
	ed := testenv.Ed25519Key(t, "ed-as-es256").JWK(t)
	ed.ALG = "ES256"
	noKid := good.JWK(t)
	noKid.KID = ""
	enc := good.JWK(t)
	enc.KID, enc.USE = "enc", jwkset.UseEnc
	signOnly := good.JWK(t)
	signOnly.KID, signOnly.KEYOPS = "sign-only", []jwkset.KEYOPS{jwkset.KeyOpsSign}
	ps := good.JWK(t)
	ps.KID, ps.ALG = "ps256", "PS256"
	dup1, dup2 := testenv.P256Key(t, "dup").JWK(t), testenv.P256Key(t, "dup").JWK(t)
	doc, _ := json.Marshal(map[string]any{"keys": []any{
		good.JWK(t),
		withPrivate,
		noKid, enc, signOnly, ps, ed, dup1, dup2,
		jwk(&small.PublicKey, jwkset.JWKMetadataOptions{KID: "small"}, false),
		jwk(&p384.PublicKey, jwkset.JWKMetadataOptions{KID: "p384"}, false),
		jwk([]byte("0123456789abcdef0123456789abcdef"), jwkset.JWKMetadataOptions{KID: "oct", ALG: "HS256"}, true),
		map[string]any{"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
		"not an object",
	}})
	set, ignored, err := parseKeySet(doc, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.keys) != 2 || set.keys["good"] == nil || set.keys["leaked"] == nil {
		t.Fatalf("usable keys %v; want good and leaked", set.keys)
	}
	for kid, sk := range set.keys {
		if _, ok := sk.pub.(*rsa.PublicKey); !ok || sk.alg != "RS256" {
			t.Errorf("%s: %T %s; want an *rsa.PublicKey pinned to RS256", kid, sk.pub, sk.alg)
		}
	}
	for _, reason := range []string{"no kid", `"enc": use is "enc"`, "key_ops lacks verify", "alg PS256", "alg ES256",
		`kid "dup": more than one key`, "RSA key of 1024 bits", "only P-256", `kid "oct"`, `kid "broken"`, "not a JWK"} {
		found := false
		for _, msg := range ignored {
			found = found || strings.Contains(msg, reason)
		}
		if !found {
			t.Errorf("no reason mentions %q; got %q", reason, ignored)
		}
	}
	if len(ignored) != 11 {
		t.Errorf("%d reasons; want 11, one per unusable key: %q", len(ignored), ignored)
	}
}

// The periodic refresh runs on its own: a key removed from the set stops
// being known without any token asking for a refresh.
func TestJWKSPeriodicRefresh(t *testing.T) {
	a, b := testenv.RSAKey(t, "a", 0), testenv.P256Key(t, "b")
	idp := testenv.NewIdP(t)
	idp.Serve(t, a)
	k, err := NewJWKS(t.Context(), JWKSOptions{URL: idp.URL, RefreshInterval: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	idp.Serve(t, b)
	deadline := time.Now().Add(20 * time.Second)
	for k.known("a") || !k.known("b") {
		if time.Now().After(deadline) {
			t.Fatalf("after %d fetches the set still is %v", idp.Fetches(), k.set.Load().keys)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func cacheKey(a *authenticator, tok string) tokenKey {
	return tokenKey{maphash.String(a.seeds[0], tok), maphash.String(a.seeds[1], tok)}
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
