"""NIH ChestX-ray14: ``Data_Entry_2017.csv`` + PNGs + the official train_val/test lists.

The 14 findings are NLP-mined from reports ("|"-separated in ``Finding Labels``), so every
label is 0/1 and none is uncertain; their accuracy is limited (see docs/datasets.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from medft.data.importers._common import (
    ImportResult,
    MissingPolicy,
    attach_paths,
    carve_val,
    find_first,
    index_files,
    read_table,
    write_manifest,
)
from medft.errors import DataError

NIH_LABELS: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Effusion": "effusion",
    "Emphysema": "emphysema",
    "Fibrosis": "fibrosis",
    "Hernia": "hernia",
    "Infiltration": "infiltration",
    "Mass": "mass",
    "Nodule": "nodule",
    "Pleural_Thickening": "pleural_thickening",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
    "No Finding": "no_finding",
}
"""NIH finding name -> common vocabulary."""

_ENTRY_FILES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")


def import_nih(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    missing: MissingPolicy = "error",
) -> ImportResult:
    """Write a manifest of NIH ChestX-ray14.

    Args:
        root: The dataset folder (``Data_Entry_2017.csv``, ``train_val_list.txt``,
            ``test_list.txt``, PNGs anywhere below, e.g. ``images_001/images/``).
        out: The manifest CSV to write.
        val_fraction: Share of the official train_val images moved to ``val``, grouped by
            patient (the set defines no validation part); 0 keeps train_val as ``train``.
        seed: Seed of that carve.
        missing: ``error`` or ``skip`` for listed images that are not on disk.
    """
    root = Path(root)
    entries_csv = find_first(root, _ENTRY_FILES, what="Data_Entry_2017.csv")
    entries = read_table(entries_csv, _COLUMNS, what="NIH label table")
    table = pd.DataFrame(index=entries.index)
    table["patient_id"] = entries["Patient ID"].str.lstrip("0").replace("", "0")
    findings = entries["Finding Labels"].str.split("|")
    unknown = sorted({f for names in findings for f in names} - set(NIH_LABELS))
    if unknown:
        raise DataError(
            f"{entries_csv}: unknown finding name(s) {unknown} in 'Finding Labels'; "
            f"expected {sorted(NIH_LABELS)}"
        )
    labels = list(NIH_LABELS.values())
    for source_name, name in NIH_LABELS.items():
        table[name] = findings.map(lambda names, s=source_name: float(s in names))
    for source_name, name in (
        ("View Position", "view"),
        ("Patient Age", "age"),
        ("Patient Gender", "sex"),
        ("Follow-up #", "follow_up"),
    ):
        if source_name in entries.columns:
            table[name] = entries[source_name]

    _add_official_split(root, entries["Image Index"], table)
    files = index_files(root, (".png",))
    table, n_missing = attach_paths(
        table, entries["Image Index"].str.removesuffix(".png"), files, missing=missing, root=root
    )
    if "split" in table.columns:
        table["split"] = carve_val(
            table, table["split"] == "train", labels, val=val_fraction, seed=seed
        )
    return write_manifest(out, table, labels, n_missing=n_missing)


def _add_official_split(root: Path, images: pd.Series, table: pd.DataFrame) -> None:
    """Add ``official_split`` (train_val/test) and ``split`` (train/test) from the lists."""
    lists = {"train_val": root / "train_val_list.txt", "test": root / "test_list.txt"}
    if not all(path.is_file() for path in lists.values()):
        return
    member: dict[str, str] = {}
    for part, path in lists.items():
        for line in path.read_text(encoding="utf-8").split():
            member[line.strip()] = part
    official = images.map(member)
    if official.isna().any():
        raise DataError(
            f"{root}: {int(official.isna().sum())} images are in neither train_val_list.txt "
            "nor test_list.txt; are the lists complete and from the same release?"
        )
    table["official_split"] = official
    table["split"] = official.map({"train_val": "train", "test": "test"})
