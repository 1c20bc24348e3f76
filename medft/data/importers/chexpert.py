"""CheXpert (and its ``-small`` copy): ``train.csv`` / ``valid.csv`` + JPEGs.

Labels are 1 / 0 / -1 (uncertain) / blank (not mentioned) and are written as they are;
what -1 means is chosen when the manifest is loaded (``data.uncertain``). The patient is
parsed from the path (``.../patient00001/study1/view1_frontal.jpg``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from medft.data.importers._common import (
    ImportResult,
    MissingPolicy,
    attach_paths,
    carve_val,
    parse_label_column,
    read_table,
    write_manifest,
)
from medft.errors import DataError
from medft.progress import track

CHEXPERT_LABELS: dict[str, str] = {
    "No Finding": "no_finding",
    "Enlarged Cardiomediastinum": "enlarged_cardiomediastinum",
    "Cardiomegaly": "cardiomegaly",
    "Lung Opacity": "lung_opacity",
    "Lung Lesion": "lung_lesion",
    "Edema": "edema",
    "Consolidation": "consolidation",
    "Pneumonia": "pneumonia",
    "Atelectasis": "atelectasis",
    "Pneumothorax": "pneumothorax",
    "Pleural Effusion": "effusion",
    "Pleural Other": "pleural_other",
    "Fracture": "fracture",
    "Support Devices": "support_devices",
}
"""CheXpert (and MIMIC-CXR CheXpert-labeler) finding name -> common vocabulary."""

_PATIENT = re.compile(r"(patient\d+)")


def import_chexpert(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    frontal_only: bool = False,
    blank_negative: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    missing: MissingPolicy = "error",
) -> ImportResult:
    """Write a manifest of CheXpert.

    ``valid.csv`` (radiologist consensus labels) becomes the ``test`` part; ``val`` is
    carved from ``train.csv`` by patient, since CheXpert's test labels are not public.

    Args:
        root: The folder holding ``train.csv`` and ``valid.csv`` (e.g. ``CheXpert-v1.0-small``).
        out: The manifest CSV to write.
        frontal_only: Keep frontal views only (``Frontal/Lateral == Frontal``).
        blank_negative: Write "not mentioned" (blank) as 0 instead of unknown, the
            convention of the CheXpert paper; by default blank stays unknown.
        val_fraction: Share of the training images moved to ``val`` (patient-grouped).
        seed: Seed of that carve.
        missing: ``error`` or ``skip`` for listed images that are not on disk.
    """
    root = Path(root)
    parts = []
    for name, split in (("train.csv", "train"), ("valid.csv", "test")):
        csv_path = root / name
        if not csv_path.is_file() and split == "test":
            continue
        frame = read_table(csv_path, ["Path", *CHEXPERT_LABELS], what=f"CheXpert {name}")
        part = chexpert_labels(frame, source=csv_path, blank_negative=blank_negative)
        part["split"] = split
        part["patient_id"] = frame["Path"].map(lambda p, s=csv_path: _patient(p, s))
        for source_name, column in (
            ("Sex", "sex"),
            ("Age", "age"),
            ("Frontal/Lateral", "view"),
            ("AP/PA", "projection"),
        ):
            if source_name in frame.columns:
                part[column] = frame[source_name]
        part["image"] = frame["Path"].map(lambda p: str(_resolve(root, p)))
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    if frontal_only:
        if "view" not in table.columns:
            raise DataError(f"{root}: frontal_only needs the 'Frontal/Lateral' column")
        table = table[table["view"].str.lower() == "frontal"].reset_index(drop=True)
    listed = track(table["image"], "data import: finding images", unit="files")
    files = {p: Path(p) for p in listed if Path(p).is_file()}
    table, n_missing = attach_paths(table, table["image"], files, missing=missing, root=root)
    table = table.drop(columns="image")
    labels = list(CHEXPERT_LABELS.values())
    table["split"] = carve_val(
        table, table["split"] == "train", labels, val=val_fraction, seed=seed
    )
    return write_manifest(out, table, labels, n_missing=n_missing)


def chexpert_labels(frame: pd.DataFrame, *, source: Path, blank_negative: bool) -> pd.DataFrame:
    """Parse the 14 CheXpert label columns into common-vocabulary float columns."""
    table = pd.DataFrame(index=frame.index)
    for source_name, name in CHEXPERT_LABELS.items():
        values = parse_label_column(frame, source_name, source=source)
        table[name] = values.fillna(0.0) if blank_negative else values
    return table


def _patient(path: str, source: Path) -> str:
    match = _PATIENT.search(path)
    if match is None:
        raise DataError(f"{source}: no 'patientNNNNN' folder in Path {path!r}")
    return match.group(1)


def _resolve(root: Path, relative: str) -> Path:
    """CheXpert paths start with the dataset folder's own name (``CheXpert-v1.0-small/...``)."""
    rel = Path(relative)
    if rel.parts and rel.parts[0] == root.name:
        return root.parent / rel
    direct = root / rel
    if direct.exists() or len(rel.parts) < 2:
        return direct
    return root / Path(*rel.parts[1:])
