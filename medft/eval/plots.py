"""Evaluation figures as PNG bytes: ROC with a CI band, PR, reliability, confusion matrices.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no display,
no global backend switch), one panel per finding, and returned as PNG bytes so the caller
decides where they go: a file written atomically, or base64 inside ``report.html``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medft.eval.calibration import reliability_bins
from medft.eval.metrics import RocBand, known_pairs, threshold_metrics, undefined_reason

__all__ = [
    "FoldCurve",
    "confusion_png",
    "fold_roc_png",
    "pr_png",
    "reliability_png",
    "roc_png",
]

_PANEL_INCHES = 3.2
_DPI = 110
_MAX_COLUMNS = 4


def _grid(n_panels: int) -> tuple[Figure, list]:
    """A figure with one square-ish panel per finding (at most four per row)."""
    n_panels = max(1, n_panels)
    columns = min(_MAX_COLUMNS, n_panels)
    rows = math.ceil(n_panels / columns)
    fig = Figure(figsize=(_PANEL_INCHES * columns, _PANEL_INCHES * rows), dpi=_DPI)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, columns, i + 1) for i in range(n_panels)]
    return fig, axes


def _png(fig: Figure) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _empty(ax, title: str, reason: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, reason, ha="center", va="center", wrap=True, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def roc_png(
    bands: Mapping[str, RocBand | None],
    aurocs: Mapping[str, Mapping[str, float]],
    *,
    ci: float = 0.95,
) -> bytes:
    """ROC curve per finding with its pointwise patient-bootstrap band.

    Args:
        bands: Finding -> :func:`medft.eval.metrics.roc_band` result (None: undefined).
        aurocs: Finding -> ``{"value", "ci_low", "ci_high"}`` for the legend.
        ci: Confidence level of the band (for the legend).
    """
    fig, axes = _grid(len(bands))
    for ax, (label, band) in zip(axes, bands.items(), strict=False):
        if band is None or not np.isfinite(band.tpr).all():
            _empty(ax, label, "ROC undefined:\none class only")
            continue
        entry = aurocs.get(label, {})
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
        if band.n_boot_valid:
            ax.fill_between(
                band.fpr,
                band.tpr_low,
                band.tpr_high,
                color="tab:blue",
                alpha=0.2,
                linewidth=0,
                label=f"{ci:.0%} band",
            )
        ax.plot(
            band.fpr,
            band.tpr,
            color="tab:blue",
            label=f"AUROC {_fmt_ci(entry)}",
        )
        _unit_axes(ax, label, "1 - specificity", "sensitivity")
        ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def pr_png(y: np.ndarray, p: np.ndarray, labels: Sequence[str], ap: Mapping[str, Mapping]) -> bytes:
    """Precision-recall curve per finding with the chance line (the prevalence)."""
    from sklearn.metrics import precision_recall_curve

    fig, axes = _grid(len(labels))
    for j, (ax, label) in enumerate(zip(axes, labels, strict=False)):
        y_k, p_k, _ = known_pairs(y[:, j], p[:, j], name=label)
        reason = undefined_reason(y_k)
        if reason:
            _empty(ax, label, f"PR undefined:\n{reason}")
            continue
        precision, recall, _ = precision_recall_curve(y_k, p_k)
        prevalence = float(y_k.mean())
        ax.axhline(prevalence, linestyle=":", color="grey", linewidth=1, label="chance")
        ax.step(
            recall, precision, where="post", color="tab:orange", label=f"AP {_fmt_ci(ap[label])}"
        )
        _unit_axes(ax, label, "recall (sensitivity)", "precision (PPV)")
        ax.legend(loc="lower left", fontsize=8)
    return _png(fig)


def reliability_png(
    y: np.ndarray,
    p_before: np.ndarray,
    labels: Sequence[str],
    *,
    p_after: np.ndarray | None = None,
    temperature: float | None = None,
    n_bins: int = 10,
) -> bytes:
    """Reliability diagram per finding: observed frequency against mean predicted probability.

    With ``p_after`` the temperature-scaled curve is drawn too. Marker area grows with the
    number of images in the bin.
    """
    fig, axes = _grid(len(labels))
    curves = [("as trained", p_before, "tab:blue")]
    if p_after is not None:
        name = f"T = {temperature:.2f}" if temperature is not None else "calibrated"
        curves.append((name, p_after, "tab:green"))
    for j, (ax, label) in enumerate(zip(axes, labels, strict=False)):
        if undefined_reason(y[:, j]) == "no images with a known label":
            _empty(ax, label, "no known labels")
            continue
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="ideal")
        for name, probs, colour in curves:
            bins = reliability_bins(y[:, j], probs[:, j], n_bins=n_bins)
            filled = bins.counts > 0
            sizes = 12 + 60 * bins.counts[filled] / max(1, bins.counts.max())
            ax.plot(
                bins.mean_predicted[filled],
                bins.observed_frequency[filled],
                color=colour,
                marker="o",
                markersize=3,
                label=name,
            )
            ax.scatter(
                bins.mean_predicted[filled],
                bins.observed_frequency[filled],
                s=sizes,
                color=colour,
                alpha=0.35,
            )
        _unit_axes(ax, label, "mean predicted probability", "observed frequency")
        ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def confusion_png(
    y: np.ndarray, p: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float]
) -> bytes:
    """2x2 confusion matrix per finding at its operating point (``p >= threshold``)."""
    fig, axes = _grid(len(labels))
    for j, (ax, label) in enumerate(zip(axes, labels, strict=False)):
        threshold = float(thresholds.get(label, 0.5))
        counts = threshold_metrics(y[:, j], p[:, j], threshold)
        matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, matrix.max()))
        for (r, c), value in np.ndenumerate(matrix):
            dark = value > matrix.max() / 2
            ax.text(c, r, str(value), ha="center", va="center", color="white" if dark else "black")
        ax.set_xticks([0, 1], ["called neg", "called pos"], fontsize=8)
        ax.set_yticks([0, 1], ["truly neg", "truly pos"], fontsize=8)
        ax.set_title(f"{label} (t = {threshold:.3g})", fontsize=10)
    return _png(fig)


@dataclass(frozen=True)
class FoldCurve:
    """One fold's ROC curve for the cross-validation figure."""

    name: str
    fpr: np.ndarray
    tpr: np.ndarray
    auroc: float


