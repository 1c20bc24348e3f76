"""SIIM-ACR Pneumothorax: RLE mask table + DICOMs named by SOPInstanceUID.

An image with ``EncodedPixels == "-1"`` has no pneumothorax; an image with one or more
RLE rows has one. The masks stay run-length encoded in a sidecar CSV (for saliency
checks); the patient comes from each DICOM header's PatientID.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError

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
from medft.progress import track

RLE_TABLES = {"train-rle.csv": "relative", "stage_2_train.csv": "absolute"}
"""Mask table name -> its RLE flavour (``relative``: start offsets are gaps since the end
of the previous run, as in the original challenge; ``absolute``: offsets from pixel 0).
Both count pixels column by column (Fortran order) on the 1024x1024 image."""

NO_MASK = "-1"


def import_siim(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    missing: MissingPolicy = "error",
) -> ImportResult:
    """Write a manifest of SIIM-ACR Pneumothorax and a ``<out>_masks.csv`` sidecar.

    Args:
        root: The dataset folder: ``train-rle.csv`` (or ``stage_2_train.csv``) and the
            training DICOMs anywhere below (``dicom-images-train/<study>/<series>/<uid>.dcm``).
        out: The manifest CSV to write.
        missing: ``error`` or ``skip`` for listed images that are not on disk.

    The sidecar has one row per mask run string: ``path``, ``label``, ``encoding``,
    ``rle``.
    """
    root = Path(root)
    present = [name for name in RLE_TABLES if (root / name).is_file()]
    if not present:
        raise DataError(f"{root}: no mask table found (looked for {', '.join(RLE_TABLES)})")
    table_name = present[0]
    rows = read_table(root / table_name, ["ImageId", "EncodedPixels"], what="SIIM mask table")
    has_mask = rows["EncodedPixels"] != NO_MASK
    positive = has_mask.groupby(rows["ImageId"], sort=False).any()
    table = pd.DataFrame({"image_id": positive.index, "pneumothorax": positive.to_numpy(float)})
    files = index_files(root, (".dcm",))
    table, n_missing = attach_paths(table, table["image_id"], files, missing=missing, root=root)
    pairs = zip(table["path"], table["image_id"], strict=True)
    headers = track(pairs, "data import: reading headers", total=len(table), unit="files")
    table["patient_id"] = [_patient_id(Path(p), uid) for p, uid in headers]
    table = table.drop(columns="image_id")

    masks = rows[has_mask].copy()
    masks["path"] = masks["ImageId"].map(lambda key: files.get(key))
    masks = masks[masks["path"].notna()]
    masks = masks.assign(label="pneumothorax", encoding=RLE_TABLES[table_name])
    masks = masks.rename(columns={"EncodedPixels": "rle"})[["path", "label", "encoding", "rle"]]
    sidecar = write_sidecar(sidecar_path(out, "masks"), masks, Path(out).absolute().parent)
    return write_manifest(
        out, table, ["pneumothorax"], n_missing=n_missing, sidecars={"masks": sidecar}
    )


def _patient_id(path: Path, image_id: str) -> str:
    """PatientID from the header; the image's own UID when the header has none."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except (InvalidDicomError, OSError) as exc:
        raise DataError(f"{path}: not a readable DICOM file ({exc})") from exc
    patient = str(header.get("PatientID", "") or "").strip()
    return patient or image_id
