package testenv

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// IdP is an identity provider for tests: an HTTP server on 127.0.0.1 that
// serves a JSON Web Key Set (the keys given to Serve, public halves only)
// and counts how often it is fetched. Keys sign tokens themselves.
type IdP struct {
	URL string

	srv     *httptest.Server
	mu      sync.Mutex
	doc     []byte
	down    bool
	hold    chan struct{} // non-nil: answers wait until it is closed
	fetches atomic.Int64
}

// NewIdP starts an IdP serving an empty key set; it stops with the test.
func NewIdP(tb testing.TB) *IdP {
	tb.Helper()
	p := &IdP{doc: []byte(`{"keys":[]}`)}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.fetches.Add(1)
		p.mu.Lock()
		doc, down, hold := p.doc, p.down, p.hold
		p.mu.Unlock()
		if hold != nil {
			select {
			case <-hold:
			case <-r.Context().Done():
				return
			}
		}
		if down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(doc)
	}))
	tb.Cleanup(p.srv.Close)
	p.URL = p.srv.URL + "/.well-known/jwks.json"
	return p
}

// Serve makes the key set hold exactly keys, from the next fetch on.
func (p *IdP) Serve(tb testing.TB, keys ...*SigningKey) {
	tb.Helper()
	set := jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{}}
	for _, k := range keys {
		set.Keys = append(set.Keys, k.JWK(tb))
	}
	doc, err := json.Marshal(set)
	if err != nil {
		tb.Fatal(err)
	}
	p.ServeRaw(doc)
}

// ServeRaw makes the IdP answer doc, verbatim, from the next fetch on.
func (p *IdP) ServeRaw(doc []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.doc = doc
}

// SetDown makes every fetch fail with 503 (down) or succeed again.
func (p *IdP) SetDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
}

// Hold makes fetches wait, from the next one on, until the returned
// function is called (it is also called when the test ends).
func (p *IdP) Hold(tb testing.TB) (release func()) {
	ch := make(chan struct{})
	var once sync.Once
	release = func() {
		once.Do(func() {
			p.mu.Lock()
			p.hold = nil
			p.mu.Unlock()
			close(ch)
		})
	}
	p.mu.Lock()
	p.hold = ch
	p.mu.Unlock()
	tb.Cleanup(release)
	return release
}

// Fetches is how many times the key set has been requested.
func (p *IdP) Fetches() int64 { return p.fetches.Load() }

// SigningKey is a private key of the IdP, with its kid and the algorithm
// it signs with. Published says which alg its JWK announces ("" for none).
type SigningKey struct {
	KID       string
	Method    jwt.SigningMethod
	Published string
	Signer    crypto.Signer
}

var (
	rsaMu   sync.Mutex
	rsaKeys []*rsa.PrivateKey // generating 2048-bit keys is slow: reuse them
)

// RSAKey is an RSA-2048 RS256 key; n picks one of a few shared keys, so
// that tests can hold distinct ones without generating many.
func RSAKey(tb testing.TB, kid string, n int) *SigningKey {
	tb.Helper()
	rsaMu.Lock()
	defer rsaMu.Unlock()
	for len(rsaKeys) <= n {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			tb.Fatal(err)
		}
		rsaKeys = append(rsaKeys, k)
	}
	return &SigningKey{KID: kid, Method: jwt.SigningMethodRS256, Published: "RS256", Signer: rsaKeys[n]}
}

// P256Key is a fresh ES256 key.
func P256Key(tb testing.TB, kid string) *SigningKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return &SigningKey{KID: kid, Method: jwt.SigningMethodES256, Published: "ES256", Signer: k}
}

// Ed25519Key is a fresh EdDSA key.
func Ed25519Key(tb testing.TB, kid string) *SigningKey {
	tb.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return &SigningKey{KID: kid, Method: jwt.SigningMethodEdDSA, Published: "EdDSA", Signer: k}
}

// JWK is the key's public JWK as the IdP publishes it.
func (k *SigningKey) JWK(tb testing.TB) jwkset.JWKMarshal {
	tb.Helper()
	j, err := jwkset.NewJWKFromKey(k.Signer.Public(), jwkset.JWKOptions{
		Metadata: jwkset.JWKMetadataOptions{KID: k.KID, ALG: jwkset.ALG(k.Published), USE: jwkset.UseSig},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return j.Marshal()
}

// Token signs a token for sub expiring ttl after now, with the key's kid
// in its header, and iss/aud when given.
func (k *SigningKey) Token(tb testing.TB, sub string, now time.Time, ttl time.Duration, issAud ...string) string {
	tb.Helper()
	claims := jwt.RegisteredClaims{Subject: sub, IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(ttl))}
	if len(issAud) > 0 {
		claims.Issuer = issAud[0]
	}
	if len(issAud) > 1 {
		claims.Audience = jwt.ClaimStrings{issAud[1]}
	}
	return k.Sign(tb, jwt.MapClaims{}, claims)
}

// Sign signs claims with header fields added to the standard ones (alg,
// typ, kid). A "kid" of nil in header removes the kid.
func (k *SigningKey) Sign(tb testing.TB, header jwt.MapClaims, claims jwt.Claims) string {
	tb.Helper()
	tok := jwt.NewWithClaims(k.Method, claims)
	tok.Header["kid"] = k.KID
	for name, v := range header {
		if v == nil {
			delete(tok.Header, name)
			continue
		}
		tok.Header[name] = v
	}
	s, err := tok.SignedString(k.Signer)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}
