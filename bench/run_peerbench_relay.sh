#!/usr/bin/env bash
# peerbench with tickwire as a *relay*: the gateway follows `tickwire publish` over NATS
# and forwards the publisher's encoded messages (docs/scaling.md, "Relay"). The market
# (publisher + nats-server) runs outside the measured process, as an exchange feed
# would; its CPU is sampled separately and written next to the results.
#
#   SCENARIOS=S1 RATES=20000 OUT=/tmp/relay.jsonl bash bench/run_peerbench_relay.sh
#   SERVERS=picows_preframed ...   also runs those peers, one invocation per rate, same file
#   GATEWAY_ARGS="--batch-ms 2" NAME=tickwire_relay_b2 ...   gateway options, result label
#   PUBLISHER_ARGS="--tick-ms 1.6" ...   publisher options (its batching period)
#
# Per (scenario, rate): start nats-server and the publisher at that rate, run peerbench
# with the gateway only (`--source nats://`), stop them. The gateway is pinned to CPU 0
# and the load client to CPU 1 (peerbench); MARKET_CPU (default: unpinned) pins the
# publisher and nats-server.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERBENCH="${PEERBENCH:-../shared/peerbench}"
OUT="${OUT:-/tmp/tickwire-relay.jsonl}"
SERVERS="${SERVERS:-}"
SCENARIOS="${SCENARIOS:-S1,S2}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
MARKET_CPU="${MARKET_CPU:-0,1}"
NATS_PORT="${NATS_PORT:-4399}"
NAME="${NAME:-tickwire_relay}"
GATEWAY_ARGS="${GATEWAY_ARGS:-}"
PUBLISHER_ARGS="${PUBLISHER_ARGS:-}"
MARKET_NICE="${MARKET_NICE:-0}"
[[ -z "${APPEND:-}" ]] && : > "$OUT"
market_log="${OUT%.jsonl}-market.jsonl"
[[ -z "${APPEND:-}" ]] && : > "$market_log"
cpu_s() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
for scen in ${SCENARIOS//,/ }; do
  if [[ -n "${RATES:-}" ]]; then rates="$RATES"; elif [[ $scen == S1 ]]; then rates=100,1000,5000,20000; else rates=100,1000; fi
  for rate in ${rates//,/ }; do
    nice -n "$MARKET_NICE" taskset -c "$MARKET_CPU" nats-server -a 127.0.0.1 -p "$NATS_PORT" >/dev/null 2>&1 &
    nats_pid=$!
    sleep 0.5
    nice -n "$MARKET_NICE" taskset -c "$MARKET_CPU" .venv/bin/tickwire publish --nats "nats://127.0.0.1:$NATS_PORT" \
      --symbols 10 --rate "$rate" $PUBLISHER_ARGS --max-seconds 300 >/dev/null 2>&1 &
    pub_pid=$!
    sleep 1
    t0=$(date +%s.%N); p0=$(cpu_s $pub_pid); n0=$(cpu_s $nats_pid)
    if [[ -n "$SERVERS" ]]; then
      python3 "$PEERBENCH/run.py" --servers "$SERVERS" --scenarios "$scen" --rates "$rate" \
        --duration "$DURATION" --warmup "$WARMUP" --no-ceiling --out "$OUT"
    fi
    python3 "$PEERBENCH/run.py" --server-name "$NAME" --scenarios "$scen" --rates "$rate" \
      --duration "$DURATION" --warmup "$WARMUP" --no-ceiling --out "$OUT" --server-cwd "$PWD" \
      --server-cmd "exec .venv/bin/tickwire serve --port {port} --symbols {channels} --source nats://127.0.0.1:$NATS_PORT --admin-port off $GATEWAY_ARGS --max-seconds {max_seconds}" \
      --path /ws --sub-msg '{"op":"subscribe","channels":["book.SYM{i}"]}'
    t1=$(date +%s.%N); p1=$(cpu_s $pub_pid); n1=$(cpu_s $nats_pid)
    python3 -c "import json,os,sys; t=float(sys.argv[3])-float(sys.argv[2]); hz=os.sysconf('SC_CLK_TCK'); print(json.dumps({'scenario':sys.argv[1],'rate_per_channel':int(sys.argv[4]),'publisher_cpu_pct':round((int(sys.argv[6])-int(sys.argv[5]))/hz/t*100,1),'nats_server_cpu_pct':round((int(sys.argv[8])-int(sys.argv[7]))/hz/t*100,1),'note':'averaged over the peer and relay runs of this rate'}))" \
      "$scen" "$t0" "$t1" "$rate" "$p0" "$p1" "$n0" "$n1" >> "$market_log"
    kill "$pub_pid" "$nats_pid" 2>/dev/null || true
    wait "$pub_pid" "$nats_pid" 2>/dev/null || true
  done
done
echo "results: $OUT; market CPU: $market_log"
