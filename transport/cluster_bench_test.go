package transport_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tally-dev/tally/domain"
	"github.com/tally-dev/tally/transport"
)

// BenchmarkClusterOverLimit measures over-limit rejections over real HTTP
// on 127.0.0.1, sent to the user's owner and sent to another node, which
// forwards each one to the owner. Accounts answers at once, so the figures
// are the edges' and the network's cost. The owner's ns/op over the
// non-owner's is the forwarding ratio (non-owner rate / owner rate) that
// docs/decisions/0023-forward-once-to-the-owner.md reports; on a machine
// others are using, compare cpu-ns/op, the process's CPU time per request.
func BenchmarkClusterOverLimit(b *testing.B) {
	limit := &domain.LimitExceededError{Code: domain.CodeSessionLimit, Plan: "free", Usage: 10, Limit: 10, Period: period}
	serve := func(id string, route func(domain.Partition) transport.Route) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		h, err := transport.New(transport.Options{
			Accounts: &fakeAccounts{createSession: func(context.Context, string, domain.NewSession, string) (domain.Session, error) {
				return domain.Session{}, limit
			}},
			Catalog: domain.DefaultCatalog(), JWTSecret: secret, AdminToken: adminToken,
			UploadBaseURL: "http://127.0.0.1/uploads", Providers: []string{"google"},
			Logger:   slog.New(slog.DiscardHandler),
			Registry: prometheus.NewRegistry(),
			Cluster:  &fakeCluster{id: id, route: route}, ClusterSecret: clusterSecret, Lookups: noLookups{},
		})
		if err != nil {
			b.Fatal(err)
		}
		srv := &http.Server{Handler: h}
		go func() { _ = srv.Serve(ln) }()
		b.Cleanup(func() { _ = srv.Close() })
		return "http://" + ln.Addr().String()
	}
	owner := serve("a", self)
	other := serve("b", func(domain.Partition) transport.Route { return transport.Route{NodeID: "a", URL: owner, Epoch: 1} })

	tok, _ := transport.IssueToken(secret, "u1", time.Hour, time.Now())
	body := `{"title":"Weekly sync","language":"en-US","stt_provider":"google"}`
	for _, target := range []struct{ name, url, node string }{{"owner", owner, "a"}, {"non-owner", other, "a"}} {
		b.Run(target.name, func(b *testing.B) {
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}}
			defer client.CloseIdleConnections()
			b.SetParallelism(16) // requests in flight, not CPUs: HTTP waits
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime(b)
			defer func() { b.ReportMetric(float64((cpuTime(b)-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op") }()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequest("POST", target.url+"/api/v1/sessions", strings.NewReader(body))
					req.Header.Set("Authorization", "Bearer "+tok)
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					if resp.StatusCode != 403 || resp.Header.Get(transport.HeaderNode) != target.node {
						b.Errorf("status %d, node %q", resp.StatusCode, resp.Header.Get(transport.HeaderNode))
						return
					}
				}
			})
		})
	}
}

// cpuTime is the CPU time the process has used (user and system): all
// three parties of the benchmark run in it, so CPU per request is the
// figure that bounds the rate on a busy machine, where ns/op also counts
// the time others take.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
