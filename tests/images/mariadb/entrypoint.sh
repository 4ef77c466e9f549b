#!/bin/sh
# First start: a data folder with root's password from MARIADB_ROOT_PASSWORD (as the official
# image does), then the server in the foreground.
set -e
mkdir -p /run/mysqld /var/lib/mysql
chown mysql:mysql /run/mysqld /var/lib/mysql
if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql --auth-root-authentication-method=normal >/dev/null
    mariadbd --user=mysql --skip-networking --socket=/run/mysqld/init.sock &
    pid=$!
    for i in $(seq 100); do [ -S /run/mysqld/init.sock ] && break; sleep 0.2; done
    mariadb -S /run/mysqld/init.sock -uroot -e \
        "ALTER USER 'root'@'localhost' IDENTIFIED BY '${MARIADB_ROOT_PASSWORD}'; FLUSH PRIVILEGES;"
    kill "$pid"
    wait "$pid" || true
fi
exec mariadbd --user=mysql
