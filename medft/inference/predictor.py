"""One way from a trained model to calibrated probabilities and calls: :class:`Predictor`.

Everything after training (``medft predict``, ``evaluate``, the held-out predictions of
``cv``, ``explain``, the demo and the exporter) turns pixels into model input and
probabilities into calls here and nowhere else, so the same file gets the same answer from
every command:

- **pixels -> input**: the reader's display image is fitted into the checkpoint's square
  (``image_size``, ``fit_mode``) and quantised to the pixel type the training cache stored
  (``cache_dtype``: uint8 or uint16) by the very transforms training used
  (:func:`medft.data.transforms.build_transforms`, eval mode);
- **input -> probability**: the model (which normalises with its backbone's
  ``pretrained_cfg`` inside), a sigmoid per finding (softmax for multiclass) and the
  temperature fitted on validation data;
- **probability -> call**: ``calibrated probability >= threshold``, the threshold chosen on
  validation data (or on a study's out-of-fold predictions for an ensemble).

An ensemble (several checkpoints with the same labels and preprocessing) averages the
members' calibrated probabilities; test-time augmentation (:mod:`medft.inference.tta`)
averages over a few anatomically valid views of each image.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medft.data.geometry import Geometry
from medft.data.seen import SeenPatients
from medft.data.transforms import (
    FitToSquare,
    FromCompact,
    ToCompact,
    build_transforms,
    metadata_off,
)
from medft.errors import CheckpointError, ConfigError
from medft.inference.tta import TTA_VIEWS, tta_batches
from medft.model.checkpoint import LoadedClassifier, load_classifier

__all__ = [
    "CHECKPOINT_DEFAULTS",
    "Predictor",
    "Preprocessing",
    "checkpoint_sha256",
]

log = logging.getLogger("medft.inference")

CHECKPOINT_DEFAULTS: dict[str, Any] = {"image_size": 224, "fit_mode": "pad", "cache_dtype": "uint8"}
"""What a checkpoint that predates a field is assumed to have used (one warning names them)."""


@dataclass(frozen=True)
class Preprocessing:
    """How a display-space image becomes model input (what the checkpoint was trained on).

    Attributes:
        image_size: Side of the square model input.
        fit_mode: ``pad`` (letterbox) or ``crop`` (centre crop).
        cache_dtype: Pixel type of the training cache, ``uint8`` or ``uint16``; inputs are
            quantised to it so inference sees the precision training saw.
    """

    image_size: int
    fit_mode: str
    cache_dtype: str

    def as_dict(self) -> dict[str, Any]:
        """Plain dictionary (for JSON sidecars and run records)."""
        return {
            "image_size": self.image_size,
            "fit_mode": self.fit_mode,
            "cache_dtype": self.cache_dtype,
        }


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint file (hex), streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _preprocessing(member: LoadedClassifier) -> tuple[Preprocessing, list[str]]:
    """The member's preprocessing and the names of fields its checkpoint lacked."""
    missing = [key for key in CHECKPOINT_DEFAULTS if key not in member.meta]
    values = {key: member.meta.get(key, default) for key, default in CHECKPOINT_DEFAULTS.items()}
    return (
        Preprocessing(
            int(values["image_size"]), str(values["fit_mode"]), str(values["cache_dtype"])
        ),
        missing,
    )


def _temperature(member: LoadedClassifier) -> float | None:
    value = member.temperature
    if member.task == "multiclass" or value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None


def _calibrated_threshold(threshold: float, temperature: float | None) -> float:
    """The threshold on sigmoid(z / T) that calls exactly the images sigmoid(z) >= t calls."""
    if temperature is None or not 0.0 < threshold < 1.0:
        return float(threshold)
    z = math.log(threshold) - math.log1p(-threshold)
    return float(1.0 / (1.0 + math.exp(-z / temperature)))


