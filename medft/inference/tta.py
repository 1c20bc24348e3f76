"""Test-time augmentation: a few anatomically valid views of each model input.

A projection radiograph may come a little shifted or zoomed relative to the training
films, so the views are small shifts and scales of the display-space square (padding is
0, the black the ``pad`` fit uses). Left-right flips are left out unless asked for: chest
anatomy is not symmetric (heart, aortic knob, gastric bubble), and a flipped film is a
different, usually abnormal-looking, patient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["TTA_VIEWS", "tta_batches"]

SHIFT = 0.03
"""Shift of the shifted views, as a fraction of the image side."""
ZOOM = 0.05
"""Relative zoom in and out of the scaled views."""

TTA_VIEWS = ("identity", "shift+", "shift-", "zoom-in", "zoom-out")
"""The views averaged with ``tta=True``, in order."""

_AFFINES: dict[str, tuple[float, float, float]] = {
    # (scale of the sampling grid, x shift, y shift) in normalised [-1, 1] coordinates
    "shift+": (1.0, 2 * SHIFT, 2 * SHIFT),
    "shift-": (1.0, -2 * SHIFT, -2 * SHIFT),
    "zoom-in": (1.0 / (1.0 + ZOOM), 0.0, 0.0),
    "zoom-out": (1.0 / (1.0 - ZOOM), 0.0, 0.0),
}


def _view(images: torch.Tensor, name: str) -> torch.Tensor:
    scale, dx, dy = _AFFINES[name]
    theta = torch.tensor(
        [[scale, 0.0, dx], [0.0, scale, dy]], dtype=images.dtype, device=images.device
    ).expand(images.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def tta_batches(
    images: torch.Tensor, *, enabled: bool = True, flip: bool = False
) -> list[torch.Tensor]:
    """The views of a ``(B, C, S, S)`` batch: the batch itself first, then the others.

    Args:
        images: Display-space model inputs in [0, 1].
        enabled: False returns just ``[images]``.
        flip: Add a left-right flip of the batch.
    """
    if not enabled:
        return [images]
    views = [images] + [_view(images, name).clamp(0.0, 1.0) for name in TTA_VIEWS[1:]]
    if flip:
        views.append(torch.flip(images, dims=(-1,)))
    return views
