package drills

import (
	"testing"
	"time"
)

// Each unclaimed key-less session takes, of the unanswered attempts in
// flight when it was created, the one that ends first, so that a later
// session still finds the longer attempt: first fit would give the
// session at 5 the attempt 0–10 and leave the one at 6 unaccounted for.
func TestMatchUnansweredKeepsLongAttemptsForLaterSessions(t *testing.T) {
	base := time.Now()
	at := func(s float64) time.Time { return base.Add(time.Duration(s * float64(time.Second))) }
	attempts := []unanswered{
		{Attempt: Attempt{Start: at(0), End: at(10)}},
		{Attempt: Attempt{Start: at(4), End: at(5.5)}},
	}
	rows := []pgSession{{id: "late", createdAt: at(6)}, {id: "early", createdAt: at(5)}}
	matched, leftover := matchUnanswered(rows, attempts)
	if len(matched) != 2 || len(leftover) != 0 {
		t.Fatalf("matched %v, left %v; want both sessions matched", matched, leftover)
	}
	// Three sessions, two attempts: one is left over, whatever the order.
	rows = append(rows, pgSession{id: "third", createdAt: at(7)})
	if matched, leftover = matchUnanswered(rows, attempts); len(matched) != 2 || len(leftover) != 1 {
		t.Fatalf("matched %v, left %v; want two matched and one left over", matched, leftover)
	}
	// A session outside every attempt (beyond the slack) is left over.
	rows = []pgSession{{id: "after", createdAt: at(10).Add(2 * stampSlack)}}
	if matched, leftover = matchUnanswered(rows, attempts); len(matched) != 0 || len(leftover) != 1 {
		t.Fatalf("matched %v, left %v; want the session after every attempt left over", matched, leftover)
	}
}
