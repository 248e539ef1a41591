package transport

import (
	"encoding/json"
	"time"

	"github.com/tally-dev/tally/domain"
)

// The response bodies. Each mirrors a schema of openapi.yaml; the handler
// tests validate every answer against it.

type sessionJSON struct {
	ID              string `json:"id"`
	UserID          string `json:"user_id"`
	Title           string `json:"title"`
	Language        string `json:"language"`
	STTProvider     string `json:"stt_provider"`
	Status          string `json:"status"`
	DurationSeconds *int64 `json:"duration_seconds"` // null until completed
	CreatedAt       string `json:"created_at"`
	UpdatedAt       string `json:"updated_at"`
}

type sessionListJSON struct {
	Items      []sessionJSON `json:"items"`
	NextCursor *string       `json:"next_cursor"`
}

type uploadURLJSON struct {
	UploadURL string `json:"upload_url"`
	ExpiresAt string `json:"expires_at"`
}

type usageJSON struct {
	UserID        string        `json:"user_id"`
	Plan          string        `json:"plan"`
	PeriodStart   string        `json:"period_start"`
	PeriodEnd     string        `json:"period_end"`
	Sessions      sessionsUsage `json:"sessions"`
	Minutes       minutesUsage  `json:"minutes"`
	MaxFileSizeMB int64         `json:"max_file_size_mb"`
}

type sessionsUsage struct {
	Used      int64  `json:"used"`
	Limit     int64  `json:"limit"`
	Remaining *int64 `json:"remaining"` // null when unlimited
}

type minutesUsage struct {
	Used        int64  `json:"used"` // whole minutes
	UsedSeconds int64  `json:"used_seconds"`
	Limit       int64  `json:"limit"`
	Remaining   *int64 `json:"remaining"` // whole minutes; null when unlimited
}

type planJSON struct {
	Name            string `json:"name"`
	MaxSessions     int64  `json:"max_sessions"`
	MaxTotalMinutes int64  `json:"max_total_minutes"`
	MaxFileSizeMB   int64  `json:"max_file_size_mb"`
}

type planListJSON struct {
	Plans []planJSON `json:"plans"`
}

type adminUserJSON struct {
	ID            string    `json:"id"`
	Plan          string    `json:"plan"`
	BillingAnchor string    `json:"billing_anchor"`
	CreatedAt     string    `json:"created_at"`
	UpdatedAt     string    `json:"updated_at"`
	Usage         usageJSON `json:"usage"`
}

type healthJSON struct {
	Status string `json:"status"`
}

type readyJSON struct {
	Status string            `json:"status"`
	Checks map[string]string `json:"checks"`
}

type notReadyJSON struct {
	Detail errorDetail       `json:"detail"`
	Checks map[string]string `json:"checks"`
}

// timestamp formats t as RFC 3339 in UTC, with as many fractional digits
// as it has: a period boundary or a cursor must not be rounded.
func timestamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func toSession(s domain.Session) sessionJSON {
	return sessionJSON{
		ID:              s.ID,
		UserID:          s.UserID,
		Title:           s.Title,
		Language:        s.Language,
		STTProvider:     s.STTProvider,
		Status:          string(s.Status),
		DurationSeconds: s.DurationSeconds,
		CreatedAt:       timestamp(s.CreatedAt),
		UpdatedAt:       timestamp(s.UpdatedAt),
	}
}

// toUsage reports a period's usage next to the plan's limits. Minutes are
// whole minutes, and remaining minutes are limit − used: positive exactly
// while a new session would still be admitted by the minutes limit
// (seconds < limit×60 ⇔ ⌊seconds/60⌋ < limit).
func toUsage(r domain.Report) usageJSON {
	minutes := r.Usage.WholeMinutes()
	return usageJSON{
		UserID:      r.UserID,
		Plan:        r.Plan.Name,
		PeriodStart: timestamp(r.Period.Start),
		PeriodEnd:   timestamp(r.Period.End),
		Sessions: sessionsUsage{
			Used:      r.Usage.Sessions,
			Limit:     limitJSON(r.Plan.MaxSessions),
			Remaining: r.Plan.MaxSessions.Remaining(r.Usage.Sessions),
		},
		Minutes: minutesUsage{
			Used:        minutes,
			UsedSeconds: r.Usage.Seconds,
			Limit:       limitJSON(r.Plan.MaxTotalMinutes),
			Remaining:   r.Plan.MaxTotalMinutes.Remaining(minutes),
		},
		MaxFileSizeMB: limitJSON(r.Plan.MaxFileSizeMB),
	}
}

// limitJSON reports every unlimited value as -1, whatever negative number
// a plan file used.
func limitJSON(l domain.Limit) int64 {
	if l.IsUnlimited() {
		return -1
	}
	return int64(l)
}

func toAdminUser(u domain.User, r domain.Report) adminUserJSON {
	return adminUserJSON{
		ID:            u.ID,
		Plan:          u.Plan,
		BillingAnchor: timestamp(u.BillingAnchor),
		CreatedAt:     timestamp(u.CreatedAt),
		UpdatedAt:     timestamp(u.UpdatedAt),
		Usage:         toUsage(r),
	}
}

func encodePlans(c *domain.Catalog) ([]byte, error) {
	plans := c.Plans()
	out := planListJSON{Plans: make([]planJSON, 0, len(plans))}
	for _, p := range plans {
		out.Plans = append(out.Plans, planJSON{
			Name:            p.Name,
			MaxSessions:     limitJSON(p.MaxSessions),
			MaxTotalMinutes: limitJSON(p.MaxTotalMinutes),
			MaxFileSizeMB:   limitJSON(p.MaxFileSizeMB),
		})
	}
	return json.Marshal(out)
}

// pageOf makes a page of a list read with one more item than limit: at
// most limit items, converted, and the cursor of the last one when the
// extra item shows that a next page exists (else nil: a page never leads
// to an empty one).
func pageOf[T, J any](list []T, limit int, conv func(T) J, cursor func(T) string) ([]J, *string) {
	n := min(len(list), limit)
	items := make([]J, 0, n)
	for _, x := range list[:n] {
		items = append(items, conv(x))
	}
	if len(list) <= limit {
		return items, nil
	}
	next := cursor(list[limit-1])
	return items, &next
}
