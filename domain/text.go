package domain

import (
	"fmt"
	"unicode/utf8"
)

// CheckText reports whether s is text every store can keep and every
// reader can display safely, or why not. It refuses:
//
//   - invalid UTF-8: Postgres refuses it where SQLite keeps the bytes, so
//     the two stores would disagree;
//   - NUL and the other C0 controls except tab (U+0000–U+001F minus U+0009)
//     and DEL (U+007F): Postgres refuses NUL in text (SQLSTATE 22021), and
//     the rest break log lines, terminals and CSV exports of whoever reads
//     the value later;
//   - C1 controls (U+0080–U+009F): invisible, and some terminals act on them;
//   - the bidirectional embeddings, overrides and isolates (U+202A–U+202E,
//     U+2066–U+2069): they reorder the text that follows them, so a title
//     can display as something other than what it is, in an admin page or
//     another user's listing.
//
// The implicit directional marks (U+200E LRM, U+200F RLM, U+061C ALM) are
// allowed: they cannot reorder a run of text, only attach neutral
// characters such as punctuation to one side, and right-to-left titles
// need them to display correctly.
//
// The error's text says what was found and where, as a field message
// ("must not contain U+0000, a control character (byte 1)").
func CheckText(s string) error {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			// The common case, printable ASCII, without decoding.
			if (c < 0x20 && c != '\t') || c == 0x7f {
				return textError{rune(c), i, "a control character"}
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			return textError{-1, i, ""}
		case r >= 0x80 && r <= 0x9f:
			return textError{r, i, "a control character"}
		case (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069):
			return textError{r, i, "a bidirectional formatting character"}
		}
		i += size
	}
	return nil
}

// textError is CheckText's answer: the refused rune (-1 for invalid
// UTF-8), its byte offset and what kind of character it is.
type textError struct {
	r    rune
	at   int
	kind string
}

func (e textError) Error() string {
	if e.r < 0 {
		return fmt.Sprintf("must be valid UTF-8 (invalid byte at %d)", e.at)
	}
	return fmt.Sprintf("must not contain U+%04X, %s (byte %d)", e.r, e.kind, e.at)
}

// checkTextField appends field's CheckText problem to fields, reporting
// whether s passed.
func checkTextField(fields *[]FieldError, field, s string) bool {
	if err := CheckText(s); err != nil {
		*fields = append(*fields, FieldError{field, err.Error()})
		return false
	}
	return true
}
