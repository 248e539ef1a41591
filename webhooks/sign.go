package webhooks

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// SecretPrefix starts every signing secret in its text form.
const SecretPrefix = "whsec_"

// The bounds of a signing secret's length in bytes (after base64), as the
// Standard Webhooks specification gives them: fewer than 24 random bytes
// is too weak a key, and HMAC-SHA256 gains nothing from more than 64 (a
// longer key is hashed down to 32 bytes anyway).
const (
	MinSecretBytes = 24
	MaxSecretBytes = 64
)

// The headers of a Standard Webhooks request.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// userAgent names the sender to receivers and their logs.
const userAgent = "tally-webhooks"

// ParseSecret decodes a signing secret given as whsec_ followed by the
// standard base64 encoding of 24 to 64 random bytes, and returns the key.
// Its errors never quote the secret: they end up in logs.
func ParseSecret(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("webhook secret is empty: give whsec_ followed by the base64 of 24 to 64 random bytes")
	}
	b64, ok := strings.CutPrefix(s, SecretPrefix)
	if !ok {
		return nil, fmt.Errorf("webhook secret does not start with %q: give whsec_ followed by the base64 of 24 to 64 random bytes", SecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		// The decoder's error names the offending byte's offset only, not
		// the secret, so it may be wrapped.
		return nil, fmt.Errorf("webhook secret after whsec_ is not standard base64 (with padding): %w", err)
	}
	if err := checkKeyLength(len(key)); err != nil {
		return nil, err
	}
	return key, nil
}

func checkKeyLength(n int) error {
	if n < MinSecretBytes || n > MaxSecretBytes {
		return fmt.Errorf("webhook secret decodes to %d bytes: it must be %d to %d", n, MinSecretBytes, MaxSecretBytes)
	}
	return nil
}

// sign returns the webhook-signature value of one attempt:
// v1,base64(HMAC-SHA256(key, id.timestamp.body)). The timestamp is part of
// what is signed, so a captured request cannot be replayed later with a
// fresh timestamp.
func sign(key []byte, id string, ts int64, body []byte) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(id))
	h.Write([]byte{'.'})
	h.Write(strconv.AppendInt(nil, ts, 10))
	h.Write([]byte{'.'})
	h.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// setHeaders sets the headers of one attempt made at the time at.
func setHeaders(h http.Header, key []byte, id string, at time.Time, body []byte) {
	ts := at.Unix()
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", userAgent)
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
	h.Set(HeaderSignature, sign(key, id, ts, body))
}
