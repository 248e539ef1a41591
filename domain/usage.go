package domain

// Usage is what a user has consumed in one billing period.
type Usage struct {
	Sessions int64 // sessions admitted in the period (failed ones included)
	Seconds  int64 // transcribed seconds of sessions created in the period
}

// WholeMinutes is the usage in whole minutes, as reported to clients.
func (u Usage) WholeMinutes() int64 { return u.Seconds / 60 }

// Admit decides whether one more session may be created. It returns nil or a
// *LimitExceededError. The session limit is checked first: a user at both
// limits is told about sessions.
func Admit(p Plan, u Usage, period Period) error {
	if !p.MaxSessions.Allows(u.Sessions) {
		return &LimitExceededError{Code: CodeSessionLimit, Plan: p.Name, Usage: u.Sessions, Limit: p.MaxSessions, Period: period}
	}
	if max := p.MaxSeconds(); !max.Allows(u.Seconds) {
		return &LimitExceededError{Code: CodeTranscriptionLimit, Plan: p.Name, Usage: u.WholeMinutes(), Limit: p.MaxTotalMinutes, Period: period}
	}
	return nil
}

// CheckFileSize decides whether an upload of sizeMB is allowed on the plan.
// Sizes equal to the limit are allowed.
func CheckFileSize(p Plan, sizeMB float64, period Period) error {
	if p.MaxFileSizeMB.IsUnlimited() || sizeMB <= float64(p.MaxFileSizeMB) {
		return nil
	}
	usage := int64(sizeMB)
	if float64(usage) < sizeMB {
		usage++ // report the requested size rounded up: 60.2 MB is over a 60 MB limit
	}
	return &LimitExceededError{Code: CodeFileSizeLimit, Plan: p.Name, Usage: usage, Limit: p.MaxFileSizeMB, Period: period}
}

// Report is a user's usage in the current period next to the plan's limits.
type Report struct {
	UserID string
	Plan   Plan
	Period Period
	Usage  Usage
}
