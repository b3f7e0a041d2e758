#!/bin/sh
# tools/etcd/ensure.sh — print the path of the etcd binary, building it
# first when the cache has none for this go.mod/go.sum (cold: ~75 s on 2
# cores). The cache key is the etcd version and a hash of go.mod and go.sum,
# never file times: a fresh clone gives every file a new mtime.
# PGR_BIN_CACHE overrides the cache directory (default: <repo>/bin).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cache=${PGR_BIN_CACHE:-$(cd "$here/../.." && pwd)/bin}
ver=$(sed -n 's#^[[:space:]]*go.etcd.io/etcd/server/v3 \(v[0-9][0-9.]*\).*#\1#p' "$here/go.mod" | head -n1)
key=$ver-$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)
dir=$cache/etcd-$key
if [ ! -x "$dir/etcd" ]; then
	echo "building etcd $ver into $dir (cold: ~75 s on 2 cores)" >&2
	rm -rf "$dir.tmp"
	"$here/build.sh" "$dir.tmp" >&2
	rm -rf "$dir" && mv "$dir.tmp" "$dir"
	# The agents' tests run processes as the postgres OS user: let anyone
	# read and run the binary.
	chmod 755 "$cache" "$dir" "$dir/etcd" 2>/dev/null || true
fi
echo "$dir/etcd"
