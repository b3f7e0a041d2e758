#!/bin/sh
# tools/etcd/build.sh — build the etcd server into directory $1.
# go.etcd.io/etcd/server/v3's module root is package main: it builds `etcd`.
set -eu
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
