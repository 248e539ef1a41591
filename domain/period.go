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

// EarliestTime and LatestTime bound every instant Tally takes from a
// request and every one it answers with. RFC 3339 writes the year in four
// digits, so nothing after year 9999 can be written at all; year 0000 can
// be, but is no year to many clients' date types (Python's datetime and
// .NET's DateTime start at year 1), so it is refused too.
var (
	EarliestTime = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)
	LatestTime   = time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC)
)

// Writable reports whether t lies within [EarliestTime, LatestTime]: written
// in UTC, it is an RFC 3339 date-time every client can read back.
func Writable(t time.Time) bool {
	return !t.Before(EarliestTime) && !t.After(LatestTime)
}

// ValidateAnchor checks a billing anchor taken from a request. The anchor
// is answered back (billing_anchor), and so is every period it starts, so
// all of them must be Writable: the anchor at or after EarliestTime (no
// period starts before its anchor, see User.Period), and before
// AnchorLimit.
func ValidateAnchor(anchor time.Time) error {
	switch a := anchor.UTC(); {
	case a.Before(EarliestTime):
		return validation([]FieldError{{"billing_anchor", "must be at or after " + EarliestTime.Format(time.RFC3339)}})
	case !a.Before(AnchorLimit):
		return validation([]FieldError{{"billing_anchor", "must be before " + AnchorLimit.Format(time.RFC3339) + ", so that every period ends within year 9999"}})
	}
	return nil
}

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
