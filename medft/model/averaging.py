"""Exponential moving average (EMA) of the weights, validated and checkpointed in their place.

:class:`WeightEMA` keeps a shadow copy of every parameter and floating buffer of the network
(``pl_module.model``, the timm model) and moves it toward the trained weights after each
optimizer step: ``avg ← avg + (1 − d)·(w − avg)`` with ``torch.lerp``, where the decay ``d``
ramps up as ``min(decay, (1 + k) / (10 + k))`` over the first updates ``k`` (``warmup``), so a
run of a few hundred steps is not dominated by its starting point.

- **Validation and checkpoints use the average.** The average is swapped in for each
  validation epoch (so ``val/auroc``, the best-checkpoint choice and the operating points
  are the averaged model's) and written as the checkpoint's ``state_dict``; evaluation,
  prediction, the demo and ``load_classifier`` therefore read the averaged weights without
  knowing about EMA. The raw training weights travel under ``checkpoint["medft_ema"]`` so a
  resumed run continues both; ``checkpoint["medft"]["averaging"]`` records what was done.
- **Freezing schedules.** A frozen stage does not change, and ``lerp(a, a, t) == a``
  exactly, so its average *is* its weights, bit for bit (norm statistics of frozen stages
  are fixed too). When a stage unfreezes its average starts from its pretrained weights.
- **DDP.** Every process holds the same weights after each step and updates its own copy
  identically; only rank 0 writes checkpoints.
- **Cost.** One extra copy of the network's weights on its device and one fused ``lerp`` per
  optimizer step; no host synchronisation.

At the end of ``fit`` the averaged weights are copied into the model, so a ``trainer.test``
after fitting also evaluates them.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import nn

from medft.errors import ConfigError

__all__ = ["CHECKPOINT_KEY", "WeightEMA", "ema_decay"]

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "medft_ema"
"""Checkpoint entry with the raw (not averaged) weights and the EMA's progress."""


def ema_decay(decay: float, updates: int, warmup: bool = True) -> float:
    """Decay used for the ``updates``-th update (1-based): ``min(decay, (1 + k) / (10 + k))``.

    Without ``warmup`` it is ``decay`` throughout.
    """
    if not warmup:
        return decay
    return min(decay, (1.0 + updates) / (10.0 + updates))


def _network(pl_module: nn.Module) -> nn.Module:
    """The averaged part: ``pl_module.model`` (medft's timm network) or the whole module."""
    model = getattr(pl_module, "model", None)
    return model if isinstance(model, nn.Module) else pl_module


def _prefix(pl_module: nn.Module) -> str:
    return "model." if _network(pl_module) is not pl_module else ""


