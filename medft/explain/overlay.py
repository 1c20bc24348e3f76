"""Colour overlays of saliency maps, with one display normalisation shared across findings.

A saliency map has no natural colour scale. Stretching each map to its own min–max (what
most CAM tools do) makes a p=0.02 finding look as "hot" as a p=0.98 one. Here the scale is a
:class:`DisplayNorm` chosen once per image (or per study) and applied to every finding, and
it carries a sentence (:meth:`DisplayNorm.describe`) saying what full colour means, to be
shown under the image.

Only the positive part of a map (evidence *for* the finding) is drawn. The colour's opacity
grows with the displayed value, so a weak map stays faint instead of tinting the whole image.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medft.errors import ConfigError
from medft.explain.saliency import SaliencyResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NormMode = Literal["probability", "percentile", "fixed"]
Colormap = Literal["jet", "inferno", "magma", "viridis", "turbo", "hot"]


@dataclass(frozen=True)
class DisplayNorm:
    """Maps raw saliency to display values in [0, 1]: ``clip(max(map, 0) * gain, 0, 1)``.

    Build one with :meth:`shared` (from the results of one image) or :meth:`fixed` (one
    scale for a whole study, so images are comparable too).

    Attributes:
        mode: ``"probability"``, ``"percentile"`` or ``"fixed"``.
        gains: per-finding gain (probability mode).
        gain: one gain for every finding (percentile and fixed modes).
        text: the human-readable description returned by :meth:`describe`.
    """

    mode: NormMode
    gains: Mapping[str, float] = field(default_factory=dict)
    gain: float | None = None
    text: str = ""

    @classmethod
    def shared(
        cls,
        results: Sequence[SaliencyResult],
        *,
        mode: Literal["probability", "percentile"] = "probability",
        percentile: float = 99.0,
    ) -> DisplayNorm:
        """One normalisation for all findings of one image.

        ``"probability"``: each finding's map is scaled so its peak equals the model's
        probability for that finding (full colour = probability 1), so an unlikely finding
        is drawn faint. ``"percentile"``: every map is divided by one common value, the
        ``percentile``-th percentile of the positive values of all maps together, so
        brightness compares map magnitudes between findings (all results must share a
        method, hence units).
        """
        if not results:
            raise ConfigError("DisplayNorm.shared needs at least one SaliencyResult")
        if mode == "probability":
            gains = {}
            for result in results:
                peak = float(np.max(result.original, initial=0.0))
                gains[result.finding] = result.probability / peak if peak > 0 else 0.0
            text = (
                "Colour: each finding's map is scaled so its brightest point equals the "
                "model's probability for that finding (full colour = probability 1.0); a faint "
                "map means an unlikely finding. Maps are not stretched per finding."
            )
            return cls(mode="probability", gains=gains, text=text)
        if mode != "percentile":
            raise ConfigError(f"display mode must be 'probability' or 'percentile', got {mode!r}")
        if not 0 < percentile <= 100:
            raise ConfigError(f"percentile must be in (0, 100], got {percentile}")
        methods = {result.method for result in results}
        if len(methods) > 1:
            raise ConfigError(
                f"percentile display needs maps of one method (one unit); got {sorted(methods)}"
            )
        positive = np.concatenate([r.original[r.original > 0].ravel() for r in results])
        vmax = float(np.percentile(positive, percentile)) if positive.size else 0.0
        units = results[0].units
        text = (
            f"Colour: one scale shared by all {len(results)} findings of this image; full "
            f"colour = {vmax:.3g} ({units}), the {percentile:g}th percentile of the positive "
            f"{results[0].method} values of all maps. Brightness compares findings; maps are "
            "not stretched per finding."
        )
        return cls(mode="percentile", gain=1.0 / vmax if vmax > 0 else 0.0, text=text)

    @classmethod
    def fixed(cls, vmax: float, *, units: str = "raw map units") -> DisplayNorm:
        """One fixed scale (full colour at ``vmax``), e.g. chosen once for a whole study."""
        if not vmax > 0:
            raise ConfigError(f"vmax must be positive, got {vmax}")
        text = (
            f"Colour: fixed scale, full colour = {vmax:.3g} ({units}), the same for every "
            "finding and every image."
        )
        return cls(mode="fixed", gain=1.0 / vmax, text=text)

    def describe(self) -> str:
        """A sentence saying what the colours mean, to show under the image."""
        return self.text

    def apply(
        self, saliency: SaliencyResult | np.ndarray, finding: str | None = None
    ) -> np.ndarray:
        """Display values in [0, 1] for one map (a result, or an array plus its ``finding``)."""
        if isinstance(saliency, SaliencyResult):
            finding, values = saliency.finding, saliency.original
        else:
            values = np.asarray(saliency, dtype=np.float32)
        if self.gain is not None:
            gain = self.gain
        elif finding in self.gains:
            gain = self.gains[finding]
        else:
            raise ConfigError(
                f"this probability-scaled DisplayNorm has no finding {finding!r} "
                f"(knows {sorted(self.gains)}); build it from the same results"
            )
        return np.clip(np.maximum(values, 0.0) * gain, 0.0, 1.0).astype(np.float32)


def render_overlay(
    image: np.ndarray,
    saliency: SaliencyResult | np.ndarray,
    *,
    normalization: DisplayNorm,
    finding: str | None = None,
    alpha: float = 0.4,
    cmap: Colormap = "jet",
) -> np.ndarray:
    """Colour a saliency map over the windowed radiograph; uint8 RGB (H, W, 3).

    Args:
        image: display-space (H, W) image in [0, 1] (the one the map was computed from).
        saliency: a :class:`SaliencyResult` (its ``original`` map is used) or an (H, W) map
            on the original grid.
        normalization: the shared :class:`DisplayNorm`.
        finding: the finding of an array ``saliency`` (needed in probability mode).
        alpha: opacity of full colour; each pixel's opacity is ``alpha * value``.
        cmap: a matplotlib colour map name.
    """
    gray = _gray(image)
    values = normalization.apply(saliency, finding)
    if values.shape != gray.shape:
        raise ConfigError(
            f"saliency shape {values.shape} differs from image shape {gray.shape}; use "
            "SaliencyResult.original, which is on the original image grid"
        )
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    colours = _colormap(cmap)(values)[..., :3]
    weight = (alpha * values)[..., None]
    blended = gray[..., None] * (1.0 - weight) + colours * weight
    return np.round(np.clip(blended, 0.0, 1.0) * 255).astype(np.uint8)


def grid_image(
    image: np.ndarray,
    results: Sequence[SaliencyResult],
    normalization: DisplayNorm,
    **options: Any,
) -> np.ndarray:
    """:func:`grid_figure` rendered to a uint8 RGB array (what ``medft explain`` saves)."""
    figure = grid_figure(image, results, normalization, **options)
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def grid_figure(
    image: np.ndarray,
    results: Sequence[SaliencyResult],
    normalization: DisplayNorm,
    *,
    captions: Sequence[str] | None = None,
    alpha: float = 0.4,
    cmap: Colormap = "jet",
    columns: int = 4,
    panel_inches: float = 3.0,
    dpi: int = 100,
) -> Figure:
    """One matplotlib figure per image: the radiograph, then one overlay per finding.

    Each panel is titled with the finding, its probability and the method, plus that
    finding's line of ``captions`` if given (e.g. the call at the operating point); the
    normalisation's :meth:`~DisplayNorm.describe` sentence is printed underneath, next to a
    colour bar from 0 to full colour. Save it as PDF or SVG for a paper with
    ``figure.savefig(path)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if not results:
        raise ConfigError("grid_image needs at least one SaliencyResult")
    if captions is not None and len(captions) != len(results):
        raise ConfigError(f"grid_image got {len(captions)} captions for {len(results)} results")
    extra = [f"\n{c}" for c in captions] if captions is not None else [""] * len(results)
    gray = _gray(image)
    panels = [("image", None, "")]
    panels += [(r.finding, r, e) for r, e in zip(results, extra, strict=True)]
    ncols = max(1, min(columns, len(panels)))
    nrows = -(-len(panels) // ncols)
    aspect = gray.shape[0] / gray.shape[1]
    figure = Figure(
        figsize=(panel_inches * ncols, panel_inches * aspect * nrows + 1.3),
        dpi=dpi,
        # "compressed" is the layout for fixed-aspect images: "constrained" let multi-line
        # titles run off the top edge once the colour bar's caption took its space.
        layout="compressed",
    )
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (title, result, caption) in zip(axes.ravel(), panels, strict=False):
        if result is None:
            ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
            ax.set_title("image", fontsize=10)
            continue
        ax.imshow(render_overlay(gray, result, normalization=normalization, alpha=alpha, cmap=cmap))
        ax.set_title(
            f"{title}\np = {result.probability:.3f} · {result.method}{caption}", fontsize=10
        )
    bar = figure.colorbar(
        ScalarMappable(norm=Normalize(0, 1), cmap=_colormap(cmap)),
        ax=axes.ravel().tolist(),
        orientation="horizontal",
        fraction=0.04,
        aspect=40,
    )
    bar.set_ticks([0, 1], labels=["0", "full colour"])
    width_chars = int(panel_inches * ncols * 14)
    bar.set_label(textwrap.fill(normalization.describe(), width_chars), fontsize=8)
    return figure


def _gray(image: np.ndarray) -> np.ndarray:
    gray = np.asarray(image)
    if gray.ndim != 2:
        raise ConfigError(f"overlay needs the gray (H, W) display image, got shape {gray.shape}")
    if gray.dtype == np.uint8:
        return gray.astype(np.float32) / 255.0
    return np.clip(gray.astype(np.float32), 0.0, 1.0)


def _colormap(name: str):
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError as err:
        raise ConfigError(f"unknown colour map {name!r}; try 'jet' or 'inferno'") from err
