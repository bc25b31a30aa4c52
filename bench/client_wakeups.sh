#!/usr/bin/env bash
# How often peerbench's C load client sleeps and is woken, against picows_preframed and
# against tickwire at the same write rate (S1 r20000, --batch-ms 1.6). Each wake-up costs
# the writing server kernel time (try_to_wake_up); see docs/benchmarks.md.
#
#   bash bench/client_wakeups.sh       # needs perf, make install, ../shared/peerbench/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
measure() {
  taskset -c 1 ../shared/peerbench/loadclient -p $1 -P /ws -n 100 -k 10 -m "$2" -d 9 -w 1 > /tmp/cs-client.json 2>&1 &
  C=$!
  sleep 3
  perf stat -e context-switches,cpu-clock -p $C -- sleep 4 2>&1 | grep -E "context-switches|cpu-clock" | awk '{print $1, $2}'
  perf stat -e context-switches,cpu-clock -p $3 -- sleep 1 2>&1 | grep -E "context-switches" | awk '{print "server-cs/s", $1}'
  wait $C
}
(cd ../shared/peerbench/servers && taskset -c 0 "${PB_VENV:-/tmp/pb-venv}/bin/python" picows_preframed.py --port 9393 --channels 10 --rate 20000 --size 150 --max-seconds 20 >/dev/null 2>&1 &)
sleep 1.5; P=$(pgrep -f "picows_preframed.py --port 9393")
echo "picows (client over 4 s):"; measure 9393 '{"op":"subscribe","ch":"book.SYM{i}"}' $P
kill $P
taskset -c 0 .venv/bin/tickwire serve --port 9394 --symbols 10 --rate 20000 $TW_ARGS --max-seconds 20 >/dev/null 2>&1 &
T=$!; sleep 1.5
echo "tickwire_t16 (client over 4 s):"; measure 9394 '{"op":"subscribe","channels":["book.SYM{i}"]}' $T
kill $T
