"""Square model inputs from rectangular radiographs, and the way back.

Training, saliency and the demo all need the same two operations: fit an image of
any shape into the backbone's square input (keeping aspect, by padding or by
cropping), and map anything computed at model resolution (a saliency map) back
onto the original pixel grid. :class:`Geometry` records what was done so the
second operation is exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

FitMode = Literal["pad", "crop"]


@dataclass(frozen=True)
class Geometry:
    """How an original image was placed into a square model input.

    Attributes:
        original_shape: (H, W) of the image before resizing.
        size: side of the square model input.
        mode: ``"pad"`` (letterbox: the whole image is visible) or ``"crop"``
            (centre crop of the short side: no padding, edges lost).
        resized_shape: (h, w) of the image after scaling, before pad/crop.
        offset: (top, left) of the scaled image inside the square; negative in
            crop mode (the square starts inside the scaled image).
    """

    original_shape: tuple[int, int]
    size: int
    mode: FitMode
    resized_shape: tuple[int, int]
    offset: tuple[int, int]

    @property
    def scale(self) -> float:
        """Model pixels per original pixel."""
        return self.resized_shape[0] / self.original_shape[0]

    def content_mask(self) -> np.ndarray:
        """Boolean (size, size) mask of model pixels that show image content (not padding)."""
        mask = np.zeros((self.size, self.size), dtype=bool)
        top, left = self.offset
        h, w = self.resized_shape
        mask[max(top, 0) : min(top + h, self.size), max(left, 0) : min(left + w, self.size)] = True
        return mask

    def to_original(self, array: np.ndarray | torch.Tensor, fill: float = 0.0) -> np.ndarray:
        """Resample a (size, size) map at model resolution onto the original (H, W) grid.

        Padding is cut away first; in crop mode the parts of the original that the
        model never saw get ``fill``.
        """
        arr = torch.as_tensor(np.asarray(array, dtype=np.float32))
        if arr.shape != (self.size, self.size):
            arr = _resize(arr, (self.size, self.size))
        top, left = self.offset
        h, w = self.resized_shape
        canvas = torch.full((h, w), float(fill), dtype=torch.float32)
        # The window of the scaled image that the square covers, in both frames.
        y0, x0 = max(-top, 0), max(-left, 0)
        sy0, sx0 = max(top, 0), max(left, 0)
        ch, cw = min(h - y0, self.size - sy0), min(w - x0, self.size - sx0)
        canvas[y0 : y0 + ch, x0 : x0 + cw] = arr[sy0 : sy0 + ch, sx0 : sx0 + cw]
        return _resize(canvas, self.original_shape).numpy()

    def to_original_point(self, y: float, x: float) -> tuple[float, float]:
        """Map a (row, col) at model resolution to original pixel coordinates."""
        return (y - self.offset[0]) / self.scale, (x - self.offset[1]) / self.scale

    def to_model_point(self, y: float, x: float) -> tuple[float, float]:
        """Map a (row, col) in original pixels to model-input coordinates."""
        return y * self.scale + self.offset[0], x * self.scale + self.offset[1]

    def as_dict(self) -> dict:
        """Plain-data form (for collation and JSON)."""
        return asdict(self)


def plan_fit(original_shape: tuple[int, int], size: int, mode: FitMode = "pad") -> Geometry:
    """Work out the scaling and placement of an image without touching pixels."""
    if mode not in ("pad", "crop"):
        raise ValueError(f"fit mode must be 'pad' or 'crop', got {mode!r}")
    height, width = int(original_shape[0]), int(original_shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"image shape must be positive, got {original_shape}")
    side = max(height, width) if mode == "pad" else min(height, width)
    scale = size / side
    resized = (max(1, round(height * scale)), max(1, round(width * scale)))
    offset = ((size - resized[0]) // 2, (size - resized[1]) // 2)
    return Geometry((height, width), int(size), mode, resized, offset)


def fit_to_square(
    image: np.ndarray | torch.Tensor, size: int, mode: FitMode = "pad", fill: float = 0.0
) -> tuple[torch.Tensor, Geometry]:
    """Scale a (H, W) or (C, H, W) image into a (…, size, size) square, keeping aspect.

    Downscaling is antialiased (bilinear), so thin structures and small lesions
    survive the resize better than with plain interpolation.
    """
    tensor = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    tensor = tensor.to(torch.float32)
    squeeze = tensor.ndim == 2
    if squeeze:
        tensor = tensor[None]
    geometry = plan_fit((tensor.shape[-2], tensor.shape[-1]), size, mode)
    scaled = _resize(tensor, geometry.resized_shape)
    out = torch.full((tensor.shape[0], size, size), float(fill), dtype=torch.float32)
    top, left = geometry.offset
    h, w = geometry.resized_shape
    y0, x0 = max(-top, 0), max(-left, 0)
    sy0, sx0 = max(top, 0), max(left, 0)
    ch, cw = min(h - y0, size - sy0), min(w - x0, size - sx0)
    out[:, sy0 : sy0 + ch, sx0 : sx0 + cw] = scaled[:, y0 : y0 + ch, x0 : x0 + cw]
    return (out[0] if squeeze else out), geometry


def _resize(tensor: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (H, W) or (C, H, W) float tensor, antialiased when shrinking."""
    if tuple(tensor.shape[-2:]) == tuple(shape):
        return tensor.clone()
    squeeze = tensor.ndim == 2
    batch = tensor[None, None] if squeeze else tensor[None]
    shrinking = shape[0] < tensor.shape[-2] or shape[1] < tensor.shape[-1]
    out = F.interpolate(
        batch, size=tuple(shape), mode="bilinear", align_corners=False, antialias=shrinking
    )
    return out[0, 0] if squeeze else out[0]
