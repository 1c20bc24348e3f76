"""PNG, JPEG and TIFF files (exports of X-rays, public datasets) read through Pillow.

A raster file carries no DICOM display chain, so the image is taken as already being in
display space: grayscale as stored, colour reduced to luminance, scaled by the nominal
range of its pixel type (0-255, 0-65535), or min-max for 32-bit integer and float images.
No text chunk, EXIF or other metadata is read.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from medft.data._dicom_chain import VoiArg, fixed_range_plan
from medft.data._dicom_display import render
from medft.data._dicom_meta import XrayMeta
from medft.data._dicom_source import RASTER_KINDS, Source
from medft.errors import DicomReadError

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def read_raster(
    source: Source, *, voi: VoiArg, frame: int, max_pixels: int
) -> tuple[np.ndarray, XrayMeta]:
    """Decode frame ``frame`` of a PNG/JPEG/TIFF; DicomReadError (no label) on failure."""
    try:
        image = Image.open(source.stream, formats=list(RASTER_KINDS))
    except Image.DecompressionBombError as exc:
        raise DicomReadError(f"refused as a decompression bomb by Pillow ({exc})") from exc
    except Exception as exc:
        raise DicomReadError(
            f"not a readable PNG, JPEG or TIFF image ({type(exc).__name__}: {exc})"
        ) from exc
    with image:
        n_frames = int(getattr(image, "n_frames", 1))
        if not 0 <= frame < n_frames:
            raise DicomReadError(f"frame {frame} requested but the file has {n_frames} frame(s)")
        width, height = image.size
        bands = len(image.getbands())
        if width * height * bands > max_pixels:
            raise DicomReadError(
                f"{height}x{width}x{bands} samples exceed max_pixels={max_pixels:,}; pass a "
                "larger max_pixels if the file is genuine"
            )
        try:
            image.seek(frame)
            values, full_range, photometric, bits = _pixels(image)
        except DicomReadError:
            raise
        except Exception as exc:
            raise DicomReadError(
                f"the {image.format} pixel data could not be decoded "
                f"({type(exc).__name__}: {exc}); the file is truncated or corrupt"
            ) from exc
        fmt = image.format
    plan, voi_source = fixed_range_plan(voi, full_range)
    rendered = render(values, plan)
    meta = XrayMeta(
        modality=None,
        view_position=None,
        body_part=None,
        photometric=photometric,
        bits_stored=bits,
        pixel_spacing=None,
        manufacturer=None,
        manufacturer_model=None,
        transfer_syntax=fmt,
        original_shape=(height, width),
        n_frames=n_frames,
        frame=frame,
        window=rendered.window,
        window_presets=(),
        voi_source=voi_source,
        padding_fraction=0.0,
        patient_sex=None,
        age_band=None,
        patient_hash=None,
    )
    return rendered.image, meta


def _pixels(image: Image.Image) -> tuple[np.ndarray, float | None, str, int]:
    """(values, nominal full range or None, photometric, bits) for the current frame."""
    mode = image.mode
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image)
        return values.astype(values.dtype.newbyteorder("=")), 65535.0, "MONOCHROME2", 16
    if mode in ("I", "F"):
        return np.asarray(image), None, "MONOCHROME2", 32
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(image.convert("L")), 255.0, "MONOCHROME2", 1 if mode == "1" else 8
    photometric = "PALETTE COLOR" if mode in ("P", "PA") else "RGB"
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return rgb @ _LUMA, 255.0, photometric, 8
