#!/usr/bin/env bash
# Builds the service images, docker/<service>.Dockerfile -> $CHAT_IMAGE_PREFIX/<service>:$CHAT_TAG,
# one after another so the stages they share are built once; prints the time and each image's
# size, and fails on an image over MAX_IMAGE_MB (100).
#
# usage: deploy/docker/build.sh [service]...     (no names: every docker/*.Dockerfile)
#   EXTRA_CA_CERT=/etc/ssl/certs/ca-certificates.crt   a CA bundle to trust in the builds and
#                                                     the images (a TLS-intercepting proxy)
#   VERBOSE=1                                         show the build output (else in a log)
#   RUST_IMAGE, RUNTIME_IMAGE                         base images (deploy/docker/images.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/docker/images.sh

max_mb=${MAX_IMAGE_MB:-100}
logdir=${TMPDIR:-/tmp}/chat-image-builds
mkdir -p "$logdir"

if [ $# -gt 0 ]; then
  services=("$@")
else
  services=()
  for file in docker/*.Dockerfile; do
    services+=("$(basename "$file" .Dockerfile)")
  done
fi

# The part every Dockerfile shares must be byte-identical, or the layer cache stops sharing it.
shared_part() { sed -n '/^ARG RUST_IMAGE/,/^# ---- service-specific from here ----$/p' "$1"; }
reference=docker/${services[0]}.Dockerfile
for service in "${services[@]}"; do
  file=docker/$service.Dockerfile
  [ -f "$file" ] || { echo "build: no $file" >&2; exit 2; }
  if ! diff <(shared_part "$reference") <(shared_part "$file") >/dev/null; then
    echo "build: the shared part of $file differs from $reference:" >&2
    diff <(shared_part "$reference") <(shared_part "$file") >&2 || true
    exit 1
  fi
done

if [ -n "${EXTRA_CA_CERT:-}" ]; then
  cmp -s "$EXTRA_CA_CERT" deploy/docker/ca/extra-ca.crt ||
    cp "$EXTRA_CA_CERT" deploy/docker/ca/extra-ca.crt
fi

started=$SECONDS
failed=0
for service in "${services[@]}"; do
  image=$CHAT_IMAGE_PREFIX/$service:$CHAT_TAG
  log=$logdir/$service.log
  begun=$SECONDS
  command=(docker build --force-rm -f "docker/$service.Dockerfile" --build-arg "RUST_IMAGE=$RUST_IMAGE"
    --build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE" -t "$image" .)
  if [ "${VERBOSE:-0}" = 1 ]; then
    "${command[@]}" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
  else
    status=0
    "${command[@]}" >"$log" 2>&1 || status=$?
  fi
  if [ "$status" != 0 ]; then
    tail -40 "$log" >&2
    echo "build: $image failed (whole log: $log)" >&2
    exit 1
  fi
  bytes=$(docker image inspect -f '{{.Size}}' "$image")
  mb=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1e6 }')
  verdict=ok
  if awk -v b="$bytes" -v m="$max_mb" 'BEGIN { exit !(b > m * 1e6) }'; then
    verdict="OVER ${max_mb} MB"
    failed=1
  fi
  printf 'build: %-22s %4d s  %6s MB  %s\n' "$image" $((SECONDS - begun)) "$mb" "$verdict"
done
echo "build: ${#services[@]} images in $((SECONDS - started)) s"
exit $failed
