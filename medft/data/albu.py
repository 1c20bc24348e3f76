"""The one albumentations adapter: X-ray augmentations MONAI lacks (CLAHE).

albumentations is pinned at 2.0.8, its last MIT release (later ones are AGPL), and
used only through :class:`AlbumentationsD`, so swapping it out touches one file.
The adapter is a MONAI randomizable dictionary transform: MONAI's random state
decides whether it fires and seeds the albumentations transform, so one seed
reproduces the whole augmentation chain.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never phone home for a version check

import albumentations as A
import lightning.pytorch  # noqa: F401  (before MONAI; see medft.model's docstring)
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["AlbumentationsD", "clahe_d"]

_MAX_SEED = 2**31 - 1


class AlbumentationsD(RandomizableTransform, MapTransform):
    """Apply an albumentations image-only transform to ``(1, H, W)`` images under keys.

    The image goes to albumentations as an ``(H, W)`` numpy array of its own dtype
    (uint8 or float32 in [0, 1]; albumentations converts internally where needed) and
    comes back in the type it arrived in (numpy or torch).

    Args:
        keys: Keys of the images to transform.
        transform: An albumentations ``ImageOnlyTransform`` built with ``p=1.0``; this
            adapter's ``prob`` decides whether it runs.
        prob: Probability of applying the transform to a sample (one draw per sample,
            shared by all keys).
        allow_missing_keys: Skip absent keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: A.ImageOnlyTransform,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        if getattr(transform, "p", 1.0) != 1.0:
            raise ValueError(
                f"build the albumentations transform with p=1.0 (got p={transform.p}); "
                "AlbumentationsD's prob decides whether it runs"
            )
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.transform = transform
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        """Decide whether to fire and draw the seed for albumentations' own parameters."""
        super().randomize(None)
        self._seed = int(self.R.randint(_MAX_SEED))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            self.transform.set_random_seed(self._seed)
            d[key] = self._apply(d[key])
        return d

    def _apply(self, image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        is_tensor = isinstance(image, torch.Tensor)
        array = image.detach().cpu().numpy() if is_tensor else np.asarray(image)
        if array.ndim != 3 or array.shape[0] != 1:
            raise ValueError(f"expected a (1, H, W) image, got shape {array.shape}")
        out = self.transform(image=np.ascontiguousarray(array[0]))["image"]
        out = np.asarray(out, dtype=array.dtype).reshape(array.shape)
        return torch.from_numpy(out) if is_tensor else out


def clahe_d(
    keys: KeysCollection,
    prob: float,
    clip_limit: tuple[float, float] = (1.0, 2.5),
    tile_grid_size: tuple[int, int] = (8, 8),
) -> AlbumentationsD:
    """CLAHE (contrast-limited adaptive histogram equalisation) as a MONAI transform.

    CLAHE brings out local contrast in lungs and mediastinum, mimicking the different
    post-processing vendors apply; a mild clip limit keeps noise from being amplified.
    """
    clahe = A.CLAHE(clip_limit=clip_limit, tile_grid_size=tile_grid_size, p=1.0)
    return AlbumentationsD(keys, clahe, prob=prob)
