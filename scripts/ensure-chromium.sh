#!/bin/sh
# ensure-chromium.sh makes sure Debian's chromium is installed: the
# dashboard test drives it headless. It prints nothing when it is. As root
# it installs the package; otherwise it prints the command to run and
# exits 0, since on a developer machine the dashboard test skips (with CI
# set it fails instead).
set -eu

for b in chromium chromium-browser; do
	if command -v "$b" >/dev/null 2>&1; then
		exit 0
	fi
done
if [ "$(id -u)" -ne 0 ]; then
	echo "chromium is not installed; the dashboard test will skip. Install it with:" >&2
	echo "  sudo apt-get install -y chromium" >&2
	exit 0
fi
echo "installing chromium (dashboard test)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null
