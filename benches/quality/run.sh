#!/usr/bin/env bash
# Routing quality on data the bundled model never trained on (README "Proof: replay on held-out
# data"). Builds the release binary, then:
#   1. offline RouteLLM metrics of the bundled model on the held-out fifth;
#   2. replay of the held-out fifth, two tiers, bar 0.77, seeds 1-5 (learning on);
#   3. domain shift: a model trained without GSM8K and without the MMLU high_school_* and
#      college_* subjects, replayed on exactly those tasks (all splits: it saw none of them);
#   4. the multi-tier set (benches/quality/multitier, four tiers, three coarse workflows), bar
#      0.779, seeds 1-10 in both orders (MULTITIER_SEEDS="1 2 ... 20" for more: one seed in ten
#      swings its cost by 2x, so 10 seeds cannot tell changes of a few percent apart), with
#      workflow labels and with --strip-labels; then shuffled for a caller that runs no shadow
#      tier (--no-shadow-runs: the default explore_by, "auto", then explores by substitution).
# Every replay's caller runs the shadow tiers its decisions name (exploration pairs under the
# default explore_by = "auto") unless --no-shadow-runs says otherwise.
# Usage: benches/quality/run.sh [OUT_DIR]   (about 10 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/quality}
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/tokenwise
data=models/data/routellm-train.jsonl.gz
pair=(--cheap mixtral-8x7b-instruct --premium gpt-4-1106-preview)
tiers=mixtral-8x7b-instruct,gpt-4-1106-preview
shifted='gsm8k,mmlu/high_school,mmlu/college'

echo "== offline, held-out split"
$bin eval --data $data --split holdout "${pair[@]}" | tee "$out/eval-holdout.txt"

summary() {
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); h=r['hindsight'] or {}; print(sys.argv[2], 'quality %.4f saving %.4f premium share %.3f | 2nd half quality %.4f saving %.4f | hindsight saving %.4f' % (r['quality'], r['saving_vs_premium'], r['tier_share']['gpt-4-1106-preview'], r['late_quality'], r['late_saving_vs_premium'], h.get('saving_vs_premium', float('nan'))))" "$1" "$2"
}
echo "== replay, held-out split, bar 0.77: file order (grouped by subject), then shuffled"
for order in "" --shuffle; do
  for seed in 1 2 3 4 5; do
    f="$out/replay-holdout${order}-$seed.json"
    $bin replay --data $data --split holdout --tiers $tiers --bar 0.77 --seed $seed $order --json > "$f"
    summary "$f" "seed $seed ${order:-file order}"
  done
done

echo "== domain shift: train without $shifted"
$bin train --data $data --split train --workflows "!gsm8k,!mmlu/high_school,!mmlu/college" \
  "${pair[@]}" --out "$out/shift-model.json"
$bin eval --data $data --split all --workflows $shifted "${pair[@]}" --model "$out/shift-model.json" \
  | tee "$out/eval-shift.txt"
for order in "" --shuffle; do
  for seed in 1 2 3; do
    f="$out/replay-shift${order}-$seed.json"
    $bin replay --data $data --split all --workflows $shifted --model "$out/shift-model.json" \
      --tiers $tiers --bar 0.77 --seed $seed $order --json > "$f"
    summary "$f" "seed $seed ${order:-file order}"
    python3 -c "import json,sys; print('  within 0.01 of the bar after', json.load(open(sys.argv[1]))['feedbacks_to_bar'], 'feedbacks')" "$f"
  done
done

echo "== multi-tier set: four tiers, workflows math/science/quiz, bar 0.779 (all-premium 0.7986 - 0.02)"
mdata=benches/quality/multitier/multitier.jsonl.gz
mtiers=small-7b,mixtral-8x7b-instruct,coder-34b,gpt-4-1106-preview
mbar=0.779
summarise=benches/quality/summarise.py
labelled=()
unlabelled=()
for order in "" --shuffle; do
  for seed in ${MULTITIER_SEEDS:-1 2 3 4 5 6 7 8 9 10}; do
    f="$out/replay-multitier${order}-$seed.json"
    $bin replay --data $mdata --split all --tiers $mtiers --bar $mbar --seed $seed $order --json > "$f"
    python3 $summarise line "$f" "seed $seed ${order:-file order}, labelled"
    labelled+=("$f")
    f="$out/replay-multitier-nolabels${order}-$seed.json"
    $bin replay --data $mdata --split all --tiers $mtiers --bar $mbar --seed $seed $order \
      --strip-labels --json > "$f"
    python3 $summarise line "$f" "seed $seed ${order:-file order}, no labels"
    unlabelled+=("$f")
  done
done
python3 $summarise worst "labelled (${#labelled[@]} runs)" "${labelled[@]}"
python3 $summarise worst "no labels (${#unlabelled[@]} runs)" "${unlabelled[@]}"

echo "== multi-tier set, a caller that runs no shadow tier (--no-shadow-runs: exploration by substitution)"
unpaired=()
unpaired_unlabelled=()
for seed in ${MULTITIER_SEEDS:-1 2 3 4 5 6 7 8 9 10}; do
  f="$out/replay-multitier-noshadow-shuffle-$seed.json"
  $bin replay --data $mdata --split all --tiers $mtiers --bar $mbar --seed $seed --shuffle \
    --no-shadow-runs --json > "$f"
  python3 $summarise line "$f" "seed $seed shuffled, labelled, no shadow runs"
  unpaired+=("$f")
  f="$out/replay-multitier-noshadow-nolabels-shuffle-$seed.json"
  $bin replay --data $mdata --split all --tiers $mtiers --bar $mbar --seed $seed --shuffle \
    --no-shadow-runs --strip-labels --json > "$f"
  python3 $summarise line "$f" "seed $seed shuffled, no labels, no shadow runs"
  unpaired_unlabelled+=("$f")
done
python3 $summarise worst "labelled, no shadow runs (${#unpaired[@]} runs)" "${unpaired[@]}"
python3 $summarise worst "no labels, no shadow runs (${#unpaired_unlabelled[@]} runs)" "${unpaired_unlabelled[@]}"
