"""A Lightning callback that chooses operating points on validation data during fit.

After every validation epoch it fits the decision thresholds (Youden J by default,
or a target sensitivity/specificity) and a temperature on that epoch's validation
predictions, and writes them into every checkpoint saved afterwards under
``checkpoint["medft"]``. The best checkpoint therefore carries thresholds chosen
on the same validation pass that made it best; ``evaluate``, ``predict``,
``explain`` and the demo read them from there.

Under DDP each process validates a shard; the predictions of all processes are
gathered first (and the duplicates DistributedSampler pads the shards with are
dropped by manifest row), so every process chooses the same thresholds from the
whole validation set.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import numpy as np
import torch

from medft.errors import DataError
from medft.eval.calibration import expected_calibration_error, fit_temperature
from medft.eval.metrics import auroc
from medft.eval.operating import choose_thresholds, operating_points_to_dict


class OperatingPointCallback(L.Callback):
    """Choose thresholds and a temperature on validation predictions; store them in checkpoints.

    Args:
        method: ``youden``, ``sensitivity`` or ``specificity``.
        target: the target rate for the last two methods (e.g. 0.9).
        calibrate: also fit a temperature (stored; applied only where asked for).
    """

    def __init__(
        self, method: str = "youden", target: float | None = None, calibrate: bool = True
    ) -> None:
        self.method = method
        self.target = target
        self.calibrate = calibrate
        self._probs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._index: list[torch.Tensor] = []
        self.latest: dict[str, Any] = {}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._probs, self._targets, self._index = [], [], []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if isinstance(outputs, dict) and "probs" in outputs:
            probs = outputs["probs"].detach().float().cpu()
            self._probs.append(probs)
            self._targets.append(outputs["targets"].detach().float().cpu())
            if "index" in outputs:
                index = outputs["index"].detach().long().cpu().reshape(-1)
            else:  # negative placeholders, unique across processes: never a duplicate
                seen = sum(len(p) for p in self._probs[:-1])
                position = torch.arange(seen, seen + len(probs))
                index = -1 - (position * trainer.world_size + trainer.global_rank)
            self._index.append(index)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        width = len(getattr(pl_module, "labels", ())) or (
            self._probs[0].shape[1] if self._probs else 1
        )
        probs_t = _cat(self._probs, (0, width), torch.float32)
        targets_t = _cat(self._targets, (0, width), torch.float32)
        index_t = _cat(self._index, (0,), torch.long)
        if trainer.world_size > 1:
            probs_t = gather_rows(pl_module, probs_t)
            targets_t = gather_rows(pl_module, targets_t)
            index_t = gather_rows(pl_module, index_t)
            _, first = np.unique(index_t.numpy(), return_index=True)
            keep = torch.as_tensor(np.sort(first))
            probs_t, targets_t = probs_t[keep], targets_t[keep]
        if len(probs_t) == 0:
            return
        probs = probs_t.numpy().astype(np.float64)
        targets = targets_t.numpy().astype(np.float64)
        labels = list(getattr(pl_module, "labels", [f"class_{i}" for i in range(probs.shape[1])]))
        if getattr(pl_module, "task", "multilabel") == "multiclass":
            targets = np.where(np.isnan(targets), np.nan, targets)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            points = choose_thresholds(
                targets, probs, labels, method=self.method, target=self.target
            )
        latest: dict[str, Any] = {
            "operating_points": operating_points_to_dict(points),
            "operating_point_method": self.method,
            "val_auroc": {name: auroc(targets[:, i], probs[:, i]) for i, name in enumerate(labels)},
            "val_n_images": len(probs),
            "temperature": None,
        }
        if self.calibrate and getattr(pl_module, "task", "") != "multiclass":
            try:
                temperature = fit_temperature(probs, targets, kind="probs")
            except DataError:
                temperature = None
            latest["temperature"] = temperature
            latest["val_ece"] = {
                name: expected_calibration_error(targets[:, i], probs[:, i])
                for i, name in enumerate(labels)
            }
        self.latest = latest

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.latest:
            checkpoint.setdefault("medft", {}).update(_plain(self.latest))

    def state_dict(self) -> dict[str, Any]:
        return {"latest": _plain(self.latest)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.latest = dict(state_dict.get("latest", {}))


def _cat(parts: list[torch.Tensor], empty: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(parts).to(dtype) if parts else torch.zeros(empty, dtype=dtype)


def gather_rows(pl_module: L.LightningModule, rows: torch.Tensor) -> torch.Tensor:
    """Concatenate ``rows`` (N, ...) from every DDP process, in rank order, on the CPU.

    Processes may hold different numbers of rows (even none, with the same trailing shape
    and dtype): each pads to the longest before ``all_gather``, and the padding is cut off.
    """
    device = pl_module.device
    sizes = pl_module.all_gather(torch.tensor([len(rows)], device=device)).reshape(-1)
    longest = int(sizes.max())
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=device)
    padded[: len(rows)] = rows.to(device)
    gathered = pl_module.all_gather(padded).cpu()
    return torch.cat([gathered[rank, : int(n)] for rank, n in enumerate(sizes.tolist())])


def _plain(obj: Any) -> Any:
    """Floats, strings, lists and dicts only (safe for ``torch.load(weights_only=True)``)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj
