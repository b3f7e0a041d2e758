# shellcheck shell=bash disable=SC2154,SC2317,SC2015
# (SC2154: the caller sets suite_name, suite_knob, repo and work; SC2317:
# functions defined inside suite_init; SC2015: A && B || C as in pgx-suite.sh.)
# suite-lib.sh holds what the driver-suite scripts (node-pg-suite.sh; the
# same steps are written out inline in pgx-suite.sh) share: a throwaway
# primary and hot standby run as the postgres OS user, free ports on
# 127.0.0.1, pgrouter built from this checkout and started in front of the
# two, and the cleanup of all of it by PID. Source it from bash after
# setting:
#   suite_name  prefix of log lines, e.g. node-pg-suite
#   suite_knob  prefix of the caller's knobs, e.g. NODE_PG_SUITE: the
#               functions read ${suite_knob}_PGROUTER, _REV and _KEEP
#   repo        the pgrouter checkout
#   work        the work directory (made by the caller, mode 755)
# and call suite_init first. Nothing here is run when sourced.

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

# suite_stop_servers stops pgrouter and every server in datadirs, by PID.
# For the caller's EXIT trap.
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

# suite_initdb DIR makes DIR/data with initdb (trust, superuser postgres)
# and a postgresql.conf for a fast throwaway server on 127.0.0.1 with its
# Unix socket in DIR. The caller writes pg_hba.conf.
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
}

# suite_standby PRIMARYDIR PRIMARYPORT DIR VAR clones the primary into
# DIR/data with pg_basebackup, starts it on the port in VAR and waits until
# it streams. pg_hba.conf must allow replication over the Unix socket.
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
		n=$(asdb "$bindir/psql" -X -q -h "$pdir" -p "$pport" -U postgres -d postgres -Atc \
			"SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
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
	asdb "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$1" -p "$2" -U postgres -d postgres -Atc \
		"SELECT format('\"%s\" \"%s\"', replace(rolname, '\"', '\"\"'), rolpassword) FROM pg_authid WHERE rolpassword IS NOT NULL" \
		>"$3"
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
