"""Synthetic chest X-ray DICOM datasets (``medft synth``).

Writes phantom radiographs (see :mod:`medft.data._phantom`) as DICOM files that vary the way
real archives do (CR and DX, MONOCHROME1 and 2, 10–16 bits stored, rescale and window
values, some JPEG 2000 / RLE compressed) plus a ``labels.csv`` with multi-label findings and
the position of the main lesion. Everything is drawn from ``(seed, patient, image)`` alone, so
the same seed gives the same files whatever the number of worker processes.

By default no header field depends on the label, so a shortcut audit of the data finds
nothing; ``shortcut=`` plants one on purpose (see :data:`SHORTCUTS`).
"""

from __future__ import annotations

import csv
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from medft._io import atomic_open, atomic_path, check_output_dir
from medft.data._phantom import (
    FINDING_KINDS,
    Anatomy,
    Exposure,
    Finding,
    Pose,
    lesion_geometry,
    render,
    sample_anatomy,
    sample_exposure,
    sample_finding,
    sample_pose,
)
from medft.errors import ConfigError
from medft.progress import progress

__all__ = [
    "CSV_COLUMNS",
    "FINDINGS",
    "LABEL_COLUMNS",
    "MANUFACTURERS",
    "SHORTCUTS",
    "SHORTCUT_MANUFACTURER",
    "SIZE_SHORTCUT_ASPECT",
    "CasePlan",
    "HeaderPlan",
    "SynthResult",
    "abnormal_patients",
    "plan_case",
    "plan_cases",
    "render_case",
    "synthesize",
    "write_case",
]

FINDINGS: tuple[str, ...] = FINDING_KINDS
LABEL_COLUMNS: tuple[str, ...] = ("abnormal", *FINDINGS)
CSV_COLUMNS: tuple[str, ...] = (
    "path",
    "patient_id",
    *LABEL_COLUMNS,
    "lesion_x",
    "lesion_y",
    "lesion_r",
    "lesion_finding",
    "modality",
    "manufacturer",
    "view",
    "photometric",
)
Shortcut = Literal["manufacturer", "size", "photometric", "marker"]
"""A spurious feature :func:`synthesize` can plant."""
SHORTCUTS: tuple[str, ...] = get_args(Shortcut)

# Fictional vendors (two models each): real-looking headers without naming real companies.
MANUFACTURERS: dict[str, tuple[str, ...]] = {
    "Orion Radiography": ("OR-CR 300", "OR-DR 510"),
    "Northwind Imaging": ("NW Digital 2", "NW Flat 4"),
    "Helix Medical Systems": ("HX-9", "HX-12"),
    "Kestrel Diagnostics": ("K-Ray CR", "K-Ray DR"),
}
SHORTCUT_MANUFACTURER = "Orion Radiography"
SIZE_SHORTCUT_ASPECT = 1.25  # the tell under shortcut="size": Rows = 1.25 x Columns

_BITS_STORED = (10, 12, 14, 15, 16)
_PRIMARY_WEIGHTS = (0.45, 0.3, 0.25)  # nodule, opacity, effusion
_SECOND_FINDING_P = 0.2
_MIN_SIZE, _MAX_SIZE = 64, 4096

# Random streams: every draw comes from default_rng([_TAG, seed, patient, image, stream]).
# Keys have a fixed length because numpy's SeedSequence treats trailing zeros as absent.
_TAG = 0x5EED_C0DE
_STREAM_LABELS, _STREAM_PATIENT, _STREAM_POSE, _STREAM_HEADER = 1, 2, 3, 4
_STREAM_NOISE, _STREAM_SHORTCUT = 5, 6


@dataclass(frozen=True)
class SynthResult:
    """What :func:`synthesize` wrote: the folder, its ``labels.csv``, images and time taken."""

    root: Path
    labels_csv: Path
    n_images: int
    seconds: float


