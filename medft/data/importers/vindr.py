"""VinDr-CXR (Kaggle layout): per-radiologist finding rows + DICOMs.

Each training image was read by three radiologists; ``train.csv`` has one row per
(radiologist, finding, box). Image labels are aggregated per finding by a rule:
``majority`` (positive when more than half of the image's radiologists marked it:
2 of 3) or ``any`` (positive when at least one did). ``no_finding`` is 1 exactly when no
finding is positive after aggregation, so the columns never contradict each other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd

from medft.data.importers._common import (
    ImportResult,
    MissingPolicy,
    attach_paths,
    check_choice,
    find_first,
    index_files,
    read_table,
    sidecar_path,
    snake_case,
    write_manifest,
    write_sidecar,
)
from medft.errors import DataError

VINDR_LABELS: dict[str, str] = {
    "Aortic enlargement": "aortic_enlargement",
    "Atelectasis": "atelectasis",
    "Calcification": "calcification",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "ILD": "ild",
    "Infiltration": "infiltration",
    "Lung Opacity": "lung_opacity",
    "Nodule/Mass": "nodule_mass",
    "Other lesion": "other_lesion",
    "Pleural effusion": "effusion",
    "Pleural thickening": "pleural_thickening",
    "Pneumothorax": "pneumothorax",
    "Pulmonary fibrosis": "fibrosis",
}
"""VinDr-CXR local finding name -> common vocabulary (other names: snake_case)."""

NO_FINDING = "No finding"
LABEL_TABLES = ("train.csv", "annotations/annotations_train.csv")
"""Kaggle's table, then PhysioNet's (same columns; its extra local labels are snake_cased)."""
ReaderRule = Literal["majority", "any"]
"""How the readers' marks of one image become its label."""
RULES: tuple[str, ...] = get_args(ReaderRule)
BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")


def import_vindr(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    rule: ReaderRule = "majority",
    missing: MissingPolicy = "error",
) -> ImportResult:
    """Write a manifest of VinDr-CXR's training set and a ``<out>_boxes.csv`` sidecar.

    Args:
        root: The dataset folder (``train.csv`` or ``annotations/annotations_train.csv``;
            DICOMs ``train/<image_id>.dicom`` or ``.dcm`` anywhere below).
        out: The manifest CSV to write.
        rule: How the three readers' marks make an image label: ``majority`` (at least 2 of
            3 radiologists) or ``any`` (at least one).
        missing: ``error`` or ``skip`` for listed images that are not on disk.

    The sidecar has every radiologist's box: ``path``, ``label``, ``rad_id`` and
    ``x_min, y_min, x_max, y_max`` in original pixels.
    """
    check_choice("rule", rule, RULES)
    root = Path(root)
    table_csv = find_first(root, LABEL_TABLES, what="VinDr-CXR label table")
    rows = read_table(table_csv, ["image_id", "class_name", "rad_id"], what="VinDr-CXR label table")
    if (rows["class_name"] == NO_FINDING).all():
        raise DataError(f"{table_csv}: every row is {NO_FINDING!r}; nothing to learn from")
    rows["label"] = rows["class_name"].map(lambda n: VINDR_LABELS.get(n) or snake_case(n))
    findings = rows[rows["class_name"] != NO_FINDING]
    images = pd.Index(rows["image_id"].drop_duplicates(), name="image_id")
    readers = rows.groupby("image_id")["rad_id"].nunique().reindex(images)
    votes = (
        findings.groupby(["image_id", "label"])["rad_id"].nunique().unstack(fill_value=0)
    ).reindex(index=images, fill_value=0)
    known = list(VINDR_LABELS.values())
    labels = known + sorted(set(votes.columns) - set(known))
    votes = votes.reindex(columns=labels, fill_value=0)
    needed = 1 if rule == "any" else readers.to_numpy() // 2 + 1
    positive = (votes.to_numpy() >= np.reshape(needed, (-1, 1))).astype(float)
    table = pd.DataFrame(positive, columns=labels)
    table["no_finding"] = 1.0 - positive.max(axis=1, initial=0.0)
    table["patient_id"] = images.to_numpy()
    table["n_readers"] = readers.to_numpy()
    labels = [*labels, "no_finding"]
    files = index_files(root, (".dicom", ".dcm"))
    table, n_missing = attach_paths(table, table["patient_id"], files, missing=missing, root=root)

    boxes = findings.copy()
    boxes["path"] = boxes["image_id"].map(lambda key: files.get(key))
    boxes = boxes[boxes["path"].notna()]
    columns = ["path", "label", "rad_id", *(c for c in BOX_COLUMNS if c in boxes.columns)]
    sidecar = write_sidecar(sidecar_path(out, "boxes"), boxes[columns], Path(out).absolute().parent)
    return write_manifest(out, table, labels, n_missing=n_missing, sidecars={"boxes": sidecar})
