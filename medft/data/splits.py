"""Patient-grouped, label-stratified splits, the ``folds.csv`` file, and the leakage guard.

Every split medft makes keeps all images of a patient in one part, and balances each
label's positives across parts with iterative stratification (Sechidis, Tsoumakas and
Vlahavas, 2011) applied to patients instead of images: a patient counts with its number
of images and, per label, its number of positive images (unknown labels count as
neither positive nor negative). Assignments depend only on the seed and on the set of
(patient, labels) pairs, not on the row order of the table.

Split files hold the image path, a salted patient key (never the raw patient ID) and
the assignment, so a study can be reproduced and audited without exposing patients.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medft._io import atomic_path
from medft.data._hashing import patient_key
from medft.errors import ConfigError, DataError, LeakageError

__all__ = [
    "SPLIT_NAMES",
    "align_assignment",
    "check_no_leakage",
    "folds_for_repeat",
    "holdout_split",
    "inner_split",
    "kfold_split",
    "read_assignment",
    "split_from_column",
    "write_assignment",
]

SPLIT_NAMES = ("train", "val", "test")
"""The parts of a holdout split, in this order."""

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
_MAX_LISTED = 10
_TIE = 1e-9


# ---------------------------------------------------------------------- splitting


def holdout_split(
    table: pd.DataFrame,
    *,
    labels: Sequence[str],
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
) -> pd.Series:
    """Split images into train/val/test by patient, stratified on the labels.

    Args:
        table: A manifest table (``patient_id`` and the label columns; unique index).
        labels: Label columns to stratify on (may be empty: then only sizes balance).
        val: Fraction of images for validation (0 allowed: no validation part).
        test: Fraction of images for test (0 allowed: no test part).
        seed: Seed; the same seed and patients give the same assignment.

    Returns:
        A Series named ``split`` of "train"/"val"/"test", aligned with ``table.index``.

    Raises:
        ConfigError: The fractions are out of range.
        DataError: Too few patients for the requested parts, or a malformed table.
    """
    for name, value in (("val", val), ("test", test)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name}={value} must be a fraction in [0, 1)")
    if val + test >= 1.0:
        raise ConfigError(f"val + test = {val + test:g} leaves nothing to train on; keep it < 1")
    groups = _PatientGroups.from_table(table, labels)
    ratios = np.array([1.0 - val - test, val, test])
    parts = groups.assign(ratios, np.random.default_rng([seed, 0]))
    _require_nonempty(groups, parts, ratios, [f"{n} part" for n in SPLIT_NAMES])
    _warn_missing_positives(groups, parts, ratios, SPLIT_NAMES)
    names = np.array(SPLIT_NAMES)[parts[groups.row_patient]]
    return pd.Series(names, index=table.index, name="split")


def inner_split(
    table: pd.DataFrame, *, labels: Sequence[str], val: float = 0.15, seed: int = 0
) -> pd.Series:
    """Carve a validation part out of training rows (e.g. the training folds of a CV fold).

    Grouped and stratified like :func:`holdout_split`; returns "train"/"val" per row.
    """
    return holdout_split(table, labels=labels, val=val, test=0.0, seed=seed)


def kfold_split(
    table: pd.DataFrame,
    *,
    labels: Sequence[str],
    k: int = 5,
    seed: int = 0,
    repeats: int = 1,
) -> pd.DataFrame:
    """Assign every image to one of ``k`` folds by patient, stratified on the labels.

    Args:
        table: A manifest table (``patient_id`` and the label columns; unique index).
        labels: Label columns to stratify on.
        k: Number of folds (>= 2).
        seed: Seed of the first repeat; repeat ``r`` uses the stream ``(seed, r)``.
        repeats: Independent re-shufflings (repeated K-fold).

    Returns:
        A long DataFrame with integer columns ``repeat`` and ``fold``: one row per table row
        per repeat, repeat-major, indexed by the table's index (which therefore repeats
        once per repeat). Within a repeat every image is in exactly one fold; use
        :func:`folds_for_repeat` to get one repeat as a Series.

    Raises:
        ConfigError: ``k`` < 2 or ``repeats`` < 1.
        DataError: Fewer patients than folds, or a malformed table.
    """
    if int(k) != k or k < 2:
        raise ConfigError(f"k={k} folds: use an integer >= 2")
    if int(repeats) != repeats or repeats < 1:
        raise ConfigError(f"repeats={repeats}: use an integer >= 1")
    groups = _PatientGroups.from_table(table, labels)
    if groups.n_patients < k:
        raise DataError(
            f"only {groups.n_patients} patient(s) for k={k} folds; every fold needs at least "
            f"one patient. Use k <= {groups.n_patients}, add data, or use holdout_split"
        )
    ratios = np.full(k, 1.0 / k)
    frames = []
    fold_names = [f"fold {j}" for j in range(k)]
    for repeat in range(int(repeats)):
        parts = groups.assign(ratios, np.random.default_rng([seed, repeat + 1]))
        _require_nonempty(groups, parts, ratios, fold_names)
        if repeat == 0:
            _warn_missing_positives(groups, parts, ratios, fold_names)
        frames.append(
            pd.DataFrame(
                {"repeat": repeat, "fold": parts[groups.row_patient]},
                index=table.index,
            )
        )
    return pd.concat(frames).astype({"repeat": int, "fold": int})


def folds_for_repeat(assignment: pd.DataFrame, repeat: int = 0) -> pd.Series:
    """Return the ``fold`` column of one repeat of a :func:`kfold_split` result."""
    chosen = assignment[assignment["repeat"] == repeat]
    if chosen.empty:
        available = sorted(assignment["repeat"].unique().tolist())
        raise DataError(f"no repeat {repeat} in the fold assignment; repeats: {available}")
    return chosen["fold"]


class _PatientGroups:
    """Patients of a table: image counts and positive-image counts per label."""

    def __init__(
        self,
        row_patient: np.ndarray,
        sizes: np.ndarray,
        positives: np.ndarray,
        labels: Sequence[str],
    ):
        self.row_patient = row_patient
        self.labels = list(labels)
        self.sizes = sizes
        self.positives = positives

    @property
    def n_patients(self) -> int:
        return len(self.sizes)

    @classmethod
    def from_table(cls, table: pd.DataFrame, labels: Sequence[str]) -> _PatientGroups:
        _validate_table(table, labels)
        row_patient, _ = pd.factorize(table["patient_id"].astype(str), sort=True)
        n_patients = int(row_patient.max()) + 1
        sizes = np.bincount(row_patient, minlength=n_patients).astype(float)
        positives = np.zeros((n_patients, len(labels)))
        if labels:
            is_positive = (table[list(labels)].to_numpy(dtype=float) == 1.0).astype(float)
            np.add.at(positives, row_patient, is_positive)
        return cls(row_patient, sizes, positives, labels)

    def assign(self, ratios: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Iterative stratification over patients; returns the part index of each patient.

        The label with the fewest remaining positive patients is placed first; each of its
        patients (largest first) goes to the part that most lacks that label's positives,
        then the part that most lacks the patient's labels taken together (each relative
        to its total), then the part that most lacks images, then a seeded random choice.
        Patients with no positive label fill the parts that most lack images.
        """
        active = ratios > 0
        want_images = ratios * self.sizes.sum()
        label_totals = self.positives.sum(axis=0)
        want_positives = ratios[:, None] * label_totals[None, :]
        scale = 1.0 / np.maximum(label_totals, 1.0)
        part = np.full(self.n_patients, -1)
        rank = rng.permutation(self.n_patients)
        has_label = self.positives > 0
        remaining = np.ones(self.n_patients, dtype=bool)

        def place(patients: np.ndarray, label: int | None) -> None:
            ordered = patients[np.lexsort((rank[patients], -self.sizes[patients]))]
            for p in ordered:
                if label is None:
                    criteria = [want_images]
                else:
                    own = has_label[p]
                    together = (want_positives[:, own] * scale[own]).sum(axis=1)
                    criteria = [want_positives[:, label], together, want_images]
                j = _best_part(criteria, active, rng)
                part[p] = j
                want_images[j] -= self.sizes[p]
                want_positives[j] -= self.positives[p]
                remaining[p] = False

        while True:
            counts = has_label[remaining].sum(axis=0)
            if not counts.any():
                break
            candidates = np.flatnonzero(counts)
            label = int(candidates[np.argmin(counts[candidates])])
            place(np.flatnonzero(remaining & has_label[:, label]), label)
        place(np.flatnonzero(remaining), None)
        return part


