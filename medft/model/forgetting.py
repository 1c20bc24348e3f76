"""How far has each stage moved from its pretrained weights? A per-stage forgetting meter.

:class:`ForgettingMeter` copies the weights when ``fit`` sets up (before any checkpoint is
restored: the pretrained weights) and, at the start of training and after every training
epoch, measures for each stage of the freezing schedule (``stem``, ``stage1`` … ``head``, from
timm's ``group_matcher``) the relative distance

    ``‖w_s − w0_s‖ / ‖w0_s‖``   (Frobenius norms over all the stage's parameters)

It reads exactly 0 before the first step and for every stage that has not trained yet (a
frozen stage does not change), and rises as a stage trains. The head's reference is its fresh
initialisation, so its value is large and says only that the head learned.

Optionally (``cka: true``) it also compares each backbone stage's *features* on a fixed batch
of validation images with those the pretrained weights gave, by linear CKA (Kornblith et al.
2019): 1 = the same representation up to rotation and scale, lower = the stage computes
something else. Each measurement costs one forward pass of that batch in eval mode.

Values are logged every epoch as ``forgetting/<stage>`` (and ``cka/<stage>``) to the run's
loggers (CSV, TensorBoard), and at the end of ``fit`` written to ``forgetting.csv`` and drawn
in ``forgetting.png`` in the run folder (``trainer.default_root_dir``).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from medft._io import write_bytes, write_text
from medft.errors import ConfigError
from medft.model.l2sp import backbone_stages

__all__ = [
    "CSV_NAME",
    "PLOT_NAME",
    "ForgettingMeter",
    "linear_cka",
    "relative_distances",
    "stage_output_modules",
]

log = logging.getLogger(__name__)

CSV_NAME = "forgetting.csv"
PLOT_NAME = "forgetting.png"


def relative_distances(
    stages: list[tuple[str, list[torch.Tensor], list[torch.Tensor]]],
) -> dict[str, float]:
    """``‖w − w0‖ / ‖w0‖`` per ``(name, weights, references)`` stage (0 when ``w0`` is 0)."""
    sums = []
    for _, params, refs in stages:
        diffs = torch._foreach_sub([p.detach() for p in params], refs)
        moved = torch.stack([d.double().pow(2).sum() for d in diffs]).sum()
        size = torch.stack([r.double().pow(2).sum() for r in refs]).sum()
        sums.append(torch.stack([moved, size]).cpu())
    values = torch.stack(sums).tolist() if sums else []  # one host sync for all stages
    out = {}
    for (name, _, _), (moved, size) in zip(stages, values, strict=True):
        out[name] = math.sqrt(moved) / math.sqrt(size) if size > 0 else math.sqrt(moved)
    return out


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two feature matrices with the same rows (examples), flattened per row.

    ``<K, L> / (‖K‖ ‖L‖)`` with centred Gram matrices ``K = Xc Xcᵀ``, ``L = Yc Ycᵀ``; 1 for
    identical features, invariant to rotations and isotropic scaling.
    """
    x = x.reshape(len(x), -1).double()
    y = y.reshape(len(y), -1).double()
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    k, m = x @ x.T, y @ y.T
    denominator = torch.linalg.norm(k) * torch.linalg.norm(m)
    if float(denominator) == 0.0:
        return float("nan")
    return float((k * m).sum() / denominator)


def stage_output_modules(
    net: nn.Module, stages: list[tuple[str, list[tuple[str, nn.Parameter]]]]
) -> dict[str, nn.Module]:
    """For each stage, the module whose output is the stage's output.

    The largest module that holds the stage's last parameter and no parameter of another
    stage (EfficientNet ``stage3`` → ``blocks.2``; its stem → ``bn1``).
    """
    owner = {id(p): name for name, params in stages for _, p in params}
    modules = dict(net.named_modules())
    found: dict[str, nn.Module] = {}
    for name, params in stages:
        if not params:
            continue
        path = params[-1][0].rpartition(".")[0]
        best = path
        while path:
            module = modules.get(path)
            if module is None or any(owner.get(id(p)) != name for p in module.parameters()):
                break
            best = path
            path = path.rpartition(".")[0]
        if best in modules:
            found[name] = modules[best]
    return found


