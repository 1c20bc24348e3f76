"""Manifests: the one validated table of labelled images every command starts from.

A manifest is either a CSV (``path``, ``patient_id``, one column per label) or a folder
laid out ``ROOT/CLASS/**/*.dcm``. :func:`load_manifest` reads either into a
:class:`Manifest` whose table has absolute paths, string patient IDs and float label
columns (1.0 positive, 0.0 negative, NaN unknown). Everything that is wrong with the
input is reported at once, each problem with its row and column, before any training
starts.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd

from medft.errors import ConfigError, DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "RESERVED_COLUMNS",
    "UNCERTAIN_POLICIES",
    "Manifest",
    "UncertainPolicy",
    "load_manifest",
]

log = logging.getLogger(__name__)

RESERVED_COLUMNS = frozenset({"path", "patient_id", "split", "fold", "repeat", "study_id"})
"""Columns that are never label columns (plus ``lesion_*`` and the chosen path/patient columns)."""

IMAGE_SUFFIXES = (".dcm", ".png", ".jpg", ".jpeg")
"""File suffixes (case-insensitive) collected from a folder layout."""

UncertainPolicy = Literal["ignore", "positive", "negative"]
"""What an uncertain label (-1, as in CheXpert) becomes: NaN, 1.0 or 0.0."""
UNCERTAIN_POLICIES: tuple[str, ...] = get_args(UncertainPolicy)

MAX_LISTED = 20
"""How many problems an error message lists before it only counts the rest."""

_UNCERTAIN_CODE = -1.0
_STRING_ID_SUFFIX = "_id"


@dataclass
class Manifest:
    """A validated table of labelled images.

    Attributes:
        table: One row per image: ``path`` (absolute str), ``patient_id`` (str), one float
            column per label (1.0, 0.0, NaN = unknown) and any other columns of the source.
        labels: The label columns, in source order (class folders sorted by name).
        source: The CSV or folder the manifest came from (None if built in memory).
        task: ``"binary"`` (one label), ``"multilabel"`` (several independent labels) or
            ``"multiclass"`` (exactly one positive per row, from a folder layout).
    """

    table: pd.DataFrame
    labels: list[str]
    source: Path | None = None
    task: str = ""
    uncertain_mask: pd.DataFrame | None = field(default=None, repr=False)
    """Which label cells were -1 in the source (before the uncertain policy mapped them)."""

    def __post_init__(self) -> None:
        if not self.task:
            self.task = "binary" if len(self.labels) == 1 else "multilabel"
        if self.task not in ("binary", "multilabel", "multiclass"):
            raise ConfigError(
                f"Manifest.task must be binary, multilabel or multiclass, not {self.task!r}"
            )

    def __len__(self) -> int:
        return len(self.table)

    def label_counts(self) -> pd.DataFrame:
        """Count positives, negatives and unknowns per label.

        Returns:
            A DataFrame indexed by label with integer columns ``positive``, ``negative``,
            ``unknown`` and ``uncertain``. ``uncertain`` counts cells that were -1 in the
            source; they are already counted in the column their policy mapped them to.
        """
        values = self.table[self.labels]
        counts = pd.DataFrame(
            {
                "positive": (values == 1.0).sum(),
                "negative": (values == 0.0).sum(),
                "unknown": values.isna().sum(),
            }
        )
        if self.uncertain_mask is not None:
            counts["uncertain"] = self.uncertain_mask[self.labels].sum()
        else:
            counts["uncertain"] = 0
        return counts.astype(int)

    def subset(self, mask: pd.Series | np.ndarray | Sequence[bool]) -> Manifest:
        """Return the rows where ``mask`` is true, as a new manifest (index kept).

        Args:
            mask: Booleans, one per row; a Series is aligned on the table's index.
        """
        if isinstance(mask, pd.Series):
            keep = mask.reindex(self.table.index, fill_value=False).to_numpy(dtype=bool)
        else:
            keep = np.asarray(mask, dtype=bool)
            if keep.shape != (len(self.table),):
                raise DataError(
                    f"subset mask has {keep.size} values but the manifest has "
                    f"{len(self.table)} rows"
                )
        uncertain = None if self.uncertain_mask is None else self.uncertain_mask[keep].copy()
        return replace(self, table=self.table[keep].copy(), uncertain_mask=uncertain)


def load_manifest(
    source: str | os.PathLike[str],
    *,
    labels: Sequence[str] | None = None,
    uncertain: UncertainPolicy = "ignore",
    check_files: bool = True,
    path_column: str = "path",
    patient_column: str = "patient_id",
    patient_map: str | os.PathLike[str] | Mapping[str, str] | None = None,
) -> Manifest:
    """Read and validate a manifest CSV or a ``CLASS/**/*`` folder layout.

    Args:
        source: A CSV file, or a folder whose sub-folders are class names.
        labels: Label columns of a CSV; by default every non-reserved column whose
            non-blank values are all 1/0/-1 (also ``1.0``/``0.0``/``True``/``False``). A
            column of nearly all such values with a few others (a stray ``yes`` or ``2``)
            is a label column with bad rows: refused, naming each row and the column.
        uncertain: What -1 becomes: ``"ignore"`` (NaN, unknown), ``"positive"`` or
            ``"negative"``. Always explicit: see the data docs for the trade-offs.
        check_files: Verify that every path is an existing file.
        path_column: Name of the CSV's path column (renamed to ``path``).
        patient_column: Name of the CSV's patient column (renamed to ``patient_id``).
        patient_map: Folder layouts only: a mapping (or a CSV with ``path``, ``patient_id``)
            from image path (relative to ``source`` or absolute) to patient ID.

    Returns:
        The validated :class:`Manifest`.

    Raises:
        DataError: The source is missing, unreadable or has problems; the message lists
            each problem with its row (1-based data row and CSV line) and column.
        ConfigError: ``uncertain`` is not one of :data:`UNCERTAIN_POLICIES`.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise ConfigError(
            f"uncertain={uncertain!r} is not a policy; use one of {', '.join(UNCERTAIN_POLICIES)}"
        )
    path = Path(source)
    if path.is_dir():
        if labels is not None:
            raise ConfigError(
                f"{path}: labels= applies to CSV manifests; a folder's labels are its class folders"
            )
        return _load_folder(path, patient_map=patient_map)
    if patient_map is not None:
        raise ConfigError(
            f"{path}: patient_map= applies to folder layouts; a CSV names patients in its "
            f"{patient_column!r} column"
        )
    if not path.is_file():
        raise DataError(f"{path}: manifest not found (expected a CSV file or a class folder)")
    return _load_csv(
        path,
        labels=labels,
        uncertain=uncertain,
        check_files=check_files,
        path_column=path_column,
        patient_column=patient_column,
    )


