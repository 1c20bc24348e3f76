"""Validate a DICOM Image Pixel module and decode one frame, refusing before allocating.

Everything that decides how many bytes a decode will produce (Rows, Columns, Number of
Frames, Samples per Pixel, Bits Allocated) is checked against ``max_pixels`` and against
the Pixel Data actually present *before* pydicom or a codec allocates anything. pydicom
itself only warns when the data is longer than declared and would return a wrong image.
"""

from __future__ import annotations

import dataclasses
import math
import struct

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import apply_color_lut, as_pixel_options, convert_color_space, get_decoder
from pydicom.uid import UID

from medft.data import _dicom_header as hdr
from medft.data._dicom_native import NATIVE_BITS, native_grayscale
from medft.errors import DicomReadError, UnsupportedCodecError

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_PALETTE = "PALETTE COLOR"
_BITS_ALLOCATED = (1, 8, 16)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601

# What to install (or do) when pydicom has no usable decoder, by transfer syntax UID.
_JPEG_FAMILY = "pip install pylibjpeg pylibjpeg-libjpeg"
_J2K_FAMILY = "pip install pylibjpeg pylibjpeg-openjpeg"
_INSTALL_HINTS = {
    **dict.fromkeys(
        ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57"],
        _JPEG_FAMILY,
    ),
    "1.2.840.10008.1.2.4.70": _JPEG_FAMILY,
    "1.2.840.10008.1.2.4.80": f"{_JPEG_FAMILY} (or pyjpegls)",
    "1.2.840.10008.1.2.4.81": f"{_JPEG_FAMILY} (or pyjpegls)",
    **dict.fromkeys(
        [
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.4.91",
            "1.2.840.10008.1.2.4.201",
            "1.2.840.10008.1.2.4.202",
            "1.2.840.10008.1.2.4.203",
        ],
        _J2K_FAMILY,
    ),
    "1.2.840.10008.1.2.5": "pip install pylibjpeg-rle (pydicom's own RLE decoder needs numpy)",
    "1.2.840.10008.1.2.8.1": (
        "it is new in DICOM 2024: upgrade pydicom once it adds a decoder, or convert the "
        "file with a tool that supports it"
    ),
}
_VIDEO_HINT = "video transfer syntax: extract frames with ffmpeg or dcmtk before reading"
_UNKNOWN_HINT = "convert the file to a standard transfer syntax (e.g. with dcmtk's dcmconv)"


