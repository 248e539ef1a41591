package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// Direction is the way the bytes a toxic acts on travel.
type Direction string

// The two directions of a proxied connection.
const (
	// Upstream is client → server: requests.
	Upstream Direction = "upstream"
	// Downstream is server → client: replies.
	Downstream Direction = "downstream"
)

// FaultProxy is an in-process TCP proxy (toxiproxy) between a client under
// test and a real server, that injects faults on demand: latency, replies
// swallowed after the server acted on the request, connections reset or
// cut after some bytes, and the whole path going down and up again. Each
// fault is a named toxic; Remove and Reset take them away.
type FaultProxy struct {
	proxy *toxiproxy.Proxy
	addr  string
	seq   atomic.Int64
}

// proxies numbers the proxies of one test binary: toxiproxy names them.
var proxies atomic.Int64

// Proxy starts a FaultProxy on a free port of 127.0.0.1 that forwards to
// upstream (host:port). Point the client at Addr. It is stopped when the
// test ends.
func Proxy(tb testing.TB, upstream string) *FaultProxy {
	tb.Helper()
	// Its logs (every accepted connection) would only bury the test's own.
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	name := fmt.Sprintf("proxy-%d", proxies.Add(1))
	p := toxiproxy.NewProxy(server, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		tb.Fatalf("fault proxy to %s: %v", upstream, err)
	}
	// Start resolved port 0 to the port it listens on; re-enabling the
	// proxy after Disable listens there again.
	p.Lock()
	addr := p.Listen
	p.Unlock()
	tb.Cleanup(p.Stop)
	return &FaultProxy{proxy: p, addr: addr}
}

// Addr is the proxy's listen address (host:port), the same for its whole
// life, across Disable and Enable.
func (p *FaultProxy) Addr() string { return p.addr }

// Toxiproxy is the underlying proxy, for faults this type has no helper for.
func (p *FaultProxy) Toxiproxy() *toxiproxy.Proxy { return p.proxy }

// Latency delays every chunk travelling in dir by latency (± jitter). It
// returns the toxic's name, for Remove.
func (p *FaultProxy) Latency(tb testing.TB, dir Direction, latency, jitter time.Duration) string {
	tb.Helper()
	return p.add(tb, "latency", dir, map[string]int64{"latency": latency.Milliseconds(), "jitter": jitter.Milliseconds()})
}

// DropReplies swallows every byte the server sends from now on while the
// connections stay open: the server has acted on the request, the client
// waits for an answer that never comes (a lost COMMIT or EXEC reply, an
// unknown outcome). Clients see their own timeouts. Removing the toxic
// closes the connections it swallowed replies on.
func (p *FaultProxy) DropReplies(tb testing.TB) string {
	tb.Helper()
	return p.add(tb, "timeout", Downstream, map[string]int64{"timeout": 0})
}

// Timeout stops forwarding in dir and closes the connection after d (0:
// never closes, like DropReplies for that direction).
func (p *FaultProxy) Timeout(tb testing.TB, dir Direction, d time.Duration) string {
	tb.Helper()
	return p.add(tb, "timeout", dir, map[string]int64{"timeout": d.Milliseconds()})
}

// ResetPeer closes each connection d after the next bytes arrive in dir,
// with a TCP reset on connections opened after the toxic was added.
func (p *FaultProxy) ResetPeer(tb testing.TB, dir Direction, d time.Duration) string {
	tb.Helper()
	return p.add(tb, "reset_peer", dir, map[string]int64{"timeout": d.Milliseconds()})
}

// LimitData closes each connection once n bytes have travelled in dir:
// a reply (or request) cut in the middle.
func (p *FaultProxy) LimitData(tb testing.TB, dir Direction, n int64) string {
	tb.Helper()
	return p.add(tb, "limit_data", dir, map[string]int64{"bytes": n})
}

// Remove takes one toxic away.
func (p *FaultProxy) Remove(tb testing.TB, name string) {
	tb.Helper()
	if err := p.proxy.Toxics.RemoveToxic(context.Background(), name); err != nil {
		tb.Fatalf("fault proxy: remove toxic %s: %v", name, err)
	}
}

// Reset takes every toxic away.
func (p *FaultProxy) Reset() {
	p.proxy.Toxics.ResetToxics(context.Background())
}

// Disable cuts the path: open connections are closed and new ones are
// refused, as when the server's host goes away.
func (p *FaultProxy) Disable() { p.proxy.Stop() }

// Enable accepts connections again on the same address.
func (p *FaultProxy) Enable(tb testing.TB) {
	tb.Helper()
	if err := p.proxy.Start(); err != nil && err != toxiproxy.ErrProxyAlreadyStarted {
		tb.Fatalf("fault proxy: enable on %s: %v", p.addr, err)
	}
}

// add installs a toxic through toxiproxy's JSON entry point, the one that
// builds a toxic of a registered type with its attributes: the in-process
// API has no typed constructor for it.
func (p *FaultProxy) add(tb testing.TB, typ string, dir Direction, attrs map[string]int64) string {
	tb.Helper()
	name := fmt.Sprintf("%s_%s_%d", typ, dir, p.seq.Add(1))
	body, err := json.Marshal(map[string]any{
		"name": name, "type": typ, "stream": string(dir), "toxicity": 1.0, "attributes": attrs,
	})
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := p.proxy.Toxics.AddToxicJson(bytes.NewReader(body)); err != nil {
		tb.Fatalf("fault proxy: add %s toxic: %v", typ, err)
	}
	return name
}
