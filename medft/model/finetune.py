"""Layer-freezing schedules and discriminative learning rates, as one pure function of the epoch.

A ``FinetuneSchedule`` owns a model's parameter stages (``backbones.parameter_stages``: stem →
blocks → head) and answers, for any epoch, which stages train. Modes:

- ``full``: every stage trains from the first step.
- ``linear_probe``: only the head (the classifier) ever trains.
- ``freeze_unfreeze``: the head alone for ``unfreeze_epoch`` epochs, then everything.
- ``gradual`` (ULMFiT): the head alone for ``unfreeze_epoch`` epochs, then one more stage from
  the top every ``gradual_every`` epochs.

``lr_decay`` < 1 adds discriminative learning rates to any mode: stage ``i`` counted from the top
(head = 0) gets ``base_lr * lr_decay**i``.

Every stage is an optimizer group from step 0 (so schedulers and checkpoints never see groups
appear); frozen groups are gated either by ``requires_grad=False`` (single process: no backward
through frozen stages) or, for DDP where every parameter must stay in the graph, by a learning-rate
multiplier of 0 (``gate="lr"``). Frozen stages keep their BatchNorm statistics (norm layers in eval
mode). The learning rate of every group is a pure function of the optimizer step
(``lr_lambdas``), so a resumed run continues exactly where it stopped.

Typical use in a LightningModule::

    schedule = FinetuneSchedule(backbone, mode="gradual", lr_decay=0.7)
    optimizer = torch.optim.AdamW(schedule.param_groups(base_lr=1e-3, weight_decay=0.05))
    scheduler = LambdaLR(optimizer, schedule.lr_lambdas(total_steps, warmup_steps, steps_per_epoch))
    # on_train_epoch_start: schedule.apply(self.current_epoch)
    # train(mode) override:  super().train(mode); schedule.set_frozen_norm_eval()
    # training_step: no_grad around forward_features while schedule.backbone_frozen(epoch)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from torch import nn

from medft.errors import ConfigError
from medft.model.backbones import Stage, parameter_stages

__all__ = ["GATES", "MODES", "FinetuneSchedule", "Gate", "Mode", "warmup_cosine"]

Mode = Literal["full", "linear_probe", "freeze_unfreeze", "gradual"]
Gate = Literal["requires_grad", "lr"]
MODES: tuple[str, ...] = get_args(Mode)
GATES: tuple[str, ...] = get_args(Gate)
_STATE_VERSION = 1


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0
) -> float:
    """LR factor at optimizer ``step`` (0-based): linear warmup, then cosine to ``min_lr_ratio``.

    Warmup rises as ``(step + 1) / warmup_steps`` so the first step already learns; the cosine
    runs over the remaining ``total_steps - warmup_steps`` steps and stays at its floor after.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class _Group:
    """One optimizer group: the decaying or non-decaying parameters of one stage."""

    name: str
    stage: int
    decay: bool
    params: tuple[nn.Parameter, ...]


