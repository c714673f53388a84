#!/usr/bin/env bash
# Coverage of the report's 95% interval on quality kept, measured in replay: seeds 1-20 on the
# bundled held-out split, shadow pairs at --shadow-rate (default 0.2). The recorded data holds
# every tier's outcome, so the truth (quality kept on the tasks routed below premium) is known;
# prints each seed's estimate, interval and truth, then the share of intervals that cover it.
#   benches/quality/coverage.sh [RATE]        TOKENWISE=path/to/tokenwise to skip the build
set -euo pipefail
rate="${1:-0.2}"
tw="${TOKENWISE:-}"
if [ -z "$tw" ]; then
  cargo build --release --quiet
  tw="${CARGO_TARGET_DIR:-target}/release/tokenwise"
fi
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
for seed in $(seq 1 20); do
  "$tw" replay --data models/data/routellm-train.jsonl.gz --split holdout \
    --tiers mixtral-8x7b-instruct,gpt-4-1106-preview --bar 0.77 --shuffle \
    --seed "$seed" --shadow-rate "$rate" --json >> "$out"
done
python3 - "$out" <<'PY'
import json, sys
covered = runs = 0
for seed, line in enumerate(open(sys.argv[1]), 1):
    s = json.loads(line)["shadow"]
    k, pairs, truth = s["kept"], s["pairs"], s["true_kept"]
    if k is None:
        print("seed %2d: %d pairs, no interval" % (seed, pairs))
        continue
    runs += 1
    covered += bool(s["kept_covers"])
    print("seed %2d: kept %.3f [%.3f, %.3f] on %d pairs, truth %.3f, %s"
          % (seed, k["value"], k["low"], k["high"], pairs, truth,
             "covers" if s["kept_covers"] else "MISSES"))
print("coverage %d/%d = %.0f%% (nominal 95%%)" % (covered, runs, 100.0 * covered / max(runs, 1)))
PY
