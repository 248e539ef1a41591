package actors_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tally-dev/tally/actors"
	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/persistence/postgres"
)

// poisonTitle is a title Postgres refuses (SQLSTATE 22021: NUL is not a
// character of any text encoding it has). Request validation refuses it at
// the HTTP edge; these tests hand it to the actors directly, to show that
// the group commit keeps one bad row from failing the rows batched with it.
const poisonTitle = "x\x00"

// mixedBatchStore records whether a batch holding both the poison and other
// requests reached the store, so a test can tell that isolation, not luck
// in batching, kept the innocent requests apart.
type mixedBatchStore struct {
	persistence.Store
	mixed atomic.Int64
}

func (m *mixedBatchStore) Admit(ctx context.Context, reqs []persistence.AdmitRequest) ([]persistence.AdmitResult, error) {
	poisoned := 0
	for _, r := range reqs {
		if strings.ContainsRune(r.Session.Title, 0) {
			poisoned++
		}
	}
	if poisoned > 0 && poisoned < len(reqs) {
		m.mixed.Add(1)
	}
	return m.Store.Admit(ctx, reqs)
}

// runPoison drives `users` innocent users, `per` creates each, all at once,
// beside one user sending poisoned creates, and checks that every innocent
// create is decided as if the poison were absent: each user's first
// `limit` creates admitted, the rest refused for the limit, never another
// error; and the poisoner gets only validation errors and nothing counted.
//
// Whether a batch mixes the poison with innocent requests depends on
// timing; runPoisonUntilMixed repeats the round with fresh users until one
// did, so the test never passes without exercising isolation.
func runPoison(t *testing.T, svc *actors.Service, prefix string, users, per, limit int) {
	t.Helper()
	ctx := ctxFor(t, 30*time.Second)
	poisoner := prefix + "poisoner"
	if _, _, err := svc.PutUser(ctx, testAdmin, poisoner, ptr("enterprise"), nil); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var poisonWG sync.WaitGroup
	var poisonSent atomic.Int64
	for range 4 {
		poisonWG.Add(1)
		go func() {
			defer poisonWG.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := svc.CreateSession(ctxFor(t, 10*time.Second), poisoner, domain.NewSession{Title: poisonTitle, Language: "en", STTProvider: "google"}, "")
				poisonSent.Add(1)
				if code := domain.ErrorCode(err); code != domain.CodeValidation {
					t.Errorf("poisoned create: %v (code %q); want %s", err, code, domain.CodeValidation)
					return
				}
			}
		}()
	}

	var wg sync.WaitGroup
	admitted := make([]atomic.Int64, users)
	var other atomic.Int64
	for u := range users {
		for range per {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := svc.CreateSession(ctxFor(t, 20*time.Second), fmt.Sprintf("%sinnocent-%d", prefix, u), in, "")
				switch domain.ErrorCode(err) {
				case "":
					admitted[u].Add(1)
				case domain.CodeSessionLimit:
				default:
					other.Add(1)
					t.Errorf("innocent create of user %d: %v", u, err)
				}
			}()
		}
	}
	wg.Wait()
	close(stop)
	poisonWG.Wait()
	if other.Load() > 0 {
		t.Fatalf("%d of %d innocent creates failed for another reason than their limit", other.Load(), users*per)
	}
	for u := range users {
		if got := admitted[u].Load(); got != int64(min(limit, per)) {
			t.Errorf("user %d: %d admitted, want %d", u, got, min(limit, per))
		}
	}
	rep, err := svc.Usage(ctx, poisoner)
	if err != nil || rep.Usage.Sessions != 0 {
		t.Fatalf("poisoner's usage %+v (err %v): a refused row was counted", rep.Usage, err)
	}
	t.Logf("%d innocent creates over %d users beside %d poisoned ones", users*per, users, poisonSent.Load())
}

