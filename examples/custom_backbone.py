"""Fine-tune a timm backbone medft does not default to: DenseNet-121, CheXNet's choice.

    python examples/custom_backbone.py --out bb --weights densenet121.safetensors  # or timm's cache
    python examples/custom_backbone.py --out bb --smoke  # random-weight test_convnext, 1 epoch

Any `timm.create_model` name works: medft groups a model's parameters into stages with timm's
`group_matcher`, so the freezing schedules and discriminative LRs apply unchanged. The stage
table printed first is the check that they do. Writes OUT/stages.json and OUT/run/.
"""

import argparse
import json
from pathlib import Path

from medft.data.synth import synthesize
from medft.lightning_cli import run_lightning
from medft.model.backbones import create_backbone
from medft.model.finetune import FinetuneSchedule
from medft.quickstart import recipe_path

parser = argparse.ArgumentParser(description="fine-tune another timm backbone")
parser.add_argument("--out", default="custom-backbone")
parser.add_argument("--backbone", default="densenet121", help="any timm model name")
parser.add_argument("--weights", help="local ImageNet weights file (else timm's cache)")
parser.add_argument("--smoke", action="store_true", help="tiny model and data: a quick check")
args = parser.parse_args()
name = "test_convnext" if args.smoke else args.backbone

schedule = FinetuneSchedule(create_backbone(name, pretrained=False, num_classes=1), lr_decay=0.7)
stages = {s.name: [s.numel, schedule.lr_scale(i)] for i, s in enumerate(schedule.stages)}
Path(args.out).mkdir(parents=True, exist_ok=True)
# stem to head: parameters, LR factor
Path(args.out, "stages.json").write_text(json.dumps(stages, indent=2))
for stage, (n, scale) in stages.items():
    print(f"{stage:>12} {n:>10,} parameters  LR x{scale:.3f}")

data = synthesize(f"{args.out}/data", 24 if args.smoke else 300, size=64 if args.smoke else 256)
fit = ["--config", str(recipe_path()), "--data.manifest", str(data.labels_csv)]
fit += ["--trainer.default_root_dir", f"{args.out}/run", "--model.backbone", name]
fit += ["--model.freeze", "gradual", "--model.gradual_every", "1", "--model.lr_decay", "0.7"]
if args.smoke:
    fit += ["--model.pretrained", "false", "--data.image_size", "64", "--trainer.max_epochs", "1"]
elif args.weights:
    fit += ["--model.pretrained_file", args.weights]
run_lightning("fit", fit)
