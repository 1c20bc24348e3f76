"""The input contract of every statistic: labels 1/0/NaN and finite scores, per finding."""

from __future__ import annotations

from typing import Any

import numpy as np

from medft.errors import ConfigError, DataError

__all__ = ["check_ci", "known_pairs", "undefined_reason"]


def known_pairs(y: Any, p: Any, *, name: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate one finding's labels and probabilities; keep the rows with a known label.

    Args:
        y: Labels, 1.0 / 0.0 / NaN (unknown). Booleans and integers are accepted.
        p: Scores (probabilities or logits), finite wherever the label is known.
        name: The finding's name, used in error messages.

    Returns:
        ``(y_known, p_known, known_mask)``; ``y_known`` is float64 0/1.

    Raises:
        DataError: shapes differ, a label is not 0/1/NaN, or a score is not finite.
    """
    what = f" for finding {name!r}" if name else ""
    y_arr = np.asarray(y, dtype=np.float64).reshape(-1)
    p_arr = np.asarray(p, dtype=np.float64).reshape(-1)
    if y_arr.shape != p_arr.shape:
        raise DataError(
            f"labels and predictions differ in length{what}: {y_arr.size} labels, "
            f"{p_arr.size} predictions; pass one prediction per labelled image"
        )
    known = ~np.isnan(y_arr)
    y_known = y_arr[known]
    bad = np.flatnonzero((y_known != 0.0) & (y_known != 1.0))
    if bad.size:
        row = int(np.flatnonzero(known)[bad[0]])
        raise DataError(
            f"label {float(y_known[bad[0]])!r} at row {row}{what} is not 0, 1 or blank; "
            "map uncertain labels before evaluating"
        )
    p_known = p_arr[known]
    not_finite = np.flatnonzero(~np.isfinite(p_known))
    if not_finite.size:
        row = int(np.flatnonzero(known)[not_finite[0]])
        raise DataError(
            f"prediction at row {row}{what} is {float(p_known[not_finite[0]])!r}; "
            "every labelled image needs a finite score"
        )
    return y_known, p_known, known


def undefined_reason(y: Any) -> str | None:
    """Why AUROC/AP cannot be computed for these labels, or None when they can."""
    y_arr = np.asarray(y, dtype=np.float64).reshape(-1)
    y_arr = y_arr[~np.isnan(y_arr)]
    n_pos = int((y_arr == 1).sum())
    n_neg = int(y_arr.size - n_pos)
    if y_arr.size == 0:
        return "no images with a known label"
    if n_pos == 0:
        return f"no positive images among {n_neg} with a known label"
    if n_neg == 0:
        return f"no negative images among {n_pos} with a known label"
    return None


def check_ci(ci: float) -> None:
    """Refuse a confidence level outside (0, 1) with a ``ConfigError``."""
    if not 0.0 < ci < 1.0:
        raise ConfigError(f"confidence level must be between 0 and 1, got {ci}")
