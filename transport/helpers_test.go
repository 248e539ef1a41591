package transport_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"testing"
)

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// signRaw builds a JWT from literal JSON, signed HMAC-SHA256 with key, so
// that tests can make tokens the library would refuse to issue.
func signRaw(t *testing.T, header, payload string, key []byte) string {
	t.Helper()
	in := b64(header) + "." + b64(payload)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(in))
	return in + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}
