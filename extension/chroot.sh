#!/usr/bin/env bash
# Runs a make target (default: test) of this tree inside a Debian chroot, so the whole suite
# runs against that release's PostgreSQL: trixie (Debian 13) has PostgreSQL 17.
#
#   extension/chroot.sh [SUITE [MAKE TARGET...]]      e.g. extension/chroot.sh trixie test
#
# The minbase system comes from extension/debootstrap.sh, a tarball in the cache. Every
# run unpacks it afresh, so no
# run sees what another left; what makes a second run fast lives in the cache and is
# bind-mounted in: apt's downloaded packages, and /root/.cache (pip's wheels, the model
# build, pgvector's source) together with the test venv. The tree is copied in (its
# tracked and untracked files, not .venv or build output), as it is now, uncommitted
# changes included.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || exec sudo --preserve-env=AZURE_AI_SIM_CACHE "$0" "$@"

suite=${1:-trixie}
shift || true
targets=("${@:-test}")
cache=${AZURE_AI_SIM_CACHE:-$HOME/.cache/azure_ai_sim}
persistent=$cache/chroot/$suite   # apt archives and the chroot's /root/.cache
mkdir -p "$persistent/apt-archives/partial" "$persistent/root-cache"
exec 9>"$persistent/lock"
flock 9   # one run at a time shares these caches (the test venv above all)

root=$(mktemp -d "/tmp/azure_ai_sim-$suite.XXXXXX")
cleanup() {
    # What the run left behind inside (a server, a simulator, after an interrupt) ends
    # first; then everything below the root is unmounted, deepest first, and the root is
    # removed only if nothing is mounted there any more: rm -rf through a bind mount
    # would empty the host's /dev.
    local mounts proc
    for proc in /proc/[0-9]*; do
        [ "$(readlink "$proc/root" 2>/dev/null)" = "$root" ] && kill -9 "${proc#/proc/}" 2>/dev/null
    done
    mounts=$(findmnt -rn -o TARGET | grep "^$root/" | sort -r || true)
    [ -z "$mounts" ] || echo "$mounts" | xargs -r -n 1 umount -l
    if findmnt -rn -o TARGET | grep -q "^$root/"; then
        echo "left $root in place: something is still mounted below it" >&2
    else
        rm -rf "$root"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

tar -C "$root" -xf "$(extension/debootstrap.sh "$suite")"

chmod 755 "$root"   # mktemp's 0700 (kept in the tarball too): as / it would stop postgres

# The network as the host sees it: its resolver, and its CA certificates (HTTPS may be
# re-signed on the way out), added to the chroot's own so that an update keeps them.
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/ca-certificates/host-bundle.crt"

mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --make-rslave "$root/sys"
mount --rbind /dev "$root/dev"
mount --make-rslave "$root/dev"
mount --bind "$persistent/apt-archives" "$root/var/cache/apt/archives"
mkdir -p "$root/root/.cache"
mount --bind "$persistent/root-cache" "$root/root/.cache"

src=/root/azure_ai_sim
mkdir -p "$root$src"
git ls-files -z --cached --others --exclude-standard \
    | tar -c --null --no-recursion --ignore-failed-read -T - | tar -C "$root$src" -x

# No init runs in a chroot: nothing may start services while packages install (the
# tests start their own cluster); and apt must not clean the archives we keep.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
rm -f "$root/etc/apt/apt.conf.d/docker-clean"
# Recommends bring a mail server (exim4, whose setup fails in a chroot) and systemd; and
# the archives are a host directory that the chroot's _apt user may not write.
printf 'APT::Install-Recommends "false";\nAPT::Sandbox::User "root";\n' \
    >"$root/etc/apt/apt.conf.d/90azure_ai_sim"

chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 CI="${CI:-}" /bin/sh -c '
        set -e
        update-ca-certificates >/dev/null
        command -v make >/dev/null || { apt-get update -q && apt-get install -y -q make; }
        cd '"$src"'
        # the venv in the cache, kept between runs (it would go with the copied tree)
        exec make VENV=/root/.cache/test-venv "$@"' chroot "${targets[@]}"
