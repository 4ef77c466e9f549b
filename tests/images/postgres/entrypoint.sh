#!/bin/sh
# First start: a cluster with a password for POSTGRES_USER (md5 over TCP and the socket when
# POSTGRES_PASSWORD is set, else trust), like the official image.
set -e
mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
chmod 0700 "$PGDATA"
user="${POSTGRES_USER:-postgres}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -n "$POSTGRES_PASSWORD" ]; then
        printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
        chown postgres /tmp/pwfile
        setpriv --reuid=postgres --regid=postgres --init-groups \
            initdb -D "$PGDATA" -U "$user" --pwfile=/tmp/pwfile --auth=md5 >/dev/null
        rm -f /tmp/pwfile
    else
        setpriv --reuid=postgres --regid=postgres --init-groups \
            initdb -D "$PGDATA" -U "$user" --auth=trust >/dev/null
    fi
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" "$@"
