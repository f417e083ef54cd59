#!/usr/bin/env bash
# Prints the path of a minbase Debian system of SUITE (default trixie) as a tarball, made
# once with debootstrap from the Debian mirror of the machine's own apt sources and kept
# in the cache: the root of extension/chroot.sh's runs and the local base of the Docker
# image (docker/build.sh) where no image registry is reachable.
#
#   extension/debootstrap.sh [SUITE]
set -euo pipefail
[ "$(id -u)" = 0 ] || exec sudo --preserve-env=AZURE_AI_SIM_CACHE "$0" "$@"

suite=${1:-trixie}
cache=${AZURE_AI_SIM_CACHE:-$HOME/.cache/azure_ai_sim}
tarball=$cache/chroot/$suite.tar
mkdir -p "$cache/chroot"
exec 8>"$cache/chroot/$suite.tar.lock"
flock 8
if [ ! -f "$tarball" ]; then
    mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' \
        | awk '$3 == "main" && $2 !~ /-/ { print $1; exit }')
    [ -n "$mirror" ] || { echo "no Debian 'main' archive in the apt sources" >&2; exit 1; }
    command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; } >&2
    root=$(mktemp -d "/tmp/azure_ai_sim-debootstrap.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror" >&2
    rm -rf "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
fi
echo "$tarball"
