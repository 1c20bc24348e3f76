#!/usr/bin/env bash
# A 5-fold cross-validation study on real chest X-rays: the 624-image PneumoniaMNIST test
# split (MedMNIST v2, CC BY 4.0) kept in tests/data/corpus/pneumoniamnist in the repository.
# Reproduces docs/tutorials/pneumoniamnist.md.
#
#   bash examples/pneumoniamnist_study.sh [OUT]          # default OUT: pneumoniamnist-study
#   DATA=/path/to/pneumoniamnist bash examples/pneumoniamnist_study.sh /tmp/pmnist
#   SMOKE=1 bash examples/pneumoniamnist_study.sh /tmp/smoke   # 2 folds, 1 epoch, tiny model
#
# Writes OUT/data/manifest.csv (+ PNGs), OUT/audit/{audit.json,audit.html} and
# OUT/study/{folds.csv,fold_*/,oof_predictions.csv,summary.json,report.html}, then prints
# the pooled out-of-fold AUROC with its 95% CI and the per-fold AUROCs.
# Cost: 5 fits of tf_efficientnet_lite0 at 64 px for 4 epochs; about 1-3 minutes per fold on
# an idle 2-core CPU, more on a busy one. Rerunning continues an interrupted study (--resume).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${DATA:-$REPO/tests/data/corpus/pneumoniamnist}"
OUT="${1:-pneumoniamnist-study}"
MEDFT="${MEDFT:-medft}"
SMOKE="${SMOKE:-0}"   # 1: the same steps with a tiny random-init model (what CI runs)

export HF_HUB_OFFLINE=1                        # the lite0 ImageNet weights ship with medft
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" # torch CPU threads; 1 is steadier on a shared box

# 1. The .npz arrays -> 28x28 PNGs + a manifest (every image is its own patient here).
"$MEDFT" data import medmnist --input "$DATA" --out "$OUT/data/manifest.csv"

# 2. Shortcut audit of the whole set (headers, raw intensities, thumbnail/border probes).
"$MEDFT" data audit --input "$OUT/data/manifest.csv" --out "$OUT/audit"

# 3. Patient-grouped, label-stratified 5-fold CV. The recipe is configs/medmnist.yaml
#    (ImageNet-pretrained tf_efficientnet_lite0, 28 px upsampled to 64, head-only first),
#    shortened to 4 epochs (2 head-only, 2 whole network) at lr 0.001.
if [ "$SMOKE" = 1 ]; then
  FOLDS=2
  RECIPE=(--trainer.max_epochs 1 --model.unfreeze_epoch 0
          --model.backbone test_efficientnet --model.pretrained false)
else
  FOLDS=5
  RECIPE=(--trainer.max_epochs 4 --model.unfreeze_epoch 2 --model.lr 0.001)
fi
"$MEDFT" cv --config "$REPO/configs/medmnist.yaml" --folds "$FOLDS" --seed 0 --out "$OUT/study" \
    --resume -- \
    --data.manifest "$OUT/data/manifest.csv" \
    "${RECIPE[@]}" \
    --data.num_workers 0

# 4. The headline numbers, read back from summary.json.
python - "$OUT/study/summary.json" <<'EOF'
import json
import sys

summary = json.load(open(sys.argv[1]))
pooled = summary["pooled"]["repeat_0"]
auroc = pooled["auroc"]["per_class"]["pneumonia"]
print(f"pooled out-of-fold AUROC {auroc['value']:.3f} (95% CI {auroc['ci_low']:.3f}-{auroc['ci_high']:.3f})")
for name in ("sensitivity", "specificity"):
    rate = pooled["at_operating_point"]["pneumonia"][name]
    print(f"{name} at each fold's threshold {rate['value']:.3f} ({rate['ci_low']:.3f}-{rate['ci_high']:.3f})")
folds = ", ".join(f"{fold['auroc_pneumonia']:.3f}" for fold in summary["folds"])
spread = summary["mean_sd"]["auroc_pneumonia"]
print(f"per-fold AUROC {folds}; mean {spread['mean']:.3f} +- {spread['sd']:.3f}")
EOF
echo "report: $OUT/study/report.html"
