package actors_test

import (
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/tally-dev/tally/actors"
	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/persistence"
)

func newAlertingService(t *testing.T, store persistence.Store, percents []int) *actors.Service {
	t.Helper()
	svc, err := actors.New(actors.Options{Store: store, Catalog: domain.DefaultCatalog(), IdleTimeout: time.Minute, Shards: 4,
		RequestTimeout: 30 * time.Second, Logger: slog.New(slog.DiscardHandler), AlertPercents: percents})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	return svc
}

// alertKinds counts the store's alerts of a user by kind, metric and
// threshold, e.g. "usage.threshold_crossed sessions 80".
func alertKinds(t *testing.T, store persistence.Store, user string) map[string]int {
	t.Helper()
	ds, err := store.ListDeliveries(t.Context(), "", 1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, d := range ds {
		if d.UserID == user {
			got[fmt.Sprintf("%s %s %d", d.Kind, d.Metric, d.Percent)]++
		}
	}
	return got
}

func wantAlertKinds(t *testing.T, store persistence.Store, user string, want map[string]int) {
	t.Helper()
	got := alertKinds(t, store, user)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("alerts of %s: %v, want %v", user, got, want)
	}
}

// A user driven past the free plan's 10 sessions, one create at a time and
// then by creates racing each other, gets each threshold once and one
// limit-reached alert, however many creates are refused and whether the
// store or the actor's memory refused them.
func TestAlertsOncePerThreshold(t *testing.T) {
	store := openStore(t)
	svc := newAlertingService(t, store, []int{80, 100})
	ctx := ctxFor(t, 30*time.Second)
	for i := range 13 {
		_, err := svc.CreateSession(ctx, "solo", in, "")
		if (i < 10) != (err == nil) {
			t.Fatalf("create %d: %v", i+1, err)
		}
	}
	want := map[string]int{
		"usage.threshold_crossed sessions 80":  1,
		"usage.threshold_crossed sessions 100": 1,
		"usage.limit_reached sessions 0":       1,
	}
	wantAlertKinds(t, store, "solo", want)

	var wg sync.WaitGroup
	for range 40 {
		wg.Go(func() { _, _ = svc.CreateSession(ctx, "racer", in, "") })
	}
	wg.Wait()
	// The store's refusals are noted when the actor absorbs them: one more
	// create makes sure it has.
	if _, err := svc.CreateSession(ctx, "racer", in, ""); domain.ErrorCode(err) != domain.CodeSessionLimit {
		t.Fatalf("create past the limit: %v", err)
	}
	wantAlertKinds(t, store, "racer", want)
}

// Completions cross the minutes thresholds of the user's plan as it is at
// the completion; alerts off records nothing at all.
func TestAlertsOnCompletionAndOff(t *testing.T) {
	store := openStore(t)
	svc := newAlertingService(t, store, []int{50})
	ctx := ctxFor(t, 30*time.Second)
	s1, err := svc.CreateSession(ctx, "talker", in, "")
	if err != nil {
		t.Fatal(err)
	}
	s2, err := svc.CreateSession(ctx, "talker", in, "")
	if err != nil {
		t.Fatal(err)
	}
	// free: 120 minutes, so 50% is 3600 s.
	if _, err := svc.CompleteSession(ctx, testAdmin, s1.ID, 3599); err != nil {
		t.Fatal(err)
	}
	wantAlertKinds(t, store, "talker", map[string]int{})
	if _, err := svc.CompleteSession(ctx, testAdmin, s2.ID, 1); err != nil {
		t.Fatal(err)
	}
	wantAlertKinds(t, store, "talker", map[string]int{"usage.threshold_crossed minutes 50": 1})

	quiet := openStore(t)
	off := newAlertingService(t, quiet, nil)
	for range 12 {
		_, _ = off.CreateSession(ctx, "hushed", in, "")
	}
	wantAlertKinds(t, quiet, "hushed", map[string]int{})
}