# --------------------------------------------------------------------------- CSV


class _Problems:
    """Collects row-level problems so one error reports all of them."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.items: list[tuple[int, str]] = []

    def add(self, row: int, column: str, message: str) -> None:
        self.items.append((row, f"{_where(row)}, column {column!r}: {message}"))

    def note(self, message: str) -> None:
        """Add a problem that belongs to no single row (listed first)."""
        self.items.append((-1, message))

    def raise_if_any(self, heading: str) -> None:
        if not self.items:
            return
        ordered = [text for _, text in sorted(self.items, key=lambda item: item[0])]
        shown = ordered[:MAX_LISTED]
        rest = len(ordered) - len(shown)
        lines = [f"{self.source}: {len(self.items)} {heading}:", *(f"  {s}" for s in shown)]
        if rest:
            lines.append(f"  ... and {rest} more")
        raise DataError("\n".join(lines))


def _where(row: int) -> str:
    """Name a data row (0-based position in the file) as users see it."""
    return f"row {row + 1} (line {row + 2})"


def _read_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return next(csv.reader(fh), [])
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not a UTF-8 text file ({exc.reason}); save it as UTF-8 CSV"
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the manifest ({exc.strerror})") from exc


def _read_csv(path: Path) -> pd.DataFrame:
    header = [name.strip() for name in _read_header(path)]
    if not any(header):
        raise DataError(f"{path}: the manifest is empty (expected a header row and data rows)")
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"{path}: column {name!r} appears twice in the header (line 1)")
        seen.add(name)
    try:
        frame = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,
            index_col=False,
            encoding="utf-8-sig",
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"{path}: not a valid CSV: {exc}") from exc
    frame.columns = header
    frame = frame.apply(lambda col: col.str.strip())
    blank_rows = (frame == "").all(axis=1)
    frame = frame[~blank_rows]
    if frame.empty:
        raise DataError(f"{path}: the manifest has a header but no data rows")
    return frame


def _parse_label(text: str) -> float | None:
    """Map one label cell to 1.0, 0.0, -1.0 (uncertain), NaN (unknown), or None (invalid)."""
    lowered = text.lower()
    if lowered in ("", "nan"):
        return math.nan
    if lowered == "true":
        return 1.0
    if lowered == "false":
        return 0.0
    try:
        value = float(lowered)
    except ValueError:
        return None
    return value if value in (1.0, 0.0, _UNCERTAIN_CODE) else None


LABEL_LIKE_SHARE = 0.9
"""A column whose non-blank cells are at least this share of label values is a label column."""


def _looks_like_labels(n_valid: int, n_invalid: int) -> bool:
    """Whether a column with these counts of label values and other values is a label column.

    "Nearly all" is at least :data:`LABEL_LIKE_SHARE` of the non-blank cells, or a single
    stray value among four or more label values (small manifests).
    """
    if n_invalid == 0 or n_valid < 2:
        return n_invalid == 0 and n_valid > 0
    return n_valid >= LABEL_LIKE_SHARE * (n_valid + n_invalid) or (n_invalid == 1 and n_valid >= 4)


def _infer_labels(
    frame: pd.DataFrame, reserved: set[str]
) -> tuple[list[str], list[str], list[str]]:
    """Find label columns; also name near-misses and label columns with bad rows.

    Returns:
        ``(labels, near_misses, broken)``: clean label columns; descriptions of columns
        that hold some label values among others; and columns of nearly all label values
        with a few bad cells, which are label columns with typos, never metadata.
    """
    found: list[str] = []
    near_misses: list[str] = []
    broken: list[str] = []
    for name in frame.columns:
        if name in reserved or name.startswith("lesion_"):
            continue
        codes = [_parse_label(text) for text in frame[name]]
        n_invalid = codes.count(None)
        n_valid = sum(1 for code in codes if code is not None and not math.isnan(code))
        if n_invalid == 0:
            if n_valid:
                found.append(name)
        elif _looks_like_labels(n_valid, n_invalid):
            broken.append(name)
        elif n_invalid <= len(codes) // 2:
            position = codes.index(None)
            near_misses.append(
                f"{name!r} ({_where(int(frame.index[position]))}: {frame[name].iloc[position]!r})"
            )
    return found, near_misses, broken


def _refuse_broken_labels(path: Path, frame: pd.DataFrame, broken: Sequence[str]) -> None:
    """Report every bad cell of label columns found by inference (see :func:`_infer_labels`)."""
    if not broken:
        return
    problems = _Problems(path)
    for name in broken:
        for index, text in frame[name].items():
            if _parse_label(text) is None:
                problems.add(
                    int(index),
                    name,
                    f"{text!r} is not a label value (use 1, 0, -1 for uncertain, or blank "
                    "for unknown)",
                )
    names = ", ".join(map(repr, broken))
    problems.note(
        f"{names}: nearly every value is a label value (1, 0, -1 or blank), so medft reads "
        "it as a label column with bad rows rather than dropping the finding; fix the rows "
        "below, or name the label columns yourself (labels=[...], data.labels) to keep it "
        "as metadata"
    )
    problems.raise_if_any("problem(s) in label columns")


def _reserved(path_column: str, patient_column: str) -> set[str]:
    return set(RESERVED_COLUMNS) | {path_column, patient_column}


def _choose_labels(
    path: Path, frame: pd.DataFrame, labels: Sequence[str] | None, reserved: set[str]
) -> list[str]:
    columns = ", ".join(repr(c) for c in frame.columns)
    if labels is None:
        chosen, near_misses, broken = _infer_labels(frame, reserved)
        _refuse_broken_labels(path, frame, broken)
        if not chosen:
            hint = (
                f"; these columns hold other values too: {', '.join(near_misses)}"
                if near_misses
                else ""
            )
            raise DataError(
                f"{path}: no label columns found among {columns}. A label column holds only "
                f"1, 0, -1 (uncertain) or blank (unknown){hint}. Fix the values, or name the "
                "label columns with labels=[...] to see every bad row"
            )
        return chosen
    chosen = list(labels)
    if not chosen:
        raise DataError(f"{path}: labels=[] names no label column; columns found: {columns}")
    missing = [name for name in chosen if name not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: label column(s) {', '.join(map(repr, missing))} not in the manifest; "
            f"columns found: {columns}"
        )
    clashing = [name for name in chosen if name in reserved]
    if clashing:
        raise DataError(
            f"{path}: {', '.join(map(repr, clashing))} is a reserved column and cannot be a label"
        )
    if len(set(chosen)) != len(chosen):
        raise DataError(f"{path}: labels={chosen} names a column twice")
    return chosen


def _restore_column(name: str, values: pd.Series) -> pd.Series:
    """Give a kept (non-label) column back a numeric dtype where every value is a number.

    Blank cells become NaN. Identifier-like columns (``study_id``, ``*_id``) stay strings
    so leading zeros survive.
    """
    blank = values == ""
    as_text = values.mask(blank)
    if name.endswith(_STRING_ID_SUFFIX) or blank.all():
        return as_text
    numbers = pd.to_numeric(as_text, errors="coerce")
    if numbers[~blank].notna().all():
        return numbers
    return as_text


def _load_csv(
    path: Path,
    *,
    labels: Sequence[str] | None,
    uncertain: UncertainPolicy,
    check_files: bool,
    path_column: str,
    patient_column: str,
) -> Manifest:
    frame = _read_csv(path)
    required = [path_column, patient_column]
    missing = [name for name in required if name not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing required column(s) {', '.join(map(repr, missing))}; columns found: "
            f"{', '.join(repr(c) for c in frame.columns)}. Rename them, or pass "
            "path_column=/patient_column= to load_manifest"
        )
    for wanted, standard in ((path_column, "path"), (patient_column, "patient_id")):
        if wanted != standard and standard in frame.columns:
            raise DataError(
                f"{path}: has both {wanted!r} and {standard!r} columns; {wanted!r} would be "
                f"renamed to {standard!r}. Drop or rename one of them"
            )
    reserved = _reserved(path_column, patient_column)
    label_names = _choose_labels(path, frame, labels, reserved)

    problems = _Problems(path)
    base = path.parent.absolute()
    absolute: list[str] = []
    first_row_of: dict[str, int] = {}
    for index, raw in frame[path_column].items():
        row = int(index)
        if not raw:
            problems.add(row, path_column, "empty path")
            absolute.append("")
            continue
        full = os.path.normpath(os.path.join(base, os.path.expanduser(raw)))
        absolute.append(full)
        # Two names of one file (a symlink, a linked folder) are the same image.
        same = os.path.realpath(full)
        if same in first_row_of:
            link = "" if same == full else " (the same file through a symbolic link)"
            problems.add(
                row, path_column, f"duplicate of {_where(first_row_of[same])} ({raw!r}){link}"
            )
        else:
            first_row_of[same] = row
    for index, patient in frame[patient_column].items():
        if not patient:
            problems.add(int(index), patient_column, "empty patient ID (every image needs one)")

    codes = pd.DataFrame(index=frame.index, columns=label_names, dtype=float)
    for name in label_names:
        parsed = []
        for index, text in frame[name].items():
            code = _parse_label(text)
            if code is None:
                problems.add(
                    int(index),
                    name,
                    f"{text!r} is not a label value "
                    "(use 1, 0, -1 for uncertain, or blank for unknown)",
                )
                code = math.nan
            parsed.append(code)
        codes[name] = parsed
    problems.raise_if_any("problem(s) in the manifest")

    if check_files:
        _check_files(path, path_column, frame.index, absolute, problems)

    uncertain_mask = codes == _UNCERTAIN_CODE
    replacement = {"ignore": math.nan, "positive": 1.0, "negative": 0.0}[uncertain]
    codes = codes.mask(uncertain_mask, replacement)
    n_uncertain = int(uncertain_mask.to_numpy().sum())
    if n_uncertain:
        log.info("%s: %d uncertain (-1) label(s) mapped by policy %r", path, n_uncertain, uncertain)

    table = pd.DataFrame({"path": absolute, "patient_id": frame[patient_column].to_numpy()})
    for name in label_names:
        table[name] = codes[name].to_numpy()
    for name in frame.columns:
        if name not in (path_column, patient_column) and name not in label_names:
            table[name] = _restore_column(name, frame[name]).to_numpy()
    uncertain_mask = uncertain_mask.reset_index(drop=True)
    return Manifest(table=table, labels=label_names, source=path, uncertain_mask=uncertain_mask)


def _check_files(
    source: Path, column: str, rows: pd.Index, absolute: list[str], problems: _Problems
) -> None:
    n_missing = 0
    for index, full in zip(rows, absolute, strict=True):
        if os.path.isfile(full):
            continue
        n_missing += 1
        reason = "not a regular file" if os.path.exists(full) else "file not found"
        problems.add(int(index), column, f"{reason}: {full}")
    if n_missing and n_missing == len(absolute):
        problems.note(
            f"none of the {n_missing} files exist; relative paths are resolved against the "
            f"CSV's folder ({source.parent.absolute()})"
        )
    problems.raise_if_any("file problem(s) in the manifest")


# ------------------------------------------------------------------------ folders


def _load_folder(
    root: Path, *, patient_map: str | os.PathLike[str] | Mapping[str, str] | None
) -> Manifest:
    root = root.absolute()
    class_dirs = sorted(
        (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.name,
    )
    records: list[tuple[str, str, str]] = []
    classes: list[str] = []
    for class_dir in class_dirs:
        files = sorted(
            f
            for f in class_dir.rglob("*")
            if f.suffix.lower() in IMAGE_SUFFIXES
            and f.is_file()
            and not any(part.startswith(".") for part in f.relative_to(class_dir).parts)
        )
        if not files:
            continue
        if class_dir.name in RESERVED_COLUMNS or class_dir.name.startswith("lesion_"):
            raise DataError(
                f"{class_dir}: class folder name {class_dir.name!r} is a reserved column name; "
                "rename the folder"
            )
        classes.append(class_dir.name)
        for file in files:
            relative = file.relative_to(class_dir)
            patient = relative.parts[0] if len(relative.parts) > 1 else file.stem
            records.append((str(file), patient, class_dir.name))
    if len(classes) < 2:
        raise DataError(
            f"{root}: a folder layout needs at least two class folders holding images "
            f"({', '.join(IMAGE_SUFFIXES)}); found {len(classes)}: {classes}"
        )

    table = pd.DataFrame(records, columns=["path", "patient_id", "class"])
    if patient_map is None:
        warnings.warn(
            f"{root}: a folder layout has no patient IDs; medft uses the first folder below "
            "each class folder (or the file name when there is none) as patient_id, so splits "
            "are only patient-level if that folder is the patient. Pass patient_map= to group "
            "by real patients.",
            UserWarning,
            stacklevel=3,
        )
    else:
        table["patient_id"] = _map_patients(root, table["path"], patient_map)
    for name in classes:
        table[name] = (table["class"] == name).astype(float)
    table = table.drop(columns="class")
    return Manifest(table=table, labels=classes, source=root, task="multiclass")


def _map_patients(
    root: Path, paths: pd.Series, patient_map: str | os.PathLike[str] | Mapping[str, str]
) -> pd.Series:
    if isinstance(patient_map, Mapping):
        entries = dict(patient_map)
        origin = "patient_map"
    else:
        origin = str(patient_map)
        frame = _read_csv(Path(patient_map))
        if not {"path", "patient_id"} <= set(frame.columns):
            raise DataError(
                f"{patient_map}: a patient map needs columns 'path' and 'patient_id'; found "
                f"{', '.join(map(repr, frame.columns))}"
            )
        entries = dict(zip(frame["path"], frame["patient_id"], strict=True))
    lookup = {
        os.path.normpath(os.path.join(root, str(key))): str(value).strip()
        for key, value in entries.items()
    }
    mapped = paths.map(lookup)
    unmapped = paths[mapped.isna() | (mapped == "")]
    if len(unmapped):
        shown = [os.path.relpath(p, root) for p in unmapped.iloc[:MAX_LISTED]]
        rest = len(unmapped) - len(shown)
        more = f" ... and {rest} more" if rest else ""
        raise DataError(
            f"{origin}: no patient ID for {len(unmapped)} image(s) under {root}: "
            f"{', '.join(shown)}{more}"
        )
    return mapped
