"""Read X-ray images into display space: the image a radiologist would see, as float32.

``read_xray`` reads DICOM (any transfer syntax pydicom + pylibjpeg decode), applies the
grayscale display chain in the order DICOM defines (Modality LUT -> VOI LUT or window ->
MONOCHROME1 inversion) and sets Pixel Padding to 0, so every consumer downstream sees
bright = dense and never needs to know about photometric interpretations. ``read_image``
does the same job for PNG/JPEG/TIFF exports, and ``load_image`` picks one by content.

Every failure is a :class:`~medft.errors.DicomReadError` (or its subclass
:class:`~medft.errors.UnsupportedCodecError`) whose message starts with the file's path
and says why; sizes are checked before anything is decoded. See docs/dicom.md.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medft.data import _dicom_header as hdr
from medft.data._dicom_chain import VoiArg, fixed_range_plan, grayscale_plan
from medft.data._dicom_display import render
from medft.data._dicom_meta import XrayMeta, header_meta, patient_hash, window_presets
from medft.data._dicom_pixels import (
    GRAYSCALE,
    check_frame_and_size,
    decode_frame,
    pixel_module,
    require_decoder,
)
from medft.data._dicom_raster import read_raster
from medft.data._dicom_source import (
    DICOM,
    DICOM_BARE,
    RASTER_KINDS,
    ImageSource,
    Source,
    captured_warnings,
    not_dicom_reason,
    open_source,
    sniff,
)
from medft.errors import ConfigError, DicomReadError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "XrayMeta",
    "is_dicom",
    "load_image",
    "patient_hash",
    "read_image",
    "read_xray",
]

DEFAULT_MAX_PIXELS = 50_000_000
"""Most samples one decoded frame may hold (rows x columns x samples): about 7000 x 7000."""


def read_xray(
    path: ImageSource,
    *,
    voi: VoiArg = "auto",
    frame: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    salt: str | None = None,
) -> tuple[np.ndarray, XrayMeta]:
    """Read one frame of a DICOM image in display space.

    Args:
        path: a path, the file's bytes, or a binary file object. Part 10 files and bare
            data sets without preamble/File Meta (uncompressed only) are accepted.
        voi: ``"auto"`` (the header's first window, else its VOI LUT, else min-max),
            ``"none"`` (min-max of the non-padding pixels) or an explicit
            ``(center, width)`` window in modality units (DICOM LINEAR).
        frame: which frame of a multi-frame file to decode (0-based).
        max_pixels: refuse files whose frame holds more samples than this.
        salt: salt for ``XrayMeta.patient_hash`` (default: ``MEDFT_PATIENT_SALT`` or a
            fixed value).

    Returns:
        ``(image, meta)``: float32 array of shape (rows, columns) with values in [0, 1],
        bright = dense, padding = 0; and the non-identifying :class:`XrayMeta`.

    Raises:
        DicomReadError: the file is not DICOM, is truncated or inconsistent, has no
            pixel data, is too large, or ``frame`` is out of range.
        UnsupportedCodecError: no installed decoder handles the transfer syntax.
        ConfigError: ``voi``, ``frame`` or ``max_pixels`` is not a valid value.
    """
    voi = _check_options(voi, frame, max_pixels)
    with open_source(path) as source, _labelled(source.label):
        if source.kind not in (DICOM, DICOM_BARE):
            raise DicomReadError(not_dicom_reason(source.kind, source.size))
        return _read_dicom(source, voi=voi, frame=frame, max_pixels=max_pixels, salt=salt)


def read_image(
    path: ImageSource,
    *,
    voi: VoiArg = "auto",
    frame: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    salt: str | None = None,
) -> tuple[np.ndarray, XrayMeta]:
    """Read a PNG, JPEG or TIFF image (8- or 16-bit, gray or colour) like ``read_xray``.

    Colour becomes luminance (BT.601). ``voi="auto"`` scales by the pixel type's nominal
    range (0-255, 0-65535; min-max for 32-bit and float images), ``"none"`` is min-max
    and a tuple is a window in stored units. ``frame`` picks a page of a multi-page TIFF.
    ``salt`` is accepted for a uniform signature; raster files carry no patient ID.
    """
    del salt
    voi = _check_options(voi, frame, max_pixels)
    with open_source(path) as source, _labelled(source.label):
        if source.kind in (DICOM, DICOM_BARE):
            raise DicomReadError("is a DICOM file; use read_xray or load_image")
        if source.kind not in RASTER_KINDS:
            raise DicomReadError("not a PNG, JPEG or TIFF image (unrecognised content)")
        return read_raster(source, voi=voi, frame=frame, max_pixels=max_pixels)


def load_image(
    path: ImageSource,
    *,
    voi: VoiArg = "auto",
    frame: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    salt: str | None = None,
) -> tuple[np.ndarray, XrayMeta]:
    """Read DICOM or PNG/JPEG/TIFF, chosen by the content's first bytes (not the name)."""
    voi = _check_options(voi, frame, max_pixels)
    with open_source(path) as source, _labelled(source.label):
        if source.kind in (DICOM, DICOM_BARE):
            return _read_dicom(source, voi=voi, frame=frame, max_pixels=max_pixels, salt=salt)
        if source.kind in RASTER_KINDS:
            return read_raster(source, voi=voi, frame=frame, max_pixels=max_pixels)
        raise DicomReadError(
            "neither a DICOM file nor a PNG, JPEG or TIFF image (unrecognised content)"
        )


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """Whether a file's first bytes are DICOM (Part 10 or a bare data set), whatever its name.

    An unreadable file is not DICOM; nothing beyond the first 132 bytes is read.
    """
    try:
        with open(path, "rb") as fh:
            return sniff(fh.read(132)) in (DICOM, DICOM_BARE)
    except OSError:
        return False


@contextlib.contextmanager
def _labelled(label: str) -> Iterator[None]:
    """Prefix every DicomReadError raised inside with the source's label."""
    try:
        yield
    except DicomReadError as exc:
        raise type(exc)(f"{label}: {exc}") from exc.__cause__


def _check_options(voi: Any, frame: Any, max_pixels: Any) -> VoiArg:
    if isinstance(frame, bool) or not isinstance(frame, numbers.Integral) or frame < 0:
        raise ConfigError(f"frame must be a non-negative integer, got {frame!r}")
    if (
        isinstance(max_pixels, bool)
        or not isinstance(max_pixels, numbers.Integral)
        or max_pixels < 1
    ):
        raise ConfigError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if isinstance(voi, str) and voi in ("auto", "none"):
        return voi  # type: ignore[return-value]
    if isinstance(voi, (tuple, list)) and len(voi) == 2:
        center, width = voi
        if all(_is_real(v) for v in voi) and width > 0:
            return (float(center), float(width))
    raise ConfigError(
        f"voi must be 'auto', 'none' or a (center, width) pair with width > 0, got {voi!r}"
    )


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _read_dicom(
    source: Source, *, voi: VoiArg, frame: int, max_pixels: int, salt: str | None
) -> tuple[np.ndarray, XrayMeta]:
    """Read one DICOM frame; anything unforeseen still surfaces as a DicomReadError."""
    try:
        return _decode_dicom(source, voi=voi, frame=frame, max_pixels=max_pixels, salt=salt)
    except DicomReadError:
        raise
    except Exception as exc:  # a file shape no check above foresaw: still a typed error
        raise DicomReadError(
            f"unexpected failure while reading ({hdr.describe(exc)}); the file may be "
            "malformed in a way medft does not recognise; please report it"
        ) from exc


def _decode_dicom(
    source: Source, *, voi: VoiArg, frame: int, max_pixels: int, salt: str | None
) -> tuple[np.ndarray, XrayMeta]:
    with captured_warnings() as caught:
        ds = _parse(source, caught)
        _require_pixel_data(ds, caught)
        uid = _transfer_syntax(ds, bare=source.kind == DICOM_BARE)
        require_decoder(uid)
        pm = pixel_module(ds, uid)
        check_frame_and_size(ds, pm, frame, max_pixels)
        decoded = decode_frame(ds, pm, frame)
        stored_range = decoded.value_range
        if pm.photometric in GRAYSCALE:
            plan, voi_source = grayscale_plan(
                ds,
                voi,
                stored_range=stored_range,
                photometric=pm.photometric,
                signed=pm.signed,
                bits_allocated=pm.bits_allocated,
            )
        else:
            plan, voi_source = fixed_range_plan(voi, decoded.full_range)
        rendered = render(decoded.values, plan, stored_range)
        meta = XrayMeta(
            **header_meta(ds, salt),
            photometric=pm.photometric,
            bits_stored=pm.bits_stored,
            transfer_syntax=str(uid),
            original_shape=(pm.rows, pm.columns),
            n_frames=pm.n_frames,
            frame=frame,
            window=rendered.window,
            window_presets=window_presets(ds),
            voi_source=voi_source,
            padding_fraction=rendered.padding_fraction,
        )
    return rendered.image, meta


def _parse(source: Source, caught: list[Any]) -> Dataset:
    try:
        return pydicom.dcmread(source.stream, force=source.kind == DICOM_BARE)
    except Exception as exc:
        raise DicomReadError(
            f"the DICOM header cannot be parsed ({hdr.describe(exc)}); the file is "
            f"truncated or corrupt{_warned(caught)}"
        ) from exc


def _warned(caught: list[Any]) -> str:
    """`` (pydicom warned: ...)`` with the last warning seen, or ``""``."""
    if not caught:
        return ""
    return f" (pydicom warned: {' '.join(str(caught[-1].message).split())[:200]})"


def _require_pixel_data(ds: Dataset, caught: list[Any]) -> None:
    warned = _warned(caught)
    if len(ds) == 0:
        raise DicomReadError(
            f"no data set after the File Meta Information: the file is empty or truncated{warned}"
        )
    if "PixelData" in ds:
        value = hdr.raw_value(ds, "PixelData")
        if value is hdr.INVALID or not value:
            raise DicomReadError("the Pixel Data element is empty or unreadable")
        return
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise DicomReadError(
            "holds Float Pixel Data, which medft does not read (X-rays are integers)"
        )
    file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    sop = hdr.text(ds, "SOPClassUID") or hdr.text(file_meta, "MediaStorageSOPClassUID")
    kind = f" (SOP class '{UID(sop).name}')" if sop else ""
    raise DicomReadError(
        f"no Pixel Data element{kind}: the file holds no image or is truncated{warned}"
    )


def _transfer_syntax(ds: Dataset, *, bare: bool) -> UID:
    """The Transfer Syntax UID; for a bare data set, the one pydicom detected while parsing."""
    file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    uid = hdr.text(file_meta, "TransferSyntaxUID")
    if uid:
        return UID(uid)
    if not bare:
        raise DicomReadError(
            "the File Meta Information has no Transfer Syntax UID (0002,0010); the file "
            "is truncated or was written incorrectly"
        )
    if ds["PixelData"].is_undefined_length:
        raise DicomReadError(
            "no File Meta Information and the Pixel Data is compressed, so the codec is "
            "unknown; re-export the file as DICOM Part 10"
        )
    implicit, little = ds.original_encoding
    if implicit:
        detected = ImplicitVRLittleEndian
    else:
        detected = ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
    file_meta.TransferSyntaxUID = detected
    ds.file_meta = file_meta
    return detected