@dataclasses.dataclass(frozen=True)
class PixelModule:
    """The validated Image Pixel module attributes that govern decoding."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    n_frames: int
    transfer_syntax: UID
    encapsulated: bool

    @property
    def frame_pixels(self) -> int:
        """Samples in one decoded frame (what one decode allocates, per sample)."""
        return self.rows * self.columns * self.samples


# Registered transfer syntaxes newer than pydicom 3.0's dictionary.
_NEWER_SYNTAXES = {
    "1.2.840.10008.1.2.8.1": "Deflated Image Frame Compression",
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}


def transfer_syntax_label(uid: UID) -> str:
    """``'Name' (UID)`` for messages; the bare UID when the syntax is not registered."""
    uid_text = "".join(ch for ch in str(uid) if ch.isprintable())[:64]
    name = uid.name if uid.is_transfer_syntax else _NEWER_SYNTAXES.get(uid_text, "")
    return f"'{name}' ({uid_text})" if name and name != uid_text else uid_text


def require_decoder(uid: UID) -> None:
    """Raise UnsupportedCodecError unless an installed plugin decodes ``uid``."""
    label = transfer_syntax_label(uid)
    if str(uid) in _NEWER_SYNTAXES:
        raise UnsupportedCodecError(
            f"transfer syntax {label} has no pixel data decoder in pydicom "
            f"{pydicom.__version__}; {_INSTALL_HINTS.get(str(uid), _UNKNOWN_HINT)}"
        )
    if not uid.is_transfer_syntax:
        raise UnsupportedCodecError(
            f"Transfer Syntax UID {label} is not a registered DICOM transfer syntax, so "
            f"no decoder exists for it; {_UNKNOWN_HINT}"
        )
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        hint = _INSTALL_HINTS.get(str(uid)) or (
            _VIDEO_HINT if "MPEG" in uid.name or "HEVC" in uid.name else _UNKNOWN_HINT
        )
        raise UnsupportedCodecError(
            f"transfer syntax {label} has no pixel data decoder in pydicom "
            f"{pydicom.__version__}; {hint}"
        ) from None
    if not decoder.is_available:
        hint = _INSTALL_HINTS.get(str(uid), _UNKNOWN_HINT)
        missing = "; ".join(decoder.missing_dependencies)
        raise UnsupportedCodecError(
            f"transfer syntax {label} needs a decoder plugin that is not installed: "
            f"{hint} (pydicom reports: {missing})"
        )


def pixel_module(ds: Dataset, uid: UID) -> PixelModule:
    """Validate the Image Pixel module; DicomReadError naming the first bad attribute."""
    photometric = hdr.code(ds, "PhotometricInterpretation")
    if photometric is None:
        raise DicomReadError(
            "Photometric Interpretation (0028,0004) is missing, so it is unknown whether "
            "low values are dark (MONOCHROME2) or bright (MONOCHROME1)"
        )
    if photometric not in (*GRAYSCALE, *_COLOUR, _PALETTE):
        raise DicomReadError(f"Photometric Interpretation {photometric!r} is not supported")
    rows, columns = _positive(ds, "Rows"), _positive(ds, "Columns")
    samples = _positive(ds, "SamplesPerPixel", default=1)
    expected_samples = 3 if photometric in _COLOUR else 1
    if samples != expected_samples:
        raise DicomReadError(
            f"Samples per Pixel is {samples} but {photometric} needs {expected_samples}"
        )
    bits_allocated = _positive(ds, "BitsAllocated")
    if bits_allocated not in _BITS_ALLOCATED:
        raise DicomReadError(
            f"Bits Allocated {bits_allocated} is not supported (must be 1, 8 or 16)"
        )
    bits_stored = _positive(ds, "BitsStored", default=bits_allocated)
    if bits_stored > bits_allocated:
        raise DicomReadError(
            f"Bits Stored {bits_stored} is larger than Bits Allocated {bits_allocated}"
        )
    representation = hdr.first_int(ds, "PixelRepresentation")
    if representation not in (0, 1):
        raise DicomReadError(
            f"Pixel Representation is {representation!r}; it must be 0 (unsigned) or 1 (signed)"
        )
    return PixelModule(
        rows=rows,
        columns=columns,
        samples=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=representation == 1,
        photometric=photometric,
        n_frames=_positive(ds, "NumberOfFrames", default=1),
        transfer_syntax=uid,
        encapsulated=uid.is_transfer_syntax and uid.is_encapsulated,
    )


def _positive(ds: Dataset, keyword: str, default: int | None = None) -> int:
    raw = hdr.raw_value(ds, keyword)
    if default is not None and raw is not hdr.INVALID and hdr.is_empty(raw):
        return default
    value = hdr.first_int(ds, keyword)
    if value is None or value < 1:
        shown = "missing" if hdr.is_empty(raw) else f"{str(raw)[:32]!r}"
        raise DicomReadError(f"{keyword} is {shown}; it must be a positive integer")
    return value


def check_frame_and_size(ds: Dataset, pm: PixelModule, frame: int, max_pixels: int) -> None:
    """Refuse a bad frame index, a decode larger than ``max_pixels`` or inconsistent data."""
    if not 0 <= frame < pm.n_frames:
        raise DicomReadError(f"frame {frame} requested but the file has {pm.n_frames} frame(s)")
    if not pm.encapsulated:
        _check_native_length(ds, pm)
    if pm.frame_pixels > max_pixels:
        raise DicomReadError(
            f"{pm.rows}x{pm.columns}x{pm.samples} samples per frame exceed "
            f"max_pixels={max_pixels:,}; pass a larger max_pixels if the file is genuine"
        )
    if pm.encapsulated and pm.transfer_syntax not in _RLE_SYNTAXES:
        _check_codestream(ds, pm, frame)


def _check_native_length(ds: Dataset, pm: PixelModule) -> None:
    samples = 2 if pm.photometric == "YBR_FULL_422" else pm.samples  # 4:2:2 subsampling
    bits = pm.rows * pm.columns * samples * pm.n_frames * pm.bits_allocated
    expected = math.ceil(bits / 8)
    actual = len(ds.PixelData)
    declared = (
        f"{pm.rows}x{pm.columns} x {pm.n_frames} frame(s) x {pm.samples} sample(s) "
        f"at {pm.bits_allocated} bits"
    )
    if actual < expected:
        raise DicomReadError(
            f"Pixel Data holds {actual:,} bytes but {declared} need {expected:,}: the file "
            "is truncated or Rows/Columns/Number of Frames are too large"
        )
    if actual > expected + expected % 2:  # one pad byte to even length is allowed
        raise DicomReadError(
            f"Pixel Data holds {actual:,} bytes but {declared} need only {expected:,}: "
            "Rows/Columns/Number of Frames are smaller than the data, so any image read "
            "from it would be wrong"
        )


def _check_codestream(ds: Dataset, pm: PixelModule, frame: int) -> None:
    """Compare the JPEG / JPEG 2000 header of the frame with Rows/Columns before decoding.

    A small compressed frame can declare a huge image; the codec would allocate what the
    codestream says, whatever Rows/Columns say.
    """
    try:
        data = get_frame(ds.PixelData, frame, number_of_frames=pm.n_frames, **_offsets(ds))
    except Exception as exc:
        raise DicomReadError(
            f"frame {frame} cannot be located in the encapsulated Pixel Data "
            f"({hdr.describe(exc)}); the file is truncated or malformed"
        ) from exc
    problem = jp2_wrapper_problem(data)
    if problem is not None:
        raise DicomReadError(f"the JPEG 2000 frame is wrapped in a broken JP2 file: {problem}")
    shape = codestream_shape(data)
    if shape is None:
        return
    height, width = shape
    if (height and height != pm.rows) or width != pm.columns:
        raise DicomReadError(
            f"the compressed frame is {height}x{width} but Rows/Columns say "
            f"{pm.rows}x{pm.columns}; the header and the pixel data disagree"
        )


def _offsets(ds: Dataset) -> dict[str, object]:
    table = hdr.raw_value(ds, "ExtendedOffsetTable")
    lengths = hdr.raw_value(ds, "ExtendedOffsetTableLengths")
    if isinstance(table, bytes) and isinstance(lengths, bytes) and table and lengths:
        return {"extended_offsets": (table, lengths)}
    return {}


_J2K_SIZ = b"\xff\x4f\xff\x51"
_RLE_SYNTAXES = {"1.2.840.10008.1.2.5"}  # RLE Lossless carries no codestream header
_JPEG_SOF = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD9)}
_HEADER_SCAN = 1 << 16


_JP2_SIGNATURE = b"\x00\x00\x00\x0c\x6a\x50\x20\x20"


def jp2_wrapper_problem(data: bytes) -> str | None:
    """Why a JP2-wrapped JPEG 2000 frame would hang the decoder, or ``None``.

    Some writers wrap the codestream in a JP2 file. pydicom (3.0) looks for its ``jp2c``
    box by adding each box's declared length to an offset; a length of 0 (or a header cut
    off near the end, read as 0) never moves the offset, and the read never returns. This
    walks the boxes the same way and names the first length that would stop it.
    """
    if not data.startswith(_JP2_SIGNATURE):
        return None
    offset = 12
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], byteorder="big")
        if data[offset + 4 : offset + 8] == b"jp2c":
            return None
        if length == 0:
            return f"the box at byte {offset} declares a length of 0"
        offset += length
    return None


def codestream_shape(data: bytes) -> tuple[int, int] | None:
    """(height, width) declared by a JPEG, JPEG-LS or JPEG 2000 codestream, else ``None``.

    Height may be 0 for a JPEG that defines it later (DNL marker).
    """
    if not data.startswith(b"\xff\xd8"):
        # A J2K codestream opens with SOC then SIZ; inside a JP2 wrapper it follows the
        # 'jp2c' box. Searching anywhere else would match those bytes by chance in
        # other codecs' data (RLE segments, for instance).
        if data.startswith(_J2K_SIZ):
            siz = 0
        else:
            box = data.find(b"jp2c", 0, _HEADER_SCAN)
            siz = box + 4 if box >= 0 and data.startswith(_J2K_SIZ, box + 4) else -1
        if siz < 0 or len(data) < siz + 24:
            return None
        x, y, x0, y0 = struct.unpack(">IIII", data[siz + 8 : siz + 24])
        return (y - y0, x - x0)
    pos, end = 2, min(len(data), _HEADER_SCAN)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _JPEG_STANDALONE:
            pos += 2
        elif marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return (height, width)
        else:
            pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return None


@dataclasses.dataclass(frozen=True)
class Decoded:
    """One decoded frame: stored values (grayscale) or luminance (colour).

    ``values`` may be a read-only view of the file's bytes: never write into it.
    """

    values: np.ndarray
    value_range: tuple[float, float]  # (min, max) of values
    full_range: float | None  # nominal maximum for colour luminance; None for grayscale


def decode_frame(ds: Dataset, pm: PixelModule, frame: int) -> Decoded:
    """Decode frame ``frame``; grayscale stays in stored values, colour becomes luminance."""
    if pm.photometric in GRAYSCALE and not pm.encapsulated and pm.bits_allocated in NATIVE_BITS:
        values, value_range = native_grayscale(
            ds,
            rows=pm.rows,
            columns=pm.columns,
            bits_allocated=pm.bits_allocated,
            bits_stored=pm.bits_stored,
            signed=pm.signed,
            frame=frame,
        )
        return Decoded(values=values, value_range=value_range, full_range=None)
    try:
        decoder = get_decoder(pm.transfer_syntax)
        options = as_pixel_options(ds)
        array, info = decoder.as_array(ds, index=frame, validate=True, **options)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # Rust codecs (pylibjpeg-rle) panic with a BaseException
        raise DicomReadError(
            f"pixel data could not be decoded as {transfer_syntax_label(pm.transfer_syntax)}: "
            f"{hdr.describe(exc)}"
        ) from exc
    expected = (pm.rows, pm.columns) if pm.samples == 1 else (pm.rows, pm.columns, 3)
    if array.shape != expected:
        raise DicomReadError(
            f"the decoder returned an array of shape {array.shape}, expected {expected}"
        )
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if pm.photometric in GRAYSCALE:
        return Decoded(values=array, value_range=_min_max(array), full_range=None)
    return _colour_to_luminance(ds, pm, array, str(info.get("photometric_interpretation", "")))


def _min_max(values: np.ndarray) -> tuple[float, float]:
    return float(values.min()), float(values.max())


def _colour_to_luminance(ds: Dataset, pm: PixelModule, array: np.ndarray, now: str) -> Decoded:
    try:
        if pm.photometric == _PALETTE:
            array = apply_color_lut(array, ds)
        elif now.startswith("YBR"):
            array = convert_color_space(array, now, "RGB")
    except Exception as exc:
        raise DicomReadError(
            f"{pm.photometric} pixels could not be converted to RGB: {hdr.describe(exc)}"
        ) from exc
    full_range = float(np.iinfo(array.dtype).max if array.dtype.kind in "ui" else 1.0)
    if pm.photometric != _PALETTE:
        full_range = float(2**pm.bits_stored - 1)
    luminance = array.astype(np.float32) @ _LUMA
    return Decoded(values=luminance, value_range=_min_max(luminance), full_range=full_range)
