#!/usr/bin/env bash
# `make instructions`: the instructions each service runs per chat, counted by callgrind.
# A count, not a time: the same binaries give the same figures (within a fraction of a
# percent) however busy the machine is, where `make bench`'s CPU seconds move by 10-20 %
# from run to run on a shared VM. User-space only: the kernel's share (sockets, wakeups)
# is not in it, so a change that saves system calls shows in `make bench`, not here.
#
# Every service runs natively under `valgrind --tool=callgrind` (instrumentation off
# until warm), against the local Redis and MySQL (deps.sh), a fresh database and Redis
# prefix, a minimal OpenAI-compatible provider, AUTH_MODE=none (authentication's cost is
# `make bench`'s to report), limits out of reach. WARM chats first, then COUNT counted.
#
#   deploy/dev/instructions.sh [BIN_DIR] [OUT_DIR]      (WARM=30 COUNT=300 by default)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/target/release}
out=${2:-$root/target/instructions}
warm=${WARM:-30}
count=${COUNT:-300}
here="$root/deploy/dev/instructions"
command -v valgrind >/dev/null || { echo "instructions: valgrind is missing: apt-get install -y valgrind" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out"
mariadb -h127.0.0.1 -P"${DEV_MYSQL_PORT:-3306}" -uchat -pchat \
  -e "DROP DATABASE IF EXISTS chat_instructions; CREATE DATABASE chat_instructions CHARACTER SET utf8mb4"

export REDIS_ADDR=127.0.0.1:${DEV_REDIS_PORT:-6379}
export MYSQL_DSN=mysql://chat:chat@127.0.0.1:${DEV_MYSQL_PORT:-3306}/chat_instructions
export REDIS_KEY_PREFIX="instructions-$$:" AUTH_MODE=none RUST_LOG=warn
export LLM_PROVIDER=openai OPENAI_API_KEY=sk-instructions OPENAI_BASE_URL=http://127.0.0.1:18099/v1
export GATEWAY_LISTEN=127.0.0.1:18080 GATEWAY_METRICS_LISTEN=127.0.0.1:19080
port=51051
for service in token filter keyword history llm; do
  upper=$(echo "$service" | tr a-z A-Z)
  export "${upper}_LISTEN=127.0.0.1:$port" "${upper}_ADDR=http://127.0.0.1:$port"
  export "${upper}_METRICS_LISTEN=127.0.0.1:$((port - 51051 + 19051))"
  port=$((port + 1))
done
# Valgrind runs each process some 50 times slower: deadlines to match, limits out of reach.
for setting in FILTER_TIMEOUT_MS TOKEN_TIMEOUT_MS HISTORY_TIMEOUT_MS ACCOUNTS_TIMEOUT_MS \
  KEYWORD_TIMEOUT_MS RATE_LIMIT_REDIS_TIMEOUT_MS STORE_TIMEOUT_MS HISTORY_SAVE_TIMEOUT_MS \
  REDIS_TIMEOUT_MS; do
  export "$setting=30000"
done
export LLM_TIMEOUT_MS=60000 DAILY_LIMIT=1000000000
export RATE_LIMIT_PER_MINUTE=10000000 READ_RATE_LIMIT_PER_MINUTE=10000000 ADDRESS_RATE_LIMIT_PER_MINUTE=10000000

services=(filter token llm history keyword gateway)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
python3 "$here/provider.py" 18099 &
pids+=($!)
for service in "${services[@]}"; do
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/$service.%p.out" \
    "$bin/chat-$service" >"$out/$service.log" 2>&1 &
  pids+=($!)
  sleep 1
done
for _ in $(seq 300); do curl -fs http://127.0.0.1:18080/health >/dev/null 2>&1 && break; sleep 1; done
python3 "$here/client.py" "$warm" 18080
for pid in "${pids[@]:1}"; do callgrind_control --instr=on "$pid" >/dev/null 2>&1; done
python3 "$here/client.py" "$count" 18080
for pid in "${pids[@]:1}"; do callgrind_control --dump "$pid" >/dev/null 2>&1; done

total=0
printf '%-10s %14s\n' service "instructions/chat"
for service in "${services[@]}"; do
  counted=$(cat "$out/$service".*.out.* 2>/dev/null | awk '/^totals:/ { if ($2 > max) max = $2 } END { print max + 0 }')
  per_chat=$((counted / count))
  total=$((total + per_chat))
  printf '%-10s %14d\n' "$service" "$per_chat"
done
printf '%-10s %14d\n' total "$total"
echo "profiles: callgrind_annotate $out/<service>.<pid>.out.1 (add --inclusive=yes for callers' totals)"
