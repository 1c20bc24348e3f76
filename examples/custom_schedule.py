"""A custom freezing schedule: subclass FinetuneSchedule and change one rule.

    python examples/custom_schedule.py --out sched          # lite0, offline ImageNet weights
    python examples/custom_schedule.py --out sched --smoke  # tiny random-weight model, 1 epoch

The built-in schedules are config keys (model.freeze, unfreeze_epoch, gradual_every, lr_decay).
For another rule override `num_trainable(epoch)`: the gating, discriminative LRs, frozen
BatchNorm and the LR lambdas all derive from it. Writes OUT/plan.json and OUT/run/.
"""

import argparse
import json
from pathlib import Path

import lightning as L

from medft.data.datamodule import XrayDataModule
from medft.data.synth import synthesize
from medft.lightning_cli import trainer_defaults
from medft.model.finetune import FinetuneSchedule
from medft.model.module import XrayClassifier


class TwoStagesAtATime(FinetuneSchedule):
    """Head alone for `unfreeze_epoch` epochs, then two more stages from the top each epoch."""

    def num_trainable(self, epoch: int) -> int:
        extra = 0 if epoch < self.unfreeze_epoch else 2 * (epoch - self.unfreeze_epoch + 1)
        return min(self.num_stages, 1 + extra)


class Classifier(XrayClassifier):
    def __init__(self, **kwargs):  # replace the schedule before the optimizer is built
        super().__init__(**kwargs)
        self.schedule = TwoStagesAtATime(self.model, mode="gradual", unfreeze_epoch=1, lr_decay=0.7)


parser = argparse.ArgumentParser(description="fine-tune with a custom freezing schedule")
parser.add_argument("--out", default="custom-schedule")
parser.add_argument("--smoke", action="store_true", help="tiny model and data: a quick check")
args = parser.parse_args()
smoke = args.smoke
data = synthesize(f"{args.out}/data", 24 if smoke else 300, size=64 if smoke else 256)
dm = XrayDataModule(str(data.labels_csv), labels=["abnormal"], image_size=64 if smoke else 192,
                    batch_size=8, run_dir=f"{args.out}/run", audit=False)  # fmt: skip
model = Classifier(backbone="test_resnet" if smoke else "tf_efficientnet_lite0",
                   pretrained=not smoke, labels=dm.labels, task=dm.task)  # fmt: skip
plan = {e: [s for s, on in model.schedule.describe(e)["stages"].items() if on] for e in range(5)}
Path(args.out).mkdir(parents=True, exist_ok=True)
# the stages that train in each epoch
Path(args.out, "plan.json").write_text(json.dumps(plan, indent=2))
print("\n".join(f"epoch {e}: {', '.join(stages)}" for e, stages in plan.items()))
epochs = 1 if smoke else 6
settings = trainer_defaults() | {"default_root_dir": f"{args.out}/run", "max_epochs": epochs}
L.Trainer(**settings, enable_progress_bar=False).fit(model, datamodule=dm)
