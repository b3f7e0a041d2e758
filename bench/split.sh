#!/usr/bin/env bash
# bench/split.sh: the statement split's speed (issue 9, "Speed"). pgbench -S
# (-M simple|extended|prepared, 8 and 64 clients) through
#   split      pgrouter's single endpoint (--listen) with --split statement
#              --pool-mode transaction: reads on the two hot standbys
#   rw         the same pgrouter process's read-write port (--listen-rw),
#              transaction pooling, everything on the primary
#   pgpool     Pgpool-II (Debian's pgpool2) in streaming-replication mode,
#              load_balance_mode = on, statement_level_load_balance = on,
#              reads on the two standbys (backend_weight0 = 0)
#   direct     the primary itself
#   standby    standby1 itself, in the -S cases only: what a read costs on a
#              hot standby here, without a proxy
# in interleaved rounds, as ratios (split/rw must be >= 0.90, split/pgpool
# >= 2). Then a custom script of 1 UPDATE + 3 SELECTs, autocommit, shows
# where each statement ran: pg_stat_statements calls on every server, and
# pgrouter_split_routes_total{target,reason} from /metrics before/after.
# For that script a second pgrouter process with --read-your-writes off
# (target split-rywoff) shows what read-your-writes costs.
#
# Usage: flock /tmp/pgrouter-bench.lock bash bench/split.sh
# Knobs (environment):
#   PGR_SPLIT_DURATION   seconds per pgbench run (default 10)
#   PGR_SPLIT_ROUNDS     interleaved rounds (default 3)
#   PGR_SPLIT_CASES      extended regex on case names (S-simple-c8, mix-prepared-c8, ...; default all)
#   PGR_SPLIT_TARGETS    extended regex on target names (direct is always kept)
#   PGR_SPLIT_SCALE      pgbench -i scale (default 10)
#   PGR_SPLIT_POOL_SIZE  pgrouter --pool-size (default: pgrouter's, 20)
#   PGR_SPLIT_STANDBYS   standbys behind the split and Pgpool-II: 1 or 2 (default 2;
#                        both are started either way). On one 2-core machine a
#                        second read instance competes with the first for the
#                        cores and caches; 1 measures the split's own cost.
#   PGR_SPLIT_PGPOOL_CHILDREN  Pgpool-II num_init_children (default 80)
#   PGR_SPLIT_MAX_LOAD   wait until the 1-min load average is below this before
#                        starting (default 1.5; empty: do not wait)
#   PGR_SPLIT_MAX_WAIT   seconds to wait for that at most, then go on (default 1800)
#   PGR_SPLIT_KEEP       1 keeps the data directories (default 0)
#
# Everything listens on 127.0.0.1 on free ports and is stopped by PID on exit.
# Work dir, logs and results go to bench/out/ (git-ignored). The parts shared
# with bench/run.sh are in bench/lib.sh.
set -eu
set -o pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
OUT=$ROOT/bench/out
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
DURATION=${PGR_SPLIT_DURATION:-10}
ROUNDS=${PGR_SPLIT_ROUNDS:-3}
CASES_FILTER=${PGR_SPLIT_CASES:-}
TARGETS_FILTER=${PGR_SPLIT_TARGETS:-}
SCALE=${PGR_SPLIT_SCALE:-10}
POOL_SIZE=${PGR_SPLIT_POOL_SIZE:-}
STANDBYS=${PGR_SPLIT_STANDBYS:-2}
PGPOOL_CHILDREN=${PGR_SPLIT_PGPOOL_CHILDREN:-80}
MAX_LOAD=${PGR_SPLIT_MAX_LOAD-1.5}
MAX_WAIT=${PGR_SPLIT_MAX_WAIT:-1800}
KEEP=${PGR_SPLIT_KEEP:-0}
KEEP_KNOB=PGR_SPLIT_KEEP
CMDLINE="PGR_SPLIT_DURATION=$DURATION PGR_SPLIT_ROUNDS=$ROUNDS${CASES_FILTER:+ PGR_SPLIT_CASES='$CASES_FILTER'}${TARGETS_FILTER:+ PGR_SPLIT_TARGETS='$TARGETS_FILTER'}${POOL_SIZE:+ PGR_SPLIT_POOL_SIZE=$POOL_SIZE}$([ "$STANDBYS" = 2 ] || echo " PGR_SPLIT_STANDBYS=$STANDBYS") bench/split.sh"

for n in DURATION ROUNDS SCALE PGPOOL_CHILDREN MAX_WAIT; do
	case ${!n} in '' | *[!0-9]*) die "$n must be a whole number, got '${!n}'" ;; esac
done
case $STANDBYS in 1 | 2) ;; *) die "PGR_SPLIT_STANDBYS must be 1 or 2, got '$STANDBYS'" ;; esac
[ -z "$POOL_SIZE" ] || case $POOL_SIZE in *[!0-9]*) die "PGR_SPLIT_POOL_SIZE must be a whole number" ;; esac
[ "$DURATION" -gt 0 ] && [ "$ROUNDS" -gt 0 ] || die "PGR_SPLIT_DURATION and PGR_SPLIT_ROUNDS must be > 0"
[ "$PGPOOL_CHILDREN" -ge 66 ] || die "PGR_SPLIT_PGPOOL_CHILDREN must be at least 66 (64 pgbench clients and the script's probes)"

# ---------------------------------------------------------------- packages --

PGPOOL=$(command -v pgpool || echo /usr/sbin/pgpool)
PSQL=$PGBIN/psql
PGBENCH=$PGBIN/pgbench
# Debian's pgpool2 service writes this pidfile (its init script and pgpool.conf default).
PGPOOL_SERVICE_PIDFILE=/run/postgresql/pgpool.pid

# pids_named COMM: PIDs of live processes whose comm is COMM.
pids_named() {
	local f pid
	for f in /proc/[0-9]*/comm; do
		pid=${f#/proc/}
		pid=${pid%/comm}
		[ "$(cat "$f" 2>/dev/null)" = "$1" ] && alive "$pid" && printf '%s ' "$pid"
	done
	return 0
}

# stop_packaged_pgpool BEFORE: stop a pgpool that Debian's service started,
# by PID: the one in the service's pidfile, or a daemonized pgpool main
# process (parent PID 1, as the init script's `su -c "pgpool -n ... &"`
# leaves it) that is not in BEFORE.
stop_packaged_pgpool() {
	local before=" $1 " pid cand=""
	pid=$(pidfile_pid "$PGPOOL_SERVICE_PIDFILE")
	alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = pgpool ] && cand="$pid"
	for pid in $(pids_named pgpool); do
		case "$before" in *" $pid "*) continue ;; esac
		[ "$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null)" = 1 ] || continue
		case " $cand " in *" $pid "*) ;; *) cand="$cand $pid" ;; esac
	done
	for pid in $cand; do
		log "the pgpool2 package started a service (pid $pid); stopping it"
		if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
			systemctl stop pgpool2 >/dev/null 2>&1 || true # else systemd would restart it
		fi
		alive "$pid" && kill -INT "$pid" 2>/dev/null || true
		wait_gone "$pid" 30 || log "warning: packaged pgpool (pid $pid) did not stop"
	done
}

