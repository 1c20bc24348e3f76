"""What an ensemble of a study's fold models and test-time augmentation do, measured.

Trains a K-fold study on synthetic chest X-rays, then scores a separate synthetic held-out
set (other patients, other seed) four ways: one fold model, the same with TTA, the
study's ensemble, and the ensemble with TTA. Reports AUROC, expected calibration error
and Brier score of the calibrated probabilities, each variant against the single model
with a paired patient-level bootstrap interval of the difference.

    python examples/ensemble_tta.py --out ens            # 3 folds, lite0 (tens of minutes)
    python examples/ensemble_tta.py --out ens --smoke    # tiny model and data (about a minute)

Writes ens/results.json and prints a table (docs/inference.md holds a measured one).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from medft.data.synth import synthesize
from medft.eval import cv
from medft.eval.calibration import brier_score, expected_calibration_error
from medft.eval.metrics import auroc, paired_bootstrap
from medft.quickstart import recipe_path
from medft.workflows.cv import run as run_study
from medft.workflows.predict import predict

parser = argparse.ArgumentParser(description="ensemble and TTA effects on a held-out set")
parser.add_argument("--out", default="ensemble-tta")
parser.add_argument("--smoke", action="store_true", help="tiny model and data: a quick check")
parser.add_argument("--folds", type=int, default=3)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--size", type=int, default=96, help="model input side in pixels")
parser.add_argument("--patients", type=int, default=150, help="training-study patients")
parser.add_argument("--held-out", type=int, default=120, help="held-out patients")
parser.add_argument("--n-boot", type=int, default=1000)
args = parser.parse_args()

out = Path(args.out)
if args.smoke:
    args.patients, args.held_out, args.size, args.epochs, args.folds = 24, 12, 48, 1, 2
    args.n_boot = 50
train = synthesize(out / "train", args.patients, size=2 * args.size, seed=0)
held = synthesize(out / "held_out", args.held_out, size=2 * args.size, seed=1)
# synth numbers its patients the same way in every set: name the held-out ones apart, or
# medft rightly warns that the model trained on "them"
labels = pd.read_csv(held.labels_csv, dtype={"patient_id": str})
labels.assign(patient_id="held-" + labels["patient_id"]).to_csv(held.labels_csv, index=False)
overrides = ["--data.manifest", str(train.labels_csv), "--data.image_size", str(args.size)]
overrides += ["--trainer.max_epochs", str(args.epochs), "--trainer.enable_progress_bar", "false"]
if args.smoke:  # a random-weight toy backbone
    overrides += ["--model.backbone", "test_resnet", "--model.pretrained", "false"]
    overrides += ["--data.batch_size", "8"]
study = out / "study"
run_study(recipe_path(), folds=args.folds, out=study, overrides=overrides)

truth = pd.read_csv(held.labels_csv)
truth["path"] = [str((held.labels_csv.parent / p).resolve()) for p in truth["path"]]
first_fold = cv.finished_folds(study)[0]
single = first_fold[1] / first_fold[2]["best_checkpoint"]
variants = {
    "single model (fold 0)": {"checkpoints": [single]},
    "single + TTA": {"checkpoints": [single], "tta": True},
    f"ensemble of {args.folds}": {"study": study},
    f"ensemble of {args.folds} + TTA": {"study": study, "tta": True},
}
probs = {}
for name, how in variants.items():
    run = predict(held.labels_csv, out / "pred" / name.replace(" ", "_"), quiet=True, **how)
    table = run.predictions.table.assign(path=lambda t: [str(Path(p).resolve()) for p in t.path])
    merged = truth.merge(table, on="path", how="inner")
    probs[name] = merged["probcal_abnormal"].to_numpy(dtype=float)
    y, groups = merged["abnormal"].to_numpy(dtype=float), merged["patient_id"].to_numpy()

metrics = {"auroc": auroc, "ece": expected_calibration_error, "brier": brier_score}
base = "single model (fold 0)"
rows = []
for name, p in probs.items():
    row = {"variant": name}
    for metric, fn in metrics.items():
        row[metric] = float(fn(y, p))
        if name != base:
            cmp = paired_bootstrap(y, p, probs[base], groups, metric_fn=fn, n=args.n_boot)
            row[f"{metric}_diff"] = [cmp.difference, cmp.ci_low, cmp.ci_high]
    rows.append(row)
result = {
    "held_out_images": len(y),
    "held_out_patients": int(pd.Series(groups).nunique()),
    "positives": int(np.nansum(y)),
    "settings": vars(args),
    "rows": rows,
}
(out / "results.json").write_text(json.dumps(result, indent=2))
print(f"held-out set: {len(y)} images of {result['held_out_patients']} patients")
print("| variant | AUROC | diff vs single (95% CI) | ECE | diff | Brier | diff |")
print("|---|---|---|---|---|---|---|")
for row in rows:
    cells = [row["variant"]]
    for metric in metrics:
        cells.append(f"{row[metric]:.3f}")
        d = row.get(f"{metric}_diff")
        cells.append("" if d is None else f"{d[0]:+.3f} ({d[1]:+.3f} to {d[2]:+.3f})")
    print("| " + " | ".join(cells) + " |")
