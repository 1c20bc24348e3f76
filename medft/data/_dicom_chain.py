"""Build the display chain of a grayscale DICOM image from its header.

Decides, for one file, which Modality LUT, which VOI transform, whether to invert and
which stored values are padding. Malformed optional fields (an empty LUT item, a
non-numeric window) are skipped so the next source in DICOM's order is used; a malformed
Rescale Slope/Intercept is refused, because without it the pixel values are unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset

from medft.data import _dicom_header as hdr
from medft.data._dicom_display import (
    LINEAR,
    LINEAR_EXACT,
    VOI_FUNCTIONS,
    Affine,
    DisplayPlan,
    Lut,
    Window,
)
from medft.data._dicom_meta import window_presets
from medft.errors import DicomReadError

VoiArg = Literal["auto", "none"] | tuple[float, float]
_MAX_LUT_ENTRIES = 65536


def grayscale_plan(
    ds: Dataset,
    voi: VoiArg,
    *,
    stored_range: tuple[float, float],
    photometric: str,
    signed: bool,
    bits_allocated: int,
) -> tuple[DisplayPlan, str]:
    """The display plan of a MONOCHROME1/2 image and its VOI source name.

    ``stored_range`` is the (min, max) of the image's stored values; it lets ``"auto"``
    skip header windows that miss the image entirely.
    """
    little_endian = _is_little_endian(ds)
    modality = modality_stage(ds, signed=signed, little_endian=little_endian)
    lut_input_signed = signed or (isinstance(modality, Affine) and modality.intercept < 0)
    value_range = modality_range(stored_range, modality) if voi == "auto" else None
    voi_stage, source = voi_choice(
        ds,
        voi,
        lut_input_signed=lut_input_signed,
        little_endian=little_endian,
        value_range=value_range,
    )
    plan = DisplayPlan(
        modality=modality,
        voi=voi_stage,
        invert=needs_inversion(photometric),
        padding=padding_range(ds, signed=signed, bits_allocated=bits_allocated),
    )
    return plan, source


def modality_range(
    stored_range: tuple[float, float], modality: Affine | Lut
) -> tuple[float, float]:
    """(min, max) of the modality values of an image whose stored values span ``stored_range``.

    For a LUT this is the range of the table between the two stored extremes, a cheap
    bound that is exact for monotonic LUTs.
    """
    if isinstance(modality, Affine):
        values = modality.apply(np.array(stored_range, dtype=np.float64))
    else:
        size = len(modality.table)
        first, last = (min(max(int(v) - modality.first, 0), size - 1) for v in stored_range)
        values = modality.table[first : last + 1]
    return float(values.min()), float(values.max())


def fixed_range_plan(voi: VoiArg, full_range: float | None) -> tuple[DisplayPlan, str]:
    """The plan for an image with no display chain of its own (colour DICOM, raster files).

    No LUTs, no inversion, no padding. ``"auto"`` keeps the image's own scale, 0 to
    ``full_range`` (VOI transforms are defined for grayscale DICOM only, and a raster file
    is already display-ready); when there is no nominal range it falls back to min-max.
    """
    if voi == "auto" and full_range is not None:
        window = Window(center=full_range / 2, width=full_range, function=LINEAR_EXACT)
        return DisplayPlan(modality=Affine(), voi=window), "full_range"
    if voi == "auto":
        return DisplayPlan(modality=Affine(), voi=None), "minmax"
    stage, source = _requested_voi(voi)
    return DisplayPlan(modality=Affine(), voi=stage), source


def _requested_voi(voi: VoiArg) -> tuple[Window | None, str]:
    if voi == "none":
        return None, "minmax"
    center, width = voi  # type: ignore[misc]
    return Window(center=float(center), width=float(width), function=LINEAR), "explicit"


def modality_stage(ds: Dataset, *, signed: bool, little_endian: bool) -> Affine | Lut:
    """Modality LUT Sequence if it holds a usable LUT, else Rescale Slope/Intercept."""
    lut = first_lut(ds, "ModalityLUTSequence", signed=signed, little_endian=little_endian)
    if lut is not None:
        return lut
    slope = _rescale_value(ds, "RescaleSlope", default=1.0)
    intercept = _rescale_value(ds, "RescaleIntercept", default=0.0)
    if slope == 0:
        raise DicomReadError(
            "Rescale Slope is 0, which would erase the image; fix the header or remove it"
        )
    return Affine(slope=slope, intercept=intercept)


def _rescale_value(ds: Dataset, keyword: str, default: float) -> float:
    raw = hdr.raw_value(ds, keyword)
    if raw is not hdr.INVALID and hdr.is_empty(raw):
        return default
    value = hdr.first_float(ds, keyword)
    if value is None:
        shown = "unreadable" if raw is hdr.INVALID else repr(str(raw)[:32])
        raise DicomReadError(
            f"{keyword} is {shown}, not a number; the pixel values cannot be interpreted "
            "(fix or remove the element)"
        )
    return value


def voi_choice(
    ds: Dataset,
    voi: VoiArg,
    *,
    lut_input_signed: bool,
    little_endian: bool,
    value_range: tuple[float, float] | None = None,
) -> tuple[Window | Lut | None, str]:
    """The VOI stage for ``voi`` and its source name; ``None`` stage means min-max.

    ``"auto"`` follows the header: the first Window Center/Width pair (with the VOI LUT
    Function), else the first usable VOI LUT Sequence item, else min-max. Given the
    image's ``value_range`` (modality units), a window lying wholly outside it is skipped:
    it would turn the whole image into one flat level, which only a broken header does.
    """
    if voi != "auto":
        return _requested_voi(voi)
    for center, width in window_presets(ds):
        if value_range is None or _overlaps(center, width, value_range):
            return Window(center=center, width=width, function=voi_function(ds)), "window"
    lut = first_lut(ds, "VOILUTSequence", signed=lut_input_signed, little_endian=little_endian)
    if lut is not None:
        return lut, "voi_lut"
    return None, "minmax"


def _overlaps(center: float, width: float, value_range: tuple[float, float]) -> bool:
    low, high = value_range
    return high >= center - width / 2 and low <= center + width / 2


def voi_function(ds: Dataset) -> str:
    """VOI LUT Function (LINEAR, LINEAR_EXACT or SIGMOID); LINEAR when absent or unknown."""
    value = hdr.code(ds, "VOILUTFunction")
    return value if value in VOI_FUNCTIONS else LINEAR


def needs_inversion(photometric: str) -> bool:
    """Whether low stored values must become bright: exactly when MONOCHROME1.

    Presentation LUT Shape in an image is not a second, independent step: the DX and MG
    image modules define INVERSE as the value that *must* accompany MONOCHROME1 and
    IDENTITY the one for MONOCHROME2 (PS3.3 C.8.11.3), i.e. a restatement of the same
    polarity. Applying both would invert MONOCHROME1 + INVERSE twice. When the two
    disagree (files in the wild do), Photometric Interpretation, which every decoder
    honours, wins.
    """
    return photometric == "MONOCHROME1"


def padding_range(ds: Dataset, *, signed: bool, bits_allocated: int) -> tuple[float, float] | None:
    """Inclusive range of stored values that are padding, or ``None``.

    Pixel Padding Value alone marks one value; with Pixel Padding Range Limit it marks
    every value between the two. Values read as unsigned from a signed image (an
    ambiguous US/SS element) are converted back to signed.
    """
    value = hdr.first_int(ds, "PixelPaddingValue")
    if value is None:
        return None
    limit = hdr.first_int(ds, "PixelPaddingRangeLimit")
    ends = [value] if limit is None else [value, limit]
    if signed:
        ends = [_as_signed(v, bits_allocated) for v in ends]
    return (float(min(ends)), float(max(ends)))


def _as_signed(value: int, bits: int) -> int:
    half = 1 << (bits - 1)
    return value - (1 << bits) if half <= value < (1 << bits) else value


def first_lut(ds: Dataset, keyword: str, *, signed: bool, little_endian: bool) -> Lut | None:
    """The LUT in the first item of a LUT sequence, or ``None`` if absent or unusable."""
    items = hdr.raw_value(ds, keyword)
    if items is hdr.INVALID or hdr.is_empty(items):
        return None
    try:
        item = items[0]
    except (TypeError, IndexError, KeyError):
        return None
    return parse_lut(item, signed=signed, little_endian=little_endian)


def parse_lut(item: Dataset, *, signed: bool, little_endian: bool) -> Lut | None:
    """A Lut from LUT Descriptor + LUT Data, or ``None`` when either is empty or malformed.

    An empty item (seen in real exports) therefore means "no LUT", which lets the chain
    fall back to Rescale or the window instead of failing.
    """
    descriptor = hdr.ints(item, "LUTDescriptor")
    if descriptor is None or len(descriptor) != 3:
        return None
    entries, first, bits = descriptor
    entries = entries or _MAX_LUT_ENTRIES  # 0 means 2**16 entries
    if not 0 < entries <= _MAX_LUT_ENTRIES or not 1 <= bits <= 16:
        return None
    if signed:
        first = _as_signed(first, 16)
    table = _lut_table(hdr.raw_value(item, "LUTData"), entries, bits, little_endian)
    if table is None:
        return None
    return Lut(table=table, first=first, out_max=float(max(2**bits - 1, table.max(), 1)))


def _lut_table(data: Any, entries: int, bits: int, little_endian: bool) -> np.ndarray | None:
    if data is hdr.INVALID or hdr.is_empty(data):
        return None
    if isinstance(data, (bytes, bytearray)):
        if len(data) >= 2 * entries:
            words = np.frombuffer(data, dtype="<u2" if little_endian else ">u2", count=entries)
            return words.astype(np.float32)
        if bits <= 8 and len(data) >= entries:  # 8-bit entries packed one per byte
            return np.frombuffer(data, dtype=np.uint8, count=entries).astype(np.float32)
        return None
    values = list(data) if isinstance(data, Sequence) else [data]
    if len(values) < entries:
        return None
    try:
        return np.asarray(values[:entries], dtype=np.float32)
    except (TypeError, ValueError):
        return None


def _is_little_endian(ds: Dataset) -> bool:
    try:
        encoding = ds.original_encoding
    except AttributeError:
        return True
    return encoding[1] is not False
