#!/usr/bin/env bash
# Run ../shared/peerbench with tickwire and the peer servers side by side, in ONE run,
# then draw the chart. Compare only numbers from the same run: the host's speed varies.
#
#   bash bench/run_peerbench.sh                       # S1+S2, tickwire vs picows_preframed
#   SERVERS=picows_preframed,socketify_pubsub,rawfanout_rate RATES=1000,5000,20000,40000 \
#     SCENARIOS=S1 OUT=/tmp/sweep.jsonl bash bench/run_peerbench.sh
#   APPEND=1 ... adds to OUT instead of starting it afresh (S2 and an S1 sweep in one file)
#   NAME=tickwire_t16 GATEWAY_ARGS="--batch-ms 1.6" SERVERS= APPEND=1 ...
#     another tickwire configuration, under its own name (SERVERS empty: no peers rerun)
#
# Needs: `make install` (the .venv) and `bash ../shared/peerbench/setup.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERBENCH="${PEERBENCH:-../shared/peerbench}"
OUT="${OUT:-/tmp/tickwire-peers.jsonl}"
SERVERS="${SERVERS-picows_preframed}"
NAME="${NAME:-tickwire}"
GATEWAY_ARGS="${GATEWAY_ARGS:-}"
SCENARIOS="${SCENARIOS:-S1,S2}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
rates=()
[[ -n "${RATES:-}" ]] && rates=(--rates "$RATES")
servers=()
[[ -n "$SERVERS" ]] && servers=(--servers "$SERVERS")
fresh=(--fresh)
[[ -n "${APPEND:-}" ]] && fresh=()   # APPEND=1: add to OUT (e.g. a sweep after S1+S2)
python3 "$PEERBENCH/run.py" --server-name "$NAME" "${servers[@]}" \
  --scenarios "$SCENARIOS" "${rates[@]}" --duration "$DURATION" --warmup "$WARMUP" \
  --no-ceiling --out "$OUT" "${fresh[@]}" --server-cwd "$PWD" \
  --server-cmd '.venv/bin/tickwire serve --port {port} --symbols {channels} --rate {rate} --max-seconds {max_seconds} '"$GATEWAY_ARGS" \
  --path /ws --sub-msg '{"op":"subscribe","channels":["book.SYM{i}"]}'
.venv/bin/python bench/peerbench_chart.py "$OUT" --png "${PNG:-docs/peerbench.png}"
