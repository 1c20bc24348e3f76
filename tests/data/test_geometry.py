"""Fitting rectangular radiographs into square inputs, and mapping maps back."""

from __future__ import annotations

import numpy as np
import pytest

from medft.data.geometry import fit_to_square, plan_fit


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (256, 256), (1000, 37)])
@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_output_is_square_and_keeps_aspect(shape: tuple[int, int], mode: str) -> None:
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    out, geometry = fit_to_square(image, 64, mode)
    assert tuple(out.shape) == (64, 64)
    h, w = geometry.resized_shape
    assert abs(h - shape[0] * geometry.scale) <= 1 and abs(w - shape[1] * geometry.scale) <= 1
    if mode == "pad":
        assert max(h, w) == 64
    else:
        assert min(h, w) == 64


def test_pad_mode_fills_borders_and_keeps_content() -> None:
    image = np.ones((100, 50), dtype=np.float32)
    out, geometry = fit_to_square(image, 40, "pad", fill=0.0)
    mask = geometry.content_mask()
    assert out.numpy()[~mask].max() == 0.0
    assert np.allclose(out.numpy()[mask], 1.0, atol=1e-5)
    assert mask.sum() == 40 * 20


def test_point_mapping_round_trips() -> None:
    geometry = plan_fit((480, 300), 224, "pad")
    y, x = geometry.to_model_point(120.0, 75.0)
    assert geometry.to_original_point(y, x) == pytest.approx((120.0, 75.0))


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_map_back_to_original_puts_a_blob_where_it_was(mode: str) -> None:
    """A bright spot in the original lands at the same place after fit + to_original."""
    shape = (300, 220)
    image = np.zeros(shape, dtype=np.float32)
    cy, cx = 150, 110
    image[cy - 10 : cy + 10, cx - 10 : cx + 10] = 1.0
    out, geometry = fit_to_square(image, 64, mode)
    back = geometry.to_original(out.numpy())
    assert back.shape == shape
    peak = np.unravel_index(np.argmax(back), shape)
    assert abs(peak[0] - cy) <= 12 and abs(peak[1] - cx) <= 12


def test_crop_mode_marks_unseen_regions_with_fill() -> None:
    geometry = plan_fit((400, 100), 50, "crop")
    back = geometry.to_original(np.ones((50, 50), dtype=np.float32), fill=-1.0)
    assert back[0, 50] == -1.0 and back[-1, 50] == -1.0  # top and bottom were cropped away
    assert back[200, 50] == pytest.approx(1.0)


def test_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="fit mode"):
        plan_fit((10, 10), 8, "stretch")  # type: ignore[arg-type]
