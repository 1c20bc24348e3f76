"""MONAI dictionary transforms that turn a file path into a training image.

The pipeline has two halves. The *deterministic prefix* (:class:`LoadXrayd` →
:class:`FitToSquared` → :class:`ToCompactd`) decodes a file into a compact
``uint8``/``uint16`` square at training resolution; its output depends only on the
file and on :func:`prefix_config`, so :mod:`medft.data.cache` computes it once and
reuses it across epochs, folds and runs. The *random part* (:class:`FromCompactd`,
then train-time augmentation suited to X-ray, then :class:`ClampIntensityd`) runs on
every access.

Images stay in display space: float32 in [0, 1], one channel, ``(1, S, S)``.
Normalising to a backbone's mean/std and replicating grey to RGB happen inside the
model, so the data layer knows nothing of models and checkpoints are self-contained.

Each transform exists as an array version (the logic) and a dictionary version that
only routes keys, following MONAI's pattern.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import lightning.pytorch  # noqa: F401  (before MONAI; see medft.model's docstring)
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Transform,
)

from medft.data import dicom
from medft.data.geometry import FitMode, fit_to_square
from medft.errors import ConfigError, medft_cause

__all__ = [
    "COMPACT_DTYPES",
    "FIT_MODES",
    "PIPELINE_VERSION",
    "AugmentConfig",
    "CacheDtype",
    "ClampIntensity",
    "ClampIntensityd",
    "FitMode",
    "FitToSquare",
    "FitToSquared",
    "FromCompact",
    "FromCompactd",
    "LoadXray",
    "LoadXrayd",
    "MedftCompose",
    "ToCompact",
    "ToCompactd",
    "build_transforms",
    "metadata_off",
    "prefix_config",
    "share_random_state",
]

PIPELINE_VERSION = 1
"""Bumped whenever the deterministic prefix changes its output: it is part of cache keys."""

CacheDtype = Literal["uint8", "uint16"]
"""Cache dtypes: uint8 (1 byte/pixel, the display precision) or uint16 (for fidelity)."""
COMPACT_DTYPES: tuple[str, ...] = get_args(CacheDtype)

FIT_MODES: tuple[str, ...] = get_args(FitMode)
"""``pad`` letterboxes the whole image; ``crop`` centre-crops the short side
(:data:`~medft.data.geometry.FitMode`, re-exported here)."""

Reader = Callable[[str], tuple[np.ndarray, Any]]


# ------------------------------------------------------------------------ loading


class LoadXray(Transform):
    """Read a DICOM or raster file into a ``(1, H, W)`` float32 display-space image.

    Args:
        reader: ``path -> (image HxW, XrayMeta)``; defaults to
            :func:`medft.data.dicom.load_image` (looked up at call time).
    """

    def __init__(self, reader: Reader | None = None) -> None:
        self.reader = reader

    def __call__(self, path: str) -> tuple[np.ndarray, Any]:
        read = self.reader or dicom.load_image
        image, meta = read(str(path))
        return np.asarray(image, dtype=np.float32)[None], meta


class LoadXrayd(MapTransform):
    """Dictionary version of :class:`LoadXray`: replaces each path with its image.

    The reader's :class:`~medft.data.dicom.XrayMeta` (non-identifying fields only; no
    raw header) is stored under ``f"{key}_{meta_key_postfix}"``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        meta_key_postfix: str = "meta",
        reader: Reader | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadXray(reader)
        self.meta_key_postfix = meta_key_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], d[f"{key}_{self.meta_key_postfix}"] = self.loader(d[key])
        return d


class MedftCompose(Compose):
    """A MONAI Compose that lets medft's own errors through.

    MONAI wraps any error raised inside a Compose in ``RuntimeError("applying transform
    ...")``. The reader's :class:`~medft.errors.MedftError` already names the file and
    the reason, and the bad-file policy catches exactly that type, so it is re-raised
    as itself; any other error (a bug) stays wrapped, with MONAI's context.
    """

    def __call__(self, input_, start=0, end=None, threading=False, lazy=None):  # type: ignore[override]
        try:
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        except RuntimeError as exc:
            cause = medft_cause(exc)
            if cause is None:
                raise
            raise cause from None


# ----------------------------------------------------------------------- geometry


class FitToSquare(Transform):
    """Scale a ``(C, H, W)`` image into a ``(C, size, size)`` square, keeping aspect.

    Wraps :func:`medft.data.geometry.fit_to_square` (antialiased; padding is 0, black
    in display space). Returns the image and the :class:`~medft.data.geometry.Geometry`
    that maps model coordinates back to the original pixels.
    """

    def __init__(self, size: int, mode: FitMode = "pad") -> None:
        _check_choice("fit_mode", mode, FIT_MODES)
        self.size = int(size)
        self.mode = mode

    def __call__(self, image: np.ndarray | torch.Tensor) -> tuple[np.ndarray, Any]:
        squared, geometry = fit_to_square(image, self.size, self.mode)
        return squared.numpy(), geometry


