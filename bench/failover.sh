#!/usr/bin/env bash
# bench/failover.sh — unplanned failover as a client sees it.
#
# Starts etcd (tools/etcd), three `pgrouter agent`s and `pgrouter proxy
# --discovery etcd` (binaries built without -race), keeps a writer inserting
# through the proxy's read-write port, and runs N trials of kill -9 of the
# primary's postmaster. Reports per trial the time from the kill to the first
# acknowledged write and to the new leader's /primary, the errors the client
# saw, and at the end the acknowledged writes missing on the last primary.
# Appends the results to bench/RESULTS.md with the date, the machine and the
# command. The driver is TestFailoverBench in cmd/pgrouter.
#
# Knobs (environment):
#   PGR_FAILOVER_TRIALS       number of trials (default 10)
#   PGR_FAILOVER_FAULT        kill (default): kill -9 of the primary's postmaster;
#                             switchover: a planned switchover through the agents' API
#   PGR_FAILOVER_SYNC         1: agents run --synchronous (default), 0: async
#   PGR_FAILOVER_AGENT_FLAGS  extra agent flags, e.g. "--ttl 2s --renew-deadline 600ms --retry-period 200ms"
#   PGR_FAILOVER_RECORD       0: do not append to bench/RESULTS.md (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."

trials=${PGR_FAILOVER_TRIALS:-10}
fault=${PGR_FAILOVER_FAULT:-kill}
sync=${PGR_FAILOVER_SYNC:-1}
flags=${PGR_FAILOVER_AGENT_FLAGS:-}
record=${PGR_FAILOVER_RECORD:-1}

sh scripts/ensure-postgres.sh >/dev/null
PGR_ETCD_BIN=$(sh tools/etcd/ensure.sh)
export PGR_ETCD_BIN

out=$(mktemp)
log=$(mktemp)
trap 'rm -f "$out" "$log"' EXIT
cmd="PGR_FAILOVER_TRIALS=$trials PGR_FAILOVER_FAULT=$fault PGR_FAILOVER_SYNC=$sync PGR_FAILOVER_AGENT_FLAGS=\"$flags\" bench/failover.sh"
echo "running $trials trials (log: go test -v output follows)" >&2
if ! PGR_FAILOVER_TRIALS=$trials PGR_FAILOVER_FAULT=$fault PGR_FAILOVER_SYNC=$sync PGR_FAILOVER_AGENT_FLAGS=$flags PGR_FAILOVER_OUT=$out \
	go test ./cmd/pgrouter -run '^TestFailoverBench$' -count=1 -v -timeout 60m 2>&1 | tee "$log" >&2; then
	echo "failover bench failed" >&2
	exit 1
fi
if ! grep -q '^--- PASS: TestFailoverBench' "$log"; then
	echo "failover bench did not pass" >&2
	exit 1
fi
cat "$out"
if [ "$record" = 1 ]; then
	{
		echo
		case $fault in
		kill) title="Failover: kill -9 of the primary under a writer" ;;
		*) title="Planned switchover under a writer" ;;
		esac
		echo "## $title ($(date -u '+%Y-%m-%d %H:%M UTC'))"
		echo
		echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)," \
			"PostgreSQL $(psql --version 2>/dev/null | awk '{print $3}' || echo '?'), etcd $("$PGR_ETCD_BIN" --version | awk '/etcd Version/ {print $3}'), $(go version | awk '{print $3}')."
		echo "Command: \`$cmd\`"
		echo
		cat "$out"
	} >>bench/RESULTS.md
	echo "appended to bench/RESULTS.md" >&2
fi
