package transport

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/golang-jwt/jwt/v5"

	"github.com/tally-dev/tally/domain"
)

// ctxUserID is the gin context key of the authenticated user id, ctxAdmin
// that of the admin credential's name.
type (
	ctxUserIDKey struct{}
	ctxAdminKey  struct{}
)

var (
	ctxUserID = ctxUserIDKey{}
	ctxAdmin  = ctxAdminKey{}
)

// IssueToken signs an HS256 user token for userID, valid for ttl from now.
// `tally token` and tests use it; the service itself never issues tokens.
func IssueToken(secret []byte, userID string, ttl time.Duration, now time.Time) (string, error) {
	return IssueTokenFor(secret, userID, ttl, now, "", "")
}

// IssueTokenFor is IssueToken with an issuer and an audience (either may be
// empty: left out), as a service checking TALLY_JWT_ISSUER and
// TALLY_JWT_AUDIENCE requires.
func IssueTokenFor(secret []byte, userID string, ttl time.Duration, now time.Time, issuer, audience string) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("issue token: empty secret")
	}
	if !domain.ValidUserID(userID) {
		return "", fmt.Errorf("issue token: user id %q is not 1-128 characters of [A-Za-z0-9._@:-]", userID)
	}
	if ttl <= 0 {
		return "", fmt.Errorf("issue token: ttl %v must be positive", ttl)
	}
	claims := jwt.RegisteredClaims{
		Subject:   userID,
		Issuer:    issuer,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}
	if audience != "" {
		claims.Audience = jwt.ClaimStrings{audience}
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
}

// maxTokenBytes bounds a bearer credential. Real tokens are a few hundred
// bytes; a longer one is refused before it is decoded, hashed or compared,
// so that it costs the server nothing but reading it.
const maxTokenBytes = 8 << 10

// tokenCacheSize bounds the verified-token cache: one entry per token in
// use, ~100 bytes each, so that a service with that many active users
// verifies each token once (a smaller cache than the active users thrashed
// and verified most requests again). tokenCacheMaxLen keeps a flood of
// huge tokens from pinning memory (larger ones are verified every time).
const (
	tokenCacheSize   = 1 << 18
	tokenCacheMaxLen = 1024
)

// authenticator verifies user tokens (admin tokens: admins.go).
//
// Verifying an HS256 token (base64, JSON, HMAC) cost as much as the rest of
// an over-limit answer, so verified tokens are cached. The cache is safe
// because a token string fully determines its claims and signature; what
// changes with time, the expiry, is checked on every hit. Entries are keyed
// by a 128-bit keyed hash of the token (maphash, seeds drawn at start-up)
// rather than the token itself, which would triple the memory per entry:
// without the seeds, making a token collide with a cached one is a 2^128
// search.
//
// With a JWKS (TALLY_JWT_JWKS_URL), tokens signed by the identity provider
// are accepted too, and a cache entry remembers the key that verified it:
// when a refresh removes that key from the set, the entry no longer counts
// and the token is verified again — and refused. So a removed key's tokens
// stop working within one refresh interval, cached or not.
type authenticator struct {
	secret    []byte
	jwks      *JWKS // nil: HS256 tokens only
	maxTTL    time.Duration
	parser    *jwt.Parser
	now       func() time.Time
	seeds     [2]maphash.Seed
	cacheSize int

	mu    sync.RWMutex
	cache map[tokenKey]verifiedToken
}

type tokenKey [2]uint64

type verifiedToken struct {
	sub string
	exp int64       // Unix microseconds (a time.Time would take 24 bytes, not 8)
	key *signingKey // the JWKS key that verified it; nil for HS256
}

// DefaultJWTMaxTTL is the longest lifetime left a user token may have
// when Options.JWTMaxTTL is zero.
const DefaultJWTMaxTTL = 24 * time.Hour

// tokenClaims are the optional claims every user token must carry.
type tokenClaims struct{ issuer, audience string }

