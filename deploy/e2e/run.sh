#!/usr/bin/env bash
# `make e2e`: builds every image, starts the stack with compose (project chat-e2e, settings
# from deploy/e2e/e2e.env), waits until every container is healthy, drives it from outside
# over HTTP as a user would, and removes every container, volume and network it made, also
# when a check fails or the run is interrupted.
#
# Checks: a chat answers 200 with a reply; the history then holds its 2 messages; a blocked
# text answers 400 "text blocked by filter" and is not stored; /search finds the chat; a user who keeps chatting
# gets 429 "quota_exceeded"; Prometheus has every service (one per docker/*.Dockerfile) as
# a scrape target and has scraped each (E2E_REQUIRE_METRICS=1: and each is up); with
# E2E_GATEWAYS (3) gateway replicas behind the proxy, a user limited to N chats a minute
# gets N, not 3N, and every replica answered some of them.
#
#   E2E_SKIP_BUILD=1        use the images as they are
#   Jaeger and Grafana run when their images are here (deploy/docker/up.sh decides)
#   GATEWAY_PORT, PROMETHEUS_PORT    host ports (8080, 9090)
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/docker/images.sh

project=${E2E_PROJECT:-chat-e2e}
env_file=deploy/e2e/e2e.env
gateway=http://127.0.0.1:${GATEWAY_PORT:-8080}
prometheus=http://127.0.0.1:${PROMETHEUS_PORT:-9090}
healthy_within=${E2E_HEALTHY_TIMEOUT:-180}
budget_up=30

# The env file's settings must win over whatever the caller's environment has.
while read -r name; do
  unset "$name"
