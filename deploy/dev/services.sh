#!/usr/bin/env bash
# Runs every service natively, in the background, against the local Redis and MySQL
# that deps.sh starts: the development loop without containers (the original's
# scripts/dev.sh). Logs and pid files live in .dev/.
#
#   deploy/dev/services.sh up | down | restart | status | logs [service]
#
# Configuration comes from the environment (see .env.example); a .env file at the
# repository root is read first when present.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
state="$root/.dev"
services=(filter token llm history keyword gateway)
profile=${DEV_PROFILE:-debug}

cd "$root"
if [ -f .env ]; then set -a; . ./.env; set +a; fi
export REDIS_ADDR=${REDIS_ADDR:-127.0.0.1:${DEV_REDIS_PORT:-6379}}
export MYSQL_DSN=${MYSQL_DSN:-mysql://chat:chat@127.0.0.1:${DEV_MYSQL_PORT:-3306}/chatdb}
# Natively only the gateway's own port faces the network; the gRPC services and every
# metrics endpoint listen on loopback unless .env says otherwise.
export FILTER_LISTEN=${FILTER_LISTEN:-127.0.0.1:50052}
export TOKEN_LISTEN=${TOKEN_LISTEN:-127.0.0.1:50051}
export LLM_LISTEN=${LLM_LISTEN:-127.0.0.1:50055}
export HISTORY_LISTEN=${HISTORY_LISTEN:-127.0.0.1:50054}
export KEYWORD_LISTEN=${KEYWORD_LISTEN:-127.0.0.1:50053}
export GATEWAY_METRICS_LISTEN=${GATEWAY_METRICS_LISTEN:-127.0.0.1:9080}
export FILTER_METRICS_LISTEN=${FILTER_METRICS_LISTEN:-127.0.0.1:9052}
export TOKEN_METRICS_LISTEN=${TOKEN_METRICS_LISTEN:-127.0.0.1:9051}
export LLM_METRICS_LISTEN=${LLM_METRICS_LISTEN:-127.0.0.1:9055}
export HISTORY_METRICS_LISTEN=${HISTORY_METRICS_LISTEN:-127.0.0.1:9054}
export KEYWORD_METRICS_LISTEN=${KEYWORD_METRICS_LISTEN:-127.0.0.1:9053}

pid_of() { cat "$state/$1.pid" 2>/dev/null || true; }
running() { local pid; pid=$(pid_of "$1"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

up() {
  deploy/dev/deps.sh up
  local flags=()
  [ "$profile" = release ] && flags=(--release)
  cargo build "${flags[@]}" --bins
  mkdir -p "$state"
  for service in "${services[@]}"; do
    if running "$service"; then echo "$service: already running (pid $(pid_of "$service"))"; continue; fi
    nohup "target/$profile/chat-$service" >>"$state/$service.log" 2>&1 &
    echo $! >"$state/$service.pid"
    # History migrates the schema before it serves; let it finish before the gateway starts.
    sleep 0.3
    echo "$service: started (pid $!, log .dev/$service.log)"
  done
  for _ in $(seq 50); do curl -fs http://127.0.0.1:8080/health >/dev/null 2>&1 && break; sleep 0.2; done
  curl -fs http://127.0.0.1:8080/health >/dev/null 2>&1 \
    && echo "ready: http://localhost:8080 (first start: log in as admin; the password is ADMIN_PASSWORD, or: grep 'first user' .dev/gateway.log)" \
    || echo "the gateway does not answer yet; see .dev/gateway.log" >&2
}

down() {
  for service in "${services[@]}"; do
    if running "$service"; then kill "$(pid_of "$service")"; echo "$service: stopped"; fi
    rm -f "$state/$service.pid"
  done
}

status() {
  for service in "${services[@]}"; do
    if running "$service"; then echo "$service: running (pid $(pid_of "$service"))"; else echo "$service: stopped"; fi
  done
  deploy/dev/deps.sh status
}

logs() {
  if [ -n "${1:-}" ]; then tail -F "$state/$1.log"; else tail -F "${services[@]/#/$state/}".log; fi
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  restart) down; up ;;
  status) status ;;
  logs) shift; logs "$@" ;;
  *) echo "usage: $0 up|down|restart|status|logs [service]" >&2; exit 2 ;;
esac
