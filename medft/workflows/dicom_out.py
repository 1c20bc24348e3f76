"""``--dicom-out DIR`` of ``medft predict`` and ``medft explain``: results as DICOM files.

After the command has written its own outputs, these functions turn them into DICOM objects
that file next to each source image (:mod:`medft.results`):

- :func:`predict_dicom` reads a :class:`~medft.workflows.predict.PredictRun`: one SR per
  DICOM input with each finding's *calibrated* probability (``probcal_<f>``), the
  calibrated-scale threshold, and the call made by ``medft predict`` (``call_<f>``);
- :func:`explain_dicom` reads ``medft explain``'s ``index.csv`` rows and overlay PNGs: one SR
  per DICOM input (the probability saliency reports, uncalibrated, and the call at the
  threshold on that scale) and one Secondary Capture per explained finding.

Both write ``DIR/dicom_results.csv`` (PNG/JPEG inputs get a note instead of DICOM files) and
copy nothing of the patient into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medft.inference import Predictor, call_column, output_id, probcal_column
from medft.results import (
    FindingResult,
    ModelInfo,
    ResultFiles,
    write_results,
    write_results_index,
)

if TYPE_CHECKING:
    from medft.workflows.predict import PredictRun

__all__ = ["explain_dicom", "format_dicom_summary", "predict_dicom"]


def predict_dicom(run: PredictRun, dicom_out: str | Path) -> list[ResultFiles]:
    """One SR per DICOM input of a ``medft predict`` run; ``dicom_results.csv`` for all.

    Args:
        run: what :func:`medft.workflows.predict.predict` returned.
        dicom_out: the folder for the DICOM files (created).

    Returns:
        One :class:`~medft.results.ResultFiles` per predicted image, in table order.
    """
    model_record = run.record["model"]
    model = ModelInfo.from_predictor_info(model_record)
    thresholds = {str(k): float(v) for k, v in model_record["thresholds"].items()}
    source = str(model_record.get("threshold_source") or run.predictions.threshold_source)
    calibrated = bool(model_record.get("calibrated"))
    table = run.predictions.table
    width = max(4, len(str(max(len(table) - 1, 0))))
    results = []
    for number, path in enumerate(table["path"].astype(str)):
        findings = [
            FindingResult(
                finding=label,
                probability=float(table[probcal_column(label)].iloc[number]),
                threshold=thresholds[label],
                positive=bool(int(table[call_column(label)].iloc[number])),
                threshold_source=source,
                calibrated=calibrated,
            )
            for label in run.predictions.labels
        ]
        name = output_id(number, path, width=width)
        results.append(write_results(path, findings, model, dicom_out, name=name))
    write_results_index(dicom_out, results)
    return results


def explain_dicom(
    index: pd.DataFrame,
    explain_out: str | Path,
    dicom_out: str | Path,
    checkpoint: str | Path,
    *,
    predictor: Predictor | None = None,
) -> list[ResultFiles]:
    """One SR and one capture per explained finding for each DICOM input of ``medft explain``.

    Args:
        index: the index :func:`medft.explain.batch.explain_inputs` returned.
        explain_out: its output folder (the overlay PNGs are read from there, losslessly).
        dicom_out: the folder for the DICOM files (created).
        checkpoint: the checkpoint that was explained (names the model).
        predictor: that checkpoint's predictor if already loaded (for its threshold source).

    Returns:
        One :class:`~medft.results.ResultFiles` per input that was read, in index order.
    """
    from PIL import Image

    predictor = predictor or Predictor.from_checkpoint(checkpoint)
    info = predictor.info()
    model = ModelInfo.from_predictor_info(info)
    source = str(info.get("threshold_source") or "checkpoint")
    ok = index[index["status"] == "ok"]
    results = []
    for name, rows in ok.groupby("id", sort=False):
        findings, overlays = [], {}
        for row in rows.itertuples(index=False):
            findings.append(
                FindingResult(
                    finding=str(row.finding),
                    probability=float(row.probability),
                    threshold=float(row.threshold),
                    positive=row.call == "positive",
                    threshold_source=source,
                    calibrated=False,  # saliency reports the uncalibrated probability
                )
            )
            with Image.open(Path(explain_out) / str(row.overlay)) as png:
                overlays[str(row.finding)] = np.asarray(png.convert("RGB"))
        method = str(rows["method"].iloc[0])
        results.append(
            write_results(
                str(rows["input"].iloc[0]),
                findings,
                model,
                dicom_out,
                name=str(name),
                overlays=overlays,
                method=method,
            )
        )
    write_results_index(dicom_out, results)
    return results


def format_dicom_summary(results: Sequence[ResultFiles], dicom_out: str | Path) -> str:
    """Two or three lines: how many inputs got DICOM results, and why the others did not."""
    statuses = [r.status for r in results]
    counts = {status: statuses.count(status) for status in ("written", "skipped", "error")}
    files = sum(bool(r.sr) + len(r.captures) for r in results)
    lines = [
        f"DICOM results (RESEARCH USE ONLY): {files} files for {counts['written']} of "
        f"{len(results)} inputs in {dicom_out}; store them with `medft send {dicom_out} --to URL`"
    ]
    if counts["skipped"]:
        lines.append(
            f"  {counts['skipped']} PNG/JPEG inputs: no DICOM output (no header to file it under)"
        )
    if counts["error"]:
        lines.append(
            f"  {counts['error']} DICOM inputs could not be referenced: see dicom_results.csv"
        )
    return "\n".join(lines)
