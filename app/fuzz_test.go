package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tally-dev/tally/app"
	"github.com/tally-dev/tally/config"
	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/transport"
	"github.com/tally-dev/tally/transport/apitest"
)

// storeUnderFuzz is one whole Tally (app.New: actors, store, cache) whose
// handler the fuzz target calls in-process, so that header bytes a client
// library would refuse to send still reach it.
type storeUnderFuzz struct {
	name string
	h    http.Handler
}

func newStoreUnderFuzz(tb testing.TB, name string, env map[string]string) storeUnderFuzz {
	tb.Helper()
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		tb.Fatalf("%s: config: %v", name, err)
	}
	log := slog.New(slog.DiscardHandler)
	a, err := app.New(context.Background(), cfg, log)
	if err != nil {
		tb.Fatalf("%s: app.New: %v", name, err)
	}
	tb.Cleanup(a.Close)
	return storeUnderFuzz{name: name, h: a.Handler()}
}

// fuzzAnswer is what one store answered to a create and the read-back.
type fuzzAnswer struct {
	status int
	body   string
	title  string // of the created session, as created and as read back
	lang   string
	fields []domain.FieldError
}

// create sends one create (and, when admitted, the GET of the new session)
// through s and checks each answer against the OpenAPI document.
func (s storeUnderFuzz) create(t *testing.T, v *apitest.Validator, token, body, key string) fuzzAnswer {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/api/v1/sessions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header["Idempotency-Key"] = []string{key}
	}
	r := v.Serve(t, s.h, req)
	a := fuzzAnswer{status: r.Status, body: string(r.Body)}
	switch r.Status {
	case http.StatusOK:
		var created struct {
			ID       string `json:"id"`
			Title    string `json:"title"`
			Language string `json:"language"`
		}
		if err := json.Unmarshal(r.Body, &created); err != nil {
			t.Fatalf("%s: decode %s: %v", s.name, r.Body, err)
		}
		get := httptest.NewRequest(http.MethodGet, "/api/v1/sessions/"+created.ID, nil)
		get.Header.Set("Authorization", "Bearer "+token)
		g := v.Serve(t, s.h, get)
		var read struct {
			Title    string `json:"title"`
			Language string `json:"language"`
		}
		if g.Status != http.StatusOK || json.Unmarshal(g.Body, &read) != nil {
			t.Fatalf("%s: GET of the created session: %d %s", s.name, g.Status, g.Body)
		}
		if read.Title != created.Title || read.Language != created.Language {
			t.Fatalf("%s: stored %q/%q but read back %q/%q", s.name, created.Title, created.Language, read.Title, read.Language)
		}
		a.title, a.lang = read.Title, read.Language
	case http.StatusUnprocessableEntity:
		var e struct {
			Detail struct {
				Fields []domain.FieldError `json:"fields"`
			} `json:"detail"`
		}
		if err := json.Unmarshal(r.Body, &e); err != nil {
			t.Fatalf("%s: decode %s: %v", s.name, r.Body, err)
		}
		a.fields = e.Detail.Fields
	default:
		// A 400 cannot happen (the body is always well-formed JSON), a 409
		// neither (every iteration has its own user), and a 5xx means a
		// store refused what validation let through.
		t.Fatalf("%s: create answered %d %s; want 200 or 422", s.name, r.Status, r.Body)
	}
	return a
}

// escapeJSON writes s as a JSON string literal: control bytes escaped (the
// JSON grammar requires it), every other byte as it is, invalid UTF-8
// included, so that what reaches the service is exactly s.
func escapeJSON(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20:
			fmt.Fprintf(&b, `\u%04x`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// FuzzCreateStoresAgree feeds arbitrary titles, languages and
// Idempotency-Keys through a real create on the embedded store and on
// Postgres, and requires the two to agree: both admit, and both read the
// title back byte for byte as it was sent, or both refuse with the same
// 422. The bug it guards against: a title with a NUL was admitted by the
// embedded store and refused by Postgres (SQLSTATE 22021) — a 500 there,
// and a failed batch for the other users in the same group commit.
//
// Without a reachable Postgres the embedded half still runs (and still
// must never answer anything but 200 or 422); TALLY_TEST_REQUIRE_SERVICES=1
// makes the missing half a failure.
func FuzzCreateStoresAgree(f *testing.F) {
	for _, s := range []struct{ title, language, key string }{
		{"ok", "en-US", ""},
		{"x\x00", "en-US", ""},
		{"\u202e", "en-US", ""},
		{"\xff", "en-US", ""},
		{"ok", "en-US", "k\x00"},
		{"ok", "en\x00", "key-1"},
		{"Réunion 会议 🎉", "zh-Hans-CN", "6c1f0e4e-retry-safe"},
		{"a\tb", "auto", "k"},
		{"a\u0085b", "de-CH-1996", ""},
		{"a\u2066b\u2069", "en", ""},
		{"\x7f", "en", "\xff"},
		{strings.Repeat("é", 255), "en", strings.Repeat("k", 255)},
		{strings.Repeat("é", 256), "en", strings.Repeat("k", 256)},
	} {
		f.Add(s.title, s.language, s.key)
	}

	env := baseEnv()
	env["TALLY_DATA_DIR"] = f.TempDir()
	stores := []storeUnderFuzz{newStoreUnderFuzz(f, "embedded", env)}
	if url := testenv.OptionalPostgresURL(f, "the Postgres half of FuzzCreateStoresAgree"); url != "" {
		env := baseEnv()
		env["TALLY_DATABASE_URL"] = url // Redis stays in-process: the store is what is compared
		stores = append(stores, newStoreUnderFuzz(f, "postgres", env))
	}
	v := apitest.NewValidator(f)
	var users atomic.Int64

	f.Fuzz(func(t *testing.T, title, language, key string) {
		// A user per input: no earlier input's session count or key can
		// change this one's answer.
		user := fmt.Sprintf("fuzz-%d", users.Add(1))
		token, err := transport.IssueToken([]byte(testSecret), user, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		body := `{"title":` + escapeJSON(title) + `,"language":` + escapeJSON(language) + `,"stt_provider":"google"}`

		answers := make([]fuzzAnswer, len(stores))
		for i, s := range stores {
			answers[i] = s.create(t, v, token, body, key)
		}
		first := answers[0]
		// What every store must do, whichever it is: text no store can
		// keep is refused before any store sees it.
		if domain.CheckText(title) != nil || domain.CheckText(language) != nil {
			if first.status != http.StatusUnprocessableEntity {
				t.Fatalf("%s: title %q / language %q admitted: %s", stores[0].name, title, language, first.body)
			}
		}
		if first.status == http.StatusOK && (first.title != title || first.lang != language) {
			t.Fatalf("%s: sent %q/%q, stored %q/%q", stores[0].name, title, language, first.title, first.lang)
		}
		for i, a := range answers[1:] {
			other := stores[i+1].name
			if a.status != first.status || a.title != first.title || a.lang != first.lang || !reflect.DeepEqual(a.fields, first.fields) {
				t.Fatalf("the stores disagree on title %q, language %q, key %q:\n%s: %d %s\n%s: %d %s",
					title, language, key, stores[0].name, first.status, first.body, other, a.status, a.body)
			}
		}
	})
}