// newAuthenticator verifies HS256 tokens with secret and, when jwks is not
// nil, RS256, ES256 and EdDSA tokens with the keys of the identity
// provider (keyFor decides which).
func newAuthenticator(secret []byte, jwks *JWKS, maxTTL time.Duration, now func() time.Time, want tokenClaims) *authenticator {
	if maxTTL <= 0 {
		maxTTL = DefaultJWTMaxTTL
	}
	methods := []string{jwt.SigningMethodHS256.Alg()}
	if jwks != nil {
		methods = append(methods, jwt.SigningMethodRS256.Alg(), jwt.SigningMethodES256.Alg(), jwt.SigningMethodEdDSA.Alg())
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(methods),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(now),
	}
	if want.issuer != "" {
		opts = append(opts, jwt.WithIssuer(want.issuer))
	}
	if want.audience != "" {
		opts = append(opts, jwt.WithAudience(want.audience))
	}
	return &authenticator{
		secret:    append([]byte(nil), secret...),
		jwks:      jwks,
		maxTTL:    maxTTL,
		parser:    jwt.NewParser(opts...),
		now:       now,
		seeds:     [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		cacheSize: tokenCacheSize,
		cache:     make(map[tokenKey]verifiedToken),
	}
}

var (
	errNoToken      = &domain.Error{Code: domain.CodeUnauthorized, Message: "missing bearer token"}
	errBadToken     = &domain.Error{Code: domain.CodeUnauthorized, Message: "invalid token"}
	errExpiredToken = &domain.Error{Code: domain.CodeUnauthorized, Message: "token is expired"}
	errTokenTooLong = &domain.Error{Code: domain.CodeUnauthorized, Message: "token expires further ahead than this service accepts (TALLY_JWT_MAX_TTL)"}
	errBadAdmin     = &domain.Error{Code: domain.CodeUnauthorized, Message: "invalid admin token"}
	errLongToken    = &domain.Error{Code: domain.CodeUnauthorized, Message: "bearer token is over 8 KiB"}
	errNotAdmin     = &domain.Error{Code: domain.CodeForbidden, Message: "this endpoint needs the admin token"}
)

// checkSubject refuses a verified token's sub that cannot be a user id.
// The token is authentic — only the holder of the secret, or the identity
// provider, could sign it — so this is not an authentication failure but a
// bad value, and it is answered like any other: 422 naming the field `sub`.
// A sub with characters no store can keep is told which one.
func checkSubject(sub string) error {
	msg := ""
	if err := domain.CheckText(sub); err != nil {
		msg = err.Error()
	} else if !domain.ValidUserID(sub) {
		msg = "must be 1 to 128 characters of [A-Za-z0-9._@:-]"
	} else {
		return nil
	}
	return &domain.Error{Code: domain.CodeValidation, Message: "the token's subject is not a valid user id",
		Fields: []domain.FieldError{{Field: "sub", Message: msg}}}
}

// user verifies a user token and returns its subject. A token that is not
// authentic, of an algorithm not accepted, expired or without sub is a 401;
// an authentic one whose sub is not a valid user id is a 422
// (checkSubject); one whose key could not be looked up because the
// identity provider's key set cannot be fetched is a 503. ctx bounds the
// wait for that fetch.
func (a *authenticator) user(ctx context.Context, token string) (string, error) {
	now := a.now()
	key := tokenKey{maphash.String(a.seeds[0], token), maphash.String(a.seeds[1], token)}
	a.mu.RLock()
	v, ok := a.cache[key]
	a.mu.RUnlock()
	if ok && (v.key == nil || !v.key.revoked.Load()) {
		if now.UnixMicro() < v.exp {
			return v.sub, nil
		}
		return "", errExpiredToken
	}

	var claims jwt.RegisteredClaims
	var used *signingKey
	var keyErr error
	_, err := a.parser.ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
		k, sk, err := a.keyFor(ctx, t)
		used, keyErr = sk, err
		return k, err
	})
	if err != nil {
		switch {
		case keyErr != nil:
			return "", keyErr
		case errors.Is(err, jwt.ErrTokenExpired):
			return "", errExpiredToken
		}
		return "", errBadToken
	}
	if claims.Subject == "" || claims.ExpiresAt == nil {
		return "", errBadToken
	}
	// A lifetime is judged at first sight; a cached token only gets
	// closer to its exp.
	if claims.ExpiresAt.Sub(now) > a.maxTTL {
		return "", errTokenTooLong
	}
	if err := checkSubject(claims.Subject); err != nil {
		return "", err
	}
	if len(token) <= tokenCacheMaxLen {
		a.remember(key, verifiedToken{sub: claims.Subject, exp: claims.ExpiresAt.UnixMicro(), key: used}, now)
	}
	return claims.Subject, nil
}

