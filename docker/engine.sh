#!/usr/bin/env bash
# Sourced by docker/build.sh and the Makefile's container targets: makes sure a Docker
# engine answers, and sets DOCKER to a client that builds with BuildKit.
#
# Where none runs and we are root (CI, a fresh machine), Debian's docker.io is installed
# and dockerd started in the background (its log: $cache/dockerd.log). Where that cannot
# be done, returns 3 after one line saying why, for the caller to skip.

docker_engine() {
    local cache=${AZURE_AI_SIM_CACHE:-$HOME/.cache/azure_ai_sim}
    if ! command -v dockerd >/dev/null && ! command -v docker >/dev/null; then
        if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
            echo "==> no Docker engine, and not root on Debian/Ubuntu to install docker.io" >&2
            return 3
        fi
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io; } >&2 \
            || { echo "==> docker.io did not install" >&2; return 3; }
    fi
    # Compose, for tests/docker: v2 (the plugin) or Debian's docker-compose.
    if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null \
        && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >&2 \
            || echo "==> docker-compose did not install: the Compose test will skip" >&2
    fi
    # The client: `docker` if it builds with BuildKit (buildx), else the engine package's own.
    DOCKER=${DOCKER:-docker}
    if ! "$DOCKER" buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then
        DOCKER=/usr/bin/docker
    fi
    export DOCKER DOCKER_BUILDKIT=1
    "$DOCKER" info >/dev/null 2>&1 && return 0
    if [ "$(id -u)" != 0 ] || ! command -v dockerd >/dev/null; then
        echo "==> no Docker engine answers, and this user cannot start dockerd" >&2
        return 3
    fi
    mkdir -p "$cache"
    echo "==> starting dockerd (log: $cache/dockerd.log)" >&2
    nohup dockerd >"$cache/dockerd.log" 2>&1 &
    for _ in $(seq 60); do
        "$DOCKER" info >/dev/null 2>&1 && return 0
        sleep 1
    done
    echo "==> dockerd did not start here (see $cache/dockerd.log)" >&2
    return 3
}
