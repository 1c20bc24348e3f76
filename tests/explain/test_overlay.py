"""Tests for medft.explain.overlay: shared display normalisation and rendering."""

from __future__ import annotations

import numpy as np
import pytest

from medft.data.geometry import plan_fit
from medft.errors import ConfigError
from medft.explain.overlay import DisplayNorm, grid_figure, grid_image, render_overlay
from medft.explain.saliency import SaliencyResult

SHAPE = (60, 40)


def gray() -> np.ndarray:
    return np.tile(np.linspace(0.2, 0.8, SHAPE[1], dtype=np.float32), (SHAPE[0], 1))


def blob(amplitude: float = 1.0) -> np.ndarray:
    rows, cols = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    return (amplitude * np.exp(-((rows - 20) ** 2 + (cols - 25) ** 2) / 50)).astype(np.float32)


def result(finding: str, probability: float, saliency: np.ndarray, method="gradcam"):
    return SaliencyResult(
        finding=finding,
        index=0,
        probability=probability,
        method=method,
        layer="layer4",
        raw=saliency[::10, ::10].copy(),
        original=saliency,
        geometry=plan_fit(SHAPE, 64, "pad"),
    )


def colour_strength(overlay: np.ndarray, image: np.ndarray) -> float:
    """Mean absolute change from the plain gray image, in 0-255 units."""
    plain = np.round(image * 255)[..., None]
    return float(np.abs(overlay.astype(np.float64) - plain).mean())


def test_unlikely_finding_renders_fainter_than_likely_one_under_probability():
    """Same map shape and magnitude: only the probability differs, and it must show."""
    unlikely, likely = result("nodule", 0.02, blob()), result("effusion", 0.98, blob())
    norm = DisplayNorm.shared([unlikely, likely], mode="probability")
    assert norm.apply(unlikely).max() == pytest.approx(0.02)
    assert norm.apply(likely).max() == pytest.approx(0.98)
    image = gray()
    faint = colour_strength(render_overlay(image, unlikely, normalization=norm), image)
    hot = colour_strength(render_overlay(image, likely, normalization=norm), image)
    assert hot > 20 * faint > 0
    assert "probability" in norm.describe()


def test_percentile_mode_keeps_magnitudes_comparable_between_findings():
    weak, strong = result("a", 0.5, blob(0.1)), result("b", 0.5, blob(1.0))
    norm = DisplayNorm.shared([weak, strong], mode="percentile", percentile=99)
    assert norm.apply(weak).max() < 0.2 < 0.9 < norm.apply(strong).max()
    # One common divisor: the ratio of the maps survives (away from clipping).
    np.testing.assert_allclose(norm.apply(weak), norm.apply(blob(0.1), "a"))
    text = norm.describe()
    assert "99th percentile" in text and "logit" in text and "2 findings" in text


def test_percentile_refuses_mixed_units():
    with pytest.raises(ConfigError, match="one method"):
        DisplayNorm.shared(
            [result("a", 0.5, blob()), result("b", 0.5, blob(), method="occlusion")],
            mode="percentile",
        )


def test_fixed_scale_and_its_description():
    norm = DisplayNorm.fixed(0.5, units="logit contribution per feature cell")
    np.testing.assert_allclose(norm.apply(blob(0.25), "anything").max(), 0.5, rtol=1e-6)
    assert "0.5" in norm.describe() and "every image" in norm.describe()
    with pytest.raises(ConfigError):
        DisplayNorm.fixed(0)


def test_probability_norm_needs_a_known_finding():
    norm = DisplayNorm.shared([result("a", 0.5, blob())])
    with pytest.raises(ConfigError, match="no finding 'b'"):
        norm.apply(blob(), "b")


def test_zero_or_negative_saliency_leaves_the_image_untouched():
    image = gray()
    norm = DisplayNorm.fixed(1.0)
    for saliency in (np.zeros(SHAPE, np.float32), -blob()):
        overlay = render_overlay(image, saliency, normalization=norm, finding="a")
        assert overlay.dtype == np.uint8 and overlay.shape == (*SHAPE, 3)
        np.testing.assert_array_equal(overlay, np.repeat(np.round(image * 255)[..., None], 3, -1))


def test_alpha_controls_opacity():
    image, saliency = gray(), blob()
    norm = DisplayNorm.fixed(1.0)
    strengths = [
        colour_strength(
            render_overlay(image, saliency, normalization=norm, finding="a", alpha=alpha), image
        )
        for alpha in (0.0, 0.3, 0.8)
    ]
    assert strengths[0] == 0 and strengths[0] < strengths[1] < strengths[2]


def test_shape_mismatch_is_refused():
    with pytest.raises(ConfigError, match="original image grid"):
        render_overlay(gray(), np.zeros((10, 10)), normalization=DisplayNorm.fixed(1), finding="a")


def test_grid_image_has_one_panel_per_finding_plus_the_image():
    results = [result("effusion", 0.9, blob()), result("nodule", 0.1, blob(0.3))]
    norm = DisplayNorm.shared(results)
    two = grid_image(gray(), results, norm)
    one = grid_image(gray(), results[:1], norm)
    assert two.dtype == np.uint8 and two.ndim == 3 and two.shape[2] == 3
    assert two.shape[1] > one.shape[1]  # a third panel makes the figure wider
    assert two.std() > 0
    captioned = grid_image(gray(), results, norm, captions=["POSITIVE", "NEGATIVE"])
    assert captioned.shape == two.shape and not np.array_equal(captioned, two)  # captions drawn
    with pytest.raises(ConfigError, match="1 captions for 2 results"):
        grid_image(gray(), results, norm, captions=["only one"])


def test_grid_titles_stay_inside_the_figure_with_captions():
    """Three-line titles (finding, probability, caption) above tall images must not be clipped."""
    results = [result("effusion", 0.9, blob()), result("nodule", 0.1, blob(0.3))]
    norm = DisplayNorm.shared(results)  # its two-line sentence under the colour bar
    figure = grid_figure(gray(), results, norm, captions=["positive at 0.55", "negative at 0.55"])
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    titled = [ax for ax in figure.axes if ax.get_title()]
    assert len(titled) == 3
    for ax in titled:
        box = ax.title.get_window_extent(renderer)
        assert box.y0 >= 0 and box.y1 <= figure.bbox.height, ax.get_title()
