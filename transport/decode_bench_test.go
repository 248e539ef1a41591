package transport

import (
	"testing"

	"github.com/tally-dev/tally/domain"
)

// BenchmarkDecodeCreateSession measures decodeJSON alone on the body of
// the hottest request (BenchmarkCreateSessionOverLimit measures the whole
// answer): a strict decode is a share of every create's CPU.
func BenchmarkDecodeCreateSession(b *testing.B) {
	body := []byte(`{"title":"Weekly sync","language":"en-US","stt_provider":"google"}`)
	b.ReportAllocs()
	for b.Loop() {
		var v domain.NewSession
		if err := decodeJSON(body, &v); err != nil {
			b.Fatal(err)
		}
	}
}
