#!/usr/bin/env bash
# Removes what install.sh put on the machine: the extensions' control files and scripts,
# the native library, the package's releases and the built-in models. Databases keep
# their extensions until you DROP EXTENSION them; apt packages, pgvector and the cache
# (~/.cache/azure_ai_sim) stay.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || exec sudo --preserve-env=AZURE_AI_SIM_LIBDIR,AZURE_AI_SIM_MODELDIR,PG_CONFIG "$0" "$@"

pg_config=$(extension/pg_config.sh)
libdir=${AZURE_AI_SIM_LIBDIR:-/usr/local/lib/azure_ai_sim}
modeldir=${AZURE_AI_SIM_MODELDIR:-/usr/local/share/azure_ai_sim/models}
extdir=$("$pg_config" --sharedir)/extension

for control in control/*.control; do
    name=$(basename "$control" .control)
    rm -f "$extdir/$name.control" "$extdir/$name"--*.sql
done
extension/preload.sh remove
rm -f "$("$pg_config" --pkglibdir)/azure_ai_sim.so"
rm -rf "$libdir" "$modeldir"
echo "removed the extensions from $extdir, the package from $libdir and the models from $modeldir"
echo "(databases keep their extensions until DROP EXTENSION; the clusters' conf.d no longer"
echo "preloads the library: restart them)"
