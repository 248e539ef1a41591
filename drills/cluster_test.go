package drills_test

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/drills"
	"github.com/tally-dev/tally/internal/testenv"
)

// The cluster drills: three etcd members, three Tally nodes (`tally serve`
// subprocesses of this tree, TALLY_CLUSTER_LEASE_TTL=2s), the machine's
// Postgres and Redis, and creates spread over the nodes in turn for users
// on the student plan (100 sessions), who become active one after another
// so that admissions go on through each fault. After each fault is
// healed, drills.Check audits the history (nothing acknowledged lost, no
// user over its limit, usage equal to the stored sessions, one session per
// key, exactly the rest of each user's quota admitted, verify's
// epoch_order among the store checks), `tally verify` runs, and
// checkCluster asks what a cluster owes its clients: no status but 200,
// 403 and 503; a 503 only for a user of a partition that moved, and only
// within lease TTL + 2 s of the fault; for an orderly join and leave and
// for etcd's faults, no 503 at all.

// clusterLoad is a drill's load: creates for users who become active one
// after another over ramp, two at first (a user fills its 100 sessions in
// a second or two when it is one of few, so that refusals at the limit are
// under the fault too), so that admissions go on through the fault and the
// last users are still below the limit for the exact-quota burst. Each
// worker is a client that retries a create whose outcome is unknown until
// it has an answer: a worker that picked a user of a moving partition
// waits out the move. So that such waits do not stall everyone else, the
// users of the partitions the fault will move (moved, known before the
// fault) get 6 workers of their own beside the others' 9 (each waiting
// worker is one user seeing the fault); without moved, 12 workers share
// every user. Both loads record into one History.
func clusterLoad(t *testing.T, c *tallyCluster, users []string, ramp time.Duration, moved map[domain.Partition]bool) (*clusterRun, *drills.History) {
	t.Helper()
	h := &drills.History{}
	var hit, rest []string
	for _, u := range users {
		if moved[domain.PartitionOf(u)] {
			hit = append(hit, u)
		} else {
			rest = append(rest, u)
		}
	}
	run := &clusterRun{}
	for _, g := range []struct {
		users   []string
		workers int
	}{{rest, 9}, {hit, 6}} {
		if len(hit) == 0 {
			g.workers = 12
		}
		if len(g.users) == 0 {
			continue
		}
		l := &drills.Load{
			Client:  c.Client,
			Target:  c.Target,
			Users:   g.users,
			Workers: g.workers,
			Initial: 2,
			Ramp:    ramp,
			Pace:    10 * time.Millisecond,
			History: h,
		}
		run.runs = append(run.runs, l.Start(t))
	}
	return run, h
}

// clusterRun is a started clusterLoad.
type clusterRun struct{ runs []*drills.Running }

// Wait stops the loads and waits for their creates in flight.
func (r *clusterRun) Wait() {
	for _, run := range r.runs {
		run.Stop()
	}
	for _, run := range r.runs {
		run.Wait()
	}
}

// clusterFault is what checkCluster needs to know of a drill's fault.
type clusterFault struct {
	Name string
	What string // the fault, in words
	// Fault is when it began, Heal when it was over (Healed says what
	// that was; by default, ownership had settled again).
	Fault, Heal time.Time
	Healed      string
	// Stalled, when set, is a node that was stopped (SIGSTOP) until
	// StalledUntil: the requests sent straight to it before then waited
	// for it and were answered past their deadline, by a 503 or a 504
	// whatever their partition; they are exempt from the 503 rules and the
	// latency bound, and reported apart.
	Stalled      *tallyNode
	StalledUntil time.Time
	// Moved are the partitions whose users may get 503s (nil: none may).
	Moved map[domain.Partition]bool
	// Notes are drill-specific figures, printed with the rest.
	Notes []string
}

// max503After is how long after the fault a request may still be
// answered 503: a dead owner's lease expires within its TTL, and the new
// owner's claim takes a moment more.
const max503After = leaseTTL + 2*time.Second

