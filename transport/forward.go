package transport

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"hash"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/tally-dev/tally/domain"
)

// Forwarding a request to its partition's owner
//
// The forwarding node sends the client's request (method, path, query,
// Authorization, Content-Type, Idempotency-Key, body) to the owner on a
// kept connection (nodeconn.go), with headers that authenticate it as a
// node's (nodeAuth) and carry what is left of the request's deadline, and
// relays the owner's answer as it is — X-Tally-Node included. The owner
// checks the user token again (its own cache) and serves the request as if
// the client had sent it there, under the forwarder's deadline.
//
// A request reaches the owner at most once: it is written again only when
// writing it failed, which means the owner never had it whole. When a
// create was written and its answer is lost (the owner died, the
// connection broke), its outcome is looked up in the shared store instead,
// as a lost COMMIT reply is (actors/admit.go, resolveUnknown): by
// Idempotency-Key, or by the session id the forwarding node chose and sent
// along. An owner that refuses a request as not its own any more (it did
// nothing with it: hdrNotOwner) is the one case where the forwarding node
// routes it again, once (forward).

// The forwarding headers. They are honoured only with a valid signature;
// any of them on a request without one is a 401.
const (
	hdrForwardedBy = "X-Tally-Forwarded-By"      // the forwarding node's id
	hdrForwardTime = "X-Tally-Forward-Time"      // when it was sent, Unix milliseconds
	hdrForwardLeft = "X-Tally-Forward-Budget"    // milliseconds left of the request's deadline
	hdrForwardSID  = "X-Tally-Forward-Session"   // a create's session id, chosen by the forwarder
	hdrForwardSig  = "X-Tally-Forward-Signature" // base64url HMAC-SHA256 over all of the above, method and URI
)

// hdrNotOwner marks an owner's 503 to a forwarded request that it refused
// because it does not own the user's partition now, having done nothing
// with it (routeTo's errNotOwner, or the core's domain.ErrNotOwner, which
// writes nothing). Only the forwarding node reads it; it is never relayed.
const hdrNotOwner = "X-Tally-Not-Owner"

// forwardValidity is how far a forwarded request's time may be from the
// receiving node's clock: enough for clocks kept by NTP and a request in
// transit, short enough that a captured request is soon worthless.
const forwardValidity = 5 * time.Second

// maxForwardAnswer bounds an owner's answer a node relays (a page of 100
// sessions is ~50 KiB).
const maxForwardAnswer = 1 << 20

var (
	errForwardAuth    = &domain.Error{Code: domain.CodeUnauthorized, Message: "invalid node authentication on a forwarded request"}
	errForwardExpired = &domain.Error{Code: domain.CodeUnauthorized, Message: "the forwarded request's node authentication has expired"}
)

// nodeAuth signs and checks forwarded requests with a key derived from
// the cluster secret, so that no client can pose as a node.
type nodeAuth struct {
	macs sync.Pool // *signer
}

// signer is an HMAC with the key and a buffer to assemble what it signs.
type signer struct {
	mac hash.Hash
	msg []byte
}

func newNodeAuth(secret []byte) *nodeAuth {
	// A key of its own, so that the secret could sign something else one
	// day without a signature of one kind passing for the other.
	d := hmac.New(sha256.New, secret)
	d.Write([]byte("tally node forwarding v1"))
	key := d.Sum(nil)
	return &nodeAuth{macs: sync.Pool{New: func() any { return &signer{mac: hmac.New(sha256.New, key)} }}}
}

// forwarded is what an authenticated forwarded request carries.
type forwarded struct {
	node    string
	session string // the session id of a create; "" otherwise
}

type ctxForwardKey struct{}

// forwardedCtx is a forwarded request's context: the forwarding node's
// deadline (the embedded context) and what the request carries, in one
// value.
type forwardedCtx struct {
	context.Context
	f forwarded
}

func (c *forwardedCtx) Value(key any) any {
	if key == (ctxForwardKey{}) {
		return &c.f
	}
	return c.Context.Value(key)
}

// forwardOf returns the request's verified forwarding, or nil.
func forwardOf(c *gin.Context) *forwarded {
	f, _ := c.Request.Context().Value(ctxForwardKey{}).(*forwarded)
	return f
}

// sign returns the signature of a forwarded request's fields.
func (a *nodeAuth) sign(node, at, left, sid, method, uri string) string {
	sig := a.signature(node, at, left, sid, method, uri)
	return string(sig[:])
}

