#!/bin/sh
# ensure-postgres.sh makes sure the PostgreSQL 15 server and client programs
# that the tests, the demo and the benchmarks run are installed: initdb,
# pg_ctl, postgres and pg_basebackup in the server's bin directory, and psql
# and pgbench. It prints nothing when they are. As root it installs the
# missing Debian packages; otherwise it prints the command to run and fails.
#
# The server's bin directory is $PGR_PG_BINDIR if set, else that of
# `pg_config --bindir` if it holds the server, else /usr/lib/postgresql/15/bin
# (internal/pgtest looks in the same places).
set -eu

debian_bindir=/usr/lib/postgresql/15/bin
packages="postgresql-15 postgresql-client-15"

has_server() {
	for tool in initdb pg_ctl postgres pg_basebackup; do
		[ -x "$1/$tool" ] || return 1
	done
}

bindir() {
	if [ -n "${PGR_PG_BINDIR:-}" ]; then
		echo "$PGR_PG_BINDIR"
		return
	fi
	d=$(pg_config --bindir 2>/dev/null || true)
	if [ -n "$d" ] && has_server "$d"; then
		echo "$d"
		return
	fi
	echo "$debian_bindir"
}

has_client() {
	for tool in psql pgbench; do
		command -v "$tool" >/dev/null 2>&1 || [ -x "$1/$tool" ] || return 1
	done
}

all_present() {
	d=$(bindir)
	has_server "$d" && has_client "$d"
}

all_present && exit 0

if [ -n "${PGR_PG_BINDIR:-}" ]; then
	echo "ensure-postgres: PGR_PG_BINDIR=$PGR_PG_BINDIR lacks initdb, pg_ctl, postgres, pg_basebackup, psql or pgbench" >&2
	exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "ensure-postgres: PostgreSQL 15 is missing; install it with:" >&2
	echo "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y $packages" >&2
	exit 1
fi

# Remember whether the packaged cluster 15/main existed, so that only one the
# install itself made and started is stopped below.
had_main=no
[ -d /etc/postgresql/15/main ] && had_main=yes

echo "ensure-postgres: installing $packages" >&2
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q $packages >/dev/null

# The package creates and may start the cluster 15/main on port 5432; the
# tests start their own clusters and want nothing else running.
if [ "$had_main" = no ] && command -v pg_lsclusters >/dev/null 2>&1 &&
	pg_lsclusters --no-header 2>/dev/null | awk '$1 == "15" && $2 == "main" && $4 == "online" { found = 1 } END { exit !found }'; then
	echo "ensure-postgres: stopping the packaged cluster 15/main" >&2
	pg_ctlcluster 15 main stop
fi

if ! all_present; then
	echo "ensure-postgres: installed $packages but $(bindir) still lacks a program" >&2
	exit 1
fi
