#!/usr/bin/env bash
# make docker: builds docker/Dockerfile's images from the repository root:
#   azure_ai_sim      the database (the default target, db)
#   azure_ai_sim-sim  the simulators (target sim)
#
# The base is BASE (the Dockerfile's default, debian:trixie-slim): pulled if no local image
# has that name; where no registry answers, made locally instead (extension/debootstrap.sh,
# then `docker import` as azure_ai_sim/debian:trixie), so that the build runs the
# Dockerfile's own steps either way. The host's CA certificates are trusted for the build
# only (HTTPS may be re-signed on the way out); the image does not keep them.
# Exit status 3: no Docker engine can run here (docker/engine.sh says why).
set -euo pipefail
cd "$(dirname "$0")/.."
. docker/engine.sh
docker_engine || exit $?

base=${BASE:-debian:trixie-slim}
local_base=azure_ai_sim/debian:trixie
if ! "$DOCKER" image inspect "$base" >/dev/null 2>&1 \
    && ! timeout 60 "$DOCKER" pull -q "$base" >/dev/null 2>&1; then
    echo "==> $base: no registry answers; the base is Debian 13 from debootstrap ($local_base)"
    if ! "$DOCKER" image inspect "$local_base" >/dev/null 2>&1; then
        "$DOCKER" import - "$local_base" <"$(extension/debootstrap.sh trixie)" >/dev/null
    fi
    base=$local_base
fi

build=(--network host --build-arg "BASE=$base" -f docker/Dockerfile)
[ -s /etc/ssl/certs/ca-certificates.crt ] \
    && build+=(--secret id=ca_cert,src=/etc/ssl/certs/ca-certificates.crt)
for image in azure_ai_sim:db azure_ai_sim-sim:sim; do
    echo "==> $(date +%T) docker build ${image%%:*} (target ${image#*:}, base $base)"
    started=$(date +%s)
    "$DOCKER" build -q "${build[@]}" --target "${image#*:}" -t "${image%%:*}" . >/dev/null
    echo "==> ${image%%:*}: $(( $(date +%s) - started )) s," \
        "$("$DOCKER" image inspect -f '{{.Size}}' "${image%%:*}" | awk '{ printf "%d MB", $1 / 1e6 }')"
done
