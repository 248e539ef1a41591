package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/persistence/postgres"
)

// keyedRequest asks to admit session id for u now, with an Idempotency-Key.
func keyedRequest(u domain.User, id, key string, now time.Time, maxSessions domain.Limit) persistence.AdmitRequest {
	p := u.Period(now)
	return persistence.AdmitRequest{
		Session: domain.Session{ID: id, UserID: u.ID, Title: "t", Language: "en", STTProvider: "google",
			PeriodStart: p.Start, CreatedAt: now},
		UserVersion: u.Version, PeriodEnd: p.End, PlanName: u.Plan,
		MaxSessions: maxSessions, MaxSeconds: domain.Unlimited,
		IdempotencyKey: key, RequestHash: "hash-" + key,
	}
}

type admitted struct {
	res []persistence.AdmitResult
	err error
}

func admitAsync(ctx context.Context, s *postgres.Store, reqs ...persistence.AdmitRequest) <-chan admitted {
	done := make(chan admitted, 1)
	go func() {
		res, err := s.Admit(ctx, reqs)
		done <- admitted{res, err}
	}()
	return done
}

func migratedStore(t *testing.T) (*postgres.Store, string) {
	t.Helper()
	url := testenv.PostgresURL(t)
	s := openStore(t, url)
	if err := s.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	return s, url
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestKeyedAdmitWaitsForTheKeysTransaction(t *testing.T) {
	// Another transaction (another process) has stored the key and not
	// committed yet: the admission waits for it, then replays its outcome
	// if it committed, or decides afresh if it rolled back.
	for _, commit := range []bool{true, false} {
		t.Run(fmt.Sprintf("commit=%t", commit), func(t *testing.T) {
			s, url := migratedStore(t)
			now := time.Now()
			u, err := s.EnsureUser(t.Context(), "alice", now)
			if err != nil {
				t.Fatal(err)
			}
			admin := connect(t, url)
			tx, err := admin.Begin(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(context.Background())
			if _, err := tx.Exec(t.Context(), `
				INSERT INTO idempotency_keys (user_id, key, request_hash, outcome, session_id, created_at)
				VALUES ($1, 'k', 'hash-k', 'admitted', 'first', $2)`, u.ID, now); err != nil {
				t.Fatal(err)
			}
			if _, err := s.LookupIdempotencyKey(t.Context(), u.ID, "k"); domain.ErrorCode(err) != domain.CodeNotFound {
				t.Fatalf("LookupIdempotencyKey of an uncommitted key: %v, want not found", err)
			}

			done := admitAsync(t.Context(), s, keyedRequest(u, "second", "k", now, 10))
			waitForLockWaiter(t, admin)
			if commit {
				err = tx.Commit(t.Context())
			} else {
				err = tx.Rollback(t.Context())
			}
			if err != nil {
				t.Fatal(err)
			}
			r := <-done
			if r.err != nil {
				t.Fatalf("Admit: %v", r.err)
			}
			c, err := s.LoadUsage(t.Context(), u.ID, u.Period(now).Start)
			if err != nil {
				t.Fatal(err)
			}
			if commit {
				if r.res[0].Outcome != persistence.Replayed || r.res[0].Record == nil || r.res[0].Record.SessionID != "first" {
					t.Fatalf("Admit after the key's transaction committed: %+v, want a replay of session first", r.res[0])
				}
				if _, err := s.GetSession(t.Context(), "second"); domain.ErrorCode(err) != domain.CodeNotFound {
					t.Fatalf("a replayed admission created its session: %v", err)
				}
				if c.Sessions != 0 {
					t.Fatalf("a replayed admission counted: %+v", c)
				}
				return
			}
			if r.res[0].Outcome != persistence.Admitted || c.Sessions != 1 {
				t.Fatalf("Admit after the key's transaction rolled back: %+v, usage %+v; want admitted and counted", r.res[0], c)
			}
			rec, err := s.LookupIdempotencyKey(t.Context(), u.ID, "k")
			if err != nil || !rec.Admitted || rec.SessionID != "second" {
				t.Fatalf("LookupIdempotencyKey = %+v, %v; want session second", rec, err)
			}
		})
	}
}

func TestClaimedKeyIsNeverSeenPending(t *testing.T) {
	// An admission blocked after claiming its key (on the usage row, which
	// the test holds): other transactions see no key at all, and a second
	// admission with the key waits for the first, then replays it.
	s, url := migratedStore(t)
	now := time.Now()
	u, err := s.EnsureUser(t.Context(), "alice", now)
	if err != nil {
		t.Fatal(err)
	}
	period := u.Period(now)
	if _, err := s.Admit(t.Context(), []persistence.AdmitRequest{keyedRequest(u, "s0", "", now, 10)}); err != nil {
		t.Fatal(err)
	}
	admin, reader := connect(t, url), connect(t, url)
	tx, err := admin.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(t.Context(), `SELECT FROM usage WHERE user_id = $1 FOR UPDATE`, u.ID); err != nil {
		t.Fatal(err)
	}

	first := admitAsync(t.Context(), s, keyedRequest(u, "s1", "k", now, 10))
	waitForLockWaiters(t, admin, 1)
	var n int
	if err := reader.QueryRow(t.Context(), `SELECT count(*) FROM idempotency_keys`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("keys visible while the claim is in flight: %d, %v; want 0", n, err)
	}
	if _, err := s.LookupIdempotencyKey(t.Context(), u.ID, "k"); domain.ErrorCode(err) != domain.CodeNotFound {
		t.Fatalf("LookupIdempotencyKey of a claim in flight: %v, want not found", err)
	}
	second := admitAsync(t.Context(), s, keyedRequest(u, "s2", "k", now, 10))
	waitForLockWaiters(t, admin, 2)
	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}

	r1, r2 := <-first, <-second
	if r1.err != nil || r2.err != nil {
		t.Fatalf("Admit: %v, %v", r1.err, r2.err)
	}
	if r1.res[0].Outcome != persistence.Admitted || r1.res[0].Counters.Sessions != 2 {
		t.Fatalf("first: %+v, want admitted as the second session", r1.res[0])
	}
	if r2.res[0].Outcome != persistence.Replayed || r2.res[0].Record == nil || r2.res[0].Record.SessionID != "s1" {
		t.Fatalf("second: %+v, want a replay of s1", r2.res[0])
	}
	if err := reader.QueryRow(t.Context(), `SELECT count(*) FROM idempotency_keys WHERE outcome = 'pending'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("pending keys after commit: %d, %v; want 0", n, err)
	}
	if c, err := s.LoadUsage(t.Context(), u.ID, period.Start); err != nil || c.Sessions != 2 {
		t.Fatalf("LoadUsage = %+v, %v; want 2 sessions", c, err)
	}
}

func TestPruneInBatches(t *testing.T) {
	s, _ := migratedStore(t)
	s.SetPruneBatch(3)
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	u, err := s.EnsureUser(t.Context(), "alice", now)
	if err != nil {
		t.Fatal(err)
	}
	var reqs []persistence.AdmitRequest
	for i := range 10 {
		reqs = append(reqs, keyedRequest(u, fmt.Sprintf("s%d", i), fmt.Sprintf("k%d", i), now.Add(time.Duration(i)*time.Second), -1))
	}
	if _, err := s.Admit(t.Context(), reqs); err != nil {
		t.Fatal(err)
	}
	// 7 keys: batches of 3, 3 and 1.
	if n, err := s.PruneIdempotencyKeys(t.Context(), now.Add(7*time.Second)); err != nil || n != 7 {
		t.Fatalf("PruneIdempotencyKeys = %d, %v; want 7", n, err)
	}
	// 3 keys: a full batch, then an empty one.
	if n, err := s.PruneIdempotencyKeys(t.Context(), now.Add(time.Hour)); err != nil || n != 3 {
		t.Fatalf("PruneIdempotencyKeys = %d, %v; want 3", n, err)
	}
	for i := range 10 {
		if _, err := s.LookupIdempotencyKey(t.Context(), u.ID, fmt.Sprintf("k%d", i)); domain.ErrorCode(err) != domain.CodeNotFound {
			t.Fatalf("k%d after pruning: %v", i, err)
		}
	}
}

func TestPruneSkipsLockedKeys(t *testing.T) {
	// A key held by a transaction (as an admission replaying it holds it)
	// is skipped, not waited for, and pruned by a later call.
	s, url := migratedStore(t)
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	u, err := s.EnsureUser(t.Context(), "alice", now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Admit(t.Context(), []persistence.AdmitRequest{
		keyedRequest(u, "s0", "k0", now, -1), keyedRequest(u, "s1", "k1", now, -1),
	}); err != nil {
		t.Fatal(err)
	}
	admin := connect(t, url)
	tx, err := admin.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(t.Context(), `SELECT FROM idempotency_keys WHERE key = 'k0' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if n, err := s.PruneIdempotencyKeys(ctx, now.Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("PruneIdempotencyKeys with k0 locked = %d, %v; want 1", n, err)
	}
	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PruneIdempotencyKeys(t.Context(), now.Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("PruneIdempotencyKeys after the lock = %d, %v; want 1", n, err)
	}
}
