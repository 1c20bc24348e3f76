"""Load medft checkpoints safely: tensors and primitives only, never pickled code.

A checkpoint passed around between people is untrusted input. Loading goes
through ``torch.load(weights_only=True)``, which refuses any pickled object that
is not a tensor or a plain container, so a crafted file cannot run code; the
model is rebuilt from the saved hyper-parameters (random init, no weight
download) and the weights are loaded strictly.
"""

from __future__ import annotations

import inspect
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medft.errors import CheckpointError, MedftError
from medft.model.module import XrayClassifier


@dataclass
class LoadedClassifier:
    """A model ready for inference and what it needs to be used consistently.

    Attributes:
        model: the classifier in eval mode (inputs: display-space images in [0, 1]).
        labels: finding names, in output order.
        task: ``binary``, ``multilabel`` or ``multiclass``.
        image_size: side of the square input the model was trained at.
        fit_mode: ``pad`` or ``crop`` (how images were fitted into the square).
        thresholds: per-finding decision thresholds (``p >= t`` is positive).
        temperature: fitted on validation data, or None.
        meta: everything else stored under ``checkpoint["medft"]``.
        path: where it was loaded from.
    """

    model: XrayClassifier
    labels: list[str]
    task: str
    image_size: int
    fit_mode: str
    thresholds: dict[str, float]
    temperature: float | None
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint dictionary with ``weights_only=True``; refuse anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors and "
            f"plain data, which could run code when unpickled ({_first_line(err)}). Only load "
            "checkpoints written by medft from sources you trust."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(err)})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def load_classifier(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> LoadedClassifier:
    """Rebuild the trained classifier from a medft checkpoint (safe loading, strict weights)."""
    path = Path(path)
    checkpoint = read_checkpoint(path)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if "backbone" not in hparams:
        raise CheckpointError(f"{path}: not a medft checkpoint (no backbone in hyper_parameters)")
    allowed = set(inspect.signature(XrayClassifier.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in hparams.items() if k in allowed}
    kwargs["pretrained"] = False  # the weights come from the checkpoint, not from ImageNet
    kwargs["pretrained_file"] = None
    kwargs["compile"] = False  # inference runs eagerly: no compile wait in evaluate or the demo
    try:
        model = XrayClassifier(**kwargs)
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except MedftError:
        raise
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{path}: weights do not fit the model ({_first_line(err)})"
        ) from None
    model.eval().to(map_location)
    meta = dict(checkpoint.get("medft") or {})
    labels = list(meta.get("labels") or model.labels)
    points = meta.get("operating_points") or {}
    thresholds = {name: float(points.get(name, {}).get("threshold", 0.5)) for name in labels}
    return LoadedClassifier(
        model=model,
        labels=labels,
        task=str(meta.get("task", model.task)),
        image_size=int(meta.get("image_size", 224)),
        fit_mode=str(meta.get("fit_mode", "pad")),
        thresholds=thresholds,
        temperature=meta.get("temperature"),
        meta=meta,
        path=path,
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
