#!/usr/bin/env bash
# bench/run.sh: side-by-side pgbench comparison of pgrouter against a direct
# connection, PgBouncer (session mode), HAProxy (TCP) and a plain Go relay, on a
# throwaway primary + 2 streaming hot standbys on loopback; and of pgrouter's
# transaction pooling (pgrouter-tx) against PgBouncer in transaction mode
# (pgbouncer-tx, Debian 12's 1.18; pgbouncer124-tx, 1.24.1 built from Debian's
# source with max_prepared_statements), same pool size, same run.
#
# Usage: bench/run.sh            (or: make bench)
# Knobs (environment):
#   PGR_BENCH_DURATION    seconds per pgbench run (default 10)
#   PGR_BENCH_ROUNDS      interleaved rounds (default 2)
#   PGR_BENCH_CASES       extended regex; keeps cases whose name or flags match,
#                         e.g. 'S-simple' or 'c8$' (default: all)
#   PGR_BENCH_TARGETS     extended regex on target names (default: all); targets:
#                         pgrouter-rw pgrouter-ro pgrouter-gr pgbouncer pgbouncer-fresh haproxy plainrelay
#                         pgrouter-session pgrouter-tx pgrouter-txgr pgbouncer-tx pgbouncer124-tx (direct is
#                         always kept), e.g.
#                         '-tx$' for the pooled comparison alone
#   PGR_BENCH_IDLE_CONNS  idle sessions for the memory test, 0 skips (default 300)
#   PGR_BENCH_TX_IDLE_CONNS  clients for the pooled targets' memory test, 0 skips
#                         (default 1000)
#   PGR_BENCH_TX_ACTIVE   of those, how many run queries in its active phase (default 64)
#   PGR_BENCH_POOL_SIZE   server connections per pool of pgrouter-tx and
#                         pgbouncer-tx (default 20)
#   PGR_BENCH_JOBS        pgbench -j, threads (default 2)
#   PGR_BENCH_LATENCY_LOG 1: pgbench writes a per-transaction log (--log) from
#                         which the p99 latency and the steady tps are computed;
#                         0: neither (default 1)
#   PGR_BENCH_WARMUP      seconds at the start of each run left out of the steady
#                         tps (default 2; must be less than PGR_BENCH_DURATION)
#   PGR_BENCH_SCALE       pgbench -i scale (default 10)
#   PGR_BENCH_KEEP        1 keeps the data directories after the run (default 0)
#   PGR_BENCH_MAX_LOAD    if set (e.g. 1.0), first wait up to 15 min for the 1-min
#                         load average to fall to it; then go on regardless
#
# Everything it starts listens on 127.0.0.1 on free ports and is stopped by PID
# on exit. Work dir, logs and results go to bench/out/ (git-ignored). The parts
# shared with bench/split.sh are in bench/lib.sh.
set -eu
set -o pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
OUT=$ROOT/bench/out
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
DURATION=${PGR_BENCH_DURATION:-10}
ROUNDS=${PGR_BENCH_ROUNDS:-2}
WARMUP=${PGR_BENCH_WARMUP:-2}
CASES_FILTER=${PGR_BENCH_CASES:-}
TARGETS_FILTER=${PGR_BENCH_TARGETS:-}
IDLE_N=${PGR_BENCH_IDLE_CONNS:-300}
TX_IDLE_N=${PGR_BENCH_TX_IDLE_CONNS:-1000}
TX_ACTIVE=${PGR_BENCH_TX_ACTIVE:-64}
POOL_SIZE=${PGR_BENCH_POOL_SIZE:-20}
LATLOG=${PGR_BENCH_LATENCY_LOG:-1}
JOBS=${PGR_BENCH_JOBS:-2}
SCALE=${PGR_BENCH_SCALE:-10}
KEEP=${PGR_BENCH_KEEP:-0}
KEEP_KNOB=PGR_BENCH_KEEP
MAX_LOAD=${PGR_BENCH_MAX_LOAD:-}
CMDLINE="${PGR_BENCH_MAX_LOAD:+PGR_BENCH_MAX_LOAD=$PGR_BENCH_MAX_LOAD }PGR_BENCH_DURATION=$DURATION PGR_BENCH_ROUNDS=$ROUNDS${CASES_FILTER:+ PGR_BENCH_CASES='$CASES_FILTER'}${TARGETS_FILTER:+ PGR_BENCH_TARGETS='$TARGETS_FILTER'}"
for v in PGR_BENCH_WARMUP PGR_BENCH_IDLE_CONNS PGR_BENCH_TX_IDLE_CONNS PGR_BENCH_TX_ACTIVE PGR_BENCH_POOL_SIZE PGR_BENCH_LATENCY_LOG PGR_BENCH_JOBS PGR_BENCH_SCALE; do
	[ -n "${!v:-}" ] && CMDLINE="$CMDLINE $v=${!v}"
done
CMDLINE="$CMDLINE bench/run.sh"

for n in DURATION ROUNDS WARMUP IDLE_N SCALE TX_IDLE_N TX_ACTIVE POOL_SIZE LATLOG JOBS; do
	case ${!n} in '' | *[!0-9]*) die "$n must be a whole number, got '${!n}'" ;; esac
done
[ "$DURATION" -gt 0 ] && [ "$ROUNDS" -gt 0 ] || die "PGR_BENCH_DURATION and PGR_BENCH_ROUNDS must be > 0"
[ "$WARMUP" -lt "$DURATION" ] || die "PGR_BENCH_WARMUP ($WARMUP) must be less than PGR_BENCH_DURATION ($DURATION)"
[ "$POOL_SIZE" -gt 0 ] || die "PGR_BENCH_POOL_SIZE must be > 0"
[ "$JOBS" -gt 0 ] || die "PGR_BENCH_JOBS must be > 0"

# want NAME: the target passes PGR_BENCH_TARGETS (direct always does).
want() { [ -z "$TARGETS_FILTER" ] || [ "$1" = direct ] || printf '%s\n' "$1" | grep -Eq -- "$TARGETS_FILTER"; }

# Every figure shares 2 cores with whatever else runs: optionally wait for quiet.
if [ -n "$MAX_LOAD" ]; then
	waited=0
	while awk -v l="$(cut -d' ' -f1 /proc/loadavg)" -v m="$MAX_LOAD" 'BEGIN { exit !(l > m) }'; do
		if [ "$waited" -ge 900 ]; then
			log "load average still $(cut -d' ' -f1 /proc/loadavg) > $MAX_LOAD after 15 min; going on"
			break
		fi
		[ $((waited % 60)) -eq 0 ] && log "waiting for load average $(cut -d' ' -f1 /proc/loadavg) to fall to $MAX_LOAD"
		sleep 10
		waited=$((waited + 10))
	done
fi
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
STAMP=$(date -u +%Y%m%d-%H%M%S)

# ---------------------------------------------------------------- packages --

PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
PSQL=$PGBIN/psql
PGBENCH=$PGBIN/pgbench

# The pidfiles that Debian's packaged services write: name:comm:signal:pidfile.
PACKAGED="pgbouncer:pgbouncer:TERM:/run/postgresql/pgbouncer.pid haproxy:haproxy:TERM:/run/haproxy.pid postgresql:postgres:INT:/run/postgresql/15-main.pid"

