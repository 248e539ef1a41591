package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Cluster reports whether the process runs as one node of a cluster
// (TALLY_ETCD_ENDPOINTS set): ownership of users through etcd, requests
// forwarded to their owner, admissions fenced by epoch in Postgres.
func (c Config) Cluster() bool { return len(c.EtcdEndpoints) > 0 }

// hostname is os.Hostname, replaced in tests.
var hostname = os.Hostname

var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

func parseEtcdEndpoints(c *Config, v string) error {
	if v == "" {
		return nil
	}
	var out []string
	for _, e := range splitList(v) {
		if e == "" {
			return errors.New("has an empty entry: want comma-separated URLs such as http://127.0.0.1:2379")
		}
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("entry %q is not an etcd client URL: want http://host:port or https://host:port", e)
		}
		out = append(out, strings.TrimSuffix(e, "/"))
	}
	c.EtcdEndpoints = out
	return nil
}

func parseNodeID(c *Config, v string) error {
	if v != "" && !nodeIDPattern.MatchString(v) {
		return errors.New("want 1 to 64 characters of [A-Za-z0-9._-]")
	}
	c.NodeID = v
	return nil
}

func parseAdvertiseURL(c *Config, v string) error {
	if v == "" {
		return nil
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return errors.New("want a base URL such as http://10.0.0.5:8080 (no path, query or user info)")
	}
	c.AdvertiseURL = strings.TrimSuffix(v, "/")
	return nil
}

func parseLeaseTTL(c *Config, v string) error {
	d, err := time.ParseDuration(v)
	// etcd grants leases in whole seconds.
	if err != nil || d < time.Second || d%time.Second != 0 {
		return errors.New("want whole seconds, at least 1s, such as 5s")
	}
	c.ClusterLeaseTTL = d
	return nil
}

// crossCheckCluster fills in the derived node id and advertise URL and
// refuses what cannot run as a cluster node.
func (c *Config) crossCheckCluster(bad map[string]bool, add func(name, problem string)) {
	if bad["TALLY_ETCD_ENDPOINTS"] {
		return // whether this is a cluster node is unknown: one message is enough
	}
	if !c.Cluster() {
		for _, v := range []struct{ name, value string }{
			{"TALLY_NODE_ID", c.NodeID}, {"TALLY_ADVERTISE_URL", c.AdvertiseURL}, {"TALLY_CLUSTER_SECRET", c.ClusterSecret},
		} {
			if v.value != "" {
				add(v.name, "is set but TALLY_ETCD_ENDPOINTS is not: it only applies in cluster mode")
			}
		}
		return
	}
	if c.Embedded() {
		add("TALLY_ETCD_ENDPOINTS", "needs TALLY_DATABASE_URL: the nodes of a cluster share one Postgres, which fences their admissions; the embedded store is for a single node")
	}
	host, port, _ := net.SplitHostPort(c.HTTPAddr)
	if c.NodeID == "" && !bad["TALLY_NODE_ID"] {
		h, err := hostname()
		if err != nil || port == "0" {
			add("TALLY_NODE_ID", "is required: it cannot be derived (host name unknown, or TALLY_HTTP_ADDR has port 0)")
		} else {
			id := strings.Map(func(r rune) rune {
				if strings.ContainsRune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", r) {
					return r
				}
				return '-'
			}, h+"-"+port)
			if len(id) > 64 {
				id = id[len(id)-64:]
			}
			c.NodeID = id
		}
	}
	if c.AdvertiseURL == "" && !bad["TALLY_ADVERTISE_URL"] {
		ip := net.ParseIP(host)
		if host == "" || port == "0" || (ip != nil && ip.IsUnspecified()) {
			add("TALLY_ADVERTISE_URL", fmt.Sprintf("is required: TALLY_HTTP_ADDR (%s) does not say how other nodes reach this one; want e.g. http://10.0.0.5:8080", c.HTTPAddr))
		} else {
			c.AdvertiseURL = "http://" + c.HTTPAddr
		}
	}
	switch {
	case c.ClusterSecret == "":
		add("TALLY_CLUSTER_SECRET", fmt.Sprintf("is required in cluster mode: want at least %d bytes, the same on every node", MinSecretLen))
	case c.ClusterSecret == c.JWTSecret || c.ClusterSecret == c.UploadSecret ||
		slices.ContainsFunc(c.AdminCredentials(), func(t NamedToken) bool { return t.Token == c.ClusterSecret }):
		add("TALLY_CLUSTER_SECRET", "must differ from every other secret: a node's key must not mint tokens or open the admin API")
	}
}