// maxLatency bounds every answer: the request deadline, and a second for a
// machine that other test runs keep busy. A request is answered by its
// deadline, never left hanging (a 503 or 504 at worst).
const maxLatency = clusterRequestTimeout + time.Second

// check runs the common audit (drills.Check), `tally verify`, and
// checkCluster.
func (c *tallyCluster) check(t *testing.T, users []string, h *drills.History, f clusterFault) {
	t.Helper()
	forwards := c.forwards()
	allowed := []int{http.StatusServiceUnavailable}
	if f.Stalled != nil {
		allowed = append(allowed, http.StatusGatewayTimeout) // checkCluster allows it only from the stopped node
	}
	sum := (&drills.Check{
		Name: "cluster-" + f.Name, Client: c.Client, Target: c.URLs()[0], Targets: c.URLs(), Users: users, History: h,
		DatabaseURL: c.DBURL, Redis: c.Redis, RedisPrefix: c.Prefix, Limit: studentLimit,
		Allowed5xx: allowed, Fault: f.Fault, Heal: f.Heal,
	}).Run(t)
	c.verify()
	f.Notes = append(f.Notes, "forwards between nodes during the load (tally_cluster_forwards_total, nodes still up): "+forwards)
	checkCluster(t, h, f, sum)
}

// checkCluster checks the 503s of a cluster drill and prints its figures.
func checkCluster(t *testing.T, h *drills.History, f clusterFault, sum *drills.Summary) {
	t.Helper()
	var (
		requests, noAnswer, rejected int
		s503                         []drills.Attempt
		users503                     = map[string]bool{}
		parts503                     = map[domain.Partition]bool{}
		wrong                        []string
		latencies                    []time.Duration
		slow                         []drills.Attempt
		byNode                       = map[string]int{}
		stalledAnswers               = map[int]int{}
	)
	for _, cr := range h.Creates() {
		p := domain.PartitionOf(cr.User)
		for _, a := range cr.Attempts {
			requests++
			latencies = append(latencies, a.End.Sub(a.Start))
			stalled := f.Stalled != nil && a.Target == f.Stalled.URL && a.Start.Before(f.StalledUntil)
			if d := a.End.Sub(a.Start); d > maxLatency && !stalled {
				slow = append(slow, a)
			}
			if a.Node != "" {
				byNode[a.Node]++
			}
			if stalled && a.Status != http.StatusOK && a.Status != http.StatusForbidden {
				// Sent to the stopped process, which got to it only on
				// waking, past its deadline: a 503 (the partition moved,
				// or an outcome it can no longer look up) or the 504 of
				// a deadline exceeded; drills.Check accounts for it as
				// unknown, and its retry is a request like any other.
				stalledAnswers[a.Status]++
				continue
			}
			switch a.Status {
			case http.StatusGatewayTimeout:
				wrong = append(wrong, fmt.Sprintf("user %s: a 504 not from a stopped node: %s", cr.User, a))
			case 0:
				noAnswer++
			case http.StatusForbidden:
				rejected++
			case http.StatusServiceUnavailable:
				s503 = append(s503, a)
				users503[cr.User] = true
				parts503[p] = true
				switch {
				case f.Moved == nil:
					wrong = append(wrong, fmt.Sprintf("user %s: a 503 in a drill that allows none: %s", cr.User, a))
				case !f.Moved[p]:
					wrong = append(wrong, fmt.Sprintf("user %s (partition %d, which did not move): %s", cr.User, p, a))
				case a.End.Before(f.Fault):
					wrong = append(wrong, fmt.Sprintf("user %s: before the fault: %s", cr.User, a))
				case a.Start.Sub(f.Fault) > max503After:
					wrong = append(wrong, fmt.Sprintf("user %s: sent %s after the fault (bound: lease TTL + 2s = %s): %s",
						cr.User, a.Start.Sub(f.Fault).Round(time.Millisecond), max503After, a))
				}
			}
		}
	}
	for i, w := range wrong {
		if i == 10 {
			t.Errorf("… and %d more answers not allowed", len(wrong)-10)
			break
		}
		t.Errorf("NOT ALLOWED: %s", w)
	}
	for i, a := range slow {
		if i == 5 {
			t.Errorf("… and %d more answers slower than %s", len(slow)-5, maxLatency)
			break
		}
		t.Errorf("SLOW: answered after %s (bound: the %s deadline + 1s): %s", a.End.Sub(a.Start).Round(time.Millisecond), clusterRequestTimeout, a)
	}

	slices.Sort(latencies)
	quantile := func(q float64) time.Duration {
		if len(latencies) == 0 {
			return 0
		}
		return latencies[min(len(latencies)-1, int(q*float64(len(latencies))))]
	}
	// Admissions while the fault was on, for the users it concerned and
	// for the others: the others must not have noticed.
	var duringMoved, duringRest int
	for _, cr := range h.Creates() {
		for _, a := range cr.Attempts {
			if a.Status != http.StatusOK || a.Start.Before(f.Fault) || a.End.After(f.Heal) {
				continue
			}
			if f.Moved[domain.PartitionOf(cr.User)] {
				duringMoved++
			} else {
				duringRest++
			}
		}
	}
	if duringRest == 0 && len(f.Moved) < domain.Partitions {
		t.Errorf("no session of a user whose partition stayed put was admitted between the fault and the heal (%s): the fault hit an idle cluster, or the cluster stopped admitting",
			f.Heal.Sub(f.Fault).Round(time.Millisecond))
	}

	var b strings.Builder
	fmt.Fprintf(&b, "CLUSTER DRILL %s — %s (lease TTL %s, 3 etcd members)\n", f.Name, f.What, leaseTTL)
	fmt.Fprintf(&b, "  requests %d (creates %d), admitted %d, rejected 403 %d, 503 %d, no answer %d, lost %d, users over the limit %d\n",
		requests, sum.Creates, sum.Admitted, rejected, len(s503), noAnswer, sum.Lost, sum.OverLimitUsers)
	healed := f.Healed
	if healed == "" {
		healed = "ownership settled"
	}
	if len(f.Moved) > 0 {
		fmt.Fprintf(&b, "  %s %s after the fault; admitted meanwhile: %d for users of the %d moved partitions, %d for the others\n",
			healed, f.Heal.Sub(f.Fault).Round(time.Millisecond), duringMoved, len(f.Moved), duringRest)
	} else {
		fmt.Fprintf(&b, "  %s %s after the fault; admitted meanwhile: %d\n", healed, f.Heal.Sub(f.Fault).Round(time.Millisecond), duringRest)
	}
	if len(s503) == 0 {
		fmt.Fprintf(&b, "  503s: none\n")
	} else {
		first, last := s503[0], s503[0]
		firstEnd, lastEnd := s503[0].End, s503[0].End
		for _, a := range s503 {
			if a.Start.Before(first.Start) {
				first = a
			}
			if a.Start.After(last.Start) {
				last = a
			}
			if a.End.Before(firstEnd) {
				firstEnd = a.End
			}
			if a.End.After(lastEnd) {
				lastEnd = a.End
			}
		}
		rel := func(x time.Time) string { return fmt.Sprintf("%+.2fs", x.Sub(f.Fault).Seconds()) }
		fmt.Fprintf(&b, "  503s: %d for %d users of %d partitions (of %d moved); sent %s…%s, answered %s…%s after the fault (bound: sent ≤ %s)\n",
			len(s503), len(users503), len(parts503), len(f.Moved), rel(first.Start), rel(last.Start), rel(firstEnd), rel(lastEnd), max503After)
	}
	if f.Stalled != nil {
		fmt.Fprintf(&b, "  sent to %s before it was continued and answered by it after, other than 200/403 (exempt from the rules above): %v\n", f.Stalled.ID, stalledAnswers)
	}
	fmt.Fprintf(&b, "  latency p50 %s, p99 %s, max %s\n", quantile(0.5).Round(time.Millisecond), quantile(0.99).Round(time.Millisecond), quantile(1).Round(time.Millisecond))
	nodes := slices.Sorted(maps.Keys(byNode))
	var parts []string
	for _, n := range nodes {
		parts = append(parts, fmt.Sprintf("%s %d", n, byNode[n]))
	}
	fmt.Fprintf(&b, "  decided by (X-Tally-Node): %s\n", strings.Join(parts, ", "))
	for _, n := range f.Notes {
		fmt.Fprintf(&b, "  %s\n", n)
	}
	t.Log(strings.TrimRight(b.String(), "\n"))
}

