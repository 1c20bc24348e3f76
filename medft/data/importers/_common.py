"""Shared pieces of the dataset importers: vocabulary, CSV reading, file lookup, writing.

Every importer turns a public dataset's own files into one table (``path``,
``patient_id``, optional ``split``, finding columns in the common vocabulary, metadata)
and hands it to :func:`write_manifest`, which writes it atomically next to its sidecars
and checks that :func:`medft.data.manifest.load_manifest` accepts it.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from medft._io import atomic_path
from medft.data.manifest import load_manifest
from medft.data.splits import inner_split
from medft.errors import ConfigError, DataError
from medft.progress import progress

log = logging.getLogger(__name__)

MissingPolicy = Literal["error", "skip"]
"""Listed images that are not on disk: stop (``error``) or leave them out (``skip``)."""

VOCABULARY: dict[str, str] = {
    "atelectasis": "collapse of part of a lung",
    "cardiomegaly": "enlarged heart",
    "consolidation": "air spaces filled (fluid, pus, cells)",
    "edema": "pulmonary oedema",
    "effusion": "pleural effusion",
    "emphysema": "emphysema",
    "fibrosis": "pulmonary fibrosis",
    "hernia": "hernia (hiatus, diaphragmatic)",
    "infiltration": "infiltrate",
    "mass": "mass (> 3 cm)",
    "nodule": "nodule (<= 3 cm)",
    "nodule_mass": "nodule or mass (one class in VinDr-CXR)",
    "pleural_thickening": "pleural thickening",
    "pneumonia": "pneumonia",
    "pneumothorax": "pneumothorax",
    "no_finding": "no finding",
    "lung_opacity": "lung opacity",
    "lung_lesion": "lung lesion",
    "enlarged_cardiomediastinum": "enlarged cardiomediastinum",
    "pleural_other": "other pleural finding",
    "fracture": "fracture",
    "support_devices": "support devices (lines, tubes, pacemakers)",
    "aortic_enlargement": "aortic enlargement",
    "calcification": "calcification",
    "ild": "interstitial lung disease",
    "other_lesion": "other lesion",
}
"""Common finding names (snake_case) and what they mean; importers map onto these."""

MISSING_POLICIES = ("error", "skip")
"""What an importer does with an image the label table names but the folder lacks."""


@dataclass
class ImportResult:
    """What an importer wrote.

    Attributes:
        manifest: The manifest CSV.
        labels: Its finding columns, in order.
        n_images: Rows written.
        n_patients: Distinct ``patient_id`` values.
        n_missing: Images listed by the dataset but not found (dropped with ``missing="skip"``).
        splits: Images per ``split`` value (empty when the set has no official split).
        sidecars: Other files written (boxes, masks, images), by name.
    """

    manifest: Path
    labels: list[str]
    n_images: int
    n_patients: int
    n_missing: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    sidecars: dict[str, Path] = field(default_factory=dict)

    def format(self) -> str:
        """One short human summary (no patient IDs)."""
        lines = [
            f"wrote {self.n_images} images of {self.n_patients} patients to {self.manifest}",
            f"labels: {', '.join(self.labels)}",
        ]
        if self.splits:
            lines.append("split: " + ", ".join(f"{k} {v}" for k, v in self.splits.items()))
        if self.n_missing:
            lines.append(f"skipped {self.n_missing} listed images that were not found")
        lines.extend(f"{name}: {path}" for name, path in self.sidecars.items())
        return "\n".join(lines)


def snake_case(name: str) -> str:
    """``"Pleural Effusion"`` -> ``"pleural_effusion"``; ``"Nodule/Mass"`` -> ``"nodule_mass"``."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def read_table(path: Path, required: Sequence[str], *, what: str) -> pd.DataFrame:
    """Read a dataset CSV (``.csv`` or ``.csv.gz``) as strings and check its columns.

    Header names are stripped (SIIM's ``" EncodedPixels"`` has a leading space).
    """
    if not path.is_file():
        raise DataError(f"{path}: {what} not found; check --input points at the dataset folder")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the {what}: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: the {what} lacks column(s) {', '.join(map(repr, missing))}; found "
            f"{', '.join(map(repr, frame.columns))}. Is this the original file of the dataset?"
        )
    return frame.apply(lambda col: col.str.strip())


def find_first(root: Path, names: Iterable[str], *, what: str) -> Path:
    """Return the first of ``names`` (relative to ``root``) that exists."""
    candidates = [root / name for name in names]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    listed = ", ".join(c.name for c in candidates)
    raise DataError(f"{root}: no {what} found (looked for {listed}); check --input")


