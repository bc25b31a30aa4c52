#!/usr/bin/env bash
# Server memory per connection: RSS with N idle-ish subscribers (10 updates/s per
# channel) minus RSS before they connected, for tickwire and picows_preframed.
#
#   bash bench/memory_per_conn.sh 10000
#
# Needs `make install` and `bash ../shared/peerbench/setup.sh` (loadclient, /tmp/pb-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10000}"
PB="${PEERBENCH:-../shared/peerbench}"
PBPY="${PB_PYTHON:-/tmp/pb-venv/bin/python}"
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
measure() {  # name port cmd...
  local name=$1 port=$2; shift 2
  taskset -c 0 "$@" >/dev/null 2>&1 &
  local pid=$!
  sleep 2
  local before; before=$(rss "$pid")
  taskset -c 1 "$PB/loadclient" -p "$port" -P /ws -n "$N" -k 10 -c 60 \
    -m '{"op":"subscribe","channels":["book.SYM{i}"]}' -d 6 -w 1 >/tmp/mem-$name.json 2>&1 &
  local client=$!
  # RSS once every connection is up (the client prints # measure_start after connecting)
  for _ in $(seq 1 600); do grep -q measure_start /tmp/mem-$name.json 2>/dev/null && break; sleep 0.1; done
  sleep 3
  local during; during=$(rss "$pid")
  wait "$client" || true
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  local connected; connected=$(tail -1 /tmp/mem-$name.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["connected"])')
  python3 -c "print(f'| $name | $connected | {$before/1024:.1f} | {$during/1024:.1f} | {($during-$before)/$connected:.1f} |')"
}
echo "| server | connections | RSS idle MiB | RSS with connections MiB | KiB per connection |"
echo "|---|---:|---:|---:|---:|"
measure tickwire 9480 .venv/bin/tickwire serve --port 9480 --symbols 10 --rate 10 --max-seconds 120
measure picows_preframed 9481 "$PBPY" "$PB/servers/picows_preframed.py" --port 9481 --channels 10 --rate 10 --max-seconds 120
