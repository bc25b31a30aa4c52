#!/usr/bin/env bash
# How often peerbench's C load client sleeps and is woken, against picows_preframed and
# against tickwire (S1 r20000, both with their default 1 ms tick), with each side's CPU
# over the same 4 s. Each wake-up costs the writing server kernel time (try_to_wake_up);
# see docs/benchmarks.md.
#
#   bash bench/client_wakeups.sh               # needs perf, make install, ../shared/peerbench/setup.sh
#   ROUNDS=3 TW_ARGS="--tick-pacing clock" bash bench/client_wakeups.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PB="${PB_VENV:-/tmp/pb-venv}/bin/python"

# measure LABEL PORT SUBSCRIBE SERVER-COMMAND...: the server on CPU 0, the client on CPU 1.
measure() {
  local label=$1 port=$2 sub=$3
  shift 3
  taskset -c 0 "$@" >/dev/null 2>&1 &
  local server=$!
  sleep 1.5
  taskset -c 1 ../shared/peerbench/loadclient -p "$port" -P /ws -n 100 -k 10 -m "$sub" \
    -d 9 -w 1 >/tmp/wakeups-client.json 2>&1 &
  local client=$!
  sleep 3
  perf stat -e context-switches,cpu-clock -p "$server" -- sleep 4 2>/tmp/wakeups-server.txt &
  local perf_server=$!
  perf stat -e context-switches,cpu-clock -p "$client" -- sleep 4 2>/tmp/wakeups-client.txt
  wait "$perf_server"
  field() { awk -v e="$2" '$0 ~ e {print $1}' "$1"; }
  echo "$label: client context switches $(field /tmp/wakeups-client.txt context-switches)," \
    "client CPU $(field /tmp/wakeups-client.txt cpu-clock) ms," \
    "server passes ~$(field /tmp/wakeups-server.txt context-switches)," \
    "server CPU $(field /tmp/wakeups-server.txt cpu-clock) ms (over 4 s)"
  wait "$client" || true
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
}

for _ in $(seq "${ROUNDS:-1}"); do
  measure picows_preframed 9393 '{"op":"subscribe","ch":"book.SYM{i}"}' \
    "$PB" ../shared/peerbench/servers/picows_preframed.py --port 9393 --channels 10 \
    --rate 20000 --size 150 --max-seconds 16
  # shellcheck disable=SC2086
  measure tickwire 9394 '{"op":"subscribe","channels":["book.SYM{i}"]}' \
    .venv/bin/tickwire serve --port 9394 --symbols 10 --rate 20000 --max-seconds 16 ${TW_ARGS:-}
done
