# shellcheck shell=bash
# Image names the scripts in deploy/ use, each overridable from the environment. The same
# defaults are written in compose.yaml and docker/*.Dockerfile; keep the three in step.
# Sourced, not run.

: "${RUST_IMAGE:=rust:1-bookworm}"
: "${RUNTIME_IMAGE:=debian:bookworm-slim}"
: "${REDIS_IMAGE:=redis:7}"
: "${MYSQL_IMAGE:=mariadb:10.11}"
: "${PROMETHEUS_IMAGE:=prom/prometheus:v2.53.3}"
: "${JAEGER_IMAGE:=jaegertracing/jaeger:2.20.0}"
: "${GRAFANA_IMAGE:=grafana/grafana:13.1.0}"
: "${PROXY_IMAGE:=nginx:1.27}"

# The project's own images: $CHAT_IMAGE_PREFIX/<service>:$CHAT_TAG.
: "${CHAT_IMAGE_PREFIX:=chat}"
: "${CHAT_TAG:=latest}"

export RUST_IMAGE RUNTIME_IMAGE REDIS_IMAGE MYSQL_IMAGE PROMETHEUS_IMAGE JAEGER_IMAGE \
  GRAFANA_IMAGE PROXY_IMAGE CHAT_IMAGE_PREFIX CHAT_TAG

# The compose command: the v2 plugin where there is one, else Debian's docker-compose.
if [ -z "${COMPOSE:-}" ]; then
  if docker compose version >/dev/null 2>&1; then
    COMPOSE="docker compose"
  else
    COMPOSE="docker-compose"
  fi
fi
