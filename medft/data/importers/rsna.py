"""RSNA Pneumonia Detection Challenge: ``stage_2_train_labels.csv`` + DICOMs + boxes.

One row per box (or one row with ``Target`` 0 and blank box); the label is
``pneumonia`` (evidence of pneumonia: a "Lung Opacity" box). Boxes go to a sidecar CSV
for pointing-game checks of saliency maps. RSNA's ``patientId`` is one per *image*: the
true patient of each image is not published, so patient-level grouping is not possible.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from medft.data.importers._common import (
    ImportResult,
    MissingPolicy,
    attach_paths,
    index_files,
    read_table,
    sidecar_path,
    write_manifest,
    write_sidecar,
)
from medft.errors import DataError

LABELS_CSV = "stage_2_train_labels.csv"
CLASS_INFO_CSV = "stage_2_detailed_class_info.csv"
BOX_COLUMNS = ("x", "y", "width", "height")


def import_rsna(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    missing: MissingPolicy = "error",
) -> ImportResult:
    """Write a manifest of the RSNA Pneumonia training set and a ``<out>_boxes.csv`` sidecar.

    Args:
        root: The dataset folder (``stage_2_train_labels.csv``, DICOMs below it, e.g. in
            ``stage_2_train_images/``; ``stage_2_detailed_class_info.csv`` is used if present).
        out: The manifest CSV to write.
        missing: ``error`` or ``skip`` for listed images that are not on disk.

    The sidecar has one row per box: ``path``, ``label`` (``pneumonia``), ``x``, ``y``,
    ``width``, ``height`` in pixels of the original 1024x1024 image.
    """
    root = Path(root)
    labels_csv = root / LABELS_CSV
    rows = read_table(labels_csv, ["patientId", *BOX_COLUMNS, "Target"], what="RSNA label table")
    bad = ~rows["Target"].isin(["0", "1"])
    if bad.any():
        first = int(bad.to_numpy().argmax())
        raise DataError(
            f"{labels_csv}: row {first + 1}: Target {rows['Target'].iloc[first]!r} is not 0/1"
        )
    target = rows.groupby("patientId", sort=False)["Target"].agg(lambda t: float((t == "1").any()))
    table = pd.DataFrame({"patient_id": target.index, "pneumonia": target.to_numpy()})
    table["n_boxes"] = (
        table["patient_id"]
        .map(rows[rows["Target"] == "1"].groupby("patientId").size())
        .fillna(0)
        .astype(int)
    )
    info_csv = root / CLASS_INFO_CSV
    if info_csv.is_file():
        info = read_table(info_csv, ["patientId", "class"], what="RSNA class table")
        table["rsna_class"] = table["patient_id"].map(
            info.drop_duplicates("patientId").set_index("patientId")["class"]
        )
    files = index_files(root, (".dcm",))
    table, n_missing = attach_paths(table, table["patient_id"], files, missing=missing, root=root)

    boxes = rows[rows["Target"] == "1"].copy()
    boxes["path"] = boxes["patientId"].map(lambda key: files.get(key))
    boxes = boxes[boxes["path"].notna()]
    boxes = boxes.assign(label="pneumonia")[["path", "label", *BOX_COLUMNS]]
    boxes[list(BOX_COLUMNS)] = boxes[list(BOX_COLUMNS)].astype(float)
    sidecar = write_sidecar(sidecar_path(out, "boxes"), boxes, Path(out).absolute().parent)
    return write_manifest(
        out, table, ["pneumonia"], n_missing=n_missing, sidecars={"boxes": sidecar}
    )
