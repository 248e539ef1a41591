package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"
)

// RedisAuth is how a private redis-server guards itself: a password, an
// ACL user, TLS. The zero value is the open server StartRedis starts.
type RedisAuth struct {
	// User, when set, is an ACL user with Password and every permission,
	// and the default user is switched off, so that only User gets in.
	// Else a non-empty Password is the default user's (requirepass).
	User, Password string
	// KeyPattern limits the keys User may touch (an ACL pattern such as
	// "tally:*"); empty: every key.
	KeyPattern string
	// TLS, when set, makes the server speak TLS only (no plain port),
	// presenting TLS.CertFile, which TLS.CAFile signed.
	TLS *TLSFiles
	// ClientCerts makes a TLS server refuse a client without a
	// certificate signed by TLS.CAFile.
	ClientCerts bool
}

// directives are the redis.conf lines that set the port and apply a, each
// as its words: a config file joins them with spaces, a command line
// prefixes the first with "--". Sentinel takes the same ones.
func (a RedisAuth) directives(port int) [][]string {
	var d [][]string
	if a.TLS == nil {
		d = append(d, []string{"port", strconv.Itoa(port)})
	} else {
		clients := "no"
		if a.ClientCerts {
			clients = "yes"
		}
		d = append(d,
			[]string{"port", "0"},
			[]string{"tls-port", strconv.Itoa(port)},
			[]string{"tls-cert-file", a.TLS.CertFile},
			[]string{"tls-key-file", a.TLS.KeyFile},
			[]string{"tls-ca-cert-file", a.TLS.CAFile},
			[]string{"tls-auth-clients", clients},
			// A replica, and a Sentinel, reach their peers over TLS too.
			[]string{"tls-replication", "yes"},
		)
	}
	switch {
	case a.User != "":
		keys := a.KeyPattern
		if keys == "" {
			keys = "*"
		}
		d = append(d,
			[]string{"user", "default", "off"},
			[]string{"user", a.User, "on", ">" + a.Password, "~" + keys, "&*", "+@all"},
		)
	case a.Password != "":
		d = append(d, []string{"requirepass", a.Password})
	}
	return d
}

// ClientOptions are the options of a go-redis client that gets into a
// server guarded by a at addr.
func (a RedisAuth) ClientOptions(tb testing.TB, addr string) *redis.Options {
	tb.Helper()
	return &redis.Options{Addr: addr, Username: a.User, Password: a.Password, TLSConfig: a.TLSConfig(tb), MaxRetries: -1}
}

// TLSConfig is the client side of a's TLS: the test CA as the only root,
// the certificate's first name as the server name (whatever address is
// dialled), and the client certificate when the server asks for one; nil
// without TLS.
func (a RedisAuth) TLSConfig(tb testing.TB) *tls.Config {
	tb.Helper()
	if a.TLS == nil {
		return nil
	}
	pem, err := os.ReadFile(a.TLS.CAFile)
	if err != nil {
		tb.Fatalf("tls: read CA: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		tb.Fatalf("tls: %s holds no certificate", a.TLS.CAFile)
	}
	cfg := &tls.Config{RootCAs: roots, ServerName: a.TLS.Hosts[0], MinVersion: tls.VersionTLS12}
	if a.ClientCerts {
		cert, err := tls.LoadX509KeyPair(a.TLS.ClientCertFile, a.TLS.ClientKeyFile)
		if err != nil {
			tb.Fatalf("tls: load client certificate: %v", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

// StartRedisWith is StartRedis for a server guarded by auth: a password,
// an ACL user, TLS. auth.ClientOptions(tb, addr) gets in.
func StartRedisWith(tb testing.TB, auth RedisAuth) (addr string, kill func()) {
	tb.Helper()
	return startRedisOn(tb, FreePort(tb), auth)
}
