package app_test

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/internal/testenv"
	"github.com/tally-dev/tally/transport"
)

const testClusterSecret = "acceptance-test-cluster-secret-0123456789"

// startCluster runs n Tally nodes in-process on one fresh Postgres
// database, a real three-member etcd and the machine's Redis, and waits
// until every node routes every partition (no request would wait for a
// move any more).
func startCluster(t *testing.T, n int, extra ...map[string]string) []*server {
	t.Helper()
	etcd := testenv.StartEtcd(t, 3)
	shared := postgresEnv(t)
	for _, e := range extra {
		for k, v := range e {
			shared[k] = v
		}
	}
	shared["TALLY_ETCD_ENDPOINTS"] = strings.Join(etcd.Endpoints(), ",")
	shared["TALLY_CLUSTER_SECRET"] = testClusterSecret
	shared["TALLY_CLUSTER_LEASE_TTL"] = "2s"
	nodes := make([]*server, n)
	for i := range nodes {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		env := map[string]string{}
		for k, v := range shared {
			env[k] = v
		}
		env["TALLY_HTTP_ADDR"] = ln.Addr().String()
		env["TALLY_NODE_ID"] = fmt.Sprintf("node-%d", i+1)
		env["TALLY_ADVERTISE_URL"] = "http://" + ln.Addr().String()
		nodes[i] = startServerOn(t, env, ln)
	}
	// A user per partition, asked through every node: settled once none
	// is a 503 (unowned, moving) and all name one owner.
	c := newClient(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		settled := true
		for p := 0; p < domain.Partitions && settled; p += 17 {
			user := userIn(domain.Partition(p))
			owner := ""
			for _, s := range nodes {
				r := c.do(http.MethodGet, s.URL+"/api/v1/usage", c.token(user), nil)
				if r.Status != http.StatusOK || (owner != "" && r.Header.Get(transport.HeaderNode) != owner) {
					settled = false
					break
				}
				owner = r.Header.Get(transport.HeaderNode)
			}
		}
		if settled {
			return nodes
		}
		if time.Now().After(deadline) {
			t.Fatal("the cluster did not settle within 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// userIn returns a user id of partition p.
func userIn(p domain.Partition) string {
	for i := 0; ; i++ {
		if u := fmt.Sprintf("u%d", i); domain.PartitionOf(u) == p {
			return u
		}
	}
}

// Any node takes any request: concurrent creates for the same users, sent
// to all three nodes at once, admit exactly each user's limit; every answer
// for a user names the same deciding node (its owner), and every session
// reads back through every node.
func TestClusterAdmitsExactlyThroughEveryNode(t *testing.T) {
	nodes := startCluster(t, 3)
	c := newClient(t)
	const users, perUser = 12, 30 // free: 10 each
	type answer struct {
		user, node, id string
		status         int
	}
	answers := make(chan answer, users*perUser)
	var wg sync.WaitGroup
	for u := range users {
		user := fmt.Sprintf("cl-%d", u)
		for i := range perUser {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := c.create(nodes[i%len(nodes)], user)
				var s struct {
					ID string `json:"id"`
				}
				if r.Status == http.StatusOK {
					r.json(t, &s)
				}
				answers <- answer{user, r.Header.Get(transport.HeaderNode), s.ID, r.Status}
			}()
		}
	}
	wg.Wait()
	close(answers)
	admitted := map[string][]string{}
	decider := map[string]string{}
	for a := range answers {
		switch a.status {
		case http.StatusOK:
			admitted[a.user] = append(admitted[a.user], a.id)
		case http.StatusForbidden:
		default:
			t.Errorf("%s: status %d", a.user, a.status)
		}
		if a.node == "" {
			t.Errorf("%s: an answer without %s", a.user, transport.HeaderNode)
		}
		if d, ok := decider[a.user]; ok && d != a.node {
			t.Errorf("%s: decided by %s and by %s; one owner decides for a user", a.user, d, a.node)
		}
		decider[a.user] = a.node
	}
	// Ownership adds up: every partition is served by exactly one node.
	owned := 0.0
	for _, s := range nodes {
		owned += opsMetric(t, s, "tally_cluster_owned_partitions")
		if m := opsMetric(t, s, "tally_cluster_members"); m != 3 {
			t.Errorf("%s sees %v members, want 3", s.URL, m)
		}
	}
	if owned != domain.Partitions {
		t.Errorf("the nodes own %v partitions between them, want %d", owned, domain.Partitions)
	}
	for u := range users {
		user := fmt.Sprintf("cl-%d", u)
		if n := len(admitted[user]); n != 10 {
			t.Errorf("%s: %d admitted through three nodes, want exactly 10", user, n)
		}
		for _, id := range admitted[user] {
			for _, s := range nodes {
				if r := c.do(http.MethodGet, s.URL+"/api/v1/sessions/"+id, c.token(user), nil); r.Status != http.StatusOK {
					t.Errorf("%s: session %s through %s: %d", user, id, s.URL, r.Status)
				}
			}
		}
	}
}

// opsMetric reads one unlabelled series from s's ops listener.
func opsMetric(t *testing.T, s *server, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(string(opsGet(t, s, "/metrics").Body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no %s on %s/metrics", name, s.OpsURL)
	return 0
}

// Usage alerts in cluster mode: every node's dispatcher claims from the
// one outbox, and each alert is still delivered once, in order per user,
// whichever node admitted and whichever delivered; any node lists the
// deliveries.
func TestClusterAlertsOnceEach(t *testing.T) {
	rcv := newReceiver(t)
	rcv.start(listen(t))
	nodes := startCluster(t, 3, map[string]string{
		"TALLY_WEBHOOK_URL": rcv.url, "TALLY_WEBHOOK_SECRET": testWebhookSecret,
		"TALLY_WEBHOOK_MAX_BACKOFF": "1s", "TALLY_WEBHOOK_TIMEOUT": "2s",
	})
	c := newClient(t)
	users := names("cl-alerted", 30)
	var wg sync.WaitGroup
	for _, u := range users {
		for i := range 12 {
			wg.Go(func() {
				if r := c.create(nodes[i%len(nodes)], u); r.Status != http.StatusOK && r.Status != http.StatusForbidden {
					t.Errorf("create for %s: %d %s", u, r.Status, r.Body)
				}
			})
		}
	}
	wg.Wait()
	want := []string{"usage.limit_reached sessions 0", "usage.threshold_crossed sessions 100", "usage.threshold_crossed sessions 80"}
	rcv.waitFor(len(users)*len(want), 30*time.Second)
	time.Sleep(500 * time.Millisecond) // a duplicate would come now
	if _, copies := rcv.check(want); copies != 0 {
		t.Fatalf("%d alerts delivered twice by the three dispatchers", copies)
	}
	var lists [3]struct {
		Items []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
		} `json:"items"`
	}
	for i, s := range nodes {
		r := c.admin(http.MethodGet, s, "/admin/v1/webhooks/deliveries?status=delivered&limit=100", nil)
		if r.Status != http.StatusOK {
			t.Fatalf("deliveries through %s: %d %s", s.URL, r.Status, r.Body)
		}
		r.json(t, &lists[i])
		if len(lists[i].Items) != len(users)*len(want) {
			t.Fatalf("%s lists %d delivered, want %d", s.URL, len(lists[i].Items), len(users)*len(want))
		}
	}
	if lists[0].Items[0].ID != lists[2].Items[0].ID {
		t.Fatalf("nodes list different deliveries: %s and %s first", lists[0].Items[0].ID, lists[2].Items[0].ID)
	}
}
