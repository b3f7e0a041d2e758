# shellcheck shell=bash disable=SC2154,SC2317,SC2015
# (SC2154: the caller sets suite_name, suite_knob, repo and poolmode; SC2317:
# functions defined inside suite_init or run by a trap; SC2015: A && B || C
# where C is meant to run when either fails.)
# suite-lib.sh holds what the driver-suite scripts (pgx-suite.sh,
# node-pg-suite.sh) share: a throwaway primary and hot standby run as the
# postgres OS user, free ports on 127.0.0.1, pgrouter built from this
# checkout and started in front of the two, the work directory and the
# cleanup of all of it by PID, and the end of the summary. Source it from
# bash after setting:
#   suite_name  prefix of log lines and of the work directory, e.g. node-pg-suite
#   suite_knob  prefix of the caller's knobs, e.g. NODE_PG_SUITE: the
#               functions read ${suite_knob}_PGROUTER, _REV, _OUT and _KEEP
#   repo        the pgrouter checkout
#   poolmode    passthrough, session or transaction (for suite_pool_flags)
# then call suite_init, and suite_workdir before anything that needs work
# (the work directory). Nothing here is run when sourced.
#
# The caller runs its suite once per run name, direct and proxy, and
# leaves in $work: NAME-seconds.txt (how long the run took), report.txt
# (its comparison of the runs) and whatever else the outputs should hold
# as *.json, *.log and *.txt, or in a directory NAME/. While a run's
# process is going, its PID is in runner_pid, and it leads its own process
# group (setsid, timeout(1)), so that the cleanup stops all of it.

log() { printf '%s %s: %s\n' "$(date +%H:%M:%S)" "$suite_name" "$*" >&2; }
die() { log "$*"; exit 2; }
# dielog FILE MESSAGE shows the end of FILE and dies.
dielog() { tail -n 40 "$1" >&2 || true; die "$2"; }

# suite_knobval SUFFIX prints ${suite_knob}_SUFFIX (empty when unset).
suite_knobval() { local v="${suite_knob}_$1"; printf '%s' "${!v:-}"; }

# suite_init locates the PostgreSQL server programs (bindir) and defines
# asdb (run as the postgres OS user when root) and pg (a server program).
suite_init() {
	sh "$repo/scripts/ensure-postgres.sh" || die "PostgreSQL is missing"
	bindir=${PGR_PG_BINDIR:-}
	if [ -z "$bindir" ]; then
		bindir=$(pg_config --bindir 2>/dev/null || true)
		[ -n "$bindir" ] && [ -x "$bindir/initdb" ] || bindir=/usr/lib/postgresql/15/bin
	fi
	if [ "$(id -u)" -eq 0 ]; then
		asdb() { runuser -u postgres -- "$@"; }
	else
		asdb() { "$@"; }
	fi
	pgrouter_pid=
	datadirs=()
	taken=" "
	read -r eph_low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || eph_low=32768
	[ "$eph_low" -gt 11024 ] || eph_low=32768
}
pg() { asdb "$bindir/$1" "${@:2}"; }

# suite_psql DIR PORT [PSQL ARGS...] runs psql as postgres on the Unix
# socket in DIR of the server on PORT, stopping at the first error.
suite_psql() { asdb "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$1" -p "$2" -U postgres "${@:3}"; }

# suite_workdir makes the work directory, /tmp/$suite_name.XXXXXX (mode
# 755, for the postgres OS user), in work and sets suite_cleanup as the
# EXIT trap: from here on every exit stops what the script started.
suite_workdir() {
	work=$(mktemp -d "/tmp/$suite_name.XXXXXX")
	chmod 755 "$work"
	runner_pid=
	trap suite_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM HUP
}

