// Package mutants is how we know the tests test (`make mutants`): a
// curated list of mutations, each breaking one invariant of
// docs/contract.md the way a plausible bug would, each applied in a scratch
// copy of the repository and run against the packages whose tests should
// catch it. A mutation whose tests still pass "survived": some invariant
// has no test that fails when it breaks. The run fails on any survivor, on
// a mutation that no longer applies (its code moved: update the list with
// the code) and on one that does not compile.
//
// It is not part of `make test` (minutes, not seconds); run it before
// claiming a change to an invariant's code or tests is done.
package mutants

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Mutant is one deliberate bug.
type Mutant struct {
	Name      string   // short, unique
	Invariant string   // what it breaks, as docs/contract.md names it
	File      string   // relative to the repository root
	From, To  string   // From must occur exactly once in File
	Packages  []string // the packages whose tests must catch it
	Run       string   // -run regexp narrowing those tests; "" runs them all
}

// List is the curated list. Each entry names the invariant it breaks;
// docs/testing.md explains how to add one.
var List = []Mutant{
	{Name: "bulk-fence", Invariant: "I1 never over-admit: the group-commit UPDATE grants every request",
		File: "persistence/postgres/admit_bulk.go",
		From: "THEN LEAST(g.n, GREATEST(g.session_ceiling - us.sessions, 0))", To: "THEN g.n",
		Packages: []string{"./persistence/postgres"}},
	{Name: "keyed-fence", Invariant: "I1 never over-admit: the per-request statement counts past the limit",
		File: "persistence/postgres/admit.go",
		From: "WHERE u.sessions < @session_ceiling::bigint", To: "WHERE u.sessions <= @session_ceiling::bigint",
		Packages: []string{"./persistence/postgres"}},
	{Name: "embedded-fence", Invariant: "I1 never over-admit: the embedded store counts past the limit",
		File: "persistence/sqlite/admit.go",
		From: "AND sessions < :session_ceiling", To: "AND sessions <= :session_ceiling",
		Packages: []string{"./persistence/sqlite"}},
	{Name: "decision-off-by-one", Invariant: "I1 never over-admit: the domain decision admits one too many",
		File: "domain/plan.go",
		From: "func (l Limit) Allows(used int64) bool { return used < l.Ceiling() }", To: "func (l Limit) Allows(used int64) bool { return used <= l.Ceiling() }",
		Packages: []string{"./domain", "./persistence/storetest"}},
	{Name: "period-before-anchor", Invariant: "billing periods: a clock behind the anchor gets a phantom period with a fresh quota",
		File: "domain/user.go",
		From: "if now.Before(u.BillingAnchor) {", To: "if false && now.Before(u.BillingAnchor) {",
		Packages: []string{"./domain"}},
	{Name: "period-month-clamp", Invariant: "billing periods: the day is not clamped to the month's end",
		File: "domain/period.go",
		From: "if last := daysIn(ty, tm); d > last {", To: "if last := daysIn(ty, tm); false && d > last {",
		Packages: []string{"./domain"}},
	{Name: "epoch-fence", Invariant: "I1 never over-admit (cluster): a node that lost the user's partition still admits after the new owner's claim (the epoch check removed from the group-commit SQL)",
		File: "persistence/postgres/admit_bulk.go",
		From: "const bulkEpochCheck = `(SELECT e.epoch FROM partition_epochs e WHERE e.partition = g.partition) = g.epoch`", To: "const bulkEpochCheck = `true`",
		Packages: []string{"./persistence/postgres"}, Run: "Fence|Claim"},
	{Name: "keyed-epoch-fence", Invariant: "I1 never over-admit (cluster): a keyed admission of a moved partition is decided instead of fenced off",
		File: "persistence/postgres/admit.go",
		From: "if stored[int32(domain.PartitionOf(r.Session.UserID))] != r.Epoch {", To: "if stored[int32(domain.PartitionOf(r.Session.UserID))] < 0 {",
		Packages: []string{"./persistence/postgres"}, Run: "Fence|Claim"},
	{Name: "epoch-no-reload", Invariant: "I1 never over-admit (cluster): a user's actor decides on the state it held before its partition moved away and back",
		File: "actors/ownership.go",
		From: "a.forget() // reload under the new epoch", To: "// no reload",
		Packages: []string{"./actors"}, Run: "Epoch|Zombie|Release|NotOwner"},
	{Name: "board-ignores-epoch", Invariant: "a refusal posted on the reject board outlives the epoch it was decided under (a move and back is never seen)",
		File: "actors/service.go",
		From: "(s.parts == nil || epoch == s.parts.epoch(domain.PartitionOf(userID)))", To: "(s.parts == nil || epoch >= 0)",
		Packages: []string{"./actors"}, Run: "Epoch|Zombie|Release|NotOwner"},
	{Name: "passivation-buffering", Invariant: "I2 nothing acknowledged is lost: a message for a stopping actor is sent to it instead of held",
		File: "actors/shard.go",
		From: "s.pending[id] = append(s.pending[id], m)", To: "ctx.Send(c.pid, m)",
		Packages: []string{"./actors"}, Run: "TestPassivation|TestRequestBehindPassivation"},
	{Name: "route-not-sealed", Invariant: "I2 nothing acknowledged is lost: an actor is passivated while a request is being sent straight to it",
		File: "actors/route.go",
		From: "func (r *route) seal() bool { return r.senders.CompareAndSwap(0, -1) }", To: "func (r *route) seal() bool { r.senders.Store(-1); return true }",
		Packages: []string{"./actors"}, Run: "TestRouteInUse|TestPassivation|TestRequestBehindPassivation"},
	{Name: "settled-no-wake", Invariant: "I2 nothing acknowledged is lost: the actor is not woken when the writer answers a reservation itself (creates parked behind it are never decided again)",
		File: "actors/settled.go",
		From: "wakeUp = len(l.done) == 0", To: "wakeUp = false",
		Packages: []string{"./actors"}, Run: "TestParkedCreatesWake|TestPassivation|TestFailedWrite"},
	{Name: "answer-before-commit", Invariant: "I2 nothing acknowledged is lost: an admission whose commit failed is acknowledged",
		File: "actors/admit.go",
		From: "e.m.answer(a.resolveUnknown(e.m, e.req, d.err))", To: "e.m.answer(&reply{session: e.req.Session})",
		Packages: []string{"./actors"}},
	{Name: "replay-counts-again", Invariant: "I5 idempotency: a stored key's retry is counted again",
		File: "persistence/postgres/admit.go",
		From: "WHERE user_id = @user_id AND key = @key AND outcome = 'pending')", To: "WHERE user_id = @user_id AND key = @key)",
		Packages: []string{"./persistence/postgres"}},
	{Name: "replay-ignores-body", Invariant: "I5 idempotency: the same key with another body replays instead of 409",
		File: "actors/admit.go",
		From: "if rec.RequestHash != req.RequestHash {", To: "if false && rec.RequestHash != req.RequestHash {",
		Packages: []string{"./actors"}, Run: "Idempotency"},
	{Name: "redis-cas", Invariant: "I6 Redis is a cache: an older counter overwrites a newer one",
		File: "persistence/rediscache/cache.go",
		From: "if cur and tonumber(cur) >= tonumber(ARGV[b + 3]) then", To: "if false then",
		Packages: []string{"./persistence/rediscache"}},
	{Name: "limit-is-500", Invariant: "I4 a limit is a 403, never a 500",
		File: "transport/errors.go",
		From: "domain.CodeSessionLimit:        http.StatusForbidden,", To: "domain.CodeSessionLimit:        http.StatusInternalServerError,",
		Packages: []string{"./transport"}},
	{Name: "freshness-rule", Invariant: "a refusal from memory outlives the store's confirmation (an upgrade elsewhere is never seen)",
		File: "actors/admit.go",
		From: "if now.Sub(a.confirmedAt) > rejectFreshness {", To: "if false && now.Sub(a.confirmedAt) > rejectFreshness {",
		Packages: []string{"./actors"}},
	{Name: "verify-over-limit", Invariant: "the audit (`tally verify`) misses a session over its limit",
		File: "tools/verify/source.go",
		From: "count(*) FILTER (WHERE max_sessions >= 0 AND seq > max_sessions) AS over_n", To: "count(*) FILTER (WHERE max_sessions >= 0 AND seq > max_sessions + 1) AS over_n",
		Packages: []string{"./tools/verify"}},
	{Name: "verify-epoch-order", Invariant: "the audit (`tally verify`) misses a session admitted under an epoch a newer owner had replaced",
		File: "tools/verify/epochs.go",
		From: "WHERE epoch < earlier", To: "WHERE epoch < earlier - 1",
		Packages: []string{"./tools/verify"}, Run: "TestStoreCorruptionsAreReported"},
	{Name: "user-event-apart", Invariant: "audit trail: a user change's event is written in a transaction of its own, after the change committed",
		File:     "persistence/users.go",
		From:     "\t\treturn tx.InsertEvent(ctx, ev)\n\t})\n\tif err != nil {\n\t\treturn domain.User{}, err\n\t}",
		To:       "\t\treturn nil\n\t})\n\tif err == nil {\n\t\terr = s.InTx(ctx, \"record event\", func(tx UserTx) error { return tx.InsertEvent(ctx, ev) })\n\t}\n\tif err != nil {\n\t\treturn domain.User{}, err\n\t}",
		Packages: []string{"./persistence/sqlite", "./persistence/postgres"}, Run: "TestStore/ChangeWithoutActor"},
	{Name: "session-event-apart", Invariant: "audit trail: a session change's event is written in a transaction of its own, after the change committed",
		File:     "persistence/sessions.go",
		From:     "\t\treturn tx.InsertEvent(ctx, ev)\n\t})\n\tif err != nil {",
		To:       "\t\treturn nil\n\t})\n\tif err == nil && ev.Kind != \"\" {\n\t\terr = s.InTx(ctx, \"record event\", func(tx SessionTx) error { return tx.InsertEvent(ctx, ev) })\n\t}\n\tif err != nil {",
		Packages: []string{"./persistence/sqlite", "./persistence/postgres"}, Run: "TestStore/ChangeWithoutActor"},
	{Name: "verify-missing-event", Invariant: "the audit (`tally verify`) misses an admin change without its event",
		File: "tools/verify/events.go",
		From: "if u.events != want || u.distinct != want || (want > 0 && (u.lo != u.base+1 || u.hi != u.version)) {", To: "if false && (u.events != want || u.distinct != want || (want > 0 && (u.lo != u.base+1 || u.hi != u.version))) {",
		Packages: []string{"./tools/verify"}, Run: "TestStoreCorruptionsAreReported|TestTrailBegins"},
	{Name: "batch-not-isolated", Invariant: "I7 no request fails because of another: one bad row fails its whole batch",
		File: "actors/writer.go",
		From: "if len(reqs) == 1 || !errors.Is(err, persistence.ErrRequestData) || ctx.Err() != nil {", To: "if true {",
		Packages: []string{"./actors"}, Run: "Poison"},
	{Name: "text-not-checked", Invariant: "I7 no request fails because of another: text no store can keep reaches the store",
		File: "domain/text.go",
		From: "if (c < 0x20 && c != '\\t') || c == 0x7f {", To: "if false {",
		Packages: []string{"./domain", "./transport"}},
	{Name: "user-unbounded", Invariant: "I7 bounded queues: one user's requests are not bounded",
		File: "actors/gate.go",
		From: "ok := n < g.max", To: "ok := true",
		Packages: []string{"./actors"}, Run: "UserInFlight"},
	{Name: "process-unbounded", Invariant: "I7 bounded queues: the in-flight bound is never enforced",
		File: "transport/server.go",
		From: "if opts.MaxInFlight > 0 {", To: "if false && opts.MaxInFlight > 0 {",
		Packages: []string{"./transport"}},
	{Name: "slow-body-holds-slot", Invariant: "I7 slowness is one's own: a slow body holds an in-flight slot",
		File: "transport/server.go",
		From: "if r.Body != nil && r.Body != http.NoBody && r.ContentLength <= maxBodyBytes {", To: "if false {",
		Packages: []string{"./app"}, Run: "SlowClients"},
	{Name: "cluster-release-after-delete", Invariant: "cluster ownership: a hand-off deletes the claim before Release has answered what is in flight (the next owner starts while the old one still works)",
		File: "cluster/loop.go",
		From: "\t\tif hook {\n\t\t\trctx, rcancel", To: "\t\tn.unclaim(ctx, p, epoch, false)\n\t\tif hook {\n\t\t\trctx, rcancel",
		Packages: []string{"./cluster"}, Run: "TestJoin|TestGracefulLeave"},
	{Name: "cluster-lost-not-called", Invariant: "cluster ownership: a node whose claims vanished (its lease expired) does not tell the core to stop",
		File: "cluster/loop.go",
		From: "\tfor _, p := range lost {\n\t\tn.hooks.Lost(p)\n\t}\n\tif len(lost) > 0 {", To: "\tif len(lost) > 0 {",
		Packages: []string{"./cluster"}, Run: "TestZombie"},
	{Name: "cluster-pause-unchecked", Invariant: "cluster ownership: a node that was paused past its lease routes to itself until its goroutines catch up",
		File: "cluster/cluster.go",
		From: "if time.Since(n.start)-time.Duration(n.beat.Load()) <= n.suspectGap {", To: "if true || time.Since(n.start)-time.Duration(n.beat.Load()) <= n.suspectGap {",
		Packages: []string{"./cluster"}, Run: "TestZombie"},
	{Name: "cluster-outage-drops-ownership", Invariant: "cluster ownership: an etcd that does not answer is taken for an expired lease (every partition moves on an etcd outage)",
		File: "cluster/lease.go",
		From: "\tdefault:\n\t\treturn leaseUnknown, err", To: "\tdefault:\n\t\treturn leaseGone, err",
		Packages: []string{"./cluster"}, Run: "TestEtcdOutage|TestEtcdLeader"},
	{Name: "forward-resends-create", Invariant: "I5 counted once: a forwarded create whose answer was lost is sent to the owner again",
		File:     "transport/forward.go",
		From:     "\tsent, err := e.client.exchange(c.Request.Context(), base, deadline, &out, &ans)\n",
		To:       "\tsent, err := e.client.exchange(c.Request.Context(), base, deadline, &out, &ans)\n\tif err != nil && sent {\n\t\tsent, err = e.client.exchange(c.Request.Context(), base, deadline, &out, &ans)\n\t}\n",
		Packages: []string{"./transport"}, Run: "ClusterLostCreateAnswer"},
	{Name: "forward-unsigned", Invariant: "cluster mode: a client poses as a node (forwarding headers without a valid signature are honoured)",
		File: "transport/forward.go",
		From: "if !sameSignature(want, sig) {", To: "if false && !sameSignature(want, sig) {",
		Packages: []string{"./transport"}, Run: "ClusterForwardAuthentication"},
	{Name: "forward-twice", Invariant: "cluster mode: a forwarded request is forwarded again by a node that no longer owns the partition",
		File: "transport/cluster.go",
		From: "case forwarded || (r.NodeID == e.self && r.Settled == nil):", To: "case (forwarded && false) || (r.NodeID == e.self && r.Settled == nil):",
		Packages: []string{"./transport"}, Run: "ClusterForwardedRequestIsFinal"},
	{Name: "route-waits-once", Invariant: "cluster mode: a request waiting for a moving partition gives up at the move's first step (the old owner's release) instead of waiting for the new owner",
		File: "transport/cluster.go",
		From: "settled := e.settle(ctx, r.Settled, until)", To: "settled := e.settle(ctx, r.Settled, until) && false",
		Packages: []string{"./transport"}, Run: "ClusterWaitsForAMovingPartition"},
	{Name: "forward-without-reserve", Invariant: "cluster mode: a request is forwarded with too little of its deadline left for the owner to commit it",
		File: "transport/forward.go",
		From: "\tcase left < serveReserve:", To: "\tcase false && left < serveReserve:",
		Packages: []string{"./transport"}, Run: "ClusterKeepsTimeToServe"},
	{Name: "cluster-leave-forgets-new-owners", Invariant: "cluster ownership: a leaving node stops with routes that name no owner for what it handed off (requests reaching it wait for their deadline)",
		File: "cluster/cluster.go",
		From: "\t\tcase <-reply:\n\t\t\tn.awaitNewOwners(ctx)\n", To: "\t\tcase <-reply:\n",
		Packages: []string{"./cluster"}, Run: "TestGracefulLeave"},
	{Name: "forward-reroutes-any-503", Invariant: "I5 counted once: an owner's 503 after which a create may have committed is taken for a refusal, and the create is sent to another owner",
		File:     "transport/errors.go",
		From:     "if s.cluster != nil && (err == errNotOwner || errors.Is(err, domain.ErrNotOwner)) && forwardOf(c) != nil {",
		To:       "if s.cluster != nil && forwardOf(c) != nil {",
		Packages: []string{"./transport"}, Run: "ClusterForwardedRequestIsFinal"},
	{Name: "alert-bulk-off-by-one", Invariant: "usage alerts: a group commit names the session after the one that reaches the threshold",
		File: "persistence/postgres/admit_bulk.go",
		From: "(t.at - (c.sessions - c.last_grant)) - 1 AS i", To: "(t.at - (c.sessions - c.last_grant)) AS i",
		Packages: []string{"./persistence/postgres"}, Run: "TestStore/Alerts"},
	{Name: "alert-keyed-dropped", Invariant: "usage alerts: a keyed admission that crosses a threshold records no alert",
		File: "persistence/postgres/admit.go",
		From: "AS t (percent, at) ON t.at = counted.seq", To: "AS t (percent, at) ON false",
		Packages: []string{"./persistence/postgres"}, Run: "TestStore/AlertsOnKeyed"},
	{Name: "alert-embedded-crossing", Invariant: "usage alerts: the embedded store records a threshold one admission before it is reached",
		File: "persistence/sqlite/admit.go",
		From: "domain.Crossed(r.Alerts.Sessions, c.Sessions-1, c.Sessions)", To: "domain.Crossed(r.Alerts.Sessions, c.Sessions-1, c.Sessions+1)",
		Packages: []string{"./persistence/sqlite"}, Run: "TestStore/Alerts"},
	{Name: "alert-completion-early", Invariant: "usage alerts: a completion records a minutes threshold a second before it is reached (an alert without its cause)",
		File: "persistence/sessions.go",
		From: "domain.Crossed(alerts.Seconds, before.Seconds, after.Seconds)", To: "domain.Crossed(alerts.Seconds, before.Seconds, after.Seconds+1)",
		Packages: []string{"./persistence/sqlite"}, Run: "TestStore/AlertsOnCompletion"},
	{Name: "alert-order-per-user", Invariant: "usage alerts: a user's next alert is handed out while an earlier one is pending (out of order)",
		File: "persistence/postgres/outbox.go",
		From: "WHERE b.user_id = a.user_id AND b.status = 'pending' AND b.id < a.id)", To: "WHERE false)",
		Packages: []string{"./persistence/postgres"}, Run: "TestStore/Claim"},
	{Name: "alert-claim-twice", Invariant: "usage alerts: a delivery under a running claim is handed out again (sent twice at once)",
		File: "persistence/sqlite/outbox.go",
		From: "AND (a.claimed_until IS NULL OR a.claimed_until <= ?)", To: "AND (a.claimed_until IS NULL OR a.claimed_until > 0 OR ? = 0)",
		Packages: []string{"./persistence/sqlite"}, Run: "TestStore/Claim"},
	{Name: "alert-limit-reached-dropped", Invariant: "usage alerts: the limit-reached alert of a refusal is never written",
		File: "persistence/postgres/outbox.go",
		From: "ORDER BY a.user_id COLLATE \"C\", a.period_start, a.metric, a.limit_value\nON CONFLICT", To: "ORDER BY a.user_id COLLATE \"C\", a.period_start, a.metric, a.limit_value\nLIMIT 0 ON CONFLICT",
		Packages: []string{"./persistence/postgres"}, Run: "TestStore/LimitReached"},
	{Name: "verify-missing-alert", Invariant: "the audit (`tally verify`) misses a threshold crossing without its alert",
		File: "tools/verify/alerts.go",
		From: "AND NOT EXISTS (SELECT 1 FROM alerts a\n                  WHERE a.user_id = s.user_id", To: "AND EXISTS (SELECT 1 FROM alerts a\n                  WHERE a.user_id = s.user_id",
		Packages: []string{"./tools/verify"}, Run: "TestStoreCorruptionsAreReported"},
}

