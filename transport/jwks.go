package transport

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/tally-dev/tally/domain"
)

// Defaults of JWKSOptions. A key removed from the identity provider's key
// set stops being accepted within DefaultJWKSRefresh (plus one fetch); a
// token whose kid is unknown makes Tally fetch the set again at most once
// per DefaultJWKSMinRefresh, however many such tokens arrive.
const (
	DefaultJWKSRefresh    = 5 * time.Minute
	DefaultJWKSMinRefresh = 30 * time.Second
	DefaultJWKSFetch      = 5 * time.Second
)

// maxJWKSBytes bounds the key set document. Real ones are a few KiB; a
// larger answer is refused rather than read into memory.
const maxJWKSBytes = 1 << 20

// minRSABits is the smallest RSA modulus accepted (NIST SP 800-131A).
const minRSABits = 2048

// JWKSOptions configures a JWKS.
type JWKSOptions struct {
	// URL is the identity provider's JSON Web Key Set (TALLY_JWT_JWKS_URL).
	URL string
	// RefreshInterval is how often the set is fetched again; zero means
	// DefaultJWKSRefresh.
	RefreshInterval time.Duration
	// MinRefreshInterval is the least time between two fetches caused by
	// tokens with an unknown kid; zero means DefaultJWKSMinRefresh.
	MinRefreshInterval time.Duration
	// FetchTimeout bounds one fetch; zero means DefaultJWKSFetch.
	FetchTimeout time.Duration
	// Client fetches the set; nil means a client that refuses redirects
	// from https to http.
	Client *http.Client
	Logger *slog.Logger
	Now    func() time.Time // the clock of MinRefreshInterval; nil means time.Now
}

// JWKS is the identity provider's key set, kept fresh: fetched at start
// (NewJWKS fails when it cannot be), again every RefreshInterval, and when a
// token names a kid the set lacks — then at most once per MinRefreshInterval,
// with concurrent requests sharing one fetch, so that tokens with made-up
// kids cannot make Tally hammer the provider.
//
// A fetch that fails leaves the keys as they were: tokens of known keys keep
// working through a provider outage. A fetch that succeeds replaces the set;
// keys no longer in it are revoked, which also drops their tokens from the
// verified-token cache (authenticator.user).
//
// The refresh policy is Tally's own rather than jwkset's HTTP storage or
// keyfunc's Keyfunc: docs/decisions/0016-jwks-user-tokens.md says why.
// jwkset parses and validates the keys.
type JWKS struct {
	url          string
	client       *http.Client
	log          *slog.Logger
	now          func() time.Time
	every        time.Duration
	minGap       time.Duration
	fetchTimeout time.Duration

	set atomic.Pointer[keySet]

	ctx    context.Context // ended by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	inflight *fetchCall // the fetch running now, or nil
	lastTry  time.Time  // when the last fetch started
	lastErr  error      // how it ended
	closed   bool
	lastSum  [sha256.Size]byte // of the document the set was built from
}

// keySet is one fetched set: the usable signing keys by kid. It is never
// changed once published.
type keySet struct {
	keys map[string]*signingKey
}

// signingKey is a public key and the one algorithm it verifies. revoked is
// set when a fetched set no longer holds it; cached tokens it verified are
// then verified again, and fail.
type signingKey struct {
	kid     string
	alg     string
	pub     crypto.PublicKey
	revoked atomic.Bool
}

type fetchCall struct {
	done chan struct{}
	err  error
}

var (
	errUnknownKey  = &domain.Error{Code: domain.CodeUnauthorized, Message: "token is signed by a key this service does not know (its kid is not in the key set at TALLY_JWT_JWKS_URL)"}
	errNoKid       = &domain.Error{Code: domain.CodeUnauthorized, Message: "token has no kid: an RS256, ES256 or EdDSA token must name its key"}
	errAlgMismatch = &domain.Error{Code: domain.CodeUnauthorized, Message: "token's alg is not the algorithm of the key its kid names"}
	errJWKSClosed  = errors.New("jwks: closed")
)

// jwksUnavailable is the answer to a token whose key could not be looked up
// because the key set could not be fetched: 503, so that the client retries,
// not 401, which would tell it its token is bad.
func jwksUnavailable(cause error) error {
	return domain.Unavailable("the identity provider's key set (TALLY_JWT_JWKS_URL)", cause)
}

