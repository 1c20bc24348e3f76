"""The layout of a K-fold cross-validation study on disk, and reading it back.

A study lives in one folder::

    DIR/study.json          settings (config, folds, repeats, seed, labels, subgroup columns)
    DIR/folds.csv           patient-grouped, label-stratified assignment, written before training
    DIR/audit/              the quick shortcut audit of the whole manifest, run once before
                            training (audit.json, audit.html); its warning reaches the summary
    DIR/fold_I/             one LightningCLI fit run (checkpoints/, logs, splits.csv) plus
        predictions.csv     the held-out fold predicted by the best checkpoint
        metrics.json        that fold's metrics with patient-bootstrap intervals
        DONE                written last, atomically: the fold is complete
    DIR/oof_predictions.csv every image once per repeat, predicted by the model that never saw it
    DIR/summary.json        per-fold metrics, mean and sd over folds, pooled out-of-fold metrics
    DIR/report.html         per-fold table and ROC curves

(with ``--repeats R > 1`` the fold folders are ``repeat_R/fold_I``). A fold's training
config *is* a ``medft fit`` config: each fold runs ``run_lightning("fit", ["--config", X,
*overrides, "--data.split_file", folds.csv, "--data.fold", I, ...])``, and the datamodule
carves the inner validation split out of the training folds by patient. Nothing counts as
finished until its ``DONE`` marker exists, so a killed study rerun with ``resume=True``
keeps finished folds and continues the interrupted one from ``checkpoints/last.ckpt``.

This module owns the folder (settings, folds, what is finished); running folds is
:mod:`medft.workflows.cv` (it trains), summarising and comparing is :mod:`medft.eval.cv`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from medft._io import write_json, write_text
from medft.data.audit import audit_manifest
from medft.data.manifest import Manifest, load_manifest
from medft.data.splits import (
    align_assignment,
    folds_for_repeat,
    kfold_split,
    read_assignment,
    write_assignment,
)
from medft.errors import ConfigError, DataError, MedftError

__all__ = [
    "AUDIT_DIR",
    "CONFIG_YAML",
    "DATA_SETTINGS",
    "DONE",
    "FOLDS_CSV",
    "OOF_CSV",
    "REPORT_HTML",
    "STUDY_JSON",
    "SUMMARY_JSON",
    "TEST_SKIPPED_CSV",
    "FoldId",
    "IncompleteStudyError",
    "check_coverage",
    "check_data_settings",
    "collect_predictions",
    "collect_skipped",
    "finished_folds",
    "fold_dir",
    "fold_ids",
    "held_out",
    "load_study_manifest",
    "missing_folds",
    "now_utc",
    "prepare",
    "read_study",
    "relative_to",
    "saved_audit_warning",
    "study_audit",
    "study_config",
]

STUDY_JSON = "study.json"
FOLDS_CSV = "folds.csv"
DONE = "DONE"
OOF_CSV = "oof_predictions.csv"
SUMMARY_JSON = "summary.json"
REPORT_HTML = "report.html"
AUDIT_DIR = "audit"
CONFIG_YAML = "config.yaml"
TEST_SKIPPED_CSV = "test_skipped_files.csv"
#: Settings that must match when a study folder is reused (resume, --fold jobs).
_FIXED_KEYS = (
    "config_sha256", "overrides", "folds", "repeats", "seed", "manifest", "labels", "uncertain",
    "by",
)  # fmt: skip


class IncompleteStudyError(DataError):
    """Some folds of a study have not finished (the message names them)."""


@dataclass(frozen=True, order=True)
class FoldId:
    """One fold of one repeat."""

    repeat: int
    fold: int

    def describe(self) -> str:
        """``"fold 2"`` or ``"repeat 1 fold 2"`` is spelled the same everywhere."""
        return f"repeat {self.repeat} fold {self.fold}"


def fold_dir(out: str | Path, fid: FoldId, repeats: int) -> Path:
    """The folder of a fold: ``fold_I``, or ``repeat_R/fold_I`` for repeated studies."""
    base = Path(out)
    if repeats > 1:
        base = base / f"repeat_{fid.repeat}"
    return base / f"fold_{fid.fold}"


# -------------------------------------------------------------------- settings


def study_config(config: str | Path | Mapping[str, Any], out: Path) -> Path:
    """The YAML a fold trains from: the given file, or a dict written to ``DIR/config.yaml``."""
    if isinstance(config, Mapping):
        path = out / CONFIG_YAML
        write_text(path, yaml.safe_dump(dict(config), sort_keys=False))
        return path
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (a `medft fit` YAML config)")
    return path


DATA_SETTINGS = ("manifest", "labels", "uncertain")
"""The data settings a study fixes before training (``study.json``)."""


def check_data_settings(config: Path, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data.manifest``, ``data.labels`` and ``data.uncertain`` as plain values, checked.

    ``data`` is the ``data`` section of the config as ``medft fit`` resolves it (the
    workflow asks LightningCLI), so the study splits the very manifest its folds train on.
    """
    if not data.get("manifest"):
        raise ConfigError(
            f"{config}: no data.manifest; set it in the config or pass "
            "`-- --data.manifest labels.csv`"
        )
    labels = data.get("labels")
    return {
        "manifest": str(data["manifest"]),
        "labels": None if labels is None else [str(v) for v in labels],
        "uncertain": str(data.get("uncertain") or "ignore"),
    }


