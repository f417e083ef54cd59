#!/usr/bin/env bash
# make docker-test: builds the images (docker/build.sh), then runs the whole suite against
# a container of the database image (pytest --image, through testcontainers), tests/docker
# (Compose, restarts, the image's contents) included.
#   --or-skip: where no Docker engine can run (docker/engine.sh says why), say so and
#              succeed; make test runs it so.
set -euo pipefail
cd "$(dirname "$0")/.."
. docker/engine.sh
if ! docker_engine; then
    if [ "${1:-}" = --or-skip ]; then
        echo "==> the container suite is skipped: this machine cannot run a Docker engine"
        exit 0
    fi
    exit 3
fi
docker/build.sh
echo "==> the whole suite against a container of azure_ai_sim"
exec "${PYTHON:-.venv/bin/python}" -m pytest tests --ignore=tests/bench --image azure_ai_sim