@dataclass(frozen=True)
class HeaderPlan:
    """The DICOM encoding of one image (independent of its label unless a shortcut says so)."""

    modality: str
    manufacturer: str
    model: str
    photometric: str
    bits_stored: int
    transfer_syntax: str
    rescale: tuple[float, float] | None
    window: bool
    wide_window: bool
    view: str
    sex: str
    age: int
    pixel_spacing: float
    detector_range: tuple[float, float]
    kvp: int


@dataclass(frozen=True)
class CasePlan:
    """Everything that determines one synthetic image: anatomy, findings, pose, header."""

    seed: int
    patient_index: int
    image_index: int
    patient_id: str
    abnormal: bool
    anatomy: Anatomy
    pose: Pose
    exposure: Exposure
    findings: tuple[Finding, ...]
    shape: tuple[int, int]
    marker: bool
    header: HeaderPlan

    @property
    def relpath(self) -> str:
        """Path of the file relative to the dataset folder (POSIX separators).

        Folders are numbered, not named after the PatientID: file paths end up in
        splits.csv, predictions and reports, which must not carry patient identifiers.
        """
        return f"images/{self.patient_index:05d}/{self.image_index:03d}.dcm"

    @property
    def noise_seed(self) -> list[int]:
        """Seed of this image's noise field (the same with and without findings)."""
        return [_TAG, self.seed, self.patient_index, self.image_index, _STREAM_NOISE]


# ----------------------------------------------------------------------------- planning


