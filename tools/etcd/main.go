// Package main builds the etcd server that cluster tests, `make cluster` and
// the drills run (bin/etcd, see the Makefile's etcd target). It is the
// upstream server, unchanged: go.etcd.io/etcd/server/v3 cannot be installed
// with `go install` because its go.mod has replace directives, so this
// module requires it and calls its entry point. It is a module of its own so
// that the server's dependencies stay out of Tally's go.mod.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