// signatureLen is the length of a signature: base64 of 32 bytes, unpadded.
const signatureLen = 43

// signature is sign's value, without allocating it.
func (a *nodeAuth) signature(node, at, left, sid, method, uri string) [signatureLen]byte {
	s := a.macs.Get().(*signer)
	s.msg = s.msg[:0]
	for _, f := range [...]string{node, at, left, sid, method, uri} {
		// Header values and a request URI hold no newline: the fields
		// cannot run into each other.
		s.msg = append(append(s.msg, f...), '\n')
	}
	s.mac.Reset()
	s.mac.Write(s.msg)
	var sum [sha256.Size]byte
	var out [signatureLen]byte
	base64.RawURLEncoding.Encode(out[:], s.mac.Sum(sum[:0]))
	if cap(s.msg) <= 4<<10 {
		a.macs.Put(s)
	}
	return out
}

// forwardHeaders reports whether the request claims to be forwarded.
func forwardHeaders(h http.Header) bool {
	return h[hdrForwardSig] != nil || h[hdrForwardedBy] != nil || h[hdrForwardTime] != nil ||
		h[hdrForwardLeft] != nil || h[hdrForwardSID] != nil
}

// verify checks a forwarded request's signature and freshness and returns
// what it carries and the deadline it was sent with.
func (a *nodeAuth) verify(r *http.Request, now time.Time) (forwarded, time.Time, error) {
	h := r.Header
	node, at, left, sid, sig := h.Get(hdrForwardedBy), h.Get(hdrForwardTime), h.Get(hdrForwardLeft), h.Get(hdrForwardSID), h.Get(hdrForwardSig)
	if node == "" || at == "" || left == "" || sig == "" {
		return forwarded{}, time.Time{}, errForwardAuth
	}
	want := a.signature(node, at, left, sid, r.Method, r.RequestURI)
	if !sameSignature(want, sig) {
		return forwarded{}, time.Time{}, errForwardAuth
	}
	// Only what a node signed is parsed: a malformed field is a bug there.
	ms, err1 := strconv.ParseInt(at, 10, 64)
	budget, err2 := strconv.ParseInt(left, 10, 64)
	if err1 != nil || err2 != nil || budget <= 0 || (sid != "" && uuid.Validate(sid) != nil) {
		return forwarded{}, time.Time{}, errForwardAuth
	}
	if d := now.Sub(time.UnixMilli(ms)); d > forwardValidity || d < -forwardValidity {
		return forwarded{}, time.Time{}, errForwardExpired
	}
	return forwarded{node: node, session: sid}, time.Now().Add(time.Duration(budget) * time.Millisecond), nil
}

// sameSignature compares in time that depends on the length only (as
// crypto/subtle does), without copying the presented one.
func sameSignature(want [signatureLen]byte, got string) bool {
	if len(got) != signatureLen {
		return false
	}
	var diff byte
	for i := range want {
		diff |= want[i] ^ got[i]
	}
	return subtle.ConstantTimeByteEq(diff, 0) == 1
}

// acceptForward runs first on API and admin routes in cluster mode. A
// request with forwarding headers must be signed by a node (else 401 and
// nothing is done); a signed one is served under the forwarder's
// deadline, and routeTo will not forward it again.
func (s *server) acceptForward(c *gin.Context) {
	if !forwardHeaders(c.Request.Header) {
		c.Next()
		return
	}
	f, deadline, err := s.cluster.auth.verify(c.Request, s.now())
	if err != nil {
		s.fail(c, err)
		return
	}
	// The core takes the sooner of this and its own request timeout
	// (actors/budget.go): one deadline across both nodes.
	ctx, cancel := context.WithDeadline(c.Request.Context(), deadline)
	defer cancel()
	c.Request = c.Request.WithContext(&forwardedCtx{Context: ctx, f: f})
	c.Next()
}

// forwardSession is the session id a forwarded create asks for, if any.
func (s *server) forwardSession(c *gin.Context) string {
	if f := forwardOf(c); f != nil {
		return f.session
	}
	return ""
}

// forwardBudget is how much of the time left the owner gets: the rest,
// a tenth and at most 50 ms, is for the answer's way back.
func forwardBudget(left time.Duration) time.Duration {
	return left - min(left/10, 50*time.Millisecond)
}

// isCreate reports whether the request is POST /api/v1/sessions.
func isCreate(c *gin.Context) bool {
	return c.Request.Method == http.MethodPost && c.FullPath() == "/api/v1/sessions"
}

