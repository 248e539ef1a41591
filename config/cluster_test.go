package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const clusterSecret = "0123456789abcdef0123456789abcdef-cluster"

func cluster(extra map[string]string) map[string]string {
	m := withDB(map[string]string{
		"TALLY_ETCD_ENDPOINTS": "http://127.0.0.1:2379, http://127.0.0.1:22379/",
		"TALLY_CLUSTER_SECRET": clusterSecret,
		"TALLY_HTTP_ADDR":      "10.0.0.5:8081",
	})
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// Without etcd the process is the single node it has always been, and the
// cluster-only variables are refused rather than silently ignored.
func TestSingleNodeByDefault(t *testing.T) {
	if c := mustLoad(t, withDB(nil)); c.Cluster() || c.NodeID != "" || c.AdvertiseURL != "" {
		t.Errorf("default config is a cluster node: %v %q %q", c.Cluster(), c.NodeID, c.AdvertiseURL)
	}
	for _, name := range []string{"TALLY_NODE_ID", "TALLY_ADVERTISE_URL", "TALLY_CLUSTER_SECRET"} {
		v := map[string]string{"TALLY_NODE_ID": "n1", "TALLY_ADVERTISE_URL": "http://10.0.0.5:8080", "TALLY_CLUSTER_SECRET": clusterSecret}[name]
		_, err := Load(env(withDB(map[string]string{name: v})))
		assertOneError(t, err, name, "only applies in cluster mode")
	}
}

// The node id and the advertise URL are derived from the host name and
// TALLY_HTTP_ADDR when they can be, and required when they cannot.
func TestClusterDerivesNodeIDAndAdvertiseURL(t *testing.T) {
	defer func(h func() (string, error)) { hostname = h }(hostname)
	hostname = func() (string, error) { return "tally-7f9c.internal", nil }

	c := mustLoad(t, cluster(nil))
	if !c.Cluster() || c.NodeID != "tally-7f9c.internal-8081" || c.AdvertiseURL != "http://10.0.0.5:8081" ||
		c.ClusterLeaseTTL != 5*time.Second || len(c.EtcdEndpoints) != 2 || c.EtcdEndpoints[1] != "http://127.0.0.1:22379" {
		t.Errorf("cluster config: cluster=%v id=%q url=%q ttl=%v endpoints=%q", c.Cluster(), c.NodeID, c.AdvertiseURL, c.ClusterLeaseTTL, c.EtcdEndpoints)
	}
	c = mustLoad(t, cluster(map[string]string{"TALLY_NODE_ID": "node-a", "TALLY_ADVERTISE_URL": "https://a.tally.internal/", "TALLY_CLUSTER_LEASE_TTL": "2s"}))
	if c.NodeID != "node-a" || c.AdvertiseURL != "https://a.tally.internal" || c.ClusterLeaseTTL != 2*time.Second {
		t.Errorf("explicit: id=%q url=%q ttl=%v", c.NodeID, c.AdvertiseURL, c.ClusterLeaseTTL)
	}

	// A wildcard or port-0 listen address says nothing about how to reach it.
	for _, addr := range []string{"0.0.0.0:8080", ":8080", "[::]:8080"} {
		_, err := Load(env(cluster(map[string]string{"TALLY_HTTP_ADDR": addr})))
		assertOneError(t, err, "TALLY_ADVERTISE_URL", "is required")
	}
	_, err := Load(env(cluster(map[string]string{"TALLY_HTTP_ADDR": "127.0.0.1:0", "TALLY_ADVERTISE_URL": "http://127.0.0.1:9"})))
	assertOneError(t, err, "TALLY_NODE_ID", "is required")
	hostname = func() (string, error) { return "", errors.New("no host name") }
	_, err = Load(env(cluster(nil)))
	assertOneError(t, err, "TALLY_NODE_ID", "is required")
}

func TestClusterRefusals(t *testing.T) {
	for _, tc := range []struct{ name, value, want string }{
		{"TALLY_ETCD_ENDPOINTS", "127.0.0.1:2379", "not an etcd client URL"},
		{"TALLY_ETCD_ENDPOINTS", "http://127.0.0.1", "not an etcd client URL"},
		{"TALLY_ETCD_ENDPOINTS", "http://a:2379,,http://b:2379", "empty entry"},
		{"TALLY_NODE_ID", "node a", "want 1 to 64 characters"},
		{"TALLY_NODE_ID", strings.Repeat("n", 65), "want 1 to 64 characters"},
		{"TALLY_ADVERTISE_URL", "10.0.0.5:8080", "want a base URL"},
		{"TALLY_ADVERTISE_URL", "http://10.0.0.5:8080/api", "want a base URL"},
		{"TALLY_CLUSTER_LEASE_TTL", "1500ms", "whole seconds"},
		{"TALLY_CLUSTER_LEASE_TTL", "0s", "whole seconds"},
		{"TALLY_CLUSTER_SECRET", "short", "at least 32 bytes"},
		{"TALLY_CLUSTER_SECRET", secretA, "must differ from every other secret"},
		{"TALLY_CLUSTER_SECRET", secretB, "must differ from every other secret"},
	} {
		_, err := Load(env(cluster(map[string]string{tc.name: tc.value})))
		assertOneError(t, err, tc.name, tc.want)
		if err != nil && tc.name == "TALLY_CLUSTER_SECRET" && strings.Contains(err.Error(), tc.value) {
			t.Errorf("the error shows the secret: %v", err)
		}
	}
	m := cluster(nil)
	delete(m, "TALLY_CLUSTER_SECRET")
	_, err := Load(env(m))
	assertOneError(t, err, "TALLY_CLUSTER_SECRET", "is required in cluster mode")

	// The embedded store is one process's: a cluster shares Postgres.
	m = cluster(nil)
	delete(m, "TALLY_DATABASE_URL")
	delete(m, "TALLY_JWT_SECRET")
	delete(m, "TALLY_ADMIN_TOKEN")
	_, err = Load(env(m))
	assertOneError(t, err, "TALLY_ETCD_ENDPOINTS", "needs TALLY_DATABASE_URL")

	// The secret is redacted wherever the configuration is printed.
	c := mustLoad(t, cluster(nil))
	if strings.Contains(c.String(), clusterSecret) || c.Redacted()["TALLY_CLUSTER_SECRET"] != "[redacted]" {
		t.Errorf("cluster secret printed: %s", c.String())
	}
}
