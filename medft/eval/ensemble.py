"""The K fold models of a cross-validation study as one ensemble Predictor.

The ensemble averages the members' calibrated probabilities. Its operating point must not
be chosen on the data being scored, and no single member's validation threshold fits the
average, so it is chosen on the study's pooled out-of-fold predictions: every image of
the study's manifest, predicted by the fold model that never saw its patient, calibrated
with that model's temperature, with the method (Youden J or a target rate) the members'
own operating points used.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medft.errors import ConfigError
from medft.eval.calibration import apply_temperature
from medft.eval.cv import finished_folds
from medft.eval.operating import METHODS, choose_thresholds
from medft.inference import Predictor, prob_column
from medft.model.checkpoint import load_classifier

__all__ = ["out_of_fold_calibrated", "study_predictor"]


def out_of_fold_calibrated(study: str | Path) -> tuple[pd.DataFrame, list[Any]]:
    """Pooled out-of-fold rows with ``prob_<f>`` calibrated by each row's own fold model.

    Returns:
        ``(table, members)``: the held-out predictions of every finished fold (true labels
        and calibrated ``prob_`` columns) and the loaded fold checkpoints, in fold order.
    """
    frames, members = [], []
    for _fid, directory, record in finished_folds(study):
        member = load_classifier(directory / record["best_checkpoint"])
        table = pd.read_csv(directory / "predictions.csv", dtype={"patient_key": str})
        temperature = member.temperature if member.task != "multiclass" else None
        if temperature is not None:
            for label in member.labels:
                column = prob_column(label)
                table[column] = apply_temperature(
                    table[column].to_numpy(dtype=np.float64), float(temperature), kind="probs"
                )
        frames.append(table)
        members.append(member)
    return pd.concat(frames, ignore_index=True), members


def _method(members: list[Any]) -> tuple[str, float | None]:
    """The members' operating-point method and target (Youden J when they disagree)."""
    found = set()
    for member in members:
        for point in (member.meta.get("operating_points") or {}).values():
            found.add((str(point.get("method")), point.get("target")))
    found = {(m, t) for m, t in found if m in METHODS}
    if len(found) == 1:
        method, target = found.pop()
        return method, None if target is None else float(target)
    return "youden", None


def study_predictor(
    study: str | Path,
    *,
    tta: bool = False,
    tta_flip: bool = False,
    device: str | torch.device = "cpu",
) -> Predictor:
    """An ensemble :class:`~medft.inference.Predictor` of a study's finished fold models.

    Args:
        study: A ``medft cv`` output folder.
        tta: Test-time augmentation (see :mod:`medft.inference.tta`).
        tta_flip: Add a left-right flip to the views.
        device: Where the models run.

    Raises:
        ConfigError: The study has no finished fold or its folds disagree.
    """
    oof, members = out_of_fold_calibrated(study)
    labels = list(members[0].labels)
    missing = [label for label in labels if label not in oof.columns]
    if missing:
        raise ConfigError(f"{study}: out-of-fold predictions lack true labels for {missing}")
    method, target = _method(members)
    y = oof[labels].to_numpy(dtype=np.float64)
    p = oof[[prob_column(label) for label in labels]].to_numpy(dtype=np.float64)
    if members[0].task == "multiclass":
        thresholds = {label: 0.5 for label in labels}
        source = "default 0.5 (multiclass)"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            points = choose_thresholds(y, p, labels, method=method, target=target)  # type: ignore[arg-type]
        thresholds = {label: float(points[label].threshold) for label in labels}
        what = method if target is None else f"{method} {target:g}"
        source = f"study out-of-fold ({what}, {len(oof)} images, {len(members)} fold models)"
    return Predictor(
        members,
        thresholds=thresholds,
        threshold_source=source,
        tta=tta,
        tta_flip=tta_flip,
        device=device,
    )
