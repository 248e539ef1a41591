# Tally's tasks. `make` alone lists them: every target with a `## ` comment
# is shown by `help`, so the list cannot drift from what the file does.

GO       ?= go
GOFMT    ?= gofmt
BIN      ?= bin/tally
FUZZ     ?= FuzzDecodeCreateSession
FUZZPKG  ?= ./transport
FUZZTIME ?= 60s
IMAGE    ?= tally:dev
# Flags of tally-bench, e.g. BENCHFLAGS='--quick --skip-million'.
BENCHFLAGS ?=
# Flags of the overload suite, e.g. OVERLOADFLAGS='--quick' or
# OVERLOADFLAGS='--only capacity,overload --max-in-flight 256'.
OVERLOADFLAGS ?=

.DEFAULT_GOAL := help
.PHONY: help build run etcd cluster cluster-stop test lint fmt fuzz bench bench-diff bench-compare overload mutants clean docker

help: ## List the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-14s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

build: ## Build the binary into bin/tally
	$(GO) build -o $(BIN) ./cmd/tally

run: build ## Build and run the service on embedded stores (SQL store in ./data, in-process Redis)
	TALLY_DATA_DIR=./data ./$(BIN) serve

# The etcd server cluster mode runs on (tools/etcd: the upstream server,
# built from its Go module, which is kept out of Tally's go.mod). Rebuilt
# only when missing or older than its module files: ~1 minute from an empty
# build cache, ~20 s with the dependencies built.
ETCD_BIN ?= bin/etcd
etcd: $(ETCD_BIN) ## Build the etcd server (3.7, from Go modules) into bin/etcd
$(ETCD_BIN): tools/etcd/main.go tools/etcd/go.mod tools/etcd/go.sum
	cd tools/etcd && $(GO) build -o $(abspath $(ETCD_BIN)) .

cluster: build etcd ## Start a local cluster: 3 etcd members and 3 Tally nodes (127.0.0.1:8081-8083) on the machine's Postgres and Redis
	tools/cluster/cluster.sh start

cluster-stop: ## Stop the local cluster started by make cluster (its data and logs stay in data/cluster)
	tools/cluster/cluster.sh stop

# The short fuzz run keeps the request decoder's corpus exercised on every
# `make test`; `make fuzz` is the long run. The cluster tests start real
# etcd members from bin/etcd, hence the prerequisite.
test: $(ETCD_BIN) ## Build bin/etcd if needed, run all tests with the race detector, then a 10s fuzz of request decoding
	$(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -run='^$$' -fuzz=$(FUZZ) -fuzztime=10s $(FUZZPKG)

lint: ## Run go vet and staticcheck
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

fmt: ## Fail, listing them, if any Go file is not gofmt-formatted
	@files="$$($(GOFMT) -l .)"; \
	if [ -n "$$files" ]; then echo "not gofmt-formatted (run gofmt -w):"; echo "$$files"; exit 1; fi

fuzz: ## Fuzz request decoding for FUZZTIME (default 60s)
	$(GO) test -run='^$$' -fuzz=$(FUZZ) -fuzztime=$(FUZZTIME) $(FUZZPKG)

bench: ## Run the benchmarks with allocation counts
	$(GO) test -run='^$$' -bench=. -benchmem ./...

# Go benchmarks of BASE (a git ref) against the working tree, 6 runs each,
# compared with benchstat. BENCH narrows them (a -bench regexp), PKGS the
# packages, e.g. make bench-diff BASE=main~3 BENCH=AdmitBatch PKGS=./persistence/postgres
BASE ?= HEAD~1
BENCH ?= .
PKGS ?= ./...
BENCHSTAT = golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
bench-diff: ## Compare Go benchmarks between BASE (git ref, default HEAD~1) and the working tree with benchstat
	@mkdir -p bin && rm -rf bin/bench-base && git worktree prune
	git worktree add --detach bin/bench-base $(BASE)
	cd bin/bench-base && $(GO) test -run='^$$' -bench='$(BENCH)' -benchmem -count=6 $(PKGS) > ../bench-base.txt; \
		status=$$?; cd ../.. && git worktree remove --force bin/bench-base; exit $$status
	$(GO) test -run='^$$' -bench='$(BENCH)' -benchmem -count=6 $(PKGS) > bin/bench-head.txt
	$(GO) run $(BENCHSTAT) bin/bench-base.txt bin/bench-head.txt

# Ratios measured in one run on this machine (see tools/bench), each the
# ratio of the medians of alternating rounds (BENCHFLAGS='--rounds N'):
# 35-45 minutes by default (mostly the million-users phase and the cluster
# phases, ~15; the cluster phases start bin/etcd, hence the prerequisite), ~4
# with BENCHFLAGS='--quick --skip-million --skip-cluster'. BENCH_BASE_REF (a git ref) adds the
# cpu phase: CPU per admitted create of the working tree's `tally serve`
# against REF's, e.g. make bench-compare BENCH_BASE_REF=main~3
# BENCHFLAGS='--quick --only many,cpu'. Results go to bin/bench-results/.
BENCH_BASE_REF ?=
bench-compare: $(ETCD_BIN) ## Run the side-by-side benchmark (Tally vs row-lock pgbench vs bare Gin, cluster vs single nodes; BENCH_BASE_REF=REF adds CPU per create vs REF) and print the ratios
	$(GO) run ./cmd/tally-bench $(if $(BENCH_BASE_REF),--base-ref $(BENCH_BASE_REF)) $(BENCHFLAGS)

# The overload, restart, slow-client and poison scenarios (README, "Overload
# scenarios"): ~5 minutes, ~3 with OVERLOADFLAGS=--quick. The vegeta
# cross-check needs `go install github.com/tsenart/vegeta/v12@v12.13.0` and is
# skipped, with a message, without it. Results go to bin/bench-results/.
overload: ## Run the overload scenarios (2x/3x capacity, vegeta, restart, slow clients, poison) and print figures vs targets
	$(GO) run ./cmd/tally-bench --suite overload $(OVERLOADFLAGS)

# Each curated invariant mutation (tools/mutants) applied in a scratch copy,
# running only the packages that should catch it; fails if any survives.
# Minutes, not seconds: not part of `make test`. MUTANTS narrows the run.
MUTANTS ?=
mutants: ## Run the invariant mutations (tools/mutants) and fail if any survives
	$(GO) run ./cmd/tally-mutants $(if $(MUTANTS),--only $(MUTANTS))

# ./data is left alone: it is the embedded store, i.e. a user's data.
clean: ## Remove build output (bin/)
	rm -rf bin

docker: ## Build the container image IMAGE (default tally:dev); needs a Docker engine
	docker build -t $(IMAGE) .
