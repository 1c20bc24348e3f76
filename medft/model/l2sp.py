"""L2-SP: keep the backbone near its pretrained weights instead of near zero.

Li, Grandvalet & Davoine (ICML 2018) regularise fine-tuning with the squared distance to the
starting point, ``alpha / 2 · ‖w − w0‖²`` over the pretrained weights ``w0``; the new head
(which has no pretrained value) keeps ordinary weight decay. :class:`L2SP` adds the gradient
of that penalty, ``alpha · (w − w0)``, to each backbone weight's gradient right before the
optimizer step (Lightning's ``on_before_optimizer_step``, after gradients are accumulated and
unscaled and before they are clipped), which is exactly what adding the penalty to the loss
would do, without touching the training step.

- ``w0`` is copied when ``fit`` sets up, before any checkpoint is restored: the weights the
  model was built with (the pretrained ones, or the seeded random ones with
  ``pretrained: false``). A resumed run therefore pulls toward the same point.
- ``alpha`` applies to every backbone stage; ``stage_alpha`` overrides it per stage (stage
  names as in the freezing schedule: ``stem``, ``stage1`` … ``stageN``), e.g. a strong pull on
  the early stages and none on the last.
- Frozen stages get no gradient (or a learning rate of 0), so the penalty does not move them.
- ``alpha: 0`` (the default) with no ``stage_alpha`` does nothing at all: training is bit for
  bit the same as without the callback.
- With Adam-type optimizers the penalty's gradient is normalised with the task's, so its pull
  is measured against the size of the task gradients; useful values are wider than with SGD
  (0.01-1 for the backbones medft uses; see docs/finetuning.md for the measured study).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from medft.errors import ConfigError
from medft.model.backbones import parameter_stages

__all__ = ["L2SP", "backbone_stages", "l2sp_distance"]


def backbone_stages(pl_module: nn.Module) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    """The ``(stage name, named parameters)`` of a medft module's network, head included last.

    Uses the freezing schedule's stages when the module has one, else timm's group matcher.
    """
    schedule = getattr(pl_module, "schedule", None)
    stages = getattr(schedule, "stages", None)
    if stages is None:
        model = getattr(pl_module, "model", pl_module)
        stages = parameter_stages(model)
    return [(stage.name, list(stage.params)) for stage in stages]


def l2sp_distance(params: list[torch.Tensor], refs: list[torch.Tensor]) -> torch.Tensor:
    """``‖w − w0‖²`` summed over the given tensors (a 0-d tensor; no host synchronisation)."""
    if not params:
        return torch.zeros(())
    diffs = torch._foreach_sub(params, refs)
    return torch.stack([d.pow(2).sum() for d in diffs]).sum()


class L2SP(L.Callback):
    """Pull backbone weights toward their starting (pretrained) values (see module doc).

    Args:
        alpha: Penalty strength for every backbone stage (0 = off, the default).
        stage_alpha: Per-stage strengths that replace ``alpha`` for the named stages.
        head: Include the classifier (its start is its fresh initialisation; off by default,
            as in the paper: the head keeps plain weight decay).
    """

    def __init__(
        self,
        alpha: float = 0.0,
        stage_alpha: dict[str, float] | None = None,
        head: bool = False,
    ) -> None:
        if alpha < 0:
            raise ConfigError(f"l2sp.alpha={alpha} must be >= 0")
        bad = {k: v for k, v in (stage_alpha or {}).items() if v < 0}
        if bad:
            raise ConfigError(f"l2sp.stage_alpha: strengths must be >= 0, got {bad}")
        self.alpha = float(alpha)
        self.stage_alpha = {str(k): float(v) for k, v in (stage_alpha or {}).items()}
        self.head = bool(head)
        self.groups: list[tuple[str, float, list[nn.Parameter], list[torch.Tensor]]] = []
        """``(stage, strength, parameters, reference copies)`` for each penalised stage."""

    @property
    def enabled(self) -> bool:
        """Whether any stage has a non-zero strength."""
        return self.alpha > 0 or any(v > 0 for v in self.stage_alpha.values())

    def strengths(self, stage_names: list[str]) -> dict[str, float]:
        """The strength of each stage (the head last, 0 unless ``head``)."""
        unknown = sorted(set(self.stage_alpha) - set(stage_names))
        if unknown:
            raise ConfigError(
                f"l2sp.stage_alpha: unknown stage(s) {unknown}; this backbone's stages are "
                f"{stage_names}"
            )
        out = {}
        for index, name in enumerate(stage_names):
            is_head = index == len(stage_names) - 1
            default = self.alpha if (self.head or not is_head) else 0.0
            out[name] = self.stage_alpha.get(name, default)
        return out

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Copy the starting weights (before any checkpoint restore)."""
        if stage != "fit" or not self.enabled:
            return
        stages = backbone_stages(pl_module)
        strengths = self.strengths([name for name, _ in stages])
        self.groups = []
        for name, params in stages:
            if strengths[name] <= 0:
                continue
            tensors = [p for _, p in params]
            refs = [p.detach().clone() for p in tensors]
            self.groups.append((name, strengths[name], tensors, refs))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Move the references to the weights' device (the model was moved after setup)."""
        self.groups = [
            (name, alpha, params, [r.to(p.device) for r, p in zip(refs, params, strict=True)])
            for name, alpha, params, refs in self.groups
        ]

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        """``grad += alpha · (w − w0)`` for every penalised weight that has a gradient."""
        if not self.groups:
            return
        with torch.no_grad():
            for _, alpha, params, refs in self.groups:
                pairs = [(p, r) for p, r in zip(params, refs, strict=True) if p.grad is not None]
                if not pairs:
                    continue
                weights = [p for p, _ in pairs]
                diffs = torch._foreach_sub(weights, [r for _, r in pairs])
                torch._foreach_add_([p.grad for p in weights], diffs, alpha=alpha)

    def penalty(self) -> torch.Tensor:
        """The current penalty ``Σ alpha_s / 2 · ‖w_s − w0_s‖²`` (a 0-d tensor)."""
        total = torch.zeros(())
        for _, alpha, params, refs in self.groups:
            dist = l2sp_distance([p.detach() for p in params], refs)
            total = total.to(dist.device) + 0.5 * alpha * dist
        return total

    def describe(self) -> Mapping[str, float]:
        """Strength per penalised stage (for logs and run records)."""
        return {name: alpha for name, alpha, _, _ in self.groups}