class FitToSquared(MapTransform):
    """Dictionary version of :class:`FitToSquare`; the geometry goes to ``f"{key}_geometry"``."""

    def __init__(
        self,
        keys: KeysCollection,
        size: int,
        mode: FitMode = "pad",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.fitter = FitToSquare(size, mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], geometry = self.fitter(d[key])
            d[f"{key}_geometry"] = geometry.as_dict()
        return d


# ------------------------------------------------------------------ compact form


class ToCompact(Transform):
    """Quantise a float image in [0, 1] to ``uint8`` or ``uint16`` (values clipped first).

    uint8 keeps the 256 grey levels of display space at a quarter of float32's size;
    uint16 keeps 65536 levels for studies that need the extra fidelity.
    """

    def __init__(self, dtype: CacheDtype = "uint8") -> None:
        _check_choice("cache_dtype", dtype, COMPACT_DTYPES)
        self.dtype = np.dtype(dtype)
        self.scale = float(np.iinfo(self.dtype).max)

    def __call__(self, image: np.ndarray | torch.Tensor) -> np.ndarray:
        array = np.asarray(image, dtype=np.float32)
        return np.rint(np.clip(array, 0.0, 1.0) * self.scale).astype(self.dtype)


class FromCompact(Transform):
    """Turn a compact ``uint8``/``uint16`` image back into a float32 tensor in [0, 1].

    Float input passes through (as float32), so the random part also accepts images
    that never went through :class:`ToCompact`.
    """

    def __call__(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if array.dtype.kind == "u":
            scale = float(np.iinfo(array.dtype).max)
            return torch.from_numpy(array.astype(np.float32) / np.float32(scale))
        return torch.as_tensor(array, dtype=torch.float32)


class ToCompactd(MapTransform):
    """Dictionary version of :class:`ToCompact`."""

    def __init__(
        self, keys: KeysCollection, dtype: CacheDtype = "uint8", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToCompact(dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class FromCompactd(MapTransform):
    """Dictionary version of :class:`FromCompact`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = FromCompact()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class ClampIntensity(Transform):
    """Clip intensities back into display range [0, 1] after augmentation."""

    def __call__(self, image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        if isinstance(image, torch.Tensor):
            return image.clamp(0.0, 1.0)
        return np.clip(image, 0.0, 1.0)


class ClampIntensityd(MapTransform):
    """Dictionary version of :class:`ClampIntensity`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.clamp = ClampIntensity()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.clamp(d[key])
        return d


# ------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class AugmentConfig:
    """Train-time augmentation for projection X-rays; the defaults suit chest films.

    Attributes:
        rotate_degrees: Rotation drawn from ±this (patients are rarely rotated more).
        scale_range: Zoom drawn from 1 ± this.
        translate_fraction: Shift drawn from ± this fraction of the image side.
        hflip_prob: Probability of a left/right flip. 0 by default: chest anatomy is not
            left/right symmetric (heart, aortic knob, gastric bubble), so a flipped film
            is a different, usually abnormal-looking, patient.
        intensity_prob: Probability of each intensity change (contrast scale, brightness
            shift, gamma, noise), drawn independently.
        contrast: Intensity scale factor drawn from 1 ± this.
        brightness: Intensity shift drawn from ± this (display units).
        gamma: Range of the gamma exponent.
        noise_std: Standard deviation of additive Gaussian noise (0 disables it).
        clahe_prob: Probability of CLAHE (albumentations; 0 disables it, the default).
    """

    rotate_degrees: float = 7.0
    scale_range: float = 0.08
    translate_fraction: float = 0.03
    hflip_prob: float = 0.0
    intensity_prob: float = 0.5
    contrast: float = 0.1
    brightness: float = 0.05
    gamma: tuple[float, float] = (0.8, 1.25)
    noise_std: float = 0.01
    clahe_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in ("hflip_prob", "intensity_prob", "clahe_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"data.{name}={value} must be a probability in [0, 1]")
        for name in ("rotate_degrees", "noise_std", "contrast", "brightness"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name}={getattr(self, name)} must be >= 0")
        for name in ("scale_range", "translate_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"data.{name}={getattr(self, name)} must be in [0, 1)")
        low, high = self.gamma
        if not 0 < low <= high:
            raise ConfigError(f"gamma={self.gamma} must be a range 0 < low <= high")


def prefix_config(
    *, image_size: int, fit_mode: FitMode, compact_dtype: CacheDtype
) -> dict[str, Any]:
    """Everything the deterministic prefix's output depends on (besides the file).

    Part of every disk-cache key, so a change here never serves a stale image.
    """
    return {
        "pipeline_version": PIPELINE_VERSION,
        "image_size": int(image_size),
        "fit_mode": fit_mode,
        "compact_dtype": compact_dtype,
    }


def build_transforms(
    *,
    image_size: int,
    fit_mode: FitMode = "pad",
    train: bool,
    augment: AugmentConfig | None = None,
    compact_dtype: CacheDtype = "uint8",
    reader: Reader | None = None,
    compact_output: bool = False,
) -> tuple[Compose, Compose]:
    """Build the cacheable prefix and the per-access random part for key ``"image"``.

    Args:
        image_size: Side of the square model input.
        fit_mode: ``"pad"`` or ``"crop"`` (see :data:`FIT_MODES`).
        train: Add augmentation to the random part (only when ``augment`` is given).
        augment: Augmentation settings; ``None`` means none even when training.
        compact_dtype: ``"uint8"`` or ``"uint16"`` for the cached form.
        reader: Override :func:`medft.data.dicom.load_image` (tests, other formats).
        compact_output: Make the random part return the compact form too (what the
            training loaders ship: a quarter of float32's bytes, converted and normalised
            on the model's device). Without augmentation the random part is then empty
            (the cached array passes through untouched); with it, the augmented float
            image is quantised back to ``compact_dtype`` at the end.

    Returns:
        ``(prefix, random_part)``, both :class:`MedftCompose`. ``prefix`` maps
        ``{"image": path}`` to a compact ``(1, S, S)`` array and contains no random
        transform; an unreadable file raises the reader's
        :class:`~medft.errors.DicomReadError` (naming the file), not MONAI's
        ``RuntimeError``. ``random_part`` maps the compact image to a float32
        ``(1, S, S)`` tensor in [0, 1] (``compact_output``: to a compact ``(1, S, S)``
        array or tensor of ``compact_dtype``).
    """
    if int(image_size) < 8:
        raise ConfigError(f"data.image_size={image_size} must be at least 8 pixels")
    _check_choice("fit_mode", fit_mode, FIT_MODES)
    _check_choice("cache_dtype", compact_dtype, COMPACT_DTYPES)
    prefix = MedftCompose(
        [
            LoadXrayd("image", reader=reader),
            FitToSquared("image", image_size, fit_mode),
            ToCompactd("image", compact_dtype),
        ]
    )
    augmenting = train and augment is not None
    steps: list[Transform] = []
    if augmenting or not compact_output:
        steps.append(FromCompactd("image"))
    if augmenting:
        assert augment is not None
        steps += _augmentations(int(image_size), augment)
        steps.append(ClampIntensityd("image"))
        if compact_output:
            steps.append(ToCompactd("image", compact_dtype))
    return prefix, MedftCompose(steps)


def _augmentations(size: int, cfg: AugmentConfig) -> list[Transform]:
    """MONAI augmentations (plus CLAHE through the albumentations adapter) in order."""
    steps: list[Transform] = []
    if cfg.clahe_prob > 0:
        # CLAHE equalises the clean image, before geometry and noise; albumentations is
        # imported only here because its import costs seconds.
        from medft.data.albu import clahe_d

        steps.append(clahe_d("image", prob=cfg.clahe_prob))
    shift = cfg.translate_fraction * size
    if cfg.rotate_degrees or cfg.scale_range or shift:
        steps.append(
            RandAffined(
                keys="image",
                prob=1.0,
                rotate_range=(math.radians(cfg.rotate_degrees),),
                scale_range=(cfg.scale_range, cfg.scale_range),
                translate_range=(shift, shift),
                mode="bilinear",
                padding_mode="zeros",
                spatial_size=(size, size),
                cache_grid=True,
            )
        )
    if cfg.hflip_prob > 0:
        steps.append(RandFlipd(keys="image", prob=cfg.hflip_prob, spatial_axis=1))
    if cfg.intensity_prob > 0:
        p = cfg.intensity_prob
        steps += [
            RandScaleIntensityd(keys="image", factors=cfg.contrast, prob=p),
            RandShiftIntensityd(keys="image", offsets=cfg.brightness, prob=p),
            RandAdjustContrastd(keys="image", gamma=cfg.gamma, prob=p),
        ]
        if cfg.noise_std > 0:
            steps.append(RandGaussianNoised(keys="image", std=cfg.noise_std, prob=p))
    return steps


# ------------------------------------------------------------------ random state


def share_random_state(compose: Compose) -> np.random.RandomState:
    """Point every random transform of ``compose`` at one RandomState and return it.

    Reseeding that one state (``state.seed(s)``, about 2 µs) makes the whole random
    part a pure function of ``s``; MONAI's own ``set_random_state`` builds a new
    RandomState per transform (about 3 ms for the augmentation chain).
    """
    state = np.random.RandomState(0)
    for transform in _flatten(compose):
        if isinstance(transform, Randomizable):
            transform.set_random_state(state=state)
    return state


def _flatten(compose: Compose) -> Iterator[Any]:
    for transform in compose.transforms:
        if isinstance(transform, Compose):
            yield from _flatten(transform)
        else:
            yield transform


@contextlib.contextmanager
def metadata_off() -> Iterator[None]:
    """Run MONAI transforms on plain tensors (no MetaTensor bookkeeping) for a while.

    MONAI's metadata tracking is a process-wide switch; it costs about a third of the
    augmentation time here and would leak MetaTensors into batches.
    """
    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


def _check_choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"data.{key}={value!r} is not one of {', '.join(allowed)}")
