"""Experiment trackers: hand a run's record to the loggers that keep files (MLflow).

Lightning's loggers plug into ``medft fit`` through ``trainer.logger`` (``class_path`` and
``init_args``); metrics reach every logger as they are logged. Files are another matter:
after a fit, :func:`log_run_artifacts` gives each MLflow logger the run's resolved
``config.yaml`` and ``run.json`` (command line, versions), so the MLflow run says how it was
made. ``medft evaluate``'s report goes into the same run with :func:`log_folder`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medft.provenance import RUN_JSON

__all__ = ["log_folder", "log_run_artifacts", "mlflow_loggers"]

CONFIG_NAME = "config.yaml"
"""The file LightningCLI writes the resolved config to, in the trainer's log folder."""


def mlflow_loggers(trainer: Any) -> list[Any]:
    """The trainer's ``MLFlowLogger`` instances (none when MLflow is not in use)."""
    from lightning.pytorch.loggers import MLFlowLogger

    return [logger for logger in trainer.loggers if isinstance(logger, MLFlowLogger)]


def log_run_artifacts(trainer: Any) -> list[str]:
    """Log ``config.yaml`` and ``run.json`` of a finished fit to each MLflow logger's run.

    Runs on rank 0 only. Returns the run ids that received files.
    """
    if not trainer.is_global_zero:
        return []
    loggers = mlflow_loggers(trainer)
    if not loggers:
        return []
    root = Path(trainer.default_root_dir)
    files = [root / RUN_JSON]
    for folder in dict.fromkeys([trainer.log_dir, str(root)]):
        if folder and (Path(folder) / CONFIG_NAME).is_file():
            files.append(Path(folder) / CONFIG_NAME)
            break
    done = []
    for logger in loggers:
        for path in files:
            if path.is_file():
                logger.experiment.log_artifact(logger.run_id, str(path))
        done.append(str(logger.run_id))
    return done


def log_folder(
    tracking_uri: str, run_id: str, folder: str | os.PathLike[str], artifact_path: str
) -> None:
    """Add every file of ``folder`` (e.g. ``medft evaluate --out``) to an MLflow run.

    Args:
        tracking_uri: Where the runs are (``file:./mlruns``, ``sqlite:///mlflow.db``, a server).
        run_id: The run, as ``medft fit`` printed it.
        folder: The files to add (report.html, metrics.json, figures...).
        artifact_path: Folder name inside the run's artifacts (``evaluation``).
    """
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).log_artifacts(run_id, str(folder), artifact_path)
