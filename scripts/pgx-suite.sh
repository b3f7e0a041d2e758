#!/usr/bin/env bash
# pgx-suite.sh runs the test suite of the pgx driver (the version in go.mod)
# twice against one throwaway PostgreSQL cluster: once connected to
# PostgreSQL directly and once through pgrouter's read-write port. It
# prints pass/fail/skip counts per package for both runs and every test
# whose outcome differs, with the proxied failure output, and exits 1 when
# the proxied run fails a test (or a package) that the direct run does not.
#
# What it builds, all under one temporary directory:
#   - a primary made by initdb with pgx's testsetup: pg_hba.conf adapted to
#     127.0.0.1 (md5 for pgx_md5, scram-sha-256 for pgx_scram, password for
#     pgx_pw, hostssl for pgx_ssl), TLS with pgx's test certificates, the
#     database pgx_test and postgresql_setup.sql (hstore, ltree, roles, and
#     one more role so that pgtype's aclitem test runs rather than skips);
#   - a hot standby cloned with pg_basebackup, so that pgrouter has a real
#     topology to route in;
#   - pgrouter built from this checkout's working tree (or PGX_SUITE_REV),
#     with --listen-rw, --listen-ro and client TLS on the same localhost
#     certificate the server uses;
#   - a writable copy of the pgx module, where `go test -json -p 1` runs.
# The PostgreSQL servers run as the postgres OS user when started as root.
#
# The two runs get the same PGX_TEST_* variables but for the port (the
# values of pgx's scripts/lib/test_targets.rb):
#   PGX_TEST_DATABASE, _TCP_, _MD5_PASSWORD_   pgx_md5 over TCP
#   PGX_TEST_PLAIN_PASSWORD_CONN_STRING        pgx_pw (cleartext password)
#   PGX_TEST_SCRAM_PASSWORD_CONN_STRING        pgx_scram, channel_binding=disable
#   PGX_TEST_TLS_CONN_STRING                   pgx_ssl, sslmode=verify-full
#   PGX_TEST_UNIX_SOCKET_CONN_STRING           pgx_md5 over a Unix socket: the
#       server's own directory directly, pgrouter's --unix-socket-dir through it
#       (user and password given: pgx's default, the OS user, has no role here)
# Left unset in both runs, so those tests skip in both:
#   PGX_TEST_SCRAM_PLUS_CONN_STRING and PGX_TEST_TLS_CLIENT_CONN_STRING
#       (with PGX_SSL_PASSWORD): channel binding and certificate
#       authentication cannot cross a proxy that terminates TLS. pgrouter
#       strips SCRAM-SHA-256-PLUS on purpose (proxy/backend.go) and has no
#       client certificate for its own link to the server.
#       PGX_SUITE_TLS_END_TO_END=1 sets them anyway, to see those failures;
#   PGX_TEST_PGBOUNCER_, _CRATEDB_, _OAUTH_ and LIBPQ_URI_REGRESS: other
#       servers or tools.
#
# Usage: scripts/pgx-suite.sh [go test flags, e.g. -run TestConnect]
# Knobs (environment):
#   PGX_SUITE_PKGS     packages to test, relative to the pgx module (default ./...)
#   PGX_SUITE_TIMEOUT  go test -timeout per package binary (default 30m)
#   PGX_SUITE_TLS      1 (default) or 0: server and pgrouter TLS, and the TLS tests
#   PGX_SUITE_TLS_END_TO_END  1: also the channel binding and client certificate tests
#   PGX_SUITE_ONLY     direct or proxy: one run only, no comparison
#   PGX_SUITE_POOL_MODE  passthrough (default), session or transaction: the
#                      rw port's --pool-mode. Pooled, pgrouter authenticates
#                      the clients itself (a userlist made from pg_authid,
#                      the rules of the server's pg_hba.conf) and logs in as
#                      them; pgx_pw's server rule becomes scram-sha-256 in
#                      both runs, since a proxy holding a SCRAM secret cannot
#                      answer a cleartext password request
#   PGX_SUITE_OUT      directory to copy the JSON streams, logs and report into
#   PGX_SUITE_KEEP     1: leave the work directory behind (servers stopped)
#   PGX_SUITE_REV      build pgrouter from this commit (git archive, e.g. HEAD)
#                      rather than from the working tree
#   PGX_SUITE_PGROUTER a pgrouter binary to use instead of building one
#   PGR_PG_BINDIR      PostgreSQL server bin directory (see ensure-postgres.sh)
set -euo pipefail

