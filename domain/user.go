package domain

import "time"

// User is an account as far as accounting is concerned.
type User struct {
	ID            string
	Plan          string
	BillingAnchor time.Time
	// Version is bumped by every change of plan or anchor. Admissions are
	// fenced on it, so a decision made with a stale plan never commits.
	Version   int64
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Period returns the user's billing period at now. Billing starts at the
// anchor: a clock that reads earlier than the anchor (another process's
// clock a few milliseconds behind the one that provisioned the user or reset
// its usage) is in the first period, never in a phantom period before it
// that would come with a fresh quota.
func (u User) Period(now time.Time) Period {
	if now.Before(u.BillingAnchor) {
		now = u.BillingAnchor
	}
	return PeriodAt(u.BillingAnchor, now)
}

// ValidUserID reports whether id is 1–128 characters of [A-Za-z0-9._@:-].
func ValidUserID(id string) bool {
	if len(id) < 1 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.', c == '_', c == '@', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}
