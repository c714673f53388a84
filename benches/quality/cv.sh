#!/usr/bin/env bash
# Cross-validation over workflows on the bundled training split: the place to compare learning
# constants without touching the held-out fifth (README "Proof", docs/experiments.md).
#
# Six folds: GSM8K, and the 57 MMLU subjects in name order dealt round-robin into five. For each
# fold a complexity model is trained on the training split without the fold's workflows, then
# the fold's training-split tasks are replayed with it: two tiers (mixtral, gpt-4), a bar of the
# fold's all-premium quality less 0.03, seeds 1-10, file order and shuffled, labelled and with
# labels stripped. Prints per fold and overall the worst run's shortfall from the bar, the mean
# saving against premium, and the mean and worst cost against the hindsight per-workflow mix.
#
# Usage: benches/quality/cv.sh [OUT_DIR]   (about 10 minutes on 2 cores; the six models are
# trained once and kept in OUT_DIR). TOKENWISE_BIN=path replays with another binary (no build);
# REPLAY_ARGS="--no-shadow-runs" adds replay options to every run (that one: a caller that runs
# no shadow tier, so exploration substitutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/quality/cv}
mkdir -p "$out"
if [ -z "${TOKENWISE_BIN:-}" ]; then
  cargo build --release --quiet
fi
bin=${TOKENWISE_BIN:-target/release/tokenwise}
data=models/data/routellm-train.jsonl.gz
pair=(--cheap mixtral-8x7b-instruct --premium gpt-4-1106-preview)
tiers=mixtral-8x7b-instruct,gpt-4-1106-preview
seeds=${SEEDS:-"1 2 3 4 5 6 7 8 9 10"}

# One line per fold: its workflow prefixes, comma-separated.
mapfile -t folds < <(python3 - "$data" <<'EOF'
import gzip, json, sys
subjects = sorted({json.loads(l)["workflow"] for l in gzip.open(sys.argv[1], "rt")} - {"gsm8k"})
print("gsm8k")
for f in range(5):
    print(",".join(subjects[f::5]))
EOF
)

jobs=()
for k in "${!folds[@]}"; do
  fold=${folds[$k]}
  model="$out/model-$k.json"
  if [ ! -f "$model" ]; then
    leave_out=$(echo "$fold" | sed 's/^/!/; s/,/,!/g')
    $bin train --data $data --split train --workflows "$leave_out" "${pair[@]}" --out "$model" >/dev/null
  fi
  bar=$(python3 - "$data" "$fold" <<'EOF'
import gzip, json, sys
keep = tuple(sys.argv[2].split(","))
# The training split: fnv1a(id) % 5 != 0, as `--split train` (FNV-1a 64).
def fnv(s):
    h = 0xcbf29ce484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h
scores = [r["outcomes"]["gpt-4-1106-preview"]["score"]
          for r in map(json.loads, gzip.open(sys.argv[1], "rt"))
          if r["workflow"].startswith(keep) and fnv(r["id"]) % 5 != 0]
print(f"{sum(scores) / len(scores) - 0.03:.4f}")
EOF
)
  for order in "" --shuffle; do
    for strip in "" --strip-labels; do
      for seed in $seeds; do
        o=file; [ -z "$order" ] || o=shuffled
        l=labelled; [ -z "$strip" ] || l=stripped
        f="$out/fold$k-$o-$l-$seed.json"
        jobs+=("$bin replay --data $data --split train --workflows $fold --model $model --tiers $tiers --bar $bar --seed $seed $order $strip ${REPLAY_ARGS:-} --json > $f")
      done
    done
  done
done
printf '%s\n' "${jobs[@]}" | xargs -P "${JOBS:-2}" -I{} sh -c "{}"

python3 - "$out" "${#folds[@]}" <<'EOF'
import glob, json, os, statistics as st, sys
out, n = sys.argv[1], int(sys.argv[2])
def runs(pattern):
    rs = []
    for f in sorted(glob.glob(os.path.join(out, pattern))):
        r = json.load(open(f))
        h = r.get("hindsight") or {}
        rs.append((r["quality"] - r["bar"], r["saving_vs_premium"],
                   r["cost_usd"] / h["cost_usd"] if h.get("cost_usd") else float("nan")))
    return rs
def line(label, rs):
    if not rs:
        return
    q, s, c = zip(*rs)
    print(f"{label:<22} runs {len(rs):3d}  worst q-bar {min(q):+.4f}  mean q-bar {st.mean(q):+.4f}"
          f"  saving {st.mean(s):.3f}  cost/hindsight {st.mean(c):.2f} (worst {max(c):.2f})")
for labels in ("labelled", "stripped"):
    every = []
    for k in range(n):
        rs = runs(f"fold{k}-*-{labels}-*.json")
        line(f"fold {k} {labels}", rs)
        every += rs
    line(f"all folds {labels}", every)
EOF
