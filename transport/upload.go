package transport

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// UploadURLTTL is how long a signed upload URL stays valid.
const UploadURLTTL = 15 * time.Minute

// UploadKey is the upload-URL key derived from the JWT secret, used when
// no upload secret of its own is configured (TALLY_UPLOAD_SECRET): a
// signature made for one purpose can never pass as the other, and HMAC is
// one-way, so holding this key does not give the JWT secret. A service
// that checks uploads is best given TALLY_UPLOAD_SECRET, which shares
// nothing with the token key at all.
func UploadKey(jwtSecret []byte) []byte {
	return uploadKey(jwtSecret)
}

func uploadKey(secret []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("tally-upload-url-v1"))
	return m.Sum(nil)
}

// uploadSignature signs every part of the grant. Newlines separate the
// parts unambiguously: neither ids nor filenames may contain control
// characters.
func uploadSignature(key []byte, sessionID, filename, expires, sizeMB string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("v1\n" + sessionID + "\n" + filename + "\n" + expires + "\n" + sizeMB))
	return m.Sum(nil)
}

// signUploadURL builds <base>/<session id>/<filename>?expires=&size_mb=&sig=.
func signUploadURL(key []byte, base, sessionID, filename string, sizeMB float64, expires time.Time) string {
	exp := strconv.FormatInt(expires.Unix(), 10)
	size := strconv.FormatFloat(sizeMB, 'f', -1, 64)
	sig := hex.EncodeToString(uploadSignature(key, sessionID, filename, exp, size))
	return base + "/" + url.PathEscape(sessionID) + "/" + url.PathEscape(filename) +
		"?expires=" + exp + "&size_mb=" + size + "&sig=" + sig
}

// UploadGrant is what a verified upload URL allows: one file of at most
// SizeMB for one session, until ExpiresAt.
type UploadGrant struct {
	SessionID string
	Filename  string
	SizeMB    float64
	ExpiresAt time.Time
}

// Errors of VerifyUploadURL.
var (
	ErrUploadURLInvalid = errors.New("upload URL is not validly signed")
	ErrUploadURLExpired = errors.New("upload URL has expired")
)

// VerifyUploadURL checks a URL issued by POST /api/v1/sessions/{id}/upload-url
// with the upload key, for whatever receives the uploads: the value of
// TALLY_UPLOAD_SECRET, or UploadKey(JWT secret) when that is unset — never
// the JWT secret itself, which would let the receiver mint user tokens. It
// returns ErrUploadURLInvalid for a URL that was not signed with this key
// or was altered, and ErrUploadURLExpired once it is past its expiry at
// now. The base of the URL is not signed: the receiver is the base.
func VerifyUploadURL(key []byte, rawURL string, now time.Time) (UploadGrant, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return UploadGrant{}, fmt.Errorf("%w: %v", ErrUploadURLInvalid, err)
	}
	segs := strings.Split(u.EscapedPath(), "/")
	if len(segs) < 2 {
		return UploadGrant{}, ErrUploadURLInvalid
	}
	sessionID, err1 := url.PathUnescape(segs[len(segs)-2])
	filename, err2 := url.PathUnescape(segs[len(segs)-1])
	q, err3 := url.ParseQuery(u.RawQuery)
	if err1 != nil || err2 != nil || err3 != nil {
		return UploadGrant{}, ErrUploadURLInvalid
	}
	one := func(name string) (string, bool) {
		v := q[name]
		return strings.Join(v, ""), len(v) == 1
	}
	exp, ok1 := one("expires")
	size, ok2 := one("size_mb")
	sigHex, ok3 := one("sig")
	sig, err := hex.DecodeString(sigHex)
	if !ok1 || !ok2 || !ok3 || err != nil || len(q) != 3 {
		return UploadGrant{}, ErrUploadURLInvalid
	}
	want := uploadSignature(key, sessionID, filename, exp, size)
	if !hmac.Equal(sig, want) {
		return UploadGrant{}, ErrUploadURLInvalid
	}
	// The values are signed, so they are the ones signUploadURL wrote;
	// parsing is checked all the same rather than trusted.
	unix, err1 := strconv.ParseInt(exp, 10, 64)
	sizeMB, err2 := strconv.ParseFloat(size, 64)
	if err1 != nil || err2 != nil {
		return UploadGrant{}, ErrUploadURLInvalid
	}
	g := UploadGrant{SessionID: sessionID, Filename: filename, SizeMB: sizeMB, ExpiresAt: time.Unix(unix, 0).UTC()}
	if !now.Before(g.ExpiresAt) {
		return g, ErrUploadURLExpired
	}
	return g, nil
}
