// Package drills proves, with real processes and real faults, that Tally
// keeps the invariants of docs/contract.md §2 while its infrastructure fails under
// load: nothing acknowledged is lost, no user is ever admitted over the
// plan's limit, a retried Idempotency-Key is counted once, an
// infrastructure failure is a 503 (never a 500, never a 403, never a
// silent admit), and the Redis counters converge on Postgres's once the
// fault is healed.
//
// Each drill (the _test.go files, and cmd/tally's kill -9 drill) runs a
// few seconds of load over real HTTP against a real Tally — in-process
// servers built with app.New, or a `tally serve` subprocess — on the
// machine's Postgres and on private redis-server, redis-sentinel and
// PostgreSQL processes that it may kill, stop or cut off (a toxiproxy in
// the path). The shared services on 5432 and 6379 are never stopped.
//
// The drills do not judge by status codes alone. Load keeps a History of
// every create and every HTTP attempt of it: a well-behaved client that
// sends an Idempotency-Key with every create and, when the outcome is
// unknown (no answer, 503, 504), retries with the same key after a short
// backoff. Once the fault is healed, Check audits the history against the
// stores:
//
//   - every acknowledged (200) session is a row in Postgres and readable
//     through the API (lost = 0);
//   - per user, sessions in Postgres ≤ the limit, and acknowledged ≤
//     sessions ≤ acknowledged + creates whose outcome stayed unknown;
//   - one key, one session: every 200 of a create carries the same id,
//     the key's stored record names it, and every session row belongs to
//     a key that was answered 200 with it or never answered (a session
//     behind a 403 is a silent admit);
//   - no 500, and only the 5xx statuses the drill allows;
//   - verify.Run finds no violation, and the Redis counters equal
//     Postgres's (no key missing, behind, ahead or mismatched) within a
//     bound;
//   - exact quota afterwards: a burst of 20 concurrent creates for a user
//     with k sessions admits exactly 10-k.
//
// Every drill logs one line for the operations table, e.g.
//
//	DRILL scenario=redis-sentinel-failover requests=1692 admitted=265 lost=0 over_limit_users=0 5xx=503:0,504:0 recovery=2.44s creates=1692 unknown=0 unknown_committed=0 lost_replies=0 no_answer=0 status_403=1427 converged=0.02s
//
// requests counts the HTTP attempts of creates during the load (retries
// included), admitted the distinct sessions acknowledged, lost those not
// found afterwards, over_limit_users the users over the limit by any count
// (history, Postgres, verify), 5xx the attempts by 5xx status, and
// recovery the time from the heal (for a Sentinel failover and a kill -9,
// which the drill heals at once, the fault itself) until the service
// answered creates definitively again and, when Redis was the fault, until
// Redis had been re-seeded from Postgres (its epoch marker renewed). Then:
// creates (logical creates, one key each), unknown (never answered
// definitively), unknown_committed (of those, admitted in Postgres),
// lost_replies (outcomes committed during an attempt that got no answer:
// the retry had to replay them), no_answer (attempts without an HTTP
// answer), status_403, and converged (the wait, after the load, until
// Redis equalled Postgres).
//
// `go test -v -run . ./drills/ ./cmd/tally/ | grep DRILL` prints the table.
//
// The non-test files hold the drill machinery — History, Client, Load,
// Check, and the fault helpers SlowCommits and WaitForCommit — exported so
// that cmd/tally's subprocess drill uses the same recorder and checker.
package drills
