#!/usr/bin/env bash
# Fault soak (issue 14): mixed Route + Feedback for MINUTES against two replicas sharing one
# Redis, while the script kills things on a schedule:
#   at 10%  Redis SIGKILL, restarted 20 s later with its data (append-only file, fsync always)
#   at 25%  Redis SIGKILL; 15 s into the outage replica A SIGKILL, restarted 5 s later;
#           Redis restarted with its data 40 s after it went down
#   at 45%  replica B SIGTERM (graceful), restarted 5 s later
#   at 60%  Redis SIGKILL, restarted 20 s later EMPTY (its files deleted)
#   at 75%  replica B SIGKILL with Redis up, restarted 5 s later
# Each load client writes every feedback the service acknowledged (`mixed --acked`). At the
# end the script reads the shared outcome log and checks: every acknowledged feedback is in it
# exactly once, except those Redis held when it was wiped (lost with Redis's own data, counted
# separately: the script freezes Redis with SIGSTOP and copies its append-only files before the
# kill, so which outcomes went with it is read from those files, not guessed from clocks); no
# outcome is in it twice; the report's outcome total matches the log.
# One row a minute: RSS and open file descriptors of both replicas.
# Usage: benches/load/faults.sh [MINUTES] [PAIRS_PER_S]   (default 10 minutes at 50 pairs/s;
# keep MINUTES × 60 × PAIRS_PER_S under the log's 50,000-event window)
set -euo pipefail
cd "$(dirname "$0")/../.."
MINUTES=${1:-10}
RATE=${2:-50}
TOTAL=$((MINUTES * 60))
OUT=$(mktemp -d /tmp/tw-faults.XXXX)
RPORT=56401
PORTS=(50091 50092)
PREFIX=tw-faults
bin=target/release/tokenwise
cargo build --release --quiet --bin tokenwise --bench mixed
load=$(ls -t target/release/deps/mixed-* | grep -v '\.d$' | head -1)
. benches/load/lib.sh
LOADS=()
pid() { cat "$OUT/$1.pid" 2>/dev/null || true; }
cleanup() { kill $(pid redis) $(pid a) $(pid b) "${LOADS[@]}" 2>/dev/null || true; }
trap cleanup EXIT
export TOKENWISE_DECISION_SECRET="$(head -c 32 /dev/urandom | base64)"
mkdir -p "$OUT/redis" "$OUT/a" "$OUT/b" "$OUT/redis-at-wipe"