// sortedParts lists partitions for messages.
func sortedParts(m map[domain.Partition]bool) []int {
	out := make([]int, 0, len(m))
	for p := range m {
		out = append(out, int(p))
	}
	sort.Ints(out)
	return out
}

// Drill 1: one node is killed with SIGKILL mid-load. Its partitions have
// no owner until its lease expires (at most the TTL); their users get
// 503s with Retry-After meanwhile (a forward to a dead node is refused at
// once), everyone else is served as before, and once the survivors have
// claimed the partitions (fencing the store) their users are admitted
// again with exactly what they had left.
func TestClusterKillNineNode(t *testing.T) {
	c := startCluster(t, 3, clusterOptions{})
	before := c.waitSettled(c.ids(), 10*time.Second)
	victim := c.Node(1)
	moved := before.Owned(victim.ID)
	users := drills.Users("clkill", 90)
	c.provision(users)
	run, history := clusterLoad(t, c, users, 8*time.Second, moved)

	time.Sleep(2 * time.Second)
	victim.inLoad.Store(false) // as a load balancer would, once its checks fail
	fault := time.Now()
	victim.kill()
	after := c.waitSettled(c.ids(), 20*time.Second)
	heal := time.Now()
	if m := before.Moved(after); !maps.Equal(m, moved) {
		t.Errorf("partitions that moved: %v; want exactly the %d the killed node owned %v", sortedParts(m), len(moved), sortedParts(moved))
	}
	time.Sleep(2 * time.Second)
	run.Wait()

	c.check(t, users, history, clusterFault{
		Name: "kill-9-node", What: victim.ID + " killed with SIGKILL mid-load",
		Fault: fault, Heal: heal, Moved: moved,
	})
}

