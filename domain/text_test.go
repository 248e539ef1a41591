package domain

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCheckText(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    string
		want string // "" accepted, else a substring of the message
	}{
		{"empty", "", ""},
		{"ascii", "Weekly sync", ""},
		{"tab", "a\tb", ""},
		{"unicode", "Réunion 会议 🎉", ""},
		{"replacement character", "a\uFFFDb", ""},
		{"LRM", "a\u200eb", ""},
		{"RLM", "שלום\u200f!", ""},
		{"ALM", "a\u061cb", ""},
		{"U+00A0, after the C1 range", "a\u00a0b", ""},
		{"U+2065, between the bidi ranges", "a\u2065b", ""},
		{"U+2029", "a\u2029b", ""},

		{"NUL", "x\x00", "U+0000, a control character (byte 1)"},
		{"U+0001", "\x01", "U+0001, a control character (byte 0)"},
		{"newline", "a\nb", "U+000A"},
		{"carriage return", "a\rb", "U+000D"},
		{"U+001F", "ab\x1f", "U+001F, a control character (byte 2)"},
		{"DEL", "\x7f", "U+007F, a control character"},
		{"U+0080", "\u0080", "U+0080, a control character"},
		{"U+0085", "a\u0085", "U+0085, a control character (byte 1)"},
		{"U+009F", "\u009f", "U+009F"},
		{"U+202A", "\u202a", "U+202A, a bidirectional formatting character"},
		{"U+202E", "abc\u202e", "U+202E, a bidirectional formatting character (byte 3)"},
		{"U+2066", "\u2066", "U+2066, a bidirectional formatting character"},
		{"U+2069", "\u2069", "U+2069"},
		{"invalid byte", "a\xffb", "valid UTF-8 (invalid byte at 1)"},
		{"truncated sequence", "会\xe4\xbc", "valid UTF-8 (invalid byte at 3)"},
		{"encoded surrogate", "\xed\xa0\x80", "valid UTF-8"},
		{"overlong NUL", "\xc0\x80", "valid UTF-8"},
		{"first problem is reported", "\u202e\x00", "U+202E"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckText(tc.s)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("CheckText(%q) = %v, want nil", tc.s, err)
			case tc.want != "" && err == nil:
				t.Fatalf("CheckText(%q) = nil, want %q", tc.s, tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("CheckText(%q) = %q, want it to contain %q", tc.s, err, tc.want)
			}
		})
	}
}

// Every rune is checked the same way whether it stands alone or follows
// other text: the ASCII fast path and the decoding path agree.
func TestCheckTextEveryRune(t *testing.T) {
	for r := rune(0); r <= 0x2100; r++ {
		bad := (r < 0x20 && r != '\t') || (r >= 0x7f && r <= 0x9f) ||
			(r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069)
		if !utf8.ValidRune(r) {
			continue
		}
		for _, s := range []string{string(r), "ok " + string(r), string(r) + "é"} {
			if got := CheckText(s) != nil; got != bad {
				t.Fatalf("CheckText(%q) refused=%v, want %v", s, got, bad)
			}
		}
	}
}

func TestNewSessionValidateUsesCheckText(t *testing.T) {
	providers := []string{"google"}
	for _, tc := range []struct {
		in     NewSession
		fields []string
	}{
		{NewSession{Title: "x\x00", Language: "en-US", STTProvider: "google"}, []string{"title"}},
		{NewSession{Title: "ok", Language: "en\u202e", STTProvider: "google"}, []string{"language"}},
		{NewSession{Title: "ok", Language: "en", STTProvider: "goo\x7fgle"}, []string{"stt_provider"}},
		{NewSession{Title: "\xff", Language: "\x01", STTProvider: "\u0085"}, []string{"title", "language", "stt_provider"}},
		{NewSession{Title: "a\tb", Language: "auto", STTProvider: "google"}, nil},
	} {
		err := tc.in.Validate(providers)
		var names []string
		var de *Error
		if errors.As(err, &de) {
			for _, f := range de.Fields {
				names = append(names, f.Field)
			}
		}
		if strings.Join(names, ",") != strings.Join(tc.fields, ",") {
			t.Errorf("%+v: fields %v, want %v (%v)", tc.in, names, tc.fields, err)
		}
	}
}

func BenchmarkCheckText(b *testing.B) {
	for _, s := range []string{"Weekly sync with the design team", "Réunion hebdomadaire 会议 🎉"} {
		b.Run(s[:6], func(b *testing.B) {
			for b.Loop() {
				if CheckText(s) != nil {
					b.Fatal("refused")
				}
			}
		})
	}
}