install_missing() {
	local pkgs=()
	[ -x "$PGBIN/postgres" ] || pkgs+=(postgresql-15)
	{ [ -x "$PGBENCH" ] && [ -x "$PSQL" ]; } || pkgs+=(postgresql-client-15)
	[ -x "$PGBOUNCER" ] || pkgs+=(pgbouncer)
	[ -x "$HAPROXY" ] || pkgs+=(haproxy)
	[ ${#pkgs[@]} -eq 0 ] && return 0
	need_root "${pkgs[@]}"
	local before="" e name comm sig file pid
	for e in $PACKAGED; do
		IFS=: read -r name comm sig file <<<"$e"
		pid=$(pidfile_pid "$file")
		alive "$pid" && before="$before $pid"
	done
	apt_install "$OUT/apt.log" "${pkgs[@]}"
	# A package may start its service (not where policy-rc.d forbids it). Stop
	# only an instance that appeared with this install, found by its pidfile.
	for e in $PACKAGED; do
		IFS=: read -r name comm sig file <<<"$e"
		pid=$(pidfile_pid "$file")
		alive "$pid" || continue
		case " $before " in *" $pid "*) continue ;; esac
		[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || continue
		log "the $name package started a service (pid $pid from $file); stopping it"
		if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
			systemctl stop "$name" >/dev/null 2>&1 || true # else systemd would restart it
		fi
		alive "$pid" && kill "-$sig" "$pid" 2>/dev/null || true
		wait_gone "$pid" 30 || log "warning: packaged $name (pid $pid) did not stop"
	done
}

# PgBouncer 1.24.1 for the transaction-mode comparison: Debian 12 packages 1.18,
# which has no protocol-level prepared statements in transaction mode
# (max_prepared_statements came in 1.21), so every -M prepared row fails there.
# The source is Debian's own, the upstream tarball of Debian 13's package,
# checked against the SHA-256 that the archive's Sources index gives for it,
# and built once into $OUT.
PGB_SRC_VERSION=1.24.1
PGB_SRC_SHA256=da72a3aba13072876d055a3e58dd4aba4a5de4ed6148e73033185245598fd3e0
PGB_SRC_URL=http://deb.debian.org/debian/pool/main/p/pgbouncer/pgbouncer_$PGB_SRC_VERSION.orig.tar.gz
PGBOUNCER_SRC=$OUT/pgbouncer-$PGB_SRC_VERSION/pgbouncer

# build_pgbouncer_src: builds $PGBOUNCER_SRC unless it is there; installs the
# build dependencies first (as root, or stops with the command to run). It
# returns 1, with the reason logged, if the download or the build fails.
build_pgbouncer_src() {
	[ -x "$PGBOUNCER_SRC" ] && return 0
	local pkgs=() d=$OUT/pgbouncer-$PGB_SRC_VERSION logf=$OUT/pgbouncer-build.log
	command -v curl >/dev/null || pkgs+=(curl)
	command -v cc >/dev/null || pkgs+=(gcc libc6-dev)
	command -v make >/dev/null || pkgs+=(make)
	command -v pkg-config >/dev/null || pkgs+=(pkg-config)
	dpkg -s libevent-dev >/dev/null 2>&1 || pkgs+=(libevent-dev)
	dpkg -s libssl-dev >/dev/null 2>&1 || pkgs+=(libssl-dev)
	if [ ${#pkgs[@]} -gt 0 ]; then
		need_root "${pkgs[@]}"
		apt_install "$OUT/apt-pgbouncer-build.log" "${pkgs[@]}"
	fi
	log "building PgBouncer $PGB_SRC_VERSION from Debian's source into $d (once; log $logf)"
	rm -rf "$d.build"
	mkdir -p "$d.build"
	if ! (cd "$d.build" && curl -fsS --max-time 120 -o src.tar.gz "$PGB_SRC_URL" &&
		echo "$PGB_SRC_SHA256  src.tar.gz" | sha256sum -c --quiet &&
		tar xzf src.tar.gz && cd "pgbouncer-$PGB_SRC_VERSION" &&
		./configure --without-cares --with-systemd=no && make -j"$(nproc)") >"$logf" 2>&1; then
		log "warning: building PgBouncer $PGB_SRC_VERSION failed (see $logf); pgbouncer124-tx is left out"
		rm -rf "$d.build"
		return 1
	fi
	mkdir -p "$d"
	install -m 0755 "$d.build/pgbouncer-$PGB_SRC_VERSION/pgbouncer" "$PGBOUNCER_SRC"
	rm -rf "$d.build"
}

mkdir -p "$OUT"
install_missing
command -v go >/dev/null || die "go is not on PATH (needed to build the relays and idleconns)"
for b in "$PGBIN/postgres" "$PGBIN/initdb" "$PGBIN/pg_ctl" "$PGBIN/pg_basebackup" "$PSQL" "$PGBENCH" "$PGBOUNCER" "$HAPROXY"; do
	[ -x "$b" ] || die "$b not found"
done

# ----------------------------------------------------------- process table --

process_table "$OUT/run-$STAMP"

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { # utime+stime of PID, in clock ticks; 0 when there is no PID
	local st
	[ -n "$1" ] || { echo 0; return; }
	st=$(cat "/proc/$1/stat")
	st=${st##*) }
	echo "$st" | awk '{print $12 + $13}'
}

# ----------------------------------------------------------------- cluster --

pg_conf() { # DATADIR PORT
	cat >>"$1/postgresql.conf" <<EOF

# bench/run.sh: defaults otherwise (fsync, synchronous_commit, ... untouched)
listen_addresses = '127.0.0.1'
port = $2
unix_socket_directories = '$PG/sock'
max_connections = 500
shared_buffers = 128MB
huge_pages = try
EOF
}

# Huge pages for the servers' shared memory. Without them every new backend
# takes a page fault per 4 KiB of shared buffers it touches; on this kind of
# virtual machine that costs a new session tens of milliseconds of CPU, which
# PgBouncer's reused server connections skip and every passthrough relay (and
# direct) pays, so short runs at 64 clients measured backend warm-up instead of
# the relay. Production servers run with huge pages; so does the bench when it
# runs as root (it reserves 300 and gives back the old count on exit).
# PGR_BENCH_HUGEPAGES=0 leaves them off.
HUGE_OLD=
if [ "${PGR_BENCH_HUGEPAGES:-1}" = 1 ] && [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/nr_hugepages ]; then
	if [ "$(cat /proc/sys/vm/nr_hugepages)" -lt 300 ]; then
		HUGE_OLD=$(cat /proc/sys/vm/nr_hugepages)
		echo 300 >/proc/sys/vm/nr_hugepages
	fi
	log "huge pages: $(awk '/^HugePages_Total/ {print $2}' /proc/meminfo) of 2 MiB reserved"
fi

start_primary
start_standbys

# ------------------------------------------------------------------ builds --

log "building plainrelay and idleconns"
(cd "$ROOT" && go build -o "$OUT/plainrelay" ./bench/plainrelay && go build -o "$OUT/idleconns" ./bench/idleconns) \
	>"$LOGS/build.log" 2>&1 || die "go build failed, see $LOGS/build.log"

HAVE_PGROUTER=0
PGROUTER_NOTE=""
PGROUTER_REV=$(pgrouter_rev)
if (cd "$ROOT" && go build -o "$OUT/pgrouter" ./cmd/pgrouter) >"$LOGS/pgrouter-build.log" 2>&1; then
	HAVE_PGROUTER=1
else
	PGROUTER_NOTE="pgrouter skipped: \`go build ./cmd/pgrouter\` failed: $(head -n1 "$LOGS/pgrouter-build.log")"
	log "$PGROUTER_NOTE"
fi

# ------------------------------------------------------------------ proxies --

TARGETS=() # name:port:pid (pid of the proxy process, empty for direct)
TARGETS+=("direct:$P_PRIMARY:")

if [ "$HAVE_PGROUTER" -eq 1 ] && { want pgrouter-rw || want pgrouter-ro; }; then
	free_port P_PGR
	free_port P_PGR_RW
	free_port P_PGR_RO
	free_port P_PGR_ADMIN
	"${SERVICE[@]}" "$OUT/pgrouter" proxy \
		--backends "127.0.0.1:$P_PRIMARY,127.0.0.1:$P_STANDBY1,127.0.0.1:$P_STANDBY2" \
		--listen "127.0.0.1:$P_PGR" --listen-rw "127.0.0.1:$P_PGR_RW" --listen-ro "127.0.0.1:$P_PGR_RO" \
		--admin-listen "127.0.0.1:$P_PGR_ADMIN" --health-user postgres --health-database postgres \
		--server-sslmode disable --health-sslmode disable \
		>"$LOGS/pgrouter.log" 2>&1 </dev/null &
	PGR_PID=$!
	track pgrouter "$PGR_PID" TERM
	if wait_for 30 "pgrouter rw port to reach the primary" answers "$P_PGR_RW" "select pg_is_in_recovery()" f &&
		wait_for 30 "pgrouter ro port to reach a standby" answers "$P_PGR_RO" "select pg_is_in_recovery()" t; then
		log "pgrouter ($PGROUTER_REV) up: rw 127.0.0.1:$P_PGR_RW, ro 127.0.0.1:$P_PGR_RO (pid $PGR_PID)"
		TARGETS+=("pgrouter-rw:$P_PGR_RW:$PGR_PID" "pgrouter-ro:$P_PGR_RO:$PGR_PID")
	else
		PGROUTER_NOTE="pgrouter skipped: built, but its rw/ro ports did not answer within 30 s (log: $(tail -n1 "$LOGS/pgrouter.log" 2>/dev/null))"
		log "$PGROUTER_NOTE"
		tail -n 20 "$LOGS/pgrouter.log" >&2 || true
		alive "$PGR_PID" && kill "$PGR_PID" 2>/dev/null && wait_gone "$PGR_PID" 10 || true
	fi
fi

# start_pgrouter NAME PORT ADMIN_PORT ARGS...: another `pgrouter proxy ARGS` in
# its own process (so its RSS and CPU are its own), in front of the three
# servers, serving PORT. It is a target once PORT reaches the primary; if that
# takes over 30 s it is stopped and the run's note says so. Sets STARTED_PID.
start_pgrouter() {
	local name=$1 port=$2 admin=$3
	shift 3
	"${SERVICE[@]}" "$OUT/pgrouter" proxy "$@" \
		--backends "127.0.0.1:$P_PRIMARY,127.0.0.1:$P_STANDBY1,127.0.0.1:$P_STANDBY2" \
		--admin-listen "127.0.0.1:$admin" --health-user postgres --health-database postgres \
		--server-sslmode disable --health-sslmode disable \
		>"$LOGS/$name.log" 2>&1 </dev/null &
	STARTED_PID=$!
	track "$name" "$STARTED_PID" TERM
	if wait_for 30 "$name to reach the primary" answers "$port" "select pg_is_in_recovery()" f; then
		TARGETS+=("$name:$port:$STARTED_PID")
		return 0
	fi
	PGROUTER_NOTE="${PGROUTER_NOTE:+$PGROUTER_NOTE; }$name skipped: its port did not answer within 30 s (log: $(tail -n1 "$LOGS/$name.log" 2>/dev/null))"
	log "$PGROUTER_NOTE"
	tail -n 20 "$LOGS/$name.log" >&2 || true
	alive "$STARTED_PID" && kill "$STARTED_PID" 2>/dev/null && wait_gone "$STARTED_PID" 10 || true
	return 1
}

# pgrouter-gr: its rw port relays with two goroutines per session
# (--relay-threads 0), the relay before the epoll loop, so every run measures
# what the loop changes.
if [ "$HAVE_PGROUTER" -eq 1 ] && want pgrouter-gr; then
	free_port P_PGR_GR
	free_port P_PGR_GR_ADMIN
	start_pgrouter pgrouter-gr "$P_PGR_GR" "$P_PGR_GR_ADMIN" --relay-threads 0 --listen-rw "127.0.0.1:$P_PGR_GR" &&
		log "pgrouter-gr up: rw 127.0.0.1:$P_PGR_GR (pid $STARTED_PID)"
fi

# pgrouter-tx: transaction pooling on its rw port. Clients are
# authenticated at the proxy by a trust rule; the servers trust too, so the
# proxy logs in to them as the client without a secret. The auth file lists the
# bench user with an md5 hash (of a password nobody uses) in PgBouncer's
# userlist format.
PGR_TX_ADMIN=""
mkdir -p "$W/pgrouter-tx"
printf '"postgres" "md5%s"\n' "$(printf '%s' "benchpostgres" | md5sum | cut -d' ' -f1)" >"$W/pgrouter-tx/userlist.txt"
POOL_AUTH_ARGS=(--auth-file "$W/pgrouter-tx/userlist.txt" --auth-hba 'host all all 127.0.0.1/32 trust')
TX_ARGS=(--pool-mode transaction --pool-size "$POOL_SIZE" "${POOL_AUTH_ARGS[@]}")
if [ "$HAVE_PGROUTER" -eq 1 ] && want pgrouter-tx; then
	free_port P_PGR_TX
	free_port P_PGR_TX_ADMIN
	if start_pgrouter pgrouter-tx "$P_PGR_TX" "$P_PGR_TX_ADMIN" --listen-rw "127.0.0.1:$P_PGR_TX" "${TX_ARGS[@]}"; then
		log "pgrouter-tx ($PGROUTER_REV) up: transaction pooling, pool size $POOL_SIZE, 127.0.0.1:$P_PGR_TX (pid $STARTED_PID)"
		PGR_TX_ADMIN=127.0.0.1:$P_PGR_TX_ADMIN
	fi
fi

# pgrouter-session: session pooling on its rw port, the pool size of PgBouncer
# in session mode (100): a client keeps one server for its session, which is
# reset (DISCARD ALL) and kept for the next client, as PgBouncer does. The
# like-for-like peer of pgbouncer, where pgrouter-rw (a passthrough, a new
# backend per client) is that of haproxy.
if [ "$HAVE_PGROUTER" -eq 1 ] && want pgrouter-session; then
	free_port P_PGR_SESS
	free_port P_PGR_SESS_ADMIN
	start_pgrouter pgrouter-session "$P_PGR_SESS" "$P_PGR_SESS_ADMIN" --listen-rw "127.0.0.1:$P_PGR_SESS" \
		--pool-mode session --pool-size 100 "${POOL_AUTH_ARGS[@]}" &&
		log "pgrouter-session up: session pooling, pool size 100, 127.0.0.1:$P_PGR_SESS (pid $STARTED_PID)"
fi

# pgrouter-txgr: the same transaction pooling relayed by goroutines (a client
# goroutine, and a pump goroutine per lend) instead of the epoll loop.
if [ "$HAVE_PGROUTER" -eq 1 ] && want pgrouter-txgr; then
	free_port P_PGR_TXGR
	free_port P_PGR_TXGR_ADMIN
	start_pgrouter pgrouter-txgr "$P_PGR_TXGR" "$P_PGR_TXGR_ADMIN" --relay-threads 0 --listen-rw "127.0.0.1:$P_PGR_TXGR" "${TX_ARGS[@]}" &&
		log "pgrouter-txgr up: transaction pooling on goroutines, 127.0.0.1:$P_PGR_TXGR (pid $STARTED_PID)"
fi

# start_pgbouncer NAME POOL_MODE POOL_SIZE MAX_CLIENT_CONN [BINARY [INI_LINE]]:
# PgBouncer (the packaged one unless BINARY) with trust in front of the
# primary, INI_LINE added to its [pgbouncer] section; appends the target.
start_pgbouncer() {
	local name=$1 mode=$2 size=$3 maxc=$4 bin=${5:-$PGBOUNCER} extra=${6:-} port pid
	free_port port
	mkdir -p "$W/$name"
	cat >"$W/$name/pgbouncer.ini" <<EOC
[databases]
* = host=127.0.0.1 port=$P_PRIMARY

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $W/$name/userlist.txt
pool_mode = $mode
max_client_conn = $maxc
default_pool_size = $size
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
logfile = $LOGS/$name.log
pidfile = $W/$name/pgbouncer.pid
$extra
EOC
	echo '"postgres" ""' >"$W/$name/userlist.txt"
	[ "$IS_ROOT" -eq 1 ] && chown -R postgres: "$W/$name"
	"${SERVICE[@]}" "${AS_PG[@]}" "$bin" "$W/$name/pgbouncer.ini" >"$LOGS/$name.stderr" 2>&1 </dev/null &
	pid=$!
	track "$name" "$pid" TERM
	wait_for 30 "$name" answers "$port" "select pg_is_in_recovery()" f || die "$name did not come up, see $LOGS/$name.log"
	log "$name up on 127.0.0.1:$port (pid $pid, $("$bin" --version 2>&1 | head -n1), pool_mode $mode, default_pool_size $size)"
	TARGETS+=("$name:$port:$pid")
}
# PgBouncer: session mode, trust, in front of the primary.
want pgbouncer && start_pgbouncer pgbouncer session 100 1000
# The same, but closing a server connection idle for a second: its backends
# do not outlive a run, so each run starts on new ones, as it does through
# direct, HAProxy and pgrouter's passthrough. PgBouncer keeps the backends of
# one pgbench run for the next; a new backend here warms up for seconds (a
# page fault costs about 11 us in this kind of guest, see RESULTS.md), which
# the kept ones skip. The two PgBouncer rows tell the relay from the reuse.
want pgbouncer-fresh && start_pgbouncer pgbouncer-fresh session 100 1000 "$PGBOUNCER" "server_idle_timeout = 1"
# PgBouncer in transaction mode, the pool size of pgrouter-tx. PgBouncer 1.18 has
# no max_prepared_statements (1.21+): protocol-level named statements are not
# carried across servers.
want pgbouncer-tx && start_pgbouncer pgbouncer-tx transaction "$POOL_SIZE" 2000
# The same with PgBouncer 1.24.1 carrying protocol-level prepared statements
# across servers, as pgrouter-tx does.
HAVE_PGB_SRC=0
if want pgbouncer124-tx && build_pgbouncer_src; then
	HAVE_PGB_SRC=1
	start_pgbouncer pgbouncer124-tx transaction "$POOL_SIZE" 2000 "$PGBOUNCER_SRC" "max_prepared_statements = 200"
fi

# HAProxy: TCP mode, all three servers listed, and a health check that logs in
# and runs `select pg_is_in_recovery()`, accepting only a DataRow holding 'f'.
if want haproxy; then
	hex() { printf '%s' "$1" | od -An -tx1 | tr -d ' \n'; }
	STARTUP_BODY=00030000$(hex user)00$(hex postgres)00$(hex database)00$(hex postgres)0000
	STARTUP=$(printf '%08x' $((4 + ${#STARTUP_BODY} / 2)))$STARTUP_BODY
	QUERY_BODY=$(hex "select pg_is_in_recovery()")00
	QUERY=51$(printf '%08x' $((4 + ${#QUERY_BODY} / 2)))$QUERY_BODY
	free_port P_HAPROXY
	mkdir -p "$W/haproxy"
	cat >"$W/haproxy/haproxy.cfg" <<EOF
# No log target: nothing is logged per connection. Server state changes still
# reach stderr as [WARNING] lines, which is how this script sees the check work.
global
    maxconn 4000

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout check 2s

listen pg_primary
    bind 127.0.0.1:$P_HAPROXY
    balance first
    option tcp-check
    tcp-check connect
    # StartupMessage: user=postgres database=postgres
    tcp-check send-binary $STARTUP
    # AuthenticationOk
    tcp-check expect binary 520000000800000000
    # Query: select pg_is_in_recovery()
    tcp-check send-binary $QUERY
    # DataRow, 1 column, 1 byte: 'f' (not in recovery)
    tcp-check expect binary 440000000b00010000000166
    # Terminate
    tcp-check send-binary 5800000004
    default-server inter 1s fall 2 rise 2
    server primary 127.0.0.1:$P_PRIMARY check
    server standby1 127.0.0.1:$P_STANDBY1 check
    server standby2 127.0.0.1:$P_STANDBY2 check
EOF
	"$HAPROXY" -c -f "$W/haproxy/haproxy.cfg" >"$LOGS/haproxy-check.log" 2>&1 || die "haproxy config invalid, see $LOGS/haproxy-check.log"
	"${SERVICE[@]}" "$HAPROXY" -db -f "$W/haproxy/haproxy.cfg" >"$LOGS/haproxy.log" 2>&1 </dev/null &
	HAPROXY_PID=$!
	track haproxy "$HAPROXY_PID" TERM
	haproxy_ready() {
		grep -q 'standby1 is DOWN' "$LOGS/haproxy.log" && grep -q 'standby2 is DOWN' "$LOGS/haproxy.log" &&
			! grep -q 'primary is DOWN' "$LOGS/haproxy.log" && answers "$P_HAPROXY" "select pg_is_in_recovery()" f
	}
	wait_for 30 "haproxy to mark both standbys DOWN and the primary UP" haproxy_ready ||
		die "haproxy's pg_is_in_recovery() check did not settle, see $LOGS/haproxy.log"
	log "haproxy up on 127.0.0.1:$P_HAPROXY (pid $HAPROXY_PID); check marked both standbys DOWN"
	TARGETS+=("haproxy:$P_HAPROXY:$HAPROXY_PID")
fi

if want plainrelay; then
	free_port P_RELAY
	"${SERVICE[@]}" "$OUT/plainrelay" -listen "127.0.0.1:$P_RELAY" -target "127.0.0.1:$P_PRIMARY" >"$LOGS/plainrelay.log" 2>&1 </dev/null &
	RELAY_PID=$!
	track plainrelay "$RELAY_PID" TERM
	wait_for 30 "plainrelay" answers "$P_RELAY" "select pg_is_in_recovery()" f || die "plainrelay did not come up, see $LOGS/plainrelay.log"
	log "plainrelay up on 127.0.0.1:$P_RELAY (pid $RELAY_PID)"
	TARGETS+=("plainrelay:$P_RELAY:$RELAY_PID")
fi

filter_targets

# ------------------------------------------------------------- idle memory --

IDLE_TSV=$W/idle.tsv
: >"$IDLE_TSV"
client_backends() { q "$P_PRIMARY" "select count(*) from pg_stat_activity where backend_type = 'client backend'"; }
few_backends() { [ "$(client_backends)" -le 10 ]; }

idle_test() { # NAME PORT PID
	local name=$1 port=$2 pid=$3 before after opened fifo out rc=0
	fifo=$W/idle-$name.fifo
	out=$LOGS/idleconns-$name.log
	rm -f "$fifo" && mkfifo "$fifo"
	before=$(rss_kb "$pid")
	"$OUT/idleconns" -n "$IDLE_N" -dsn "host=127.0.0.1 port=$port user=postgres dbname=postgres sslmode=disable" \
		<"$fifo" >"$out" 2>&1 &
	local ipid=$!
	track "idleconns-$name" "$ipid" TERM
	exec 9>"$fifo" # holds idleconns' stdin open
	wait_for 180 "idleconns through $name" grep -q '^ready' "$out" || rc=1
	sleep 2
	after=$(rss_kb "$pid")
	opened=$(sed -n 's/^opened \([0-9]*\) of.*/\1/p' "$out")
	exec 9>&-
	wait "$ipid" 2>/dev/null || true
	rm -f "$fifo"
	if [ "$rc" -ne 0 ] || [ -z "$opened" ] || [ "$opened" -eq 0 ]; then
		log "idle test through $name failed, see $out"
		printf '%s\t%s\t%s\t-\t-\t%s\n' "$name" "$before" "${after:-}" "failed" >>"$IDLE_TSV"
		return 0
	fi
	local note=""
	[ "$opened" -lt "$IDLE_N" ] && note="only $opened of $IDLE_N opened: $(grep -m1 '^connect' "$out")"
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$before" "$after" "$opened" \
		"$(awk -v a="$after" -v b="$before" -v n="$opened" 'BEGIN{printf "%.1f", (a-b)/n}')" "$note" >>"$IDLE_TSV"
	log "idle: $name RSS ${before} kB -> ${after} kB with $opened sessions"
	wait_for 30 "idle backends to exit" few_backends || true
}

if [ "$IDLE_N" -gt 0 ]; then
	log "idle session memory: $IDLE_N sessions per proxy, one proxy at a time"
	for t in "${TARGETS[@]}"; do
		IFS=: read -r name port pid <<<"$t"
		# pgrouter-session serves only as many sessions as its pool has
		# servers (100), and keeps them open after: not this test's case.
		case $name in direct | pgrouter-ro | pgrouter-session | *-tx) continue ;; esac
		idle_test "$name" "$port" "$pid"
	done
fi

# Pooled targets: TX_IDLE_N clients through the transaction-mode port, in
# phases: open (connected, no query yet), warm (each has run one transaction and
# idles), active (TX_ACTIVE of them run pgbench -S's SELECT back to back while
# the rest idle) and idle again. The proxy's VmRSS is read at the end of each
# phase (while active: the largest of samples every 0.25 s over 5 s), and
# pgrouter's goroutine count from its admin server's /debug/pprof/goroutine.
TX_IDLE_TSV=$W/tx-idle.tsv
: >"$TX_IDLE_TSV"
goroutines() { # ADMIN_ADDR: the count, or - without an admin server
	local g=""
	[ -n "$1" ] && g=$(curl -s --max-time 5 "http://$1/debug/pprof/goroutine?debug=1" 2>/dev/null |
		sed -n 's/^goroutine profile: total \([0-9]*\).*/\1/p' | head -n1)
	echo "${g:--}"
}
max_rss_kb() { # PID SECONDS
	local i m=0 v
	for ((i = 0; i < $2 * 4; i++)); do
		v=$(rss_kb "$1")
		[ "${v:-0}" -gt "$m" ] && m=$v
		sleep 0.25
	done
	echo "$m"
}

tx_idle_test() { # NAME PORT PID ADMIN_ADDR
	local name=$1 port=$2 pid=$3 admin=$4 fifo out ipid rc=0 note=""
	local before open="" warm="" act="" after="" opened="" g0 g1=- g2=- g3=- g4=- qn=- qe=- we=- t0 t1 qps=-
	fifo=$W/txidle-$name.fifo
	out=$LOGS/idleconns-tx-$name.log
	rm -f "$fifo" && mkfifo "$fifo"
	before=$(rss_kb "$pid")
	g0=$(goroutines "$admin")
	"$OUT/idleconns" -n "$TX_IDLE_N" -active "$TX_ACTIVE" -scale "$SCALE" \
		-dsn "host=127.0.0.1 port=$port user=postgres dbname=postgres sslmode=disable" <"$fifo" >"$out" 2>&1 &
	ipid=$!
	track "idleconns-tx-$name" "$ipid" TERM
	exec 9>"$fifo" # holds idleconns' stdin open; commands go through it
	if wait_for 300 "$TX_IDLE_N clients through $name" grep -q '^ready' "$out"; then
		sleep 2
		open=$(rss_kb "$pid")
		g1=$(goroutines "$admin")
		opened=$(sed -n 's/^opened \([0-9]*\) of.*/\1/p' "$out")
		log "tx idle: $name RSS ${before} kB -> ${open} kB with ${opened:-?} clients open (no query yet)"
		if alive "$ipid"; then echo warm >&9; fi
		if wait_for 120 "$name clients to run one query each" grep -q '^warmed' "$out"; then
			we=$(sed -n 's/^warmed [0-9]* errors \([0-9]*\).*/\1/p' "$out")
			sleep 2
			warm=$(rss_kb "$pid")
			g2=$(goroutines "$admin")
			log "tx idle: $name RSS ${warm} kB after each client ran one query (errors: $we)"
			if [ "$TX_ACTIVE" -gt 0 ] && alive "$ipid"; then
				t0=$(now_ms)
				echo active >&9
				if wait_for 30 "$name active clients" grep -q '^active' "$out"; then
					sleep 1
					act=$(max_rss_kb "$pid" 5)
					g3=$(goroutines "$admin")
				fi
				if alive "$ipid"; then echo idle >&9; fi
				wait_for 60 "$name active clients to stop" grep -q '^idled' "$out" || true
				t1=$(now_ms)
				qn=$(sed -n 's/^idled queries \([0-9]*\) errors.*/\1/p' "$out")
				qe=$(sed -n 's/^idled queries [0-9]* errors \([0-9]*\).*/\1/p' "$out")
				[ -n "$qn" ] && qps=$(awk -v q="$qn" -v ms=$((t1 - t0)) 'BEGIN { printf "%.0f", q / (ms / 1000) }')
				log "tx idle: $name RSS max ${act:-?} kB with $TX_ACTIVE of them active (${qn:-?} queries, ${qe:-?} errors, about $qps/s)"
				sleep 2
			fi
			after=$(rss_kb "$pid")
			g4=$(goroutines "$admin")
		else
			rc=1
		fi
	else
		rc=1
	fi
	exec 9>&-
	wait "$ipid" 2>/dev/null || true
	rm -f "$fifo"
	[ -n "$opened" ] && [ "$opened" -lt "$TX_IDLE_N" ] && note="only $opened of $TX_IDLE_N opened: $(grep -m1 '^connect' "$out")"
	[ "$rc" -ne 0 ] && note="${note:+$note; }failed, see log/$(basename "$out"): $(grep -m1 -E 'warm:|active:|connect' "$out" | cut -c1-160)"
	[ "${we:-0}" != 0 ] && [ "$we" != - ] && note="${note:+$note; }warm errors $we: $(grep -m1 '^warm:' "$out" | cut -c1-160)"
	[ "${qe:-0}" != 0 ] && [ "$qe" != - ] && note="${note:+$note; }active errors $qe: $(grep -m1 '^active:' "$out" | cut -c1-160)"
	per() { [ -n "$1" ] && [ -n "$opened" ] && [ "$opened" -gt 0 ] && awk -v a="$1" -v b="$before" -v n="$opened" 'BEGIN { printf "%.1f", (a - b) / n }' || echo -; }
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$before" "${open:--}" "${warm:--}" "${act:--}" \
		"${after:--}" "${opened:--}" "$(per "$open")" "$(per "$warm")" "$(per "$act")" "$qps" "${qe:--}" \
		"$g0/$g1/$g2/$g3/$g4" "${we:--}" "$note" >>"$TX_IDLE_TSV"
}

if [ "$TX_IDLE_N" -gt 0 ]; then
	for t in "${TARGETS[@]}"; do
		IFS=: read -r name port pid <<<"$t"
		case $name in pgrouter-tx) tx_idle_test "$name" "$port" "$pid" "$PGR_TX_ADMIN" ;; pgbouncer-tx | pgbouncer124-tx) tx_idle_test "$name" "$port" "$pid" "" ;; esac
	done
fi

# ----------------------------------------------------------------- pgbench --

# Cases with 256 clients and -N -M prepared are run by direct and the pooled
# targets only (pooled_only): the relays hold a server per client, and PgBouncer
# in session mode, pool 100, would leave 156 of 256 clients waiting all run.
CASE_NAMES=()
CASE_FLAGS=()
for mode in "S simple" "S extended" "S prepared" "N simple" "N extended" "N prepared"; do
	set -- $mode
	for c in 8 64 256; do
		CASE_NAMES+=("$1-$2-c$c")
		CASE_FLAGS+=("-$1 -M $2 -c $c")
	done
done
CASE_NAMES+=("C-S-simple-c8")
CASE_FLAGS+=("-C -S -M simple -c 8")
pooled_only() { case $1 in *-c256 | N-prepared-*) return 0 ;; esac; return 1; }
# runs_case TARGET CASE FLAGS: whether TARGET runs the case.
runs_case() {
	case "$1:$3" in pgrouter-ro:*-N*) return 1 ;; esac
	case $1 in direct | *-tx) return 0 ;; esac
	! pooled_only "$2"
}
if [ -n "$CASES_FILTER" ]; then
	kn=()
	kf=()
	for i in "${!CASE_NAMES[@]}"; do
		if printf '%s %s\n' "${CASE_NAMES[$i]}" "${CASE_FLAGS[$i]}" | grep -Eq -- "$CASES_FILTER"; then
			kn+=("${CASE_NAMES[$i]}")
			kf+=("${CASE_FLAGS[$i]}")
		fi
	done
	[ ${#kn[@]} -gt 0 ] || die "PGR_BENCH_CASES='$CASES_FILTER' matches no case (${CASE_NAMES[*]})"
	CASE_NAMES=("${kn[@]}")
	CASE_FLAGS=("${kf[@]}")
fi

log "warm-up: pgbench -S -T 3 on the primary and both standbys"
for p in "$P_PRIMARY" "$P_STANDBY1" "$P_STANDBY2"; do
	"$PGBENCH" -h 127.0.0.1 -p "$p" -n -S -T 3 -c 4 -j 2 >>"$LOGS/warmup.log" 2>&1 || true
done

RUNS_TSV=$W/runs.tsv
printf 'round\tcase\tflags\ttarget\ttps\tlat_ms\ttx\tfailed\tcpu_us_per_tx\tcores\tstatus\tload1\tother_cores\tp99_ms\tnote\tsteady_tps\n' >"$RUNS_TSV"
nt=${#TARGETS[@]}
total=0
for i in "${!CASE_NAMES[@]}"; do
	for t in "${TARGETS[@]}"; do
		if runs_case "${t%%:*}" "${CASE_NAMES[$i]}" "${CASE_FLAGS[$i]}"; then total=$((total + 1)); fi
	done
done
TXLOGS=$W/txlog
mkdir -p "$TXLOGS"
# txlog_figures PREFIX: two figures from pgbench's per-transaction logs
# PREFIX.* (lines of failed or skipped transactions are left out), then the
# logs are removed:
# - the 99th percentile (nearest rank) of the latencies (third field, µs), in ms;
# - the steady tps: transactions that ended after the first WARMUP seconds of
#   the run (from the first transaction's end to the last one's), per second.
#   Each run opens new connections, and a new PostgreSQL backend takes a few
#   seconds to warm its caches: a relay that gives each client its own backend
#   starts cold every run, while PgBouncer in session mode hands out backends
#   kept from the previous run. An application that stays connected sees the
#   steady figure.
txlog_figures() {
	local v
	v=$(cat "$1".* 2>/dev/null | awk '$3 ~ /^[0-9]+$/ { printf "%s %.6f\n", $3, $5 + $6 / 1e6 }' | sort -n |
		awk -v warm="$WARMUP" '
		{ a[NR] = $1; t[NR] = $2; if (NR == 1 || $2 < t0) t0 = $2; if (NR == 1 || $2 > t1) t1 = $2 }
		END {
			if (NR == 0) { print "- -"; exit }
			i = int(NR * 0.99); if (i < NR * 0.99) i++
			n = 0; for (j = 1; j <= NR; j++) if (t[j] >= t0 + warm) n++
			span = t1 - t0 - warm
			printf "%.3f %s\n", a[i] / 1000, (span > 0.5 ? sprintf("%.1f", n / span) : "-")
		}')
	rm -f "$1".*
	echo "${v:-- -}"
}
log "pgbench: ${#CASE_NAMES[@]} cases x $nt targets, $ROUNDS rounds of $total runs of ${DURATION}s (about $((ROUNDS * total * (DURATION + 2) / 60)) min)"

for ((r = 1; r <= ROUNDS; r++)); do
	for i in "${!CASE_NAMES[@]}"; do
		cname=${CASE_NAMES[$i]}
		cflags=${CASE_FLAGS[$i]}
		# Rotate the target order each round so that no target always runs first.
		for ((k = 0; k < nt; k++)); do
			IFS=: read -r name port pid <<<"${TARGETS[$(((k + r - 1) % nt))]}"
			runs_case "$name" "$cname" "$cflags" || continue
			runlog=$LOGS/pgbench/r$r-$cname-$name.log
			latflags=()
			[ "$LATLOG" = 1 ] && latflags=(--log "--log-prefix=$TXLOGS/r$r-$cname-$name")
			load1=$(cut -d' ' -f1 /proc/loadavg) # includes this bench's own previous run
			t0=$(cpu_ticks "$pid")
			b0=$(busy_ticks)
			o0=$(our_ticks)
			w0=$(now_ms)
			status=ok
			# shellcheck disable=SC2086 # cflags is a list of flags
			timeout $((DURATION + 60)) "$PGBENCH" -h 127.0.0.1 -p "$port" -T "$DURATION" -j "$JOBS" -n "${latflags[@]}" $cflags \
				>"$runlog" 2>&1 || status="exit$?"
			w1=$(now_ms)
			t1=$(cpu_ticks "$pid")
			o1=$(our_ticks)
			b1=$(busy_ticks)
			pgbench_figures "$runlog" "$pid" "$t0" "$t1" "$b0" "$b1" "$o0" "$o1" "$w0" "$w1"
			p99=- steady=-
			[ "$LATLOG" = 1 ] && read -r p99 steady <<<"$(txlog_figures "$TXLOGS/r$r-$cname-$name")"
			# The first error pgbench printed, if any (one line, no tabs or pipes).
			note=$(grep -m1 -E 'ERROR|FATAL|error|aborted|timeout|could not' "$runlog" | tr '\t|' '  ' | cut -c1-200 || true)
			printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$cname" "$cflags" "$name" "${tps:--}" "${lat:--}" \
				"${tx:--}" "${failed:-0}" "$cpu" "$cores" "$status" "$load1" "$other" "$p99" "$note" "$steady" >>"$RUNS_TSV"
			log "round $r/$ROUNDS $cname $name: tps ${tps:-?} (steady $steady) lat ${lat:-?} ms p99 $p99 ms cpu ${cpu} us/tx, other ${other} cores, $status${note:+ ($note)}"
			if [ "$status" != ok ]; then
				# A run that hung (PgBouncer 1.24.1 on -N -M prepared with
				# 64 clients or more) can leave its servers idle in a
				# transaction, holding row locks and the xmin horizon
				# through the next targets' runs: end those transactions.
				ended=$("$PSQL" -h 127.0.0.1 -p "$P_PRIMARY" -U postgres -d postgres -Atc \
					"select count(pg_terminate_backend(pid)) from pg_stat_activity where state like 'idle in transaction%' and xact_start < now() - interval '$DURATION seconds'" 2>/dev/null || echo '?')
				log "  ended $ended transactions left open by that run"
			fi
		done
	done
done

# ----------------------------------------------------------------- results --

# summarize prints one row per case and target: medians over the rounds that
# succeeded, and the ratio of median tps to direct's median tps in that case.
# Fields: case flags target tps ratio lat_ms us/tx cores ok/runs tps-by-round
# other p99_ms note p99-by-round steady-tps steady-ratio steady-by-round.
summarize() {
	awk -F'\t' "$AWK_MEDIAN"'
	NR == 1 { next }
	{
		key = $2 SUBSEP $4
		if (!(key in seen)) { seen[key] = 1; order[++nk] = key; flags[key] = $3 }
		all[key] = all[key] " " $5
		allst[key] = allst[key] " " ($16 == "" ? "-" : $16)
		allp99[key] = allp99[key] " " ($14 == "" ? "-" : $14)
		if ($13 + 0 > other[key] + 0) other[key] = $13
		if (note[key] == "" && $15 != "") note[key] = "round " $1 ": " $15
		runs[key]++
		if ($11 == "ok" && $8 == 0) {
			tps[key] = tps[key] " " $5; lat[key] = lat[key] " " $6; ok[key]++
			if ($14 != "" && $14 != "-") p99[key] = p99[key] " " $14
			if ($16 != "" && $16 != "-") st[key] = st[key] " " $16
			if ($9 != "-") { cpu[key] = cpu[key] " " $9; cores[key] = cores[key] " " $10 }
		}
	}
	END {
		for (i = 1; i <= nk; i++) {
			key = order[i]; split(key, kk, SUBSEP)
			m[key] = median(tps[key]); ms[key] = median(st[key])
		}
		for (i = 1; i <= nk; i++) {
			key = order[i]; split(key, kk, SUBSEP)
			d = m[kk[1] SUBSEP "direct"]
			ratio = (m[key] != "" && d != "" && d > 0) ? sprintf("%.2f", m[key] / d) : "-"
			ds = ms[kk[1] SUBSEP "direct"]
			sratio = (ms[key] != "" && ds != "" && ds > 0) ? sprintf("%.2f", ms[key] / ds) : "-"
			c = median(cpu[key]); co = median(cores[key])
			printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s/%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", kk[1], flags[key], kk[2],
				(m[key] == "" ? "-" : sprintf("%.0f", m[key])), ratio,
				(lat[key] == "" ? "-" : sprintf("%.3f", median(lat[key]))),
				(c == "" ? "-" : sprintf("%.1f", c)), (co == "" ? "-" : sprintf("%.2f", co)),
				ok[key] + 0, runs[key], substr(all[key], 2), sprintf("%.2f", other[key]),
				(p99[key] == "" ? "-" : sprintf("%.3f", median(p99[key]))), note[key], substr(allp99[key], 2),
				(ms[key] == "" ? "-" : sprintf("%.0f", ms[key])), sratio, substr(allst[key], 2)
		}
	}' "$RUNS_TSV"
}
SUMMARY=$(summarize)

# pooled_compare PEER: one row per case that pgrouter-tx or PEER ran: their
# median tps, the ratio pgrouter-tx / PEER, latency average and p99,
# proxy CPU per transaction, ok/runs, direct's tps, and the first error seen.
pooled_compare() {
	printf '%s\n' "$SUMMARY" | awk -F'\t' -v peer="$1" '
	$3 == "pgrouter-tx" || $3 == peer || $3 == "direct" {
		if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1; flags[$1] = $2 }
		for (f = 1; f <= 14; f++) v[$1, $3, f] = $f
	}
	END {
		for (i = 1; i <= n; i++) {
			c = order[i]; a = c SUBSEP "pgrouter-tx"; b = c SUBSEP peer
			if (v[a, 3] == "" && v[b, 3] == "") continue
			ta = v[a, 4]; tb = v[b, 4]
			ratio = (ta != "" && ta != "-" && tb != "" && tb != "-" && tb > 0) ? sprintf("%.2f", ta / tb) : "-"
			nt = ""
			if (v[a, 13] != "") nt = "pgrouter-tx " v[a, 13]
			if (v[b, 13] != "") nt = nt (nt == "" ? "" : "; ") peer " " v[b, 13]
			printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c, flags[c],
				(ta == "" ? "-" : ta), (tb == "" ? "-" : tb), ratio,
				(v[a, 6] == "" ? "-" : v[a, 6]), (v[b, 6] == "" ? "-" : v[b, 6]),
				(v[a, 12] == "" ? "-" : v[a, 12]), (v[b, 12] == "" ? "-" : v[b, 12]),
				(v[a, 7] == "" ? "-" : v[a, 7]), (v[b, 7] == "" ? "-" : v[b, 7]),
				(v[a, 9] == "" ? "-" : v[a, 9]), (v[b, 9] == "" ? "-" : v[b, 9]),
				(v[c SUBSEP "direct", 4] == "" ? "-" : v[c SUBSEP "direct", 4]), nt,
				(v[a, 14] == "" ? "-" : v[a, 14]) " / " (v[b, 14] == "" ? "-" : v[b, 14])
		}
	}'
}
POOLED_PEERS=(pgbouncer-tx pgbouncer124-tx)
declare -A POOLED # peer -> pooled_compare's rows
for peer in "${POOLED_PEERS[@]}"; do POOLED[$peer]=$(pooled_compare "$peer"); done

{
	printf '\n%-16s %-22s %-12s %9s %6s %9s %6s %9s %9s %8s %6s %5s %6s  %s\n' case flags target tps ratio steady s.ratio lat_ms p99_ms us/tx cores ok other "tps by round"
	printf '%s\n' "$SUMMARY" | awk -F'\t' '{printf "%-16s %-22s %-12s %9s %6s %9s %6s %9s %9s %8s %6s %5s %6s  %s\n", $1, $2, $3, $4, $5, $15, $16, $6, $12, $7, $8, $9, $11, $10}'
	echo
	echo "tps: median over rounds; ratio: to direct (the primary) in the same case; steady: tps after the"
	echo "first ${WARMUP}s of each run (from pgbench's log), median, and its ratio to direct's; us/tx: proxy CPU"
	echo "(user+system) per transaction = CPU-ms per 1000 transactions; cores: proxy CPU-s per wall second;"
	echo "other: most CPU (cores) that processes outside this bench used during any round of the row."
	for peer in "${POOLED_PEERS[@]}"; do
		rows=${POOLED[$peer]}
		[ -n "$rows" ] || continue
		echo
		echo "transaction pooling, pool size $POOL_SIZE: pgrouter-tx (a) against $peer (b)"
		printf '%-17s %8s %8s %6s %8s %8s %8s %8s %6s %6s %5s %5s %8s\n' case tps_a tps_b a/b lat_a lat_b p99_a p99_b us_a us_b ok_a ok_b direct
		printf '%s\n' "$rows" | awk -F'\t' '{printf "%-17s %8s %8s %6s %8s %8s %8s %8s %6s %6s %5s %5s %8s\n", $1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14}'
		printf '%s\n' "$rows" | awk -F'\t' '$15 != "" { printf "  %s: %s\n", $1, $15 }'
	done
} >&2

MD=$OUT/results-$STAMP.md
{
	echo "# pgrouter bench, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	echo "- command: \`$CMDLINE\` (work dir \`bench/out/run-$STAMP\`)"
	echo "- machine: $(nproc) cores, $(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo), kernel $(uname -r), load average at start $LOADAVG_START"
	echo "- 1-min load average read before each pgbench run (it includes this bench's previous run):" \
		"$(awk -F'\t' 'NR > 1 { v = $12 + 0; if (n++ == 0 || v < min) min = v; if (v > max) max = v } END { printf "min %.2f, max %.2f", min, max }' "$RUNS_TSV"),"\
		"load average at end $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "- $PG_VERSION"
	echo "- $("$PGBOUNCER" --version 2>&1 | head -n1) (Debian package)$([ "$HAVE_PGB_SRC" = 1 ] && echo "; $("$PGBOUNCER_SRC" --version 2>&1 | head -n1) (built from Debian's source)"); $("$HAPROXY" -v 2>&1 | head -n1); $(go version)"
	echo "- cluster: primary + 2 streaming hot standbys (pg_basebackup), pgbench scale $SCALE, auth trust, defaults except"
	echo "  listen/port/socket dir, max_connections=500, shared_buffers=128MB (fsync and synchronous_commit on)"
	if [ "$LATLOG" = 1 ]; then
		echo "- pgbench: \`pgbench -T $DURATION -j $JOBS -n --log --log-prefix=... <flags>\` over TCP to 127.0.0.1, PGSSLMODE=disable;"
		echo "  p99 = 99th percentile (nearest rank) of the per-transaction latencies in pgbench's log (every transaction,"
		echo "  failed ones left out), median over the rounds; rounds interleaved"
	else
		echo "- pgbench: \`pgbench -T $DURATION -j $JOBS -n <flags>\` over TCP to 127.0.0.1, PGSSLMODE=disable; rounds interleaved"
	fi
	echo "  (round by round, case by case, target order rotated each round); \`-P 0\` is rejected by pgbench 15, so no -P"
	echo "- targets: direct = the primary; pgrouter-rw/-ro = \`pgrouter proxy\` rw/ro ports (ro ratio is still to the"
	echo "  primary; run with --server-sslmode disable --health-sslmode disable, as the servers have ssl off and"
	echo "  PgBouncer's server_tls_sslmode defaults to disable); pgbouncer = session mode, pool 100, trust, log_connections=0;"
	echo "  pgbouncer-fresh = the same with server_idle_timeout = 1, so each run starts on new backends; haproxy = TCP mode, all 3 servers"
	echo "  listed, tcp-check that logs in and runs \`select pg_is_in_recovery()\` expecting a DataRow 'f' (both"
	echo "  standbys were DOWN); plainrelay = bench/plainrelay (io.Copy both ways); pgrouter-tx = a second \`pgrouter proxy\`"
	echo "  with --pool-mode transaction --pool-size $POOL_SIZE on its rw port, --auth-hba 'host all all 127.0.0.1/32 trust' and"
	echo "  an --auth-file listing the user (servers trust); pgbouncer-tx = PgBouncer, pool_mode transaction,"
	echo "  default_pool_size $POOL_SIZE, max_client_conn 2000, trust; pgbouncer124-tx = the same with PgBouncer $PGB_SRC_VERSION"
	echo "  and max_prepared_statements = 200; pgrouter-session = \`pgrouter proxy\` with --pool-mode session --pool-size 100"
	echo "  (the pool of pgbouncer) and the auth of pgrouter-tx. Cases with 256 clients and \`-N -M prepared\` run on direct"
	echo "  and the -tx targets only."
	if [ -n "$PGROUTER_NOTE" ]; then echo "- $PGROUTER_NOTE"; else echo "- pgrouter built from $PGROUTER_REV"; fi
	[ ${#SERVICE[@]} -gt 0 ] && echo "- every proxy runs in a session of its own (setsid), as a service would: one scheduling group each under autogroup"
	echo
	echo "| case | pgbench flags | target | tps (median) | ratio to direct | steady tps (median) | steady ratio to direct | latency avg ms | p99 ms | proxy CPU µs/tx | proxy cores | ok/runs | tps by round | steady tps by round | other cores (max) | first error |"
	echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|"
	printf '%s\n' "$SUMMARY" | awk -F'\t' '{printf "| %s | `%s` | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $15, $16, $6, $12, $7, $8, $9, $10, $17, $11, $13}'
	[ "$LATLOG" = 1 ] && echo && echo "Steady tps: the transactions pgbench logged as ending after the first ${WARMUP}s of the run (counted from the first one's end to the last one's), per second. Each run opens new connections: a relay gives each client a new backend, which warms its caches during the first seconds, while PgBouncer in session mode hands out backends kept from the previous run."
	for peer in "${POOLED_PEERS[@]}"; do
		rows=${POOLED[$peer]}
		[ -n "$rows" ] || continue
		echo
		echo "## Transaction pooling: pgrouter-tx against $peer (pool size $POOL_SIZE)"
		echo
		echo "| case | pgbench flags | pgrouter-tx tps | $peer tps | ratio | latency avg ms (pgrouter / $peer) | p99 ms (pgrouter / $peer) | proxy CPU µs/tx (pgrouter / $peer) | ok/runs (pgrouter / $peer) | direct tps | p99 ms by round (pgrouter / $peer) | first error |"
		echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
		printf '%s\n' "$rows" | awk -F'\t' '{printf "| %s | `%s` | %s | %s | %s | %s / %s | %s / %s | %s / %s | %s / %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $16, $15}'
		echo
		echo "Ratio: median tps of pgrouter-tx over that of $peer, over the rounds that succeeded with no failed"
		echo "transaction. A run in which pgbench aborted a client (exit status 2) does not count: see the first error."
	done
	echo
	echo "Proxy CPU: utime+stime of the proxy process from /proc/PID/stat around each run, divided by the transactions"
	echo "pgbench processed (µs/tx = CPU-ms per 1000 transactions). Other cores: CPU time of the whole machine"
	echo "(/proc/stat) less that of this bench's processes (servers with their children, proxies, pgbench), per"
	echo "wall second; the largest value over the rounds of the row. Near 0 means the figures were taken on a quiet machine."
	if [ -s "$IDLE_TSV" ]; then
		echo
		echo "## Idle session memory ($IDLE_N sessions opened with bench/idleconns, pgx, no query sent)"
		echo
		echo "| target | VmRSS before kB | VmRSS after kB | sessions | kB per session | note |"
		echo "|---|---:|---:|---:|---:|---|"
		awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6}' "$IDLE_TSV"
		echo
		echo "PgBouncer holds client sessions without a server connection until the first query, so its figure is"
		echo "client-side state only; the relays hold one server connection per session."
	fi
	if [ -s "$TX_IDLE_TSV" ]; then
		echo
		echo "## Pooled targets: $TX_IDLE_N mostly idle clients (bench/idleconns, pgx, simple protocol)"
		echo
		echo "| target | VmRSS before kB | open (no query yet) kB | warm (each ran one query) kB | $TX_ACTIVE active (max) kB | idle again kB | clients | kB/client open | kB/client warm | kB/client with $TX_ACTIVE active | active queries/s | active errors | goroutines before/open/warm/active/idle | warm errors | note |"
		echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"
		awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15}' "$TX_IDLE_TSV"
		echo
		echo "kB/client = (VmRSS in the phase − VmRSS before) / clients open; it includes the pool's server"
		echo "connections (up to $POOL_SIZE) opened by the warm and active phases. Active: $TX_ACTIVE of the clients run"
		echo "pgbench -S's SELECT back to back (simple protocol) for about 6 s; VmRSS is the largest of samples every 0.25 s."
	fi
} >"$MD"
cp "$RUNS_TSV" "$OUT/runs-$STAMP.tsv"
if [ -s "$IDLE_TSV" ]; then
	{
		echo "idle session memory ($IDLE_N sessions):"
		awk -F'\t' '{printf "  %-12s VmRSS %s -> %s kB, %s sessions, %s kB/session %s\n", $1, $2, $3, $4, $5, $6}' "$IDLE_TSV"
	} >&2
fi
if [ -s "$TX_IDLE_TSV" ]; then
	{
		echo "pooled targets, $TX_IDLE_N clients (VmRSS kB before / open / warm / $TX_ACTIVE active / idle; kB per client open / warm / active):"
		awk -F'\t' '{printf "  %-12s %s / %s / %s / %s / %s kB; %s clients; %s / %s / %s kB per client; %s q/s active, %s errors; goroutines %s %s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $15}' "$TX_IDLE_TSV"
	} >&2
	cp "$TX_IDLE_TSV" "$OUT/tx-idle-$STAMP.tsv"
fi
log "results: $MD (raw runs: $OUT/runs-$STAMP.tsv)"
