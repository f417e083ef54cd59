#!/usr/bin/env bash
# Installs the azure_ai_sim package with its pinned dependencies for the server's Python,
# as a new release beside the others, then switches <libdir>/<boot protocol> to it at once
# (rename(2) of a symbolic link). Backends keep the release they started with, so a
# re-install under a running server never breaks one; old releases go once nothing maps
# them and three newer ones exist. Usage: install_package.sh LIBDIR; prints the release.
set -euo pipefail
cd "$(dirname "$0")/.."

libdir=$1
python=/usr/bin/python3
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' python/azure_ai_sim/__init__.py)
protocol=$(sed -n 's/^BOOT_PROTOCOL = "\(.*\)"$/\1/p' python/azure_ai_sim/boot.py)
releases=$libdir/releases
link=$libdir/$protocol

mkdir -p "$releases"
staging=$(mktemp -d "$releases/.staging-$version.XXXXXX")
trap 'rm -rf "$staging"' EXIT
"$python" -m pip install --quiet --disable-pip-version-check --no-user \
    --root-user-action=ignore --target "$staging" . >&2
rm -rf python/build python/*.egg-info build/lib build/bdist*
chmod -R a+rX "$staging"   # backends run as postgres; an unreadable file fails obscurely
chmod a+rx "$libdir" "$releases"
release=$version-$(date +%Y%m%d%H%M%S)-${staging##*.}
mv "$staging" "$releases/$release"

# The layout before releases: a directory where the link goes. Moved aside once.
if [ -d "$link" ] && [ ! -L "$link" ]; then
    mv "$link" "$releases/$protocol-before-releases"
fi
ln -sfn "releases/$release" "$libdir/.$protocol.new"
mv -T "$libdir/.$protocol.new" "$link"

# Old releases: the three newest stay, and any that a process still maps (a backend that
# loaded numpy or onnxruntime from it).
mapped=$(cat /proc/[0-9]*/maps 2>/dev/null | grep -o "$releases/[^/]*" | sort -u || true)
ls -1dt "$releases"/*/ | tail -n +4 | while read -r old; do
    old=${old%/}
    grep -qxF "$old" <<<"$mapped" || rm -rf "$old"
done
echo "$releases/$release"