// keyFor picks the key that verifies t, and with it the algorithm: the
// parser has already refused any alg but HS256 (and, with a JWKS, RS256,
// ES256 and EdDSA).
//
//   - HS256 goes to the shared secret, whatever its kid — unless the kid
//     names a key of the JWKS: that token claims an asymmetric key and its
//     alg cannot be that key's, so it is refused before any HMAC is
//     computed (the RS256/HS256 confusion, where the public key would be
//     used as the HMAC secret, never gets a chance). An HS256 token never
//     makes Tally fetch the key set.
//   - Any other alg needs a kid, which selects a key of the JWKS (fetching
//     the set again when it is unknown, see JWKS.key); the token's alg must
//     be the key's own. A JWKS key is never handed out for HS256, and the
//     set holds public keys only, so there are no key bytes to misuse.
//
// The returned *signingKey is nil for HS256.
func (a *authenticator) keyFor(ctx context.Context, t *jwt.Token) (any, *signingKey, error) {
	alg := t.Method.Alg()
	raw, hasKid := t.Header["kid"]
	kid, isString := raw.(string)
	if hasKid && !isString {
		return nil, nil, errBadToken
	}
	if alg == jwt.SigningMethodHS256.Alg() {
		if hasKid && a.jwks != nil && a.jwks.known(kid) {
			return nil, nil, errAlgMismatch
		}
		return a.secret, nil, nil
	}
	if a.jwks == nil {
		return nil, nil, errBadToken // unreachable: the parser admits HS256 only
	}
	if !hasKid {
		return nil, nil, errNoKid
	}
	sk, err := a.jwks.key(ctx, kid)
	if err != nil {
		return nil, nil, err
	}
	if sk.alg != alg {
		return nil, nil, errAlgMismatch
	}
	return sk.pub, sk, nil
}

func (a *authenticator) remember(key tokenKey, v verifiedToken, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.cache) >= a.cacheSize {
		for k, e := range a.cache {
			if now.UnixMicro() >= e.exp {
				delete(a.cache, k)
			}
		}
		if len(a.cache) >= a.cacheSize {
			// Still full of live tokens: start over rather than track
			// recency; a miss only costs one verification.
			clear(a.cache)
		}
	}
	a.cache[key] = v
}

// bearer extracts the credential of an `Authorization: Bearer …` header.
// The scheme is case-insensitive (RFC 9110). A missing credential is
// errNoToken, one over maxTokenBytes errLongToken.
func bearer(c *gin.Context) (string, error) {
	h := c.GetHeader("Authorization")
	const prefix = "bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", errNoToken
	}
	tok := strings.TrimSpace(h[len(prefix):])
	switch {
	case tok == "":
		return "", errNoToken
	case len(tok) > maxTokenBytes:
		return "", errLongToken
	}
	return tok, nil
}

// requireUser admits requests with a valid user token and records the
// user id for the handlers.
func (s *server) requireUser(c *gin.Context) {
	tok, err := bearer(c)
	if err != nil {
		s.fail(c, err)
		return
	}
	uid, err := s.auth.user(c.Request.Context(), tok)
	if err != nil {
		s.fail(c, err)
		return
	}
	c.Set(ctxUserID, uid)
	c.Next()
}

// requireAdmin admits requests with an admin credential and records its
// name for the handlers (the audit trail's who). An authentic user token
// is told it lacks the right (403), whatever its sub, which admin paths do
// not use; anything else lacks a credential (401).
func (s *server) requireAdmin(c *gin.Context) {
	tok, err := bearer(c)
	if err != nil {
		s.fail(c, err)
		return
	}
	if name, ok := s.admins.lookup(tok); ok {
		c.Set(ctxAdmin, name)
		c.Next()
		return
	}
	if _, err := s.auth.user(c.Request.Context(), tok); err == nil || domain.ErrorCode(err) == domain.CodeValidation {
		s.fail(c, errNotAdmin)
		return
	}
	s.fail(c, errBadAdmin)
}

func userID(c *gin.Context) string { return c.GetString(ctxUserID) }
