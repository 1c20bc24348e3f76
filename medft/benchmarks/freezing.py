"""Freezing pays: frozen-backbone vs full training speed, and cached features (issue 8, #4).

1. For each backbone, one training step of :class:`~medft.model.module.XrayClassifier`
   with ``freeze="linear_probe"`` (its ``_forward_train`` runs the backbone under
   ``no_grad``; only the head gets gradients) against the same step with
   ``freeze="full"``, interleaved on the same random batch. Ratio = frozen / full
   images/s; target >= 3. Random weights: the speed does not depend on them.
2. Linear probe on cached backbone features against a linear probe that runs the frozen
   backbone every epoch, both through ``medft fit`` (``run_lightning`` with
   ``freeze=linear_probe``, ``feature_cache=on``, memory decode cache, augmentation and
   validation off). Epoch 0 fills the feature cache and is excluded; after it the cache
   is switched off in odd epochs and on in even ones (same fit, same loader and hooks),
   and each epoch is timed from its start hook to its end hook. Ratio = images/s of a
   cached epoch / images/s of an epoch that runs the backbone; target >= 20.

    python -m medft.benchmarks.freezing [--quick] [--out DIR]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

from medft.bench import (
    BenchResult,
    Target,
    Timing,
    rate_result,
    standalone_main,
    time_interleaved,
)
from medft.benchmarks import fit_throughput as fit
from medft.model.module import XrayClassifier

QUICK = {
    "backbones": ("test_efficientnet", "test_resnet"),
    "size": 64,
    "batch": 8,
    "repeats": 3,
    "patients": 40,
}
FULL = {
    "backbones": ("tf_efficientnet_lite0", "resnet50"),
    "size": 224,
    "batch": 8,
    "repeats": 3,
    "patients": 96,
}


def classifier(backbone: str, freeze: str) -> XrayClassifier:
    module = XrayClassifier(backbone=backbone, pretrained=False, freeze=freeze)
    module.schedule.apply(0)
    return module.train()


def train_step(module: XrayClassifier, images: torch.Tensor, labels: torch.Tensor):
    """A closure doing one optimiser step through the module's own training forward."""
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)

    def step() -> None:
        loss = module.loss_fn(module._forward_train(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def frozen_vs_full(backbone: str, size: int, batch: int, repeats: int) -> BenchResult:
    images = torch.rand(batch, 1, size, size)
    labels = torch.randint(0, 2, (batch, 1)).float()
    frozen = classifier(backbone, "linear_probe")
    full = classifier(backbone, "full")
    timings = time_interleaved(
        {
            "frozen": train_step(frozen, images, labels),
            "full": train_step(full, images, labels),
        },
        repeats=repeats,
    )
    return rate_result(
        f"freeze/{backbone}",
        timings["frozen"],
        timings["full"],
        items=batch,
        target=Target(3.0),
        note=f"linear_probe step vs full step, {size}px batch {batch} (reference = full)",
    )


class CacheAlternator(L.Callback):
    """Fills the feature cache in epoch 0, then turns it off in odd and on in even epochs.

    Off is exactly the state ``model.feature_cache=off`` leaves (the plain frozen path
    that runs the backbone under ``no_grad``); the entries stay, so an even epoch finds
    the cache warm. Alternating inside one fit gives both sides the same loader, steps,
    hooks and machine load.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        module.feature_cache.active = epoch == 0 or epoch % 2 == 0


def cached_features(cfg: dict[str, Any], work: Path) -> BenchResult:
    """``medft fit`` linear-probe epochs with the feature cache warm vs with it off."""
    size, batch, repeats = cfg["size"], cfg["batch"], cfg["repeats"]
    manifest = fit.synth_manifest(work, cfg["patients"], max(64, size))
    fit_cfg = fit.FitConfig(cfg["backbones"][0], size, batch, cfg["patients"], size, repeats)
    # Every image trains (no val/test part; a multiple of the batch size, so no batch is
    # dropped): epoch 0 caches every row and the cached epochs never run the backbone.
    cli = fit.build_fit(manifest, work / "run-cached", fit_cfg, "--model.freeze", "linear_probe",
                        "--model.feature_cache", "on",
                        "--data.val_fraction", "0", "--data.test_fraction", "0",
                        "--trainer.max_epochs", str(1 + 2 * repeats))  # fmt: skip
    clock = fit.EpochClock()
    cli.trainer.callbacks.extend([CacheAlternator(), clock])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    images = clock.images[1]
    return rate_result(
        f"freeze/cached_features/{fit_cfg.backbone}",
        Timing(clock.epoch_seconds[2::2]),
        Timing(clock.epoch_seconds[1::2]),
        items=images,
        target=Target(20.0),
        note=f"medft fit linear_probe epoch, feature cache warm vs off, {size}px batch {batch}, "
        f"{images} img/epoch",
        backbone=fit_cfg.backbone,
        image_size=size,
        batch_size=batch,
        cached_rows=len(cli.model.feature_cache.store),
        cache_bytes=cli.model.feature_cache.store.nbytes,
    )


def run(quick: bool) -> list[BenchResult]:
    cfg = QUICK if quick else FULL
    args = (cfg["size"], cfg["batch"], cfg["repeats"])
    results = [frozen_vs_full(name, *args) for name in cfg["backbones"]]
    with tempfile.TemporaryDirectory(prefix="medft-bench-freeze-") as tmp:
        results.append(cached_features(cfg, Path(tmp)))
    return results


def main(argv: list[str] | None = None) -> int:
    return standalone_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
