"""Freezing pays: frozen-backbone vs full training speed, and cached features (issue 8, #4).

1. For each backbone, one training step of :class:`~medft.model.module.XrayClassifier`
   with ``freeze="linear_probe"`` (its ``_forward_train`` runs the backbone under
   ``no_grad``; only the head gets gradients) against the same step with
   ``freeze="full"``, interleaved on the same random batch. Ratio = frozen / full
   images/s; target >= 3. Random weights: the speed does not depend on them.
2. Linear probe on cached backbone features against a linear probe that runs the frozen
   backbone every epoch. medft has no cached-features path yet, so this row measures
   the reference ratio with plain code (features pooled once, then head-only epochs)
   and is marked "not implemented": it says what the fast path would gain.

    python benchmarks/freezing.py [--quick] [--out DIR]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medft.bench import (
    BenchResult,
    Target,
    rate_result,
    standalone_main,
    time_interleaved,
)
from medft.model.module import XrayClassifier

QUICK = {"backbones": ("test_efficientnet", "test_resnet"), "size": 64, "batch": 8, "repeats": 3}
FULL = {"backbones": ("tf_efficientnet_lite0", "resnet50"), "size": 224, "batch": 8, "repeats": 3}


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


def cached_features(backbone: str, size: int, batch: int, repeats: int) -> BenchResult:
    """Head-only epoch on cached pooled features vs an epoch that runs the backbone."""
    module = classifier(backbone, "linear_probe")
    batches = [
        (torch.rand(batch, 1, size, size), torch.randint(0, 2, (batch, 1)).float())
        for _ in range(4)
    ]
    model = module.model
    head = model.get_classifier()
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    with torch.no_grad():
        pooled = [
            (model.forward_head(model.forward_features(module.normalize(x)), pre_logits=True), y)
            for x, y in batches
        ]

    def head_step(logits: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.binary_cross_entropy_with_logits(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def backbone_epoch() -> None:
        for x, y in batches:
            head_step(module._forward_train(x), y)

    def cached_epoch() -> None:
        for features, y in pooled:
            head_step(head(features), y)

    epochs = {"cached": cached_epoch, "backbone": backbone_epoch}
    timings = time_interleaved(epochs, repeats=repeats)
    return rate_result(
        f"freeze/cached_features/{backbone}",
        timings["cached"],
        timings["backbone"],
        items=batch * len(batches),
        target=Target(20.0),
        note="plain-code reference ratio: medft has no cached-features linear probe yet",
    )


def run(quick: bool) -> list[BenchResult]:
    cfg = QUICK if quick else FULL
    args = (cfg["size"], cfg["batch"], cfg["repeats"])
    results = [frozen_vs_full(name, *args) for name in cfg["backbones"]]
    probe = cached_features(cfg["backbones"][0], *args)
    probe.implemented = False
    results.append(probe)
    return results


def main(argv: list[str] | None = None) -> int:
    return standalone_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
