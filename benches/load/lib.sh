# Shared by outage.sh, soak.sh and faults.sh (source it from the repository root).
# start_on_redis OUT RPORT PORT PREFIX [STORE_LINES]: a private redis-server on RPORT (no
# persistence, files in OUT) and the release server on PORT, with the example policy and a
# deployment file whose [store] is that Redis (spill file OUT/spill.jsonl, plus STORE_LINES); sets REDIS and
# SERVER to their pids and returns once the server accepts connections.
start_on_redis() {
  local out=$1 rport=$2 port=$3 prefix=$4 extra=${5:-}
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$out" >/dev/null 2>&1 &
  REDIS=$!
  sleep 0.5
  redis_policy "$out" "$rport" "$prefix" "$extra"
  export TOKENWISE_DECISION_SECRET="$(head -c 32 /dev/urandom | base64)"
  RUST_LOG=warn target/release/tokenwise serve --config "$out/policy.toml" --deployment "$out/deployment.toml" --no-auth \
    --listen "127.0.0.1:$port" --metrics-listen off 2> "$out/server.log" &
  SERVER=$!
  for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
}

# redis_policy DIR RPORT PREFIX [STORE_LINES]: DIR/policy.toml, the example policy, and
# DIR/deployment.toml, whose [store] is the Redis on RPORT with the spill file DIR/spill.jsonl.
redis_policy() {
  local dir=$1 rport=$2 prefix=$3 extra=${4:-}
  cat deploy/policy.toml > "$dir/policy.toml"
  printf '[store]\nkind = "redis"\nurl = "redis://127.0.0.1:%s"\nprefix = "%s"\nspill_file = "%s/spill.jsonl"\n%s' \
    "$rport" "$prefix" "$dir" "$extra" > "$dir/deployment.toml"
}
