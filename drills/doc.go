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
// every create and every HTTP attempt of it: a client that, when the
// outcome is unknown (no answer, 503, 504), retries after a short backoff.
// Half of the creates, in spells of 50 ms that alternate with keyed ones,
// carry no Idempotency-Key, so that the key-less path (refusals from
// memory, the group commit's set-based batch, a lost COMMIT reply looked
// up by the session id) is under the fault too; a keyed create's retries
// carry its key. Without a key, each attempt that got no definite answer
// may or may not have admitted a session of its own (docs/contract.md §4,
// Idempotency-Key). Once the fault is healed, Check audits the history
// against the stores:
//
//   - every acknowledged (200) session is a row in Postgres and readable
//     through the API (lost = 0), and no two creates were told the same
//     session;
//   - per user, sessions in Postgres ≤ the limit, and acknowledged ≤
//     sessions ≤ acknowledged + keys whose outcome stayed unknown +
//     key-less attempts without a definite answer;
//   - one key, one session: every 200 of a create carries the same id,
//     the key's stored record names it, and every session row belongs to
//     a key that was answered 200 with it or never answered (a session
//     behind a 403 is a silent admit);
//   - a session without a key record was acknowledged to a key-less
//     create, or is accounted for by a distinct key-less attempt of its
//     user that got no definite answer and was in flight when the session
//     was created (anything else is a silent admit);
//   - no 500, and only the 5xx statuses the drill allows;
//   - verify.Run finds no violation, and the Redis counters equal
//     Postgres's (no key missing, behind, ahead or mismatched) within a
//     bound;
//   - exact quota afterwards: a burst of 20 concurrent creates for a user
//     with k sessions admits exactly 10-k.
//
// Every drill logs one line for the operations table, e.g.
//
//	DRILL scenario=redis-sentinel-failover requests=1692 admitted=265 lost=0 over_limit_users=0 5xx=503:0,504:0 recovery=2.44s creates=1692 keyless=846 unknown=0 unknown_committed=0 lost_replies=0 keyless_lost_replies=0 no_answer=0 status_403=1427 converged=0.02s
//
// requests counts the HTTP attempts of creates during the load (retries
// included), admitted the distinct sessions acknowledged, lost those not
// found afterwards, over_limit_users the users over the limit by any count
// (history, Postgres, verify), 5xx the attempts by 5xx status, and
// recovery the time from the heal (for a Sentinel failover and a kill -9,
// which the drill heals at once, the fault itself) until the service
// answered creates definitively again and, when Redis was the fault, until
// Redis had been re-seeded from Postgres (its epoch marker renewed). Then:
// creates (logical creates, one key each or none), keyless (of those,
// without a key), unknown (never answered definitively), unknown_committed
// (sessions Postgres holds for those), lost_replies (outcomes committed
// during an attempt that got no definite answer: a key's, which its retry
// had to replay, or a key-less attempt's session), keyless_lost_replies
// (of those, the key-less ones), no_answer (attempts without an HTTP
// answer), status_403, and converged (the wait, after the load, until
// Redis equalled Postgres).
//
// `go test -v -run . ./drills/ ./cmd/tally/ | grep DRILL` prints the table.
//
// The cluster drills (cluster_test.go; their harness is
// cluster_harness_test.go) put a cluster under the same load and the same
// Check: a three-member etcd (testenv.StartEtcd), three `tally serve`
// subprocesses built from this tree with a 2 s ownership lease, a fresh
// database on the machine's Postgres, Redis under a private prefix, users
// on the student plan (Check.Limit 100), creates sent to the nodes in turn.
// The faults: a node killed with SIGKILL; a node stopped with SIGSTOP past
// its lease (the zombie owner); a fourth node joining and leaving (SIGTERM);
// the etcd leader killed, then every etcd member down for 10 s; a Redis
// Sentinel failover. Beyond Check and `tally verify` (run as a process),
// each asserts what a cluster owes its clients: no status but 200, 403 and
// 503 (X-Tally-Node names who decided each); a 503 only for a user of a
// partition that moved (domain.PartitionOf, the claims read from etcd) and
// only for a request sent within lease TTL + 2 s of the fault; no 503 at
// all for the join and leave and for etcd's faults; every answer within the
// request deadline. Each prints a CLUSTER DRILL block of figures:
// `go test -v -run TestCluster ./drills/`.
//
// The webhooks drill (webhooks_test.go) kills a `tally serve` subprocess
// with usage alerts on (docs/alerts.md) while it delivers them to a slow
// receiver of the test's, restarts it on the same database, and checks
// that every alert row is delivered (at least once, each signature
// verified by the Standard Webhooks library), each user's alerts in order
// and once each after deduplication by webhook-id. It prints a WEBHOOKS
// DRILL line: alerts, deliveries, duplicates and the time to drain.
//
// The non-test files hold the drill machinery — History, Client, Load,
// Check, and the fault helpers SlowCommits and WaitForCommit — exported so
// that cmd/tally's subprocess drill uses the same recorder and checker.
package drills