def _best_part(criteria: Sequence[np.ndarray], active: np.ndarray, rng: np.random.Generator) -> int:
    """The active part that scores highest on the first criterion, ties broken by the next."""
    chosen = active.copy()
    for values in criteria:
        if chosen.sum() == 1:
            break
        score = np.where(chosen, values, -np.inf)
        chosen &= score >= score.max() - _TIE
    candidates = np.flatnonzero(chosen)
    return int(candidates[0] if len(candidates) == 1 else rng.choice(candidates))


def _validate_table(table: pd.DataFrame, labels: Sequence[str]) -> None:
    if "patient_id" not in table.columns:
        raise DataError(
            "the table has no 'patient_id' column; splits group images by patient "
            "(load the data with load_manifest)"
        )
    missing = [name for name in labels if name not in table.columns]
    if missing:
        raise DataError(f"label column(s) {missing} not in the table: {list(table.columns)}")
    if table.empty:
        raise DataError("the table has no rows to split")
    if not table.index.is_unique:
        raise DataError("the table's index has duplicates; reset it (table.reset_index())")
    ids = table["patient_id"]
    blank = ids.isna() | (ids.astype(str).str.strip() == "")
    if blank.any():
        rows = [str(pos + 1) for pos in np.flatnonzero(blank.to_numpy())[:_MAX_LISTED]]
        raise DataError(f"empty patient_id in row(s) {', '.join(rows)}; every image needs one")


