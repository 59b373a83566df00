#!/usr/bin/env bash
# Starts (or stops) a local Redis and MariaDB for development and tests, natively,
# with their data under .dev/ in the repository. Idempotent: a server already
# answering on the port is used as it is.
#
#   deploy/dev/deps.sh up | down | status
#
# Environment: DEV_REDIS_PORT (6379), DEV_MYSQL_PORT (3306). The MySQL user
# chat/chat may create databases (tests make one each); the database chatdb is
# made for `make dev`.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
state="$root/.dev"
redis_port=${DEV_REDIS_PORT:-6379}
mysql_port=${DEV_MYSQL_PORT:-3306}
mysql_sock="$state/mysql/mysqld.sock"

redis_up() { redis-cli -p "$redis_port" ping >/dev/null 2>&1; }
mysql_up() { mysqladmin --protocol=tcp -h127.0.0.1 -P"$mysql_port" -uchat -pchat ping >/dev/null 2>&1; }

need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "deps: $1 not found; install it with: apt-get install -y $2" >&2
    exit 1
  }
}

start_redis() {
  if redis_up; then echo "deps: redis already answers on :$redis_port"; return; fi
  need redis-server redis-server
  mkdir -p "$state/redis"
  redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize yes \
    --dir "$state/redis" --logfile "$state/redis/redis.log" \
    --pidfile "$state/redis/redis.pid" --save "" --appendonly no
  for _ in $(seq 50); do redis_up && break; sleep 0.1; done
  redis_up || { echo "deps: redis did not start; see $state/redis/redis.log" >&2; exit 1; }
  echo "deps: redis up on :$redis_port"
}

start_mysql() {
  if mysql_up; then echo "deps: mysql already answers on :$mysql_port"; return; fi
  need mariadbd mariadb-server
  mkdir -p "$state/mysql"
  if [ ! -d "$state/mysql/data/mysql" ]; then
    mariadb-install-db --user="$(id -un)" --datadir="$state/mysql/data" \
      --auth-root-authentication-method=socket --skip-test-db >"$state/mysql/install.log" 2>&1
  fi
  nohup mariadbd --user="$(id -un)" --datadir="$state/mysql/data" \
    --socket="$mysql_sock" --port="$mysql_port" --bind-address=127.0.0.1 \
    --pid-file="$state/mysql/mysqld.pid" --log-error="$state/mysql/error.log" \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
    --innodb-flush-log-at-trx-commit=2 --skip-log-bin >/dev/null 2>&1 &
  for _ in $(seq 100); do [ -S "$mysql_sock" ] && mysqladmin --socket="$mysql_sock" ping >/dev/null 2>&1 && break; sleep 0.2; done
  mariadb --socket="$mysql_sock" -uroot <<'SQL'
CREATE USER IF NOT EXISTS 'chat'@'%' IDENTIFIED BY 'chat';
CREATE USER IF NOT EXISTS 'chat'@'localhost' IDENTIFIED BY 'chat';
GRANT ALL PRIVILEGES ON *.* TO 'chat'@'%';
GRANT ALL PRIVILEGES ON *.* TO 'chat'@'localhost';
CREATE DATABASE IF NOT EXISTS chatdb CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
FLUSH PRIVILEGES;
SQL
  mysql_up || { echo "deps: mariadb did not start; see $state/mysql/error.log" >&2; exit 1; }
  echo "deps: mariadb up on :$mysql_port (user chat/chat, database chatdb)"
}

stop_pidfile() {
  local pidfile=$1
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$pidfile"
}

case "${1:-up}" in
  up) start_redis; start_mysql ;;
  down)
    stop_pidfile "$state/redis/redis.pid"
    stop_pidfile "$state/mysql/mysqld.pid"
    echo "deps: stopped what deps.sh started (data kept in $state)" ;;
  status)
    redis_up && echo "redis: up on :$redis_port" || echo "redis: down"
    mysql_up && echo "mysql: up on :$mysql_port" || echo "mysql: down" ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
