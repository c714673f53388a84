# Shared by outage.sh and soak.sh (source it from the repository root).
# start_on_redis OUT RPORT PORT PREFIX [STORE_LINES]: a private redis-server on RPORT (no
# persistence, files in OUT) and the release server on PORT, with the example policy and a
# [store] section for that Redis (spill file OUT/spill.jsonl, plus STORE_LINES); sets REDIS and
# SERVER to their pids and returns once the server accepts connections.
start_on_redis() {
  local out=$1 rport=$2 port=$3 prefix=$4 extra=${5:-}
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$out" >/dev/null 2>&1 &
  REDIS=$!
  sleep 0.5
  cat deploy/policy.toml > "$out/policy.toml"
  printf '\n[store]\nkind = "redis"\nurl = "redis://127.0.0.1:%s"\nprefix = "%s"\nspill_file = "%s/spill.jsonl"\n%s' \
    "$rport" "$prefix" "$out" "$extra" >> "$out/policy.toml"
  export TOKENWISE_DECISION_SECRET="$(head -c 32 /dev/urandom | base64)"
  RUST_LOG=warn target/release/tokenwise serve --config "$out/policy.toml" --no-auth \
    --listen "127.0.0.1:$port" --metrics-listen off 2> "$out/server.log" &
  SERVER=$!
  for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
}
