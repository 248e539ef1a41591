package transport

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/tally-dev/tally/domain"
)

// fuzzDecode is the property every body type must have: decoding never
// panics; a rejection is a 4xx; a body that decodes names each of T's
// fields at most once and exactly as T spells it, and decodes to what
// encoding/json makes of it (which matches names regardless of case, lets
// the last duplicate win and turns text that is not Unicode into U+FFFD:
// none of which an accepted body may leave room for); it re-encodes to JSON
// that decodes to the same value; and validating it never panics and
// rejects only with a 4xx.
func fuzzDecode[T any](t *testing.T, data []byte, validate func(T) error) {
	var v T
	if err := decodeJSON(data, &v); err != nil {
		wantClientError(t, err)
		return
	}
	names := jsonNames(reflect.TypeFor[T]())
	seen := map[string]bool{}
	for _, k := range topLevelKeys(t, data) {
		if !names[k] || seen[k] {
			t.Fatalf("accepted %q: key %q is not one of %v, or is given twice", data, k, names)
		}
		seen[k] = true
	}
	var v1 T
	if err := json.Unmarshal(data, &v1); err != nil || !reflect.DeepEqual(v, v1) {
		t.Fatalf("accepted %q as %#v; encoding/json makes it %#v (%v)", data, v, v1, err)
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

// jsonNames is the set of JSON names of struct type t's fields.
func jsonNames(t reflect.Type) map[string]bool {
	names := map[string]bool{}
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			names[name] = true
		}
	}
	return names
}

// topLevelKeys lists the member names of the object data holds, as sent:
// encoding/json's tokenizer keeps every member, duplicates included.
func topLevelKeys(t *testing.T, data []byte) []string {
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil {
		t.Fatalf("accepted %q, which encoding/json cannot read: %v", data, err)
	}
	var keys []string
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			t.Fatalf("accepted %q, which encoding/json cannot read: %v", data, err)
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatalf("accepted %q, which encoding/json cannot read: %v", data, err)
		}
		keys = append(keys, k.(string))
	}
	return keys
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
	`{"a":1,"a":2}`, `{"a":{"b":1,"b":2}}`, `{"\u0061":1,"a":2}`, "{\"a\xff\":1}",
}

func FuzzDecodeCreateSession(f *testing.F) {
	seed(f, commonSeeds...)
	seed(f, `{"title":"Weekly sync","language":"en-US","stt_provider":"google"}`,
		`{"title":5,"language":"en-US","stt_provider":"google"}`,
		`{"title":"t","language":"zh-Hans-CN","stt_provider":"assemblyai","x":null}`,
		`{"title":"t","title":"u","language":"auto","stt_provider":"google"}`,
		`{"TITLE":"upper","language":"en","stt_provider":"google","title":"x"}`,
		`{"t\u0069tle":"t","title":"u","language":"auto","stt_provider":"google"}`,
		`{"title":{"a":1,"a":2},"language":"en","stt_provider":"google"}`,
		`{"title":"\ud83c\udf89","language":"en","stt_provider":"google"}`,
		`{"title":"\udf89\ud83c","language":"en","stt_provider":"google"}`)
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
		`{"plan":"gold","billing_anchor":"2026-13-01T00:00:00Z"}`, `{"plan":null,"billing_anchor":null}`,
		`{"plan":"pro","billing_anchor":"9999-11-30T23:59:59.999999999Z"}`, `{"plan":"pro","billing_anchor":"0001-01-01T00:00:00Z"}`,
		`{"plan":"pro","billing_anchor":"0001-01-01T00:00:00+00:01"}`, `{"plan":"pro","billing_anchor":"2026-01-01T00:00:00+24:00"}`,
		`{"Plan":"pro","plan":"free"}`)
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
	// Offsets that put the instant in year 10000 and 0000.
	f.Add(base64.RawURLEncoding.EncodeToString([]byte("9999-12-31T23:59:59-01:00|s-1")))
	f.Add(base64.RawURLEncoding.EncodeToString([]byte("0001-01-01T00:00:00+01:00|s-1")))
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := decodeCursor(raw)
		if err != nil {
			return
		}
		// A cursor that decodes names a position whose time a next_cursor
		// can hold, and that encodes back to a cursor naming the same
		// position.
		if !domain.Writable(c.CreatedAt) {
			t.Fatalf("cursor %q names %s, outside years 0001 to 9999", raw, c.CreatedAt)
		}
		again, err := decodeCursor(encodeCursor(domain.Session{ID: c.ID, CreatedAt: c.CreatedAt}))
		if err != nil || !again.CreatedAt.Equal(c.CreatedAt) || again.ID != c.ID {
			t.Fatalf("cursor %q → %+v → %+v, %v", raw, c, again, err)
		}
	})
}
