#!/usr/bin/env bash
# Soak: mixed Route + Feedback at a fixed rate for MINUTES against one server on Redis, one
# row per minute: calls, p99 per RPC, errors, server RSS and Redis memory. Fails (exit 1) on
# any error, or when the server's RSS in the last minute is more than 25% above the second
# minute's (a leak, not warm-up). Issue 14.
# Usage: benches/load/soak.sh [MINUTES] [RATE]      (default 10 minutes at 2,000 pairs/s)
set -euo pipefail
cd "$(dirname "$0")/../.."
MINUTES=${1:-10}
RATE=${2:-2000}
OUT=$(mktemp -d /tmp/tw-soak.XXXX)
RPORT=56391
PORT=50082
bin=target/release/tokenwise
cargo build --release --quiet --bin tokenwise --bench mixed
load=$(ls -t target/release/deps/mixed-* | grep -v '\.d$' | head -1)
REDIS= SERVER=
trap 'kill $REDIS $SERVER 2>/dev/null || true' EXIT
. benches/load/lib.sh
start_on_redis "$OUT" $RPORT $PORT tw-soak
echo "| minute | pairs/s | Route p99 ms | Feedback p99 ms | errors | server RSS MB | Redis used MB |"
echo "|---|---|---|---|---|---|---|"
rss=()
failed=0
for m in $(seq "$MINUTES"); do
  "$load" --addr 127.0.0.1:$PORT --rate "$RATE" --seconds 59 --json > "$OUT/m$m.json"
  kb=$(awk '/VmRSS/ {print $2}' /proc/$SERVER/status)
  redis_mb=$(redis-cli -p $RPORT info memory | awk -F: '/^used_memory:/ {printf "%.1f", $2 / 1048576}')
  rss+=("$kb")
  read -r per route fb errors < <(python3 -c "
import json,sys; r=json.load(open(sys.argv[1]))
print('%.0f %.3f %.3f %d' % (r['feedback']['per_s'], r['route']['p99_ms'], r['feedback']['p99_ms'], r['route']['errors'] + r['feedback']['errors']))" "$OUT/m$m.json")
  printf '| %s | %s | %s | %s | %s | %.1f | %s |\n' "$m" "$per" "$route" "$fb" "$errors" "$(echo "$kb / 1024" | bc -l)" "$redis_mb"
  [ "$errors" = 0 ] || failed=1
done
if [ "${#rss[@]}" -ge 3 ]; then
  first=${rss[1]}; last=${rss[-1]}
  if [ "$last" -gt $((first * 125 / 100)) ]; then
    echo "RSS grew from $((first / 1024)) MB (minute 2) to $((last / 1024)) MB: more than 25%"
    failed=1
  fi
fi
exit $failed