def _rng(seed: int, patient: int, image: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([_TAG, seed, patient, image, stream])


def _patient_id(index: int, n_patients: int) -> str:
    return f"SYN{index:0{max(5, len(str(n_patients - 1)))}d}"


def abnormal_patients(seed: int, n_patients: int, prevalence: float) -> np.ndarray:
    """Which patients are abnormal: exactly ``round(prevalence * n_patients)``, seeded.

    Labels belong to patients (a patient's images all show the same finding), so
    patient-level leakage between splits would inflate metrics the way it does in real data.
    """
    n_abnormal = round(prevalence * n_patients)
    order = _rng(seed, 0, 0, _STREAM_LABELS).permutation(n_patients)
    flags = np.zeros(n_patients, dtype=bool)
    flags[order[:n_abnormal]] = True
    return flags


def _tell(rng: np.random.Generator, abnormal: bool, strength: float) -> bool:
    """Whether an image carries the planted shortcut: P = strength if abnormal, else 1-strength."""
    u = rng.random()
    return bool(u < strength) if abnormal else bool(u >= strength)


def _plan_header(rng: np.random.Generator, size: int, sex: str, age: int) -> HeaderPlan:
    """Draw the DICOM encoding. The order of draws is fixed so shortcuts only override."""
    modality = "CR" if rng.random() < 0.5 else "DX"
    vendor = list(MANUFACTURERS)[int(rng.integers(len(MANUFACTURERS)))]
    model_u = rng.random()
    mono1 = rng.random() < (0.5 if modality == "CR" else 0.2)
    bits_stored = int(rng.choice(_BITS_STORED))
    u = rng.random()
    if u < 0.2:
        syntax = JPEG2000Lossless
    elif u < 0.4:
        syntax = RLELossless
    elif u < 0.5:
        syntax = ImplicitVRLittleEndian
    else:
        syntax = ExplicitVRLittleEndian
    has_rescale = rng.random() < 0.4
    slope = float(rng.choice((1.0, 0.5, 2.0)))
    intercept = float(rng.choice((0.0, -1024.0, -512.0)))
    window = rng.random() < 0.6
    wide_window = rng.random() < 0.3
    view = "PA" if rng.random() < 0.7 else "AP"
    field_of_view_mm = rng.uniform(350.0, 430.0)
    lo = rng.uniform(0.0, 0.06)
    hi = rng.uniform(0.55, 0.98)
    kvp = int(rng.integers(110, 126)) if view == "PA" else int(rng.integers(80, 101))
    models = MANUFACTURERS[vendor]
    return HeaderPlan(
        modality=modality,
        manufacturer=vendor,
        model=models[int(model_u * len(models))],
        photometric="MONOCHROME1" if mono1 else "MONOCHROME2",
        bits_stored=bits_stored,
        transfer_syntax=str(syntax),
        rescale=(slope, intercept) if has_rescale else None,
        window=window,
        wide_window=window and wide_window,
        view=view,
        sex=sex,
        age=age,
        pixel_spacing=round(field_of_view_mm / size, 4),
        detector_range=(lo, hi),
        kvp=kvp,
    )


def _with_manufacturer(header: HeaderPlan, vendor: str) -> HeaderPlan:
    models = MANUFACTURERS[vendor]
    index = list(MANUFACTURERS[header.manufacturer]).index(header.model)
    return replace(header, manufacturer=vendor, model=models[index % len(models)])


def plan_case(
    seed: int,
    patient_index: int,
    image_index: int,
    *,
    n_patients: int,
    abnormal: bool,
    size: int = 256,
    shortcut: Shortcut | None = None,
    shortcut_strength: float = 0.9,
) -> CasePlan:
    """Plan one image from ``(seed, patient, image)`` and the patient's label."""
    patient_rng = _rng(seed, patient_index, 0, _STREAM_PATIENT)
    anatomy = sample_anatomy(patient_rng)
    sex = "F" if patient_rng.random() < 0.5 else "M"
    age = int(patient_rng.integers(18, 91))
    findings: tuple[Finding, ...] = ()
    if abnormal:
        primary = str(patient_rng.choice(FINDINGS, p=_PRIMARY_WEIGHTS))
        kinds = [primary]
        if patient_rng.random() < _SECOND_FINDING_P:
            others = [k for k in FINDINGS if k != primary]
            kinds.append(str(patient_rng.choice(others)))
        findings = tuple(sample_finding(patient_rng, kind, anatomy) for kind in kinds)

    image_rng = _rng(seed, patient_index, image_index, _STREAM_POSE)
    pose = sample_pose(image_rng)
    exposure = sample_exposure(image_rng)
    header = _plan_header(_rng(seed, patient_index, image_index, _STREAM_HEADER), size, sex, age)

    shape = (size, size)
    marker = False
    if shortcut is not None:
        shortcut_rng = _rng(seed, patient_index, image_index, _STREAM_SHORTCUT)
        tell = _tell(shortcut_rng, abnormal, shortcut_strength)
        if shortcut == "manufacturer":
            others = [v for v in MANUFACTURERS if v != SHORTCUT_MANUFACTURER]
            other = others[int(shortcut_rng.integers(len(others)))]
            header = _with_manufacturer(header, SHORTCUT_MANUFACTURER if tell else other)
        elif shortcut == "size":
            shape = (round(size * SIZE_SHORTCUT_ASPECT), size) if tell else (size, size)
        elif shortcut == "photometric":
            header = replace(header, photometric="MONOCHROME1" if tell else "MONOCHROME2")
        elif shortcut == "marker":
            marker = tell
    return CasePlan(
        seed=seed,
        patient_index=patient_index,
        image_index=image_index,
        patient_id=_patient_id(patient_index, n_patients),
        abnormal=abnormal,
        anatomy=anatomy,
        pose=pose,
        exposure=exposure,
        findings=findings,
        shape=shape,
        marker=marker,
        header=header,
    )


def plan_cases(
    n_patients: int,
    *,
    images_per_patient: int = 1,
    size: int = 256,
    seed: int = 0,
    prevalence: float = 0.5,
    shortcut: Shortcut | None = None,
    shortcut_strength: float = 0.9,
) -> list[CasePlan]:
    """Plan every image of a dataset, as :func:`synthesize` would write it (same arguments)."""
    _validate(n_patients, images_per_patient, size, seed, prevalence, shortcut, shortcut_strength)
    flags = abnormal_patients(seed, n_patients, prevalence)
    return [
        plan_case(
            seed,
            patient,
            image,
            n_patients=n_patients,
            abnormal=bool(flags[patient]),
            size=size,
            shortcut=shortcut,
            shortcut_strength=shortcut_strength,
        )
        for patient in range(n_patients)
        for image in range(images_per_patient)
    ]


# ----------------------------------------------------------------------------- rendering


def _marker_box(shape: tuple[int, int]) -> tuple[slice, slice]:
    """Top-right corner square where the ``marker`` shortcut burns in a bright label."""
    side = max(4, min(shape) // 14)
    margin = max(2, min(shape) // 32)
    return slice(margin, margin + side), slice(shape[1] - margin - side, shape[1] - margin)


def render_case(plan: CasePlan, *, with_findings: bool = True) -> np.ndarray:
    """The display-space image (float32 in [0, 1], bright = dense) that ``plan`` encodes.

    ``with_findings=False`` renders the same radiograph (same pose, exposure and noise)
    without its findings, so the difference shows exactly where the lesions are.
    """
    return _render(plan, with_findings=with_findings)[0]


def _render(plan: CasePlan, *, with_findings: bool = True) -> tuple[np.ndarray, tuple]:
    rendering = render(
        plan.anatomy,
        plan.pose,
        plan.exposure,
        plan.findings,
        plan.shape,
        plan.noise_seed,
        include_findings=with_findings,
    )
    image = rendering.image
    if plan.marker:
        rows, cols = _marker_box(plan.shape)
        image[rows, cols] = 1.0
    return image, rendering.contributions


# ----------------------------------------------------------------------------- encoding


def _uid(plan: CasePlan, what: str) -> str:
    sources = ["medft-synth", str(plan.seed), str(plan.patient_index), str(plan.image_index)]
    return str(generate_uid(entropy_srcs=[*sources, what]))


def _stored_values(image: np.ndarray, header: HeaderPlan) -> np.ndarray:
    """Display image -> stored integers (inverted for MONOCHROME1: same displayed anatomy)."""
    max_value = (1 << header.bits_stored) - 1
    lo = header.detector_range[0] * max_value
    hi = header.detector_range[1] * max_value
    stored = np.rint(lo + image.astype(np.float64) * (hi - lo))
    if header.photometric == "MONOCHROME1":
        stored = max_value - stored
    return np.clip(stored, 0, max_value).astype(np.uint16)


def _add_window(ds: FileDataset, stored: np.ndarray, header: HeaderPlan) -> None:
    slope, intercept = header.rescale or (1.0, 0.0)
    low, high = np.percentile(stored, [0.5, 99.5]) * slope + intercept
    low, high = min(low, high), max(low, high)
    centre = round(float(low + high) / 2.0, 1)
    width = round(max(float(high - low) * 1.1, 2.0), 1)
    if header.wide_window:
        ds.WindowCenter = [centre, centre]
        ds.WindowWidth = [width, round(width * 1.6, 1)]
        ds.WindowCenterWidthExplanation = ["NORMAL", "WIDE"]
    else:
        ds.WindowCenter = centre
        ds.WindowWidth = width


def _add_patient_info(ds: FileDataset, plan: CasePlan) -> None:
    """Fake identifying fields, only on request (for de-identification / leak tests)."""
    rng = _rng(plan.seed, plan.patient_index, 0, _STREAM_PATIENT + 100)
    family = ("DOE", "ROE", "POE", "MOE", "LOE", "VOE")
    given = ("ALEX", "SAM", "JO", "KIM", "LEE", "RIO")
    ds.PatientName = f"{rng.choice(family)}^{rng.choice(given)}^SYNTHETIC"
    birth_year = 2024 - plan.header.age
    ds.PatientBirthDate = (
        f"{birth_year:04d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    )
    ds.AccessionNumber = f"ACC{plan.patient_index:06d}{plan.image_index:03d}"
    ds.InstitutionName = "Synthetic General Hospital"
    ds.ReferringPhysicianName = "SYNTHETIC^REFERRER"
    ds.StudyDate = f"2024{1 + plan.image_index % 12:02d}{1 + plan.patient_index % 28:02d}"
    ds.StudyTime = "101500"


def _dataset(plan: CasePlan, image: np.ndarray, path: Path, patient_info: bool) -> FileDataset:
    header = plan.header
    sop_class = (
        ComputedRadiographyImageStorage
        if header.modality == "CR"
        else DigitalXRayImageStorageForPresentation
    )
    sop_instance = _uid(plan, "sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDFT_SYNTH"

    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = _uid(plan, "study")
    ds.SeriesInstanceUID = _uid(plan, "series")
    ds.Modality = header.modality
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if header.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = header.manufacturer
    ds.ManufacturerModelName = header.model
    ds.PatientID = plan.patient_id
    ds.PatientSex = header.sex
    ds.PatientAge = f"{header.age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = header.view
    ds.KVP = header.kvp
    ds.SeriesNumber = 1
    ds.InstanceNumber = plan.image_index + 1
    spacing = [header.pixel_spacing, header.pixel_spacing]
    ds.ImagerPixelSpacing = spacing
    if header.modality == "DX":
        ds.PixelSpacing = spacing
    if patient_info:
        _add_patient_info(ds, plan)

    stored = _stored_values(image, header)
    ds.set_pixel_data(stored, header.photometric, header.bits_stored, generate_instance_uid=False)
    if header.rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = header.rescale
        ds.RescaleType = "US"
    if header.window:
        _add_window(ds, stored, header)
    if header.transfer_syntax in (JPEG2000Lossless, RLELossless):
        ds.compress(header.transfer_syntax, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = header.transfer_syntax
    return ds


def _lesion_fields(plan: CasePlan, contributions: tuple) -> dict[str, str]:
    if not plan.findings:
        return {"lesion_x": "", "lesion_y": "", "lesion_r": "", "lesion_finding": ""}
    x, y, r = lesion_geometry(contributions[0])
    return {
        "lesion_x": f"{x:.1f}",
        "lesion_y": f"{y:.1f}",
        "lesion_r": f"{r:.1f}",
        "lesion_finding": plan.findings[0].kind,
    }


def write_case(plan: CasePlan, root: Path, *, patient_info: bool = False) -> dict[str, str]:
    """Render, encode and write one image; return its ``labels.csv`` row."""
    image, contributions = _render(plan)
    path = root / plan.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = _dataset(plan, image, path, patient_info)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    kinds = {f.kind for f in plan.findings}
    row = {
        "path": plan.relpath,
        "patient_id": plan.patient_id,
        "abnormal": str(int(plan.abnormal)),
        **{kind: str(int(kind in kinds)) for kind in FINDINGS},
        **_lesion_fields(plan, contributions),
        "modality": plan.header.modality,
        "manufacturer": plan.header.manufacturer,
        "view": plan.header.view,
        "photometric": plan.header.photometric,
    }
    return row


# ----------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class _Job:
    """A batch of patients for one worker (picklable: plain values only)."""

    root: str
    seed: int
    patients: tuple[int, ...]
    abnormal: tuple[bool, ...]
    n_patients: int
    images_per_patient: int
    size: int
    shortcut: str | None
    shortcut_strength: float
    patient_info: bool


def _run_job(job: _Job) -> list[dict[str, str]]:
    rows = []
    root = Path(job.root)
    for patient, abnormal in zip(job.patients, job.abnormal, strict=True):
        for image in range(job.images_per_patient):
            plan = plan_case(
                job.seed,
                patient,
                image,
                n_patients=job.n_patients,
                abnormal=abnormal,
                size=job.size,
                shortcut=job.shortcut,
                shortcut_strength=job.shortcut_strength,
            )
            rows.append(write_case(plan, root, patient_info=job.patient_info))
    return rows


def _validate(
    n_patients: int,
    images_per_patient: int,
    size: int,
    seed: int,
    prevalence: float,
    shortcut: str | None,
    shortcut_strength: float,
) -> None:
    if not isinstance(n_patients, int) or n_patients < 1:
        raise ConfigError(f"n_patients must be a positive integer, got {n_patients!r}")
    if not isinstance(images_per_patient, int) or images_per_patient < 1:
        raise ConfigError(
            f"images_per_patient must be a positive integer, got {images_per_patient!r}"
        )
    if not isinstance(size, int) or not _MIN_SIZE <= size <= _MAX_SIZE:
        raise ConfigError(f"size must be an integer from {_MIN_SIZE} to {_MAX_SIZE}, got {size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0.0 <= prevalence <= 1.0:
        raise ConfigError(f"prevalence must lie in [0, 1], got {prevalence!r}")
    if shortcut is not None and shortcut not in SHORTCUTS:
        raise ConfigError(
            f"shortcut must be one of {', '.join(SHORTCUTS)} (or None), got {shortcut!r}"
        )
    if not 0.0 <= shortcut_strength <= 1.0:
        raise ConfigError(f"shortcut_strength must lie in [0, 1], got {shortcut_strength!r}")


def synthesize(
    out: str | Path,
    n_patients: int,
    *,
    images_per_patient: int = 1,
    size: int = 256,
    seed: int = 0,
    prevalence: float = 0.5,
    shortcut: Shortcut | None = None,
    shortcut_strength: float = 0.9,
    workers: int | None = None,
    patient_info: bool = False,
) -> SynthResult:
    """Write a synthetic chest X-ray dataset: ``out/images/<n>/<image>.dcm`` + ``labels.csv``.

    Args:
        out: Dataset folder (created; files already there are overwritten).
        n_patients: Number of patients; exactly ``round(prevalence * n_patients)`` are abnormal.
        images_per_patient: Images per patient (same anatomy and finding, new pose/exposure).
        size: Columns (and rows) in pixels.
        seed: Same seed, same files (pixel data byte for byte).
        prevalence: Fraction of abnormal patients.
        shortcut: Plant a label shortcut: ``"manufacturer"``, ``"size"``, ``"photometric"`` or
            ``"marker"`` (see docs/synthetic-data.md); ``None`` keeps all metadata independent
            of the label.
        shortcut_strength: P(tell | abnormal) = P(other | normal); 0.5 plants nothing.
        workers: Processes to use (default ``min(2, cpu_count)``); results do not depend on it.
        patient_info: Add fake names, birth dates, accession numbers and institution.

    Returns:
        The folder, the labels file, the number of images and the seconds taken.
    """
    start = time.perf_counter()
    check_output_dir(out)
    _validate(n_patients, images_per_patient, size, seed, prevalence, shortcut, shortcut_strength)
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: exists and is not a folder; choose another --out")
    root.mkdir(parents=True, exist_ok=True)

    flags = abnormal_patients(seed, n_patients, prevalence)
    chunk = max(1, min(32, math.ceil(n_patients / (workers * 4))))
    jobs = [
        _Job(
            root=str(root),
            seed=seed,
            patients=tuple(range(first, min(first + chunk, n_patients))),
            abnormal=tuple(bool(f) for f in flags[first : first + chunk]),
            n_patients=n_patients,
            images_per_patient=images_per_patient,
            size=size,
            shortcut=shortcut,
            shortcut_strength=shortcut_strength,
            patient_info=patient_info,
        )
        for first in range(0, n_patients, chunk)
    ]
    batches: list[list[dict[str, str]]] = []
    with progress("synth: writing", total=n_patients, unit="patients") as bar:
        if workers == 1 or len(jobs) == 1:
            for job in jobs:
                batches.append(_run_job(job))
                bar.advance(len(job.patients))
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                for job, batch in zip(jobs, pool.map(_run_job, jobs), strict=True):
                    batches.append(batch)
                    bar.advance(len(job.patients))
    rows = [row for batch in batches for row in batch]

    labels_csv = root / "labels.csv"
    with atomic_open(labels_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return SynthResult(
        root=root,
        labels_csv=labels_csv,
        n_images=len(rows),
        seconds=time.perf_counter() - start,
    )