def _tensors(net: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer (persistent or not) of ``net``, by state-dict name."""
    named = [(n, p.detach()) for n, p in net.named_parameters()]
    named += [(n, b) for n, b in net.named_buffers()]
    return named


class WeightEMA(L.Callback):
    """Keep an exponential moving average of the weights and validate/save it (see module doc).

    Args:
        enabled: Average at all (``--ema.enabled true`` turns it on; off by default).
        decay: Largest decay per optimizer step, in (0, 1). The average remembers about
            ``1 / (1 - decay)`` steps: 0.999 suits thousands of steps, 0.9-0.99 a few hundred.
        warmup: Ramp the decay up as ``(1 + k) / (10 + k)`` over the first updates.
        start_epoch: First epoch whose steps update the average (0 = from the first step).
            Before it the average simply follows the weights.
    """

    def __init__(
        self,
        enabled: bool = False,
        decay: float = 0.999,
        warmup: bool = True,
        start_epoch: int = 0,
    ) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema.decay={decay} must lie in (0, 1)")
        if start_epoch < 0:
            raise ConfigError(f"ema.start_epoch={start_epoch} must be >= 0")
        self.enabled = bool(enabled)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.start_epoch = int(start_epoch)
        self.updates = 0
        """Optimizer steps folded into the average so far."""
        self._names: list[str] = []
        self._current: list[torch.Tensor] = []
        self._average: list[torch.Tensor] | None = None
        self._float: list[int] = []
        self._other: list[int] = []
        self._last_step = 0
        self._swapped = False
        self._pending: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ state
    @property
    def active(self) -> bool:
        """Whether an average exists (during ``fit`` with ``enabled``)."""
        return self._average is not None

    def average_state(self) -> dict[str, torch.Tensor]:
        """The averaged tensors by the network's state-dict names (views, not copies)."""
        if self._average is None:
            return {}
        held = self._current if self._swapped else self._average
        return dict(zip(self._names, held, strict=True))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the average from the (possibly restored) weights, on the model's device."""
        if not self.enabled:
            return
        named = _tensors(_network(pl_module))
        self._names = [n for n, _ in named]
        self._current = [t for _, t in named]
        self._float = [i for i, t in enumerate(self._current) if t.is_floating_point()]
        self._other = [i for i, t in enumerate(self._current) if not t.is_floating_point()]
        average = [t.detach().clone() for t in self._current]
        if self._pending is not None:
            params = {n for n, _ in _network(pl_module).named_parameters()}
            missing = sorted(params - set(self._pending))
            if missing:
                raise ConfigError(
                    f"cannot resume the weight average: the checkpoint lacks {missing[:3]}"
                )
            with torch.no_grad():
                for name, tensor in zip(self._names, average, strict=True):
                    if name in self._pending:  # non-persistent buffers are not saved
                        tensor.copy_(self._pending[name])
            self._pending = None
        self._average = average
        self._last_step = max(self._last_step, trainer.global_step)
        self._swapped = False

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Fold the weights into the average after each optimizer step."""
        if self._average is None or trainer.global_step <= self._last_step:
            return
        self._last_step = trainer.global_step
        with torch.no_grad():
            if trainer.current_epoch < self.start_epoch:
                torch._foreach_copy_(self._average, self._current)
                return
            self.updates += 1
            weight = 1.0 - ema_decay(self.decay, self.updates, self.warmup)
            averages = [self._average[i] for i in self._float]
            currents = [self._current[i] for i in self._float]
            torch._foreach_lerp_(averages, currents, weight)
            for i in self._other:  # integer buffers (BatchNorm's batch counters)
                self._average[i].copy_(self._current[i])

    # ------------------------------------------------------ validation and end
    def _swap(self) -> None:
        assert self._average is not None
        with torch.no_grad():
            held = [t.clone() for t in self._current]
            torch._foreach_copy_(self._current, self._average)
            torch._foreach_copy_(self._average, held)
        self._swapped = not self._swapped

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Validate the averaged weights."""
        if self._average is not None and not self._swapped:
            self._swap()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Put the training weights back."""
        if self._average is not None and self._swapped:
            self._swap()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Leave the model holding the averaged weights once training is over."""
        if self._average is None:
            return
        if not self._swapped:
            with torch.no_grad():
                torch._foreach_copy_(self._current, self._average)
        self._average = None
        self._swapped = False

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Write the average as ``state_dict`` and the raw weights beside it."""
        if self._average is None:
            return
        prefix = _prefix(pl_module)
        state = checkpoint["state_dict"]
        raw_held = self._average if self._swapped else self._current
        avg_held = self._current if self._swapped else self._average
        raw: dict[str, torch.Tensor] = {}
        for name, raw_t, avg_t in zip(self._names, raw_held, avg_held, strict=True):
            key = prefix + name
            if key in state:  # non-persistent buffers are not in the state dict
                raw[name] = raw_t.detach().clone()
                state[key] = avg_t.detach().clone()
        checkpoint[CHECKPOINT_KEY] = {
            "raw": raw,
            "updates": self.updates,
            "last_step": self._last_step,
        }
        checkpoint.setdefault("medft", {})["averaging"] = {
            "method": "ema",
            "decay": self.decay,
            "warmup": self.warmup,
            "start_epoch": self.start_epoch,
            "updates": self.updates,
        }

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Resume: the model gets the raw weights back; the average is restored at fit start.

        Outside ``fit`` (``validate``/``test`` with ``--ckpt_path``) nothing changes: the
        model keeps the checkpoint's averaged weights.
        """
        if not self.enabled or trainer.state.fn != "fit":
            return
        saved = checkpoint.get(CHECKPOINT_KEY)
        prefix = _prefix(pl_module)
        if not isinstance(saved, dict):
            log.warning(
                "ema: the checkpoint holds no weight average; the average starts from its weights"
            )
            return
        net = _network(pl_module)
        averaged = {
            key[len(prefix) :]: value
            for key, value in checkpoint["state_dict"].items()
            if key.startswith(prefix)
        }
        # Lightning loaded the averaged state_dict into the model: put the raw weights back.
        current = net.state_dict()
        current.update(saved["raw"])
        net.load_state_dict(current, strict=True)
        self._pending = averaged
        self.updates = int(saved.get("updates", 0))
        self._last_step = int(saved.get("last_step", 0))
