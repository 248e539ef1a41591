package storetest

import "testing"

// TestLimitTableDomain runs the limit table through domain.Admit alone, so
// that the domain's side of the table fails without a database too; the
// stores' side is the AdmitLimitTable contract test.
func TestLimitTableDomain(t *testing.T) {
	for _, c := range limitTable {
		if got := domainAdmits(t, c); got != c.Admitted {
			t.Errorf("%v: domain.Admit admits = %t, want %t", c, got, c.Admitted)
		}
	}
}