// Drill 2: the "zombie owner". One node is stopped with SIGSTOP for twice
// the lease TTL, then continued. Its lease expires while it is stopped and
// the others take its partitions (503s for their users until then, as for
// a dead node); the requests it had in flight, and any it takes at the
// moment it wakes up, must not commit under the epoch it lost (the store's
// fence; verify's epoch_order would see a session under an older epoch
// after a newer one). It then finds its lease gone, registers again and
// gets its partitions back by orderly hand-offs: no 503 for that.
func TestClusterZombieOwner(t *testing.T) {
	c := startCluster(t, 3, clusterOptions{})
	before := c.waitSettled(c.ids(), 10*time.Second)
	zombie := c.Node(1)
	moved := before.Owned(zombie.ID)
	users := drills.Users("clzombie", 90)
	c.provision(users)
	run, history := clusterLoad(t, c, users, 10*time.Second, moved)

	time.Sleep(2 * time.Second)
	zombie.inLoad.Store(false) // it answers nothing: a load balancer's checks fail
	fault := time.Now()
	zombie.signal(t, syscall.SIGSTOP)
	c.waitSettled(c.ids(), 2*leaseTTL)
	taken := time.Now()
	time.Sleep(time.Until(fault.Add(2 * leaseTTL)))
	zombie.signal(t, syscall.SIGCONT)
	woke := time.Now()
	zombie.inLoad.Store(true)
	after := c.waitSettled(c.ids(), 20*time.Second)
	heal := time.Now()
	if m := before.Moved(after); !maps.Equal(m, moved) {
		t.Errorf("partitions whose claim changed: %v; want exactly the %d the zombie owned %v", sortedParts(m), len(moved), sortedParts(moved))
	}
	for p := range moved {
		if after.Owner[p] != zombie.ID || after.Epoch[p] <= before.Epoch[p] {
			t.Errorf("partition %d: owner %s epoch %d after the zombie rejoined; before: %s epoch %d", p, after.Owner[p], after.Epoch[p], before.Owner[p], before.Epoch[p])
		}
	}
	time.Sleep(2 * time.Second)
	run.Wait()

	// The requests the zombie had when it stopped: sent to it (or
	// forwarded to it by another node) before the SIGSTOP and answered
	// after it. Whatever it decided for them after waking was fenced by
	// the new owners' epochs (verify's epoch_order).
	inFlight := map[int]int{}
	for _, a := range history.Attempts() {
		if a.Start.Before(fault) && a.End.After(fault.Add(time.Second)) {
			inFlight[a.Status]++
		}
	}
	c.check(t, users, history, clusterFault{
		Name: "zombie-owner", What: fmt.Sprintf("%s stopped (SIGSTOP) for %s, then continued", zombie.ID, woke.Sub(fault).Round(time.Millisecond)),
		Fault: fault, Heal: heal, Moved: moved, Stalled: zombie, StalledUntil: woke,
		Notes: []string{
			fmt.Sprintf("its partitions were taken by the others %s after the SIGSTOP; it had them back %s after the SIGCONT",
				taken.Sub(fault).Round(time.Millisecond), heal.Sub(woke).Round(time.Millisecond)),
			fmt.Sprintf("requests caught in flight by the stop (answered over a second later), by status: %v", inFlight),
		},
	})
}

