package domain

import "time"

// Period is one billing period, the half-open interval [Start, End) in UTC.
type Period struct {
	Start time.Time
	End   time.Time
}

// MaxPeriodLength bounds every period: a month has at most 31 days, and
// clamping the anchor's day to a shorter month only shortens the period
// before it. Stores use it to bound where a user's current usage row can
// start before they know the user's anchor.
const MaxPeriodLength = 31 * 24 * time.Hour

// AnchorLimit is the first billing anchor refused: a period starting at an
// anchor before it ends by 9999-12-31 at the latest, so every period start
// and end is a valid RFC 3339 date-time (four-digit years). A later anchor
// would give a first period ending in year 10000.
var AnchorLimit = time.Date(9999, 12, 1, 0, 0, 0, 0, time.UTC)

// Contains reports whether t falls inside the period.
func (p Period) Contains(t time.Time) bool {
	return !t.Before(p.Start) && t.Before(p.End)
}

// AddMonths returns anchor moved k months (k may be negative), keeping the
// time of day and clamping the day to the target month's end: an anchor on
// Jan 31 gives Feb 28 (or 29), then Mar 31. Each result is computed from the
// anchor, never from the previous period, so a short month does not shift
// every later period.
func AddMonths(anchor time.Time, k int) time.Time {
	a := anchor.UTC()
	y, m, d := a.Date()
	total := int(m) - 1 + k
	ty := y + floorDiv(total, 12)
	tm := time.Month(total - floorDiv(total, 12)*12 + 1)
	if last := daysIn(ty, tm); d > last {
		d = last
	}
	return time.Date(ty, tm, d, a.Hour(), a.Minute(), a.Second(), a.Nanosecond(), time.UTC)
}

// PeriodAt returns the billing period, anchored at anchor, that contains now.
// It is a pure function of the anchor and the clock: a new period starts with
// zero usage without any job having to run.
func PeriodAt(anchor, now time.Time) Period {
	a, n := anchor.UTC(), now.UTC()
	k := (n.Year()-a.Year())*12 + int(n.Month()) - int(a.Month())
	// The month difference is at most one off (day and time of day decide).
	for AddMonths(a, k).After(n) {
		k--
	}
	for !AddMonths(a, k+1).After(n) {
		k++
	}
	return Period{Start: AddMonths(a, k), End: AddMonths(a, k+1)}
}

func daysIn(y int, m time.Month) int {
	return time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

func floorDiv(a, b int) int {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}
