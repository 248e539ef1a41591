package postgres

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tally-dev/tally/persistence"
)

// admitSQL is the fence and the count of one admission, in one statement.
//
//   - fence: FOR SHARE holds off a concurrent plan or anchor change
//     (PutUser) until this transaction commits, so the version checked is
//     the one the admission commits under. Admissions share the lock.
//   - counted: the first admission of a period creates the usage row, later
//     ones increment it. ON CONFLICT evaluates the limits against the latest
//     committed row and locks it, whatever this statement's snapshot saw:
//     that is what makes the limits exact across transactions. A limit that
//     admits nothing (0) creates no row.
//   - created: the session row, only if it was counted.
const admitSQL = `
WITH fence AS (
    SELECT version FROM users WHERE id = @user_id FOR SHARE
),
counted AS (
    INSERT INTO usage AS u (user_id, period_start, period_end, sessions, seconds, version)
    SELECT @user_id::text, @period_start::timestamptz, @period_end::timestamptz, 1, 0, 1
    FROM fence
    WHERE fence.version = @user_version::bigint
      AND (@max_sessions::bigint < 0 OR @max_sessions::bigint > 0)
      AND (@max_seconds::bigint < 0 OR @max_seconds::bigint > 0)
    ON CONFLICT (user_id, period_start) DO UPDATE
        SET sessions = u.sessions + 1,
            version  = u.version + 1
        WHERE (@max_sessions::bigint < 0 OR u.sessions < @max_sessions::bigint)
          AND (@max_seconds::bigint < 0 OR u.seconds < @max_seconds::bigint)
    RETURNING u.sessions AS seq
),
created AS (
    INSERT INTO sessions (id, user_id, title, language, stt_provider, status,
                          duration_seconds, period_start, seq, max_sessions, created_at, updated_at)
    SELECT @id::text, @user_id::text, @title::text, @language::text, @stt_provider::text,
           'created', NULL, @period_start::timestamptz, counted.seq, @max_sessions::bigint,
           @created_at::timestamptz, @created_at::timestamptz
    FROM counted
)
SELECT (SELECT version FROM fence) AS user_version,
       EXISTS (SELECT FROM counted) AS admitted`

// countersSQL reads the usage row after admitSQL. It is a statement of its
// own because, in READ COMMITTED, it then sees the latest committed row
// (which this transaction has locked if it exists), where a read inside
// admitSQL would see that statement's older snapshot.
const countersSQL = `SELECT sessions, seconds, version FROM usage WHERE user_id = $1 AND period_start = $2`

// Admit runs every request in one transaction, its statements pipelined in
// one round trip between BEGIN and COMMIT, and commits before returning. Requests run in lock order — by user, then
// period, keeping the callers' order within a user — so that concurrent
// batches lock rows in the same order and cannot deadlock; results are in
// request order. A rejected request changes nothing. Counters are zero for
// StaleUser and UnknownUser, whose period may not even be the right one.
func (s *Store) Admit(ctx context.Context, reqs []persistence.AdmitRequest) ([]persistence.AdmitResult, error) {
	results := make([]persistence.AdmitResult, len(reqs))
	if len(reqs) == 0 {
		return results, nil
	}
	order := lockOrder(reqs)
	err := s.inTx(ctx, "admit", func(tx pgx.Tx) error {
		batch := &pgx.Batch{}
		for _, i := range order {
			r := reqs[i]
			periodStart := ts(r.Session.PeriodStart)
			batch.Queue(admitSQL, pgx.NamedArgs{
				"user_id":      r.Session.UserID,
				"user_version": r.UserVersion,
				"period_start": periodStart,
				"period_end":   ts(r.PeriodEnd),
				"max_sessions": int64(r.MaxSessions),
				"max_seconds":  int64(r.MaxSeconds),
				"id":           r.Session.ID,
				"title":        r.Session.Title,
				"language":     r.Session.Language,
				"stt_provider": r.Session.STTProvider,
				"created_at":   ts(r.Session.CreatedAt),
			})
			batch.Queue(countersSQL, r.Session.UserID, periodStart)
		}
		br := tx.SendBatch(ctx, batch)
		for _, i := range order {
			var (
				userVersion *int64
				admitted    bool
			)
			if err := br.QueryRow().Scan(&userVersion, &admitted); err != nil {
				br.Close()
				return err
			}
			var c persistence.Counters
			err := br.QueryRow().Scan(&c.Sessions, &c.Seconds, &c.Version)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				br.Close()
				return err
			}
			switch {
			case userVersion == nil:
				results[i] = persistence.AdmitResult{Outcome: persistence.UnknownUser}
			case *userVersion != reqs[i].UserVersion:
				results[i] = persistence.AdmitResult{Outcome: persistence.StaleUser}
			case admitted:
				results[i] = persistence.AdmitResult{Outcome: persistence.Admitted, Counters: c}
			default:
				results[i] = persistence.AdmitResult{Outcome: persistence.OverLimit, Counters: c}
			}
		}
		return br.Close()
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

// lockOrder returns the indexes of reqs sorted by user and period, stable
// so that one user's requests keep their order (each sees the previous
// one's increment).
func lockOrder(reqs []persistence.AdmitRequest) []int {
	order := make([]int, len(reqs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		ra, rb := reqs[a].Session, reqs[b].Session
		return cmp.Or(strings.Compare(ra.UserID, rb.UserID), ra.PeriodStart.Compare(rb.PeriodStart))
	})
	return order
}
