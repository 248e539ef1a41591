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

// Period returns the user's billing period containing now.
func (u User) Period(now time.Time) Period { return PeriodAt(u.BillingAnchor, now) }

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
