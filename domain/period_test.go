package domain

import (
	"math/rand/v2"
	"testing"
	"time"
)

func utc(y int, m time.Month, d, h, mi, s int) time.Time {
	return time.Date(y, m, d, h, mi, s, 0, time.UTC)
}

func TestAddMonthsClampsFromTheAnchor(t *testing.T) {
	anchor := utc(2027, time.January, 31, 9, 30, 0)
	want := []time.Time{
		utc(2027, time.January, 31, 9, 30, 0),
		utc(2027, time.February, 28, 9, 30, 0),
		utc(2027, time.March, 31, 9, 30, 0), // back to the 31st: computed from the anchor, not from Feb 28
		utc(2027, time.April, 30, 9, 30, 0),
		utc(2027, time.May, 31, 9, 30, 0),
	}
	for k, w := range want {
		if got := AddMonths(anchor, k); !got.Equal(w) {
			t.Errorf("AddMonths(%s, %d) = %s, want %s", anchor, k, got, w)
		}
	}
	if got, w := AddMonths(anchor, -1), utc(2026, time.December, 31, 9, 30, 0); !got.Equal(w) {
		t.Errorf("AddMonths(-1) = %s, want %s", got, w)
	}
	if got, w := AddMonths(anchor, -11), utc(2026, time.February, 28, 9, 30, 0); !got.Equal(w) {
		t.Errorf("AddMonths(-11) = %s, want %s", got, w)
	}
}

func TestLeapYears(t *testing.T) {
	anchor := utc(2027, time.December, 31, 0, 0, 0)
	cases := map[int]time.Time{
		2:  utc(2028, time.February, 29, 0, 0, 0), // 2028 is a leap year
		14: utc(2029, time.February, 28, 0, 0, 0),
		26: utc(2030, time.February, 28, 0, 0, 0),
	}
	for k, w := range cases {
		if got := AddMonths(anchor, k); !got.Equal(w) {
			t.Errorf("AddMonths(%s, %d) = %s, want %s", anchor, k, got, w)
		}
	}
	// 2100 is not a leap year (divisible by 100, not by 400); 2000 was.
	if got := AddMonths(utc(2100, time.January, 29, 0, 0, 0), 1); !got.Equal(utc(2100, time.February, 28, 0, 0, 0)) {
		t.Errorf("2100-02: got %s", got)
	}
	if got := AddMonths(utc(2000, time.January, 29, 0, 0, 0), 1); !got.Equal(utc(2000, time.February, 29, 0, 0, 0)) {
		t.Errorf("2000-02: got %s", got)
	}
	// An anchor on Feb 29 keeps the 29th where it exists.
	leap := utc(2028, time.February, 29, 12, 0, 0)
	if got := AddMonths(leap, 12); !got.Equal(utc(2029, time.February, 28, 12, 0, 0)) {
		t.Errorf("Feb 29 + 12 months: %s", got)
	}
	if got := AddMonths(leap, 1); !got.Equal(utc(2028, time.March, 29, 12, 0, 0)) {
		t.Errorf("Feb 29 + 1 month: %s", got)
	}
}

func TestPeriodBoundaryInstant(t *testing.T) {
	anchor := utc(2026, time.October, 31, 15, 0, 0)
	end := utc(2026, time.November, 30, 15, 0, 0)
	before := PeriodAt(anchor, end.Add(-time.Nanosecond))
	if !before.Start.Equal(anchor) || !before.End.Equal(end) {
		t.Fatalf("1ns before the boundary: %+v", before)
	}
	at := PeriodAt(anchor, end)
	if !at.Start.Equal(end) || !at.End.Equal(utc(2026, time.December, 31, 15, 0, 0)) {
		t.Fatalf("at the boundary: %+v, want it to start the next period", at)
	}
	if p := PeriodAt(anchor, anchor); !p.Start.Equal(anchor) {
		t.Fatalf("at the anchor: %+v", p)
	}
}

func TestPeriodBeforeAnchor(t *testing.T) {
	anchor := utc(2026, time.March, 31, 0, 0, 0)
	p := PeriodAt(anchor, utc(2026, time.March, 1, 0, 0, 0))
	if !p.Start.Equal(utc(2026, time.February, 28, 0, 0, 0)) || !p.End.Equal(anchor) {
		t.Fatalf("before the anchor: %+v", p)
	}
}

func TestPeriodIsUTCWhateverTheInputZone(t *testing.T) {
	tokyo := time.FixedZone("JST", 9*3600)
	anchor := time.Date(2026, time.January, 1, 5, 0, 0, 0, tokyo) // Dec 31 20:00 UTC
	p := PeriodAt(anchor, time.Date(2026, time.January, 20, 0, 0, 0, 0, tokyo))
	if p.Start.Location() != time.UTC || !p.Start.Equal(utc(2025, time.December, 31, 20, 0, 0)) {
		t.Fatalf("start %s (%s)", p.Start, p.Start.Location())
	}
	if !p.End.Equal(utc(2026, time.January, 31, 20, 0, 0)) {
		t.Fatalf("end %s", p.End)
	}
}

