"""MedMNIST ``.npz`` files: arrays -> PNG files + a manifest with the official split.

A MedMNIST file holds ``{train,val,test}_images`` (N x H x W [x 3] uint8) and
``{train,val,test}_labels`` (N x 1 class index, or N x K 0/1 for multi-label ChestMNIST).
A folder holding one or more such files (e.g. the PneumoniaMNIST test split shipped as
``pneumoniamnist_test.npz`` with a ``labels.csv``) is read the same way. MedMNIST carries
no patient IDs: every image is its own ``patient_id``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medft.data.importers._common import ImportResult, snake_case, write_manifest
from medft.errors import DataError
from medft.progress import progress

SPLITS = ("train", "val", "test")

_CHESTMNIST_ORDER = [
    "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
    "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural_thickening",
    "hernia",
]  # fmt: skip
KNOWN_LABELS: dict[str, list[str]] = {
    "pneumoniamnist": ["pneumonia"],
    "breastmnist": ["malignant"],
    "chestmnist": _CHESTMNIST_ORDER,
}
"""Label columns of the MedMNIST sets medft knows: binary sets get one column (class 1),
ChestMNIST its 14 NIH findings in MedMNIST's order. Others: ``class_0 .. class_{K-1}``."""

_FLAG = re.compile(r"^([a-z0-9]*mnist)", re.IGNORECASE)


def import_medmnist(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    images_out: str | os.PathLike[str] | None = None,
    label_names: Sequence[str] | None = None,
) -> ImportResult:
    """Write a MedMNIST set's images as PNG files and a manifest with its official split.

    The PNGs are written directly (a re-run rewrites them); the manifest, written last and
    atomically, is what makes an import complete.

    Args:
        root: A MedMNIST ``.npz`` file, or a folder holding ``.npz`` files of one set.
        out: The manifest CSV to write.
        images_out: Folder for the PNG files; default ``<flag>_images`` next to ``out``.
        label_names: Column names for the classes (multi-class sets) or findings
            (multi-label sets); default from :data:`KNOWN_LABELS`, else ``class_<k>``.
    """
    root = Path(root)
    arrays, flag = _load_arrays(root)
    out_path = Path(out).absolute()
    image_dir = Path(images_out) if images_out else out_path.parent / f"{flag}_images"
    records: list[dict[str, object]] = []
    total = sum(len(images) for images, _ in arrays.values())
    with progress("data import: writing PNGs", total=total, unit="images") as bar:
        for split, (images, targets) in arrays.items():
            for index, (image, target) in enumerate(zip(images, targets, strict=True)):
                path = (image_dir / split / f"{split}_{index:05d}.png").absolute()
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path, format="PNG")
                records.append({"path": str(path), "patient_id": f"{split}_{index:05d}",
                                "split": split, "index": index, "target": target})  # fmt: skip
                bar.advance()
    table = pd.DataFrame.from_records(records)
    names, columns = _label_columns(flag, np.stack(table["target"].to_list()), label_names)
    table = pd.concat([table.drop(columns="target"), columns], axis=1)
    return write_manifest(out_path, table, names, sidecars={"images": image_dir.absolute()})


def _load_arrays(root: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    files = sorted(root.glob("*.npz")) if root.is_dir() else [root]
    if not files or not files[0].is_file():
        raise DataError(f"{root}: no MedMNIST .npz file found")
    flags = {_flag(f) for f in files}
    if len(flags) > 1:
        raise DataError(f"{root}: .npz files of several sets {sorted(flags)}; import one set")
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for file in files:
        with np.load(file) as data:
            for split in SPLITS:
                if f"{split}_images" not in data.files:
                    continue
                if split in arrays:
                    raise DataError(f"{file}: the {split} split is also in another file")
                images, targets = data[f"{split}_images"], data[f"{split}_labels"]
                if len(images) != len(targets):
                    raise DataError(f"{file}: {split}_images and {split}_labels differ in length")
                arrays[split] = (images, targets.reshape(len(targets), -1))
    if not arrays:
        raise DataError(f"{root}: no train/val/test_images arrays in {[f.name for f in files]}")
    if root.is_dir() and (root / "labels.csv").is_file():
        _cross_check(root / "labels.csv", arrays)
    return arrays, flags.pop()


def _flag(file: Path) -> str:
    match = _FLAG.match(file.stem)
    return match.group(1).lower() if match else snake_case(file.stem)


def _cross_check(labels_csv: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Refuse a folder whose ``labels.csv`` (index, split, label) disagrees with the arrays."""
    listed = pd.read_csv(labels_csv)
    if not {"index", "split", "label"} <= set(listed.columns):
        return
    for split, group in listed.groupby("split"):
        if split not in arrays:
            raise DataError(f"{labels_csv}: lists split {split!r} that no .npz file holds")
        targets = arrays[split][1][:, 0]
        if len(group) != len(targets) or not np.array_equal(
            targets[group["index"].to_numpy()], group["label"].to_numpy()
        ):
            raise DataError(f"{labels_csv}: its {split} labels disagree with the .npz arrays")


def _label_columns(
    flag: str, targets: np.ndarray, label_names: Sequence[str] | None
) -> tuple[list[str], pd.DataFrame]:
    targets = targets.astype(np.int64)
    if targets.shape[1] > 1:  # multi-label: one 0/1 column per finding
        names = list(label_names or KNOWN_LABELS.get(flag) or [])
        names = names or [f"finding_{k}" for k in range(targets.shape[1])]
        values = targets
    else:
        n_classes = int(targets.max()) + 1
        names = list(label_names or KNOWN_LABELS.get(flag) or [])
        if n_classes <= 2 and len(names) == 1:  # binary: one column for class 1
            values = (targets == 1).astype(np.int64)
        else:
            names = names or [f"class_{k}" for k in range(n_classes)]
            values = (targets == np.arange(len(names))).astype(np.int64)
    if len(names) != values.shape[1]:
        raise DataError(f"{flag}: {len(names)} label names for {values.shape[1]} label columns")
    return names, pd.DataFrame(values.astype(float), columns=names)
