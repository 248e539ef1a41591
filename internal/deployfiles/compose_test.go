package deployfiles

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/tally-dev/tally/config"
)

// composeFile is the repository's compose file, two levels up.
var composeFile = filepath.Join("..", "..", "docker-compose.yml")

// secrets are the variables the compose file must take from the
// environment; two distinct sets let a test tell a value that comes from
// the environment from one written into the file.
func secrets(set string) map[string]string {
	return map[string]string{
		"TALLY_JWT_SECRET":              set + "-jwt-secret-0123456789abcdef0123456789",
		"TALLY_ADMIN_TOKEN":             set + "-admin-token-0123456789abcdef0123456789",
		"TALLY_POSTGRES_PASSWORD":       set + "-postgres-password",
		"TALLY_REDIS_PASSWORD":          set + "-redis-password",
		"TALLY_REDIS_SENTINEL_PASSWORD": set + "-sentinel-password",
		"TALLY_CLUSTER_SECRET":          set + "-cluster-secret-0123456789abcdef0123456789",
	}
}

// load reads the compose file as `docker compose --profile P config`
// would, with exactly env as the environment (nothing from this process's).
func load(t *testing.T, env map[string]string, profiles ...string) (*types.Project, error) {
	t.Helper()
	var list []string
	for k, v := range env {
		list = append(list, k+"="+v)
	}
	opts, err := cli.NewProjectOptions([]string{composeFile},
		cli.WithEnv(list), cli.WithProfiles(profiles), cli.WithName("tally"),
		cli.WithWorkingDirectory(filepath.Dir(composeFile)))
	if err != nil {
		t.Fatal(err)
	}
	return opts.LoadProject(context.Background())
}

func mustLoad(t *testing.T, env map[string]string, profiles ...string) *types.Project {
	t.Helper()
	p, err := load(t, env, profiles...)
	if err != nil {
		t.Fatalf("loading %s with profiles %v: %v", composeFile, profiles, err)
	}
	return p
}

// tallyServices are the services that run the Tally image.
func tallyServices(p *types.Project) []types.ServiceConfig {
	var out []types.ServiceConfig
	for _, s := range p.Services {
		if s.Build != nil {
			out = append(out, s)
		}
	}
	return out
}

func env(s types.ServiceConfig, name string) string {
	if v := s.Environment[name]; v != nil {
		return *v
	}
	return ""
}

// Every secret must be given: compose refuses to start, naming the
// variable, rather than fall back to a default that would be a published
// password.
func TestComposeRefusesToStartWithoutEachSecret(t *testing.T) {
	for _, name := range []string{"TALLY_JWT_SECRET", "TALLY_ADMIN_TOKEN", "TALLY_POSTGRES_PASSWORD", "TALLY_REDIS_PASSWORD"} {
		t.Run(name, func(t *testing.T) {
			e := secrets("a")
			delete(e, name)
			_, err := load(t, e)
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Fatalf("compose file loads without %s (err %v); it must refuse, naming it", name, err)
			}
		})
	}
	// The sentinel and cluster profiles' own secrets cannot be required by
	// interpolation (compose interpolates inactive profiles too), so a plain
	// `up` must load without it.
	e := secrets("a")
	delete(e, "TALLY_REDIS_SENTINEL_PASSWORD")
	delete(e, "TALLY_CLUSTER_SECRET")
	mustLoad(t, e)
}

// profiles are the ways the file is brought up: plain, and each profile.
var profiles = [][]string{nil, {"sentinel"}, {"cluster"}}

// secretName matches environment variables that hold credentials.
var secretName = regexp.MustCompile(`(?i)password|secret|token|_URL$|_AUTH$`)

// No credential is written into the file: every variable that holds one
// (or a URL that may carry one) changes when the environment's secrets do.
func TestComposeHasNoFixedCredentials(t *testing.T) {
	for _, profile := range profiles {
		a, b := mustLoad(t, secrets("a"), profile...), mustLoad(t, secrets("b"), profile...)
		for name, sa := range a.Services {
			sb := b.Services[name]
			for k := range sa.Environment {
				if !secretName.MatchString(k) || k == "TALLY_UPLOAD_BASE_URL" || k == "TALLY_REDIS_SENTINELS" || k == "TALLY_ADVERTISE_URL" {
					continue
				}
				if env(sa, k) == env(sb, k) {
					t.Errorf("service %s: %s=%q does not come from the environment", name, k, env(sa, k))
				}
			}
		}
	}
}

