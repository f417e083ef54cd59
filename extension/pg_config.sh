#!/bin/sh
# Prints the pg_config of the server the extensions install into: $PG_CONFIG if set,
# else the newest PostgreSQL server installed under /usr/lib/postgresql (Debian/Ubuntu).
if [ -n "${PG_CONFIG:-}" ]; then echo "$PG_CONFIG"; exit 0; fi
newest=$(ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -n 1)
[ -n "$newest" ] || { echo "no PostgreSQL server found under /usr/lib/postgresql" >&2; exit 1; }
echo "$(dirname "$newest")/pg_config"
