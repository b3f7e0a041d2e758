# bench/lib.sh: the parts that bench/run.sh and bench/split.sh share, sourced
# by both right after they set ROOT: logging, processes tracked by PID and
# stopped on exit, free loopback ports, polling, a throwaway primary with two
# streaming hot standbys, the CPU counters and the figures of a pgbench run.
# It only defines functions and a few constants; the scripts set the globals
# the functions read (OUT, PGBIN, PSQL, PGBENCH, SCALE, KEEP, KEEP_KNOB,
# TARGETS_FILTER) and define pg_conf DATADIR PORT, their servers' settings.
# shellcheck shell=bash

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1

# ---------------------------------------------------------------- packages --

pidfile_pid() { [ -r "$1" ] && head -n1 "$1" | tr -dc '0-9' || true; }

# alive PID: the process exists and is not a zombie.
alive() {
	local st
	[ -n "$1" ] && [ -r "/proc/$1/stat" ] || return 1
	st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	st=${st##*) }
	[ "${st%% *}" != Z ]
}

# wait_gone PID SECONDS
wait_gone() {
	local i=0
	while alive "$1" && [ "$i" -lt $(($2 * 10)) ]; do sleep 0.1; i=$((i + 1)); done
	! alive "$1"
}

# need_root PKG...: exits with the apt-get command to run unless we are root.
need_root() {
	[ "$IS_ROOT" -eq 1 ] && return 0
	log "missing packages: $*; install them as root with:"
	echo "  sudo apt-get update && sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $*" >&2
	exit 1
}

# apt_install LOGFILE PKG...
apt_install() {
	local logf=$1
	shift
	log "installing $* with apt-get"
	apt-get update -q >"$logf" 2>&1 || die "apt-get update failed, see $logf"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >>"$logf" 2>&1 ||
		die "apt-get install $* failed, see $logf"
}

# ----------------------------------------------------------- process table --

STARTED=() # name:pid:signal, stopped in reverse order on exit

track() { STARTED+=("$1:$2:$3"); }

# process_table DIR: the run's work dir W (logs in LOGS) and the exit trap
# that stops what was tracked and removes the data directories unless KEEP=1
# (the knob's name, for the log, is KEEP_KNOB).
process_table() {
	W=$1
	LOGS=$W/log
	mkdir -p "$LOGS/pgbench"
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

cleanup() {
	local rc=$? i name pid sig
	set +e
	trap - EXIT INT TERM
	for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
		IFS=: read -r name pid sig <<<"${STARTED[$i]}"
		if alive "$pid"; then
			log "stopping $name (pid $pid)"
			kill "-$sig" "$pid" 2>/dev/null
			if ! wait_gone "$pid" 20; then
				log "$name (pid $pid) still running after 20 s; SIGKILL"
				kill -KILL "$pid" 2>/dev/null
				wait_gone "$pid" 5
			fi
		fi
	done
	if [ -n "${HUGE_OLD:-}" ]; then
		echo "$HUGE_OLD" >/proc/sys/vm/nr_hugepages && log "huge pages: back to $HUGE_OLD reserved"
	fi
	if [ "$KEEP" != 1 ] && [ -d "$W/pg" ]; then
		rm -rf "$W/pg"
		log "removed data directories ($KEEP_KNOB=1 keeps them)"
	fi
	[ "$rc" -ne 0 ] && log "failed (exit $rc); logs in $LOGS"
	exit "$rc"
}

# AS_PG runs a command as the postgres OS user when root, else as ourselves.
# Each part execs the next, so `"${AS_PG[@]}" cmd &` leaves cmd's PID in $!.
AS_PG=()
[ "$IS_ROOT" -eq 1 ] && AS_PG=(env HOME=/var/lib/postgresql setpriv --reuid=postgres --regid=postgres --init-groups --)
as_pg() { "${AS_PG[@]}" "$@"; }

# SERVICE starts a proxy in a session of its own, as a service manager
# would. With the kernel's autogroup scheduling (sched_autogroup_enabled,
# on in Debian's kernels) each session is one scheduling group: a proxy
# left in the bench's session shares a single CPU share with pgbench, and
# on this 2-core machine PostgreSQL backends then waited up to 204 ms to
# run (perf sched latency; single transactions took 20-900 ms, none over
# 15 ms in a session of its own). setsid does not fork here (a background
# job of a script leads no process group), so $! is still the proxy's PID.
SERVICE=()
command -v setsid >/dev/null && SERVICE=(setsid)

# free_port VAR: a loopback TCP port that no socket uses now, nor one we chose,
# below the kernel's ephemeral range so that no outgoing connection takes it
# between this check and the bind.
CHOSEN=" "
EPHEMERAL_LOW=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "$EPHEMERAL_LOW" -gt 12000 ] || die "ephemeral ports start at $EPHEMERAL_LOW; no room below it for listeners"
free_port() {
	local p hex
	while :; do
		p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
		case "$CHOSEN" in *" $p "*) continue ;; esac
		hex=$(printf '%04X' "$p")
		if cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '{print $2}' | grep -q ":$hex\$"; then
			continue
		fi
		CHOSEN="$CHOSEN$p "
		printf -v "$1" '%s' "$p"
		return 0
	done
}

