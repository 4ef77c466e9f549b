#!/bin/sh
# RDB snapshots in /data (no AOF), a password when REDIS_PASSWORD is set.
set -e
chown redis:redis /data
exec setpriv --reuid=redis --regid=redis --init-groups redis-server --dir /data --appendonly no \
    --protected-mode no --daemonize no ${REDIS_PASSWORD:+--requirepass "$REDIS_PASSWORD"}