// forward sends the request to the owner r and answers with the owner's
// answer; see the comment at the top of this file.
//
// An owner that answers that it does not own the partition (any more) —
// hdrNotOwner: it did nothing with the request — has refused it as final;
// the partition is moving and this node has not seen it yet. This node,
// which the client is waiting on, routes the request once more (waiting
// for its own route to leave the refusing node, within the deadline) and
// serves it or forwards it to the new owner, whose answer is relayed
// whatever it is. So a hand-off that the forwarding node learns of a
// moment after the old owner answers no request with a 503, and every
// request still reaches at most two owners, each once.
func (s *server) forward(c *gin.Context, r Route, user string, deadline time.Time) {
	e := s.cluster
	buf := bodyBuffers.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= 16<<10 {
			bodyBuffers.Put(buf)
		}
	}()
	if err := readBody(c, buf); err != nil {
		s.fail(c, err) // 413, 408 or 400: nothing to forward
		return
	}
	create := isCreate(c)
	var sid string
	if create {
		sid = newSessionID(time.Now())
	}
	if !s.forwardTo(c, r, user, deadline, buf.Bytes(), sid, true) {
		return
	}
	r, ok := e.reroute(c.Request.Context(), domain.PartitionOf(user), r.NodeID, deadline)
	switch {
	case !ok:
		e.stats.notOwner.Inc()
		s.fail(c, errNotOwner)
	case r.Self:
		// The handler reads the body the forward consumed.
		c.Request.Body = io.NopCloser(bytes.NewReader(buf.Bytes()))
		c.Next()
	default:
		s.forwardTo(c, r, user, deadline, buf.Bytes(), sid, false)
	}
}

// forwardTo sends the request to the owner r once and answers with its
// answer — unless mayRefuse and the owner refused it as not its own, which
// it reports (refused) without answering.
func (s *server) forwardTo(c *gin.Context, r Route, user string, deadline time.Time, body []byte, sid string, mayRefuse bool) (refused bool) {
	e := s.cluster
	base, err := e.ownerURL(r.URL)
	if err != nil {
		s.log.Error("cluster route with an unusable owner URL", "node", r.NodeID, "err", err)
		e.stats.unreachable.Inc()
		s.fail(c, errOwnerUnreachable)
		return false
	}
	left := time.Until(deadline)
	switch {
	case left <= 0:
		s.fail(c, errRouteDeadline)
		return false
	case left < serveReserve:
		s.fail(c, errNoTimeLeft) // not sent: nothing done
		return false
	}
	create := sid != ""

	uri := c.Request.URL.RequestURI() // as the owner's router will see it
	at := strconv.FormatInt(s.now().UnixMilli(), 10)
	budget := strconv.FormatInt(max(forwardBudget(left).Milliseconds(), 1), 10)
	out := outRequest{method: c.Request.Method, uri: uri, body: body}
	in := c.Request.Header
	for _, k := range [...]string{"Authorization", "Content-Type", "Idempotency-Key"} {
		if v := in[k]; len(v) > 0 {
			out.add(k, v[0])
		}
	}
	out.add(headerRequestID, c.Writer.Header().Get(headerRequestID)) // the id this node logs the request under
	out.add("User-Agent", "tally-node")
	out.add(hdrForwardedBy, e.self)
	out.add(hdrForwardTime, at)
	out.add(hdrForwardLeft, budget)
	out.add(hdrForwardSID, sid)
	out.add(hdrForwardSig, e.auth.sign(e.self, at, budget, sid, c.Request.Method, uri))

	var ans answer
	sent, err := e.client.exchange(c.Request.Context(), base, deadline, &out, &ans)
	if ans.body != nil {
		defer answerBuffers.Put(ans.body)
	}
	switch {
	case err == nil && mayRefuse && ans.status == http.StatusServiceUnavailable && ans.has(hdrNotOwner):
		e.stats.refused.Inc()
		return true
	case err == nil:
		e.stats.answered.Inc()
		relay(c, &ans)
		return false
	case c.Request.Context().Err() != nil:
		// The client went away: nobody is waiting for an answer.
		s.fail(c, c.Request.Context().Err())
		return false
	case !sent:
		e.stats.unreachable.Inc()
		s.log.Warn("cluster owner unreachable", "node", r.NodeID, "url", r.URL, "err", err)
		s.fail(c, errOwnerUnreachable)
		return false
	case !create:
		e.stats.lost.Inc()
		s.log.Warn("cluster owner's answer lost", "node", r.NodeID, "url", r.URL, "err", err)
		s.fail(c, errAnswerLost)
		return false
	}
	s.log.Warn("cluster owner's answer to a create lost; looking it up", "node", r.NodeID, "url", r.URL, "err", err)
	sess, err := s.resolveCreate(c, r.NodeID, user, body, sid, deadline)
	if err != nil {
		s.fail(c, err)
		return false
	}
	s.writeJSON(c, http.StatusOK, toSession(sess))
	c.Abort()
	return false
}

