"""MIMIC-CXR-JPG: metadata + CheXpert-labeler CSVs (study level) + the official split.

Labels belong to a study (one report); every image of the study gets them. Files live
at ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from medft.data.importers._common import (
    ImportResult,
    MissingPolicy,
    attach_paths,
    find_first,
    read_table,
    write_manifest,
)
from medft.data.importers.chexpert import CHEXPERT_LABELS, chexpert_labels
from medft.errors import DataError
from medft.progress import track

FRONTAL_VIEWS = ("PA", "AP")
"""``ViewPosition`` values counted as frontal."""

_SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}
_IDS = ("subject_id", "study_id")


def _named(stem: str) -> tuple[str, str]:
    return f"{stem}.csv.gz", f"{stem}.csv"


def import_mimic(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    frontal_only: bool = False,
    blank_negative: bool = False,
    missing: MissingPolicy = "error",
) -> ImportResult:
    """Write a manifest of MIMIC-CXR-JPG (v2.0.0 / v2.1.0).

    Args:
        root: The dataset folder (``mimic-cxr-2.0.0-metadata.csv[.gz]``,
            ``mimic-cxr-2.0.0-chexpert.csv[.gz]``, ``mimic-cxr-2.0.0-split.csv[.gz]``, ``files/``).
        out: The manifest CSV to write.
        frontal_only: Keep PA and AP images only.
        blank_negative: Write "not mentioned" (blank) as 0 instead of unknown.
        missing: ``error`` or ``skip`` for listed images that are not on disk.
    """
    root = Path(root)
    meta_csv = find_first(root, _named("mimic-cxr-2.0.0-metadata"), what="metadata CSV")
    meta = read_table(meta_csv, ["dicom_id", *_IDS], what="MIMIC-CXR metadata")
    labels_csv = find_first(root, _named("mimic-cxr-2.0.0-chexpert"), what="chexpert label CSV")
    studies = read_table(labels_csv, [*_IDS, *CHEXPERT_LABELS], what="MIMIC-CXR label table")
    if studies.duplicated(list(_IDS)).any():
        raise DataError(f"{labels_csv}: a study appears twice; expected one row per study")
    study_labels = chexpert_labels(studies, source=labels_csv, blank_negative=blank_negative)
    study_labels[list(_IDS)] = studies[list(_IDS)]

    # An image whose study has no label row keeps blank (unknown) labels, whatever the policy.
    table = meta[["dicom_id", *_IDS]].merge(study_labels, on=list(_IDS), how="left")
    labels = list(CHEXPERT_LABELS.values())
    table["patient_id"] = table["subject_id"]
    if "ViewPosition" in meta.columns:
        table["view"] = meta["ViewPosition"].to_numpy()
    split_csv = next(
        (root / n for n in _named("mimic-cxr-2.0.0-split") if (root / n).is_file()), None
    )
    if split_csv is not None:
        split = read_table(split_csv, ["dicom_id", "split"], what="MIMIC-CXR split table")
        official = table["dicom_id"].map(dict(zip(split["dicom_id"], split["split"], strict=True)))
        table["split"] = official.map(_SPLIT_NAMES)
        if table["split"].isna().any():
            raise DataError(
                f"{split_csv}: {int(table['split'].isna().sum())} images have no split "
                "(or one other than train/validate/test)"
            )
    if frontal_only:
        if "view" not in table.columns:
            raise DataError(f"{meta_csv}: frontal_only needs the 'ViewPosition' column")
        table = table[table["view"].isin(FRONTAL_VIEWS)].reset_index(drop=True)
    expected = _image_paths(root, table)
    listed = track(expected, "data import: finding images", unit="files")
    files = {str(p): p for p in listed if p.is_file()}
    table, n_missing = attach_paths(table, expected.map(str), files, missing=missing, root=root)
    table = table.drop(columns=["subject_id", "dicom_id"])
    return write_manifest(out, table, labels, n_missing=n_missing)


def _image_paths(root: Path, table: pd.DataFrame) -> pd.Series:
    """``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg`` for every row."""
    subject, study = table["subject_id"], table["study_id"]
    relative = "files/p" + subject.str[:2] + "/p" + subject + "/s" + study + "/" + table["dicom_id"]
    return (relative + ".jpg").map(lambda rel: root / rel)
