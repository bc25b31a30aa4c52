#!/usr/bin/env bash
# Flame graph of the gateway under peerbench-like load: the server pinned to CPU 0,
# peerbench's C load client on CPU 1, py-spy sampling the server.
#
#   bash bench/profile_gateway.sh S1 20000 docs/flame-s1.svg   # 100 conns, 10 symbols
#   bash bench/profile_gateway.sh S2 1000  docs/flame-s2.svg   # 1000 conns, 10 symbols
#   GATEWAY_ARGS="--batch-ms 1.6" FORMAT=raw bash bench/profile_gateway.sh S1 20000 /tmp/s1.txt
#       extra serve options; FORMAT=raw writes collapsed stacks (text) instead of SVG
#   RELAY=1 bash bench/profile_gateway.sh S1 20000 docs/flame-relay-s1-r20000.svg
#       the gateway follows `tickwire publish` over NATS (nats-server and the publisher
#       unpinned, as in bench/run_peerbench_relay.sh)
#
# Needs `make install`, py-spy (`pip install '.[bench]'`) and `bash ../shared/peerbench/setup.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
SCEN="${1:-S1}"; RATE="${2:-20000}"; OUT="${3:-/tmp/flame-$SCEN.svg}"
PORT="${PORT:-9390}"; SECONDS_="${SECONDS_:-8}"
CONNS=100; [[ "$SCEN" == S2 ]] && CONNS=1000
LOADCLIENT="${LOADCLIENT:-../shared/peerbench/loadclient}"
SOURCE=(--rate "$RATE")
MARKET=()
if [[ -n "${RELAY:-}" ]]; then
  NATS_PORT="${NATS_PORT:-4397}"
  nats-server -a 127.0.0.1 -p "$NATS_PORT" >/dev/null 2>&1 &
  MARKET+=($!)
  sleep 0.5
  .venv/bin/tickwire publish --nats "nats://127.0.0.1:$NATS_PORT" --symbols 10 --rate "$RATE" \
    --max-seconds $((SECONDS_ + 30)) >/dev/null 2>&1 &
  MARKET+=($!)
  sleep 1
  SOURCE=(--source "nats://127.0.0.1:$NATS_PORT")
fi
taskset -c 0 .venv/bin/tickwire serve --port "$PORT" --symbols 10 "${SOURCE[@]}" ${GATEWAY_ARGS:-} \
  --max-seconds $((SECONDS_ + 20)) >/dev/null 2>/tmp/profile-gateway.err &
SERVER=$!
trap 'kill $SERVER ${MARKET[*]} 2>/dev/null || true' EXIT
sleep 1.5
taskset -c 1 "$LOADCLIENT" -p "$PORT" -P /ws -n "$CONNS" -k 10 \
  -m '{"op":"subscribe","channels":["book.SYM{i}"]}' -d $((SECONDS_ + 2)) -w 1 \
  > /tmp/profile-loadclient.json 2>&1 &
CLIENT=$!
sleep 2
.venv/bin/py-spy record -p "$SERVER" -d "$SECONDS_" -r 250 --idle -f "${FORMAT:-flamegraph}" -o "$OUT" >/dev/null
wait $CLIENT || true
tail -1 /tmp/profile-loadclient.json
echo "wrote $OUT"