# suite_cleanup, the EXIT trap: everything started here is stopped by its
# own PID. The outputs go to ${suite_knob}_OUT when set: the work
# directory's *.json, *.log and *.txt, the run directories direct/ and
# proxy/ where there are any, and the servers' logs. The work directory is
# removed unless ${suite_knob}_KEEP is 1. It exits with the script's status.
suite_cleanup() {
	rc=$?
	trap - EXIT INT TERM HUP
	if [ -n "${runner_pid:-}" ] && kill -0 "$runner_pid" 2>/dev/null; then
		# The runner leads its own process group: stop it and what it runs.
		kill -TERM -- "-$runner_pid" 2>/dev/null || true
		sleep 1
		kill -KILL -- "-$runner_pid" 2>/dev/null || true
	fi
	suite_stop_servers
	local out name
	out=$(suite_knobval OUT)
	if [ -n "$out" ]; then
		mkdir -p "$out"
		cp -f "$work"/*.json "$work"/*.log "$work"/*.txt "$out"/ 2>/dev/null || true
		for name in direct proxy; do
			[ -d "$work/$name" ] && rm -rf "${out:?}/$name" && cp -R "$work/$name" "$out/$name"
		done
		cp -f "$work/pg0/postgres.log" "$out/postgres-primary.log" 2>/dev/null || true
		cp -f "$work/pg1/postgres.log" "$out/postgres-standby.log" 2>/dev/null || true
		log "outputs copied to $out"
	fi
	if [ "$(suite_knobval KEEP)" = 1 ]; then
		log "work directory kept: $work"
	else
		rm -rf "$work"
	fi
	exit "$rc"
}

# suite_stop_servers stops pgrouter and every server in datadirs, by PID
# (for suite_cleanup).
suite_stop_servers() {
	if [ -n "${pgrouter_pid:-}" ] && kill -0 "$pgrouter_pid" 2>/dev/null; then
		kill -TERM "$pgrouter_pid" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$pgrouter_pid" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$pgrouter_pid" 2>/dev/null || true
	fi
	local d pid
	for d in "${datadirs[@]}"; do
		[ -f "$d/postmaster.pid" ] || continue
		pid=$(head -n1 "$d/postmaster.pid")
		pg pg_ctl -D "$d" -m immediate -w -t 30 stop >/dev/null 2>&1 || kill -KILL "$pid" 2>/dev/null || true
	done
}

# freeport sets port to a TCP port that nothing uses and that this script
# has not handed out yet, below the kernel's ephemeral range (where
# "listen on :0, close, reuse" helpers of other programs pick theirs). Who
# binds it may still lose a race: startpg and suite_start_pgrouter retry.
port=
freeport() {
	while :; do
		port=$((eph_low - 10000 + RANDOM % 10000))
		case "$taken" in *" $port "*) continue ;; esac
		ss -Htan "( sport = :$port )" 2>/dev/null | grep -q . && continue
		taken="$taken$port "
		return
	done
}

# startpg DIR VAR starts the server of DIR/data on the port held in the
# variable VAR, moving to a new port (and updating VAR) if it is taken.
startpg() {
	local dir=$1 var=$2 try
	for try in 1 2 3 4 5; do
		echo "port = ${!var}" | asdb tee -a "$dir/data/postgresql.conf" >/dev/null
		pg pg_ctl -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null 2>&1 && return 0
		[ "$try" -lt 5 ] && grep -q 'could not bind' "$dir/postgres.log" 2>/dev/null || return 1
		log "port ${!var} taken, retrying"
		freeport
		printf -v "$var" '%s' "$port"
	done
}

# suite_layout sets where the two servers live, primary ($work/pg0) and
# standby ($work/pg1), and a free port for each, primary_port and
# standby_port (startpg moves them on if taken).
# shellcheck disable=SC2034 # for the caller
suite_layout() {
	primary=$work/pg0
	standby=$work/pg1
	freeport
	primary_port=$port
	freeport
	standby_port=$port
}

# suite_initdb DIR makes DIR/data with initdb (trust, superuser postgres),
# a postgresql.conf for a fast throwaway server on 127.0.0.1 with its Unix
# socket in DIR, and a pg_hba.conf that trusts the Unix socket (psql as
# postgres, pg_basebackup and the standby's replication). The caller
# appends its rules for 127.0.0.1 to pg_hba.conf.
suite_initdb() {
	local dir=$1
	mkdir -p "$dir"
	[ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
	chmod 700 "$dir"
	pg initdb -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >"$work/initdb.log" 2>&1 ||
		dielog "$work/initdb.log" "initdb failed"
	datadirs+=("$dir/data")
	asdb tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF

# $suite_name
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
hot_standby = on
EOF
	asdb tee "$dir/data/pg_hba.conf" >/dev/null <<EOF
local     all          all                                trust
local     replication  all                                trust
EOF
}

# suite_standby PRIMARYDIR PRIMARYPORT DIR VAR clones the primary into
# DIR/data with pg_basebackup, starts it on the port in VAR and waits until
# it streams.
suite_standby() {
	local pdir=$1 pport=$2 dir=$3 var=$4 i n
	mkdir -p "$dir"
	[ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
	chmod 700 "$dir"
	log "pg_basebackup standby"
	pg pg_basebackup -D "$dir/data" -h "$pdir" -p "$pport" -U postgres -R -X stream -c fast --no-sync \
		>"$work/basebackup.log" 2>&1 || dielog "$work/basebackup.log" "pg_basebackup failed"
	datadirs+=("$dir/data")
	echo "unix_socket_directories = '$dir'" | asdb tee -a "$dir/data/postgresql.conf" >/dev/null
	startpg "$dir" "$var" || dielog "$dir/postgres.log" "standby did not start"
	log "standby on 127.0.0.1:${!var}"
	for i in $(seq 300); do
		n=$(suite_psql "$pdir" "$pport" -d postgres -Atc "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
		[ "$n" = 1 ] && return 0
		[ "$i" = 300 ] && die "standby does not stream"
		sleep 0.1
	done
}

# suite_build_pgrouter sets pgrouter (the binary) and built (where it came
# from): ${suite_knob}_PGROUTER, else a build of ${suite_knob}_REV, else a
# build of the working tree.
suite_build_pgrouter() {
	local bin rev
	pgrouter=$work/pgrouter
	bin=$(suite_knobval PGROUTER)
	rev=$(suite_knobval REV)
	if [ -n "$bin" ]; then
		pgrouter=$bin
		built="binary $pgrouter"
	elif [ -n "$rev" ]; then
		rev=$(git -C "$repo" rev-parse --short "$rev^{commit}") || die "no commit $rev"
		built="commit $rev"
		log "building pgrouter at $built"
		mkdir "$work/src"
		git -C "$repo" archive --format=tar "$rev" | tar -x -C "$work/src"
		(cd "$work/src" && go build -o "$pgrouter" ./cmd/pgrouter) || die "go build at $rev failed"
	else
		built="working tree of $repo (HEAD $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?'))"
		log "building pgrouter from the $built"
		(cd "$repo" && go build -o "$pgrouter" ./cmd/pgrouter) ||
			die "go build failed; ${suite_knob}_REV=HEAD builds the last commit instead"
	fi
}

# suite_userlist PRIMARYDIR PRIMARYPORT FILE writes a PgBouncer userlist
# (for --auth-file) of every role with a password, from pg_authid.
suite_userlist() {
	suite_psql "$1" "$2" -d postgres -Atc \
		"SELECT format('\"%s\" \"%s\"', replace(rolname, '\"', '\"\"'), rolpassword) FROM pg_authid WHERE rolpassword IS NOT NULL" \
		>"$3"
}

# suite_pool_flags PRIMARYDIR PRIMARYPORT [HBA...] sets poolflags, the
# flags of suite_start_pgrouter for the caller's poolmode: none for
# passthrough; otherwise --pool-mode, a userlist from the primary
# ($work/userlist.txt, see suite_userlist) as --auth-file, and one
# --auth-hba per HBA rule.
suite_pool_flags() {
	local pdir=$1 pport=$2 rule
	shift 2
	poolflags=()
	[ "$poolmode" != passthrough ] || return 0
	suite_userlist "$pdir" "$pport" "$work/userlist.txt"
	poolflags=(--pool-mode "$poolmode" --auth-file "$work/userlist.txt")
	for rule in "$@"; do poolflags+=(--auth-hba "$rule"); done
}

# suite_start_pgrouter HEALTHPASSWORD BACKENDS [FLAG...] starts pgrouter
# proxy in front of BACKENDS (host:port,host:port) with the health user
# postgres, a rw, a ro and an admin port (rw_port, ro_port, admin_port)
# and a Unix socket directory $work/sock, and waits for /readyz. Its log is
# $work/pgrouter.log.
suite_start_pgrouter() {
	local hpw=$1 backends=$2 try i ready
	shift 2
	mkdir -p "$work/sock"
	for try in 1 2 3 4 5; do
		freeport
		rw_port=$port
		freeport
		ro_port=$port
		freeport
		admin_port=$port
		log "pgrouter rw 127.0.0.1:$rw_port ro 127.0.0.1:$ro_port admin 127.0.0.1:$admin_port"
		PGROUTER_HEALTH_PASSWORD=$hpw setsid "$pgrouter" proxy \
			--backends "$backends" \
			--listen-rw "127.0.0.1:$rw_port" --listen-ro "127.0.0.1:$ro_port" \
			--admin-listen "127.0.0.1:$admin_port" --unix-socket-dir "$work/sock" \
			--health-user postgres --health-database postgres \
			"$@" >"$work/pgrouter.log" 2>&1 </dev/null &
		pgrouter_pid=$!
		ready=0
		for i in $(seq 300); do
			kill -0 "$pgrouter_pid" 2>/dev/null || break
			[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin_port/readyz")" = 200 ] && { ready=1; break; }
			sleep 0.1
		done
		[ "$ready" = 1 ] && return 0
		kill -0 "$pgrouter_pid" 2>/dev/null && dielog "$work/pgrouter.log" "pgrouter not ready after 30s"
		wait "$pgrouter_pid" || true
		pgrouter_pid=
		[ "$try" -lt 5 ] && grep -q 'address already in use' "$work/pgrouter.log" ||
			dielog "$work/pgrouter.log" "pgrouter exited"
		log "a pgrouter port was taken, retrying"
	done
}

# suite_pgrouter_counters checks that pgrouter is alive and accepted
# clients on its rw port, and writes its main counters to
# $work/pgrouter-counters.txt (the whole scrape to pgrouter-metrics.txt).
suite_pgrouter_counters() {
	local accepted
	kill -0 "$pgrouter_pid" 2>/dev/null || die "pgrouter died during the proxied run (see pgrouter.log)"
	curl -s "http://127.0.0.1:$admin_port/metrics" >"$work/pgrouter-metrics.txt" || true
	grep -E '^pgrouter_(client_connections_total|routing_decisions_total|sessions_refused_total|sessions_terminated_total|cancel_requests_total)' \
		"$work/pgrouter-metrics.txt" >"$work/pgrouter-counters.txt" || true
	accepted=$(awk '/^pgrouter_client_connections_total\{.*listener="rw"/ { n += $NF } END { printf "%d", n }' "$work/pgrouter-metrics.txt")
	[ "$accepted" -gt 0 ] || die "pgrouter accepted no client connection on its rw port: the proxied run did not use it"
}

# suite_run_args SUFFIX sets args to NAME=$work/NAMESUFFIX for each run,
# direct and proxy, that left $work/NAMESUFFIX: the arguments of the
# caller's report.
suite_run_args() {
	local name
	args=()
	for name in direct proxy; do
		[ -e "$work/$name$1" ] && args+=("$name=$work/$name$1")
	done
	return 0
}

# suite_finish RC LINE prints the caller's report ($work/report.txt),
# pgrouter's counters after the proxied run, how long each run took and
# LINE, and exits with RC, the report's exit status: 0, 1 for regressions,
# and above that the report failed.
suite_finish() {
	local name
	cat "$work/report.txt"
	if [ -s "$work/pgrouter-counters.txt" ]; then
		echo
		echo "pgrouter counters after the proxied run:"
		sed 's/^/  /' "$work/pgrouter-counters.txt"
	fi
	for name in direct proxy; do
		[ -f "$work/$name-seconds.txt" ] && echo "run $name: $(cat "$work/$name-seconds.txt")s"
	done
	echo "$2"
	[ "$1" -le 1 ] || die "report failed"
	exit "$1"
}