class Predictor:
    """Calibrated probabilities and calls of one checkpoint, or of an ensemble of them.

    Build it with :meth:`from_checkpoint` (or :meth:`from_checkpoints`; a cross-validation
    study's ensemble comes from :func:`medft.eval.ensemble.study_predictor`, which chooses
    its operating point on the study's out-of-fold predictions).

    Args:
        members: Loaded checkpoints with the same labels, task and preprocessing.
        thresholds: Finding -> threshold on the calibrated probability. Default: a single
            model's validation thresholds (mapped through its temperature, so the calls are
            the ones chosen on validation data); for an ensemble, the mean of the members'
            calibrated thresholds.
        threshold_source: Where ``thresholds`` came from (written beside every call).
        tta: Average over the test-time views of :mod:`medft.inference.tta`.
        tta_flip: Also average over a left-right flip (off: chest anatomy is not symmetric).
        device: Where the models run.

    Raises:
        ConfigError: Members that disagree on labels, task or preprocessing.
    """

    def __init__(
        self,
        members: Sequence[LoadedClassifier],
        *,
        thresholds: Mapping[str, float] | None = None,
        threshold_source: str | None = None,
        tta: bool = False,
        tta_flip: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        if not members:
            raise ConfigError("a Predictor needs at least one checkpoint")
        self.members = list(members)
        first = self.members[0]
        self.labels: list[str] = list(first.labels)
        self.task: str = str(first.task)
        self.preprocessing, missing = _preprocessing(first)
        for member in self.members[1:]:
            self._check_compatible(member)
        if missing:
            log.warning(
                "%s: the checkpoint predates the fields %s; assuming %s (medft's defaults then)",
                first.path or "checkpoint",
                ", ".join(missing),
                ", ".join(f"{k}={CHECKPOINT_DEFAULTS[k]}" for k in missing),
            )
        self.missing_fields = missing
        self.device = torch.device(device)
        for member in self.members:
            member.model.eval().to(self.device)
        self.temperatures = [_temperature(m) for m in self.members]
        self.tta = bool(tta)
        self.tta_flip = bool(tta_flip)
        self._stored = self._stored_thresholds()
        self._given = thresholds is not None
        if thresholds is None:
            self.thresholds = dict(self._stored)
            self.threshold_source = threshold_source or self._stored_source()
        else:
            unknown = sorted(set(thresholds) - set(self.labels))
            if unknown:
                raise ConfigError(f"thresholds for unknown finding(s) {unknown}; {self.labels}")
            self.thresholds = {name: float(thresholds.get(name, 0.5)) for name in self.labels}
            self.threshold_source = threshold_source or "given"
        self._prefix, self._to_float = build_transforms(
            image_size=self.image_size,
            fit_mode=self.fit_mode,
            train=False,
            compact_dtype=self.cache_dtype,
        )
        self._fit = FitToSquare(self.image_size, self.fit_mode)
        self._to_compact = ToCompact(self.cache_dtype)
        self._from_compact = FromCompact()

    # ------------------------------------------------------------------ building
    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, device: str | torch.device = "cpu", **kwargs: Any
    ) -> Predictor:
        """Load one checkpoint safely (``weights_only=True``) into a Predictor."""
        return cls([load_classifier(path)], device=device, **kwargs)

    @classmethod
    def from_checkpoints(
        cls, paths: Sequence[str | Path], *, device: str | torch.device = "cpu", **kwargs: Any
    ) -> Predictor:
        """An ensemble of checkpoints (one path makes a single-model Predictor)."""
        if not paths:
            raise ConfigError("give at least one --checkpoint")
        return cls([load_classifier(p) for p in paths], device=device, **kwargs)

    def _check_compatible(self, member: LoadedClassifier) -> None:
        where = member.path or "checkpoint"
        if list(member.labels) != self.labels or str(member.task) != self.task:
            raise ConfigError(
                f"{where}: predicts {member.labels} ({member.task}), but the first checkpoint "
                f"predicts {self.labels} ({self.task}); an ensemble needs the same findings"
            )
        other, _ = _preprocessing(member)
        if other != self.preprocessing:
            raise ConfigError(
                f"{where}: trained on {other.as_dict()}, the first checkpoint on "
                f"{self.preprocessing.as_dict()}; ensemble members must share preprocessing"
            )

    def _stored_thresholds(self) -> dict[str, float]:
        per_member = [
            {
                name: _calibrated_threshold(float(member.thresholds.get(name, 0.5)), t)
                for name in self.labels
            }
            for member, t in zip(self.members, self.temperatures, strict=True)
        ]
        return {name: float(np.mean([m[name] for m in per_member])) for name in self.labels}

    def _stored_source(self) -> str:
        methods = {str(m.meta.get("operating_point_method") or "") for m in self.members}
        stored = all(m.meta.get("operating_points") for m in self.members)
        if not stored:
            return "default 0.5 (the checkpoint stores no operating point)"
        method = ", ".join(sorted(methods - {""})) or "stored"
        if len(self.members) > 1:
            return f"mean of the members' validation thresholds ({method})"
        return f"validation ({method})"

    # ------------------------------------------------------------------ facts
    @property
    def image_size(self) -> int:
        """Side of the square model input."""
        return self.preprocessing.image_size

    @property
    def fit_mode(self) -> str:
        """``pad`` or ``crop``."""
        return self.preprocessing.fit_mode

    @property
    def cache_dtype(self) -> str:
        """``uint8`` or ``uint16``: the precision inputs are quantised to."""
        return self.preprocessing.cache_dtype

    @property
    def temperature(self) -> float | None:
        """A single model's temperature (None for an ensemble or when none was fitted)."""
        return self.temperatures[0] if len(self.members) == 1 else None

    @property
    def raw_thresholds(self) -> dict[str, float]:
        """Thresholds on the uncalibrated probability (a single model's stored ones).

        They call exactly the images :attr:`thresholds` call on the calibrated probability.
        An ensemble has one probability scale (the mean of calibrated probabilities), so
        there both are the same.
        """
        t = self.temperatures[0]
        if len(self.members) > 1 or t is None:
            return dict(self.thresholds)
        if not self._given:  # the stored ones exactly, not a round trip through the logit
            stored = self.members[0].thresholds
            return {name: float(stored.get(name, 0.5)) for name in self.labels}
        raw = {}
        for name in self.labels:
            z = _logit(self.thresholds[name])
            raw[name] = self.thresholds[name] if math.isnan(z) else 1.0 / (1.0 + math.exp(-z * t))
        return raw

    def seen_patients(self) -> list[SeenPatients]:
        """The salted training/validation patient records the checkpoints carry."""
        found = [SeenPatients.from_checkpoint(m.meta.get("seen_patients")) for m in self.members]
        return [record for record in found if record is not None]

    def seen_overlap(self, patient_ids: Sequence[Any]) -> dict[str, Any] | None:
        """How many of ``patient_ids`` the model(s) trained or validated on.

        Returns None when no checkpoint carries a patient record (trained before medft
        stored one); otherwise ``{"patients": distinct input patients, "train": n,
        "val": n, "any": n, "warning": text or None}``, summed over ensemble members'
        records as "seen by any member".
        """
        records = self.seen_patients()
        if not records:
            return None
        unique = sorted({str(p).strip() for p in patient_ids})
        masks = {part: np.zeros(len(unique), dtype=bool) for part in ("train", "val")}
        for record in records:
            for part in masks:
                masks[part] |= record.contains(unique, part)
        counts = {part: int(mask.sum()) for part, mask in masks.items()}
        counts["any"] = int((masks["train"] | masks["val"]).sum())
        warning = None
        if counts["any"]:
            warning = (
                f"{counts['any']} of the {len(unique)} patients in this input were used to "
                f"train or validate the model ({counts['train']} train, {counts['val']} "
                "validation): metrics on them are optimistic; evaluate on held-out patients"
            )
        return {"patients": len(unique), **counts, "warning": warning}

    def info(self, *, hashes: bool = True) -> dict[str, Any]:
        """What the prediction came from: checkpoints (name, SHA-256), backbone, settings."""
        members = []
        for member in self.members:
            entry: dict[str, Any] = {
                "file": Path(member.path).name if member.path else None,
                "backbone": member.meta.get("backbone", member.model.hparams.get("backbone")),
                "temperature": _temperature(member),
                "software": member.meta.get("software"),
            }
            if hashes and member.path is not None and Path(member.path).is_file():
                entry["sha256"] = checkpoint_sha256(member.path)
            members.append(entry)
        return {
            "labels": list(self.labels),
            "task": self.task,
            "preprocessing": self.preprocessing.as_dict(),
            "thresholds": dict(self.thresholds),
            "threshold_source": self.threshold_source,
            "calibrated": any(t is not None for t in self.temperatures),
            "tta": self.tta_views(),
            "checkpoints": members,
            "missing_checkpoint_fields": list(self.missing_fields),
        }

    def tta_views(self) -> list[str]:
        """Names of the views averaged per image (``["identity"]`` without TTA)."""
        if not self.tta:
            return ["identity"]
        views = list(TTA_VIEWS)
        return [*views, "hflip"] if self.tta_flip else views

    # ------------------------------------------------------------------ pixels -> input
    def load(self, path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
        """Read a file into model input ``(1, S, S)`` float32 in [0, 1] plus the reader's data.

        The returned dictionary holds ``image_meta`` (:class:`~medft.data.dicom.XrayMeta`)
        and ``image_geometry``. Unreadable files raise the reader's
        :class:`~medft.errors.DicomReadError` naming the file.
        """
        data = self._prefix({"image": str(path)})
        with metadata_off():
            image = self._to_float({"image": data["image"]})["image"]
        return torch.as_tensor(image, dtype=torch.float32), data

    def preprocess(self, image: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, Geometry]:
        """A decoded display image (H, W) in [0, 1] -> model input ``(1, 1, S, S)`` + geometry.

        The same fit and quantisation as :meth:`load`, for callers that decoded already
        (the demo, saliency).
        """
        array = np.asarray(image, dtype=np.float32)
        if array.ndim != 2:
            raise ConfigError(f"preprocess expects one grey (H, W) image; got shape {array.shape}")
        square, geometry = self._fit(array[None])
        tensor = self._from_compact(self._to_compact(square))
        return tensor[None].to(torch.float32), geometry

    # ------------------------------------------------------------------ input -> probability
    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``(M, V, B, L)``: M members, V test-time views, B images."""
        images = images.to(self.device, dtype=torch.float32, non_blocking=True)
        views = tta_batches(images, enabled=self.tta, flip=self.tta_flip)
        out = [
            torch.stack([member.model(view).float() for view in views]) for member in self.members
        ]
        return torch.stack(out).cpu()

    def probabilities(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(raw, calibrated)`` probabilities ``(B, L)`` of a batch of model inputs.

        ``raw`` is the sigmoid (softmax) of the logits, averaged over views and members;
        ``calibrated`` applies each member's temperature first. An ensemble's two are the
        same: it averages calibrated probabilities.
        """
        return self.probabilities_from_logits(self.logits(images))

    def probabilities_from_logits(self, logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(raw, calibrated)`` probabilities from :meth:`logits`' ``(M, V, B, L)`` output."""
        z = logits.detach().to(torch.float64)
        if self.task == "multiclass":
            probs = z.softmax(dim=-1).mean(dim=(0, 1)).numpy()
            return probs, probs
        raw = z.sigmoid().mean(dim=1)  # (M, B, L)
        cal = torch.stack(
            [
                (z[i] / t).sigmoid().mean(dim=0) if t is not None else raw[i]
                for i, t in enumerate(self.temperatures)
            ]
        )
        calibrated = cal.mean(dim=0).numpy()
        if len(self.members) > 1:
            return calibrated, calibrated
        return raw.mean(dim=0).numpy(), calibrated

    def predict_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities ``(N, L)`` of decoded display images (H, W) in [0, 1]."""
        if not len(images):
            return np.zeros((0, len(self.labels)))
        batch = torch.cat([self.preprocess(image)[0] for image in images])
        return self.probabilities(batch)[1]

    # ------------------------------------------------------------------ probability -> call
    def call(self, probs: np.ndarray, *, calibrated: bool = True) -> np.ndarray:
        """1 where ``probability >= threshold`` per finding, else 0: the one decision rule.

        Args:
            probs: ``(N, L)`` probabilities in label order.
            calibrated: ``probs`` are calibrated (compared with :attr:`thresholds`), or
                raw (compared with :attr:`raw_thresholds`); both give the same calls.
        """
        limits = self.thresholds if calibrated else self.raw_thresholds
        array = np.asarray(probs, dtype=np.float64).reshape(-1, len(self.labels))
        cut = np.array([limits[name] for name in self.labels], dtype=np.float64)
        return (array >= cut).astype(int)

    def call_one(self, finding: str, probability: float, *, calibrated: bool = True) -> bool:
        """:meth:`call` for one finding's probability."""
        if finding not in self.labels:
            raise ConfigError(f"{finding!r} is not predicted by this model ({self.labels})")
        row = np.full((1, len(self.labels)), -np.inf)
        row[0, self.labels.index(finding)] = probability
        return bool(self.call(row, calibrated=calibrated)[0, self.labels.index(finding)])

    def threshold_for(self, finding: str, *, calibrated: bool = True) -> float:
        """The threshold a finding's probability is compared with."""
        return (self.thresholds if calibrated else self.raw_thresholds)[finding]

    # ------------------------------------------------------------------ the primary model
    @property
    def model(self) -> torch.nn.Module:
        """The (first) member's model, for saliency and export (display-space input)."""
        return self.members[0].model

    def single(self) -> LoadedClassifier:
        """The one member of a single-model Predictor (saliency needs one model)."""
        if len(self.members) != 1:
            raise CheckpointError(
                f"this needs one model; an ensemble of {len(self.members)} checkpoints was given"
            )
        return self.members[0]


def _logit(p: float) -> float:
    if not 0.0 < p < 1.0:
        return math.nan
    return math.log(p) - math.log1p(-p)