began=$(date +%s)
repo=$(cd "$(dirname "$0")/.." && pwd)
pkgs=${PGX_SUITE_PKGS:-./...}
timeout=${PGX_SUITE_TIMEOUT:-30m}
tls=${PGX_SUITE_TLS:-1}
tlsend=${PGX_SUITE_TLS_END_TO_END:-0}
only=${PGX_SUITE_ONLY:-}
poolmode=${PGX_SUITE_POOL_MODE:-passthrough}
case "$poolmode" in passthrough | session | transaction) ;; *) echo "PGX_SUITE_POOL_MODE: passthrough, session or transaction" >&2; exit 2 ;; esac

log() { printf '%s pgx-suite: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 2; }
# dielog FILE MESSAGE shows the end of FILE and dies.
dielog() { tail -n 40 "$1" >&2 || true; die "$2"; }

# --- locate PostgreSQL, the pgx module and the OS user for the servers.
sh "$repo/scripts/ensure-postgres.sh" || die "PostgreSQL is missing"
bindir=${PGR_PG_BINDIR:-}
if [ -z "$bindir" ]; then
	bindir=$(pg_config --bindir 2>/dev/null || true)
	[ -n "$bindir" ] && [ -x "$bindir/initdb" ] || bindir=/usr/lib/postgresql/15/bin
fi
pgxver=$(cd "$repo" && go list -m -f '{{.Version}}' github.com/jackc/pgx/v5)
pgxsrc=$(cd "$repo" && go list -m -f '{{.Dir}}' github.com/jackc/pgx/v5)
[ -n "$pgxsrc" ] && [ -d "$pgxsrc/testsetup" ] ||
	die "pgx $pgxver is not in the module cache: run 'go mod download github.com/jackc/pgx/v5' in $repo"

if [ "$(id -u)" -eq 0 ]; then
	asdb() { runuser -u postgres -- "$@"; }
else
	asdb() { "$@"; }
fi
pg() { asdb "$bindir/$1" "${@:2}"; }

# --- cleanup: everything started here is stopped by its own PID.
work=$(mktemp -d /tmp/pgx-suite.XXXXXX)
chmod 755 "$work"
pgrouter_pid=
gotest_pid=
datadirs=()
cleanup() {
	rc=$?
	trap - EXIT INT TERM HUP
	if [ -n "$gotest_pid" ] && kill -0 "$gotest_pid" 2>/dev/null; then
		# go test runs in its own process group (setsid): stop the go
		# command and the test binary it is running.
		kill -TERM -- "-$gotest_pid" 2>/dev/null || true
		sleep 1
		kill -KILL -- "-$gotest_pid" 2>/dev/null || true
	fi
	if [ -n "$pgrouter_pid" ] && kill -0 "$pgrouter_pid" 2>/dev/null; then
		kill -TERM "$pgrouter_pid" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$pgrouter_pid" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$pgrouter_pid" 2>/dev/null || true
	fi
	for d in "${datadirs[@]}"; do
		[ -f "$d/postmaster.pid" ] || continue
		pid=$(head -n1 "$d/postmaster.pid")
		pg pg_ctl -D "$d" -m immediate -w -t 30 stop >/dev/null 2>&1 || kill -KILL "$pid" 2>/dev/null || true
	done
	if [ -n "${PGX_SUITE_OUT:-}" ]; then
		mkdir -p "$PGX_SUITE_OUT"
		cp -f "$work"/*.json "$work"/*.log "$work"/*.txt "$PGX_SUITE_OUT"/ 2>/dev/null || true
		cp -f "$work/pg0/postgres.log" "$PGX_SUITE_OUT/postgres-primary.log" 2>/dev/null || true
		cp -f "$work/pg1/postgres.log" "$PGX_SUITE_OUT/postgres-standby.log" 2>/dev/null || true
		log "outputs copied to $PGX_SUITE_OUT"
	fi
	if [ "${PGX_SUITE_KEEP:-0}" = 1 ]; then
		log "work directory kept: $work"
	else
		rm -rf "$work"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# freeport sets port to a TCP port that nothing uses and that this script
# has not handed out yet, below the kernel's ephemeral range (where
# "listen on :0, close, reuse" helpers of other programs pick theirs). Who
# binds it may still lose a race: startpg and the pgrouter start retry.
read -r eph_low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || eph_low=32768
[ "$eph_low" -gt 11024 ] || eph_low=32768
taken=" "
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

# --- PostgreSQL: a primary and a hot standby.
freeport
pgx_port=$port
freeport
standby_port=$port
primary=$work/pg0
standby=$work/pg1
mkdir -p "$primary" "$standby" "$work/certs"
[ "$(id -u)" -eq 0 ] && chown postgres: "$primary" "$standby"
chmod 700 "$primary" "$standby"
health_password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')

for f in ca.pem localhost.crt localhost.key pgx_sslcert.crt pgx_sslcert.key; do
	base64 -d "$pgxsrc/testsetup/certs/$f.b64" >"$work/certs/$f"
done
chmod 644 "$work"/certs/*

log "initdb primary ($bindir, pgx $pgxver)"
pg initdb -D "$primary/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >"$work/initdb.log" 2>&1 ||
	dielog "$work/initdb.log" "initdb failed"
datadirs+=("$primary/data")

# testsetup/pg_hba.conf with the server reached over 127.0.0.1 only, plus
# the postgres role over TCP for pgrouter's health probes and replication
# over the Unix socket for pg_basebackup and the standby.
asdb tee "$primary/data/pg_hba.conf" >/dev/null <<EOF
local     all          all                                trust
local     replication  all                                trust
host      all          postgres     127.0.0.1/32          scram-sha-256
host      all          pgx_md5      127.0.0.1/32          md5
host      all          pgx_scram    127.0.0.1/32          scram-sha-256
host      all          pgx_pw       127.0.0.1/32          $([ "$poolmode" = passthrough ] && echo password || echo scram-sha-256)
hostssl   all          pgx_ssl      127.0.0.1/32          scram-sha-256
hostssl   all          pgx_sslcert  127.0.0.1/32          cert
EOF
asdb tee -a "$primary/data/postgresql.conf" >/dev/null <<EOF

# pgx-suite
listen_addresses = '127.0.0.1'
unix_socket_directories = '$primary'
fsync = off
synchronous_commit = off
full_page_writes = off
hot_standby = on
EOF
if [ "$tls" = 1 ]; then
	for f in localhost.crt:server.crt localhost.key:server.key ca.pem:root.crt; do
		asdb install -m 600 "$work/certs/${f%%:*}" "$primary/data/${f#*:}"
	done
	asdb tee -a "$primary/data/postgresql.conf" >/dev/null <"$pgxsrc/testsetup/postgresql_ssl.conf"
fi
startpg "$primary" pgx_port || dielog "$primary/postgres.log" "primary did not start"
log "primary on 127.0.0.1:$pgx_port"

psql_primary() { asdb "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$primary" -p "$pgx_port" -U postgres "$@"; }
cp "$pgxsrc/testsetup/postgresql_setup.sql" "$work/postgresql_setup.sql"
chmod 644 "$work/postgresql_setup.sql"
psql_primary -d postgres -c "ALTER ROLE postgres PASSWORD '$health_password'" -c "CREATE DATABASE pgx_test" >/dev/null
# postgresql_setup.sql names its tricky role with two backslashes, while
# pgtype's TestTextCodecACLItemRoleWithSpecialCharacters looks for one and
# skips without it: create that one too, so the aclitem test runs.
cat >>"$work/postgresql_setup.sql" <<'EOF'

-- pgx-suite: the role TestTextCodecACLItemRoleWithSpecialCharacters looks for.
select format('create user %I superuser password %L', $$ tricky, ' } " \ test user $$, 'secret')
where not exists (select from pg_roles where rolname = $$ tricky, ' } " \ test user $$) \gexec
EOF
(cd "$work" && psql_primary -d pgx_test -f "$work/postgresql_setup.sql") >"$work/setup.log" 2>&1 ||
	dielog "$work/setup.log" "postgresql_setup.sql failed"

log "pg_basebackup standby"
pg pg_basebackup -D "$standby/data" -h "$primary" -p "$pgx_port" -U postgres -R -X stream -c fast --no-sync \
	>"$work/basebackup.log" 2>&1 || dielog "$work/basebackup.log" "pg_basebackup failed"
datadirs+=("$standby/data")
echo "unix_socket_directories = '$standby'" | asdb tee -a "$standby/data/postgresql.conf" >/dev/null
startpg "$standby" standby_port || dielog "$standby/postgres.log" "standby did not start"
log "standby on 127.0.0.1:$standby_port"
for i in $(seq 300); do
	n=$(psql_primary -d postgres -Atc "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
	[ "$n" = 1 ] && break
	[ "$i" = 300 ] && die "standby does not stream"
	sleep 0.1
done

# --- pgrouter in front of both.
pgrouter=$work/pgrouter
if [ -n "${PGX_SUITE_PGROUTER:-}" ]; then
	pgrouter=$PGX_SUITE_PGROUTER
	built="binary $pgrouter"
elif [ -n "${PGX_SUITE_REV:-}" ]; then
	rev=$(git -C "$repo" rev-parse --short "$PGX_SUITE_REV^{commit}") || die "no commit $PGX_SUITE_REV"
	built="commit $rev"
	log "building pgrouter at $built"
	mkdir "$work/src"
	git -C "$repo" archive --format=tar "$rev" | tar -x -C "$work/src"
	(cd "$work/src" && go build -o "$pgrouter" ./cmd/pgrouter) || die "go build at $rev failed"
else
	built="working tree of $repo (HEAD $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?'))"
	log "building pgrouter from the $built"
	(cd "$repo" && go build -o "$pgrouter" ./cmd/pgrouter) ||
		die "go build failed; PGX_SUITE_REV=HEAD builds the last commit instead"
fi
mkdir -p "$work/sock"
tlsflags=()
[ "$tls" = 1 ] && tlsflags=(--tls-cert "$work/certs/localhost.crt" --tls-key "$work/certs/localhost.key")
poolflags=()
if [ "$poolmode" != passthrough ]; then
	# The server's rules, at the proxy. pgx_sslcert (a client certificate)
	# cannot log in through a proxy that terminates TLS, as in passthrough.
	psql_primary -d postgres -Atc "SELECT format('\"%s\" \"%s\"', replace(rolname, '\"', '\"\"'), rolpassword) FROM pg_authid WHERE rolpassword IS NOT NULL" \
		>"$work/userlist.txt"
	poolflags=(--pool-mode "$poolmode" --auth-file "$work/userlist.txt"
		--auth-hba "local all pgx_md5 md5"
		--auth-hba "local all all scram-sha-256"
		--auth-hba "host all pgx_md5 127.0.0.1/32 md5"
		--auth-hba "host all all 127.0.0.1/32 scram-sha-256")
fi
for try in 1 2 3 4 5; do
	freeport
	rw_port=$port
	freeport
	ro_port=$port
	freeport
	admin_port=$port
	log "pgrouter rw 127.0.0.1:$rw_port ro 127.0.0.1:$ro_port admin 127.0.0.1:$admin_port"
	PGROUTER_HEALTH_PASSWORD=$health_password setsid "$pgrouter" proxy \
		--backends "127.0.0.1:$pgx_port,127.0.0.1:$standby_port" \
		--listen-rw "127.0.0.1:$rw_port" --listen-ro "127.0.0.1:$ro_port" \
		--admin-listen "127.0.0.1:$admin_port" --unix-socket-dir "$work/sock" \
		--health-user postgres --health-database postgres \
		"${tlsflags[@]}" "${poolflags[@]}" >"$work/pgrouter.log" 2>&1 </dev/null &
	pgrouter_pid=$!
	ready=0
	for i in $(seq 300); do
		kill -0 "$pgrouter_pid" 2>/dev/null || break
		[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin_port/readyz")" = 200 ] && { ready=1; break; }
		sleep 0.1
	done
	[ "$ready" = 1 ] && break
	kill -0 "$pgrouter_pid" 2>/dev/null && dielog "$work/pgrouter.log" "pgrouter not ready after 30s"
	wait "$pgrouter_pid" || true
	pgrouter_pid=
	[ "$try" -lt 5 ] && grep -q 'address already in use' "$work/pgrouter.log" ||
		dielog "$work/pgrouter.log" "pgrouter exited"
	log "a pgrouter port was taken, retrying"
done

# --- a writable copy of the pgx module.
log "copying pgx $pgxver from $pgxsrc"
cp -R "$pgxsrc" "$work/pgx"
chmod -R u+w "$work/pgx"

# runsuite NAME PORT SOCKDIR runs the suite against 127.0.0.1:PORT (and
# SOCKDIR/.s.PGSQL.PORT) and writes the go test -json stream to
# $work/NAME.json.
runsuite() {
	local name=$1 port=$2 sockdir=$3 t0 rc
	shift 3
	local base="host=127.0.0.1 port=$port dbname=pgx_test"
	local tlsbase="host=localhost port=$port dbname=pgx_test user=pgx_ssl password=secret sslmode=verify-full sslrootcert=$work/certs/ca.pem"
	log "run $name: go test -p 1 -timeout $timeout $pkgs $* (against 127.0.0.1:$port)"
	t0=$(date +%s)
	(
		cd "$work/pgx"
		# shellcheck disable=SC2046
		unset $(compgen -e | grep '^PGX_' || true)
		export PGX_TEST_DATABASE="$base user=pgx_md5 password=secret"
		export PGX_TEST_TCP_CONN_STRING="$base user=pgx_md5 password=secret"
		export PGX_TEST_MD5_PASSWORD_CONN_STRING="$base user=pgx_md5 password=secret"
		export PGX_TEST_PLAIN_PASSWORD_CONN_STRING="$base user=pgx_pw password=secret"
		export PGX_TEST_SCRAM_PASSWORD_CONN_STRING="$base user=pgx_scram password=secret channel_binding=disable"
		export PGX_TEST_UNIX_SOCKET_CONN_STRING="host=$sockdir port=$port dbname=pgx_test user=pgx_md5 password=secret"
		if [ "$tls" = 1 ]; then
			export PGX_TEST_TLS_CONN_STRING="$tlsbase channel_binding=disable"
		fi
		if [ "$tls" = 1 ] && [ "$tlsend" = 1 ]; then
			export PGX_TEST_SCRAM_PLUS_CONN_STRING="$tlsbase channel_binding=require"
			export PGX_TEST_TLS_CLIENT_CONN_STRING="host=localhost port=$port dbname=pgx_test user=pgx_sslcert sslmode=verify-full sslrootcert=$work/certs/ca.pem sslcert=$work/certs/pgx_sslcert.crt sslkey=$work/certs/pgx_sslcert.key"
			export PGX_SSL_PASSWORD=certpw
		fi
		env | grep '^PGX_' | sort >"$work/$name-env.txt"
		exec setsid go test -count=1 -json -p 1 -timeout "$timeout" "$@" $pkgs
	) >"$work/$name.json" 2>"$work/$name-stderr.log" &
	gotest_pid=$!
	rc=0
	wait "$gotest_pid" || rc=$?
	gotest_pid=
	echo "$(($(date +%s) - t0))" >"$work/$name-seconds.txt"
	log "run $name: go test exit $rc after $(cat "$work/$name-seconds.txt")s"
}

case "$only" in
"" | direct) runsuite direct "$pgx_port" "$primary" "$@" ;;
esac
case "$only" in
"" | proxy)
	runsuite proxy "$rw_port" "$work/sock" "$@"
	# Proof that the proxied run went through pgrouter: its counters.
	kill -0 "$pgrouter_pid" 2>/dev/null || die "pgrouter died during the proxied run (see pgrouter.log)"
	curl -s "http://127.0.0.1:$admin_port/metrics" >"$work/pgrouter-metrics.txt" || true
	grep -E '^pgrouter_(client_connections_total|routing_decisions_total|sessions_refused_total|sessions_terminated_total|cancel_requests_total)' \
		"$work/pgrouter-metrics.txt" >"$work/pgrouter-counters.txt" || true
	accepted=$(awk '/^pgrouter_client_connections_total\{.*listener="rw"/ { n += $NF } END { printf "%d", n }' "$work/pgrouter-metrics.txt")
	[ "$accepted" -gt 0 ] || die "pgrouter accepted no client connection on its rw port: the proxied run did not use it"
	;;
esac

# --- compare.
mkdir -p "$work/report"
cat >"$work/report/main.go" <<'EOF'
// Command report reads go test -json streams and compares them.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
)

// randomDigits matches the random part of names like t.TempDir()'s, which
// some subtest names embed, so that both runs name them alike.
var randomDigits = regexp.MustCompile(`[0-9]{7,}`)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

type run struct {
	name     string
	outcome  map[string]string   // "pkg\x00test" -> pass, fail, skip, incomplete
	output   map[string][]string // same key, output lines
	pkgState map[string]string   // package -> pass, fail, skip (no tests), incomplete
	pkgOut   map[string][]string
}

func key(pkg, test string) string { return pkg + "\x00" + test }

func load(name, path string) *run {
	r := &run{name: name, outcome: map[string]string{}, output: map[string][]string{}, pkgState: map[string]string{}, pkgOut: map[string][]string{}}
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.Package == "" {
			continue
		}
		if e.Test == "" {
			switch e.Action {
			case "start":
				r.pkgState[e.Package] = "incomplete"
			case "pass", "fail", "skip":
				r.pkgState[e.Package] = e.Action
			case "output", "build-output":
				r.pkgOut[e.Package] = append(r.pkgOut[e.Package], e.Output)
			}
			continue
		}
		k := key(e.Package, randomDigits.ReplaceAllString(e.Test, "N"))
		switch e.Action {
		case "run":
			r.outcome[k] = "incomplete"
		case "pass", "fail", "skip":
			r.outcome[k] = e.Action
		case "output":
			r.output[k] = append(r.output[k], e.Output)
		}
	}
	return r
}

type counts struct{ pass, fail, skip int }

func (r *run) counts(pkg string, topOnly bool) counts {
	var c counts
	for k, o := range r.outcome {
		p, t, _ := strings.Cut(k, "\x00")
		if p != pkg || (topOnly && strings.Contains(t, "/")) {
			continue
		}
		switch o {
		case "pass":
			c.pass++
		case "skip":
			c.skip++
		default:
			c.fail++
		}
	}
	return c
}

func failed(o string) bool { return o == "fail" || o == "incomplete" }

func tail(lines []string, n int) string {
	var keep []string
	for _, l := range lines {
		if strings.HasPrefix(l, "=== ") {
			continue
		}
		keep = append(keep, l)
	}
	if len(keep) > n {
		keep = append([]string{fmt.Sprintf("    [... %d lines cut ...]\n", len(keep)-n)}, keep[len(keep)-n:]...)
	}
	return strings.Join(keep, "")
}

func short(pkg string) string {
	s := strings.TrimPrefix(pkg, "github.com/jackc/pgx/v5")
	if s == "" {
		return "pgx"
	}
	return strings.TrimPrefix(s, "/")
}

func main() {
	var runs []*run
	for _, arg := range os.Args[1:] {
		name, path, _ := strings.Cut(arg, "=")
		if r := load(name, path); r != nil {
			runs = append(runs, r)
		}
	}
	pkgSet := map[string]bool{}
	for _, r := range runs {
		for p := range r.pkgState {
			pkgSet[p] = true
		}
	}
	// Packages without tests (examples, helpers) are left out.
	var pkgs []string
	for p := range pkgSet {
		keep := false
		for _, r := range runs {
			c := r.counts(p, false)
			if c.pass+c.fail+c.skip > 0 || (r.pkgState[p] != "" && r.pkgState[p] != "skip") {
				keep = true
			}
		}
		if keep {
			pkgs = append(pkgs, p)
		}
	}
	sort.Strings(pkgs)

	for _, topOnly := range []bool{false, true} {
		if topOnly {
			fmt.Println("\nTop-level tests only (no subtests):")
		} else {
			fmt.Println("Tests and subtests, per package:")
		}
		fmt.Printf("%-26s", "package")
		for _, r := range runs {
			fmt.Printf(" | %-6s %5s %5s %5s %-4s", r.name, "pass", "fail", "skip", "pkg")
		}
		fmt.Println()
		tot := make([]counts, len(runs))
		for _, p := range pkgs {
			fmt.Printf("%-26s", short(p))
			for i, r := range runs {
				c := r.counts(p, topOnly)
				tot[i].pass += c.pass
				tot[i].fail += c.fail
				tot[i].skip += c.skip
				st := map[string]string{"pass": "ok", "fail": "FAIL", "skip": "-", "incomplete": "INC", "": "n/a"}[r.pkgState[p]]
				fmt.Printf(" | %-6s %5d %5d %5d %-4s", "", c.pass, c.fail, c.skip, st)
			}
			fmt.Println()
		}
		fmt.Printf("%-26s", "TOTAL")
		for i := range runs {
			fmt.Printf(" | %-6s %5d %5d %5d %-4s", "", tot[i].pass, tot[i].fail, tot[i].skip, "")
		}
		fmt.Println()
	}

	// Failures of a single run are listed (with output) when there is no
	// second run to compare with; otherwise only the differences.
	regressions := 0
	if len(runs) == 1 {
		r := runs[0]
		var ks []string
		for k, o := range r.outcome {
			if failed(o) {
				ks = append(ks, k)
			}
		}
		sort.Strings(ks)
		fmt.Printf("\n%d failing tests in run %s\n", len(ks), r.name)
		for _, k := range ks {
			p, t, _ := strings.Cut(k, "\x00")
			fmt.Printf("\n--- %s %s: %s\n%s", short(p), t, r.outcome[k], tail(r.output[k], 60))
		}
		return
	}
	a, b := runs[0], runs[1]
	keys := map[string]bool{}
	for k := range a.outcome {
		keys[k] = true
	}
	for k := range b.outcome {
		keys[k] = true
	}
	var diff []string
	for k := range keys {
		if a.outcome[k] != b.outcome[k] {
			diff = append(diff, k)
		}
	}
	sort.Strings(diff)
	none := func(s string) string {
		if s == "" {
			return "not run"
		}
		return s
	}
	fmt.Printf("\n%d tests differ between %s and %s:\n", len(diff), a.name, b.name)
	for _, k := range diff {
		p, t, _ := strings.Cut(k, "\x00")
		mark := ""
		if failed(b.outcome[k]) && !failed(a.outcome[k]) {
			mark = "  <-- regression"
			regressions++
		}
		fmt.Printf("  %-12s %-40s %s=%s %s=%s%s\n", short(p), t, a.name, none(a.outcome[k]), b.name, none(b.outcome[k]), mark)
	}
	for _, p := range pkgs {
		if failed(b.pkgState[p]) && !failed(a.pkgState[p]) {
			fmt.Printf("  %-12s package %s=%s %s=%s  <-- regression\n", short(p), a.name, none(a.pkgState[p]), b.name, none(b.pkgState[p]))
			regressions++
		}
	}
	for _, k := range diff {
		p, t, _ := strings.Cut(k, "\x00")
		for _, r := range []*run{b, a} {
			if failed(r.outcome[k]) || r.outcome[k] == "skip" {
				fmt.Printf("\n--- %s %s (%s run: %s)\n%s", short(p), t, r.name, r.outcome[k], tail(r.output[k], 60))
			}
		}
	}
	for _, p := range pkgs {
		if failed(b.pkgState[p]) && !failed(a.pkgState[p]) {
			fmt.Printf("\n--- package %s (%s run: %s), package-level output:\n%s", short(p), b.name, b.pkgState[p], tail(b.pkgOut[p], 60))
		}
	}
	if regressions > 0 {
		fmt.Printf("\n%d regressions: %s fails where %s does not\n", regressions, b.name, a.name)
		os.Exit(1)
	}
	fmt.Printf("\nno regressions: %s fails nothing that %s passes\n", b.name, a.name)
}
EOF
args=()
for name in direct proxy; do
	[ -f "$work/$name.json" ] && args+=("$name=$work/$name.json")
done
rc=0
(cd "$work/report" && GOFLAGS= GO111MODULE=off go run main.go "${args[@]}") >"$work/report.txt" || rc=$?
cat "$work/report.txt"
if [ -s "$work/pgrouter-counters.txt" ]; then
	echo
	echo "pgrouter counters after the proxied run:"
	sed 's/^/  /' "$work/pgrouter-counters.txt"
fi
for name in direct proxy; do
	[ -f "$work/$name-seconds.txt" ] && echo "run $name: $(cat "$work/$name-seconds.txt")s"
done
echo "pgrouter ($poolmode) from the $built; pgx $pgxver; PostgreSQL $(pg postgres --version | awk '{print $3}'); total $(($(date +%s) - began))s"
[ "$rc" -le 1 ] || die "report failed"
exit "$rc"
