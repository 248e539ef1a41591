package actors_test

import (
	"errors"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
)

// The reads cluster routing makes in the shared store (lookups.go): a
// second Service on the same store stands for another node.
func TestLookupsForClusterRouting(t *testing.T) {
	store := openStore(t)
	owner := newService(t, store, time.Minute)
	other := newService(t, store, time.Minute)
	ctx := ctxFor(t, 20*time.Second)

	// A session's user, by its id.
	s, err := owner.CreateSession(ctx, "look", in, "")
	if err != nil {
		t.Fatal(err)
	}
	if u, err := other.SessionUser(ctx, s.ID); err != nil || u != "look" {
		t.Fatalf("SessionUser: %q %v", u, err)
	}
	if _, err := other.SessionUser(ctx, "no-such-session"); domain.ErrorCode(err) != domain.CodeNotFound {
		t.Fatalf("SessionUser of nothing: %v", err)
	}

	// A create with an id chosen by the forwarding node is stored under
	// it, and found by it — for its user only.
	chosen := in
	chosen.ID = "0190b6a4-6d1e-7b8e-9c39-5d2b7a3f1e20"
	s, err = owner.CreateSession(ctx, "look", chosen, "")
	if err != nil || s.ID != chosen.ID {
		t.Fatalf("create with a chosen id: %+v %v", s, err)
	}
	if got, err := other.CreateOutcome(ctx, "look", chosen, ""); err != nil || got.ID != chosen.ID {
		t.Fatalf("by id: %+v %v", got, err)
	}
	if _, err := other.CreateOutcome(ctx, "someone-else", chosen, ""); domain.ErrorCode(err) != domain.CodeNotFound {
		t.Fatalf("by id, another user: %v", err)
	}
	unsent := in
	unsent.ID = "0190b6a4-6d1e-7b8e-9c39-5d2b7a3f1e21"
	if _, err := other.CreateOutcome(ctx, "look", unsent, ""); domain.ErrorCode(err) != domain.CodeNotFound {
		t.Fatalf("by id, never created: %v", err)
	}
	if _, err := other.CreateOutcome(ctx, "look", in, ""); domain.ErrorCode(err) != domain.CodeNotFound {
		t.Fatalf("neither key nor id: %v", err)
	}

	// By key: the session, 409 for another body, nothing for a new key.
	k, err := owner.CreateSession(ctx, "look", in, "k1")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := other.CreateOutcome(ctx, "look", in, "k1"); err != nil || got.ID != k.ID {
		t.Fatalf("by key: %+v %v, want %s", got, err, k.ID)
	}
	body := in
	body.Title = "another body"
	if _, err := other.CreateOutcome(ctx, "look", body, "k1"); domain.ErrorCode(err) != domain.CodeIdempotencyConflict {
		t.Fatalf("by key, another body: %v", err)
	}
	if _, err := other.CreateOutcome(ctx, "look", in, "k-new"); domain.ErrorCode(err) != domain.CodeNotFound {
		t.Fatalf("by key, never used: %v", err)
	}

	// A keyed rejection is found as the same rejection.
	for i := 3; i < 10; i++ {
		if _, err := owner.CreateSession(ctx, "look", in, ""); err != nil {
			t.Fatal(err)
		}
	}
	_, refused := owner.CreateSession(ctx, "look", in, "k-full")
	var le, found *domain.LimitExceededError
	if !errors.As(refused, &le) {
		t.Fatalf("at the limit: %v", refused)
	}
	if _, err := other.CreateOutcome(ctx, "look", in, "k-full"); !errors.As(err, &found) || *found != *le {
		t.Fatalf("by key, a rejection: %v, want %v", err, le)
	}
}
