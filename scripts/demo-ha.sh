#!/usr/bin/env bash
# scripts/demo-ha.sh — a highly available cluster on loopback: etcd (built by
# tools/etcd), three `pgrouter agent`s that bootstrap and run PostgreSQL, and
# `pgrouter proxy --discovery etcd` in front. Prints the connection strings
# and each agent's API address; Ctrl-C stops everything it started.
#
# Knobs (environment):
#   PGR_DEMO_PORT  first proxy port (default 6432): single endpoint; +1
#                  read-write, +2 read-only, +2000 admin; etcd on +10/+11,
#                  PostgreSQL on +101..+103, agent APIs on +201..+203
#   PGR_DEMO_DIR   where the data goes (default .demo/ha; wiped at start)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
base=${PGR_DEMO_PORT:-6432}
dir=${PGR_DEMO_DIR:-$root/.demo/ha}
super_pw=demo-super
repl_pw=demo-repl

sh scripts/ensure-postgres.sh >/dev/null
etcd_bin=$(sh tools/etcd/ensure.sh)
go build -o bin/pgrouter ./cmd/pgrouter
bin=$root/bin/pgrouter

# PostgreSQL and so the agents refuse root: run them as the postgres user.
as_pg=()
if [ "$(id -u)" = 0 ]; then
	as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi

step() { printf '%s  %s\n' "$(date +%T)" "$*"; }

# Stop servers a previous run left, then start afresh.
if [ -d "$dir" ]; then
	for pf in "$dir"/n*/data/postmaster.pid; do
		[ -f "$pf" ] || continue
		pid=$(head -n1 "$pf")
		if grep -qF "$dir" "/proc/$pid/cmdline" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
	done
	rm -rf "$dir"
fi
mkdir -p "$dir"
chmod 755 "$dir"

pids=()
cleanup() {
	trap - EXIT INT TERM
	step "stopping the proxy, the agents (each stops its PostgreSQL) and etcd"
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	step "stopped; data and logs are in $dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

etcd_client=127.0.0.1:$((base + 10))
etcd_peer=127.0.0.1:$((base + 11))
step "starting etcd on $etcd_client"
"$etcd_bin" --name=demo --data-dir="$dir/etcd" --listen-client-urls="http://$etcd_client" \
	--advertise-client-urls="http://$etcd_client" --listen-peer-urls="http://$etcd_peer" \
	--initial-advertise-peer-urls="http://$etcd_peer" --initial-cluster="demo=http://$etcd_peer" \
	--log-level=warn >"$dir/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://$etcd_client/health" >/dev/null 2>&1 && break; sleep 0.1; done

apis=()
for i in 1 2 3; do
	node=$dir/n$i
	mkdir -p "$node"
	[ ${#as_pg[@]} -eq 0 ] || chown postgres:postgres "$node"
	api=127.0.0.1:$((base + 200 + i))
	apis+=("$api")
	step "starting agent n$i: PostgreSQL on 127.0.0.1:$((base + 100 + i)), API on $api"
	"${as_pg[@]}" env PGROUTER_SUPERUSER_PASSWORD=$super_pw PGROUTER_REPLICATION_PASSWORD=$repl_pw \
		"$bin" agent --name "n$i" --scope demo --dcs etcd --etcd-endpoints "$etcd_client" \
		--pgdata "$node/data" --pg-listen "127.0.0.1:$((base + 100 + i))" --api-listen "$api" \
		--synchronous >"$dir/n$i.log" 2>&1 &
	pids+=($!)
done

step "waiting for a leader and two streaming standbys (initdb, pg_basebackup)..."
ok=
for _ in $(seq 600); do
	p=0 r=0
	for a in "${apis[@]}"; do
		curl -fs "http://$a/primary" >/dev/null 2>&1 && p=$((p + 1))
		curl -fs "http://$a/replica" >/dev/null 2>&1 && r=$((r + 1))
	done
	if [ $p = 1 ] && [ $r = 2 ]; then ok=1; break; fi
	sleep 0.2
done
[ -n "$ok" ] || { echo "the cluster did not come up; see $dir/n*.log" >&2; exit 1; }

listen=127.0.0.1:$base rw=127.0.0.1:$((base + 1)) ro=127.0.0.1:$((base + 2)) admin=127.0.0.1:$((base + 2000))
step "starting the proxy"
PGROUTER_HEALTH_PASSWORD=$super_pw "$bin" proxy --discovery etcd --etcd-endpoints "$etcd_client" --scope demo \
	--listen "$listen" --listen-rw "$rw" --listen-ro "$ro" --admin-listen "$admin" \
	--health-user postgres --log-level warn >"$dir/proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://$admin/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

conn() { echo "psql 'host=127.0.0.1 port=${1#127.0.0.1:} user=postgres password=$super_pw dbname=postgres'"; }
cat <<EOF

pgrouter is running in front of three agents (synchronous replication). Connect with:
  single endpoint : $(conn "$listen")
  read-write      : $(conn "$rw")
  read-only       : $(conn "$ro")
  proxy admin     : http://$admin/api/v1/topology
  agent APIs      : ${apis[0]}  ${apis[1]}  ${apis[2]}   (/status, /primary, /replica, /metrics)
  etcd            : $etcd_client (keys under /pgrouter/demo/)
Try:
  $bin switchover --api ${apis[0]}               # planned switchover
  kill -9 \$(head -1 $dir/n1/data/postmaster.pid)  # kill a primary (n1 here if it leads)
Logs: $dir/n{1,2,3}.log, $dir/proxy.log. Press Ctrl-C to stop everything.

EOF
wait "${pids[-1]}"
