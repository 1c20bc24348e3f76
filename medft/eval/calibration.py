"""Calibration: do predicted probabilities match how often findings are present?

Brier score and expected calibration error (ECE) summarise it, reliability bins draw it, and
temperature scaling repairs the most common failure of fine-tuned networks: over-confidence.
A temperature T divides every logit (z -> z / T), which changes the probabilities but never
their order, so AUROC, AP and the ranking of images are untouched.

medft fits **one temperature shared by all findings** (Guo et al., 2017). Per-finding
temperatures fit rare findings on a handful of positives and overfit; a shared one has a
single parameter estimated from every label. For per-finding temperatures, call
:func:`fit_temperature` once per column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import optimize

from medft.errors import ConfigError, DataError
from medft.stats import known_pairs

#: Probabilities are clipped to [eps, 1 - eps] before taking logits.
PROB_EPS = 1e-6
#: Temperatures are searched in [1/20, 20] (log scale).
_LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))

BinStrategy = Literal["uniform", "quantile"]
ScoreKind = Literal["logits", "probs"]


def brier_score(y: Any, p: Any) -> float:
    """Mean squared difference between probability and outcome, NaN with no known labels.

    0 is perfect; always predicting the prevalence pi scores pi (1 - pi).
    """
    y_k, p_k, _ = known_pairs(y, p)
    if y_k.size == 0:
        return math.nan
    return float(np.mean((p_k - y_k) ** 2))


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin calibration for a reliability diagram.

    Attributes:
        edges: ``n_bins + 1`` bin edges on [0, 1]; bin k is [edges[k], edges[k+1]) and the
            last bin includes 1.
        mean_predicted: Mean probability of the images in each bin (NaN when empty).
        observed_frequency: Fraction of positives in each bin (NaN when empty).
        counts: Images per bin.
    """

    edges: np.ndarray
    mean_predicted: np.ndarray
    observed_frequency: np.ndarray
    counts: np.ndarray

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        """Lists for JSON (NaN stays float NaN; medft._io.write_json turns it into null)."""
        return {
            "edges": self.edges.tolist(),
            "mean_predicted": self.mean_predicted.tolist(),
            "observed_frequency": self.observed_frequency.tolist(),
            "counts": self.counts.astype(int).tolist(),
        }


def _bin_edges(p: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if n_bins < 1:
        raise ConfigError(f"number of calibration bins must be >= 1, got {n_bins}")
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        if p.size == 0:
            return np.linspace(0.0, 1.0, n_bins + 1)
        edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
        return np.maximum.accumulate(edges)
    raise ConfigError(f"bin strategy {strategy!r} is not supported; use 'uniform' or 'quantile'")


def reliability_bins(
    y: Any, p: Any, *, n_bins: int = 15, strategy: BinStrategy = "uniform"
) -> ReliabilityBins:
    """Bin probabilities and compare each bin's mean prediction with its positive rate.

    Args:
        y: Labels 1/0/NaN (NaN rows dropped).
        p: Probabilities in [0, 1].
        n_bins: Number of bins.
        strategy: ``"uniform"`` (equal width) or ``"quantile"`` (about equal counts; tied
            probabilities can leave some quantile bins empty).
    """
    y_k, p_k, _ = known_pairs(y, p)
    if p_k.size and (p_k.min() < 0.0 or p_k.max() > 1.0):
        raise DataError(
            f"calibration needs probabilities in [0, 1]; got values from {p_k.min():.3g} "
            f"to {p_k.max():.3g} (apply a sigmoid to logits first)"
        )
    edges = _bin_edges(p_k, n_bins, strategy)
    which = np.clip(np.searchsorted(edges, p_k, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(which, weights=p_k, minlength=n_bins)
    sum_y = np.bincount(which, weights=y_k, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(counts > 0, sum_p / counts, np.nan)
        freq = np.where(counts > 0, sum_y / counts, np.nan)
    return ReliabilityBins(edges, mean_p, freq, counts.astype(np.int64))


def expected_calibration_error(
    y: Any, p: Any, *, n_bins: int = 15, strategy: BinStrategy = "uniform"
) -> float:
    """ECE = sum over bins of (n_k / n) |observed frequency_k - mean predicted_k|.

    The binary (per finding) form: each image counts once with its probability of the
    finding. NaN when no label is known.
    """
    bins = reliability_bins(y, p, n_bins=n_bins, strategy=strategy)
    total = bins.counts.sum()
    if total == 0:
        return math.nan
    filled = bins.counts > 0
    gaps = np.abs(bins.observed_frequency[filled] - bins.mean_predicted[filled])
    return float(np.sum(bins.counts[filled] / total * gaps))


def probs_to_logits(p: Any, *, eps: float = PROB_EPS) -> np.ndarray:
    """Logits of probabilities clipped to [eps, 1 - eps] (so 0 and 1 stay finite)."""
    clipped = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(clipped) - np.log1p(-clipped)


def _as_logits(scores: Any, kind: ScoreKind) -> np.ndarray:
    if kind == "logits":
        return np.asarray(scores, dtype=np.float64)
    if kind == "probs":
        arr = np.asarray(scores, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
            raise DataError("scores given as probabilities lie outside [0, 1]; pass kind='logits'")
        return probs_to_logits(arr)
    raise ConfigError(f"score kind {kind!r} is not supported; use 'logits' or 'probs'")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def binary_nll(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(logits) against 0/1 labels (numerically stable)."""
    return float(np.mean(np.logaddexp(0.0, logits) - y * logits))


def fit_temperature(scores: Any, y: Any, *, kind: ScoreKind = "logits") -> float:
    """Fit one temperature T minimising the NLL of sigmoid(z / T) on validation data.

    Args:
        scores: ``(N,)`` or ``(N, L)`` logits, or probabilities with ``kind="probs"`` (they
            are turned into logits after clipping to [1e-6, 1 - 1e-6]).
        y: Labels of the same shape, 1/0/NaN; NaN entries are ignored.
        kind: ``"logits"`` or ``"probs"``.

    Returns:
        T in [0.05, 20]: T > 1 softens over-confident outputs, T < 1 sharpens.

    Raises:
        DataError: the known labels hold only one class (no temperature is identifiable).
    """
    z = _as_logits(scores, kind)
    y_arr = np.asarray(y, dtype=np.float64)
    if z.shape != y_arr.shape:
        raise DataError(f"scores {z.shape} and labels {y_arr.shape} differ in shape")
    y_k, z_k, _ = known_pairs(y_arr.reshape(-1), z.reshape(-1))
    if y_k.size == 0 or y_k.min() == y_k.max():
        raise DataError(
            "cannot fit a temperature: the validation labels hold only one class "
            f"({y_k.size} known labels); use a validation split with positives and negatives"
        )
    result = optimize.minimize_scalar(
        lambda log_t: binary_nll(z_k / math.exp(log_t), y_k),
        bounds=_LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(result.x))


def apply_temperature(scores: Any, temperature: float, *, kind: ScoreKind = "logits") -> np.ndarray:
    """Calibrated probabilities sigmoid(z / T) from logits (or probabilities, ``kind="probs"``)."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a positive number, got {temperature!r}")
    return _sigmoid(_as_logits(scores, kind) / float(temperature))


__all__ = [
    "PROB_EPS",
    "ReliabilityBins",
    "apply_temperature",
    "binary_nll",
    "brier_score",
    "expected_calibration_error",
    "fit_temperature",
    "probs_to_logits",
    "reliability_bins",
]
