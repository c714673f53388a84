#!/usr/bin/env bash
# Load benchmark of the running server with an independent load generator (h2load), against the
# real Route handler and, in the same run, a no-op handler of the same binary (--bench-noop).
#
#   benches/load/run.sh [SECONDS_PER_POINT] [STORE_CONFIG]
#
# Reports throughput, p50/p99/p99.9 latency, errors (from the server's own counters: gRPC
# errors travel in trailers, which h2load does not read) and server RSS, as a markdown table.
# SECONDS_PER_POINT defaults to 20; the last router point runs 60 s for the RSS figure.
# Saturation is measured last, ROUNDS times (default 3) alternating the no-op and the router
# (both servers up side by side): this kind of shared host drifts by more than the difference
# measured, so the ratio quoted is the median of the per-round ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-20}
CONFIG=${2:-}
OUT=$(mktemp -d /tmp/tw-load.XXXX)
POINT=0
PORT=50071

if ! command -v h2load >/dev/null 2>&1; then
  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nghttp2-client
fi
cargo build --release --quiet
python3 benches/load/frames.py "$OUT" >&2

start_server() { # $1 = extra flags; serves on $PORT, logs to $OUT/server-$PORT.log
  local cfg=()
  [ -n "$CONFIG" ] && cfg=(--config "$CONFIG" --no-auth)
  # --config needs a strong decision secret; a fresh one per run is all a benchmark needs.
  export TOKENWISE_DECISION_SECRET="${TOKENWISE_DECISION_SECRET:-$(head -c 32 /dev/urandom | base64)}"
  RUST_LOG=warn,tokenwise::server=info ./target/release/tokenwise serve --log-format json --listen 127.0.0.1:$PORT --metrics-listen off "${cfg[@]}" $1 2> "$OUT/server-$PORT.log" &
  SERVER=$!
  for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
stop_server() { # $1 = pid, $2 = port
  RSS=$(awk '/VmRSS/ {print $2}' /proc/$1/status)
  HWM=$(awk '/VmHWM/ {print $2}' /proc/$1/status)
  kill -TERM $1; wait $1 || true
  ERRORS=$(grep -o '"route_err":[0-9]*' "$OUT/server-$2.log" | cut -d: -f2 || echo "?")
  OKS=$(grep -o '"route_ok":[0-9]*' "$OUT/server-$2.log" | cut -d: -f2 || echo "?")
}
point() { # $1 label, $2 frame, $3 secs, $4 = h2load rate args
  local log="$OUT/point-$((++POINT)).log"
  rm -f "$log"
  local res
  res=$(timeout $(( $3 + 30 )) h2load -D "$3" --warm-up-time 1 $4 -d "$OUT/$2.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' --log-file "$log" \
    "http://127.0.0.1:$PORT/tokenwise.v1.Router/Route" 2>&1)
  rps=$(echo "$res" | grep -o 'finished in [^,]*, [0-9.]* req/s' | grep -o '[0-9.]* req/s' | cut -d' ' -f1)
  read -r n p50 p99 p999 bad < <(python3 benches/load/summary.py "$log")
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$MODE" "$1" "$rps" "$p50" "$p99" "$p999" "$bad"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load generator and server share it"
echo
echo "| handler | point | req/s | p50 µs | p99 µs | p99.9 µs | non-200 |"
echo "|---|---|---|---|---|---|---|"
for MODE in noop router; do
  if [ $MODE = noop ]; then start_server --bench-noop; else start_server ""; fi
  point "1k/s p50-task" p50 "$SECS" "-c 4 -m 1 --rps 250"
  point "5k/s p50-task" p50 "$SECS" "-c 10 -m 1 --rps 500"
  point "10k/s p50-task" p50 "$SECS" "-c 20 -m 1 --rps 500"
  point "5k/s 2KB-task" 2kb "$SECS" "-c 10 -m 1 --rps 500"
  [ $MODE = router ] && point "sustained 5k/s p90-task" p90 60 "-c 10 -m 1 --rps 500"
  stop_server $SERVER $PORT
  echo "| $MODE | server counters | route ok $OKS, errors $ERRORS | RSS ${RSS} kB | peak ${HWM} kB | | |"
done

# Saturation, interleaved: no-op on one port, router on the next, alternating.
ROUNDS=${ROUNDS:-3}
NOOP_PORT=$PORT; ROUTER_PORT=$((PORT + 1))
PORT=$NOOP_PORT; start_server --bench-noop; NOOP_PID=$SERVER
PORT=$ROUTER_PORT; start_server ""; ROUTER_PID=$SERVER
RATIOS=()
for round in $(seq "$ROUNDS"); do
  MODE=noop; PORT=$NOOP_PORT; point "saturation p50-task, round $round" p50 "$SECS" "-c 4 -m 32"
  NOOP_RPS=$rps
  MODE=router; PORT=$ROUTER_PORT; point "saturation p50-task, round $round" p50 "$SECS" "-c 4 -m 32"
  RATIOS+=("$(python3 -c "print(f'{$rps / $NOOP_RPS:.3f}')")")
done
stop_server $NOOP_PID $NOOP_PORT
echo "| noop | server counters (saturation) | route ok $OKS, errors $ERRORS | | | | |"
stop_server $ROUTER_PID $ROUTER_PORT
echo "| router | server counters (saturation) | route ok $OKS, errors $ERRORS | | | | |"
echo
echo "saturation router/no-op per round: ${RATIOS[*]}; median $(printf '%s\n' "${RATIOS[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
