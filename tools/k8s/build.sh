#!/bin/sh
# tools/k8s/build.sh — build kube-apiserver and etcd into directory $1.
set -eu
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")"
KV=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
minor=${KV#v1.}; minor=${minor%%.*}
# Without the -X flags /version reports v0.0.0-master.
V=k8s.io/component-base/version
export CGO_ENABLED=0
go build -trimpath -o "$out/kube-apiserver" \
	-ldflags "-s -w -X $V.gitVersion=$KV -X $V.gitMajor=1 -X $V.gitMinor=$minor -X $V.gitTreeState=clean" \
	k8s.io/kubernetes/cmd/kube-apiserver
go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
