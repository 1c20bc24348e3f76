"""K-fold cross-validation studies: run, resume, scale out, aggregate, compare.

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
"""

from __future__ import annotations

import datetime as dt
import gc
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from medft import __version__, signals
from medft._io import check_output_dir, check_output_file, write_bytes, write_json, write_text
from medft.errors import ConfigError, DataError, MedftError
from medft.eval import plots
from medft.eval.evaluate import table_metrics, write_table
from medft.eval.metrics import auroc, delong_test, paired_bootstrap, roc_band
from medft.eval.predict import predict_manifest
from medft.eval.report import NOTICE, cv_report
from medft.eval.subgroups import gap_warnings, subgroup_metrics
from medft.inference import Predictor, prob_column, skipped_table
from medft.progress import progress

__all__ = [
    "FoldId",
    "IncompleteStudyError",
    "aggregate",
    "compare",
    "finished_folds",
    "fold_dir",
    "fold_metrics",
    "format_comparison",
    "format_summary",
    "missing_folds",
    "prepare",
    "run",
    "study_audit",
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


def _config_path(config: str | Path | Mapping[str, Any], out: Path) -> Path:
    """The YAML a fold trains from: the given file, or a dict written to ``DIR/config.yaml``."""
    if isinstance(config, Mapping):
        path = out / CONFIG_YAML
        write_text(path, yaml.safe_dump(dict(config), sort_keys=False))
        return path
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (a `medft fit` YAML config)")
    return path


def _override_value(overrides: Sequence[str], key: str) -> str | None:
    """The last value given for ``--key VALUE`` or ``--key=VALUE`` in the overrides."""
    flag = f"--{key}"
    found = None
    for i, word in enumerate(overrides):
        if word == flag and i + 1 < len(overrides):
            found = overrides[i + 1]
        elif word.startswith(flag + "="):
            found = word[len(flag) + 1 :]
    return found


def _data_settings(config: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """``data.manifest``, ``data.labels`` and ``data.uncertain`` from the config + overrides."""
    try:
        parsed = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config}: not valid YAML ({exc})") from None
    data = dict(parsed.get("data") or {}) if isinstance(parsed, Mapping) else {}
    for key in ("manifest", "labels", "uncertain"):
        value = _override_value(overrides, f"data.{key}")
        if value is not None:
            data[key] = yaml.safe_load(value) if key == "labels" else value
    if not data.get("manifest"):
        raise ConfigError(
            f"{config}: no data.manifest; set it in the config or pass "
            "`-- --data.manifest labels.csv`"
        )
    labels = data.get("labels")
    return {
        "manifest": str(data["manifest"]),
        "labels": None if labels is None else [str(v) for v in labels],
        "uncertain": str(data.get("uncertain", "ignore")),
    }


def _load_study_manifest(settings: Mapping[str, Any]):
    from medft.data.manifest import load_manifest

    return load_manifest(
        settings["manifest"], labels=settings["labels"], uncertain=settings["uncertain"]
    )


def _read_study(out: Path) -> dict[str, Any]:
    path = out / STUDY_JSON
    if not path.is_file():
        raise ConfigError(f"{out}: not a medft cv study (no {STUDY_JSON}); run `medft cv` first")
    return json.loads(path.read_text(encoding="utf-8"))


def _fold_ids(study: Mapping[str, Any]) -> list[FoldId]:
    return [FoldId(r, f) for r in range(study["repeats"]) for f in range(study["folds"])]


def prepare(
    config: str | Path | Mapping[str, Any],
    *,
    folds: int = 5,
    out: str | Path,
    repeats: int = 1,
    seed: int = 0,
    overrides: Sequence[str] = (),
    by: Sequence[str] = (),
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Create (or check) a study folder: ``study.json`` and ``folds.csv``, before any training.

    Safe to call from several jobs at once (a SLURM array): every job computes the same
    assignment from the same seed and writes it atomically. A folder holding a study with
    other settings is refused, naming the setting that differs.

    Returns:
        The study settings (what ``study.json`` holds).
    """
    from medft.data.splits import kfold_split, read_assignment, write_assignment

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = _config_path(config, out)
    overrides = [str(o) for o in overrides]
    settings = _data_settings(config_path, overrides)
    manifest = _load_study_manifest(settings)
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
        write_json(existing, {**study, "created_utc": _now()})
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
    from medft.data.audit import audit_manifest

    out = Path(out)
    if (out / AUDIT_DIR / "audit.json").is_file():
        return _saved_audit_warning(out)
    study = _read_study(out)
    manifest = _load_study_manifest(study)
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


# ------------------------------------------------------------------- one fold


def _fold_args(study: Mapping[str, Any], out: Path, fid: FoldId, directory: Path) -> list[str]:
    return [
        "--config",
        study["config"],
        "--data.audit",  # the study audited the whole manifest once (study_audit)
        "false",
        *study["overrides"],
        "--data.split_file",
        str(out / FOLDS_CSV),
        "--data.fold",
        str(fid.fold),
        "--data.repeat",
        str(fid.repeat),
        "--trainer.default_root_dir",
        str(directory),
    ]


def _readable_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a complete checkpoint (a kill can interrupt Lightning's write)."""
    from medft.errors import CheckpointError
    from medft.model.checkpoint import read_checkpoint

    if not path.is_file():
        return False
    try:
        read_checkpoint(path)
    except CheckpointError:
        return False
    return True


def _held_out(study: Mapping[str, Any], out: Path, fid: FoldId):
    """The manifest rows that ``folds.csv`` assigns to ``fid`` (its test patients)."""
    from medft.data.splits import align_assignment, folds_for_repeat, read_assignment

    manifest = _load_study_manifest(
        {"manifest": study["manifest"], "labels": study["labels"], "uncertain": study["uncertain"]}
    )
    assignment = align_assignment(manifest.table, read_assignment(out / FOLDS_CSV))
    return manifest.subset(folds_for_repeat(assignment, fid.repeat) == fid.fold)


def _run_fold(
    study: Mapping[str, Any], out: Path, fid: FoldId, *, resume: bool, say: Any
) -> dict[str, Any]:
    """Fit one fold, predict its held-out patients, write predictions, metrics and DONE."""
    from medft.lightning_cli import best_checkpoint_path, last_checkpoint_path, run_lightning

    directory = fold_dir(out, fid, study["repeats"])
    done = directory / DONE
    if done.is_file():
        say(f"{fid.describe()}: finished earlier, kept")
        return json.loads(done.read_text(encoding="utf-8"))
    last = directory / "checkpoints" / "last.ckpt"
    resume_from = None
    if directory.exists() and any(directory.iterdir()):
        if not resume:
            raise ConfigError(
                f"{directory} holds an unfinished run of {fid.describe()}; rerun with --resume "
                "(continues from its last checkpoint) or delete the folder"
            )
        if _readable_checkpoint(last):
            resume_from = str(last)
        else:
            # Killed before the first checkpoint was complete: start the fold again.
            say(f"{fid.describe()}: no complete last.ckpt to resume from; restarting the fold")
            shutil.rmtree(directory / "checkpoints", ignore_errors=True)
    started = time.perf_counter()
    what = f"resuming from {last.name}" if resume_from else "training"
    say(f"{fid.describe()}: {what} in {directory}")
    cli = run_lightning("fit", _fold_args(study, out, fid, directory), run=False)
    if not cli.trainer.checkpoint_callbacks:
        raise ConfigError(
            "medft cv needs a ModelCheckpoint callback (save_last: true) to pick the best "
            "epoch and to resume; the config removed it"
        )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume_from)
    signals.raise_if_received(f"{fid.describe()} not finished; rerun with --resume")
    best = best_checkpoint_path(cli.trainer) or last_checkpoint_path(cli.trainer) or last
    if not best.is_file():
        raise ConfigError(f"{directory}: no checkpoint was saved; set save_last: true")
    datamodule = cli.datamodule
    epochs = int(cli.trainer.current_epoch)
    settings = {"batch_size": datamodule.batch_size, "on_bad_file": datamodule.on_bad_file}
    del cli
    gc.collect()

    # The held-out part goes through the same Predictor as `medft predict`: the checkpoint
    # says how its inputs were made (image size, fit mode, cached pixel type).
    predictor = Predictor.from_checkpoint(best)
    predictions = predict_manifest(
        predictor, _held_out(study, out, fid), extra_columns=study["by"], quiet=True, **settings
    )
    table = predictions.table
    table.insert(0, "fold", fid.fold)
    table.insert(0, "repeat", fid.repeat)
    metrics = table_metrics(
        table, predictions.labels, predictions.thresholds, n_boot=study["n_boot"],
        seed=study["seed"],
    )  # fmt: skip
    metrics["skipped_files"] = {"count": len(predictions.skipped), "csv": TEST_SKIPPED_CSV}
    write_table(directory / "predictions.csv", table)
    write_table(directory / TEST_SKIPPED_CSV, skipped_table(predictions.skipped))
    write_json(directory / "metrics.json", metrics)
    record = {
        "repeat": fid.repeat,
        "fold": fid.fold,
        "best_checkpoint": _relative(best, directory),
        "resumed_from": None if resume_from is None else _relative(Path(resume_from), directory),
        "epochs": epochs,
        "thresholds": predictions.thresholds,
        "n_images": len(table),
        "n_skipped": len(predictions.skipped),
        "seconds": round(time.perf_counter() - started, 1),
        "finished_utc": _now(),
    }
    signals.raise_if_received(f"{fid.describe()} not finished; rerun with --resume")
    write_json(done, record)
    say(f"{fid.describe()}: done in {record['seconds']:.0f} s ({len(table)} images predicted)")
    return record


# ------------------------------------------------------------------ the study


def run(
    config: str | Path | Mapping[str, Any],
    folds: int = 5,
    out: str | Path = "medft-cv",
    *,
    repeats: int = 1,
    fold: int | None = None,
    repeat: int | None = None,
    resume: bool = False,
    seed: int = 0,
    overrides: Sequence[str] = (),
    by: Sequence[str] = (),
    n_boot: int = 1000,
    quiet: bool = False,
) -> pd.DataFrame:
    """Run a K-fold cross-validation study (or some of its folds).

    Args:
        config: A ``medft fit`` YAML config (path) or the same as a dict.
        folds: K.
        out: Study folder.
        repeats: Repeated K-fold (independent re-shufflings).
        fold: Run only this fold (scale-out: one job per fold); None runs all.
        repeat: With ``fold``, only this repeat (default: that fold of every repeat).
        resume: Continue an interrupted fold from its ``last.ckpt``.
        seed: Seed of the fold assignment.
        overrides: Extra LightningCLI arguments for every fold (``--trainer.max_epochs 3``).
        by: Subgroup columns reported in the summary (manifest columns or DICOM metadata).
        n_boot: Bootstrap resamples for every interval.
        quiet: Print nothing.

    Returns:
        Metrics of every finished fold (one row per fold; see :func:`fold_metrics`). When
        all folds are finished the study is aggregated (``summary.json``, ``report.html``).
    """
    say = (lambda *_: None) if quiet else print
    out = check_output_dir(out)
    study = prepare(
        config, folds=folds, out=out, repeats=repeats, seed=seed, overrides=overrides, by=by,
        n_boot=n_boot,
    )  # fmt: skip
    todo = _fold_ids(study)
    if fold is not None:
        if not 0 <= int(fold) < int(folds):
            raise ConfigError(
                f"--fold {fold} is not a fold of a {folds}-fold study (0-{folds - 1})"
            )
        todo = [f for f in todo if f.fold == int(fold)]
    if repeat is not None:
        todo = [f for f in todo if f.repeat == int(repeat)]
    say(f"study in {out}: folds written to {out / FOLDS_CSV}; {len(todo)} fold(s) to run")
    study_audit(out, say=say)
    # Plain lines, never a bar: each fold's fit draws Lightning's own bar on a terminal.
    with progress("cv", total=len(todo), unit="folds", quiet=quiet or None, style="lines") as bar:
        for fid in todo:
            _run_fold(study, out, fid, resume=resume, say=say)
            bar.advance()
    missing = missing_folds(out)
    if not missing:
        summary = aggregate(out)
        macro = summary["pooled"]["repeat_0"]["auroc"]["macro"]
        say(
            f"pooled out-of-fold macro AUROC {_fmt(macro)}; summary in "
            f"{out / SUMMARY_JSON}, report in {out / REPORT_HTML}"
        )
    else:
        names = ", ".join(f.describe() for f in missing)
        say(f"not aggregated yet: {names} unfinished; then run `medft cv aggregate {out}`")
    oof = _collect(out, _read_study(out), allow_missing=True)
    return fold_metrics(oof, _read_study(out)["labels"])


def _saved_audit_warning(out: Path) -> str | None:
    """The warning of the study's audit, if it ran (older studies have none)."""
    saved = out / AUDIT_DIR / "audit.json"
    if not saved.is_file():
        return None
    return json.loads(saved.read_text(encoding="utf-8")).get("warning")


def missing_folds(out: str | Path) -> list[FoldId]:
    """Folds of the study in ``out`` without a DONE marker."""
    out = Path(out)
    study = _read_study(out)
    return [
        f for f in _fold_ids(study) if not (fold_dir(out, f, study["repeats"]) / DONE).is_file()
    ]


def finished_folds(out: str | Path) -> list[tuple[FoldId, Path, dict[str, Any]]]:
    """``(fold, its folder, its DONE record)`` for every finished fold of a study, in order.

    Raises:
        ConfigError: ``out`` is not a study folder.
        IncompleteStudyError: no fold has finished yet.
    """
    out = Path(out)
    study = _read_study(out)
    found = []
    for fid in _fold_ids(study):
        directory = fold_dir(out, fid, study["repeats"])
        if (directory / DONE).is_file():
            found.append((fid, directory, json.loads((directory / DONE).read_text("utf-8"))))
    if not found:
        raise IncompleteStudyError(f"{out}: no fold of this study has finished yet")
    return found


def _collect(out: Path, study: Mapping[str, Any], *, allow_missing: bool = False) -> pd.DataFrame:
    """Concatenate the finished folds' predictions (every fold when not ``allow_missing``)."""
    missing = missing_folds(out)
    if missing and not allow_missing:
        names = ", ".join(f.describe() for f in missing)
        raise IncompleteStudyError(
            f"{out}: {len(missing)} of {len(_fold_ids(study))} fold(s) are not finished: "
            f"{names}. Run each with `medft cv --config {study['config']} --folds "
            f"{study['folds']} --out {out} --fold I --resume`, then `medft cv aggregate {out}`"
        )
    frames = []
    for fid in _fold_ids(study):
        if fid in missing:
            continue
        path = fold_dir(out, fid, study["repeats"]) / "predictions.csv"
        frames.append(pd.read_csv(path, dtype={"patient_key": str, "path": str}))
    if not frames:
        return pd.DataFrame(columns=["repeat", "fold", "path", "patient_key"])
    return pd.concat(frames, ignore_index=True)


def _skipped(out: Path, study: Mapping[str, Any]) -> pd.DataFrame:
    frames = []
    for fid in _fold_ids(study):
        path = fold_dir(out, fid, study["repeats"]) / TEST_SKIPPED_CSV
        table = pd.read_csv(path, dtype=str) if path.is_file() else pd.DataFrame()
        if len(table):
            frames.append(table.assign(repeat=fid.repeat, fold=fid.fold))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _check_coverage(out: Path, oof: pd.DataFrame, skipped: pd.DataFrame) -> None:
    """Every image of folds.csv exactly once per repeat (predicted or listed as unreadable)."""
    from medft.data.splits import read_assignment

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


def fold_metrics(oof: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """Point metrics of every fold from out-of-fold predictions (no intervals).

    Columns: ``repeat``, ``fold``, ``n_images``, ``n_patients``, ``auroc_macro``,
    ``average_precision_macro`` and per finding ``auroc_<f>``, ``average_precision_<f>``,
    ``sensitivity_<f>``, ``specificity_<f>`` (at the fold's own operating point, from the
    ``call_`` columns), ``ece_<f>``, ``brier_<f>``.
    """
    labels = list(labels)
    records = []
    for (repeat, fold), part in oof.groupby(["repeat", "fold"], sort=True):
        metrics = table_metrics(part, labels, None, n_boot=0)
        record: dict[str, Any] = {
            "repeat": int(repeat),
            "fold": int(fold),
            "n_images": int(metrics["n_images"]),
            "n_patients": int(metrics["n_patients"]),
            "auroc_macro": metrics["auroc"]["macro"]["value"],
            "average_precision_macro": metrics["average_precision"]["macro"]["value"],
        }
        for label in labels:
            point = metrics["at_operating_point"][label]
            record[f"auroc_{label}"] = metrics["auroc"]["per_class"][label]["value"]
            record[f"average_precision_{label}"] = metrics["average_precision"]["per_class"][label][
                "value"
            ]
            record[f"sensitivity_{label}"] = point["sensitivity"]["value"]
            record[f"specificity_{label}"] = point["specificity"]["value"]
            record[f"ece_{label}"] = metrics["calibration"][label]["ece"]
            record[f"brier_{label}"] = metrics["calibration"][label]["brier"]
        records.append(record)
    columns = ["repeat", "fold", "n_images", "n_patients", "auroc_macro", "average_precision_macro"]
    return pd.DataFrame(records, columns=columns if not records else None)


def _mean_sd(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    out = {}
    for column in table.columns:
        if column in ("repeat", "fold"):
            continue
        values = table[column].to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[column] = {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "sd": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
            "n": int(finite.size),
        }
    return out


def _pooled_subgroups(
    oof: pd.DataFrame, labels: Sequence[str], by: Sequence[str], n_boot: int, seed: int
) -> dict[str, Any]:
    """Subgroup AUROC from pooled probabilities; sensitivity/specificity from each fold's calls."""
    common = dict(groups_col="patient_key", n_boot=n_boot, seed=seed)
    by_prob = subgroup_metrics(oof, list(by), list(labels), **common)
    by_call = subgroup_metrics(
        oof, list(by), list(labels), thresholds=dict.fromkeys(labels, 0.5),
        prob_column="call_{label}", **common,
    )  # fmt: skip
    result = by_prob.to_dict()
    calls = by_call.to_dict()["by"]
    for attribute, per_label in result["by"].items():
        for label, groups in per_label.items():
            for name, entry in groups.items():
                source = calls[attribute][label][name]
                entry["sensitivity"] = source["sensitivity"]
                entry["specificity"] = source["specificity"]
                entry["threshold"] = None
    return result


def aggregate(out: str | Path, *, n_boot: int | None = None, seed: int | None = None) -> dict:
    """Build ``oof_predictions.csv``, ``summary.json`` and ``report.html`` of a finished study.

    Raises:
        IncompleteStudyError: Some folds are not finished (they are named).
        DataError: The fold folders do not cover every image exactly once per repeat.
    """
    out = Path(out)
    study = _read_study(out)
    n_boot = study["n_boot"] if n_boot is None else int(n_boot)
    seed = study["seed"] if seed is None else int(seed)
    labels = list(study["labels"])
    oof = _collect(out, study)
    skipped = _skipped(out, study)
    _check_coverage(out, oof, skipped)
    per_fold = fold_metrics(oof, labels)
    pooled = {}
    for repeat, part in oof.groupby("repeat", sort=True):
        pooled[f"repeat_{int(repeat)}"] = table_metrics(
            part, labels, None, n_boot=n_boot, seed=seed
        )
    first = oof[oof["repeat"] == 0]
    summary: dict[str, Any] = {
        "notice": NOTICE,
        "medft_version": __version__,
        "created_utc": _now(),
        "study": {
            k: study[k]
            for k in ("config", "folds", "repeats", "seed", "labels", "by", "overrides", "manifest")
        },
        "folds": per_fold.to_dict(orient="records"),
        "mean_sd": _mean_sd(per_fold),
        "pooled": pooled,
        "data": {
            "n_images": len(first),
            "n_patients": int(first["patient_key"].nunique()),
            "positives": {label: int((first[label] == 1.0).sum()) for label in labels},
        },
        "skipped_files": {
            "count": int((skipped["repeat"] == 0).sum()) if len(skipped) else 0,
            "per_fold": skipped.groupby(["repeat", "fold"])
            .size()
            .rename("n")
            .reset_index()
            .to_dict(orient="records")
            if len(skipped)
            else [],
            "csv": f"fold folders' {TEST_SKIPPED_CSV}",
        },
        "warnings": [],
        "files": {"oof_predictions": OOF_CSV, "report": REPORT_HTML},
    }
    if study["by"]:
        summary["subgroups"] = _pooled_subgroups(first, labels, study["by"], n_boot, seed)
        summary["warnings"] += gap_warnings(summary["subgroups"])
    warning = _saved_audit_warning(out)
    if warning:
        summary["audit"] = {"warning": warning, "report": f"{AUDIT_DIR}/audit.html"}
        summary["warnings"].append(f"Shortcut audit: {warning}")
    if summary["skipped_files"]["count"]:
        summary["warnings"].append(
            f"{summary['skipped_files']['count']} file(s) could not be read and were left out "
            f"(listed in each fold's {TEST_SKIPPED_CSV})."
        )
    for label in labels:
        if pooled["repeat_0"]["auroc"]["per_class"][label].get("note"):
            summary["warnings"].append(
                f"pooled AUROC for {label!r} is undefined: "
                f"{pooled['repeat_0']['auroc']['per_class'][label]['note']}"
            )
    figure = _fold_figure(first, labels, pooled["repeat_0"], n_boot, seed)
    write_table(out / OOF_CSV, oof)
    write_bytes(out / "roc_folds.png", figure)
    write_json(out / SUMMARY_JSON, summary)
    write_text(out / REPORT_HTML, cv_report(summary, {"roc_folds": figure}))
    return summary


def _fold_figure(
    oof: pd.DataFrame, labels: Sequence[str], pooled: Mapping[str, Any], n_boot: int, seed: int
) -> bytes:
    curves: dict[str, list[plots.FoldCurve]] = {label: [] for label in labels}
    bands = {}
    for label in labels:
        for fold, part in oof.groupby("fold", sort=True):
            y = part[label].to_numpy(dtype=np.float64)
            p = part[prob_column(label)].to_numpy(dtype=np.float64)
            band = roc_band(y, p, None, n=0)
            if np.isfinite(band.tpr).all():
                name = f"fold {int(fold)}"
                curves[label].append(plots.FoldCurve(name, band.fpr, band.tpr, auroc(y, p)))
        y = oof[label].to_numpy(dtype=np.float64)
        p = oof[prob_column(label)].to_numpy(dtype=np.float64)
        defined = pooled["auroc"]["per_class"][label].get("note") is None
        bands[label] = (
            roc_band(y, p, oof["patient_key"].to_numpy(), n=n_boot, seed=seed) if defined else None
        )
    return plots.fold_roc_png(curves, bands, pooled["auroc"]["per_class"])


# --------------------------------------------------------------------- compare


def compare(
    dir_a: str | Path,
    dir_b: str | Path,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Compare two finished studies run on the same folds (A minus B).

    Reports per-fold AUROC differences (mean and sd over folds) and, per finding and repeat,
    a paired patient-level bootstrap of the pooled out-of-fold AUROC difference and the
    DeLong test (which treats images as independent; prefer the bootstrap when patients
    have several images).

    Raises:
        ConfigError: The studies were not run on the same folds or share no finding.
    """
    from medft.data.splits import read_assignment

    if out is not None:
        check_output_file(out)
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    study_a, study_b = _read_study(dir_a), _read_study(dir_b)
    folds_a = read_assignment(dir_a / FOLDS_CSV)
    folds_b = read_assignment(dir_b / FOLDS_CSV)
    key = [c for c in ("repeat", "path") if c in folds_a.columns]
    if (
        not folds_a.sort_values(key)
        .reset_index(drop=True)
        .equals(folds_b.sort_values(key).reset_index(drop=True))
    ):
        raise ConfigError(
            f"{dir_a} and {dir_b} were not run on the same folds; a paired comparison needs "
            "the same manifest, --folds, --repeats and --seed"
        )
    labels = [label for label in study_a["labels"] if label in study_b["labels"]]
    if not labels:
        raise ConfigError(f"{dir_a} and {dir_b} share no finding to compare")
    oof_a, oof_b = _collect(dir_a, study_a), _collect(dir_b, study_b)
    fold_a, fold_b = fold_metrics(oof_a, labels), fold_metrics(oof_b, labels)
    merged_folds = fold_a.merge(fold_b, on=["repeat", "fold"], suffixes=("_a", "_b"))
    per_fold = []
    for _, row in merged_folds.iterrows():
        record = {"repeat": int(row["repeat"]), "fold": int(row["fold"])}
        for metric in ["auroc_macro", *[f"auroc_{label}" for label in labels]]:
            record[f"{metric}_a"] = float(row[f"{metric}_a"])
            record[f"{metric}_b"] = float(row[f"{metric}_b"])
            record[f"{metric}_diff"] = float(row[f"{metric}_a"] - row[f"{metric}_b"])
        per_fold.append(record)
    diffs = pd.DataFrame(per_fold)
    diff_columns = [c for c in diffs.columns if c.endswith("_diff")]
    pooled: dict[str, Any] = {}
    columns = ["repeat", "path", "patient_key", *labels]
    for repeat, part_a in oof_a.groupby("repeat", sort=True):
        part_b = oof_b[oof_b["repeat"] == repeat]
        both = part_a[columns + [prob_column(x) for x in labels]].merge(
            part_b[["repeat", "path"] + [prob_column(x) for x in labels]],
            on=["repeat", "path"],
            suffixes=("_a", "_b"),
        )
        entry: dict[str, Any] = {
            "n_images": len(both),
            "n_patients": int(both["patient_key"].nunique()),
        }
        for label in labels:
            y = both[label].to_numpy(dtype=np.float64)
            p_a = both[f"{prob_column(label)}_a"].to_numpy(dtype=np.float64)
            p_b = both[f"{prob_column(label)}_b"].to_numpy(dtype=np.float64)
            groups = both["patient_key"].to_numpy()
            entry[label] = {
                "paired_bootstrap": paired_bootstrap(
                    y, p_a, p_b, groups, n=n_boot, seed=seed
                ).to_dict(),
                "delong": delong_test(y, p_a, p_b).to_dict(),
            }
        pooled[f"repeat_{int(repeat)}"] = entry
    result = {
        "a": str(dir_a),
        "b": str(dir_b),
        "labels": labels,
        "per_fold": per_fold,
        "per_fold_mean_sd": _mean_sd(diffs[diff_columns]) if len(diffs) else {},
        "pooled": pooled,
        "bootstrap": {"n": int(n_boot), "seed": int(seed), "unit": "patient"},
    }
    if out is not None:
        write_json(out, result)
    return result


def format_comparison(result: Mapping[str, Any]) -> str:
    """A short text table of :func:`compare`'s result for the terminal."""
    lines = [f"A = {result['a']}\nB = {result['b']}", "per-fold AUROC difference (A - B):"]
    for metric, entry in result["per_fold_mean_sd"].items():
        lines.append(
            f"  {metric.removesuffix('_diff'):<28} {entry['mean']:+.4f} ± {entry['sd']:.4f}"
        )
    for repeat, entry in result["pooled"].items():
        lines.append(f"pooled out-of-fold, {repeat} ({entry['n_images']} images):")
        for label in result["labels"]:
            boot, delong = entry[label]["paired_bootstrap"], entry[label]["delong"]
            lines.append(
                f"  {label:<20} AUROC {boot['value_a']:.4f} vs {boot['value_b']:.4f}  "
                f"diff {boot['difference']:+.4f} (95% CI {boot['ci_low']:+.4f} to "
                f"{boot['ci_high']:+.4f}, bootstrap p={boot['p_value']:.3g}; "
                f"DeLong p={delong['p_value']:.3g})"
            )
    return "\n".join(lines)


def format_summary(summary: Mapping[str, Any]) -> str:
    """A few lines for the terminal: per-fold mean and sd, pooled out-of-fold AUROC."""
    stats = summary["mean_sd"]
    lines = [
        f"{len(summary['folds'])} fold(s); macro AUROC over folds "
        f"{stats['auroc_macro']['mean']:.3f} ± {stats['auroc_macro']['sd']:.3f}"
    ]
    for repeat, pooled in summary["pooled"].items():
        lines.append(f"pooled out-of-fold ({repeat}):")
        for label, entry in pooled["auroc"]["per_class"].items():
            lines.append(f"  {label:<20} AUROC {_fmt(entry)}")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    return "\n".join(lines)


def _fmt(entry: Mapping[str, Any]) -> str:
    value, low, high = entry.get("value"), entry.get("ci_low"), entry.get("ci_high")
    if value is None or not math.isfinite(value):
        return "n/a"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:.3f}"
    return f"{value:.3f} (95% CI {low:.3f}-{high:.3f})"


def _relative(path: Path, directory: Path) -> str:
    return str(path.resolve().relative_to(directory.resolve()))


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
