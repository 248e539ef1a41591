package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/persistence"
	"github.com/tally-dev/tally/persistence/postgres"
)

// benchStore opens a store on a fresh database with users u0..u(n-1).
func benchStore(b *testing.B, users int) (*postgres.Store, []domain.User) {
	b.Helper()
	ctx := context.Background()
	s, err := postgres.Open(ctx, testenv.PostgresURL(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(s.Close)
	if err := s.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	out := make([]domain.User, users)
	for i := range out {
		if out[i], err = s.EnsureUser(ctx, fmt.Sprintf("u%d", i), now); err != nil {
			b.Fatal(err)
		}
	}
	return s, out
}

func admitRequest(u domain.User, now time.Time) persistence.AdmitRequest {
	p := u.Period(now)
	return persistence.AdmitRequest{
		Session: domain.Session{ID: uuid.Must(uuid.NewV7()).String(), UserID: u.ID, Title: "Weekly sync",
			Language: "en-US", STTProvider: "google", Status: domain.StatusCreated, PeriodStart: p.Start, CreatedAt: now, UpdatedAt: now},
		UserVersion: u.Version, PeriodEnd: p.End, PlanName: "enterprise",
		MaxSessions: domain.Unlimited, MaxSeconds: domain.Unlimited,
	}
}

// BenchmarkAdmitBatch measures one group-commit transaction: ns/op is per
// batch, and the rows/s metric is what one writer can commit. The fenced
// cases are a cluster node's batches (every partition claimed, each
// request under its partition's epoch: epochs.go); the others are
// single-node batches, which must not pay for the fence.
func BenchmarkAdmitBatch(b *testing.B) {
	// alerting: a plan of a million sessions with alerts at 80% and
	// 100%, which the benchmark never reaches: what alerts on costs the
	// admissions that cross nothing (nearly all of them).
	alerting := domain.NewAlertPlan(domain.Plan{Name: "big", MaxSessions: 1_000_000, MaxTotalMinutes: domain.Unlimited}, []int{80, 100})
	for _, bc := range []struct {
		name        string
		users, size int
		fenced      bool
		alerts      bool
	}{
		{"many-users/1", 1000, 1, false, false}, {"many-users/32", 1000, 32, false, false}, {"many-users/128", 1000, 128, false, false},
		{"alerts/many-users/32", 1000, 32, false, true}, {"alerts/many-users/128", 1000, 128, false, true},
		{"one-user/32", 1, 32, false, false}, {"one-user/128", 1, 128, false, false},
		{"fenced/many-users/32", 1000, 32, true, false}, {"fenced/many-users/128", 1000, 128, true, false},
		{"fenced/one-user/128", 1, 128, true, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s, users := benchStore(b, bc.users)
			ctx := context.Background()
			var epoch int64
			if bc.fenced {
				epoch = 1
				for p := range domain.Partitions {
					if err := s.ClaimPartition(ctx, domain.Partition(p), epoch); err != nil {
						b.Fatal(err)
					}
				}
			}
			now := time.Now().UTC().Truncate(time.Microsecond)
			next := 0
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				reqs := make([]persistence.AdmitRequest, bc.size)
				for j := range reqs {
					reqs[j] = admitRequest(users[next%len(users)], now)
					reqs[j].Epoch = epoch
					if bc.alerts {
						reqs[j].MaxSessions, reqs[j].Alerts = alerting.Plan.MaxSessions, alerting
					}
					next++
				}
				res, err := s.Admit(ctx, reqs)
				if err != nil {
					b.Fatal(err)
				}
				if res[0].Outcome != persistence.Admitted {
					b.Fatalf("outcome %v", res[0].Outcome)
				}
			}
			b.ReportMetric(float64(b.N*bc.size)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

// BenchmarkLoadUsers measures what cold user actors read before their
// first decision, for 256 of 10 000 known users, each with usage: one by one
// (EnsureUser then LoadUsage, two round trips per user, as each actor did
// alone) and batched (one EnsureUsersUsage call, one round trip). ns/op is
// per 256 users.
func BenchmarkLoadUsers(b *testing.B) {
	const total, n = 10000, 256
	ctx := context.Background()
	s, _ := benchStore(b, 0)
	now := time.Now().UTC().Truncate(time.Microsecond)
	var users []domain.User
	for first := 0; first < total; first += n {
		loads := make([]persistence.UserLoad, 0, n)
		for i := first; i < min(first+n, total); i++ {
			loads = append(loads, persistence.UserLoad{ID: fmt.Sprintf("u%d", i), Now: now})
		}
		got, err := s.EnsureUsersUsage(ctx, loads)
		if err != nil {
			b.Fatal(err)
		}
		reqs := make([]persistence.AdmitRequest, len(got))
		for i, l := range got {
			users = append(users, l.User)
			reqs[i] = admitRequest(l.User, now)
		}
		if _, err := s.Admit(ctx, reqs); err != nil {
			b.Fatal(err)
		}
	}
	// Spread over the table, as the users active after a restart are.
	picked := make([]domain.User, n)
	for i := range picked {
		picked[i] = users[i*(total/n)]
	}
	b.Run("one-by-one", func(b *testing.B) {
		for b.Loop() {
			for _, u := range picked {
				got, err := s.EnsureUser(ctx, u.ID, now)
				if err != nil {
					b.Fatal(err)
				}
				c, err := s.LoadUsage(ctx, u.ID, got.Period(now).Start)
				if err != nil || c.Sessions != 1 {
					b.Fatalf("%+v %v", c, err)
				}
			}
		}
		b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "users/s")
	})
	b.Run("batched", func(b *testing.B) {
		loads := make([]persistence.UserLoad, n)
		for i, u := range picked {
			loads[i] = persistence.UserLoad{ID: u.ID, Now: now}
		}
		for b.Loop() {
			got, err := s.EnsureUsersUsage(ctx, loads)
			if err != nil || got[n-1].Counters.Sessions != 1 {
				b.Fatalf("%+v %v", got[n-1], err)
			}
		}
		b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "users/s")
	})
}
