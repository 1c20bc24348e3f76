"""``medft cv``: run the folds of a K-fold cross-validation study (it trains).

Each fold is a ``medft fit`` run on its training folds (LightningCLI), then the
:class:`~medft.inference.Predictor` over its held-out patients; ``DONE`` is written last.
The study's folder layout is :mod:`medft.eval.study`; summarising and comparing studies is
:mod:`medft.eval.cv`. This module sits in the workflows layer because it drives training.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from medft import signals
from medft._io import check_output_dir, write_json
from medft.errors import CheckpointError, ConfigError
from medft.eval.cv import aggregate, fold_metrics, format_pooled_auroc
from medft.eval.evaluate import table_metrics, write_table
from medft.eval.predict import predict_manifest
from medft.eval.study import (
    DONE,
    FOLDS_CSV,
    REPORT_HTML,
    SUMMARY_JSON,
    TEST_SKIPPED_CSV,
    FoldId,
    collect_predictions,
    fold_dir,
    fold_ids,
    held_out,
    missing_folds,
    now_utc,
    prepare,
    read_study,
    relative_to,
    study_audit,
    study_config,
)
from medft.inference import Predictor, skipped_table
from medft.lightning_cli import best_checkpoint_path, last_checkpoint_path, run_lightning
from medft.model.checkpoint import read_checkpoint
from medft.progress import progress

__all__ = ["readable_checkpoint", "run", "run_fold"]

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


def readable_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a complete checkpoint (a kill can interrupt Lightning's write)."""
    if not path.is_file():
        return False
    try:
        read_checkpoint(path)
    except CheckpointError:
        return False
    return True


def run_fold(
    study: Mapping[str, Any], out: Path, fid: FoldId, *, resume: bool, say: Any
) -> dict[str, Any]:
    """Fit one fold, predict its held-out patients, write predictions, metrics and DONE."""
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
        if readable_checkpoint(last):
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
        predictor, held_out(study, out, fid), extra_columns=study["by"], quiet=True, **settings
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
        "best_checkpoint": relative_to(best, directory),
        "resumed_from": None if resume_from is None else relative_to(Path(resume_from), directory),
        "epochs": epochs,
        "thresholds": predictions.thresholds,
        "n_images": len(table),
        "n_skipped": len(predictions.skipped),
        "seconds": round(time.perf_counter() - started, 1),
        "finished_utc": now_utc(),
    }
    signals.raise_if_received(f"{fid.describe()} not finished; rerun with --resume")
    write_json(done, record)
    say(f"{fid.describe()}: done in {record['seconds']:.0f} s ({len(table)} images predicted)")
    return record


# ------------------------------------------------------------------ the study


def resolved_data(config: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The ``data`` section of ``config`` + ``overrides`` as ``medft fit`` itself resolves it.

    LightningCLI parses them (``--print_config``: nothing is built or trained), so nested
    config files, ``--data other.yaml``, ``--data.labels '[a, b]'`` and the data module's own
    defaults all count, and a config that ``medft fit`` would refuse is refused here, before
    the study folder is written.
    """
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            run_lightning("fit", ["--config", str(config), *overrides, "--print_config"])
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise ConfigError(f"{config}: `medft fit` cannot parse this config") from None
    resolved = yaml.safe_load(printed.getvalue()) or {}
    return dict(resolved.get("data") or {})


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
    config_path = study_config(config, out)
    overrides = [str(o) for o in overrides]
    study = prepare(
        config_path, folds=folds, out=out, repeats=repeats, seed=seed,
        data=resolved_data(config_path, overrides), overrides=overrides, by=by, n_boot=n_boot,
    )  # fmt: skip
    todo = fold_ids(study)
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
            run_fold(study, out, fid, resume=resume, say=say)
            bar.advance()
    missing = missing_folds(out)
    if not missing:
        summary = aggregate(out)
        macro = summary["pooled"]["repeat_0"]["auroc"]["macro"]
        say(
            f"pooled out-of-fold macro AUROC {format_pooled_auroc(macro)}; summary in "
            f"{out / SUMMARY_JSON}, report in {out / REPORT_HTML}"
        )
    else:
        names = ", ".join(f.describe() for f in missing)
        say(f"not aggregated yet: {names} unfinished; then run `medft cv aggregate {out}`")
    oof = collect_predictions(out, read_study(out), allow_missing=True)
    return fold_metrics(oof, read_study(out)["labels"])
