"""LightningCLI wiring for ``medft fit|validate|test|predict``.

The config schema is the type signature of :class:`~medft.model.module.XrayClassifier`
and :class:`~medft.data.datamodule.XrayDataModule`; this module only adds the
links between them (labels and task come from the manifest, the run directory
from the trainer) and medft's default callbacks and loggers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from medft.data.datamodule import XrayDataModule
from medft.errors import ConfigError
from medft.model.module import XrayClassifier

DEFAULT_ROOT = "medft-runs/run"


def trainer_defaults() -> dict[str, Any]:
    """Trainer settings every medft run starts from (callbacks here are always present)."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    from medft.eval.callbacks import OperatingPointCallback

    return {
        "default_root_dir": DEFAULT_ROOT,
        "max_epochs": 10,
        "log_every_n_steps": 10,
        "gradient_clip_val": 1.0,
        "num_sanity_val_steps": 0,
        "callbacks": [LearningRateMonitor(logging_interval="epoch"), OperatingPointCallback()],
    }


def _checkpoint_dir(root: str | None) -> str:
    return os.path.join(root or DEFAULT_ROOT, "checkpoints")


class MedftLightningCLI(LightningCLI):
    """LightningCLI with the links, checkpointing and loggers a medft run needs."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/auroc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,
                "checkpoint.filename": "best-{epoch:02d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.link_arguments(
            "trainer.default_root_dir", "checkpoint.dirpath", compute_fn=_checkpoint_dir
        )
        # last.ckpt comes from a second, unmonitored checkpoint: Lightning 2.6 refreshes
        # "last" only in a step where its callback also saved a top-k file, so a monitored
        # callback leaves it stale until the metric improves (a resume would repeat epochs),
        # and save_top_k=0 would write it only at the end. This one keeps the newest epoch.
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.monitor": None,
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.filename": "latest-{epoch:02d}",
                "last_checkpoint.auto_insert_metric_name": False,
                "last_checkpoint.save_last": True,
            }
        )
        parser.link_arguments(
            "trainer.default_root_dir", "last_checkpoint.dirpath", compute_fn=_checkpoint_dir
        )
        parser.link_arguments("data.labels", "model.labels", apply_on="instantiate")
        parser.link_arguments("data.task", "model.task", apply_on="instantiate")
        parser.link_arguments("trainer.default_root_dir", "data.run_dir")

    def before_instantiate_classes(self) -> None:
        """Log to CSV and TensorBoard inside the run directory unless told otherwise."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir or DEFAULT_ROOT
        _check_writable(root)
        if config.trainer.logger in (None, True):
            config.trainer.logger = [
                Namespace(
                    class_path="lightning.pytorch.loggers.CSVLogger",
                    init_args=Namespace(save_dir=root, name="logs"),
                ),
                Namespace(
                    class_path="lightning.pytorch.loggers.TensorBoardLogger",
                    init_args=Namespace(save_dir=root, name="tensorboard"),
                ),
            ]


def _check_writable(root: str) -> None:
    """Fail before any decoding or training when the run folder cannot be written."""
    probe = os.path.join(root, ".medft-write-test")
    try:
        os.makedirs(root, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(
            f"trainer.default_root_dir: cannot write to {root} ({exc.strerror or exc}); "
            "choose a writable folder with space for checkpoints and logs"
        ) from None


def run_lightning(
    subcommand: str, argv: Sequence[str], *, run: bool = True, extra_defaults: dict | None = None
) -> MedftLightningCLI:
    """Run ``fit``/``validate``/``test``/``predict`` in-process with the given CLI arguments."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    defaults = trainer_defaults()
    if extra_defaults:
        defaults.update(extra_defaults)
    args = [subcommand, *argv] if run else list(argv)
    # medft passes its own argv explicitly; Lightning's "args and sys.argv" hint is noise here.
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within")
    return MedftLightningCLI(
        XrayClassifier,
        XrayDataModule,
        args=args,
        run=run,
        trainer_defaults=defaults,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
    )


def best_checkpoint_path(trainer: Any) -> Path | None:
    """The best checkpoint by the monitored metric (validation AUROC), if one was saved."""
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "monitor", None) and callback.best_model_path:
            return Path(callback.best_model_path)
    return None


def last_checkpoint_path(trainer: Any) -> Path | None:
    """The most recent ``last.ckpt`` (refreshed every epoch, for resuming)."""
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "last_model_path", ""):
            return Path(callback.last_model_path)
    return None