// Drill 3: a fourth node joins mid-load, then leaves gracefully (SIGTERM)
// mid-load. A join or a leave moves partitions by orderly hand-offs: the
// old owner stops taking new work for the partition, answers what it has
// in flight, and releases it; the new owner claims it and loads its users
// from Postgres. Requests for a moving partition wait for the move. No
// 503 at all, and the leaving node exits 0.
func TestClusterJoinAndLeave(t *testing.T) {
	c := startCluster(t, 3, clusterOptions{})
	before := c.waitSettled(c.ids(), 10*time.Second)
	users := drills.Users("cljoin", 90)
	c.provision(users)
	run, history := clusterLoad(t, c, users, 10*time.Second, nil)

	time.Sleep(2 * time.Second)
	fourth := c.addNode()
	fault := time.Now()
	c.startNode(fourth) // in the load once it answers /readyz
	if t.Failed() {
		t.FailNow()
	}
	joined := c.waitSettled(c.ids(), 20*time.Second)
	joinedAt := time.Now()
	took := joined.Owned(fourth.ID)
	if m := before.Moved(joined); !maps.Equal(m, took) {
		t.Errorf("partitions that moved on the join: %v; want exactly the %d the fourth node took", sortedParts(m), len(took))
	}
	time.Sleep(2 * time.Second)

	fourth.inLoad.Store(false) // drained from the load balancer, then stopped
	leaving := time.Now()
	fourth.terminate(t, 20*time.Second)
	exited := time.Now()
	left := c.waitSettled(c.ids(), 20*time.Second)
	heal := time.Now()
	if m := joined.Moved(left); !maps.Equal(m, took) {
		t.Errorf("partitions that moved on the leave: %v; want exactly the %d the fourth node had", sortedParts(m), len(took))
	}
	time.Sleep(1500 * time.Millisecond)
	run.Wait()

	c.check(t, users, history, clusterFault{
		Name: "join-and-leave", What: "node-4 started mid-load, then stopped with SIGTERM mid-load",
		Fault: fault, Heal: heal, Healed: "ownership settled after the leave",
		Notes: []string{fmt.Sprintf("the join moved %d partitions, settled %s after the start; the leave handed them back, node-4 exited 0 %s after SIGTERM, settled %s after it",
			len(took), joinedAt.Sub(fault).Round(time.Millisecond), exited.Sub(leaving).Round(time.Millisecond), heal.Sub(leaving).Round(time.Millisecond))},
	})
}

