#!/usr/bin/env bash
# cluster.sh start|stop|status: a local Tally cluster on this machine — three
# etcd members (bin/etcd) and three Tally nodes (bin/tally) on the machine's
# PostgreSQL (127.0.0.1:5432, database tally_cluster) and Redis
# (127.0.0.1:6379, key prefix tally-cluster:). `make cluster` and
# `make cluster-stop` call it. Everything it starts listens on 127.0.0.1 and
# keeps its state, logs and pid files in TALLY_CLUSTER_DIR (./data/cluster).
set -euo pipefail

cd "$(dirname "$0")/../.."
DIR=${TALLY_CLUSTER_DIR:-./data/cluster}
PG=${TALLY_CLUSTER_PG:-postgres://postgres@127.0.0.1:5432}
REDIS=${TALLY_CLUSTER_REDIS:-redis://127.0.0.1:6379/0}
NODES=3
ETCD_CLIENT=(2379 22379 32379)
ETCD_PEER=(2380 22380 32380)
API_PORT=8081 # node i listens on API_PORT+i-1, its ops listener on 9081+i-1

die() { echo "cluster: $*" >&2; exit 1; }

# wait_http URL SECONDS: polls until URL answers 200.
wait_http() {
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		if curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	return 1
}

# running NAME: whether NAME's pid file names a live process.
running() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

start() {
	[ -x bin/etcd ] || die "bin/etcd is missing: run make etcd"
	[ -x bin/tally ] || die "bin/tally is missing: run make build"
	command -v curl >/dev/null || die "curl is needed to wait for the nodes"
	mkdir -p "$DIR"
	chmod 700 "$DIR"
	# Secrets are generated once and kept, so tokens stay valid across
	# restarts of the cluster.
	if [ ! -f "$DIR/env" ]; then
		umask 077
		{
			echo "export TALLY_JWT_SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
			echo "export TALLY_ADMIN_TOKEN=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
		} >"$DIR/env"
	fi
	# The nodes' own key is kept apart from the env file that users source
	# for bin/tally token and load, which refuse cluster-only variables.
	if [ ! -f "$DIR/cluster-secret" ]; then
		(umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$DIR/cluster-secret")
	fi
	# shellcheck disable=SC1091
	. "$DIR/env"
	if command -v psql >/dev/null; then
		psql "$PG/postgres" -qtAc "SELECT 1 FROM pg_database WHERE datname = 'tally_cluster'" | grep -q 1 ||
			psql "$PG/postgres" -qc "CREATE DATABASE tally_cluster"
	fi

	local initial="" i
	for ((i = 1; i <= 3; i++)); do
		initial+="etcd-$i=http://127.0.0.1:${ETCD_PEER[i - 1]},"
	done
	initial=${initial%,}
	for ((i = 1; i <= 3; i++)); do
		running "etcd-$i" && continue
		bin/etcd --name "etcd-$i" --data-dir "$DIR/etcd-$i" \
			--listen-client-urls "http://127.0.0.1:${ETCD_CLIENT[i - 1]}" --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT[i - 1]}" \
			--listen-peer-urls "http://127.0.0.1:${ETCD_PEER[i - 1]}" --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER[i - 1]}" \
			--initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token tally-local \
			--listen-metrics-urls "" >"$DIR/etcd-$i.log" 2>&1 &
		echo $! >"$DIR/etcd-$i.pid"
	done
	for ((i = 1; i <= 3; i++)); do
		wait_http "http://127.0.0.1:${ETCD_CLIENT[i - 1]}/health" 30 || die "etcd-$i did not become healthy (see $DIR/etcd-$i.log)"
	done

	local endpoints="http://127.0.0.1:2379,http://127.0.0.1:22379,http://127.0.0.1:32379" port ops
	for ((i = 1; i <= NODES; i++)); do
		running "node-$i" && continue
		port=$((API_PORT + i - 1))
		ops=$((9081 + i - 1))
		TALLY_HTTP_ADDR="127.0.0.1:$port" TALLY_OPS_ADDR="127.0.0.1:$ops" \
			TALLY_DATABASE_URL="$PG/tally_cluster?sslmode=disable" TALLY_REDIS_URL="$REDIS" TALLY_REDIS_KEY_PREFIX="tally-cluster:" \
			TALLY_ETCD_ENDPOINTS="$endpoints" TALLY_CLUSTER_SECRET="$(cat "$DIR/cluster-secret")" TALLY_NODE_ID="node-$i" TALLY_ADVERTISE_URL="http://127.0.0.1:$port" \
			bin/tally serve >"$DIR/node-$i.log" 2>&1 &
		echo $! >"$DIR/node-$i.pid"
	done
	for ((i = 1; i <= NODES; i++)); do
		wait_http "http://127.0.0.1:$((API_PORT + i - 1))/readyz" 60 || die "node-$i did not become ready (see $DIR/node-$i.log)"
	done
	status
	cat <<MSG

Nodes: http://127.0.0.1:8081, :8082, :8083 (any node takes any request; X-Tally-Node names the one that decided).
  . $DIR/env                                    # the secrets, for bin/tally token and bin/tally load
  TOKEN=\$(bin/tally token --user alice)
  curl -si -X POST 127.0.0.1:8082/api/v1/sessions -H "Authorization: Bearer \$TOKEN" \\
    -d '{"title":"t","language":"en-US","stt_provider":"google"}'
  bin/tally load --url http://127.0.0.1:8081,http://127.0.0.1:8082,http://127.0.0.1:8083 --plan student --duration 20s
Stop it with: make cluster-stop (logs and data stay in $DIR)
MSG
}

stop() {
	local name pid i
	# Tally first (each hands its partitions to the others as it leaves),
	# then etcd.
	for name in node-3 node-2 node-1 etcd-3 etcd-2 etcd-1; do
		running "$name" || continue
		pid=$(cat "$DIR/$name.pid")
		kill -TERM "$pid"
		i=0
		while kill -0 "$pid" 2>/dev/null && ((i++ < 200)); do sleep 0.1; done
		kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
		rm -f "$DIR/$name.pid"
		echo "stopped $name"
	done
}

status() {
	local name
	for name in etcd-1 etcd-2 etcd-3 node-1 node-2 node-3; do
		if running "$name"; then echo "$name: running (pid $(cat "$DIR/$name.pid"))"; else echo "$name: stopped"; fi
	done
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*) die "usage: $0 start|stop|status" ;;
esac