done < <(sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' "$env_file")
# No collector unless Jaeger runs: an empty endpoint turns trace export off.
if ! docker image inspect "$JAEGER_IMAGE" >/dev/null 2>&1; then
  export OTEL_EXPORTER_OTLP_ENDPOINT=
fi

compose() { $COMPOSE --project-name "$project" --env-file "$env_file" "$@"; }
say() { echo "e2e: $*"; }

scratch=$(mktemp -d)
passed=0
failed=0

# Leaves nothing behind, and says so; on a failure first shows what the containers said.
finish() {
  local status=$?
  trap - EXIT INT TERM
  if { [ "$status" != 0 ] || [ "$failed" != 0 ]; } && [ -n "$(compose ps -q 2>/dev/null)" ]; then
    compose ps >&2 || true
    compose logs --no-color --tail=40 >&2 || true
  fi
  compose down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1 || true
  local label=label=com.docker.compose.project=$project
  local left
  left=$(docker ps -aq --filter "$label"; docker volume ls -q --filter "$label";
    docker network ls -q --filter "$label")
  if [ -n "$left" ]; then
    say "left behind after down: $(echo "$left" | tr '\n' ' ')"
    status=1
  else
    say "torn down: no container, volume or network of $project is left"
  fi
  rm -rf "$scratch"
  exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM

pass() { passed=$((passed + 1)); say "ok: $*"; }
fail() { failed=$((failed + 1)); say "FAILED: $*"; }

# request METHOD PATH [JSON]: sets $code and writes the body to $scratch/body.
# The credential of the next requests: `bearer KEY`, or none.
bearer=
request() {
  local args=(-sS -o "$scratch/body" -D "$scratch/headers" -w '%{http_code}' -X "$1" --max-time 30)
  [ $# -ge 3 ] && args+=(-H 'content-type: application/json' --data "$3")
  [ -n "$bearer" ] && args+=(-H "authorization: Bearer $bearer")
  code=$(curl "${args[@]}" "$gateway$2") || code=000
}

# json EXPRESSION: evaluates a Python expression over the last body, bound to `b`.
json() {
  python3 -c 'import json, sys; b = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' \
    "$scratch/body" "$1" 2>/dev/null || echo "<not json: $(head -c 200 "$scratch/body")>"
}

chat() { request POST /chat "{\"user_id\":\"$1\",\"text\":\"$2\"}"; }

# A user with a key, through the admin API; the key is left in $key.
user_with_key() {
  bearer=$(sed -n 's/^ADMIN_API_KEY=//p' "$env_file")
  request POST /admin/users "{\"user_id\":\"$1\"}"
  [ "$code" = 201 ] || fail "POST /admin/users $1: $code $(head -c 300 "$scratch/body")"
  request POST "/admin/users/$1/keys" '{"name":"e2e"}'
  key=$(json 'b.get("key", "")')
  bearer=
}

# --- build ---------------------------------------------------------------------------
if [ "${E2E_SKIP_BUILD:-0}" != 1 ]; then
  say "building the images"
  deploy/docker/build.sh
fi
# The proxy in front of the gateways: Debian's nginx when the image cannot be had.
if ! docker image inspect "$PROXY_IMAGE" >/dev/null 2>&1 && ! docker pull -q "$PROXY_IMAGE" >/dev/null 2>&1; then
  say "no $PROXY_IMAGE: building its stand-in"
  deploy/docker/standins.sh nginx
fi

# --- up --------------------------------------------------------------------------------
compose down --volumes --remove-orphans >/dev/null 2>&1 || true
for port in "${GATEWAY_PORT:-8080}" "${PROMETHEUS_PORT:-9090}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    say "127.0.0.1:$port is taken (make dev?): stop that, or set GATEWAY_PORT / PROMETHEUS_PORT"
    exit 1
  fi
done
say "starting the stack (project $project)"
gateways=${E2E_GATEWAYS:-3}
COMPOSE="$COMPOSE --project-name $project --env-file $env_file" UP_TIMEOUT=$healthy_within \
  GATEWAY_REPLICAS=$gateways deploy/docker/up.sh | tee "$scratch/up"
up_s=$(sed -n 's/.* healthy \([0-9.]*\) s after up$/\1/p' "$scratch/up")
if awk -v s="$up_s" -v b=$budget_up 'BEGIN { exit !(s > b) }'; then
  say "warning: up to healthy took ${up_s} s, over the ${budget_up} s budget"
fi

# --- the API, from outside -------------------------------------------------------------
chat e2e hello
if [ "$code" = 401 ] && [ "$(json 'b["error"]')" = unauthorized ]; then
  pass "a chat without a credential answers 401 \"unauthorized\""
else
  fail "no credential: $code $(head -c 300 "$scratch/body")"
fi
admin_password=$(sed -n 's/^ADMIN_PASSWORD=//p' "$env_file")
request POST /auth/login "{\"user_id\":\"admin\",\"password\":\"$admin_password\"}"
if [ "$code" = 200 ] && grep -qi '^set-cookie: chat_session=.*HttpOnly' "$scratch/headers"; then
  pass "the first user (admin, ADMIN_PASSWORD) logs in and gets an HttpOnly session cookie"
else
  fail "first-user login: $code $(head -c 300 "$scratch/body")"
fi
user_with_key e2e
e2e_key=$key
user_with_key e2e-quota
quota_key=$key
if shown=$(compose exec -T gateway chat-gateway admin user show e2e 2>&1) &&
  [[ "$shown" == *'"user_id":"e2e"'* ]]; then
  pass "the admin CLI in the container shows the user: ${shown:0:80}"
else
  fail "admin CLI: $shown"
fi

bearer=$e2e_key
chat e2e hello
reply=$(json 'b.get("reply", "")')
if [ "$code" = 200 ] && [ -n "$reply" ]; then
  pass "POST /chat answers 200 with a reply: ${reply:0:60}"
else
  fail "POST /chat: $code $(head -c 300 "$scratch/body")"
fi

request GET '/history?user_id=e2e'
roles=$(json '",".join(m["role"] for m in b)')
if [ "$code" = 200 ] && [ "$roles" = user,assistant ] && [ "$(json 'b[0]["text"]')" = hello ]; then
  pass "GET /history has the 2 messages of the chat (user, assistant)"
else
  fail "GET /history: $code $(head -c 300 "$scratch/body")"
fi

chat e2e 'foo bar'
if [ "$code" = 400 ] && [ "$(json 'b["error"]')" = 'text blocked by filter' ]; then
  pass "a blocked text answers 400 \"text blocked by filter\""
else
  fail "blocked text: $code $(head -c 300 "$scratch/body")"
fi
request GET '/history?user_id=e2e'
if [ "$(json 'len(b)')" = 2 ]; then
  pass "the blocked text was not stored"
else
  fail "history after the blocked text: $(head -c 300 "$scratch/body")"
fi

# The keyword service indexes saved messages within a second or so.
found=
for _ in $(seq 40); do
  request GET '/search?q=hello'
  found=$(json 'sum(1 for r in b["results"] if r["text"] == "hello")')
  [ "$code" = 200 ] && [ "$found" = 1 ] && break
  sleep 0.5
done
if [ "$code" = 200 ] && [ "$found" = 1 ]; then
  pass "GET /search finds the chat's message through the keyword service"
else
  fail "GET /search: $code $(head -c 300 "$scratch/body")"
fi

bearer=$quota_key
answered=0
for _ in $(seq 20); do
  chat e2e-quota 'tell me something'
  [ "$code" = 200 ] || break
  answered=$((answered + 1))
done
if [ "$code" = 429 ] && [ "$(json 'b["error"]')" = quota_exceeded ] && [ $answered -ge 1 ]; then
  pass "after $answered chats the quota is spent: 429 \"quota_exceeded\", $(json 'b.get("remaining")') left"
else
  fail "quota: after $answered chats $code $(head -c 300 "$scratch/body")"
fi

# --- several gateways, one limit ------------------------------------------------------
limit=4
bearer=$(sed -n 's/^ADMIN_API_KEY=//p' "$env_file")
request POST /admin/users "{\"user_id\":\"e2e-rate\",\"rate_limit_per_minute\":$limit,\"daily_limit\":1000000}"
[ "$code" = 201 ] || fail "POST /admin/users e2e-rate: $code $(head -c 300 "$scratch/body")"
request POST /admin/users/e2e-rate/keys '{"name":"e2e"}'
bearer=$(json 'b.get("key", "")')
running=$(compose ps -q gateway | wc -l)
ok=0
limited=0
header_limit=
for _ in $(seq $((limit * gateways))); do
  chat e2e-rate hi
  case $code in
    200) ok=$((ok + 1)) ;;
    429) limited=$((limited + 1)) ;;
  esac
  [ -n "$header_limit" ] ||
    header_limit=$(sed -n 's/^x-ratelimit-limit: *\([0-9]*\).*/\1/Ip' "$scratch/headers")
done
if [ "$running" = "$gateways" ] && [ $ok = $limit ] && [ $limited = $((limit * (gateways - 1))) ] &&
  [ "$header_limit" = $limit ]; then
  pass "$gateways gateways, a user limited to $limit a minute: $ok answered, $limited refused 429 (not $((limit * gateways)))"
else
  fail "$running of $gateways gateways running; limit $limit: $ok answered, $limited refused, X-RateLimit-Limit '$header_limit'"
fi
bearer=

# --- Prometheus ------------------------------------------------------------------------
bearer=
services=$(for file in docker/*.Dockerfile; do basename "$file" .Dockerfile; done | sort)
require_up=${E2E_REQUIRE_METRICS:-0}
for _ in $(seq 60); do
  curl -sS --max-time 5 -o "$scratch/body" "$prometheus/api/v1/targets?state=active" || true
  # service health, for every service target scraped at least once
  scraped=$(json '"\n".join(sorted("%s %s" % (t["labels"]["job"], t["health"]) for t in b["data"]["activeTargets"] if not t["lastScrape"].startswith("0001")))')
  missing=$(comm -23 <(echo "$services") <(awk '{print $1}' <<<"$scraped" | sort))
  down=$(grep -v ' up$' <<<"$scraped" | grep -F -w -f <(echo "$services") || true)
  [ -z "$missing" ] && { [ "$require_up" != 1 ] || [ -z "$down" ]; } && break
  sleep 0.5
done
if [ -z "$missing" ] && { [ "$require_up" != 1 ] || [ -z "$down" ]; }; then
  pass "Prometheus scrapes every service: $(grep -F -w -f <(echo "$services") <<<"$scraped" |
    tr '\n' ',' | sed 's/,$//; s/,/, /g')"
else
  fail "Prometheus targets: missing [$(tr '\n' ' ' <<<"$missing")], not up [$(tr '\n' ' ' <<<"$down")]"
fi

# Every replica served some of the chats above, so the limit held across them.
for _ in $(seq 60); do
  curl -sS --max-time 5 -o "$scratch/body" "$prometheus/api/v1/query" \
    --data-urlencode 'query=count(sum by (instance) (http_server_requests_total{job="gateway",route="/chat"}) > 0)' || true
  served=$(json 'b["data"]["result"][0]["value"][1] if b["data"]["result"] else 0')
  [ "$served" = "$gateways" ] && break
  sleep 0.5
done
if [ "$served" = "$gateways" ]; then
  pass "each of the $gateways gateway replicas answered chats (Prometheus scrapes every replica)"
else
  fail "gateway replicas that answered /chat, as Prometheus sees them: $served of $gateways"
fi

say "$passed passed, $failed failed"
[ "$failed" = 0 ]