class FinetuneSchedule:
    """Which stages of a timm model train at each epoch, at which learning rate.

    Args:
        model: the timm model (with its classifier) whose stages are scheduled.
        mode: ``full``, ``linear_probe``, ``freeze_unfreeze`` or ``gradual`` (see module doc).
        unfreeze_epoch: epochs of head-only training before ``freeze_unfreeze`` / ``gradual``
            start unfreezing (0 = no head-only phase).
        gradual_every: in ``gradual`` mode, epochs between two unfreezing steps.
        lr_decay: per-stage LR factor from the top (1.0 = same LR everywhere).
        gate: ``requires_grad`` (frozen weights get no gradient) or ``lr`` (frozen weights keep
            ``requires_grad`` and get LR 0; use under DDP).

    Parameters that are already frozen (``requires_grad=False``) when the schedule is built stay
    frozen and are left out of the optimizer groups.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        mode: Mode = "freeze_unfreeze",
        unfreeze_epoch: int = 1,
        gradual_every: int = 1,
        lr_decay: float = 1.0,
        gate: Gate = "requires_grad",
    ) -> None:
        _check_config(mode, unfreeze_epoch, gradual_every, lr_decay, gate)
        self.model = model
        self.mode: Mode = mode
        self.unfreeze_epoch = int(unfreeze_epoch)
        self.gradual_every = int(gradual_every)
        self.lr_decay = float(lr_decay)
        self.gate: Gate = gate
        self.stages: list[Stage] = parameter_stages(model)
        self._fixed = {id(p) for _, p in model.named_parameters() if not p.requires_grad}
        self._groups = _build_groups(model, self.stages, self._fixed)
        self._norms = _norms_by_stage(model, self.stages)
        self._epoch: int | None = None

    # -- structure ---------------------------------------------------------------------------

    @property
    def num_stages(self) -> int:
        """Number of stages, head included."""
        return len(self.stages)

    @property
    def stage_names(self) -> list[str]:
        """Stage names from stem to head."""
        return [s.name for s in self.stages]

    @property
    def group_names(self) -> list[str]:
        """Optimizer group names, in the order of ``param_groups``."""
        return [g.name for g in self._groups]

    def lr_scale(self, stage_index: int) -> float:
        """Discriminative LR factor of a stage: ``lr_decay ** (stages above it)``."""
        return self.lr_decay ** (self.num_stages - 1 - self._stage(stage_index))

    # -- the schedule (pure functions of the epoch) --------------------------------------------

    def num_trainable(self, epoch: int) -> int:
        """How many stages, counted from the head down, train in ``epoch``."""
        _check_epoch(epoch)
        if self.mode == "full":
            return self.num_stages
        if self.mode == "linear_probe" or epoch < self.unfreeze_epoch:
            return 1
        if self.mode == "freeze_unfreeze":
            return self.num_stages
        return min(self.num_stages, 2 + (epoch - self.unfreeze_epoch) // self.gradual_every)

    def is_trainable(self, stage_index: int, epoch: int) -> bool:
        """Whether stage ``stage_index`` (0 = stem, -1 = head) trains in ``epoch``."""
        return self._stage(stage_index) >= self.frozen_prefix(epoch)

    def trainable_stages(self, epoch: int) -> list[int]:
        """Indices of the stages that train in ``epoch``."""
        return list(range(self.frozen_prefix(epoch), self.num_stages))

    def frozen_prefix(self, epoch: int) -> int:
        """Number of frozen stages counted from the stem (the frozen part is always a prefix)."""
        return self.num_stages - self.num_trainable(epoch)

    def head_only(self, epoch: int) -> bool:
        """True when only the classifier trains in ``epoch``."""
        return self.num_trainable(epoch) == 1

    def backbone_frozen(self, epoch: int) -> bool:
        """True when the backbone forward may run under ``torch.no_grad()`` in ``epoch``.

        That is when only the head trains and frozen weights are gated by ``requires_grad``.
        Under ``gate="lr"`` it is always False: DDP needs every parameter in the graph.
        """
        return self.gate == "requires_grad" and self.head_only(epoch)

    def lr_multiplier(self, group_index: int, epoch: int) -> float:
        """1.0 when optimizer group ``group_index`` trains in ``epoch``, else 0.0.

        Applied in both gates: an LR of 0 also keeps AdamW's weight decay off frozen weights.
        The discriminative factor is not included: it is already in the group's ``lr``.
        """
        return 1.0 if self.is_trainable(self._groups[group_index].stage, epoch) else 0.0

    # -- optimizer and scheduler ---------------------------------------------------------------

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups for every stage, frozen or not, from step 0.

        Each stage gives up to two groups: weights with ``weight_decay`` and biases, norm and
        embedding-token parameters without (named ``<stage>`` and ``<stage>.no_decay``). Each dict
        has ``params``, ``lr`` (``base_lr * lr_scale``), ``weight_decay``, ``name``, ``lr_scale``
        and ``stage``. ``lr`` already holds the discriminative factor: pair these groups with
        torch schedulers (``lr_lambdas``), not with timm schedulers that apply ``lr_scale`` again.
        """
        if base_lr <= 0 or weight_decay < 0:
            raise ConfigError(
                f"learning rate must be > 0 and weight decay >= 0, got {base_lr}, {weight_decay}"
            )
        groups = []
        for group in self._groups:
            scale = self.lr_scale(group.stage)
            groups.append(
                {
                    "params": list(group.params),
                    "lr": base_lr * scale,
                    "weight_decay": weight_decay if group.decay else 0.0,
                    "name": group.name,
                    "lr_scale": scale,
                    "stage": self.stages[group.stage].name,
                }
            )
        return groups

    def lr_lambdas(
        self,
        total_steps: int,
        warmup_steps: int,
        steps_per_epoch: int,
        min_lr_ratio: float = 0.0,
    ) -> list[Callable[[int], float]]:
        """One ``LambdaLR`` factor per optimizer group: warmup-cosine times the freezing gate.

        The epoch of a step is ``step // steps_per_epoch``, so every LR is a pure function of
        the optimizer step: resuming restores it from the scheduler's step count alone. The
        cosine never restarts at an unfreeze: a stage joins at the current point of the curve.
        ``steps_per_epoch`` must be the optimizer steps per epoch (after gradient accumulation).
        """
        if total_steps < 1 or steps_per_epoch < 1 or not 0 <= warmup_steps <= total_steps:
            raise ConfigError(
                "need total_steps >= 1, steps_per_epoch >= 1 and 0 <= warmup_steps <= total_steps"
                f"; got {total_steps}, {steps_per_epoch}, {warmup_steps}"
            )
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

        def gated(group_index: int) -> Callable[[int], float]:
            def factor(step: int) -> float:
                gate = self.lr_multiplier(group_index, step // steps_per_epoch)
                return gate * warmup_cosine(step, total_steps, warmup_steps, min_lr_ratio)

            return factor  # a plain function: LambdaLR keeps it out of its state dict

        return [gated(i) for i in range(len(self._groups))]

    # -- applying it to the model --------------------------------------------------------------

    def apply(self, epoch: int) -> None:
        """Set ``requires_grad`` for ``epoch`` and put frozen stages' norm layers in eval mode.

        Call at the start of every training epoch (after ``model.train()``). Under
        ``gate="lr"`` every parameter keeps ``requires_grad=True``.
        """
        frozen = self.frozen_prefix(epoch)
        for index, stage in enumerate(self.stages):
            trainable = self.gate == "lr" or index >= frozen
            for _, param in stage.params:
                if id(param) not in self._fixed:
                    param.requires_grad_(trainable)
        self._epoch = epoch
        self.set_frozen_norm_eval(epoch)

    def set_frozen_norm_eval(self, epoch: int | None = None) -> None:
        """Keep the running statistics of frozen stages fixed: their norm layers go to eval mode.

        Norm layers of trainable stages follow the model's own mode. ``model.train()`` puts
        every layer back in training mode, so call this after each ``train()`` (the
        LightningModule overrides ``train``) and at each epoch start. ``epoch`` defaults to
        the one last passed to ``apply``.
        """
        if epoch is None:
            epoch = self._epoch
        if epoch is None:
            raise RuntimeError("FinetuneSchedule.apply(epoch) has not been called yet")
        frozen = self.frozen_prefix(epoch)
        for module, stages in self._norms:
            module.train(self.model.training and max(stages) >= frozen)

    # -- reporting and resuming ----------------------------------------------------------------

    def describe(self, epoch: int) -> dict[str, Any]:
        """Summary for the epoch log: parameter counts and what trains, by stage and group.

        ``trainable_params`` counts weights that are updated in ``epoch`` (under
        ``gate="lr"`` that is the weights with a non-zero LR, not ``requires_grad``).
        """
        frozen = self.frozen_prefix(epoch)
        trainable = sum(
            p.numel() for s in self.stages[frozen:] for _, p in s.params if id(p) not in self._fixed
        )
        return {
            "epoch": epoch,
            "mode": self.mode,
            "gate": self.gate,
            "trainable_params": trainable,
            "total_params": sum(s.numel for s in self.stages),
            "frozen_stages": frozen,
            "stages": {s.name: i >= frozen for i, s in enumerate(self.stages)},
            "groups": {g.name: g.stage >= frozen for g in self._groups},
        }

    def state_dict(self) -> dict[str, Any]:
        """Configuration, structure and last applied epoch (primitives only: weights_only-safe)."""
        return {
            "version": _STATE_VERSION,
            **self._config(),
            "epoch": self._epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check that a resumed run uses the same schedule and model, then re-apply its epoch.

        Raises:
            ConfigError: the checkpoint's schedule or stage layout differs from this one.
        """
        if state.get("version") != _STATE_VERSION:
            raise ConfigError(
                f"cannot resume: fine-tuning schedule state version {state.get('version')!r} "
                f"is not {_STATE_VERSION} (checkpoint from another medft version?)"
            )
        mine = self._config()
        differences = [
            f"{key}: checkpoint {state.get(key)!r}, now {value!r}"
            for key, value in mine.items()
            if state.get(key) != value
        ]
        if differences:
            raise ConfigError(
                "cannot resume: the fine-tuning schedule differs from the checkpoint's ("
                + "; ".join(differences)
                + "). Resume with the checkpoint's settings (freeze, unfreeze_epoch, "
                "gradual_every, lr_decay, freeze_gate, backbone), or start a new run."
            )
        if state.get("epoch") is not None:
            self.apply(int(state["epoch"]))

    def _config(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "unfreeze_epoch": self.unfreeze_epoch,
            "gradual_every": self.gradual_every,
            "lr_decay": self.lr_decay,
            "gate": self.gate,
            "stages": self.stage_names,
            "stage_params": [s.numel for s in self.stages],
            "groups": self.group_names,
        }

    def _stage(self, stage_index: int) -> int:
        if not -self.num_stages <= stage_index < self.num_stages:
            raise IndexError(f"stage index {stage_index} out of range for {self.num_stages}")
        return stage_index % self.num_stages


def _check_config(
    mode: str, unfreeze_epoch: int, gradual_every: int, lr_decay: float, gate: str
) -> None:
    if mode not in MODES:
        raise ConfigError(f"freeze: {mode!r} is not one of {', '.join(MODES)}")
    if gate not in GATES:
        raise ConfigError(f"freeze_gate: {gate!r} is not one of {', '.join(GATES)}")
    if unfreeze_epoch < 0:
        raise ConfigError(f"unfreeze_epoch must be >= 0, got {unfreeze_epoch}")
    if gradual_every < 1:
        raise ConfigError(f"gradual_every must be >= 1, got {gradual_every}")
    if not 0.0 < lr_decay <= 1.0:
        raise ConfigError(f"lr_decay must be in (0, 1], got {lr_decay}")


def _check_epoch(epoch: int) -> None:
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")


def _build_groups(model: nn.Module, stages: list[Stage], fixed: set[int]) -> list[_Group]:
    """Split each stage into decaying weights and non-decaying biases/norms/tokens."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: list[_Group] = []
    for index, stage in enumerate(stages):
        decay, no_decay = [], []
        for name, param in stage.params:
            if id(param) in fixed:
                continue
            plain = param.ndim <= 1 or name.endswith(".bias") or name in skip
            (no_decay if plain else decay).append(param)
        if decay:
            groups.append(_Group(stage.name, index, True, tuple(decay)))
        if no_decay:
            groups.append(_Group(f"{stage.name}.no_decay", index, False, tuple(no_decay)))
    return groups


def _norms_by_stage(model: nn.Module, stages: list[Stage]) -> list[tuple[nn.Module, frozenset]]:
    """Every layer with running statistics, with the stage(s) its parameters belong to.

    A norm layer without parameters of its own takes the stages of its nearest ancestor that has
    some; it counts as frozen only when all of those stages are.
    """
    stage_of = {id(p): i for i, s in enumerate(stages) for _, p in s.params}
    modules = dict(model.named_modules())
    found: list[tuple[nn.Module, frozenset]] = []
    for name, module in modules.items():
        if not any(b.startswith("running_") for b, _ in module.named_buffers(recurse=False)):
            continue
        path = name
        while True:
            owner = modules[path]
            owners = frozenset(stage_of[id(p)] for p in owner.parameters() if id(p) in stage_of)
            if owners or not path:
                break
            path = path.rpartition(".")[0]
        if owners:
            found.append((module, owners))
    return found