def load_study_manifest(settings: Mapping[str, Any]) -> Manifest:
    """The study's manifest, loaded with its labels and uncertain-label policy."""
    return load_manifest(
        settings["manifest"], labels=settings["labels"], uncertain=settings["uncertain"]
    )


def read_study(out: Path) -> dict[str, Any]:
    """The settings in ``DIR/study.json`` (a ConfigError when the folder holds no study)."""
    path = out / STUDY_JSON
    if not path.is_file():
        raise ConfigError(f"{out}: not a medft cv study (no {STUDY_JSON}); run `medft cv` first")
    return json.loads(path.read_text(encoding="utf-8"))


def fold_ids(study: Mapping[str, Any]) -> list[FoldId]:
    """Every fold of every repeat, in order."""
    return [FoldId(r, f) for r in range(study["repeats"]) for f in range(study["folds"])]


def prepare(
    config: str | Path | Mapping[str, Any],
    *,
    folds: int = 5,
    out: str | Path,
    repeats: int = 1,
    seed: int = 0,
    data: Mapping[str, Any],
    overrides: Sequence[str] = (),
    by: Sequence[str] = (),
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Create (or check) a study folder: ``study.json`` and ``folds.csv``, before any training.

    ``data`` is the config's ``data`` section as ``medft fit`` resolves it with the
    overrides (:func:`medft.workflows.cv.resolved_data` asks LightningCLI); only its
    ``manifest``, ``labels`` and ``uncertain`` are read.

    Safe to call from several jobs at once (a SLURM array): every job computes the same
    assignment from the same seed and writes it atomically. A folder holding a study with
    other settings is refused, naming the setting that differs.

    Returns:
        The study settings (what ``study.json`` holds).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = study_config(config, out)
    overrides = [str(o) for o in overrides]
    settings = check_data_settings(config_path, data)
    manifest = load_study_manifest(settings)
    study = {
        "config": str(config_path),
        "config_sha256": hashlib.sha256(config_path.read_bytes()).hexdigest(),
        "overrides": overrides,
        "folds": int(folds),
        "repeats": int(repeats),
        "seed": int(seed),
        "manifest": settings["manifest"],
        "labels": list(manifest.labels),
        "uncertain": settings["uncertain"],
        "task": manifest.task,
        "by": list(by),
        "n_boot": int(n_boot),
    }
    existing = out / STUDY_JSON
    if existing.is_file():
        old = json.loads(existing.read_text(encoding="utf-8"))
        for key in _FIXED_KEYS:
            if old.get(key) != study[key]:
                raise ConfigError(
                    f"{out} holds a study with {key}={old.get(key)!r}, not {study[key]!r}; "
                    "use the same settings to resume it, or another --out for a new study"
                )
    assignment = kfold_split(
        manifest.table, labels=manifest.labels, k=int(folds), seed=int(seed), repeats=int(repeats)
    )
    folds_csv = out / FOLDS_CSV
    if folds_csv.is_file():
        saved = read_assignment(folds_csv)
        fresh = assignment.assign(path=manifest.table.loc[assignment.index, "path"].to_numpy())
        key = ["repeat", "path"]
        same = (
            saved.sort_values(key)[[*key, "fold"]]
            .reset_index(drop=True)
            .equals(fresh.sort_values(key)[[*key, "fold"]].reset_index(drop=True))
        )
        if not same:
            raise DataError(
                f"{folds_csv} does not match the folds this manifest and seed give (the "
                "manifest changed?); start a new study in another folder"
            )
    else:
        write_assignment(folds_csv, manifest.table, assignment)
    if not existing.is_file():
        write_json(existing, {**study, "created_utc": now_utc()})
    return study


def study_audit(out: str | Path, *, say: Callable[[str], object] = print) -> str | None:
    """The study's shortcut audit: run once on the whole manifest, then read back.

    Every fold trains on the same manifest, so one quick (headers-only) audit before the
    first fold replaces a per-fold one; folds run with ``--data.audit false`` and the
    warning, if any, goes into ``summary.json`` and ``report.html``. Several jobs of a
    SLURM array may run it at once; the files are written atomically.

    Returns:
        The warning paragraph, or None when nothing was flagged (or the audit could not
        read the data: the fold's bad-file policy then reports the files).
    """
    out = Path(out)
    if (out / AUDIT_DIR / "audit.json").is_file():
        return saved_audit_warning(out)
    study = read_study(out)
    manifest = load_study_manifest(study)
    try:
        report = audit_manifest(manifest, labels=list(study["labels"]), quick=True)
    except MedftError as exc:
        say(f"shortcut audit skipped: {exc}")
        return None
    report.write(out / AUDIT_DIR)
    warning = report.warning()
    if warning:
        say(f"shortcut audit (details in {out / AUDIT_DIR / 'audit.html'}): {warning}")
    return warning


def saved_audit_warning(out: Path) -> str | None:
    """The warning of the study's audit, if it ran (older studies have none)."""
    saved = out / AUDIT_DIR / "audit.json"
    if not saved.is_file():
        return None
    return json.loads(saved.read_text(encoding="utf-8")).get("warning")


def missing_folds(out: str | Path) -> list[FoldId]:
    """Folds of the study in ``out`` without a DONE marker."""
    out = Path(out)
    study = read_study(out)
    return [f for f in fold_ids(study) if not (fold_dir(out, f, study["repeats"]) / DONE).is_file()]


def finished_folds(out: str | Path) -> list[tuple[FoldId, Path, dict[str, Any]]]:
    """``(fold, its folder, its DONE record)`` for every finished fold of a study, in order.

    Raises:
        ConfigError: ``out`` is not a study folder.
        IncompleteStudyError: no fold has finished yet.
    """
    out = Path(out)
    study = read_study(out)
    found = []
    for fid in fold_ids(study):
        directory = fold_dir(out, fid, study["repeats"])
        if (directory / DONE).is_file():
            found.append((fid, directory, json.loads((directory / DONE).read_text("utf-8"))))
    if not found:
        raise IncompleteStudyError(f"{out}: no fold of this study has finished yet")
    return found


def collect_predictions(
    out: Path, study: Mapping[str, Any], *, allow_missing: bool = False
) -> pd.DataFrame:
    """Concatenate the finished folds' predictions (every fold when not ``allow_missing``)."""
    missing = missing_folds(out)
    if missing and not allow_missing:
        names = ", ".join(f.describe() for f in missing)
        raise IncompleteStudyError(
            f"{out}: {len(missing)} of {len(fold_ids(study))} fold(s) are not finished: "
            f"{names}. Run each with `medft cv --config {study['config']} --folds "
            f"{study['folds']} --out {out} --fold I --resume`, then `medft cv aggregate {out}`"
        )
    frames = []
    for fid in fold_ids(study):
        if fid in missing:
            continue
        path = fold_dir(out, fid, study["repeats"]) / "predictions.csv"
        frames.append(pd.read_csv(path, dtype={"patient_key": str, "path": str}))
    if not frames:
        return pd.DataFrame(columns=["repeat", "fold", "path", "patient_key"])
    return pd.concat(frames, ignore_index=True)


def collect_skipped(out: Path, study: Mapping[str, Any]) -> pd.DataFrame:
    """The unreadable held-out files of every fold (``repeat`` and ``fold`` added)."""
    frames = []
    for fid in fold_ids(study):
        path = fold_dir(out, fid, study["repeats"]) / TEST_SKIPPED_CSV
        table = pd.read_csv(path, dtype=str) if path.is_file() else pd.DataFrame()
        if len(table):
            frames.append(table.assign(repeat=fid.repeat, fold=fid.fold))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def check_coverage(out: Path, oof: pd.DataFrame, skipped: pd.DataFrame) -> None:
    """Every image of folds.csv exactly once per repeat (predicted or listed as unreadable)."""
    assignment = read_assignment(out / FOLDS_CSV)
    if "repeat" not in assignment.columns:
        assignment = assignment.assign(repeat=0)
    duplicated = oof.duplicated(subset=["repeat", "path"])
    if duplicated.any():
        row = oof[duplicated].iloc[0]
        raise DataError(
            f"{out}: {int(duplicated.sum())} image(s) were predicted twice in one repeat "
            f"(first: {row['path']} in repeat {row['repeat']}); the fold folders are inconsistent"
        )
    accounted = pd.concat(
        [oof[["repeat", "path", "fold"]], skipped.reindex(columns=["repeat", "path", "fold"])]
    ).astype({"repeat": int, "fold": int})
    merged = assignment.merge(accounted, on=["repeat", "path"], how="left", suffixes=("", "_got"))
    lost = merged["fold_got"].isna()
    if lost.any():
        raise DataError(
            f"{out}: {int(lost.sum())} image(s) of {FOLDS_CSV} have no out-of-fold prediction "
            f"(first: {merged.loc[lost, 'path'].iloc[0]})"
        )
    wrong = merged["fold_got"] != merged["fold"]
    if wrong.any():
        raise DataError(
            f"{out}: {int(wrong.sum())} image(s) were predicted in another fold than "
            f"{FOLDS_CSV} assigns (first: {merged.loc[wrong, 'path'].iloc[0]})"
        )


def held_out(study: Mapping[str, Any], out: Path, fid: FoldId) -> Manifest:
    """The manifest rows that ``folds.csv`` assigns to ``fid`` (its test patients)."""
    manifest = load_study_manifest(
        {"manifest": study["manifest"], "labels": study["labels"], "uncertain": study["uncertain"]}
    )
    assignment = align_assignment(manifest.table, read_assignment(out / FOLDS_CSV))
    return manifest.subset(folds_for_repeat(assignment, fid.repeat) == fid.fold)


def relative_to(path: Path, directory: Path) -> str:
    """``path`` relative to ``directory`` (both resolved), as a string."""
    return str(path.resolve().relative_to(directory.resolve()))


def now_utc() -> str:
    """The current UTC time as ``YYYY-mm-dd HH:MM:SS``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
