#!/bin/sh
# tools/etcd/gen.sh — regenerate go.mod/go.sum for the etcd server used by
# the tests and the demo. Usage: tools/etcd/gen.sh [v3.7.0]
# A nested module, so the project's own go.mod never sees etcd's server
# dependencies; `go test ./...` at the root skips it.
set -eu
EV=${1:-v3.7.0}
cd "$(dirname "$0")"
rm -f go.mod go.sum
go mod init pgrouter.local/tools/etcd >/dev/null 2>&1
go get -tool "go.etcd.io/etcd/server/v3@$EV"
go mod tidy
