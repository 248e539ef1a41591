package testenv_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tally-dev/tally/internal/testenv"
)

// ping pings addr with opts, bounded by a few seconds.
func ping(t *testing.T, opts *redis.Options) error {
	t.Helper()
	c := redis.NewClient(opts)
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	return c.Ping(ctx).Err()
}

// The guards StartRedisWith sets up are real: a client without the
// password, the user or the CA is refused, and ClientOptions gets in. A
// test of Tally's credentials against a guard that let everybody in would
// prove nothing.
func TestStartRedisWithGuards(t *testing.T) {
	t.Run("requirepass", func(t *testing.T) {
		auth := testenv.RedisAuth{Password: "s3cret-pass"}
		addr, _ := testenv.StartRedisWith(t, auth)
		if err := ping(t, auth.ClientOptions(t, addr)); err != nil {
			t.Fatalf("with the password: %v", err)
		}
		if err := ping(t, &redis.Options{Addr: addr, MaxRetries: -1}); !redis.IsAuthError(err) {
			t.Errorf("without the password: %v, want NOAUTH", err)
		}
	})
	t.Run("acl user", func(t *testing.T) {
		auth := testenv.RedisAuth{User: "tally", Password: "user-pass"}
		addr, _ := testenv.StartRedisWith(t, auth)
		if err := ping(t, auth.ClientOptions(t, addr)); err != nil {
			t.Fatalf("as the user: %v", err)
		}
		// The default user is off, whatever password it is given.
		if err := ping(t, &redis.Options{Addr: addr, Password: "user-pass", MaxRetries: -1}); !redis.IsAuthError(err) {
			t.Errorf("as the default user: %v, want WRONGPASS", err)
		}
	})
	t.Run("tls", func(t *testing.T) {
		auth := testenv.RedisAuth{TLS: testenv.NewTLSFiles(t), ClientCerts: true}
		addr, _ := testenv.StartRedisWith(t, auth)
		if err := ping(t, auth.ClientOptions(t, addr)); err != nil {
			t.Fatalf("over TLS with the client certificate: %v", err)
		}
		if err := ping(t, &redis.Options{Addr: addr, MaxRetries: -1}); err == nil {
			t.Error("a plain-text client got in")
		}
		noCert := auth
		noCert.ClientCerts = false
		if err := ping(t, noCert.ClientOptions(t, addr)); err == nil {
			t.Error("a TLS client without a certificate got in")
		}
		other := testenv.RedisAuth{TLS: testenv.NewTLSFiles(t)}
		if err := ping(t, other.ClientOptions(t, addr)); err == nil {
			t.Error("a client trusting another CA got in")
		}
	})
}

// A guarded Sentinel cluster comes up (its Sentinels authenticate to the
// data nodes and to each other, over TLS when asked) and its Client gets
// in; a client without the Sentinels' password does not. It fails over
// too: the Sentinels promote the replica with their credentials, and the
// killed node's replication resumes with masterauth.
func TestSentinelClusterWithGuards(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts testenv.SentinelOptions
	}{
		{"passwords", testenv.SentinelOptions{
			Data:      testenv.RedisAuth{User: "tally", Password: "data-pass"},
			Sentinels: testenv.RedisAuth{Password: "sentinel-pass"},
		}},
		{"tls", testenv.SentinelOptions{
			Data:      testenv.RedisAuth{Password: "data-pass"},
			Sentinels: testenv.RedisAuth{User: "watcher", Password: "sentinel-pass"},
			TLS:       testenv.NewTLSFiles(t),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testenv.StartSentinelClusterWith(t, tc.opts)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := c.Client(t).Set(ctx, "k", "v", 0).Err(); err != nil {
				t.Fatalf("write through the Sentinels: %v", err)
			}
			noPass := redis.NewFailoverClient(&redis.FailoverOptions{
				MasterName: c.MasterName(), SentinelAddrs: c.SentinelAddrs(),
				Username: tc.opts.Data.User, Password: tc.opts.Data.Password,
				TLSConfig: testenv.RedisAuth{TLS: tc.opts.TLS}.TLSConfig(t), MaxRetries: -1,
			})
			defer noPass.Close()
			if err := noPass.Ping(ctx).Err(); !redis.IsAuthError(err) {
				t.Errorf("without the Sentinels' password: %v, want an authentication error", err)
			}

			killed := c.KillMaster(t)
			c.WaitForFailover(t, killed, 20*time.Second)
			mustRoundTrip(t.Context(), t, c.Client(t), "after")
			c.RestartKilled(t) // waits until it is a replica in sync again
		})
	}
}