class ForgettingMeter(L.Callback):
    """Log per-stage distance from the pretrained weights (and optional CKA) every epoch.

    Args:
        enabled: Measure at all (on by default; ``--forgetting.enabled false`` turns it off).
        cka: Also compare each backbone stage's features on a fixed validation batch.
        cka_images: Images in that batch (the first ones of the validation part).
        plot: Write ``forgetting.csv`` and ``forgetting.png`` into the run folder at the end.
    """

    def __init__(
        self, enabled: bool = True, cka: bool = False, cka_images: int = 32, plot: bool = True
    ) -> None:
        if cka_images < 2:
            raise ConfigError(f"forgetting.cka_images={cka_images} must be at least 2")
        self.enabled = bool(enabled)
        self.cka = bool(cka)
        self.cka_images = int(cka_images)
        self.plot = bool(plot)
        self.history: list[dict[str, Any]] = []
        """One row per measurement and stage: epoch, step, stage, distance, trains, cka."""
        self._stages: list[tuple[str, list[torch.Tensor], list[torch.Tensor]]] = []
        self._batch: Any = None
        self._reference_features: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Copy the starting weights (and features), before any checkpoint is restored."""
        if stage != "fit" or not self.enabled:
            return
        self._stages = [
            (name, [p for _, p in params], [p.detach().clone() for _, p in params])
            for name, params in backbone_stages(pl_module)
        ]
        if self.cka:
            self._batch = self._fixed_batch(trainer)
            if self._batch is not None:
                self._reference_features = {
                    k: v.cpu() for k, v in self._features(pl_module, self._batch).items()
                }

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Move the references to the weights' device (the model moved after setup)."""
        self._stages = [
            (name, params, [r.to(p.device) for r, p in zip(refs, params, strict=True)])
            for name, params, refs in self._stages
        ]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The measurement before the first step of this fit (0 on a fresh run)."""
        if self._stages and not any(r["step"] == trainer.global_step for r in self.history):
            self._measure(trainer, pl_module, log=False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Measure and log after every training epoch."""
        if self._stages:
            self._measure(trainer, pl_module, log=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write ``forgetting.csv`` and ``forgetting.png`` into the run folder."""
        if self._stages and self.plot and self.history:
            self._write(Path(trainer.default_root_dir))

    def state_dict(self) -> dict[str, Any]:
        """The measurements so far (plain data), so a resumed run keeps the whole curve."""
        return {"history": [dict(row) for row in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the measurements of the interrupted run."""
        self.history = [dict(row) for row in state_dict.get("history", [])]

    # ---------------------------------------------------------------- measuring
    def distances(self) -> dict[str, float]:
        """Relative distance of each stage from its starting weights, now."""
        return relative_distances(self._stages)

    def _measure(self, trainer: L.Trainer, pl_module: L.LightningModule, *, log: bool) -> None:
        distances = self.distances()
        similarity = self._cka(pl_module) if self._batch is not None else {}
        schedule = getattr(pl_module, "schedule", None)
        trains: dict[str, bool] = {}
        if schedule is not None:
            trains = schedule.describe(trainer.current_epoch)["stages"]
        epoch = trainer.current_epoch if log else trainer.current_epoch - 1
        for name, value in distances.items():
            row = {
                "epoch": epoch,
                "step": trainer.global_step,
                "stage": name,
                "distance": value,
                "trains": bool(trains.get(name, True)) if log else False,
                "cka": similarity.get(name, float("nan")),
            }
            self.history.append(row)
            if log:
                pl_module.log(f"forgetting/{name}", value, on_epoch=True, sync_dist=False)
                if name in similarity:
                    pl_module.log(f"cka/{name}", similarity[name], on_epoch=True, sync_dist=False)

    def _fixed_batch(self, trainer: L.Trainer) -> Any:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "val_dataloader"):
            log.info("forgetting meter: no validation data module, CKA off")
            return None
        images, taken = [], 0
        for batch in datamodule.val_dataloader():
            part = batch["image"][: self.cka_images - taken]
            images.append(part)
            taken += len(part)
            if taken >= self.cka_images:
                break
        if taken < 2:
            log.info("forgetting meter: fewer than 2 validation images, CKA off")
            return None
        return {"image": torch.cat(images)}

    def _features(self, pl_module: L.LightningModule, batch: Any) -> dict[str, torch.Tensor]:
        net = getattr(pl_module, "model", pl_module)
        stages = [(name, params) for name, params in backbone_stages(pl_module)][:-1]
        targets = stage_output_modules(net, stages)
        captured: dict[str, torch.Tensor] = {}
        handles = [
            module.register_forward_hook(
                lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach())
            )
            for name, module in targets.items()
        ]
        was_training = pl_module.training
        device = next(net.parameters()).device
        try:
            pl_module.eval()
            moved = pl_module.transfer_batch_to_device(dict(batch), device, 0)
            moved = pl_module.on_after_batch_transfer(moved, 0)
            with torch.no_grad():
                pl_module(moved["image"])
        finally:
            for handle in handles:
                handle.remove()
            pl_module.train(was_training)
        return captured

    def _cka(self, pl_module: L.LightningModule) -> dict[str, float]:
        now = self._features(pl_module, self._batch)
        return {
            name: linear_cka(self._reference_features[name].to(value.device), value)
            for name, value in now.items()
            if name in self._reference_features
        }

    # ------------------------------------------------------------------ output
    @rank_zero_only
    def _write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.StringIO()
        fields = ["epoch", "step", "stage", "distance", "trains", "cka"]
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        write_text(folder / CSV_NAME, buffer.getvalue())
        write_bytes(folder / PLOT_NAME, forgetting_figure(self.history))


def forgetting_figure(history: list[dict[str, Any]]) -> bytes:
    """PNG of each stage's distance (and CKA, when measured) against the epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    stages = list(dict.fromkeys(row["stage"] for row in history))
    has_cka = any(not math.isnan(row["cka"]) for row in history)
    figure = Figure(figsize=(9 if has_cka else 6, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2 if has_cka else 1, squeeze=False)[0]
    for stage in stages:
        rows = sorted((r for r in history if r["stage"] == stage), key=lambda r: r["step"])
        epochs = [r["epoch"] + 1 for r in rows]  # 0 = before training, k = after epoch k
        axes[0].plot(epochs, [r["distance"] for r in rows], marker="o", ms=3, label=stage)
        if has_cka and stage != stages[-1]:
            axes[1].plot(epochs, [r["cka"] for r in rows], marker="o", ms=3, label=stage)
    for axis in axes:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_yscale("symlog", linthresh=1e-4)
    axes[0].set_xlabel("epochs trained")
    axes[0].set_ylabel("‖w − w₀‖ / ‖w₀‖")
    axes[0].set_title("distance from the pretrained weights")
    axes[0].legend(fontsize=7, ncol=2)
    if has_cka:
        axes[1].set_xlabel("epochs trained")
        axes[1].set_ylabel("linear CKA with the pretrained features")
        axes[1].set_title("feature similarity (fixed validation batch)")
        axes[1].set_ylim(top=1.02)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