def fold_roc_png(
    curves: Mapping[str, Sequence[FoldCurve]],
    pooled: Mapping[str, RocBand | None],
    pooled_auroc: Mapping[str, Mapping[str, float]],
) -> bytes:
    """Per finding: every fold's ROC (thin lines) and the pooled out-of-fold ROC with its band."""
    fig, axes = _grid(len(curves))
    for ax, (label, folds) in zip(axes, curves.items(), strict=False):
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
        for curve in folds:
            ax.plot(
                curve.fpr,
                curve.tpr,
                linewidth=0.9,
                alpha=0.7,
                label=f"{curve.name} {curve.auroc:.3f}",
            )
        band = pooled.get(label)
        if band is not None and np.isfinite(band.tpr).all():
            if band.n_boot_valid:
                ax.fill_between(band.fpr, band.tpr_low, band.tpr_high, color="black", alpha=0.12)
            ax.plot(
                band.fpr,
                band.tpr,
                color="black",
                linewidth=2,
                label=f"pooled {_fmt_ci(pooled_auroc.get(label, {}))}",
            )
        _unit_axes(ax, label, "1 - specificity", "sensitivity")
        ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def _unit_axes(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)


def _fmt_ci(entry: Mapping[str, float]) -> str:
    value = entry.get("value", math.nan)
    low, high = entry.get("ci_low", math.nan), entry.get("ci_high", math.nan)
    if value is None or not math.isfinite(value):
        return "n/a"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:.3f}"
    return f"{value:.3f} ({low:.3f}-{high:.3f})"
