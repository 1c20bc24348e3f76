"""The ROC curve on a fixed false-positive-rate grid with a patient-bootstrap band."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medft.stats.bootstrap import bootstrap_counts, codes_of_known, weight_blocks
from medft.stats.inputs import check_ci, known_pairs
from medft.stats.ranking import _class_weights, _score_order

__all__ = ["RocBand", "roc_band"]


@dataclass(frozen=True)
class RocBand:
    """ROC curve on a fixed false-positive-rate grid with a pointwise bootstrap band."""

    fpr: np.ndarray
    tpr: np.ndarray
    tpr_low: np.ndarray
    tpr_high: np.ndarray
    n_boot_valid: int

    def to_dict(self) -> dict[str, Any]:
        """Lists of floats for JSON."""
        return {
            "fpr": self.fpr.tolist(),
            "tpr": self.tpr.tolist(),
            "tpr_low": self.tpr_low.tolist(),
            "tpr_high": self.tpr_high.tolist(),
            "n_boot_valid": self.n_boot_valid,
        }


def _interp_roc(grid: np.ndarray, fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    """Piecewise-linear ROC at ``grid``; at an FPR where the curve rises, its top."""
    last = np.searchsorted(fpr, grid, side="right") - 1
    on_point = fpr[last] == grid
    nxt = np.minimum(last + 1, fpr.size - 1)
    span = fpr[nxt] - fpr[last]
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(span > 0, (tpr[nxt] - tpr[last]) / np.where(span > 0, span, 1.0), 0.0)
    return np.where(on_point, tpr[last], tpr[last] + (grid - fpr[last]) * slope)


def _roc_on_grid(y: np.ndarray, p: np.ndarray, w: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """TPR interpolated at ``grid`` FPRs for each weight row (NaN rows: one class).

    Where the curve rises vertically (several TPRs at one FPR) the highest TPR is used.
    """
    order, starts, is_pos = _score_order(y, p)
    pos, neg = _class_weights(w[:, order], is_pos, starts)
    tp = np.cumsum(pos[:, ::-1], axis=1)
    fp = np.cumsum(neg[:, ::-1], axis=1)
    out = np.full((w.shape[0], grid.size), np.nan)
    for b in range(w.shape[0]):
        if tp[b, -1] > 0 and fp[b, -1] > 0:
            fpr = np.concatenate(([0.0], fp[b] / fp[b, -1]))
            tpr = np.concatenate(([0.0], tp[b] / tp[b, -1]))
            out[b] = _interp_roc(grid, fpr, tpr)
    return out


def roc_band(
    y: Any,
    p: Any,
    groups: Any,
    *,
    n: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    n_points: int = 101,
) -> RocBand:
    """ROC curve with a pointwise patient-level bootstrap band (for the report's ROC plot).

    TPR is linearly interpolated at ``n_points`` evenly spaced FPRs (the trapezoidal ROC,
    whose area is :func:`auroc`); the band is the percentile interval of each grid point.
    """
    check_ci(ci)
    y_k, p_k, known = known_pairs(y, p)
    codes, n_groups = codes_of_known(groups, known)
    grid = np.linspace(0.0, 1.0, n_points)
    tpr = _roc_on_grid(y_k, p_k, np.ones((1, y_k.size)), grid)[0]
    counts = bootstrap_counts(n_groups, n=n, seed=seed)
    curves = np.full((n, n_points), np.nan)
    for block, w in weight_blocks(counts, codes):
        curves[block] = _roc_on_grid(y_k, p_k, w, grid)
    valid = curves[np.isfinite(curves).all(axis=1)]
    if valid.shape[0] == 0:
        nan = np.full(n_points, np.nan)
        return RocBand(grid, tpr, nan, nan.copy(), 0)
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(valid, [alpha, 1.0 - alpha], axis=0)
    return RocBand(grid, tpr, low, high, int(valid.shape[0]))
