"""Uncompressed grayscale frames read straight from the Pixel Data bytes, without a copy.

pydicom's native decoder copies the frame and then masks the unused high bits, two full
passes that the display chain would follow with its own. Here the frame is a read-only
view of the bytes; the high bits are only rewritten when the data actually has bits set
above Bits Stored (old files keep overlays there), which the (min, max) computed anyway
for the display chain reveals. Results equal pydicom's ``pixel_array`` (tested).
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian

NATIVE_BITS = (8, 16)


def native_grayscale(
    ds: Dataset,
    *,
    rows: int,
    columns: int,
    bits_allocated: int,
    bits_stored: int,
    signed: bool,
    frame: int,
) -> tuple[np.ndarray, tuple[float, float]]:
    """Frame ``frame`` of native 8/16-bit grayscale Pixel Data and its (min, max).

    The caller has checked that Pixel Data is long enough for every frame.
    """
    byte_order = ">" if ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian else "<"
    kind = "i" if signed else "u"
    dtype = np.dtype(f"{byte_order}{kind}{bits_allocated // 8}")
    count = rows * columns
    view = np.frombuffer(
        ds.PixelData, dtype=dtype, count=count, offset=frame * count * dtype.itemsize
    )
    values = view.reshape(rows, columns)
    if not dtype.isnative:
        values = values.astype(dtype.newbyteorder("="))
    low, high = float(values.min()), float(values.max())
    if bits_stored < bits_allocated:
        values, low, high = _restrict_to_bits_stored(values, bits_stored, signed, low, high)
    return values, (low, high)


def _restrict_to_bits_stored(
    values: np.ndarray, bits_stored: int, signed: bool, low: float, high: float
) -> tuple[np.ndarray, float, float]:
    """Drop bits above Bits Stored (unsigned) or sign-extend from them (signed), if needed."""
    if signed:
        smallest, largest = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    else:
        smallest, largest = 0, (1 << bits_stored) - 1
    if smallest <= low and high <= largest:
        return values, low, high  # the unused bits are already clean
    if signed:
        shift = values.dtype.itemsize * 8 - bits_stored
        values = np.left_shift(values, shift)
        np.right_shift(values, shift, out=values)  # arithmetic shift restores the sign
    else:
        values = np.bitwise_and(values, values.dtype.type(largest))
    return values, float(values.min()), float(values.max())
