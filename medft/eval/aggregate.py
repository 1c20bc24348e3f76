"""Image-level predictions aggregated to one row per patient (or study)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from medft.errors import ConfigError, DataError
from medft.stats import factorize_groups

__all__ = ["GroupedPredictions", "aggregate_by_patient", "aggregate_table_by_patient"]


@dataclass(frozen=True)
class GroupedPredictions:
    """Labels and scores aggregated to one row per patient (or study).

    Attributes:
        y: ``(G,)`` or ``(G, L)`` labels: 1 if any image is positive, NaN if none is known.
        p: Scores aggregated with ``how``.
        keys: The group key of each row (sorted).
        n_images: Images per group.
    """

    y: np.ndarray
    p: np.ndarray
    keys: np.ndarray
    n_images: np.ndarray


def aggregate_by_patient(
    y: Any, p: Any, groups: Any, *, how: Literal["max", "mean"] = "max"
) -> GroupedPredictions:
    """Aggregate image-level predictions to patient (or study) level.

    A group's label is the maximum of its known image labels (positive if any image is
    positive; NaN if no image has a known label); its score is the max or mean of its
    images' scores. Evaluate the result with ``groups=None``: each row is one patient.

    Args:
        y: ``(N,)`` or ``(N, L)`` labels, 1/0/NaN.
        p: Scores of the same shape.
        groups: Patient (or study) key per image.
        how: ``"max"`` (a patient is as suspicious as their worst image) or ``"mean"``.
    """
    if how not in ("max", "mean"):
        raise ConfigError(f"aggregation {how!r} is not supported; use 'max' or 'mean'")
    y_arr = np.asarray(y, dtype=np.float64)
    p_arr = np.asarray(p, dtype=np.float64)
    if y_arr.shape != p_arr.shape:
        raise DataError(f"labels {y_arr.shape} and predictions {p_arr.shape} differ in shape")
    one_d = y_arr.ndim == 1
    y2 = y_arr.reshape(y_arr.shape[0], -1)
    p2 = p_arr.reshape(p_arr.shape[0], -1)
    if groups is None:
        raise ConfigError("aggregate_by_patient needs a patient (or study) key per image")
    codes, keys = factorize_groups(groups, y2.shape[0])
    y_grouped = pd.DataFrame(y2).groupby(codes).max()
    p_grouped = getattr(pd.DataFrame(p2).groupby(codes), how)()
    n_images = np.bincount(codes)
    y_out = y_grouped.to_numpy(dtype=np.float64)
    p_out = p_grouped.to_numpy(dtype=np.float64)
    if one_d:
        y_out, p_out = y_out[:, 0], p_out[:, 0]
    return GroupedPredictions(y_out, p_out, keys, n_images)


def aggregate_table_by_patient(
    table: pd.DataFrame,
    *,
    group_col: str,
    label_cols: Sequence[str],
    prob_cols: Sequence[str],
    how: Literal["max", "mean"] = "max",
) -> pd.DataFrame:
    """:func:`aggregate_by_patient` for a predictions table; one row per ``group_col`` value.

    Returns a DataFrame with ``group_col``, the label and probability columns, and
    ``n_images``.
    """
    missing = [c for c in (group_col, *label_cols, *prob_cols) if c not in table.columns]
    if missing:
        raise DataError(f"predictions table lacks columns {missing}; it has {list(table.columns)}")
    if len(label_cols) != len(prob_cols):
        raise ConfigError("label_cols and prob_cols must pair up one to one")
    grouped = aggregate_by_patient(
        table[list(label_cols)].to_numpy(dtype=np.float64),
        table[list(prob_cols)].to_numpy(dtype=np.float64),
        table[group_col].to_numpy(),
        how=how,
    )
    out = pd.DataFrame({group_col: grouped.keys})
    for j, col in enumerate(label_cols):
        out[col] = grouped.y[:, j]
    for j, col in enumerate(prob_cols):
        out[col] = grouped.p[:, j]
    out["n_images"] = grouped.n_images
    return out