install_missing() {
	local pkgs=()
	[ -x "$PGBIN/postgres" ] || pkgs+=(postgresql-15)
	{ [ -x "$PGBENCH" ] && [ -x "$PSQL" ]; } || pkgs+=(postgresql-client-15)
	[ -x "$PGPOOL" ] || pkgs+=(pgpool2)
	[ ${#pkgs[@]} -eq 0 ] && return 0
	need_root "${pkgs[@]}"
	local before
	before=$(pids_named pgpool)
	apt_install "$OUT/apt-split.log" "${pkgs[@]}"
	PGPOOL=$(command -v pgpool || echo /usr/sbin/pgpool)
	# The package's postinst starts its service where policy-rc.d allows it.
	stop_packaged_pgpool "$before"
}

mkdir -p "$OUT"
install_missing
# Also when pgpool2 was installed earlier: no packaged instance may run beside the bench.
if alive "$(pidfile_pid "$PGPOOL_SERVICE_PIDFILE")"; then
	stop_packaged_pgpool "$(pids_named pgpool)"
fi
command -v go >/dev/null || die "go is not on PATH (needed to build pgrouter)"
for b in "$PGBIN/postgres" "$PGBIN/initdb" "$PGBIN/pg_ctl" "$PGBIN/pg_basebackup" "$PSQL" "$PGBENCH" "$PGPOOL"; do
	[ -x "$b" ] || die "$b not found"
done

# Figures share 2 cores with whatever else runs: wait for a quiet machine first.
LOAD_NOTE=""
if [ -n "$MAX_LOAD" ]; then
	waited=0
	while awk -v l="$(cut -d' ' -f1 /proc/loadavg)" -v m="$MAX_LOAD" 'BEGIN { exit !(l >= m) }'; do
		if [ "$waited" -ge "$MAX_WAIT" ]; then
			LOAD_NOTE="load average still $(cut -d' ' -f1 /proc/loadavg) >= $MAX_LOAD after ${MAX_WAIT}s; ran anyway"
			log "$LOAD_NOTE"
			break
		fi
		[ $((waited % 60)) -eq 0 ] && log "waiting for the 1-min load average ($(cut -d' ' -f1 /proc/loadavg)) to fall below $MAX_LOAD"
		sleep 10
		waited=$((waited + 10))
	done
fi
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
STAMP=$(date -u +%Y%m%d-%H%M%S)

# ----------------------------------------------------------- process table --

process_table "$OUT/split-$STAMP"

# tree_ticks PID: utime+stime of PID, of its live children, and of the
# children it reaped, in clock ticks (pgpool and PostgreSQL work in children).
tree_ticks() {
	[ -n "$1" ] || { echo 0; return; }
	{ cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" '
	{
		pid = $1
		rest = substr($0, index($0, ") ") + 2)
		split(rest, f, " ")
		if (pid == root) t += f[12] + f[13] + f[14] + f[15]
		else if (f[2] == root) t += f[12] + f[13]
	}
	END { print t + 0 }'
}

# ----------------------------------------------------------------- cluster --

pg_conf() { # DATADIR PORT
	cat >>"$1/postgresql.conf" <<EOF

# bench/split.sh: defaults otherwise (fsync, synchronous_commit, ... untouched)
listen_addresses = '127.0.0.1'
port = $2
unix_socket_directories = '$PG/sock'
max_connections = 300
shared_buffers = 128MB
# counts each statement on the server that ran it (where each one ran)
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = top
EOF
}

start_primary
q "$P_PRIMARY" "create extension pg_stat_statements" >/dev/null || die "create extension pg_stat_statements failed, see $LOGS/psql.err"

start_standbys
SERVER_PORTS="$P_PRIMARY $P_STANDBY1 $P_STANDBY2"

# ---------------------------------------------------------------- pgrouter --

PGROUTER_REV=$(pgrouter_rev)
log "building pgrouter ($PGROUTER_REV)"
(cd "$ROOT" && go build -o "$OUT/pgrouter-split" ./cmd/pgrouter) >"$LOGS/pgrouter-build.log" 2>&1 ||
	die "go build ./cmd/pgrouter failed, see $LOGS/pgrouter-build.log"

mkdir -p "$W/pgrouter"
# Trust, as the servers: the user needs a line in the auth file all the same
# (pgrouter refuses an empty secret; trust never reads this one).
echo '"postgres" "unused-with-trust"' >"$W/pgrouter/userlist.txt"
READ_PORTS="$P_STANDBY1"
[ "$STANDBYS" = 2 ] && READ_PORTS="$READ_PORTS $P_STANDBY2"
PGR_COMMON=(--backends "127.0.0.1:$P_PRIMARY$(printf ',127.0.0.1:%s' $READ_PORTS)"
	--pool-mode transaction --split statement
	--auth-file "$W/pgrouter/userlist.txt" --auth-hba 'host all all 127.0.0.1/32 trust'
	--health-user postgres --health-database postgres --server-sslmode disable --health-sslmode disable)
[ -n "$POOL_SIZE" ] && PGR_COMMON+=(--pool-size "$POOL_SIZE")

# sees_standbys PORT: plain reads through the split endpoint, one per
# session (a session's reads stay on one standby), reach every standby
# behind it.
sees_standbys() {
	local seen=" " i p
	for i in 1 2 3 4; do
		seen="$seen$("$PSQL" -X -h 127.0.0.1 -p "$1" -Atq -c "select inet_server_port()" 2>>"$LOGS/psql.err") " || return 1
	done
	for p in $READ_PORTS; do
		case "$seen" in *" $p "*) ;; *) return 1 ;; esac
	done
}

start_pgrouter() { # NAME LOGFILE ARGS...: sets PGR_LAST_PID
	local name=$1 logf=$2
	shift 2
	echo "$OUT/pgrouter-split proxy ${PGR_COMMON[*]} $*" >"$logf.cmd"
	"${SERVICE[@]}" "$OUT/pgrouter-split" proxy "${PGR_COMMON[@]}" "$@" >"$logf" 2>&1 </dev/null &
	PGR_LAST_PID=$!
	track "$name" "$PGR_LAST_PID" TERM
}

free_port P_SPLIT
free_port P_RW
free_port P_ADMIN
start_pgrouter pgrouter "$LOGS/pgrouter.log" --listen "127.0.0.1:$P_SPLIT" --listen-rw "127.0.0.1:$P_RW" --admin-listen "127.0.0.1:$P_ADMIN"
PGR_PID=$PGR_LAST_PID
WATCH_PID=$PGR_PID
wait_for 30 "pgrouter's rw port to reach the primary" answers "$P_RW" "select pg_is_in_recovery()" f ||
	{ tail -n 30 "$LOGS/pgrouter.log" >&2; die "pgrouter's rw port did not answer, see $LOGS/pgrouter.log"; }
wait_for 30 "pgrouter's split endpoint to read from every standby" sees_standbys "$P_SPLIT" ||
	{ tail -n 30 "$LOGS/pgrouter.log" >&2; die "pgrouter's split endpoint did not route reads to every standby, see $LOGS/pgrouter.log"; }
log "pgrouter up: split 127.0.0.1:$P_SPLIT, rw 127.0.0.1:$P_RW, admin 127.0.0.1:$P_ADMIN (pid $PGR_PID)"

free_port P_SPLIT_OFF
free_port P_ADMIN_OFF
start_pgrouter pgrouter-rywoff "$LOGS/pgrouter-rywoff.log" --listen "127.0.0.1:$P_SPLIT_OFF" --admin-listen "127.0.0.1:$P_ADMIN_OFF" --read-your-writes off
PGR_OFF_PID=$PGR_LAST_PID
WATCH_PID=$PGR_OFF_PID
wait_for 30 "the second pgrouter (read-your-writes off) to read from every standby" sees_standbys "$P_SPLIT_OFF" ||
	{ tail -n 30 "$LOGS/pgrouter-rywoff.log" >&2; die "the second pgrouter did not route reads to every standby, see $LOGS/pgrouter-rywoff.log"; }
log "pgrouter --read-your-writes off up: split 127.0.0.1:$P_SPLIT_OFF (pid $PGR_OFF_PID)"

# ------------------------------------------------------------------ pgpool --

free_port P_PGPOOL
free_port P_PCP
PP=$W/pgpool
mkdir -p "$PP/sock"
cat >"$PP/pgpool.conf" <<EOF
# bench/split.sh: Pgpool-II in front of the primary and its two streaming hot
# standbys; statements load-balanced one by one, reads to the standbys only.
backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = $P_PGPOOL
socket_dir = '$PP/sock'
pcp_listen_addresses = ''
pcp_port = $P_PCP
pcp_socket_dir = '$PP/sock'
wd_ipc_socket_dir = '$PP/sock'
pid_file_name = '$PP/pgpool.pid'
logdir = '$PP'
memqcache_oiddir = '$PP/oiddir'

backend_hostname0 = '127.0.0.1'
backend_port0 = $P_PRIMARY
backend_weight0 = 0
backend_flag0 = 'ALLOW_TO_FAILOVER'
backend_hostname1 = '127.0.0.1'
backend_port1 = $P_STANDBY1
backend_weight1 = 1
backend_flag1 = 'ALLOW_TO_FAILOVER'
$([ "$STANDBYS" = 2 ] && printf "backend_hostname2 = '127.0.0.1'\nbackend_port2 = %s\nbackend_weight2 = 1\nbackend_flag2 = 'ALLOW_TO_FAILOVER'\n" "$P_STANDBY2")

enable_pool_hba = off
pool_passwd = ''
num_init_children = $PGPOOL_CHILDREN
max_pool = 1
connection_cache = on
child_life_time = 0
child_max_connections = 0
connection_life_time = 0
client_idle_limit = 0

load_balance_mode = on
statement_level_load_balance = on
disable_load_balance_on_write = 'transaction'

sr_check_period = 10
sr_check_user = 'postgres'
sr_check_password = ''
sr_check_database = 'postgres'
health_check_period = 0
failover_on_backend_error = off
failover_command = ''
use_watchdog = off
memory_cache_enabled = off

log_destination = 'stderr'
logging_collector = off
log_connections = off
log_disconnections = off
log_statement = off
log_per_node_statement = off
log_min_messages = warning
EOF
: >"$PP/pcp.conf"
echo "host all all 127.0.0.1/32 trust" >"$PP/pool_hba.conf"
[ "$IS_ROOT" -eq 1 ] && chown -R postgres: "$PP"
"${SERVICE[@]}" "${AS_PG[@]}" "$PGPOOL" -n -f "$PP/pgpool.conf" -F "$PP/pcp.conf" -a "$PP/pool_hba.conf" >"$LOGS/pgpool.log" 2>&1 </dev/null &
PGPOOL_PID=$!
track pgpool "$PGPOOL_PID" INT # SIGINT: fast shutdown
WATCH_PID=$PGPOOL_PID
# pgpool_ready: it answers, knows node 0 as the primary and the others as standbys, all up.
pgpool_ready() {
	local nodes
	nodes=$(q "$P_PGPOOL" "show pool_nodes") || return 1
	printf '%s\n' "$nodes" | awk -v want=$((STANDBYS + 1)) -F'|' '
		$1 == 0 && $4 == "up" && $7 == "primary" { n++ }
		($1 == 1 || $1 == 2) && $4 == "up" && $7 == "standby" { n++ }
		END { exit !(n == want) }'
}
wait_for 60 "pgpool to see the primary and the standbys" pgpool_ready ||
	{ tail -n 30 "$LOGS/pgpool.log" >&2; q "$P_PGPOOL" "show pool_nodes" >&2 || true; die "pgpool did not come up, see $LOGS/pgpool.log"; }
PGPOOL_VERSION=$("$PGPOOL" --version 2>&1 | head -n1)
log "pgpool up on 127.0.0.1:$P_PGPOOL (pid $PGPOOL_PID, $PGPOOL_VERSION)"
q "$P_PGPOOL" "show pool_nodes" >"$LOGS/pgpool-nodes-start.txt" || true
q "$P_PGPOOL" "pgpool show all" >"$LOGS/pgpool-settings.txt" || true
WATCH_PID=

# Targets: name:port:pid (pid of the proxy's main process, empty for direct).
TARGETS=("direct:$P_PRIMARY:" "standby:$P_STANDBY1:" "split:$P_SPLIT:$PGR_PID" "rw:$P_RW:$PGR_PID" "pgpool:$P_PGPOOL:$PGPOOL_PID" "split-rywoff:$P_SPLIT_OFF:$PGR_OFF_PID")
filter_targets
admin_of() { case $1 in split | rw) echo "$P_ADMIN" ;; split-rywoff) echo "$P_ADMIN_OFF" ;; esac; }

