package transport

import (
	"encoding/json"
	"net/http"
	"reflect"
	"testing"

	"github.com/tally-dev/tally/domain"
)

// fuzzDecode is the property every body type must have: decoding never
// panics; a rejection is a 4xx; a body that decodes re-encodes to JSON that
// decodes to the same value; and validating it never panics and rejects
// only with a 4xx.
func fuzzDecode[T any](t *testing.T, data []byte, validate func(T) error) {
	var v T
	if err := decodeJSON(data, &v); err != nil {
		wantClientError(t, err)
		return
	}
	enc, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("re-encoding %#v: %v", v, err)
	}
	var again T
	if err := decodeJSON(enc, &again); err != nil {
		t.Fatalf("decoded %q to %#v, whose encoding %s is rejected: %v", data, v, enc, err)
	}
	if !reflect.DeepEqual(v, again) {
		t.Fatalf("round trip changed %#v into %#v", v, again)
	}
	if err := validate(v); err != nil {
		wantClientError(t, err)
	}
}

func wantClientError(t *testing.T, err error) {
	t.Helper()
	status, body := classify(err)
	if status < 400 || status > 499 {
		t.Fatalf("rejected with %d %+v (%v); want a 4xx", status, body, err)
	}
	if status == http.StatusUnprocessableEntity && len(body.Detail.Fields) == 0 {
		t.Fatalf("422 without fields: %v", err)
	}
}

var providers = []string{"google", "assemblyai"}

func seed(f *testing.F, seeds ...string) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
}

var commonSeeds = []string{
	``, `{}`, `[]`, `null`, `"x"`, `{`, `{}{}`, `{} `, `{}x`, `{"a":1}`, "\xef\xbb\xbf{}",
	`{"title":"\ud800"}`, `{"title":"\u0000"}`, `{"TITLE":"x"}`,
}

func FuzzDecodeCreateSession(f *testing.F) {
	seed(f, commonSeeds...)
	seed(f, `{"title":"Weekly sync","language":"en-US","stt_provider":"google"}`,
		`{"title":5,"language":"en-US","stt_provider":"google"}`,
		`{"title":"t","language":"zh-Hans-CN","stt_provider":"assemblyai","x":null}`,
		`{"title":"t","title":"u","language":"auto","stt_provider":"google"}`)
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzDecode(t, data, func(v domain.NewSession) error { return v.Validate(providers) })
	})
}

func FuzzDecodeUpload(f *testing.F) {
	seed(f, commonSeeds...)
	seed(f, `{"filename":"a.mp3","file_size_mb":12.5}`, `{"filename":"..","file_size_mb":1e308}`,
		`{"filename":"a","file_size_mb":-0}`, `{"filename":"a\\b","file_size_mb":"1"}`)
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzDecode(t, data, func(v uploadRequest) error {
			var fe fieldErrors
			v.validate(&fe)
			return fe.err()
		})
	})
}

func FuzzDecodeComplete(f *testing.F) {
	seed(f, commonSeeds...)
	seed(f, `{"duration_seconds":600}`, `{"duration_seconds":-1}`, `{"duration_seconds":1.5}`,
		`{"duration_seconds":99999999999999999999}`, `{"duration_seconds":null}`)
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzDecode(t, data, func(v completeRequest) error {
			var fe fieldErrors
			v.validate(&fe)
			return fe.err()
		})
	})
}

func FuzzDecodePutUser(f *testing.F) {
	seed(f, commonSeeds...)
	seed(f, `{"plan":"pro"}`, `{"plan":"pro","billing_anchor":"2026-01-31T00:00:00Z"}`,
		`{"plan":"gold","billing_anchor":"2026-13-01T00:00:00Z"}`, `{"plan":null,"billing_anchor":null}`)
	catalog := domain.DefaultCatalog()
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzDecode(t, data, func(v putUserRequest) error {
			var fe fieldErrors
			v.validate(catalog, &fe)
			return fe.err()
		})
	})
}

func FuzzDecodeCursor(f *testing.F) {
	f.Add("")
	f.Add(encodeCursor(domain.Session{ID: "s-1"}))
	f.Add("MjAyNi0xMS0xNFQwOTozMDowMFp8cy0x")
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := decodeCursor(raw)
		if err != nil {
			return
		}
		// A cursor that decodes names a position that encodes back to a
		// cursor naming the same position.
		again, err := decodeCursor(encodeCursor(domain.Session{ID: c.ID, CreatedAt: c.CreatedAt}))
		if err != nil || !again.CreatedAt.Equal(c.CreatedAt) || again.ID != c.ID {
			t.Fatalf("cursor %q → %+v → %+v, %v", raw, c, again, err)
		}
	})
}