// Property: for random anchors and instants, the instant lies in exactly
// the period PeriodAt returns, that period is one of the anchor's, and the
// periods around it are contiguous (each ends where the next starts).
func TestPeriodPropertiesRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	lo := utc(1999, time.January, 1, 0, 0, 0).Unix()
	hi := utc(2101, time.January, 1, 0, 0, 0).Unix()
	for i := 0; i < 20000; i++ {
		anchor := time.Unix(lo+r.Int64N(hi-lo), r.Int64N(1e9)).UTC()
		// Bias anchors to month ends, where clamping matters.
		if i%3 == 0 {
			y, m, _ := anchor.Date()
			anchor = time.Date(y, m+1, 0, anchor.Hour(), anchor.Minute(), anchor.Second(), anchor.Nanosecond(), time.UTC)
		}
		now := time.Unix(lo+r.Int64N(hi-lo), r.Int64N(1e9)).UTC()
		p := PeriodAt(anchor, now)
		if !p.Contains(now) {
			t.Fatalf("anchor %s now %s: period %+v does not contain now", anchor, now, p)
		}
		if !p.Start.Before(p.End) {
			t.Fatalf("anchor %s: empty period %+v", anchor, p)
		}
		prev := PeriodAt(anchor, p.Start.Add(-time.Nanosecond))
		next := PeriodAt(anchor, p.End)
		if !prev.End.Equal(p.Start) || !next.Start.Equal(p.End) {
			t.Fatalf("anchor %s: periods not contiguous: %+v | %+v | %+v", anchor, prev, p, next)
		}
		if prev.Contains(now) || next.Contains(now) {
			t.Fatalf("anchor %s now %s: in more than one period", anchor, now)
		}
		// The start is anchor + k months for some k, with the day clamped.
		ad := anchor.Day()
		sd := p.Start.Day()
		if sd != ad && sd != daysIn(p.Start.Year(), p.Start.Month()) {
			t.Fatalf("anchor %s: period start %s is not an anchored month", anchor, p.Start)
		}
		if p.Start.Hour() != anchor.Hour() || p.Start.Minute() != anchor.Minute() || p.Start.Nanosecond() != anchor.Nanosecond() {
			t.Fatalf("anchor %s: period start %s lost the time of day", anchor, p.Start)
		}
		if d := p.End.Sub(p.Start); d < 28*24*time.Hour || d > MaxPeriodLength {
			t.Fatalf("anchor %s: period length %s", anchor, d)
		}
	}
}

func FuzzPeriodAt(f *testing.F) {
	f.Add(int64(1800000000), int64(1810000000))
	f.Fuzz(func(t *testing.T, a, n int64) {
		const span = int64(200 * 365 * 24 * 3600)
		if a < -span || a > span || n < -span || n > span {
			t.Skip()
		}
		anchor, now := time.Unix(a, 0).UTC(), time.Unix(n, 0).UTC()
		p := PeriodAt(anchor, now)
		if !p.Contains(now) {
			t.Fatalf("anchor %s now %s: %+v", anchor, now, p)
		}
	})
}

// A clock behind the anchor (another process provisioned the user or reset
// its usage a moment ago) must not open a period before the anchor with a
// fresh quota: the bug that let two processes admit 11 of 10.
func TestUserPeriodNeverBeforeAnchor(t *testing.T) {
	anchor := utc(2026, time.November, 27, 10, 0, 0)
	u := User{BillingAnchor: anchor}
	p := u.Period(anchor.Add(-3 * time.Millisecond))
	if !p.Start.Equal(anchor) || !p.End.Equal(utc(2026, time.December, 27, 10, 0, 0)) {
		t.Fatalf("clock 3ms behind the anchor: %+v, want the first period", p)
	}
	if p := u.Period(anchor.AddDate(0, 1, 1)); !p.Start.Equal(utc(2026, time.December, 27, 10, 0, 0)) {
		t.Fatalf("a month later: %+v", p)
	}
}

// An anchor just before AnchorLimit keeps every period inside year 9999
// (valid RFC 3339 date-times); AnchorLimit itself would not, so the limit
// is as late as it can be.
func TestAnchorLimitKeepsPeriodsInYear9999(t *testing.T) {
	last := AnchorLimit.Add(-time.Microsecond)
	for _, now := range []time.Time{time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC), last, last.Add(20 * 24 * time.Hour)} {
		if p := PeriodAt(last, now); p.End.Year() > 9999 || p.Start.Year() > 9999 {
			t.Errorf("anchor %s, now %s: period %s – %s leaves year 9999", last, now, p.Start, p.End)
		}
	}
	if p := PeriodAt(AnchorLimit, AnchorLimit); p.End.Year() <= 9999 {
		t.Errorf("anchor %s still ends its first period in %d: the limit could be later", AnchorLimit, p.End.Year())
	}
}