export PGSSLMODE=disable PGGSSENCMODE=disable PGCONNECT_TIMEOUT=10 PGUSER=postgres PGDATABASE=postgres
q() { "$PSQL" -X -h 127.0.0.1 -p "$1" -Atqc "$2" 2>>"$LOGS/psql.err"; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll until the command succeeds;
# give up at once when WATCH_PID (if set) has exited.
WATCH_PID=
wait_for() {
	local secs=$1 what=$2 i=0
	shift 2
	until "$@" >/dev/null 2>&1; do
		if [ -n "$WATCH_PID" ] && ! alive "$WATCH_PID"; then
			log "process $WATCH_PID exited while waiting for $what"
			return 1
		fi
		i=$((i + 1))
		[ "$i" -ge $((secs * 5)) ] && { log "timed out after ${secs}s waiting for $what"; return 1; }
		sleep 0.2
	done
}
answers() { [ "$(q "$1" "$2")" = "$3" ]; }

CLK_TCK=$(getconf CLK_TCK)

# The machine is shared with whatever else runs; each run reports how much CPU
# went to processes that are not this bench ("other cores"), so that a figure
# taken beside someone's test suite can be told apart from a quiet one.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; } # user nice system irq softirq steal
# our_ticks: CPU used so far by the processes this script started (PostgreSQL
# servers with their live and reaped children, the proxies) and by the
# children this shell has reaped (pgbench).
our_ticks() {
	local roots=" " e name pid sig
	for e in "${STARTED[@]}"; do
		IFS=: read -r name pid sig <<<"$e"
		roots="$roots$pid "
	done
	{ cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v roots="$roots" -v self=$$ ' # a process may end mid-read
	{
		pid = $1
		rest = substr($0, index($0, ") ") + 2)
		split(rest, f, " ") # f[2] ppid, f[12] utime, f[13] stime, f[14] cutime, f[15] cstime
		if (index(roots, " " pid " ")) t += f[12] + f[13] + f[14] + f[15]
		else if (index(roots, " " f[2] " ")) t += f[12] + f[13]
		if (pid == self) t += f[14] + f[15]
	}
	END { print t + 0 }'
}
now_ms() { date +%s%3N; }

# ----------------------------------------------------------------- cluster --

pg_start() { # NAME DATADIR
	as_pg "$PGBIN/pg_ctl" -D "$2" -l "$LOGS/$1.log" -w -t 120 start >>"$LOGS/pg_ctl.log" 2>&1 ||
		die "$1 did not start, see $LOGS/$1.log"
	local pid
	pid=$(head -n1 "$2/postmaster.pid")
	track "$1" "$pid" INT # SIGINT: fast shutdown
	log "$1 up on 127.0.0.1:$(sed -n 4p "$2/postmaster.pid") (pid $pid)"
}

# start_primary: the data directories under PG=$W/pg, ports P_PRIMARY,
# P_STANDBY1, P_STANDBY2, and the primary (initdb, pg_conf, start) with
# pgbench's tables at scale SCALE.
start_primary() {
	log "work dir $W (load average at start: $LOADAVG_START)"
	PG=$W/pg
	mkdir -p "$PG/sock"
	[ "$IS_ROOT" -eq 1 ] && chown -R postgres: "$PG" "$LOGS"

	free_port P_PRIMARY
	free_port P_STANDBY1
	free_port P_STANDBY2

	log "initdb primary (auth: trust for local and host connections, user postgres)"
	as_pg "$PGBIN/initdb" -D "$PG/primary" -U postgres -A trust -E UTF8 --no-instructions >"$LOGS/initdb.log" 2>&1 ||
		die "initdb failed, see $LOGS/initdb.log"
	pg_conf "$PG/primary" "$P_PRIMARY"
	pg_start primary "$PG/primary"

	log "pgbench -i -s $SCALE"
	"$PGBENCH" -h 127.0.0.1 -p "$P_PRIMARY" -i -s "$SCALE" >"$LOGS/pgbench-init.log" 2>&1 ||
		die "pgbench -i failed, see $LOGS/pgbench-init.log"
}

# start_standbys: two hot standbys of the primary by pg_basebackup, streaming;
# sets PG_VERSION.
start_standbys() {
	local s port_var
	for s in 1 2; do
		port_var=P_STANDBY$s
		log "pg_basebackup standby$s (streaming)"
		as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$P_PRIMARY" -D "$PG/standby$s" -R -X stream -c fast \
			>"$LOGS/basebackup$s.log" 2>&1 || die "pg_basebackup failed, see $LOGS/basebackup$s.log"
		echo "port = ${!port_var}" >>"$PG/standby$s/postgresql.conf"
		pg_start "standby$s" "$PG/standby$s"
		wait_for 60 "standby$s in recovery" answers "${!port_var}" "select pg_is_in_recovery()" t || die "standby$s is not a hot standby"
	done
	wait_for 60 "2 streaming standbys" answers "$P_PRIMARY" \
		"select count(*) from pg_stat_replication where state = 'streaming'" 2 || die "standbys are not streaming"
	PG_VERSION=$(q "$P_PRIMARY" "select version()")
}

# pgrouter_rev: the commit pgrouter is built from, and whether the tree
# outside bench/ has uncommitted changes.
pgrouter_rev() {
	local rev
	rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
	[ -n "$(git -C "$ROOT" status --porcelain -- . ':!bench' 2>/dev/null)" ] && rev="$rev plus uncommitted changes"
	echo "$rev"
}

# ------------------------------------------------------------------ targets --

# filter_targets: keeps the TARGETS (name:port:pid) whose name matches
# TARGETS_FILTER, and direct.
filter_targets() {
	[ -n "$TARGETS_FILTER" ] || return 0
	local kept=() t
	for t in "${TARGETS[@]}"; do
		if [ "${t%%:*}" = direct ] || printf '%s\n' "${t%%:*}" | grep -Eq -- "$TARGETS_FILTER"; then kept+=("$t"); fi
	done
	TARGETS=("${kept[@]}")
}

# ----------------------------------------------------------------- pgbench --

# pgbench_figures RUNLOG PID T0 T1 B0 B1 O0 O1 W0 W1: the figures of one
# pgbench run from its log and the counters read around it (the proxy's ticks
# T, the machine's busy ticks B, ours O, wall ms W). Sets tps lat tx failed
# (empty when the log lacks them), other (cores used outside the bench), cpu
# (proxy µs per transaction) and cores (proxy CPU-s per second), both - with
# no PID; turns status ok into noparse when the log has no tps or count.
pgbench_figures() {
	local runlog=$1 pid=$2 t0=$3 t1=$4 b0=$5 b1=$6 o0=$7 o1=$8 w0=$9 w1=${10}
	other=$(awk -v b=$((b1 - b0)) -v o=$((o1 - o0)) -v hz="$CLK_TCK" -v ms=$((w1 - w0)) \
		'BEGIN { x = (b - o) / hz / (ms / 1000); printf "%.2f", x < 0 ? 0 : x }')
	tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$runlog" | head -n1)
	lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$runlog" | head -n1)
	tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$runlog" | head -n1)
	failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$runlog" | head -n1)
	[ -n "$tps" ] && [ -n "$tx" ] || status=${status/ok/noparse}
	cpu=-
	cores=-
	if [ -n "$pid" ] && [ -n "$tx" ] && [ "${tx:-0}" -gt 0 ]; then
		cpu=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$tx" 'BEGIN{printf "%.1f", d / hz * 1e6 / n}')
		cores=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v ms=$((w1 - w0)) 'BEGIN{printf "%.2f", d / hz / (ms / 1000)}')
	fi
}

# AWK_MEDIAN: an awk function, median(s), of the numbers in the
# space-separated string s ("" when there are none), to put before a program.
# shellcheck disable=SC2016 # awk's own $ and variables
AWK_MEDIAN='
	function median(s,   a, n, i, j, x) {
		n = split(s, a, " ")
		for (i = 2; i <= n; i++) { x = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
		if (n == 0) return ""
		return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}'