start_redis() {
  # Started from a subshell, so the kills below are not reported as this shell's jobs.
  (redis-server --port $RPORT --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always \
    --dir "$OUT/redis" >> "$OUT/redis.log" 2>&1 & echo $! > "$OUT/redis.pid")
  for _ in $(seq 50); do redis-cli -p $RPORT ping >/dev/null 2>&1 && break; sleep 0.1; done
}
# start_replica NAME PORT: a replica with its own spill file.
start_replica() {
  local name=$1 port=$2
  redis_policy "$OUT/$name" $RPORT $PREFIX
  (RUST_LOG=warn $bin serve --config "$OUT/$name/policy.toml" --deployment "$OUT/$name/deployment.toml" --no-auth \
    --listen "127.0.0.1:$port" --metrics-listen off 2>> "$OUT/$name/server.log" &
    echo $! > "$OUT/$name.pid")
  for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
}
say() { printf '%5s s  %s\n' $(( $(date +%s) - T0 )) "$*"; }
row() {
  local r=""
  for name in a b; do
    local p kb=- fds=-
    p=$(pid $name)
    if [ -n "$p" ] && [ -d "/proc/$p" ]; then
      kb=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$p/status")
      fds=$(ls "/proc/$p/fd" | wc -l)
    fi
    r="$r | $name: $kb MB, $fds fds"
  done
  say "replicas$r"
}
at() { while [ $(( $(date +%s) - T0 )) -lt "$1" ]; do sleep 0.2; done; }
pct() { echo $((TOTAL * $1 / 100)); }
kill_redis() { local p; p=$(pid redis); kill -9 "$p"; while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; }
schedule() {
  local t
  t=$(pct 10); at "$t"; say "Redis SIGKILL"; kill_redis
  at $((t + 20)); start_redis; say "Redis restarted with its data"
  t=$(pct 25); at "$t"; say "Redis SIGKILL"; kill_redis
  at $((t + 15)); say "replica A SIGKILL during the outage"; kill -9 "$(pid a)"
  at $((t + 20)); start_replica a ${PORTS[0]}; say "replica A restarted (Redis still down)"
  at $((t + 40)); start_redis; say "Redis restarted with its data"
  t=$(pct 45); at "$t"; say "replica B SIGTERM"; kill -TERM "$(pid b)"
  while kill -0 "$(pid b)" 2>/dev/null; do sleep 0.05; done
  at $((t + 5)); start_replica b ${PORTS[1]}; say "replica B restarted"
  t=$(pct 60); at "$t"; say "Redis frozen, its files copied, SIGKILL; restarting it empty"
  # Frozen first (appendfsync always: everything it ever answered is in its files), so the copy
  # holds exactly what the wipe takes.
  kill -STOP "$(pid redis)"; cp -r "$OUT/redis"/. "$OUT/redis-at-wipe"/
  kill_redis; rm -rf "$OUT/redis"/*
  at $((t + 20)); start_redis; say "Redis restarted empty"
  t=$(pct 75); at "$t"; say "replica B SIGKILL (Redis up)"; kill -9 "$(pid b)"
  at $((t + 5)); start_replica b ${PORTS[1]}; say "replica B restarted"
}

start_redis
start_replica a ${PORTS[0]}
start_replica b ${PORTS[1]}
T0=$(date +%s)
echo "fault soak: $MINUTES min, $RATE Route + Feedback pairs/s over two replicas, files in $OUT"
for i in 0 1; do
  "$load" --addr "127.0.0.1:${PORTS[$i]}" --rate $((RATE / 2)) --seconds "$TOTAL" --connections 1 \
    --acked "$OUT/acked-$i.txt" --json > "$OUT/load-$i.json" 2> "$OUT/load-$i.err" &
  LOADS+=($!)
done
row
schedule &
SCHED=$!
next_row=60
while kill -0 "${LOADS[0]}" 2>/dev/null || kill -0 "${LOADS[1]}" 2>/dev/null; do
  if [ $(( $(date +%s) - T0 )) -ge $next_row ]; then row; next_row=$((next_row + 60)); fi
  sleep 1
done
wait $SCHED || true
wait "${LOADS[@]}" || true
row
say "load done; letting the replicas drain"
sleep 15
row
redis-cli -p $RPORT --raw lrange "$PREFIX:events" 0 -1 > "$OUT/log.jsonl"
$bin report --addr "127.0.0.1:${PORTS[0]}" --since 2h --format json > "$OUT/report.json"
python3 - "$OUT" <<'PY'
import base64, json, sys, collections, os, re
out = sys.argv[1]
# Outcomes Redis held when it was wiped: every event it logged, from its append-only files.
at_wipe = set()
for root, _, files in os.walk(f"{out}/redis-at-wipe"):
    for f in files:
        data = open(os.path.join(root, f), 'rb').read()
        at_wipe.update(int(n) for n in re.findall(rb'\\?"nonce\\?":(\d+)', data))
def nonce(decision_id):
    payload = decision_id.split('.')[0]
    b = base64.urlsafe_b64decode(payload + '=' * (-len(payload) % 4))
    return int.from_bytes(b[9:17], 'little')
in_log = collections.Counter()
for line in open(f"{out}/log.jsonl"):
    line = line.strip()
    if not line:
        continue
    e = json.loads(line)
    if not e.get('counters_only'):
        in_log[e['nonce']] += 1
acked = {}
for i in (0, 1):
    for line in open(f"{out}/acked-{i}.txt"):
        ms, did = line.split()
        n = nonce(did)
        acked[n] = acked.get(n, 0) + 1
twice_acked = sum(1 for c in acked.values() if c > 1)
dups = sum(1 for c in in_log.values() if c > 1)
missing = [n for n in acked if in_log[n] == 0]
lost_with_redis = [n for n in missing if n in at_wipe]
lost = [n for n in missing if n not in at_wipe]
unacked_landed = sum(1 for n in in_log if n not in acked)
r = json.load(open(f"{out}/report.json"))
outcomes = r['total'].get('outcomes')
loads = [json.load(open(f"{out}/load-{i}.json")) for i in (0, 1)]
errors = {}
for l in loads:
    for rpc in ('route', 'feedback'):
        for code, n in l[rpc]['errors_by_code'].items():
            errors[f"{rpc} {code}"] = errors.get(f"{rpc} {code}", 0) + n
print(f"acknowledged feedbacks: {len(acked)} (acknowledged twice: {twice_acked})")
print(f"in the log after the run: {sum(in_log.values())} outcomes, {dups} of them more than once")
print(f"acknowledged and in the log exactly once: {sum(1 for n in acked if in_log[n] == 1)}")
print(f"in Redis when it was wiped, and gone with its data: {len(lost_with_redis)}")
print(f"acknowledged and LOST otherwise: {len(lost)}")
print(f"in the log, never acknowledged (answer lost with a killed replica): {unacked_landed}")
print(f"report outcome total: {outcomes} (log: {sum(in_log.values())})")
print(f"client errors by RPC and code: {errors}")
ok = not lost and dups == 0 and twice_acked == 0 and outcomes == sum(in_log.values())
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