// Result is what one mutant's run found.
type Result struct {
	Mutant  Mutant
	Killed  bool
	Err     error // the mutant could not be run (does not apply, does not compile)
	Elapsed time.Duration
	Output  string // the tests' output, kept for survivors and errors
}

// Options configures a run.
type Options struct {
	Root string    // repository root (default ".")
	Only []string  // mutant names; empty runs all
	Out  io.Writer // progress lines
	Go   string    // the go command (default "go")
}

// Run copies the repository's tracked files to a scratch directory once and
// runs each mutant there: apply, build, test, restore. It returns every
// result, and an error when any mutant survived or could not be run.
func Run(ctx context.Context, o Options) ([]Result, error) {
	if o.Root == "" {
		o.Root = "."
	}
	if o.Go == "" {
		o.Go = "go"
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	list, err := selectMutants(List, o.Only)
	if err != nil {
		return nil, err
	}
	scratch, err := os.MkdirTemp("", "tally-mutants-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(scratch)
	if err := copyTracked(ctx, o.Root, scratch); err != nil {
		return nil, fmt.Errorf("copy the repository: %w", err)
	}
	// The scratch copy has no bin/: the cluster tests' etcd server (built
	// by `make etcd`, untracked) is the repository's. Without it they fail
	// under TALLY_TEST_REQUIRE_SERVICES=1, which would kill their mutants
	// for the wrong reason.
	env := []string{"TALLY_TEST_REQUIRE_SERVICES=1"}
	if os.Getenv("TALLY_ETCD_BIN") == "" {
		if bin, err := filepath.Abs(filepath.Join(o.Root, "bin", "etcd")); err == nil {
			if _, err := os.Stat(bin); err == nil {
				env = append(env, "TALLY_ETCD_BIN="+bin)
			}
		}
	}
	var results []Result
	bad := 0
	for i, m := range list {
		fmt.Fprintf(o.Out, "[%d/%d] %s (%s) ... ", i+1, len(list), m.Name, strings.Join(m.Packages, " "))
		r := runOne(ctx, o.Go, scratch, env, m)
		switch {
		case r.Err != nil:
			bad++
			fmt.Fprintf(o.Out, "ERROR %v\n", r.Err)
		case r.Killed:
			fmt.Fprintf(o.Out, "killed (%s)\n", r.Elapsed.Round(time.Second))
		default:
			bad++
			fmt.Fprintf(o.Out, "SURVIVED (%s): %s\n", r.Elapsed.Round(time.Second), m.Invariant)
		}
		results = append(results, r)
		if ctx.Err() != nil {
			return results, ctx.Err()
		}
	}
	if bad > 0 {
		return results, fmt.Errorf("%d of %d mutants survived or could not run", bad, len(list))
	}
	return results, nil
}

func selectMutants(all []Mutant, only []string) ([]Mutant, error) {
	if len(only) == 0 {
		return all, nil
	}
	byName := make(map[string]Mutant, len(all))
	for _, m := range all {
		byName[m.Name] = m
	}
	var out []Mutant
	for _, n := range only {
		m, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("no mutant named %q", n)
		}
		out = append(out, m)
	}
	return out, nil
}

// Apply returns src with m applied, or an error when From does not occur
// exactly once (the list is stale).
func Apply(src string, m Mutant) (string, error) {
	switch n := strings.Count(src, m.From); n {
	case 1:
		return strings.Replace(src, m.From, m.To, 1), nil
	case 0:
		return "", fmt.Errorf("%s: %q not found in %s (the code moved: update the mutant)", m.Name, m.From, m.File)
	default:
		return "", fmt.Errorf("%s: %q occurs %d times in %s (make From unique)", m.Name, m.From, n, m.File)
	}
}

func runOne(ctx context.Context, goCmd, dir string, env []string, m Mutant) Result {
	start := time.Now()
	r := Result{Mutant: m}
	path := filepath.Join(dir, m.File)
	orig, err := os.ReadFile(path)
	if err != nil {
		r.Err = err
		return r
	}
	mutated, err := Apply(string(orig), m)
	if err != nil {
		r.Err = err
		return r
	}
	if err := os.WriteFile(path, []byte(mutated), 0o644); err != nil {
		r.Err = err
		return r
	}
	defer func() { _ = os.WriteFile(path, orig, 0o644) }()

	// A mutant that does not compile proves nothing: vet the packages
	// (tests included) first.
	if out, err := goRun(ctx, goCmd, dir, env, append([]string{"vet"}, m.Packages...)...); err != nil {
		r.Err = fmt.Errorf("does not compile: %v", err)
		r.Output = out
		return r
	}
	args := []string{"test", "-count=1", "-failfast"}
	if m.Run != "" {
		args = append(args, "-run", m.Run)
	}
	out, err := goRun(ctx, goCmd, dir, env, append(args, m.Packages...)...)
	r.Elapsed = time.Since(start)
	r.Output = out
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		r.Killed = true
	default:
		r.Err = err
	}
	return r
}

// goRun runs the go command in dir with env added to the environment,
// which requires services: a test that skips for want of Postgres would
// let its mutant survive for the wrong reason.
func goRun(ctx context.Context, goCmd, dir string, env []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, goCmd, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return b.String(), err
}

// copyTracked copies the files git tracks under root into dst.
func copyTracked(ctx context.Context, root, dst string) error {
	cmd := exec.CommandContext(ctx, "git", "ls-files", "-z")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("git ls-files: %w", err)
	}
	for _, f := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		if f == "" {
			continue
		}
		src := filepath.Join(root, f)
		info, err := os.Lstat(src)
		if err != nil || !info.Mode().IsRegular() {
			continue // deleted in the working tree, or a link
		}
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, f)
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(target, b, info.Mode().Perm()); err != nil {
			return err
		}
	}
	return nil
}
