#!/bin/bash
# The part of the official mariadb/mysql images' entrypoint that compose.yaml relies on:
# on an empty data directory, create the system tables, the root password, the database and
# its user, and run the init scripts, all on a server that listens on no network port (so a
# healthcheck over TCP passes only once this is done); then start the real server.
set -euo pipefail

log() { echo "entrypoint: $*" >&2; }

env_of() { # the MARIADB_ spelling wins over the MYSQL_ one, as in the official image
  local name=$1
  local mariadb="MARIADB_$name" mysql="MYSQL_$name"
  echo "${!mariadb:-${!mysql:-}}"
}

if [ "${1:0:1}" = - ]; then
  set -- mariadbd "$@"
fi
if [ "$1" != mariadbd ] && [ "$1" != mysqld ]; then
  exec "$@"
fi

datadir=/var/lib/mysql
socket=/run/mysqld/mysqld.sock
if [ "$(id -u)" = 0 ]; then
  chown -R mysql:mysql "$datadir" /run/mysqld
fi
as_mysql=()
[ "$(id -u)" = 0 ] && as_mysql=(setpriv --reuid=mysql --regid=mysql --init-groups)

if [ ! -d "$datadir/mysql" ]; then
  root_password=$(env_of ROOT_PASSWORD)
  random_root=$(env_of RANDOM_ROOT_PASSWORD)
  allow_empty=$(env_of ALLOW_EMPTY_PASSWORD)
  database=$(env_of DATABASE)
  user=$(env_of USER)
  password=$(env_of PASSWORD)
  if [ -z "$root_password" ] && [ -z "$random_root" ] && [ -z "$allow_empty" ]; then
    log "database is uninitialized and no root password option is given:" \
      "set MYSQL_ROOT_PASSWORD, MYSQL_RANDOM_ROOT_PASSWORD or MYSQL_ALLOW_EMPTY_PASSWORD"
    exit 1
  fi
  if [ -n "$random_root" ]; then
    root_password=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
    log "GENERATED ROOT PASSWORD: $root_password"
  fi

  log "initializing $datadir"
  "${as_mysql[@]}" mariadb-install-db --datadir="$datadir" --skip-test-db \
    --auth-root-authentication-method=normal --skip-name-resolve >/dev/null
  "${as_mysql[@]}" "$@" --skip-networking --socket="$socket" &
  pid=$!
  for _ in $(seq 300); do
    mariadb --protocol=socket --socket="$socket" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { log "the temporary server died"; exit 1; }
    sleep 0.1
  done

  sql_string() { printf "'%s'" "$(printf '%s' "$1" | sed "s/\\\\/\\\\\\\\/g; s/'/\\\\'/g")"; }
  {
    echo "SET @@SESSION.SQL_LOG_BIN=0;"
    # Anonymous users and the root@<container id> entries that would only draw warnings.
    echo "DELETE FROM mysql.global_priv WHERE User = '' OR Host NOT IN ('localhost', '%');"
    echo "DELETE FROM mysql.proxies_priv WHERE Host NOT IN ('localhost', '%');"
    echo "FLUSH PRIVILEGES;"
    echo "ALTER USER 'root'@'localhost' IDENTIFIED BY $(sql_string "$root_password");"
    echo "CREATE USER 'root'@'%' IDENTIFIED BY $(sql_string "$root_password");"
    echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    if [ -n "$database" ]; then
      echo "CREATE DATABASE IF NOT EXISTS \`$database\`;"
    fi
    if [ -n "$user" ] && [ -n "$password" ]; then
      echo "CREATE USER $(sql_string "$user")@'%' IDENTIFIED BY $(sql_string "$password");"
      [ -n "$database" ] && echo "GRANT ALL ON \`$database\`.* TO $(sql_string "$user")@'%';"
    fi
    echo "FLUSH PRIVILEGES;"
  } | mariadb --protocol=socket --socket="$socket" -uroot

  client=(mariadb --protocol=socket --socket="$socket" -uroot)
  [ -n "$root_password" ] && client+=("--password=$root_password")
  [ -n "$database" ] && client+=("$database")
  for script in /docker-entrypoint-initdb.d/*; do
    # shellcheck disable=SC1090 # sources the user's init scripts
    case $script in
      *.sh) log "running $script"; source "$script" ;;
      *.sql) log "running $script"; "${client[@]}" <"$script" ;;
      *.sql.gz) log "running $script"; gunzip -c "$script" | "${client[@]}" ;;
      *) [ -e "$script" ] && log "ignoring $script" ;;
    esac
  done

  mariadb-admin --protocol=socket --socket="$socket" -uroot \
    ${root_password:+"--password=$root_password"} shutdown
  wait "$pid"
  log "initialized"
fi

exec "${as_mysql[@]}" "$@"
