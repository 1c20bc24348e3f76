"""XrayMeta: the only header facts that leave the reader, none of them identifying.

The reader never copies names, dates, accession numbers, institutions or free text out of
a file. The patient is represented by a salted hash of Patient ID (enough to keep one
patient's images in one split) and by coarse demographics (sex, ten-year age band).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pydicom.dataset import Dataset

from medft.data import _dicom_header as hdr
from medft.data._hashing import patient_key

_AGE = re.compile(r"^(\d{1,3})\s*([DWMY])$")
_OLDEST_BAND = 90  # ages 90 and over are pooled (HIPAA safe harbour)


@dataclasses.dataclass(frozen=True)
class XrayMeta:
    """Non-identifying facts about one decoded image.

    Attributes:
        modality: DICOM Modality (``"CR"``, ``"DX"``, ...), ``None`` for raster files.
        view_position: View Position (``"PA"``, ``"AP"``, ``"LL"``, ...).
        body_part: Body Part Examined.
        photometric: Photometric Interpretation as stored (before any conversion).
        bits_stored: Bits Stored (8 or 16 for raster files).
        pixel_spacing: (row, column) spacing in mm from Pixel Spacing, else Imager Pixel
            Spacing.
        manufacturer: Manufacturer.
        manufacturer_model: Manufacturer's Model Name.
        transfer_syntax: Transfer Syntax UID, or the raster format (``"PNG"``, ...).
        original_shape: (rows, columns) of the stored image.
        n_frames: number of frames in the file.
        frame: the frame that was decoded.
        window: the (center, width) that mapped values to [0, 1], in modality units;
            for min-max or full-range scaling the equivalent window; ``None`` for a VOI LUT.
        window_presets: every (center, width) pair in the header.
        voi_source: ``"window"``, ``"voi_lut"``, ``"explicit"``, ``"minmax"`` or
            ``"full_range"``.
        padding_fraction: share of pixels that were Pixel Padding (set to 0).
        patient_sex: ``"M"``, ``"F"``, ``"O"`` or ``None``.
        age_band: ten-year band such as ``"40-49"`` (``"90+"`` pooled), or ``None``.
        patient_hash: salted SHA-256 of Patient ID (16 hex characters), or ``None``.
    """

    modality: str | None
    view_position: str | None
    body_part: str | None
    photometric: str | None
    bits_stored: int | None
    pixel_spacing: tuple[float, float] | None
    manufacturer: str | None
    manufacturer_model: str | None
    transfer_syntax: str | None
    original_shape: tuple[int, int]
    n_frames: int
    frame: int
    window: tuple[float, float] | None
    window_presets: tuple[tuple[float, float], ...]
    voi_source: str
    padding_fraction: float
    patient_sex: str | None
    age_band: str | None
    patient_hash: str | None

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain JSON types (tuples become lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def patient_hash(patient_id: str | None, salt: str | None = None) -> str | None:
    """Salted SHA-256 key of a patient ID (see ``medft.data._hashing``); ``None`` for no ID.

    The salt is ``salt``, else the ``MEDFT_PATIENT_SALT`` environment variable, else a
    fixed default. The default makes keys stable across runs but is public: set your own
    salt when keys leave your site. Same salt, same key as in ``folds.csv``.
    """
    if patient_id is None or not patient_id.strip():
        return None
    return patient_key(patient_id, salt)


def age_band(patient_age: str | None) -> str | None:
    """Ten-year band from a DICOM Age String (``"047Y"`` -> ``"40-49"``); ``None`` if invalid."""
    if not patient_age:
        return None
    match = _AGE.match(patient_age.strip().upper())
    if not match:
        return None
    number, unit = int(match.group(1)), match.group(2)
    years = number if unit == "Y" else 0  # days, weeks and months are all under a year here
    if unit == "M" and number >= 12:
        years = number // 12
    if years >= _OLDEST_BAND:
        return f"{_OLDEST_BAND}+"
    low = years // 10 * 10
    return f"{low}-{low + 9}"


def patient_sex(ds: Dataset) -> str | None:
    """``"M"``, ``"F"`` or ``"O"`` from Patient's Sex; anything else is ``None``."""
    value = hdr.code(ds, "PatientSex")
    return value if value in {"M", "F", "O"} else None


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm: Pixel Spacing, else Imager Pixel Spacing."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = hdr.floats(ds, keyword)
        if values and len(values) == 2 and all(v > 0 for v in values):
            return (values[0], values[1])
    return None


def window_presets(ds: Dataset) -> tuple[tuple[float, float], ...]:
    """Every valid (center, width) pair from Window Center / Window Width.

    Pairs are matched by position; extra values on either side and pairs whose width is
    not positive are dropped.
    """
    centers = hdr.float_values(ds, "WindowCenter")
    widths = hdr.float_values(ds, "WindowWidth")
    return tuple(
        (c, w)
        for c, w in zip(centers, widths, strict=False)
        if c is not None and w is not None and w > 0
    )


def header_meta(ds: Dataset, salt: str | None) -> dict[str, Any]:
    """The identifying-free header fields of XrayMeta that depend only on the dataset."""
    patient_id = hdr.text(ds, "PatientID")
    return {
        "modality": hdr.code(ds, "Modality"),
        "view_position": hdr.code(ds, "ViewPosition"),
        "body_part": hdr.code(ds, "BodyPartExamined"),
        "pixel_spacing": pixel_spacing(ds),
        "manufacturer": hdr.text(ds, "Manufacturer"),
        "manufacturer_model": hdr.text(ds, "ManufacturerModelName"),
        "patient_sex": patient_sex(ds),
        "age_band": age_band(hdr.text(ds, "PatientAge")),
        "patient_hash": patient_hash(patient_id, salt),
    }
