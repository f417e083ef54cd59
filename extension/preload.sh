#!/usr/bin/env bash
# Puts azure_ai_sim and pg_cron into shared_preload_libraries of the machine's own clusters of the
# PostgreSQL that pg_config.sh names (Debian's /etc/postgresql/<major>/<cluster>), or takes
# it out again:
#
#   extension/preload.sh add | remove
#
# It writes conf.d/azure_ai_sim.conf (Debian's postgresql.conf includes conf.d last), with
# the libraries the cluster preloads already and ours: the log filter, the error hints and
# batch mode need the library loaded when the server starts, and pg_cron runs ml_pipeline's
# workers. A cluster reads it when it restarts; this script restarts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:?add or remove}
pg_config=$(extension/pg_config.sh)
major=$("$pg_config" --version | sed -n 's/^PostgreSQL \([0-9]*\).*/\1/p')
bindir=$("$pg_config" --bindir)

for conf in /etc/postgresql/"$major"/*/postgresql.conf; do
    [ -f "$conf" ] || continue
    ours=$(dirname "$conf")/conf.d/azure_ai_sim.conf
    if [ "$action" = remove ]; then
        rm -f "$ours"
        continue
    fi
    mkdir -p "$(dirname "$ours")"
    rm -f "$ours"   # the cluster's own value, without ours
    current=$(runuser -u postgres -- "$bindir/postgres" -C shared_preload_libraries \
        -c config_file="$conf" 2>/dev/null || true)
    libraries=$(echo "$current" | tr -d "' " | tr ',' '\n' |
        { grep -v -x -e '' -e azure_ai_sim -e pg_cron || true; } | paste -sd, -)
    # pg_cron runs ml_pipeline's workers on a schedule, its jobs in background workers
    # (no password needed); its extension lives in cron.database_name, postgres by default.
    {
        echo "shared_preload_libraries = '${libraries:+$libraries,}azure_ai_sim,pg_cron'"
        echo "cron.use_background_workers = on"
    } >"$ours"
    chmod 644 "$ours"
    echo "==> $ours: preloads azure_ai_sim and pg_cron from the cluster's next restart"
done
