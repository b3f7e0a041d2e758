#!/bin/sh
# tools/k8s/ensure.sh — print the directory holding kube-apiserver and etcd
# for the Kubernetes tests, building both first when the cache has none for
# this go.mod/go.sum (cold: ~10 min on 2 cores; never do this inside go test,
# whose default timeout is 10 min). The key is the Kubernetes version and a
# hash of go.mod and go.sum, never file times: a fresh clone gives every file
# a new mtime. PGR_BIN_CACHE overrides the cache directory (default: <repo>/bin).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cache=${PGR_BIN_CACHE:-$(cd "$here/../.." && pwd)/bin}
ver=$(sed -n 's#^[[:space:]]*k8s.io/kubernetes \(v[0-9][0-9.]*\).*#\1#p' "$here/go.mod" | head -n1)
key=$ver-$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)
dir=$cache/k8s-$key
if [ ! -x "$dir/kube-apiserver" ] || [ ! -x "$dir/etcd" ]; then
	echo "building kube-apiserver and etcd $ver into $dir (cold: ~10 min on 2 cores)" >&2
	rm -rf "$dir.tmp"
	"$here/build.sh" "$dir.tmp" >&2
	rm -rf "$dir" && mv "$dir.tmp" "$dir"
	chmod 755 "$cache" "$dir" "$dir/kube-apiserver" "$dir/etcd" 2>/dev/null || true
fi
echo "$dir"