// ValidateAnchor takes exactly the anchors from EarliestTime up to, not
// including, AnchorLimit, whatever the offset they were written with.
func TestValidateAnchorEdges(t *testing.T) {
	east := time.FixedZone("+01:00", 3600)
	west := time.FixedZone("-01:00", -3600)
	for _, tc := range []struct {
		anchor time.Time
		ok     bool
	}{
		{EarliestTime, true},
		{EarliestTime.Add(-time.Nanosecond), false},
		{time.Date(1, 1, 1, 0, 30, 0, 0, east), false}, // 0000-12-31T23:30Z
		{time.Date(1, 1, 1, 0, 0, 0, 0, west), true},
		{time.Date(0, 6, 1, 0, 0, 0, 0, time.UTC), false},
		{time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC), false},
		{time.Date(9999, 11, 30, 0, 0, 0, 0, time.UTC), true},
		{AnchorLimit.Add(-time.Nanosecond), true},
		{AnchorLimit, false},
		{time.Date(9999, 11, 30, 23, 0, 0, 0, west), false}, // AnchorLimit itself
		{time.Date(9999, 12, 1, 0, 30, 0, 0, east), true},   // 9999-11-30T23:30Z
		{time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), false},
	} {
		err := ValidateAnchor(tc.anchor)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateAnchor(%s) = %v, want ok %v", tc.anchor, err, tc.ok)
			continue
		}
		if err != nil {
			if ErrorCode(err) != CodeValidation {
				t.Errorf("ValidateAnchor(%s): code %s, want %s", tc.anchor, ErrorCode(err), CodeValidation)
			}
			if de, _ := err.(*Error); de == nil || len(de.Fields) != 1 || de.Fields[0].Field != "billing_anchor" {
				t.Errorf("ValidateAnchor(%s) = %#v, want one field billing_anchor", tc.anchor, err)
			}
		}
	}
}

// Every period of an accepted anchor is Writable, from the first (the
// clock behind the anchor) to the one current at the last instant before
// AnchorLimit, for anchors near both ends of the range: what the anchor
// check promises for any clock before 9999-12-01.
func TestAcceptedAnchorsGiveWritablePeriods(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 18))
	span := AnchorLimit.Sub(EarliestTime) // saturates at the largest Duration: ~292 years
	anchors := []time.Time{EarliestTime, AnchorLimit.Add(-time.Nanosecond), AnchorLimit.Add(-time.Microsecond),
		time.Date(1, 1, 31, 23, 59, 59, 999_999_999, time.UTC), time.Date(9999, 10, 31, 12, 0, 0, 0, time.UTC)}
	for range 200 {
		anchors = append(anchors, EarliestTime.Add(time.Duration(r.Int64N(int64(span)))),
			AnchorLimit.Add(-time.Duration(r.Int64N(int64(span)))))
	}
	for _, a := range anchors {
		if err := ValidateAnchor(a); err != nil {
			t.Fatalf("anchor %s refused: %v", a, err)
		}
		u := User{BillingAnchor: a}
		for _, now := range []time.Time{EarliestTime, a.Add(-time.Hour), a, a.AddDate(0, 0, 45), AnchorLimit.Add(-time.Nanosecond)} {
			if !now.Before(AnchorLimit) {
				continue
			}
			p := u.Period(now)
			if !Writable(p.Start) || !Writable(p.End) || !Writable(a) {
				t.Fatalf("anchor %s, now %s: period %s – %s is not writable", a, now, p.Start, p.End)
			}
		}
	}
}

func TestWritable(t *testing.T) {
	for _, tc := range []struct {
		t  time.Time
		ok bool
	}{
		{EarliestTime, true},
		{LatestTime, true},
		{EarliestTime.Add(-time.Nanosecond), false},
		{LatestTime.Add(time.Nanosecond), false},
		{time.Date(1, 1, 1, 0, 30, 0, 0, time.FixedZone("", 3600)), false},
		{time.Date(9999, 12, 31, 23, 30, 0, 0, time.FixedZone("", -3600)), false},
	} {
		if got := Writable(tc.t); got != tc.ok {
			t.Errorf("Writable(%s) = %v, want %v", tc.t, got, tc.ok)
		}
		// What Writable promises: in UTC, RFC 3339 with a four-digit year.
		s := tc.t.UTC().Format(time.RFC3339Nano)
		if four := len(s) > 4 && s[4] == '-' && s[:4] != "0000"; four != tc.ok {
			t.Errorf("%s written as %q", tc.t, s)
		}
	}
}