// NewJWKS fetches the key set at opts.URL and keeps it fresh until Close.
// It fails when the URL is not an absolute http(s) URL, or when the set
// cannot be fetched or holds no usable key.
func NewJWKS(ctx context.Context, opts JWKSOptions) (*JWKS, error) {
	u, err := url.Parse(opts.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("jwks: %q is not an absolute http(s) URL", opts.URL)
	}
	k := &JWKS{
		url: opts.URL, client: opts.Client, log: opts.Logger, now: opts.Now,
		every: opts.RefreshInterval, minGap: opts.MinRefreshInterval, fetchTimeout: opts.FetchTimeout,
	}
	if k.client == nil {
		k.client = &http.Client{CheckRedirect: noDowngrade}
	}
	if k.log == nil {
		k.log = slog.Default()
	}
	if k.now == nil {
		k.now = time.Now
	}
	if k.every <= 0 {
		k.every = DefaultJWKSRefresh
	}
	if k.minGap <= 0 {
		k.minGap = DefaultJWKSMinRefresh
	}
	if k.fetchTimeout <= 0 {
		k.fetchTimeout = DefaultJWKSFetch
	}
	k.ctx, k.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if err := k.refresh(ctx); err != nil {
		k.Close()
		return nil, err
	}
	k.wg.Add(1)
	go k.loop()
	return k, nil
}

// noDowngrade refuses a redirect from https to http: keys fetched in clear
// could be replaced on the way.
func noDowngrade(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("stopped after 5 redirects")
	}
	if req.URL.Scheme != "https" && via[0].URL.Scheme == "https" {
		return fmt.Errorf("refused redirect from https to %s", req.URL.Scheme)
	}
	return nil
}

// Close stops the periodic refresh and waits for a fetch in flight.
func (k *JWKS) Close() {
	k.mu.Lock()
	k.closed = true
	k.mu.Unlock()
	k.cancel()
	k.wg.Wait()
}

func (k *JWKS) loop() {
	defer k.wg.Done()
	t := time.NewTicker(k.every)
	defer t.Stop()
	for {
		select {
		case <-k.ctx.Done():
			return
		case <-t.C:
			_ = k.refresh(k.ctx) // logged by fetch; the old keys stay
		}
	}
}

// refresh fetches the set now, or waits for the fetch in flight, and
// returns how it ended. The periodic loop and NewJWKS call it; tests call it
// as the loop would.
func (k *JWKS) refresh(ctx context.Context) error {
	k.mu.Lock()
	c := k.inflight
	if c == nil {
		c = k.startLocked()
	}
	k.mu.Unlock()
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startLocked starts a fetch; k.mu is held. The fetch runs under the JWKS's
// own context, not a request's, so that a client going away does not cancel
// the fetch other requests wait for.
func (k *JWKS) startLocked() *fetchCall {
	c := &fetchCall{done: make(chan struct{})}
	if k.closed {
		c.err = errJWKSClosed
		close(c.done)
		return c
	}
	k.inflight = c
	k.lastTry = k.now()
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		ctx, cancel := context.WithTimeout(k.ctx, k.fetchTimeout)
		err := k.fetch(ctx)
		cancel()
		if err != nil && k.set.Load() != nil { // at start, NewJWKS returns it
			k.log.Error("cannot refresh the identity provider's key set (TALLY_JWT_JWKS_URL); the keys fetched before stay in use",
				"component", "jwks", "url", k.url, "err", err)
		}
		k.mu.Lock()
		k.inflight, k.lastErr = nil, err
		k.mu.Unlock()
		c.err = err
		close(c.done)
	}()
	return c
}

// known reports whether kid is in the set, without fetching.
func (k *JWKS) known(kid string) bool {
	_, ok := k.set.Load().keys[kid]
	return ok
}

// key returns the key kid names. A kid the set lacks makes it fetch the set
// again, unless it did less than MinRefreshInterval ago: then the answer is
// errUnknownKey if that fetch succeeded, and 503 if it failed (the kid may be
// a new key that could not be fetched).
func (k *JWKS) key(ctx context.Context, kid string) (*signingKey, error) {
	if sk := k.set.Load().keys[kid]; sk != nil {
		return sk, nil
	}
	k.mu.Lock()
	c := k.inflight
	if c == nil {
		if k.now().Sub(k.lastTry) < k.minGap {
			err := k.lastErr
			k.mu.Unlock()
			if err != nil {
				return nil, jwksUnavailable(err)
			}
			return nil, errUnknownKey
		}
		c = k.startLocked()
	}
	k.mu.Unlock()
	select {
	case <-c.done:
	case <-ctx.Done():
		return nil, jwksUnavailable(ctx.Err())
	}
	if c.err != nil {
		return nil, jwksUnavailable(c.err)
	}
	if sk := k.set.Load().keys[kid]; sk != nil {
		return sk, nil
	}
	return nil, errUnknownKey
}

// fetch gets the document and, when it differs from the last one, installs
// the keys it holds. Only one fetch runs at a time (startLocked).
func (k *JWKS) fetch(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %s", k.url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return fmt.Errorf("GET %s: read body: %w", k.url, err)
	}
	if len(body) > maxJWKSBytes {
		return fmt.Errorf("GET %s: the key set is over %d bytes", k.url, maxJWKSBytes)
	}
	sum := sha256.Sum256(body)
	old := k.set.Load()
	if old != nil && sum == k.lastSum {
		return nil // unchanged: keep the same keys, and their cached tokens
	}
	set, ignored, err := parseKeySet(body, old)
	for _, msg := range ignored {
		k.log.Warn("identity provider key ignored", "component", "jwks", "url", k.url, "reason", msg)
	}
	if err != nil {
		return fmt.Errorf("GET %s: %w", k.url, err)
	}
	k.set.Store(set)
	k.lastSum = sum
	if old != nil {
		for kid, sk := range old.keys {
			if set.keys[kid] != sk {
				sk.revoked.Store(true)
			}
		}
	}
	kids := make([]string, 0, len(set.keys))
	for kid := range set.keys {
		kids = append(kids, kid)
	}
	sort.Strings(kids)
	k.log.Info("identity provider key set loaded", "component", "jwks", "url", k.url, "kids", kids)
	return nil
}

