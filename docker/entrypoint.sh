#!/bin/sh
# The database container's entrypoint: runs PostgreSQL as the postgres user, passing any
# arguments on to `postgres` (e.g. -c log_statement=all). On the first start it creates
# the cluster in $PGDATA (the volume), with the extensions' library preloaded:
#   POSTGRES_PASSWORD set:    it becomes the password of the superuser postgres, and TCP
#                             connections (the published port) must give it (scram-sha-256);
#   POSTGRES_PASSWORD unset:  TCP connections are refused;
#   POSTGRES_HOST_AUTH_METHOD: the method for TCP connections instead (as the official
#                             postgres image has it; trust is for tests on a private port).
# Sessions inside the container (docker exec ... psql -U postgres) use the local socket,
# which is trusted. The password is read only when the cluster is created.
set -eu

if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root: give the postgres user its directories, then
    # run this script again as that user.
    mkdir -p "$PGDATA" /run/postgresql
    chown postgres:postgres "$PGDATA" /run/postgresql
    chmod 700 "$PGDATA"
    HOME=/var/lib/postgresql exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
        host_auth=scram-sha-256
    fi
    if [ -n "${POSTGRES_HOST_AUTH_METHOD:-}" ]; then
        host_auth=$POSTGRES_HOST_AUTH_METHOD
    elif [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "POSTGRES_PASSWORD is not set: TCP connections will be refused" >&2
        host_auth=reject
    fi
    initdb -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host="$host_auth" --no-instructions \
        ${POSTGRES_PASSWORD:+--pwfile="$pwfile"}
    rm -f "$pwfile"
    echo "host all all all $host_auth" >>"$PGDATA/pg_hba.conf"
    cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '*'
# The native part of the extensions (see README.md, "Security model"), and pg_cron, which
# runs ml_pipeline's workers on a schedule (its jobs in background workers).
shared_preload_libraries = 'azure_ai_sim,pg_cron'
cron.use_background_workers = on
EOF
fi

unset POSTGRES_PASSWORD   # the server and the Python it runs have no use for it
exec postgres -D "$PGDATA" "$@"
