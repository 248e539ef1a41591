package load

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"
)

// Verification is what the checks after the run covered and found.
type Verification struct {
	// Users is the number of users whose usage was checked.
	Users int `json:"users"`
	// Sessions is the number of admitted sessions read back.
	Sessions int `json:"sessions"`
	// Passed is true when no check failed.
	Passed bool `json:"passed"`
	// Violations are the failed checks, one sentence each (also in
	// Result.Violations).
	Violations []string `json:"-"`
}

// verify checks the invariants of docs/contract.md §2 over the API: per user, usage within
// the limit and equal to what the run was told (nothing acknowledged lost,
// nothing admitted unannounced); per admitted session, read-your-writes.
func (e *engine) verify(ctx context.Context) *Verification {
	ids := e.allIDs()
	admitted := make([]int64, len(e.users))
	for _, a := range ids {
		admitted[a.user]++
	}
	unknown := make([]int64, len(e.users))
	for _, s := range e.shards {
		s.mu.Lock()
		for _, u := range s.uncertainUsers {
			unknown[u]++
		}
		s.mu.Unlock()
	}

	e.logf("verifying: usage of %d user(s), %d admitted session(s) to read back", len(e.users), len(ids))
	v := &Verification{Users: len(e.users), Sessions: len(ids)}
	perUser := make([][]string, len(e.users))
	parallel(len(e.users), e.setupConcurrency(), func(i int) {
		if ctx.Err() != nil {
			return
		}
		perUser[i] = e.checkUsage(ctx, i, admitted[i], unknown[i])
	})

	type sessionViolation struct {
		user int32
		id   string
		msg  string
	}
	var mu sync.Mutex
	var bad []sessionViolation
	parallel(len(ids), e.setupConcurrency(), func(i int) {
		if ctx.Err() != nil {
			return
		}
		if msg := e.checkSession(ctx, ids[i]); msg != "" {
			mu.Lock()
			bad = append(bad, sessionViolation{ids[i].user, ids[i].id, msg})
			mu.Unlock()
		}
	})
	slices.SortFunc(bad, func(a, b sessionViolation) int {
		return cmp.Or(cmp.Compare(a.user, b.user), cmp.Compare(a.id, b.id))
	})

	for _, msgs := range perUser {
		v.Violations = append(v.Violations, msgs...)
	}
	for _, b := range bad {
		v.Violations = append(v.Violations, b.msg)
	}
	v.Passed = len(v.Violations) == 0 && ctx.Err() == nil
	return v
}

// checkUsage compares one user's usage after the run with its usage before
// and the creates this run saw admitted (adm) or could not know the
// outcome of (unk).
func (e *engine) checkUsage(ctx context.Context, i int, adm, unk int64) []string {
	u := e.users[i]
	var got usageBody
	status, raw, err := e.call(ctx, http.MethodGet, "/api/v1/usage", u.token, nil, &got)
	if err != nil {
		return []string{fmt.Sprintf("user %s: GET /api/v1/usage failed: %v", u.id, err)}
	}
	if status != http.StatusOK {
		return []string{fmt.Sprintf("user %s: GET /api/v1/usage answered %d, want 200: %s", u.id, status, trim(raw))}
	}
	var out []string
	used, limit := got.Sessions.Used, got.Sessions.Limit
	b := e.base[i]
	samePeriod := b.known && b.periodStart == got.PeriodStart
	before := int64(0)
	if samePeriod {
		before = b.used
	}
	// Over-admission, seen by the server's count or by the clients (the
	// 200s this run got, on top of the usage before it).
	if limit >= 0 && (used > limit || before+adm > limit) {
		out = append(out, fmt.Sprintf("user %s: over-admitted: the plan allows %d sessions per period; sessions.used is %d, and this run got %d create(s) admitted on top of %d before it",
			u.id, limit, used, adm, before))
	}
	switch {
	case samePeriod && used < before+adm:
		out = append(out, fmt.Sprintf("user %s: sessions.used is %d but %d before the run + %d admitted during it = %d (acknowledged sessions lost)", u.id, used, before, adm, before+adm))
	case samePeriod && used > before+adm+unk:
		out = append(out, fmt.Sprintf("user %s: sessions.used is %d but %d before the run + %d admitted during it (+%d of unknown outcome) = %d: %d session(s) admitted that no client was told about",
			u.id, used, before, adm, unk, before+adm+unk, used-(before+adm+unk)))
	case !samePeriod && used < adm:
		// The period rolled over during the run (or the usage before it
		// is unknown): only what this run saw admitted can be demanded.
		out = append(out, fmt.Sprintf("user %s: sessions.used is %d but this run got %d create(s) admitted (acknowledged sessions lost)", u.id, used, adm))
	}
	return out
}

// checkSession reads one admitted session back; "" means it answered 200
// with that session.
func (e *engine) checkSession(ctx context.Context, a admittedID) string {
	u := e.users[a.user]
	if a.id == "" {
		return fmt.Sprintf("user %s: a create answered 200 without a session id in its body", u.id)
	}
	path := "/api/v1/sessions/" + url.PathEscape(a.id)
	status, raw, err := e.call(ctx, http.MethodGet, path, u.token, nil, nil)
	switch {
	case err != nil:
		return fmt.Sprintf("session %s of user %s: GET failed: %v", a.id, u.id, err)
	case status != http.StatusOK:
		return fmt.Sprintf("session %s of user %s: GET answered %d, want 200 (an acknowledged session is not readable): %s", a.id, u.id, status, trim(raw))
	case !bytes.Contains(raw, []byte(a.id)):
		return fmt.Sprintf("session %s of user %s: GET answered 200 with another session: %s", a.id, u.id, trim(raw))
	}
	return ""
}
