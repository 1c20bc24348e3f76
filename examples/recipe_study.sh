#!/usr/bin/env bash
# Which fine-tuning recipe wins on small data? Five recipes, 5-fold CV on the SAME folds of
# PneumoniaMNIST (624 real chest X-rays), each compared with the default by `medft cv compare`
# (paired patient bootstrap). Reproduces the table in docs/finetuning.md#which-recipe-wins.
#
#   bash examples/recipe_study.sh [OUT]                 # default OUT: recipe-study
#   SMOKE=1 bash examples/recipe_study.sh /tmp/smoke    # 2 folds, 1 epoch, tiny random model
#   RECIPES="default ema" bash examples/recipe_study.sh # a subset
#
# Recipes (every other setting is configs/medmnist.yaml shortened as in
# examples/pneumoniamnist_study.sh: 64 px, 4 epochs of which 2 head-only, lr 0.001):
#   default  freeze_unfreeze, the shipped recipe
#   ema      + an exponential moving average of the weights (--ema.enabled true, decay 0.9)
#   l2sp     + L2-SP toward the pretrained weights (--l2sp.alpha 0.1)
#   probe    linear probe: only the classifier trains, all 4 epochs
#   long     the default recipe for 8 epochs (2 head-only, 6 whole network)
#   long_ema long + EMA (the averaging can only matter once the backbone trains)
#   long_l2sp long + L2-SP (not in the default list: not run for the docs table)
# Writes OUT/data (PNGs + manifest), OUT/<recipe>/ (a `medft cv` study each) and
# OUT/compare_<recipe>.json + .txt (each recipe against `default`), then prints a table.
# Cost: six studies' worth of fits of tf_efficientnet_lite0 at 64 px (`long` counts twice);
# on the shared 2-core CPU about 5-15 minutes per study. Rerunning resumes (--resume).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${DATA:-}" ]; then
  for candidate in "$REPO/tests/data/corpus/pneumoniamnist" "$REPO/../shared/data/pneumoniamnist"; do
    if [ -f "$candidate/pneumoniamnist_test.npz" ]; then DATA="$candidate"; break; fi
  done
fi
DATA="${DATA:?no PneumoniaMNIST data found; set DATA=/path/to/pneumoniamnist}"
OUT="${1:-recipe-study}"
MEDFT="${MEDFT:-medft}"
SMOKE="${SMOKE:-0}"
RECIPES="${RECIPES:-default ema l2sp probe long long_ema}"

export HF_HUB_OFFLINE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

"$MEDFT" data import medmnist --input "$DATA" --out "$OUT/data/manifest.csv"

if [ "$SMOKE" = 1 ]; then
  FOLDS=2
  BASE=(--trainer.max_epochs 1 --model.unfreeze_epoch 0
        --model.backbone test_efficientnet --model.pretrained false)
  LONG=(--trainer.max_epochs 2)
else
  FOLDS=5
  BASE=(--trainer.max_epochs 4 --model.unfreeze_epoch 2 --model.lr 0.001)
  LONG=(--trainer.max_epochs 8)
fi

recipe_args() {
  case "$1" in
    default) ;;
    ema) echo "--ema.enabled true --ema.decay 0.9" ;;
    l2sp) echo "--l2sp.alpha 0.1" ;;
    probe) echo "--model.freeze linear_probe" ;;
    long) echo "${LONG[*]}" ;;
    long_ema) echo "${LONG[*]} --ema.enabled true --ema.decay 0.9" ;;
    long_l2sp) echo "${LONG[*]} --l2sp.alpha 0.1" ;;
    *) echo "unknown recipe $1" >&2; exit 2 ;;
  esac
}

for recipe in $RECIPES; do
  # shellcheck disable=SC2046  # the recipe's options are words on purpose
  "$MEDFT" cv --config "$REPO/configs/medmnist.yaml" --folds "$FOLDS" --seed 0 \
      --out "$OUT/$recipe" --resume -- \
      --data.manifest "$OUT/data/manifest.csv" --data.num_workers 0 \
      "${BASE[@]}" $(recipe_args "$recipe")
done

for recipe in $RECIPES; do
  [ "$recipe" = default ] && continue
  "$MEDFT" cv compare "$OUT/$recipe" "$OUT/default" --out "$OUT/compare_$recipe.json" \
      | tee "$OUT/compare_$recipe.txt"
done

python - "$OUT" $RECIPES <<'EOF'
import json
import sys
from pathlib import Path

out, recipes = Path(sys.argv[1]), sys.argv[2:]
print(f"{'recipe':8} {'pooled AUROC [95% CI]':26} {'fold mean +- sd':16} {'vs default (paired 95% CI)':34} seconds")
for recipe in recipes:
    summary = json.loads((out / recipe / "summary.json").read_text())
    label = summary["study"]["labels"][0]
    pooled = summary["pooled"]["repeat_0"]["auroc"]["per_class"][label]
    spread = summary["mean_sd"][f"auroc_{label}"]
    seconds = sum(json.loads(d.read_text())["seconds"] for d in (out / recipe).glob("fold_*/DONE"))
    diff = ""
    if recipe != "default":
        boot = json.loads((out / f"compare_{recipe}.json").read_text())
        boot = boot["pooled"]["repeat_0"][label]["paired_bootstrap"]
        diff = f"{boot['difference']:+.3f} [{boot['ci_low']:+.3f}, {boot['ci_high']:+.3f}] p={boot['p_value']:.3f}"
    print(
        f"{recipe:8} {pooled['value']:.3f} [{pooled['ci_low']:.3f}, {pooled['ci_high']:.3f}]"
        f"       {spread['mean']:.3f} +- {spread['sd']:.3f}   {diff:34} {seconds:.0f}"
    )
EOF
