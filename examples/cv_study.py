"""A 5-fold cross-validation study from Python, on synthetic chest X-rays.

    python examples/cv_study.py --out cv-study           # the quickstart recipe (minutes per fold)
    python examples/cv_study.py --out cv-smoke --smoke   # tiny model and data (about a minute)

Writes cv-study/study/{folds.csv, fold_*/, oof_predictions.csv, summary.json, report.html}.
"""

import argparse

from medft.data.synth import synthesize
from medft.quickstart import recipe_path
from medft.workflows.cv import run as run_study

parser = argparse.ArgumentParser(description="5-fold cross-validation of the quickstart recipe")
parser.add_argument("--out", default="cv-study")
parser.add_argument("--smoke", action="store_true", help="tiny model and data: a quick check")
args = parser.parse_args()

data = synthesize(f"{args.out}/data", 30 if args.smoke else 300, size=64 if args.smoke else 256)
overrides = ["--data.manifest", str(data.labels_csv)]
if args.smoke:  # a random-weight toy backbone, 64 px, one epoch
    overrides += ["--model.backbone", "test_resnet", "--model.pretrained", "false"]
    overrides += ["--data.image_size", "64", "--data.batch_size", "8", "--trainer.max_epochs", "1"]
folds = run_study(recipe_path(), folds=5, out=f"{args.out}/study", overrides=overrides, by=["view"])
print(folds[["fold", "n_images", "auroc_abnormal", "sensitivity_abnormal", "specificity_abnormal"]])
print(f"report: {args.out}/study/report.html")
