package domain

import (
	"testing"
	"time"
)

// BenchmarkAdmissionDecision is the decision a user's actor makes for
// every create: the user's current period from its anchor, then the plan's
// limits against the period's usage — once admitted, once over the limit
// (which builds the error the 403 carries).
func BenchmarkAdmissionDecision(b *testing.B) {
	free, ok := DefaultCatalog().Plan("free")
	if !ok {
		b.Fatal("no free plan")
	}
	u := User{ID: "bench", Plan: free.Name, BillingAnchor: utc(2026, time.January, 31, 9, 30, 0), Version: 1}
	now := utc(2026, time.November, 27, 12, 0, 0)
	for _, bc := range []struct {
		name  string
		usage Usage
		admit bool
	}{
		{"admitted", Usage{Sessions: 3, Seconds: 600}, true},
		{"over-limit", Usage{Sessions: 10, Seconds: 600}, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				p := u.Period(now)
				if err := Admit(free, bc.usage, p); (err == nil) != bc.admit {
					b.Fatalf("Admit: %v", err)
				}
			}
		})
	}
}