// Ports are published on loopback unless the operator says otherwise.
func TestComposePublishesOnLoopbackByDefault(t *testing.T) {
	p := mustLoad(t, secrets("a"), "sentinel", "cluster")
	n := 0
	for name, s := range p.Services {
		for _, port := range s.Ports {
			n++
			if port.HostIP != "127.0.0.1" {
				t.Errorf("service %s publishes %s on %q, want 127.0.0.1", name, port.Published, port.HostIP)
			}
		}
	}
	if n == 0 {
		t.Fatal("no published port at all: the API must be reachable from the host")
	}
	// The API, and only the API, may be published further on purpose.
	e := secrets("a")
	e["TALLY_PUBLISH_HOST"] = "0.0.0.0"
	for name, s := range mustLoad(t, e).Services {
		for _, port := range s.Ports {
			if port.Target != 8080 && port.HostIP != "127.0.0.1" {
				t.Errorf("service %s publishes port %d beyond loopback; only the API may be", name, port.Target)
			}
		}
	}
}

// Every service has a healthcheck, Tally starts only once its dependencies
// pass theirs, and the Postgres check asks over TCP: on a fresh volume the
// image first runs a socket-only server for its init scripts, which a
// socket check reports ready.
func TestComposeHealthchecksCannotPassEarly(t *testing.T) {
	p := mustLoad(t, secrets("a"), "sentinel", "cluster")
	for name, s := range p.Services {
		if s.HealthCheck == nil || len(s.HealthCheck.Test) == 0 {
			t.Errorf("service %s has no healthcheck", name)
		}
	}
	pg := p.Services["postgres"]
	test := pg.HealthCheck.Test
	if i := slices.Index(test, "-h"); i < 0 || i+1 >= len(test) || strings.HasPrefix(test[i+1], "/") {
		t.Errorf("postgres healthcheck %q must reach the server over TCP (-h HOST), not the socket", test)
	}
	for _, s := range tallyServices(p) {
		if len(s.DependsOn) == 0 {
			t.Errorf("service %s starts without waiting for anything", s.Name)
		}
		for dep, d := range s.DependsOn {
			if d.Condition != types.ServiceConditionHealthy {
				t.Errorf("service %s waits for %s to be %q, want healthy", s.Name, dep, d.Condition)
			}
		}
	}
	// A Redis that answers an error (LOADING, NOAUTH) is not healthy, and
	// redis-cli exits 0 on an error reply: the check must compare the reply.
	for name, s := range p.Services {
		if strings.Contains(strings.Join(s.Command, " "), "redis-server") && !strings.Contains(strings.Join(s.HealthCheck.Test, " "), "PONG") &&
			!strings.Contains(strings.Join(s.HealthCheck.Test, " "), "get-master-addr-by-name") {
			t.Errorf("service %s: healthcheck %q does not check the reply", name, s.HealthCheck.Test)
		}
	}
}

// Each Tally service's environment is a configuration Tally accepts: every
// TALLY_ variable exists, and config.Load passes.
func TestComposeTallyEnvironmentIsValidConfig(t *testing.T) {
	known := map[string]bool{}
	for _, v := range config.Vars() {
		known[v.Name] = true
	}
	for _, profile := range profiles {
		p := mustLoad(t, secrets("a"), profile...)
		services := tallyServices(p)
		if len(services) == 0 {
			t.Fatal("no service builds the Tally image")
		}
		for _, s := range services {
			for k := range s.Environment {
				if strings.HasPrefix(k, "TALLY_") && !known[k] {
					t.Errorf("service %s sets %s, which Tally does not read", s.Name, k)
				}
			}
			if _, err := config.Load(func(k string) string { return env(s, k) }); err != nil {
				t.Errorf("service %s: Tally refuses its configuration: %v", s.Name, err)
			}
		}
	}
}

