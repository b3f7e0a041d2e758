#!/bin/sh
# tools/k8s/gen.sh — regenerate go.mod/go.sum for the kube-apiserver and
# etcd used by the Kubernetes tests. Usage: tools/k8s/gen.sh 1.37.2
# A nested module, so the project's own go.mod never sees k8s.io/kubernetes;
# `go test ./...` at the root skips it.
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, client-go...)
# at v0.0.0 and replaces them with paths inside its own git tree; a consumer
# must replace each with the published v0.<minor>.<patch> tag. The list
# changes between releases, so it is read from that release's go.mod.
set -eu
KV=${1:?kubernetes version, e.g. 1.37.2}
cd "$(dirname "$0")"
rm -f go.mod go.sum
go mod init pgrouter.local/tools/k8s >/dev/null 2>&1
gomod=$(go mod download -json "k8s.io/kubernetes@v$KV" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
go mod edit -go="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")"
for m in $(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$gomod"); do
	go mod edit -replace="$m=$m@v0.${KV#1.}"
done
# The etcd server at the etcd client version kubernetes pins: adding it then
# changes none of kube-apiserver's dependency versions.
EV=$(sed -n 's#^[[:space:]]*go.etcd.io/etcd/client/v3 \(v[0-9.]*\)$#\1#p' "$gomod")
go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@v$KV" "go.etcd.io/etcd/server/v3@$EV"
go mod tidy
