#!/usr/bin/env bash
# Installs what the extensions need from the system, idempotently: a PostgreSQL server
# (the one already installed, else the distribution's default), PL/Python and the server
# headers for that version, pg_cron, the server's Python with pip, and pgvector.
set -euo pipefail
cd "$(dirname "$0")"
[ "$(id -u)" = 0 ] || exec sudo --preserve-env=AZURE_AI_SIM_CACHE,PG_CONFIG "$0" "$@"

echo "==> system packages (PostgreSQL, PL/Python, headers, Python) and pgvector"
CACHE=${AZURE_AI_SIM_CACHE:-$HOME/.cache/azure_ai_sim}
export DEBIAN_FRONTEND=noninteractive

apt_updated=
apt_update_once() {
    [ -n "$apt_updated" ] || apt-get update -q
    apt_updated=1
}

apt_install() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
            || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return
    apt_update_once
    apt-get install -y -q "${missing[@]}"
}

# bookworm has no pgvector package; Debian's source archive has it (trixie). Fetch the
# source with a private apt configuration, so no trixie entry ever reaches the machine's
# own sources and no trixie binary can be installed.
download_pgvector_source() {
    local into=$1 archive apt_dir
    archive=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' \
        | awk '$3 == "main" && $2 !~ /-/ { print $1; exit }')
    [ -n "$archive" ] || { echo "no Debian 'main' archive in the apt sources" >&2; exit 1; }
    apt_dir=$(mktemp -d)
    mkdir -p "$apt_dir/lists/partial"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $archive trixie main" \
        > "$apt_dir/sources.list"
    local private=(-o "Dir::Etc::SourceList=$apt_dir/sources.list"
                   -o "Dir::Etc::SourceParts=$apt_dir/none" -o "Dir::State::Lists=$apt_dir/lists"
                   -o APT::Sandbox::User=root)
    apt-get -q "${private[@]}" update
    (cd "$into" && apt-get -q "${private[@]}" source --download-only pgvector)
    rm -rf "$apt_dir"
}

build_pgvector() {
    local pg_config=$1 sources=$CACHE/pgvector build
    mkdir -p "$sources"
    ls "$sources"/pgvector_*.orig.tar.gz >/dev/null 2>&1 || download_pgvector_source "$sources"
    build=$(mktemp -d)
    tar -xzf "$(ls "$sources"/pgvector_*.orig.tar.gz | sort -V | tail -n 1)" -C "$build" --strip-components=1
    make -C "$build" -s PG_CONFIG="$pg_config" OPTFLAGS=""
    make -C "$build" -s PG_CONFIG="$pg_config" install
    rm -rf "$build"
}

ls -d /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || apt_install postgresql
pg_config=$(./pg_config.sh)
major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
# pg_cron runs ml_pipeline's workers on a schedule (Debian packages it for every major).
apt_install "postgresql-plpython3-$major" "postgresql-server-dev-$major" "postgresql-$major-cron" \
    python3 python3-pip python3-venv make gcc

if [ ! -f "$("$pg_config" --sharedir)/extension/vector.control" ]; then
    apt_update_once
    if apt-cache show "postgresql-$major-pgvector" >/dev/null 2>&1; then
        apt_install "postgresql-$major-pgvector"
    else
        build_pgvector "$pg_config"
    fi
fi