// Drill 4: etcd's faults. The etcd leader is killed with SIGKILL mid-load
// (the others elect a new one) and restarted; then every member is stopped
// for 10 s and started again. The nodes keep serving with the ownership
// they have: nothing moves (every claim and epoch as before), no 503.
func TestClusterEtcdFaults(t *testing.T) {
	c := startCluster(t, 3, clusterOptions{})
	before := c.waitSettled(c.ids(), 10*time.Second)
	users := drills.Users("cletcd", 120)
	c.provision(users)
	run, history := clusterLoad(t, c, users, 18*time.Second, nil)

	time.Sleep(2 * time.Second)
	leader := c.Etcd.WaitLeader(t, 5*time.Second)
	fault := time.Now()
	c.Etcd.Kill(t, leader)
	next := c.Etcd.WaitLeader(t, 10*time.Second)
	elected := time.Now()
	time.Sleep(time.Second)
	c.Etcd.Start(t, leader)
	time.Sleep(time.Second)

	down := time.Now()
	c.Etcd.StopAll(t)
	time.Sleep(10 * time.Second)
	up := time.Now()
	c.Etcd.StartAll(t)
	back := time.Now()
	after := c.waitSettled(c.ids(), 20*time.Second)
	heal := time.Now()
	if m := before.Moved(after); len(m) > 0 {
		t.Errorf("partitions moved during etcd's faults: %v; want none", sortedParts(m))
	}
	time.Sleep(2 * time.Second)
	run.Wait()

	c.check(t, users, history, clusterFault{
		Name: "etcd-leader-and-outage", What: fmt.Sprintf("etcd leader (member %d) killed with SIGKILL, then all members stopped 10s", leader),
		Fault: fault, Heal: heal, Healed: "etcd back and ownership checked",
		Notes: []string{
			fmt.Sprintf("member %d elected %s after the kill; all members down %s…%s after the first fault, a leader again %s after the restart",
				next, elected.Sub(fault).Round(time.Millisecond), down.Sub(fault).Round(time.Millisecond), up.Sub(fault).Round(time.Millisecond), back.Sub(up).Round(time.Millisecond)),
			fmt.Sprintf("admitted while every etcd member was down: %d", history.AdmittedBetween(down, up)),
		},
	})
	if n := history.AdmittedBetween(down, up); n == 0 {
		t.Errorf("nothing was admitted while etcd was down: nodes must keep serving with the ownership they have")
	}
}

// Drill 5: the Sentinel failover drill (TestSentinelFailoverUnderLoad) on
// the cluster: the Redis primary every node writes its counters to is
// killed with SIGKILL mid-load and Sentinel promotes the replica. Redis is
// not in the admission path: nothing moves, no 503, and the counters
// converge on Postgres once the nodes have re-seeded the new primary.
func TestClusterSentinelFailover(t *testing.T) {
	sentinel := testenv.StartSentinelCluster(t)
	c := startCluster(t, 3, clusterOptions{Sentinel: sentinel})
	before := c.waitSettled(c.ids(), 10*time.Second)
	probe := drills.WatchReseed(t, c.Redis, c.Prefix)
	users := drills.Users("clsentinel", 90)
	c.provision(users)
	run, history := clusterLoad(t, c, users, 9*time.Second, nil)

	time.Sleep(2 * time.Second)
	fault := time.Now()
	old := sentinel.KillMaster(t)
	primary := sentinel.WaitForFailover(t, old, 20*time.Second)
	promoted := time.Now()
	time.Sleep(1500 * time.Millisecond)
	run.Wait()
	after := c.waitSettled(c.ids(), 5*time.Second)
	if m := before.Moved(after); len(m) > 0 {
		t.Errorf("partitions moved during a Redis failover: %v; want none", sortedParts(m))
	}
	reseeded := "no re-seed seen"
	if at, ok := probe.ReseededAfter(fault); ok {
		reseeded = fmt.Sprintf("Redis re-seeded from Postgres %s after the kill", at.Sub(fault).Round(time.Millisecond))
	}

	c.check(t, users, history, clusterFault{
		Name: "sentinel-failover", What: fmt.Sprintf("Redis primary %s killed with SIGKILL, Sentinel promoted %s", old, primary),
		Fault: fault, Heal: promoted, Healed: "Sentinel promoted the replica",
		Notes: []string{fmt.Sprintf("promoted %s after the kill; %s", promoted.Sub(fault).Round(time.Millisecond), reseeded)},
	})
}
