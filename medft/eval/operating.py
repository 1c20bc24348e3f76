"""Operating points: the probability above which a finding is called positive.

Thresholds are chosen on validation data, never on the test set, and stored in the
checkpoint with the finding names (as plain dicts of primitives, so ``torch.load`` with
``weights_only=True`` reads them) so that evaluation, prediction, saliency and the demo all
make the same positive/negative call. Convention everywhere in medft: an image is positive
when ``p >= threshold``.

Candidate thresholds are the distinct validation scores (as in ``sklearn.metrics.roc_curve``)
plus one just above the largest score (call nothing positive).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from medft.errors import ConfigError, DataError
from medft.eval.metrics import known_pairs, undefined_reason

Method = Literal["youden", "sensitivity", "specificity"]
METHODS = ("youden", "sensitivity", "specificity")
#: Slack when comparing a rate with its target (rates are ratios of small integers).
_TOL = 1e-12


@dataclass(frozen=True)
class OperatingPoint:
    """A decision threshold and the validation rates that justified it.

    Attributes:
        threshold: Call positive when ``p >= threshold``.
        sensitivity: Sensitivity at the threshold on the data it was chosen on.
        specificity: Specificity there.
        method: ``"youden"``, ``"sensitivity"``, ``"specificity"`` or ``"fallback"`` (no
            threshold could be chosen; see ``choose_thresholds``).
        target: The target rate for the target methods, else None.
    """

    threshold: float
    sensitivity: float
    specificity: float
    method: str
    target: float | None = None

    def to_dict(self) -> dict[str, float | str | None]:
        """Primitives only (safe in a ``weights_only`` checkpoint and in JSON)."""
        fields = asdict(self)
        return {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in fields.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OperatingPoint:
        """Rebuild from :meth:`to_dict` output (a missing key raises ConfigError)."""
        try:
            target = data.get("target")
            return cls(
                threshold=float(data["threshold"]),
                sensitivity=float(data["sensitivity"]),
                specificity=float(data["specificity"]),
                method=str(data["method"]),
                target=None if target is None else float(target),
            )
        except KeyError as err:
            raise ConfigError(f"operating point {dict(data)!r} lacks key {err}") from None


def _roc_table(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (descending) with the sensitivity and specificity at each."""
    order = np.argsort(-p, kind="mergesort")
    scores, labels = p[order], y[order]
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    tp = np.cumsum(labels)[last_of_tie]
    fp = np.cumsum(1.0 - labels)[last_of_tie]
    n_pos, n_neg = float(labels.sum()), float(labels.size - labels.sum())
    above_all = np.nextafter(scores[0], np.inf)
    thresholds = np.r_[above_all, scores[last_of_tie]]
    sensitivity = np.r_[0.0, tp / n_pos]
    specificity = np.r_[1.0, (n_neg - fp) / n_neg]
    return thresholds, sensitivity, specificity


def _check_method(method: str, target: float | None) -> None:
    if method not in METHODS:
        raise ConfigError(f"operating point method {method!r} is unknown; use one of {METHODS}")
    if method == "youden":
        if target is not None:
            raise ConfigError("operating point method 'youden' takes no target")
    elif target is None or not 0.0 < float(target) <= 1.0:
        raise ConfigError(
            f"operating point method {method!r} needs a target in (0, 1], got {target!r}"
        )


def choose_threshold(
    y: Any, p: Any, *, method: Method = "youden", target: float | None = None
) -> OperatingPoint:
    """Choose a threshold on validation labels ``y`` (1/0/NaN) and scores ``p``.

    Methods:
        youden: maximise J = sensitivity + specificity - 1; ties go to the higher
            sensitivity (the lower threshold).
        sensitivity: the highest threshold whose sensitivity is at least ``target``, i.e. the
            best specificity that keeps the target sensitivity.
        specificity: the lowest threshold whose specificity is at least ``target``.

    Raises:
        ConfigError: unknown method or a missing/invalid target.
        DataError: the known labels hold only one class.
    """
    _check_method(method, target)
    y_k, p_k, _ = known_pairs(y, p)
    reason = undefined_reason(y_k)
    if reason:
        raise DataError(f"cannot choose an operating point: {reason}")
    thresholds, sens, spec = _roc_table(y_k, p_k)
    if method == "youden":
        j = sens + spec - 1.0
        pick = int(np.flatnonzero(j >= j.max() - _TOL)[-1])
    elif method == "sensitivity":
        pick = int(np.flatnonzero(sens >= float(target) - _TOL)[0])  # type: ignore[arg-type]
    else:
        pick = int(np.flatnonzero(spec >= float(target) - _TOL)[-1])  # type: ignore[arg-type]
    return OperatingPoint(
        threshold=float(thresholds[pick]),
        sensitivity=float(sens[pick]),
        specificity=float(spec[pick]),
        method=method,
        target=None if target is None else float(target),
    )


def choose_thresholds(
    y: Any,
    p: Any,
    labels: Sequence[str],
    *,
    method: Method = "youden",
    target: float | None = None,
    fallback: float | None = 0.5,
) -> dict[str, OperatingPoint]:
    """One operating point per finding from ``(N, L)`` validation labels and probabilities.

    Args:
        y: ``(N, L)`` labels, 1/0/NaN.
        p: ``(N, L)`` probabilities.
        labels: Finding names in column order.
        method: See :func:`choose_threshold`.
        target: Target rate for the target methods.
        fallback: Threshold used (with a warning, ``method="fallback"`` and NaN rates) for a
            finding whose validation labels hold one class only. None raises instead.

    Returns:
        Finding -> OperatingPoint; ``{k: v.to_dict()}`` is checkpoint-safe.
    """
    _check_method(method, target)
    labels = list(labels)
    y_arr = np.asarray(y, dtype=np.float64).reshape(-1, len(labels))
    p_arr = np.asarray(p, dtype=np.float64).reshape(-1, len(labels))
    if y_arr.shape != p_arr.shape:
        raise DataError(f"labels {y_arr.shape} and predictions {p_arr.shape} differ in shape")
    points: dict[str, OperatingPoint] = {}
    for j, label in enumerate(labels):
        y_k, p_k, _ = known_pairs(y_arr[:, j], p_arr[:, j], name=label)
        reason = undefined_reason(y_k)
        if reason is None:
            points[label] = choose_threshold(y_k, p_k, method=method, target=target)
            continue
        if fallback is None:
            raise DataError(f"cannot choose an operating point for {label!r}: {reason}")
        warnings.warn(
            f"operating point for {label!r} falls back to {fallback}: {reason} in the "
            "validation data",
            stacklevel=2,
        )
        points[label] = OperatingPoint(float(fallback), math.nan, math.nan, "fallback", None)
    return points


def operating_points_to_dict(points: Mapping[str, OperatingPoint]) -> dict[str, dict[str, Any]]:
    """``{finding: {threshold, sensitivity, specificity, method, target}}`` of primitives."""
    return {label: point.to_dict() for label, point in points.items()}


def operating_points_from_dict(data: Mapping[str, Mapping[str, Any]]) -> dict[str, OperatingPoint]:
    """Inverse of :func:`operating_points_to_dict` (e.g. read back from a checkpoint)."""
    return {str(label): OperatingPoint.from_dict(d) for label, d in data.items()}


__all__ = [
    "METHODS",
    "OperatingPoint",
    "choose_threshold",
    "choose_thresholds",
    "operating_points_from_dict",
    "operating_points_to_dict",
]
