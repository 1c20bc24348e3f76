"""What to predict: a manifest CSV, a folder of images, or single files, as one table.

``medft predict``, ``explain`` and the Python API accept the same three kinds of input.
A manifest keeps its patient IDs (for salted keys and the leakage check) and, when it has
them, the true labels; a folder or a file list is unlabelled and patient-less.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medft.data.dicom import is_dicom
from medft.data.manifest import Manifest, load_manifest
from medft.errors import ConfigError, DataError

__all__ = ["INPUT_SUFFIXES", "collect_inputs", "input_table", "output_id"]

INPUT_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")
"""File suffixes (case-insensitive) collected from a folder; suffix-less files are
collected when their content is DICOM."""


def collect_inputs(inputs: str | Path, *, exclude: str | Path | None = None) -> list[Path]:
    """The image files under ``inputs`` (a file or a folder), in a stable (sorted) order.

    A file is taken as it is (its content decides how it is read). A folder is searched
    recursively for :data:`INPUT_SUFFIXES` and for suffix-less files whose first bytes are
    DICOM; hidden files and folders, and anything under ``exclude`` (the output folder, so a
    re-run never reads its own outputs), are skipped.
    """
    root = Path(inputs)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ConfigError(f"--input {root}: no such file or folder")
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        suffix = path.suffix.lower()
        if suffix in INPUT_SUFFIXES or (not suffix and is_dicom(path)):
            found.append(path)
    if not found:
        raise ConfigError(
            f"--input {root}: no images found (looked for {', '.join(INPUT_SUFFIXES)} and "
            "suffix-less DICOM files, recursively)"
        )
    return found


def output_id(number: int, path: str | Path, *, width: int = 4) -> str:
    """``<number>_<hash>``: a name for one input's outputs that reveals nothing about it.

    Input file names often hold patient names, IDs or DICOM UIDs; the running number keeps
    the outputs in input order and six hex digits of the path's SHA-256 tell runs over
    different folders apart.
    """
    digest = hashlib.sha256(str(Path(path).absolute()).encode("utf-8")).hexdigest()[:6]
    return f"{number:0{width}d}_{digest}"


def _is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".csv", ".tsv")


def input_table(
    inputs: str | Path | Sequence[str | Path] | Manifest,
    *,
    labels: Sequence[str] = (),
    exclude: str | Path | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Rows to predict (``path``, ``patient_id`` when known, label columns when known).

    Args:
        inputs: A :class:`~medft.data.manifest.Manifest`, a manifest CSV, a folder, one
            image file, or a list of image files.
        labels: The model's findings: a manifest that has all of them keeps them as true
            labels (1/0/NaN); otherwise the rows are unlabelled.
        exclude: A folder never collected from (the output folder).

    Returns:
        ``(table, label_columns)``: ``label_columns`` is ``list(labels)`` when the table
        holds the true labels, else empty.
    """
    if isinstance(inputs, Manifest):
        return _from_manifest(inputs, labels)
    if isinstance(inputs, (list, tuple)):
        paths = [Path(p) for p in inputs]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ConfigError(f"--input: no such file(s): {', '.join(missing[:5])}")
        return pd.DataFrame({"path": [str(p) for p in paths]}), []
    source = Path(inputs)  # type: ignore[arg-type]
    if _is_manifest(source):
        return _from_csv(source, labels)
    return pd.DataFrame({"path": [str(p) for p in collect_inputs(source, exclude=exclude)]}), []


def _from_manifest(manifest: Manifest, labels: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    table = manifest.table.reset_index(drop=True)
    have = [name for name in labels if name in manifest.labels]
    return table, list(labels) if labels and len(have) == len(labels) else []


def _from_csv(source: Path, labels: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """A labelled manifest when it holds the model's findings, else its paths (and patients)."""
    try:
        header = pd.read_csv(source, nrows=0, encoding="utf-8-sig").columns
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"{source}: not a readable CSV manifest ({exc})") from None
    if "path" not in header:
        raise DataError(f"{source}: a manifest needs a 'path' column; its columns: {list(header)}")
    if labels and all(name in header for name in labels) and "patient_id" in header:
        manifest = load_manifest(source, labels=list(labels), check_files=False)
        return _from_manifest(manifest, labels)
    table = pd.read_csv(source, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    base = source.parent
    table["path"] = [
        str(p if Path(p).is_absolute() else base / p) for p in table["path"].astype(str)
    ]
    keep = ["path", *(["patient_id"] if "patient_id" in table.columns else [])]
    extra = [c for c in table.columns if c not in keep]
    return table[keep + extra].reset_index(drop=True), []