// The sentinel profile is the README's drill: a primary, a replica and
// three Sentinels with quorum 2, and a Tally that finds the primary through
// exactly those Sentinels by the name they monitor.
func TestComposeSentinelProfileMatchesTheDrill(t *testing.T) {
	p := mustLoad(t, secrets("a"), "sentinel")
	var sentinels []string
	monitor := regexp.MustCompile(`sentinel monitor (\S+) (\S+) (\d+) (\d+)`)
	master := ""
	for name, s := range p.Services {
		cmd := strings.Join(s.Command, " ")
		if !strings.Contains(cmd, "--sentinel") {
			continue
		}
		sentinels = append(sentinels, name+":26379")
		m := monitor.FindStringSubmatch(cmd)
		if m == nil {
			t.Fatalf("sentinel %s monitors nothing", name)
		}
		if m[2] != "redis-primary" || m[4] != "2" {
			t.Errorf("sentinel %s monitors %s with quorum %s, want redis-primary with 2", name, m[2], m[4])
		}
		if master != "" && m[1] != master {
			t.Errorf("sentinels disagree on the master name: %s and %s", master, m[1])
		}
		master = m[1]
	}
	if len(sentinels) != 3 {
		t.Fatalf("sentinel profile runs %d Sentinels, want 3", len(sentinels))
	}
	replica := strings.Join(p.Services["redis-replica"].Command, " ")
	if !strings.Contains(replica, "--replicaof redis-primary 6379") {
		t.Errorf("redis-replica does not replicate redis-primary: %q", replica)
	}
	ts, ok := p.Services["tally-sentinel"]
	if !ok {
		t.Fatal("sentinel profile has no Tally on Sentinel")
	}
	got := strings.Split(env(ts, "TALLY_REDIS_SENTINELS"), ",")
	slices.Sort(got)
	slices.Sort(sentinels)
	if !slices.Equal(got, sentinels) {
		t.Errorf("tally-sentinel asks Sentinels %v, the profile runs %v", got, sentinels)
	}
	if env(ts, "TALLY_REDIS_MASTER") != master {
		t.Errorf("tally-sentinel asks for master %q, the Sentinels monitor %q", env(ts, "TALLY_REDIS_MASTER"), master)
	}
}

// The Dockerfile runs as a non-root user and builds the binary the compose
// healthcheck calls.
func TestDockerfileRunsNonRoot(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	if !regexp.MustCompile(`(?m)^USER nonroot`).MatchString(text) {
		t.Error("the image does not switch to the nonroot user")
	}
	if !strings.Contains(text, "./cmd/tally") || !strings.Contains(text, `ENTRYPOINT ["/tally"]`) {
		t.Error("the image does not build cmd/tally into /tally, which the compose healthcheck runs")
	}
}

// The cluster profile runs three etcd members that agree on their initial
// cluster, and three Tally nodes, each with a distinct id, an advertise URL
// the others can reach on the compose network, and all three members.
func TestComposeClusterProfile(t *testing.T) {
	p := mustLoad(t, secrets("a"), "cluster")
	flag := func(cmd []string, name string) string {
		for _, a := range cmd {
			if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
				return v
			}
		}
		return ""
	}
	var clients, members []string
	initial := ""
	for name, s := range p.Services {
		if !strings.Contains(s.Image, "etcd") {
			continue
		}
		if flag(s.Command, "name") != name {
			t.Errorf("etcd service %s is named %q", name, flag(s.Command, "name"))
		}
		clients = append(clients, flag(s.Command, "advertise-client-urls"))
		members = append(members, name+"="+flag(s.Command, "initial-advertise-peer-urls"))
		if ic := flag(s.Command, "initial-cluster"); initial != "" && ic != initial {
			t.Errorf("etcd members disagree on the initial cluster: %q and %q", initial, ic)
		} else {
			initial = ic
		}
	}
	if len(clients) != 3 {
		t.Fatalf("cluster profile runs %d etcd members, want 3", len(clients))
	}
	got := strings.Split(initial, ",")
	slices.Sort(got)
	slices.Sort(members)
	if !slices.Equal(got, members) {
		t.Errorf("initial cluster %v, members advertise %v", got, members)
	}
	slices.Sort(clients)
	ids := map[string]bool{}
	nodes := 0
	for _, s := range tallyServices(p) {
		if env(s, "TALLY_ETCD_ENDPOINTS") == "" {
			continue
		}
		nodes++
		eps := strings.Split(env(s, "TALLY_ETCD_ENDPOINTS"), ",")
		slices.Sort(eps)
		if !slices.Equal(eps, clients) {
			t.Errorf("%s asks etcd at %v, the members are %v", s.Name, eps, clients)
		}
		id := env(s, "TALLY_NODE_ID")
		if ids[id] {
			t.Errorf("node id %q used twice", id)
		}
		ids[id] = true
		if want := "http://" + s.Name + ":8080"; env(s, "TALLY_ADVERTISE_URL") != want {
			t.Errorf("%s advertises %q, want %q (its name on the compose network)", s.Name, env(s, "TALLY_ADVERTISE_URL"), want)
		}
	}
	if nodes != 3 {
		t.Errorf("cluster profile runs %d Tally nodes, want 3", nodes)
	}
}
