#!/usr/bin/env bash
# Route latency during a Redis outage with a large spill backlog, against the same server with
# Redis up (issue 14): h2load at a fixed 5k/s on p50-size tasks, SECONDS per point.
#   1. Redis up: Route alone.
#   2. Redis killed; feedback (replays of the held-out records through the server) builds a
#      spill backlog of BACKLOG_RUNS x 1,832 acknowledged outcomes.
#   3. Redis still down, backlog on disk, feedback still arriving: Route again.
# Usage: benches/load/outage.sh [SECONDS] [BACKLOG_RUNS]     (needs redis-server and h2load)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
RUNS=${2:-5}
OUT=$(mktemp -d /tmp/tw-outage.XXXX)
RPORT=56390
PORT=50081
bin=target/release/tokenwise
cargo build --release --quiet
python3 benches/load/frames.py "$OUT" >/dev/null
REDIS= SERVER= FEED=
trap 'kill $REDIS $SERVER $FEED 2>/dev/null || true' EXIT
. benches/load/lib.sh
start_on_redis "$OUT" $RPORT $PORT tw-outage $'refresh_ms = 250\ntimeout_ms = 100\n'
point() {
  local log="$OUT/$1.log"
  h2load -D "$SECS" --warm-up-time 1 -c 10 -m 1 --rps 500 -d "$OUT/p50.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' --log-file "$log" \
    "http://127.0.0.1:$PORT/tokenwise.v1.Router/Route" >/dev/null 2>&1
  read -r n p50 p99 p999 bad < <(python3 benches/load/summary.py "$log")
  printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$n" "$p50" "$p99" "$p999" "$bad"
}
feed() { $bin replay --addr 127.0.0.1:$PORT --data models/data/routellm-train.jsonl.gz --split holdout >/dev/null 2>&1; }
echo "| point | requests | p50 µs | p99 µs | p99.9 µs | non-200 |"
echo "|---|---|---|---|---|---|"
point "redis up"
kill -9 $REDIS; wait $REDIS 2>/dev/null || true
for _ in $(seq "$RUNS"); do feed; done
lines=$(wc -l < "$OUT/spill.jsonl" 2>/dev/null || echo 0)
( while true; do feed; done ) &
FEED=$!
point "redis down, $lines outcomes spilled, feedback flowing"
kill $FEED 2>/dev/null || true
echo
echo "spill file: $(wc -l < "$OUT/spill.jsonl") lines, $(du -h "$OUT/spill.jsonl" | cut -f1)"