def _require_nonempty(
    groups: _PatientGroups, parts: np.ndarray, ratios: np.ndarray, names: Sequence[str]
) -> None:
    counts = np.bincount(parts, minlength=len(ratios))
    for j, (ratio, count) in enumerate(zip(ratios, counts, strict=True)):
        if ratio > 0 and count == 0:
            raise DataError(
                f"the {names[j]} got no patient: {groups.n_patients} patient(s) are too few for "
                f"a fraction of {ratio:g}. Use a larger fraction, fewer parts, or more data"
            )


def _warn_missing_positives(
    groups: _PatientGroups, parts: np.ndarray, ratios: np.ndarray, names: Sequence[str]
) -> None:
    """Warn when a label has no positive in some part (its AUROC will be undefined there)."""
    if not groups.positives.size:
        return
    per_part = np.zeros((len(ratios), groups.positives.shape[1]))
    np.add.at(per_part, parts, groups.positives)
    for label in range(per_part.shape[1]):
        if groups.positives[:, label].sum() == 0:
            continue
        empty = [names[j] for j in range(len(ratios)) if ratios[j] > 0 and per_part[j, label] == 0]
        if empty:
            n_patients = int((groups.positives[:, label] > 0).sum())
            warnings.warn(
                f"label {groups.labels[label]!r} has positives in only {n_patients} "
                f"patient(s); no positive in: {', '.join(empty)}. Metrics for it will be "
                "undefined there",
                UserWarning,
                stacklevel=3,
            )


# ------------------------------------------------------------------ official split


def split_from_column(
    table: pd.DataFrame,
    column: str = "split",
    *,
    allow_leakage: bool = False,
    salt: str | None = None,
) -> pd.Series:
    """Use a split that the manifest already carries (e.g. a dataset's official split).

    Values are case-insensitive ``train``/``val``/``test`` (``training``, ``valid``,
    ``validation``, ``dev``, ``testing`` are accepted and normalised).

    Raises:
        DataError: A blank or unknown value (naming the rows).
        LeakageError: A patient appears in two parts (unless ``allow_leakage``).
    """
    if column not in table.columns:
        raise DataError(f"no {column!r} column in the table; columns: {list(table.columns)}")
    raw = table[column]
    normalised = raw.astype(str).str.strip().str.lower().map(_SPLIT_ALIASES)
    bad = np.flatnonzero(normalised.isna().to_numpy())
    if len(bad):
        listed = ", ".join(f"row {pos + 1} ({raw.iloc[pos]!r})" for pos in bad[:_MAX_LISTED])
        more = f" ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise DataError(
            f"column {column!r}: {len(bad)} value(s) are not train/val/test: {listed}{more}"
        )
    split = pd.Series(normalised.to_numpy(), index=table.index, name="split")
    check_no_leakage(table, split, allow=allow_leakage, salt=salt)
    return split


# -------------------------------------------------------------------- leakage guard