def index_files(root: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """Map file stem -> path for every file under ``root`` with one of ``suffixes``.

    One walk of the tree, so a dataset split over many sub-folders (NIH's
    ``images_001/images``) is found wherever its files are. The first file of a stem wins.
    """
    wanted = tuple(s.lower() for s in suffixes)
    found: dict[str, Path] = {}
    with progress("data import: indexing", unit="files") as bar:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            before = len(found)
            for name in sorted(files):
                if name.lower().endswith(wanted) and not name.startswith("."):
                    stem = name[: name.rfind(".")]
                    found.setdefault(stem, Path(folder) / name)
            bar.advance(len(found) - before)
    return found


def attach_paths(
    table: pd.DataFrame,
    keys: pd.Series,
    files: dict[str, Path],
    *,
    missing: MissingPolicy,
    root: Path,
) -> tuple[pd.DataFrame, int]:
    """Set ``table["path"]`` from ``keys`` looked up in ``files``; handle absent images.

    Returns:
        The table (rows without an image dropped when ``missing="skip"``) and the count of
        rows whose image was absent.

    Raises:
        DataError: Images are absent and ``missing="error"``.
    """
    check_choice("missing", missing, MISSING_POLICIES)
    paths = keys.map(lambda key: files.get(key))
    absent = paths.isna()
    n_absent = int(absent.sum())
    if n_absent and missing == "error":
        # No examples: image names of these sets embed patient identifiers.
        raise DataError(
            f"{root}: {n_absent} of {len(keys)} listed images were not found under the root. "
            "Download/unpack the missing images, or pass --missing skip (missing='skip') "
            "to leave them out of the manifest"
        )
    if n_absent:
        log.warning("%s: %d listed images not found; left out", root, n_absent)
    table = table.assign(path=paths)[~absent.to_numpy()].copy()
    return table, n_absent


def check_choice(key: str, value: str, allowed: Sequence[str]) -> None:
    """Raise :class:`~medft.errors.ConfigError` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; use one of {', '.join(allowed)}")


def carve_val(
    table: pd.DataFrame, train_rows: pd.Series, labels: Sequence[str], *, val: float, seed: int
) -> pd.Series:
    """Split the official training rows into train/val by patient (others keep their split)."""
    split = table["split"].copy()
    if val <= 0:
        return split
    part = table[train_rows.to_numpy()].copy()
    part[list(labels)] = part[list(labels)].where(part[list(labels)] != -1.0)  # -1: unknown
    stratify = [name for name in labels if part[name].notna().any()]
    split[train_rows.to_numpy()] = inner_split(part, labels=stratify, val=val, seed=seed)
    return split


def label_code(text: str) -> float:
    """Parse a dataset label cell (``1``, ``1.0``, ``0``, ``-1``, blank) to a float code."""
    if text == "" or text.lower() == "nan":
        return math.nan
    value = float(text)
    if value not in (1.0, 0.0, -1.0):
        raise ValueError(text)
    return value


def parse_label_column(frame: pd.DataFrame, column: str, *, source: Path) -> pd.Series:
    """Parse one 1/0/-1/blank column, naming the first bad row if any."""
    values = []
    for position, text in enumerate(frame[column]):
        try:
            values.append(label_code(text))
        except ValueError:
            raise DataError(
                f"{source}: row {position + 1} (line {position + 2}), column {column!r}: "
                f"{text!r} is not 1, 0, -1 or blank"
            ) from None
    return pd.Series(values, index=frame.index, dtype=float)


def write_manifest(
    out: str | os.PathLike[str],
    table: pd.DataFrame,
    labels: Sequence[str],
    *,
    n_missing: int = 0,
    sidecars: dict[str, Path] | None = None,
) -> ImportResult:
    """Write an importer's table as a medft manifest CSV, atomically, and validate it.

    Paths are written relative to the manifest's folder when they lie below it (the
    manifest and images then move together), absolute otherwise. Label cells are written
    as ``1``/``0``/``-1``/blank.
    """
    out_path = Path(out).absolute()
    base = out_path.parent
    frame = table.copy()
    frame["path"] = [_portable(Path(p), base) for p in frame["path"]]
    frame["patient_id"] = frame["patient_id"].astype(str)
    for name in labels:
        frame[name] = frame[name].map(_label_text)
    first = ["path", "patient_id", *(["split"] if "split" in frame.columns else []), *labels]
    frame = frame[first + [c for c in frame.columns if c not in first]]
    with atomic_path(out_path) as tmp:
        frame.to_csv(tmp, index=False)
    manifest = load_manifest(out_path, labels=list(labels), check_files=False)
    splits = {}
    if "split" in frame.columns:
        splits = {str(k): int(v) for k, v in frame["split"].value_counts(sort=False).items()}
    return ImportResult(
        manifest=out_path,
        labels=list(labels),
        n_images=len(manifest),
        n_patients=int(manifest.table["patient_id"].nunique()),
        n_missing=n_missing,
        splits=splits,
        sidecars=dict(sidecars or {}),
    )


def write_sidecar(path: Path, frame: pd.DataFrame, base: Path) -> Path:
    """Write a sidecar CSV (boxes, masks) atomically, with paths like the manifest's."""
    frame = frame.copy()
    if "path" in frame.columns:
        frame["path"] = [_portable(Path(p), base) for p in frame["path"]]
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def sidecar_path(out: str | os.PathLike[str], kind: str) -> Path:
    """``data/rsna.csv`` + ``boxes`` -> ``data/rsna_boxes.csv``."""
    out_path = Path(out).absolute()
    return out_path.with_name(f"{out_path.stem}_{kind}.csv")


def _portable(path: Path, base: Path) -> str:
    path = path.absolute()
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _label_text(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(int(value))