// On real Postgres: 30 users create concurrently while one user sends
// titles with NUL. Without isolation in the group commit, every create
// batched with a poisoned one fails with a 500.
func TestPoisonedRowFailsAloneOnPostgres(t *testing.T) {
	store, err := postgres.Open(context.Background(), testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	if err := store.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	ms := &mixedBatchStore{Store: store}
	svc := newService(t, ms, time.Minute)
	runPoisonUntilMixed(t, svc, &ms.mixed) // free plan: 10 of each user's 20 admitted
}

// runPoisonUntilMixed runs runPoison (30 users, 20 creates each, limit 10)
// until a batch mixed the poison with innocent requests, at most 10 times.
func runPoisonUntilMixed(t *testing.T, svc *actors.Service, mixed *atomic.Int64) {
	t.Helper()
	for round := 0; round < 10 && mixed.Load() == 0 && !t.Failed(); round++ {
		runPoison(t, svc, fmt.Sprintf("r%d-", round), 30, 20, 10)
	}
	if mixed.Load() == 0 {
		t.Fatal("no batch mixed the poison with other requests in 10 rounds: the test did not exercise isolation")
	}
}

// The same on the embedded store, which accepts NUL itself: a store that
// refuses the row is simulated by a wrapper raising ErrRequestData for any
// batch that holds it, so the split is exercised whatever the store.
type refusingStore struct{ mixedBatchStore }

func (r *refusingStore) Admit(ctx context.Context, reqs []persistence.AdmitRequest) ([]persistence.AdmitResult, error) {
	for _, q := range reqs {
		if strings.ContainsRune(q.Session.Title, 0) {
			if len(reqs) > 1 {
				r.mixed.Add(1)
			}
			return nil, &domain.Error{Code: domain.CodeValidation, Message: "invalid request",
				Err: fmt.Errorf("injected: %w", persistence.ErrRequestData)}
		}
	}
	return r.Store.Admit(ctx, reqs)
}

func TestPoisonedRowFailsAlone(t *testing.T) {
	rs := &refusingStore{mixedBatchStore{Store: openStore(t)}}
	svc := newService(t, rs, time.Minute)
	runPoisonUntilMixed(t, svc, &rs.mixed)
}

// One user's volume is bounded: past MaxUserInFlight of its requests in
// flight, the next is refused at once (a shed 503, nothing done for it),
// while other users are served; the slots come back when answers go out.
func TestUserInFlightIsBounded(t *testing.T) {
	fs := &faultyStore{Store: openStore(t)}
	svc, err := actors.New(actors.Options{Store: fs, Catalog: domain.DefaultCatalog(), IdleTimeout: time.Minute, Shards: 4,
		MaxUserInFlight: 2, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	if _, err := svc.Usage(ctxFor(t, 5*time.Second), "busy"); err != nil { // provisioned and loaded
		t.Fatal(err)
	}
	fs.hang.Store(true) // admissions wait in the store until their deadline
	// Five at once: two take the slots and wait out their deadline in the
	// store; the other three are refused at once.
	results := make(chan error, 5)
	for range 5 {
		go func() {
			_, err := svc.CreateSession(ctxFor(t, 3*time.Second), "busy", in, "")
			results <- err
		}()
	}
	var shed, held int
	for range 3 { // the shed ones come first, long before the deadline
		err := <-results
		if !errors.Is(err, domain.ErrShed) || domain.ErrorCode(err) != domain.CodeUnavailable {
			t.Fatalf("create over the user's bound: %v; want a shed %s", err, domain.CodeUnavailable)
		}
		shed++
	}
	if _, err := svc.Usage(ctxFor(t, 5*time.Second), "other"); err != nil {
		t.Fatalf("another user was not served while one was at its bound: %v", err)
	}
	for range 2 {
		err := <-results
		if errors.Is(err, domain.ErrShed) || domain.ErrorCode(err) != domain.CodeUnavailable {
			t.Fatalf("held create: %v; want a 503 from the store's deadline, not a shed", err)
		}
		held++
	}
	t.Logf("%d shed at once, %d held until their deadline", shed, held)
	fs.hang.Store(false)
	if _, err := svc.CreateSession(ctxFor(t, 5*time.Second), "busy", in, ""); err != nil {
		t.Fatalf("after the held requests were answered: %v", err)
	}
}