def check_no_leakage(
    table: pd.DataFrame,
    assignment: str | pd.Series | pd.DataFrame,
    *,
    allow: bool = False,
    salt: str | None = None,
) -> list[str]:
    """Fail loudly if any patient's images are in more than one part.

    Args:
        table: Rows with ``patient_id`` (or, for a read ``folds.csv``, ``patient_key``).
        assignment: A column name of ``table``; a Series aligned on ``table.index``
            (holdout split or one repeat's folds); or a :func:`kfold_split` DataFrame
            (``fold`` and optional ``repeat`` columns), checked repeat by repeat.
            Rows whose assignment is NaN (excluded) are ignored.
        allow: Warn instead of raising (for splits that share patients on purpose).
        salt: Salt for patient keys (defaults as in :func:`medft.data._hashing.patient_key`).

    Returns:
        Salted keys of the patients found in more than one part (empty when clean).

    Raises:
        LeakageError: Some patient is in two parts and ``allow`` is false. The message
            names the patients by salted key only.
    """
    keys = _patient_keys(table, salt)
    checks: list[tuple[str, pd.Series]] = []
    if isinstance(assignment, str):
        if assignment not in table.columns:
            raise DataError(f"no {assignment!r} column in the table")
        checks.append(("", table[assignment]))
    elif isinstance(assignment, pd.Series):
        checks.append(("", assignment))
    else:
        column = "fold" if "fold" in assignment.columns else "split"
        if column not in assignment.columns:
            raise DataError(
                f"the assignment has neither 'fold' nor 'split': {list(assignment.columns)}"
            )
        if "repeat" in assignment.columns:
            for repeat, rows in assignment.groupby("repeat", sort=True):
                checks.append((f"repeat {repeat}: ", rows[column]))
        else:
            checks.append(("", assignment[column]))

    leaked: list[str] = []
    details: list[str] = []
    for prefix, parts in checks:
        unknown = parts.index.difference(keys.index)
        if len(unknown):
            raise DataError(
                f"the assignment has {len(unknown)} row(s) that are not in the table "
                f"(first: {unknown[0]!r}); assignments align on the table's index"
            )
        frame = pd.DataFrame({"key": keys.loc[parts.index].to_numpy(), "part": parts.to_numpy()})
        frame = frame.dropna(subset=["part"])
        spread = frame.groupby("key")["part"].nunique()
        for key in spread.index[spread > 1]:
            counts = frame.loc[frame["key"] == key, "part"].value_counts().sort_index()
            where = ", ".join(f"{part} ({n} image{'s' * (n != 1)})" for part, n in counts.items())
            details.append(f"{prefix}patient {key}: {where}")
            if key not in leaked:
                leaked.append(key)
    if not leaked:
        return []
    shown = details[:_MAX_LISTED]
    more = f"\n  ... and {len(details) - len(shown)} more" if len(details) > len(shown) else ""
    message = (
        f"{len(leaked)} patient(s) appear in more than one part of the split (named by "
        "salted key):\n  " + "\n  ".join(shown) + more
    )
    if allow:
        warnings.warn(message + "\n(allowed explicitly)", UserWarning, stacklevel=2)
        return leaked
    raise LeakageError(
        message + "\nRegroup the split by patient (holdout_split/kfold_split do), or allow "
        "leakage explicitly if it is intended"
    )


def _patient_keys(table: pd.DataFrame, salt: str | None) -> pd.Series:
    if "patient_id" in table.columns:
        unique = table["patient_id"].astype(str).unique()
        lookup = {pid: patient_key(pid, salt) for pid in unique}
        return table["patient_id"].astype(str).map(lookup)
    if "patient_key" in table.columns:
        return table["patient_key"].astype(str)
    raise DataError("the table has neither 'patient_id' nor 'patient_key'; cannot group patients")


# ----------------------------------------------------------------------- files


def write_assignment(
    path: str | os.PathLike[str],
    table: pd.DataFrame,
    assignment: pd.Series | pd.DataFrame,
    *,
    salt: str | None = None,
) -> Path:
    """Write ``folds.csv`` / ``splits.csv`` atomically: path, salted patient key, assignment.

    Args:
        path: Output CSV.
        table: The manifest table the assignment was made on (``path``, ``patient_id``).
        assignment: A holdout Series (written as its name, default ``split``) or a
            :func:`kfold_split` DataFrame (its columns, e.g. ``repeat`` and ``fold``).
        salt: Salt for the patient keys.

    Returns:
        The path written.
    """
    if isinstance(assignment, pd.Series):
        columns = assignment.to_frame(assignment.name or "split")
    else:
        columns = assignment
    missing = columns.index.difference(table.index)
    if len(missing):
        raise DataError(
            f"the assignment has {len(missing)} row(s) not in the table (first: "
            f"{missing[0]!r}); it must come from this table"
        )
    if "path" not in table.columns:
        raise DataError("the table has no 'path' column")
    out = pd.DataFrame(
        {
            "path": table.loc[columns.index, "path"].to_numpy(),
            "patient_key": _patient_keys(table, salt).loc[columns.index].to_numpy(),
        }
    )
    for name in columns.columns:
        out[name] = columns[name].to_numpy()
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False)
    return Path(path)


