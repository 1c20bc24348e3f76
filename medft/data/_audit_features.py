"""Per-image features for the shortcut audit, read in parallel.

Two depths: ``pixels`` decodes every image through the training reader
(:func:`medft.data.dicom.load_image`), adds the mean and SD of the *stored* pixel values
(before any display window) and small thumbnails for the image probes; ``header`` reads
only DICOM headers (or a raster file's size and mode) so a quick audit of thousands of
files takes seconds. Nothing identifying leaves this module: the features are acquisition
facts (size, vendor, encoding), never names, dates or IDs.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from pydicom.pixels import pixel_array
from pydicom.uid import UID

from medft.data import _dicom_header as hdr
from medft.data._dicom_meta import pixel_spacing
from medft.data._dicom_source import DICOM, RASTER_KINDS, sniff
from medft.data.dicom import load_image
from medft.errors import DataError, DicomReadError, MedftError
from medft.progress import Progress, progress

__all__ = [
    "BORDER_FRACTION",
    "CATEGORICAL_FEATURES",
    "NUMERIC_FEATURES",
    "THUMB_SIDE",
    "ImageFeatures",
    "border_mask",
    "feature_frame",
    "read_features",
    "usable_cpus",
]

Depth = Literal["pixels", "header"]

NUMERIC_FEATURES = (
    "rows",
    "columns",
    "aspect_ratio",
    "pixel_spacing",
    "bits_stored",
    "padding_fraction",
    "raw_mean",
    "raw_sd",
)
"""Numeric acquisition features, used as they are."""

CATEGORICAL_FEATURES = (
    "photometric",
    "transfer_syntax",
    "modality",
    "manufacturer",
    "manufacturer_model",
    "view_position",
    "body_part",
)
"""Categorical acquisition features (one-hot / per-level rates in the models)."""

MISSING = "(none)"
"""The level a categorical feature takes when the file does not say."""

THUMB_SIDE = 16
"""Side of the whole-image thumbnail probe's input."""

BORDER_SIDE = 32
"""Side of the square the border probe looks at (finer, so small corner markers survive)."""

BORDER_FRACTION = 0.2
"""The border probe sees only this outer fraction of each side; the centre is masked."""

_GRAY_MODES = ("1", "L", "LA", "I", "F")  # Pillow modes read as grayscale
_RAW_STATS_SIDE = 512  # stored pixels are subsampled to about this many per side for mean/SD
_CHUNKS_PER_WORKER = 4
_MAX_CHUNK = 64


@dataclass
class ImageFeatures:
    """What one file contributed: features, thumbnails, or the reason it was unreadable."""

    values: dict[str, Any] = field(default_factory=dict)
    thumb: np.ndarray | None = None
    border: np.ndarray | None = None
    error: str | None = None


