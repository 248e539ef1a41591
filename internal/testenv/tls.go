package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TLSFiles are PEM files of a throwaway certificate authority made for one
// test: its certificate, a server certificate it signed (for 127.0.0.1 and
// localhost unless told otherwise), and a client certificate it signed,
// each with its key. They
// serve redis-server's tls-* directives and the client's CA and client
// certificate settings alike.
type TLSFiles struct {
	// CAFile is the authority's certificate.
	CAFile string
	// CertFile and KeyFile are the server certificate and its key.
	CertFile, KeyFile string
	// ClientCertFile and ClientKeyFile are a client certificate and its key.
	ClientCertFile, ClientKeyFile string
	// Hosts are the names the server certificate carries.
	Hosts []string
}

// NewTLSFiles makes a fresh authority and its certificates in a temporary
// directory. The server certificate names hosts (IP addresses or DNS
// names), by default 127.0.0.1 and localhost; a certificate for another
// name is how a test sees the host checked. Two calls make two unrelated
// authorities: the second one's CA does not trust the first one's server,
// which is how a test gets a wrong CA file.
func NewTLSFiles(tb testing.TB, hosts ...string) *TLSFiles {
	tb.Helper()
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1", "localhost"}
	}
	var ips []net.IP
	var dns []string
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, h)
		}
	}
	dir := tb.TempDir()
	now := time.Now()
	caKey := newKey(tb)
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{CommonName: "tally test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatalf("tls: create CA: %v", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		tb.Fatalf("tls: parse CA: %v", err)
	}
	f := &TLSFiles{
		CAFile:         filepath.Join(dir, "ca.crt"),
		CertFile:       filepath.Join(dir, "server.crt"),
		KeyFile:        filepath.Join(dir, "server.key"),
		ClientCertFile: filepath.Join(dir, "client.crt"),
		ClientKeyFile:  filepath.Join(dir, "client.key"),
		Hosts:          hosts,
	}
	writePEM(tb, f.CAFile, "CERTIFICATE", caDER)
	leaf := func(certFile, keyFile, name string, usage []x509.ExtKeyUsage, ips []net.IP, dns []string) {
		key := newKey(tb)
		tmpl := &x509.Certificate{
			SerialNumber: serial(tb),
			Subject:      pkix.Name{CommonName: name},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  usage,
			IPAddresses:  ips,
			DNSNames:     dns,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			tb.Fatalf("tls: create %s certificate: %v", name, err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			tb.Fatalf("tls: marshal %s key: %v", name, err)
		}
		writePEM(tb, certFile, "CERTIFICATE", der)
		writePEM(tb, keyFile, "PRIVATE KEY", keyDER)
	}
	// A Redis that replicates or a Sentinel that monitors over TLS is also
	// a TLS client and presents the same certificate: the server
	// certificate serves both ends.
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	leaf(f.CertFile, f.KeyFile, "redis", both, ips, dns)
	leaf(f.ClientCertFile, f.ClientKeyFile, "tally", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil)
	return f
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("tls: generate key: %v", err)
	}
	return k
}

func serial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		tb.Fatalf("tls: serial: %v", err)
	}
	return n
}

func writePEM(tb testing.TB, path, typ string, der []byte) {
	tb.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		tb.Fatalf("tls: write %s: %v", path, err)
	}
}
