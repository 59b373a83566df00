#!/usr/bin/env bash
# `make up`: starts the compose stack from the images as they are, waits until every
# container is healthy, and says how long that took and where to look.
#
#   Jaeger and Grafana start when their images are here or can be pulled; air-gapped,
#   with only the stand-ins of deploy/docker/standins.sh, the rest starts without them.
#   UP_TIMEOUT=180                   seconds to wait for healthy before giving up
#   COMPOSE                          the compose command (deploy/docker/images.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/docker/images.sh

timeout=${UP_TIMEOUT:-180}
started=$(date +%s%N)
services=()
missing=()
for service in $($COMPOSE config --services); do
  case $service in
    jaeger) image=$JAEGER_IMAGE ;;
    grafana) image=$GRAFANA_IMAGE ;;
    *) services+=("$service"); continue ;;
  esac
  if docker image inspect "$image" >/dev/null 2>&1 || timeout 60 docker pull -q "$image" >/dev/null 2>&1; then
    services+=("$service")
  else
    missing+=("$service")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "up: no image for ${missing[*]} (no registry reachable?): starting without them"
fi
# GATEWAY_REPLICAS=N: that many gateways behind the proxy.
$COMPOSE up -d --no-build --scale "gateway=${GATEWAY_REPLICAS:-1}" "${services[@]}"
deadline=$((SECONDS + timeout))
while :; do
  states=$($COMPOSE ps -a -q | xargs -r docker inspect -f \
    '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}healthy{{end}}')
  if [ -n "$states" ] && ! grep -qv ' running healthy$' <<<"$states"; then
    break
  fi
  if [ $SECONDS -ge $deadline ]; then
    echo "up: not healthy within $timeout s:" >&2
    grep -v ' running healthy$' <<<"$states" >&2
    exit 1
  fi
  sleep 0.2
done
elapsed=$(awk -v ns=$(($(date +%s%N) - started)) 'BEGIN { printf "%.1f", ns / 1e9 }')
echo "up: $(wc -l <<<"$states") containers healthy ${elapsed} s after up"
host=${PUBLISH_HOST:-127.0.0.1}
echo "up: UI and API http://$host:${GATEWAY_PORT:-8080}  Prometheus http://$host:${PROMETHEUS_PORT:-9090}"
case " ${services[*]} " in
  *" grafana "*) echo "up: Grafana http://$host:${GRAFANA_PORT:-3000}" ;;
esac
case " ${services[*]} " in
  *" jaeger "*) echo "up: Jaeger http://$host:${JAEGER_PORT:-16686}" ;;
esac