def read_assignment(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and validate a file written by :func:`write_assignment`.

    Returns:
        A DataFrame with ``path``, ``patient_key`` and ``split`` or ``repeat``/``fold``
        (integers).

    Raises:
        DataError: The file is missing, lacks a column, or holds an invalid value (naming
            the row).
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(f"{source}: split file not found")
    try:
        frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DataError(f"{source}: not a valid split file: {exc}") from exc
    required = {"path", "patient_key"}
    if not required <= set(frame.columns) or not ({"split", "fold"} & set(frame.columns)):
        raise DataError(
            f"{source}: a split file needs 'path', 'patient_key' and 'split' or 'fold'; "
            f"found {list(frame.columns)}"
        )
    if "split" in frame.columns:
        bad = np.flatnonzero(~frame["split"].isin(SPLIT_NAMES).to_numpy())
        if len(bad):
            pos = bad[0]
            raise DataError(
                f"{source}: row {pos + 1} (line {pos + 2}): split {frame['split'].iloc[pos]!r} "
                f"is not one of {', '.join(SPLIT_NAMES)}"
            )
    for name in ("repeat", "fold"):
        if name in frame.columns:
            numbers = pd.to_numeric(frame[name], errors="coerce")
            bad = np.flatnonzero((numbers.isna() | (numbers < 0) | (numbers % 1 != 0)).to_numpy())
            if len(bad):
                pos = bad[0]
                raise DataError(
                    f"{source}: row {pos + 1} (line {pos + 2}): {name} "
                    f"{frame[name].iloc[pos]!r} is not a non-negative integer"
                )
            frame[name] = numbers.astype(int)
    duplicated = frame.duplicated(subset=["repeat", "path"] if "repeat" in frame else ["path"])
    if duplicated.any():
        pos = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise DataError(
            f"{source}: row {pos + 1} (line {pos + 2}): path {frame['path'].iloc[pos]!r} "
            "is assigned twice"
        )
    return frame


def align_assignment(
    table: pd.DataFrame, saved: pd.DataFrame, *, salt: str | None = None
) -> pd.Series | pd.DataFrame:
    """Map a read split file back onto a manifest table by path.

    Verifies that the file covers exactly the table's images and that each image's
    patient key still matches (a changed manifest or salt is refused, not guessed).

    Returns:
        A ``split`` Series, or a long ``repeat``/``fold`` DataFrame, indexed like ``table``
        (the same shapes :func:`holdout_split` and :func:`kfold_split` return).
    """
    position = pd.Series(np.arange(len(table)), index=table["path"].astype(str).to_numpy())
    if not position.index.is_unique:
        raise DataError("the table has duplicate paths; load it with load_manifest")
    keys = _patient_keys(table, salt).to_numpy()
    repeats = saved.groupby("repeat") if "repeat" in saved.columns else [(None, saved)]
    pieces = []
    for repeat, rows in repeats:
        label = "" if repeat is None else f"repeat {repeat}: "
        found = rows["path"].map(position)
        if found.isna().any():
            first = rows["path"][found.isna()].iloc[0]
            raise DataError(
                f"{label}the split file lists {int(found.isna().sum())} image(s) not in the "
                f"manifest (first: {first}); rebuild the split for this manifest"
            )
        if len(rows) != len(table):
            raise DataError(
                f"{label}the split file covers {len(rows)} of the manifest's {len(table)} "
                "images; rebuild the split for this manifest"
            )
        order = found.to_numpy(dtype=int)
        if (keys[order] != rows["patient_key"].to_numpy()).any():
            raise DataError(
                f"{label}patient keys in the split file do not match the manifest: the "
                "manifest's patients changed, or MEDFT_PATIENT_SALT differs from the one "
                "used when the split was written"
            )
        columns = [c for c in rows.columns if c not in ("path", "patient_key")]
        piece = rows[columns].set_axis(table.index[order])
        pieces.append(piece.loc[table.index])
    if "repeat" not in saved.columns and list(pieces[0].columns) == ["split"]:
        return pieces[0]["split"]
    return pd.concat(pieces)
