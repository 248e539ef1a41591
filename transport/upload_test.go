package transport_test

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/transport"
)

func TestVerifyUploadURL(t *testing.T) {
	e := newEnv(t)
	r := e.do("POST", "/api/v1/sessions/s-7/upload-url", e.token("u1"), `{"filename":"a b%2F.wav","file_size_mb":60}`)
	var out struct {
		UploadURL string `json:"upload_url"`
	}
	if r.Status != 200 || !r.Decode(t, &out) {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	u := out.UploadURL
	now := e.clock.Now()
	g, err := transport.VerifyUploadURL(transport.UploadKey(secret), u, now)
	if err != nil || g.Filename != "a b%2F.wav" || g.SessionID != "s-7" || g.SizeMB != 60 {
		t.Fatalf("%+v %v", g, err)
	}
	if _, err := transport.VerifyUploadURL(transport.UploadKey(secret), u, now.Add(15*time.Minute-time.Second)); err != nil {
		t.Errorf("just before expiry: %v", err)
	}
	if _, err := transport.VerifyUploadURL(transport.UploadKey(secret), u, now.Add(15*time.Minute)); !errors.Is(err, transport.ErrUploadURLExpired) {
		t.Errorf("at expiry: %v", err)
	}

	parsed, _ := url.Parse(u)
	q := parsed.Query()
	withQuery := func(k, v string) string {
		q2 := url.Values{}
		for kk, vv := range q {
			q2[kk] = append([]string(nil), vv...)
		}
		q2.Set(k, v)
		p := *parsed
		p.RawQuery = q2.Encode()
		return p.String()
	}
	sig := q.Get("sig")
	flipped := string(sig[0]^1) + sig[1:]
	for name, tampered := range map[string]string{
		"bigger size":     withQuery("size_mb", "600"),
		"later expiry":    withQuery("expires", "99999999999"),
		"other signature": withQuery("sig", flipped),
		"short signature": withQuery("sig", sig[:10]),
		"not hex":         withQuery("sig", "zz"+sig[2:]),
		"extra param":     withQuery("x", "1"),
		"other session":   strings.Replace(u, "/s-7/", "/s-8/", 1),
		"other filename":  strings.Replace(u, "/a%20b%252F.wav", "/b.wav", 1),
		"no signature":    strings.Split(u, "&sig=")[0],
		"two signatures":  u + "&sig=" + sig,
		"garbage":         "::not a url",
	} {
		if _, err := transport.VerifyUploadURL(transport.UploadKey(secret), tampered, now); !errors.Is(err, transport.ErrUploadURLInvalid) {
			t.Errorf("%s (%s): %v", name, tampered, err)
		}
	}
	if _, err := transport.VerifyUploadURL([]byte("another secret"), u, now); !errors.Is(err, transport.ErrUploadURLInvalid) {
		t.Errorf("another secret: %v", err)
	}
	// A user token signed with the same secret is no upload signature.
	if _, err := transport.VerifyUploadURL(transport.UploadKey(secret), "https://x/s-7/a.wav?expires=1&size_mb=1&sig="+strings.Repeat("0", 64), now); err == nil {
		t.Error("forged signature accepted")
	}
}

// With an upload secret of its own, upload URLs verify with that secret
// only: neither the JWT secret nor the key derived from it passes, so the
// service that checks uploads holds nothing that could mint a user token.
func TestUploadSecretIsItsOwnKey(t *testing.T) {
	uploadSecret := []byte("upload-secret-0123456789abcdef0123456789")
	e := newEnv(t, func(o *transport.Options) { o.UploadSecret = uploadSecret })
	r := e.do("POST", "/api/v1/sessions/s-7/upload-url", e.token("u1"), `{"filename":"a.wav","file_size_mb":10}`)
	var out struct {
		UploadURL string `json:"upload_url"`
	}
	if r.Status != 200 || !r.Decode(t, &out) {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	now := e.clock.Now()
	if _, err := transport.VerifyUploadURL(uploadSecret, out.UploadURL, now); err != nil {
		t.Fatalf("with the upload secret: %v", err)
	}
	for name, key := range map[string][]byte{"the JWT secret": secret, "the key derived from it": transport.UploadKey(secret)} {
		if _, err := transport.VerifyUploadURL(key, out.UploadURL, now); !errors.Is(err, transport.ErrUploadURLInvalid) {
			t.Errorf("%s verified an upload URL signed with the upload secret: %v", name, err)
		}
	}
}