# ------------------------------------------------------------------- cases --

cat >"$W/mix.sql" <<'EOF'
\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SELECT bbalance FROM pgbench_branches WHERE bid = :bid;
SELECT tbalance FROM pgbench_tellers WHERE tid = :tid;
EOF

CASE_NAMES=()
CASE_FLAGS=()
for m in simple extended prepared; do
	for c in 8 64; do
		CASE_NAMES+=("S-$m-c$c")
		CASE_FLAGS+=("-S -M $m -c $c")
	done
done
for m in simple prepared; do
	CASE_NAMES+=("mix-$m-c8")
	CASE_FLAGS+=("-f $W/mix.sql -s $SCALE -M $m -c 8")
done
if [ -n "$CASES_FILTER" ]; then
	kn=()
	kf=()
	for i in "${!CASE_NAMES[@]}"; do
		if printf '%s\n' "${CASE_NAMES[$i]}" | grep -Eq -- "$CASES_FILTER"; then
			kn+=("${CASE_NAMES[$i]}")
			kf+=("${CASE_FLAGS[$i]}")
		fi
	done
	[ ${#kn[@]} -gt 0 ] || die "PGR_SPLIT_CASES='$CASES_FILTER' matches no case (${CASE_NAMES[*]})"
	CASE_NAMES=("${kn[@]}")
	CASE_FLAGS=("${kf[@]}")
fi
# split-rywoff runs the mixed cases only (without writes it is the same as split).
runs_case() { case "$1:$2" in split-rywoff:S-* | standby:mix-*) return 1 ;; esac; }

# ------------------------------------------------- where statements ran --

# pg_stat_statements on each server, for pgbench's statements and the LSN
# queries of pgrouter's read-your-writes.
STMT_SQL="select coalesce(sum(calls) filter (where query like 'UPDATE pgbench_accounts%'), 0)
 || '|' || coalesce(sum(calls) filter (where query like 'SELECT abalance%'), 0)
 || '|' || coalesce(sum(calls) filter (where query like 'SELECT bbalance%'), 0)
 || '|' || coalesce(sum(calls) filter (where query like 'SELECT tbalance%'), 0)
 || '|' || coalesce(sum(calls) filter (where query in ('SELECT pg_current_wal_insert_lsn()', 'SELECT pg_last_wal_replay_lsn()')), 0)
 from pg_stat_statements"
reset_stmts() {
	local p
	for p in $SERVER_PORTS; do q "$p" "select pg_stat_statements_reset()" >/dev/null || true; done
}
read_stmts() { # prints upd|a|b|t|lsn for primary, standby1, standby2, space-separated
	local p out=""
	for p in $SERVER_PORTS; do out="$out $(q "$p" "$STMT_SQL" || echo '-|-|-|-|-')"; done
	echo "${out# }"
}
# split_routes ADMINPORT: "target/reason=count ..." from pgrouter's /metrics.
split_routes() {
	[ -n "$1" ] || return 0
	curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" 2>/dev/null | awk '
		/^pgrouter_split_routes_total\{/ {
			t = $0; sub(/.*target="/, "", t); sub(/".*/, "", t)
			r = $0; sub(/.*reason="/, "", r); sub(/".*/, "", r)
			printf "%s/%s=%s ", t, r, $NF
		}'
}
# routes_delta "BEFORE" "AFTER"
routes_delta() {
	awk -v b="$1" -v a="$2" 'BEGIN {
		n = split(b, x, " "); for (i = 1; i <= n; i++) { split(x[i], kv, "="); before[kv[1]] = kv[2] }
		n = split(a, x, " "); for (i = 1; i <= n; i++) { split(x[i], kv, "="); d = kv[2] - before[kv[1]]; if (d != 0) out = out sprintf("%s=%d ", kv[1], d) }
		sub(/ $/, "", out); print (out == "" ? "-" : out)
	}'
}
command -v curl >/dev/null || die "curl not found (reads pgrouter's /metrics)"

# ----------------------------------------------------------------- pgbench --

log "warm-up: pgbench -S -T 3 -c 64 through every target, and on each server"
for t in "${TARGETS[@]}"; do
	IFS=: read -r name port pid <<<"$t"
	"$PGBENCH" -h 127.0.0.1 -p "$port" -n -S -T 3 -c 64 -j 2 >>"$LOGS/warmup.log" 2>&1 || log "warm-up through $name failed, see $LOGS/warmup.log"
done
for p in $SERVER_PORTS; do
	"$PGBENCH" -h 127.0.0.1 -p "$p" -n -S -T 2 -c 4 -j 2 >>"$LOGS/warmup.log" 2>&1 || true
done

RUNS_TSV=$W/runs.tsv
printf 'round\tcase\tflags\ttarget\ttps\tlat_ms\ttx\tfailed\tcpu_us_per_tx\tcores\tstatus\tload1\tother_cores\tstmts_p\tstmts_s1\tstmts_s2\troutes\n' >"$RUNS_TSV"
nt=${#TARGETS[@]}
total=0
for i in "${!CASE_NAMES[@]}"; do
	for t in "${TARGETS[@]}"; do runs_case "${t%%:*}" "${CASE_NAMES[$i]}" && total=$((total + 1)); done
done
log "pgbench: ${#CASE_NAMES[@]} cases, $ROUNDS rounds of $total runs of ${DURATION}s (about $((ROUNDS * total * (DURATION + 2) / 60)) min)"

for ((r = 1; r <= ROUNDS; r++)); do
	for i in "${!CASE_NAMES[@]}"; do
		cname=${CASE_NAMES[$i]}
		cflags=${CASE_FLAGS[$i]}
		# Rotate the target order each round so that no target always runs first.
		for ((k = 0; k < nt; k++)); do
			IFS=: read -r name port pid <<<"${TARGETS[$(((k + r - 1) % nt))]}"
			runs_case "$name" "$cname" || continue
			runlog=$LOGS/pgbench/r$r-$cname-$name.log
			reset_stmts
			routes0=$(split_routes "$(admin_of "$name")")
			load1=$(cut -d' ' -f1 /proc/loadavg) # includes this bench's own previous run
			t0=$(tree_ticks "$pid")
			b0=$(busy_ticks)
			o0=$(our_ticks)
			w0=$(now_ms)
			status=ok
			# shellcheck disable=SC2086 # cflags is a list of flags
			timeout $((DURATION + 60)) "$PGBENCH" -h 127.0.0.1 -p "$port" -T "$DURATION" -j 2 -n $cflags \
				>"$runlog" 2>&1 || status="exit$?"
			w1=$(now_ms)
			t1=$(tree_ticks "$pid")
			o1=$(our_ticks)
			b1=$(busy_ticks)
			routes1=$(split_routes "$(admin_of "$name")")
			stmts=$(read_stmts)
			routes=-
			[ -n "$(admin_of "$name")" ] && routes=$(routes_delta "$routes0" "$routes1")
			pgbench_figures "$runlog" "$pid" "$t0" "$t1" "$b0" "$b1" "$o0" "$o1" "$w0" "$w1"
			read -r sp s1 s2 <<<"$stmts"
			printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$cname" "${cflags/$W\//}" "$name" \
				"${tps:--}" "${lat:--}" "${tx:--}" "${failed:-0}" "$cpu" "$cores" "$status" "$load1" "$other" "$sp" "$s1" "$s2" "$routes" >>"$RUNS_TSV"
			log "round $r/$ROUNDS $cname $name: tps ${tps:-?} lat ${lat:-?} ms cpu ${cpu} us/tx, other ${other} cores, $status; upd|a|b|t|lsn on p/s1/s2: $stmts${routes:+; routes $routes}"
			if [ "$status" != ok ]; then
				log "  pgbench output: $(tail -n 3 "$runlog" | tr '\n' ' ')"
			fi
		done
	done
done

# ----------------------------------------------------------------- results --

# summarize: one row per case and target: medians over the rounds that
# succeeded; reads on standbys = share of SELECT calls (pg_stat_statements)
# that ran on a standby, over all rounds.
summarize() {
	awk -F'\t' "$AWK_MEDIAN"'
	function sel(s,   f) { split(s, f, "|"); return f[2] + f[3] + f[4] }
	NR == 1 { next }
	{
		key = $2 SUBSEP $4
		if (!(key in seen)) { seen[key] = 1; order[++nk] = key; flags[key] = $3 }
		all[key] = all[key] " " $5
		if ($13 + 0 > other[key] + 0) other[key] = $13
		runs[key]++
		selp[key] += sel($14); sels[key] += sel($15) + sel($16)
		if ($11 == "ok" && $8 == 0) {
			tps[key] = tps[key] " " $5; lat[key] = lat[key] " " $6; ok[key]++
			if ($9 != "-") { cpu[key] = cpu[key] " " $9; cores[key] = cores[key] " " $10 }
		}
	}
	END {
		for (i = 1; i <= nk; i++) { key = order[i]; m[key] = median(tps[key]) }
		for (i = 1; i <= nk; i++) {
			key = order[i]; split(key, kk, SUBSEP)
			d = m[kk[1] SUBSEP "direct"]
			ratio = (m[key] != "" && d != "" && d > 0) ? sprintf("%.2f", m[key] / d) : "-"
			c = median(cpu[key]); co = median(cores[key])
			st = (selp[key] + sels[key] > 0) ? sprintf("%.0f%%", 100 * sels[key] / (selp[key] + sels[key])) : "-"
			printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s/%s\t%s\t%s\t%s\n", kk[1], flags[key], kk[2],
				(m[key] == "" ? "-" : sprintf("%.0f", m[key])), ratio,
				(lat[key] == "" ? "-" : sprintf("%.3f", median(lat[key]))),
				(c == "" ? "-" : sprintf("%.1f", c)), (co == "" ? "-" : sprintf("%.2f", co)),
				ok[key] + 0, runs[key], substr(all[key], 2), sprintf("%.2f", other[key]), st
		}
	}' "$RUNS_TSV"
}

# ratios: per case, split/rw and split/pgpool (and split/direct): the ratio of
# the medians, and the per-round ratios (each from runs of the same round).
ratios() {
	awk -F'\t' "$AWK_MEDIAN"'
	NR == 1 { next }
	$2 !~ /^S-/ { next }
	{
		if (!($2 in seen)) { seen[$2] = 1; order[++nc] = $2 }
		if ($11 == "ok" && $8 == 0) { v[$1, $2, $4] = $5; t[$2, $4] = t[$2, $4] " " $5 }
		if ($1 + 0 > maxr) maxr = $1 + 0
	}
	END {
		for (i = 1; i <= nc; i++) {
			c = order[i]
			line = c
			n2 = split("rw pgpool", other, " ")
			for (j = 1; j <= n2; j++) {
				o = other[j]; ms = median(t[c, "split"]); mo = median(t[c, o])
				r = (ms != "" && mo != "" && mo > 0) ? sprintf("%.2f", ms / mo) : "-"
				per = ""
				for (k = 1; k <= maxr; k++) if ((k, c, "split") in v && (k, c, o) in v && v[k, c, o] > 0) per = per sprintf(" %.2f", v[k, c, "split"] / v[k, c, o])
				bar = (o == "rw") ? 0.9 : 2.0
				verdict = (r == "-") ? "-" : (r + 0 >= bar ? "yes" : "NO")
				line = line "\t" r "\t" substr(per, 2) "\t" verdict
			}
			print line
		}
	}' "$RUNS_TSV"
}

# where: the mixed cases: statement calls per server summed over rounds, and
# pgrouter's route counters.
where_ran() {
	awk -F'\t' '
	NR == 1 { next }
	$2 !~ /^mix-/ { next }
	{
		key = $2 SUBSEP $4
		if (!(key in seen)) { seen[key] = 1; order[++nk] = key }
		for (s = 14; s <= 16; s++) { n = split($s, f, "|"); for (x = 1; x <= 5; x++) c[key, s, x] += f[x] }
		tx[key] += $7
		if ($17 != "-") {
			n = split($17, rr, " ")
			for (x = 1; x <= n; x++) { split(rr[x], kv, "="); if (!((key, kv[1]) in rt)) rk[key] = rk[key] " " kv[1]; rt[key, kv[1]] += kv[2] }
		}
	}
	END {
		for (i = 1; i <= nk; i++) {
			key = order[i]; split(key, kk, SUBSEP)
			line = kk[1] "\t" kk[2] "\t" tx[key]
			for (x = 1; x <= 5; x++) line = line "\t" c[key, 14, x] " / " c[key, 15, x] + c[key, 16, x]
			routes = ""
			n = split(rk[key], names, " ")
			for (x = 1; x <= n; x++) routes = routes sprintf("%s=%d ", names[x], rt[key, names[x]])
			sub(/ $/, "", routes)
			print line "\t" (routes == "" ? "-" : routes)
		}
	}' "$RUNS_TSV"
}

SUMMARY=$(summarize)
RATIOS=$(ratios)
WHERE=$(where_ran)

{
	printf '\n%-16s %-13s %9s %6s %9s %8s %6s %5s %6s %8s  %s\n' case target tps ratio lat_ms us/tx cores ok other standby "tps by round"
	printf '%s\n' "$SUMMARY" | awk -F'\t' '{printf "%-16s %-13s %9s %6s %9s %8s %6s %5s %6s %8s  %s\n", $1, $3, $4, $5, $6, $7, $8, $9, $11, $12, $10}'
	if [ -n "$RATIOS" ]; then
		echo
		printf '%-16s %12s %-18s %4s %14s %-18s %4s\n' case split/rw "by round" ">=.9" split/pgpool "by round" ">=2"
		printf '%s\n' "$RATIOS" | awk -F'\t' '{printf "%-16s %12s %-18s %4s %14s %-18s %4s\n", $1, $2, $3, $4, $5, $6, $7}'
	fi
	if [ -n "$WHERE" ]; then
		echo
		echo "mixed script, calls on primary / standbys (sum over rounds): UPDATE, SELECT abalance, bbalance, tbalance, LSN queries; routes"
		printf '%s\n' "$WHERE" | awk -F'\t' '{printf "%-16s %-13s tx %-7s %s | %s | %s | %s | %s | %s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9}'
	fi
} >&2

MD=$OUT/split-results-$STAMP.md
{
	echo "# statement split bench, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	echo "- command: \`$CMDLINE\` (work dir \`bench/out/split-$STAMP\`)"
	echo "- machine: $(nproc) cores, $(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo), kernel $(uname -r); load average at start $LOADAVG_START, at end $(cut -d' ' -f1-3 /proc/loadavg)${LOAD_NOTE:+ ($LOAD_NOTE)}"
	echo "- 1-min load average read before each run (includes this bench's previous run):" \
		"$(awk -F'\t' 'NR > 1 { v = $12 + 0; if (n++ == 0 || v < min) min = v; if (v > max) max = v } END { printf "min %.2f, max %.2f", min, max }' "$RUNS_TSV")"
	echo "- $PG_VERSION; $PGPOOL_VERSION; $(go version)"
	echo "- cluster: primary + 2 streaming hot standbys (pg_basebackup), pgbench scale $SCALE, auth trust, defaults except"
	[ "$STANDBYS" = 2 ] || echo "  (the split and Pgpool-II read from standby1 only: PGR_SPLIT_STANDBYS=1; standby2 runs idle)"
	echo "  listen/port/socket dir, max_connections=300, shared_buffers=128MB, pg_stat_statements loaded on every server"
	[ ${#SERVICE[@]} -gt 0 ] && echo "- pgrouter and Pgpool-II run in sessions of their own (setsid), as services would: one scheduling group each under autogroup"
	echo "- pgrouter $PGROUTER_REV: \`pgrouter proxy --pool-mode transaction --split statement${POOL_SIZE:+ --pool-size $POOL_SIZE}"
	echo "  --auth-hba 'host all all 127.0.0.1/32 trust' --auth-file F --server-sslmode disable --health-sslmode disable"
	echo "  --listen A --listen-rw B\` (split = A, rw = B, one process); split-rywoff = a second process with"
	echo "  \`--listen C --read-your-writes off\` (mixed cases only)"
	echo "- pgpool: streaming_replication mode, load_balance_mode = on, statement_level_load_balance = on,"
	echo "  backend_weight 0/1$([ "$STANDBYS" = 2 ] && echo /1) (reads to the standbys only, as pgrouter's split), num_init_children = $PGPOOL_CHILDREN, max_pool = 1, trust"
	echo "- pgbench: \`pgbench -T $DURATION -j 2 -n <flags>\` over TCP to 127.0.0.1; rounds interleaved (round by round,"
	echo "  case by case, target order rotated each round)"
	echo
	echo "| case | target | tps (median) | ratio to direct | latency avg ms | proxy CPU µs/tx | proxy cores | ok/runs | tps by round | other cores (max) | SELECTs on standbys |"
	echo "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"
	printf '%s\n' "$SUMMARY" | awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12}'
	if [ -n "$RATIOS" ]; then
		echo
		echo "| case | split / rw (medians) | per round | ≥ 0.9? | split / pgpool (medians) | per round | ≥ 2? |"
		echo "|---|---:|---|---|---:|---|---|"
		printf '%s\n' "$RATIOS" | awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7}'
	fi
	if [ -n "$WHERE" ]; then
		echo
		echo "Mixed script (\`UPDATE pgbench_accounts\`, then \`SELECT abalance\`, \`bbalance\`, \`tbalance\`, each autocommit): calls"
		echo "counted by pg_stat_statements on the primary / on the two standbys, summed over the rounds; LSN queries are"
		echo "pgrouter's read-your-writes (\`pg_current_wal_insert_lsn()\` after a write, \`pg_last_wal_replay_lsn()\` on a standby);"
		echo "routes: \`pgrouter_split_routes_total{target,reason}\` deltas."
		echo
		echo "| case | target | tx | UPDATE p / s | SELECT abalance p / s | SELECT bbalance p / s | SELECT tbalance p / s | LSN queries p / s | pgrouter routes (target/reason=n) |"
		echo "|---|---|---:|---|---|---|---|---|---|"
		printf '%s\n' "$WHERE" | awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9}'
	fi
} >"$MD"
cp "$RUNS_TSV" "$OUT/split-runs-$STAMP.tsv"
q "$P_PGPOOL" "show pool_nodes" >"$LOGS/pgpool-nodes-end.txt" 2>/dev/null || true
log "results: $MD (raw runs: $OUT/split-runs-$STAMP.tsv)"
