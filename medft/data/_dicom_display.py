"""The grayscale display chain, as pure numpy: stored values -> display values in [0, 1].

DICOM defines the order (PS3.3 C.11, PS3.4 N.2): Modality LUT (rescale or LUT) -> VOI
(window or LUT) -> Presentation LUT (here: inversion for MONOCHROME1) -> display. medft
then sets Pixel Padding to 0. Each step is a small value object so the chain can be built
from a header (``_dicom_chain``) or by hand (tests), and rendered in one place.

Rendering is cheap in the common case: a linear rescale followed by a linear window and an
optional inversion is one affine map and a clip, done in place on one float32 copy.
"""

from __future__ import annotations

import dataclasses

import numpy as np

LINEAR = "LINEAR"
LINEAR_EXACT = "LINEAR_EXACT"
SIGMOID = "SIGMOID"
VOI_FUNCTIONS = (LINEAR, LINEAR_EXACT, SIGMOID)
_SIGMOID_LIMIT = 60.0  # exp(60) is finite in float32; beyond it the sigmoid is 0 or 1


@dataclasses.dataclass(frozen=True)
class Affine:
    """Rescale Slope / Intercept: ``value * slope + intercept``."""

    slope: float = 1.0
    intercept: float = 0.0

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Modality values as a new float32 array."""
        out = values.astype(np.float32)
        if self.slope != 1.0:
            out *= np.float32(self.slope)
        if self.intercept != 0.0:
            out += np.float32(self.intercept)
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class Lut:
    """A DICOM lookup table (Modality or VOI LUT Sequence item).

    Inputs below ``first`` map to the first entry and inputs past the end to the last,
    as the standard requires. ``out_max`` is the largest output the LUT's declared bit
    depth can hold; a VOI LUT's output is divided by it to land in [0, 1].
    """

    table: np.ndarray
    first: int
    out_max: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Look every value up (non-integer inputs are rounded) as float32."""
        if np.issubdtype(values.dtype, np.integer):
            index = values.astype(np.int64)
        else:
            index = np.rint(values).astype(np.int64)
        index -= self.first
        np.clip(index, 0, len(self.table) - 1, out=index)
        return self.table.astype(np.float32, copy=False).take(index)