// parseKeySet builds the set of usable keys from a JWK Set document. Keys
// Tally cannot use are left out, each with a reason in ignored; a document
// that is not a JWK Set, or leaves no usable key, is an error (and the keys
// in use stay). A key equal to one of old's, same kid, algorithm and public
// key, is carried over as the same *signingKey, so that its cached tokens
// stay cached.
func parseKeySet(body []byte, old *keySet) (_ *keySet, ignored []string, _ error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, nil, fmt.Errorf("not a JWK Set: %w", err)
	}
	if doc.Keys == nil {
		return nil, nil, errors.New(`not a JWK Set: no "keys" array`)
	}
	set := &keySet{keys: make(map[string]*signingKey, len(doc.Keys))}
	dup := map[string]bool{}
	for i, raw := range doc.Keys {
		sk, why := usableKey(raw)
		if sk == nil {
			ignored = append(ignored, fmt.Sprintf("key %d: %s", i, why))
			continue
		}
		if _, seen := set.keys[sk.kid]; seen || dup[sk.kid] {
			// Two keys for one kid: which one a token means is
			// ambiguous, so neither is used.
			dup[sk.kid] = true
			delete(set.keys, sk.kid)
			ignored = append(ignored, fmt.Sprintf("kid %q: more than one key has it; none of them is used", sk.kid))
			continue
		}
		if o := old.get(sk.kid); o != nil && o.alg == sk.alg && samePublicKey(o.pub, sk.pub) {
			sk = o
		}
		set.keys[sk.kid] = sk
	}
	if len(set.keys) == 0 {
		return nil, ignored, errors.New("the key set holds no usable signing key (RS256 with RSA ≥ 2048 bits, ES256 with P-256, EdDSA with Ed25519, each with a kid)")
	}
	return set, ignored, nil
}

func (s *keySet) get(kid string) *signingKey {
	if s == nil {
		return nil
	}
	return s.keys[kid]
}

func samePublicKey(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// usableKey turns one JWK into a signing key and the one algorithm it
// verifies, or says why it cannot be used. The algorithm comes from the key,
// never from a token: the JWK's alg when it has one, else the only
// algorithm accepted here for its type (RSA → RS256, EC P-256 → ES256,
// Ed25519 → EdDSA). Keys of other types and algorithms, encryption keys,
// and keys without a kid are not used.
func usableKey(raw json.RawMessage) (*signingKey, string) {
	var m jwkset.JWKMarshal
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, "not a JWK: " + err.Error()
	}
	switch {
	case m.KID == "":
		return nil, "no kid (tokens choose their key by kid)"
	case m.USE != "" && m.USE != jwkset.UseSig:
		return nil, fmt.Sprintf("kid %q: use is %q, not sig", m.KID, m.USE)
	case len(m.KEYOPS) > 0 && !slices.Contains(m.KEYOPS, jwkset.KeyOpsVerify):
		return nil, fmt.Sprintf("kid %q: key_ops lacks verify", m.KID)
	}
	// Private: false keeps only the public half, should a provider
	// publish more than it should.
	jwk, err := jwkset.NewJWKFromMarshal(m, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
	if err != nil {
		return nil, fmt.Sprintf("kid %q: %v", m.KID, err)
	}
	alg := string(m.ALG)
	want := ""
	switch pub := jwk.Key().(type) {
	case *rsa.PublicKey:
		if bits := pub.N.BitLen(); bits < minRSABits {
			return nil, fmt.Sprintf("kid %q: RSA key of %d bits; at least %d are required", m.KID, bits, minRSABits)
		}
		want = jwt.SigningMethodRS256.Alg()
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() {
			return nil, fmt.Sprintf("kid %q: EC curve %s; only P-256 (ES256) is accepted", m.KID, pub.Curve.Params().Name)
		}
		want = jwt.SigningMethodES256.Alg()
	case ed25519.PublicKey:
		want = jwt.SigningMethodEdDSA.Alg()
	default:
		return nil, fmt.Sprintf("kid %q: key type %s is not used to verify user tokens", m.KID, m.KTY)
	}
	if alg != "" && alg != want {
		return nil, fmt.Sprintf("kid %q: alg %s; a %s key is accepted for %s only", m.KID, alg, m.KTY, want)
	}
	return &signingKey{kid: m.KID, alg: want, pub: jwk.Key()}, ""
}