// answerBuffers hold owners' answers while they are relayed.
var answerBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// relay answers with the owner's answer: its status, headers (its
// X-Tally-Node and X-Request-Id among them) and body. The connection's own
// headers (Content-Length, Transfer-Encoding, Connection) were consumed by
// answer.read; Date is this node's to write.
func relay(c *gin.Context, a *answer) {
	h := c.Writer.Header()
	for i, kv := range a.header[:a.headers] {
		switch kv[0] {
		case "Date", "Keep-Alive", "Trailer", "Upgrade", "Proxy-Connection", "Te", hdrNotOwner:
			continue
		}
		switch cur := h[kv[0]]; {
		case a.named(kv[0], i):
			h[kv[0]] = append(cur, kv[1]) // a repeated header keeps every value
		case len(cur) == 1 && cur[0] == kv[1]:
			// This node has set the same already (X-Request-Id, which it
			// passed on, and the headers every answer carries).
		default:
			h[kv[0]] = []string{kv[1]} // the owner's, in place of this node's
		}
	}
	c.Status(a.status)
	_, _ = c.Writer.Write(a.body.Bytes())
	c.Abort()
}

// resolveCreate finds the outcome of a create sent to the owner whose
// answer was lost, in the shared store, until it is decided or the
// request's deadline. A body the owner must have refused is refused here
// the same way, without waiting for a decision that will not come.
func (s *server) resolveCreate(c *gin.Context, owner, user string, body []byte, sid string, deadline time.Time) (domain.Session, error) {
	e := s.cluster
	var in domain.NewSession
	if err := decodeJSON(body, &in); err != nil {
		return domain.Session{}, err
	}
	key := c.GetHeader("Idempotency-Key")
	var f fieldErrors
	if err := f.merge(in.Validate(s.providers)); err != nil {
		return domain.Session{}, err
	}
	validateIdempotencyKey(key, &f)
	if err := f.err(); err != nil {
		return domain.Session{}, err
	}
	in.ID = sid
	ctx, cancel := context.WithDeadline(c.Request.Context(), deadline)
	defer cancel()
	wait := 10 * time.Millisecond
	for {
		sess, err := e.lookups.CreateOutcome(ctx, user, in, key)
		var le *domain.LimitExceededError
		if err == nil || errors.As(err, &le) || domain.ErrorCode(err) == domain.CodeIdempotencyConflict {
			// The owner's decision, as a replay answers it: the owner
			// decided, and the answer says so.
			e.stats.resolved.Inc()
			c.Writer.Header()[HeaderNode] = []string{owner}
			return sess, err
		}
		// Not found (yet), or the store did not answer: look again.
		if time.Until(deadline) <= wait {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		if ctx.Err() != nil {
			break
		}
		wait = min(2*wait, 250*time.Millisecond)
	}
	e.stats.unresolved.Inc()
	return domain.Session{}, errOutcomeUnknown
}

// newSessionID is a UUIDv7 (RFC 9562) for a forwarded create: the time in
// milliseconds and 74 random bits, as the core's own ids (actors, with
// github.com/google/uuid), drawn from math/rand/v2's ChaCha8 source, which
// the runtime seeds from the system's entropy, rather than from
// crypto/rand: ids must be unique, not secret, and every create through a
// non-owner pays for one.
func newSessionID(now time.Time) string {
	var u uuid.UUID
	ms := uint64(now.UnixMilli())
	r1, r2 := rand.Uint64(), rand.Uint64()
	u[0], u[1], u[2], u[3], u[4], u[5] = byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms)
	u[6] = 0x70 | byte(r1>>8)&0x0f // version 7
	u[7] = byte(r1)
	u[8] = 0x80 | byte(r2>>56)&0x3f // variant 10
	for i := 9; i < 16; i++ {
		u[i] = byte(r2 >> (8 * (15 - i)))
	}
	return u.String()
}