@dataclasses.dataclass(frozen=True)
class Window:
    """Window Center / Width with its VOI LUT Function (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str = LINEAR

    def as_affine(self) -> tuple[float, float] | None:
        """(gain, offset) when this window is a clipped affine map, else ``None``."""
        if self.function == LINEAR and self.width > 1:
            gain = 1.0 / (self.width - 1)
            return gain, 0.5 - (self.center - 0.5) * gain
        if self.function == LINEAR_EXACT and self.width > 0:
            gain = 1.0 / self.width
            return gain, 0.5 - self.center * gain
        return None

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Map modality values to [0, 1] as float32."""
        x = values.astype(np.float32)
        affine = self.as_affine()
        if affine is not None:
            x *= np.float32(affine[0])
            x += np.float32(affine[1])
            return np.clip(x, 0.0, 1.0, out=x)
        if self.function == SIGMOID:
            x -= np.float32(self.center)
            x *= np.float32(-4.0 / self.width)
            np.clip(x, -_SIGMOID_LIMIT, _SIGMOID_LIMIT, out=x)
            np.exp(x, out=x)
            x += np.float32(1.0)
            return np.reciprocal(x, out=x)
        # LINEAR with width <= 1 is a threshold at center - 0.5
        return (x > np.float32(self.center - 0.5)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class DisplayPlan:
    """Everything needed to turn stored values into display values.

    ``voi=None`` means min-max: the window spans the modality values of the non-padding
    pixels. ``padding`` is an inclusive range of *stored* values (Pixel Padding Value and
    Pixel Padding Range Limit), which are set to 0 after the rest of the chain.
    """

    modality: Affine | Lut
    voi: Window | Lut | None
    invert: bool = False
    padding: tuple[float, float] | None = None


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A display image with what the chain actually did."""

    image: np.ndarray
    window: tuple[float, float] | None
    padding_fraction: float


def render(
    stored: np.ndarray, plan: DisplayPlan, stored_range: tuple[float, float] | None = None
) -> Rendered:
    """Apply ``plan`` to a 2-D array of stored values; float32 in [0, 1].

    ``stored_range`` is ``(stored.min(), stored.max())`` when the caller already has it.
    """
    if stored_range is None:
        stored_range = value_range(stored)
    mask = _padding_mask(stored, plan.padding)
    padded = int(np.count_nonzero(mask)) if mask is not None else 0
    if not padded:
        mask = None
    voi = plan.voi
    if voi is None:
        voi = _minmax_window(stored, plan.modality, mask, stored_range)
    fused = _fused_affine(plan.modality, voi, plan.invert)
    if fused is not None:
        image = _affine_clipped(stored, fused, stored_range)
    else:
        image = voi.apply(plan.modality.apply(stored))
        if isinstance(voi, Lut):
            image /= np.float32(voi.out_max)
            np.clip(image, 0.0, 1.0, out=image)
        if plan.invert:
            np.subtract(np.float32(1.0), image, out=image)
    if mask is not None:
        image[mask] = 0.0
    window = (voi.center, voi.width) if isinstance(voi, Window) else None
    return Rendered(image=image, window=window, padding_fraction=padded / stored.size)


def value_range(values: np.ndarray) -> tuple[float, float]:
    """``(min, max)`` of an array as Python floats."""
    return float(values.min()), float(values.max())


def _affine_clipped(
    stored: np.ndarray, affine: tuple[float, float], stored_range: tuple[float, float]
) -> np.ndarray:
    """``clip(stored * gain + offset, 0, 1)`` in float32, skipping the clip when unneeded.

    Computed as ``(stored - zero) * gain`` with ``zero = -offset / gain``, the stored value
    that maps to 0: subtracting first keeps integer differences exact, so min-max ends land
    exactly on 0. A negative gain (inversion) is applied as ``(zero - stored) * |gain|``.
    Float32 subtraction and multiplication are monotonic, so the two extreme stored values,
    run through the same operations, bound every pixel: when they land in [0, 1] the clip
    (a full pass over the image) would change nothing and is skipped.
    """
    gain = np.float32(abs(affine[0]))
    zero = np.float32(-affine[1] / affine[0])
    image = stored.astype(np.float32)  # then in place: faster than a casting ufunc
    ends = np.array(stored_range, dtype=stored.dtype).astype(np.float32)
    if affine[0] > 0:  # (x - zero) * gain
        image -= zero
        ends -= zero
    else:  # (zero - x) * |gain|, so a pixel at zero becomes +0.0, not -0.0
        np.subtract(zero, image, out=image)
        np.subtract(zero, ends, out=ends)
    image *= gain
    ends *= gain
    if ends.min() < 0.0 or ends.max() > 1.0:
        np.clip(image, np.float32(0.0), np.float32(1.0), out=image)
    return image


def _padding_mask(stored: np.ndarray, padding: tuple[float, float] | None) -> np.ndarray | None:
    if padding is None:
        return None
    low, high = padding
    if low == high:
        return stored == low
    return (stored >= low) & (stored <= high)


def _minmax_window(
    stored: np.ndarray,
    modality: Affine | Lut,
    mask: np.ndarray | None,
    stored_range: tuple[float, float],
) -> Window:
    """The LINEAR_EXACT window spanning the modality values of the non-padding pixels."""
    kept = stored if mask is None else stored[~mask]
    if kept.size == 0:
        return Window(center=0.5, width=1.0, function=LINEAR_EXACT)  # all padding: all 0
    if isinstance(modality, Affine):
        low_stored, high_stored = stored_range if mask is None else value_range(kept)
        ends = modality.apply(np.array([low_stored, high_stored], dtype=np.float64))
        low, high = float(ends.min()), float(ends.max())
    else:
        low, high = value_range(modality.apply(kept))
    if high <= low:  # a flat image: everything maps to 0
        return Window(center=low + 0.5, width=1.0, function=LINEAR_EXACT)
    return Window(center=(low + high) / 2, width=high - low, function=LINEAR_EXACT)


def _fused_affine(
    modality: Affine | Lut, voi: Window | Lut, invert: bool
) -> tuple[float, float] | None:
    """(gain, offset) of rescale -> linear window -> inversion as one map, when possible."""
    if not isinstance(modality, Affine) or not isinstance(voi, Window):
        return None
    window = voi.as_affine()
    if window is None:
        return None
    gain = modality.slope * window[0]
    offset = modality.intercept * window[0] + window[1]
    if invert:
        return -gain, 1.0 - offset
    return gain, offset
