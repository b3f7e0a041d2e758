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

suite_name=pgx-suite
suite_knob=PGX_SUITE
# shellcheck source=scripts/suite-lib.sh
. "$repo/scripts/suite-lib.sh"

# --- locate PostgreSQL, the pgx module and the OS user for the servers.
suite_init
pgxver=$(cd "$repo" && go list -m -f '{{.Version}}' github.com/jackc/pgx/v5)
pgxsrc=$(cd "$repo" && go list -m -f '{{.Dir}}' github.com/jackc/pgx/v5)
# shellcheck disable=SC2015 # die when either test fails
[ -n "$pgxsrc" ] && [ -d "$pgxsrc/testsetup" ] ||
	die "pgx $pgxver is not in the module cache: run 'go mod download github.com/jackc/pgx/v5' in $repo"

# --- the work directory; from here on everything started is stopped by
# its own PID on exit.
suite_workdir

# --- PostgreSQL: a primary and a hot standby.
suite_layout
mkdir -p "$work/certs"
health_password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')

for f in ca.pem localhost.crt localhost.key pgx_sslcert.crt pgx_sslcert.key; do
	base64 -d "$pgxsrc/testsetup/certs/$f.b64" >"$work/certs/$f"
done
chmod 644 "$work"/certs/*

log "initdb primary ($bindir, pgx $pgxver)"
suite_initdb "$primary"

# testsetup/pg_hba.conf with the server reached over 127.0.0.1 only, plus
# the postgres role over TCP for pgrouter's health probes and replication
# over the Unix socket for pg_basebackup and the standby.
asdb tee -a "$primary/data/pg_hba.conf" >/dev/null <<EOF
host      all          postgres     127.0.0.1/32          scram-sha-256
host      all          pgx_md5      127.0.0.1/32          md5
host      all          pgx_scram    127.0.0.1/32          scram-sha-256
host      all          pgx_pw       127.0.0.1/32          $([ "$poolmode" = passthrough ] && echo password || echo scram-sha-256)
hostssl   all          pgx_ssl      127.0.0.1/32          scram-sha-256
hostssl   all          pgx_sslcert  127.0.0.1/32          cert
EOF
if [ "$tls" = 1 ]; then
	for f in localhost.crt:server.crt localhost.key:server.key ca.pem:root.crt; do
		asdb install -m 600 "$work/certs/${f%%:*}" "$primary/data/${f#*:}"
	done
	asdb tee -a "$primary/data/postgresql.conf" >/dev/null <"$pgxsrc/testsetup/postgresql_ssl.conf"
fi
startpg "$primary" primary_port || dielog "$primary/postgres.log" "primary did not start"
log "primary on 127.0.0.1:$primary_port"

psql_primary() { suite_psql "$primary" "$primary_port" "$@"; }
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

suite_standby "$primary" "$primary_port" "$standby" standby_port

# --- pgrouter in front of both.
suite_build_pgrouter
tlsflags=()
[ "$tls" = 1 ] && tlsflags=(--tls-cert "$work/certs/localhost.crt" --tls-key "$work/certs/localhost.key")
# Pooled, the server's rules at the proxy. pgx_sslcert (a client
# certificate) cannot log in through a proxy that terminates TLS, as in
# passthrough.
suite_pool_flags "$primary" "$primary_port" "local all pgx_md5 md5" "local all all scram-sha-256" \
	"host all pgx_md5 127.0.0.1/32 md5" "host all all 127.0.0.1/32 scram-sha-256"
suite_start_pgrouter "$health_password" "127.0.0.1:$primary_port,127.0.0.1:$standby_port" "${tlsflags[@]}" "${poolflags[@]}"

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
		# shellcheck disable=SC2086 # PGX_SUITE_PKGS may list several packages
		exec setsid go test -count=1 -json -p 1 -timeout "$timeout" "$@" $pkgs
	) >"$work/$name.json" 2>"$work/$name-stderr.log" &
	runner_pid=$!
	rc=0
	wait "$runner_pid" || rc=$?
	runner_pid=
	echo "$(($(date +%s) - t0))" >"$work/$name-seconds.txt"
	log "run $name: go test exit $rc after $(cat "$work/$name-seconds.txt")s"
}

case "$only" in
"" | direct) runsuite direct "$primary_port" "$primary" "$@" ;;
esac
case "$only" in
"" | proxy)
	runsuite proxy "$rw_port" "$work/sock" "$@"
	# Proof that the proxied run went through pgrouter: its counters.
	suite_pgrouter_counters
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
suite_run_args .json
rc=0
# shellcheck disable=SC1007 # GOFLAGS set empty for go run
(cd "$work/report" && GOFLAGS= GO111MODULE=off go run main.go "${args[@]}") >"$work/report.txt" || rc=$?
suite_finish "$rc" "pgrouter ($poolmode) from the $built; pgx $pgxver; PostgreSQL $(pg postgres --version | awk '{print $3}'); total $(($(date +%s) - began))s"
