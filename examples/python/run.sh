#!/usr/bin/env bash
# Runs the Python example against a real server: a virtualenv with requirements.txt (PyPI), the
# gRPC code generated from the proto, a `tokenwise serve` on a spare port (embedded defaults),
# then client.py. Usage: examples/python/run.sh [path/to/tokenwise]   (CI runs it)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# The binary given, else a debug or release build of this checkout, else one built now.
bin=${1:-}
if [ -z "$bin" ]; then
  for b in "$root/target/debug/tokenwise" "$root/target/release/tokenwise"; do
    [ -x "$b" ] && bin=$b && break
  done
fi
if [ -z "$bin" ]; then
  echo "examples/python: no tokenwise binary yet; building one (cargo build)" >&2
  (cd "$root" && cargo build --quiet --bin tokenwise)
  bin=$root/target/debug/tokenwise
fi
if [ ! -x "$bin" ]; then
  echo "examples/python: $bin is not an executable tokenwise binary" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
if ! "$work/venv/bin/pip" install --quiet -r "$here/requirements.txt"; then
  echo "examples/python: cannot install from PyPI (no registry?); skipped" >&2
  exit 0
fi
mkdir -p "$work/gen"
"$work/venv/bin/python" -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$work/gen" --grpc_python_out="$work/gen" "$root/proto/tokenwise/v1/router.proto"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" --metrics-listen off &
server=$!
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
PYTHONPATH="$work/gen" "$work/venv/bin/python" "$here/client.py" "127.0.0.1:$port"