def usable_cpus() -> int:
    """CPUs this process may run on (respects affinity limits, unlike ``os.cpu_count``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def border_mask(side: int = BORDER_SIDE, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """Boolean (side, side) mask that is True on the outer ``fraction`` of each edge."""
    ring = max(1, round(side * fraction))
    mask = np.ones((side, side), dtype=bool)
    mask[ring : side - ring, ring : side - ring] = False
    return mask


def read_features(
    paths: Sequence[str], *, depth: Depth = "pixels", workers: int | None = None
) -> list[ImageFeatures]:
    """Extract audit features of every path, in order, using worker processes.

    Args:
        paths: Image files (DICOM, PNG, JPEG, TIFF).
        depth: ``"pixels"`` (decode; raw intensity statistics and thumbnails) or
            ``"header"`` (headers only; no intensity features, no thumbnails).
        workers: Processes (default: the CPUs available); 1 reads in this process.

    Returns:
        One :class:`ImageFeatures` per path; unreadable files carry ``error``.
    """
    n_workers = max(1, int(workers if workers is not None else usable_cpus()))
    paths = list(paths)
    what = "headers" if depth == "header" else "images"
    with progress(f"data audit: reading {what}", total=len(paths), unit="files") as bar:
        if n_workers == 1 or len(paths) < 2 * n_workers:
            results: list[ImageFeatures] = []
            for start in range(0, len(paths), _MAX_CHUNK):
                results += _read_chunk(paths[start : start + _MAX_CHUNK], depth)
                bar.advance(len(paths[start : start + _MAX_CHUNK]))
            return results
        return _read_in_pool(paths, depth, n_workers, bar)


def _read_in_pool(
    paths: list[str], depth: Depth, n_workers: int, bar: Progress
) -> list[ImageFeatures]:
    size = max(1, min(_MAX_CHUNK, math.ceil(len(paths) / (n_workers * _CHUNKS_PER_WORKER))))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    try:
        with ProcessPoolExecutor(max_workers=min(n_workers, len(chunks))) as pool:
            results: list[ImageFeatures] = []
            for part in pool.map(_read_chunk, chunks, [depth] * len(chunks)):
                results += part
                bar.advance(len(part))
            return results
    except BrokenProcessPool as exc:
        raise DataError(
            "a reader process crashed on one of the images; run `medft data check` to find "
            "the file, fix or drop it, and audit again"
        ) from exc


def _read_chunk(paths: Sequence[str], depth: Depth) -> list[ImageFeatures]:
    read = _pixel_features if depth == "pixels" else _header_features
    out = []
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # decoder chatter; a file reads or it fails
                out.append(read(path))
        except MedftError as exc:
            out.append(ImageFeatures(error=_one_line(path, exc)))
        except Exception as exc:
            out.append(
                ImageFeatures(error=f"unexpected {type(exc).__name__}: {_one_line(path, exc)}")
            )
    return out


def _one_line(path: str, exc: BaseException) -> str:
    message = str(exc)
    if message.startswith(path):
        message = message[len(path) :].lstrip(" :")
    return " ".join(message.split())[:300] or type(exc).__name__


# ----------------------------------------------------------------------- pixel depth


def _pixel_features(path: str) -> ImageFeatures:
    image, meta = load_image(path)
    rows, columns = (int(v) for v in meta.original_shape)
    spacing = meta.pixel_spacing
    raw_mean, raw_sd = _raw_statistics(path, raster=_is_raster(meta))
    values = {
        "rows": float(rows),
        "columns": float(columns),
        "aspect_ratio": rows / columns,
        "pixel_spacing": float(np.mean(spacing)) if spacing else math.nan,
        "bits_stored": float(meta.bits_stored) if meta.bits_stored else math.nan,
        "padding_fraction": float(meta.padding_fraction),
        "raw_mean": raw_mean,
        "raw_sd": raw_sd,
        "photometric": meta.photometric or MISSING,
        "transfer_syntax": _syntax_name(meta.transfer_syntax),
        "modality": meta.modality or MISSING,
        "manufacturer": meta.manufacturer or MISSING,
        "manufacturer_model": meta.manufacturer_model or MISSING,
        "view_position": meta.view_position or MISSING,
        "body_part": meta.body_part or MISSING,
    }
    square = _square_thumbnail(image, BORDER_SIDE)
    thumb = square.reshape(THUMB_SIDE, 2, THUMB_SIDE, 2).mean(axis=(1, 3))
    return ImageFeatures(values=values, thumb=thumb.astype(np.float32), border=square)


def _is_raster(meta: Any) -> bool:
    return meta.transfer_syntax in RASTER_KINDS


def _raw_statistics(path: str, *, raster: bool) -> tuple[float, float]:
    """Mean and SD of the stored pixel values (no rescale, no window), first frame."""
    stored = _raster_values(path) if raster else _dicom_values(path)
    if stored is None or stored.size == 0:
        return math.nan, math.nan
    if stored.ndim == 3:  # colour: average the channels
        stored = stored.mean(axis=-1)
    step = max(1, max(stored.shape) // _RAW_STATS_SIDE)
    sample = np.asarray(stored[::step, ::step], dtype=np.float64)
    return float(sample.mean()), float(sample.std())


def _dicom_values(path: str) -> np.ndarray | None:
    try:
        ds = pydicom.dcmread(path)
    except Exception:
        ds = pydicom.dcmread(path, force=True)
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if n_frames > 1:
        return np.asarray(pixel_array(ds, index=0))
    return np.asarray(ds.pixel_array)


def _raster_values(path: str) -> np.ndarray | None:
    with Image.open(path) as img:
        img.seek(0)
        return np.asarray(img)


def _square_thumbnail(image: np.ndarray, side: int) -> np.ndarray:
    """Pad a display image to a square (zeros, centred, as training does) and box-shrink it."""
    height, width = image.shape
    edge = max(height, width)
    square = np.zeros((edge, edge), dtype=np.float32)
    top, left = (edge - height) // 2, (edge - width) // 2
    square[top : top + height, left : left + width] = image
    small = Image.fromarray(square).resize((side, side), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32)


def _syntax_name(uid: str | None) -> str:
    """A readable transfer syntax (``JPEG 2000 Image Compression (Lossless Only)``, ``PNG``)."""
    if not uid:
        return MISSING
    name = UID(uid).name
    return name if name and name != uid else uid


# ----------------------------------------------------------------------- header depth


def _header_features(path: str) -> ImageFeatures:
    with open(path, "rb") as fh:
        head = fh.read(132)
    kind = sniff(head)
    if kind in RASTER_KINDS:
        return _raster_header(path)
    if kind is None:
        raise DicomReadError(f"{path}: neither a DICOM file nor a PNG, JPEG or TIFF image")
    return _dicom_header(path, bare=kind != DICOM)


def _dicom_header(path: str, *, bare: bool) -> ImageFeatures:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=bare)
    except Exception as exc:
        raise DicomReadError(f"{path}: the DICOM header cannot be parsed ({exc})") from exc
    rows, columns = hdr.first_int(ds, "Rows"), hdr.first_int(ds, "Columns")
    if not rows or not columns:
        raise DicomReadError(f"{path}: no Rows/Columns in the header (no image?)")
    file_meta = getattr(ds, "file_meta", None)
    spacing = pixel_spacing(ds)
    bits = hdr.first_int(ds, "BitsStored")
    values = {
        "rows": float(rows),
        "columns": float(columns),
        "aspect_ratio": rows / columns,
        "pixel_spacing": float(np.mean(spacing)) if spacing else math.nan,
        "bits_stored": float(bits) if bits else math.nan,
        "padding_fraction": math.nan,
        "raw_mean": math.nan,
        "raw_sd": math.nan,
        "photometric": hdr.code(ds, "PhotometricInterpretation") or MISSING,
        "transfer_syntax": _syntax_name(
            hdr.text(file_meta, "TransferSyntaxUID") if file_meta is not None else None
        ),
        "modality": hdr.code(ds, "Modality") or MISSING,
        "manufacturer": hdr.text(ds, "Manufacturer") or MISSING,
        "manufacturer_model": hdr.text(ds, "ManufacturerModelName") or MISSING,
        "view_position": hdr.code(ds, "ViewPosition") or MISSING,
        "body_part": hdr.code(ds, "BodyPartExamined") or MISSING,
    }
    return ImageFeatures(values=values)


def _raster_header(path: str) -> ImageFeatures:
    with Image.open(path) as img:
        width, height = img.size
        mode, fmt = img.mode, img.format or MISSING
    values = {name: math.nan for name in NUMERIC_FEATURES}
    values.update({name: MISSING for name in CATEGORICAL_FEATURES})
    values.update(
        rows=float(height),
        columns=float(width),
        aspect_ratio=height / width,
        bits_stored=16.0 if mode.startswith("I;16") else 8.0,
        photometric="MONOCHROME2" if mode in _GRAY_MODES or mode.startswith("I;16") else "RGB",
        transfer_syntax=fmt,
    )
    return ImageFeatures(values=values)


def feature_frame(results: Sequence[ImageFeatures]) -> pd.DataFrame:
    """Stack the readable images' features into one table (numeric float, categorical str)."""
    frame = pd.DataFrame(
        [r.values for r in results], columns=[*NUMERIC_FEATURES, *CATEGORICAL_FEATURES]
    )
    frame[list(NUMERIC_FEATURES)] = frame[list(NUMERIC_FEATURES)].astype(float)
    for name in CATEGORICAL_FEATURES:
        frame[name] = frame[name].fillna(MISSING).astype(str)
    return frame
