"""One call per input image for the workflows: its SR, its captures, or a note saying why not.

A workflow (``medft predict`` / ``medft explain`` with a DICOM output folder ``DIR``) calls
:func:`write_results` once per input and :func:`write_results_index` once per run:

- a DICOM input gets ``DIR/<id>_sr.dcm`` and, for each overlay given,
  ``DIR/<id>_<finding>_sc.dcm``;
- a PNG/JPEG input gets nothing but a row saying why (no DICOM header, so no patient or
  study to file a result under, and no SOP Instance UID to reference);
- a DICOM that cannot be referenced (no UIDs) gets a row with the reason.

``<id>`` is the workflow's output id (a running number and a hash of the path), so no file
name carries a patient name or a UID; ``DIR/dicom_results.csv`` maps ids to inputs and
holds no header field of any input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medft._io import atomic_open, atomic_path
from medft.data.dicom import is_dicom
from medft.errors import DicomReadError
from medft.results.capture import build_capture
from medft.results.common import FindingResult, ModelInfo, check_findings, read_source
from medft.results.sr import build_sr

__all__ = ["INDEX_COLUMNS", "NOT_DICOM_NOTE", "ResultFiles", "write_results", "write_results_index"]

INDEX_COLUMNS = ("id", "input", "status", "sr", "captures", "note")
NOT_DICOM_NOTE = (
    "not DICOM (PNG/JPEG): no patient or study to file a result under and no SOP Instance "
    "UID to reference, so no DICOM result was written; see the CSV/PNG outputs instead"
)


@dataclass
class ResultFiles:
    """What :func:`write_results` did for one input.

    Attributes:
        id: the workflow's output id of the input.
        input: the input path.
        status: ``written``, ``skipped`` (not DICOM) or ``error`` (unusable DICOM).
        sr: the SR file, relative to the output folder ("" when none).
        captures: capture files, relative to the output folder.
        note: why nothing was written, when nothing was.
    """

    id: str
    input: str
    status: str
    sr: str = ""
    captures: list[str] = field(default_factory=list)
    note: str = ""

    def row(self) -> dict[str, str]:
        """The ``dicom_results.csv`` row."""
        return {
            "id": self.id,
            "input": self.input,
            "status": self.status,
            "sr": self.sr,
            "captures": ";".join(self.captures),
            "note": self.note,
        }


def write_results(
    source_path: str | Path,
    findings: Sequence[FindingResult],
    model: ModelInfo,
    out_dir: str | Path,
    *,
    name: str,
    overlays: Mapping[str, np.ndarray] | None = None,
    method: str = "saliency",
) -> ResultFiles:
    """Write the SR (and one capture per overlay) of one input, or say why not.

    Args:
        source_path: the input image.
        findings: one result per finding (probability, threshold, call).
        model: the model, see :meth:`ModelInfo.from_checkpoint`.
        out_dir: the DICOM results folder.
        name: the workflow's output id of this input (file names start with it).
        overlays: finding name -> uint8 RGB overlay on the original grid.
        method: the saliency method that made the overlays.

    Returns:
        What was written (paths relative to ``out_dir``).
    """
    source_path, out_dir = Path(source_path), Path(out_dir)
    findings = check_findings(findings)
    result = ResultFiles(id=name, input=str(source_path), status="written")
    if not is_dicom(source_path):
        result.status, result.note = "skipped", NOT_DICOM_NOTE
        return result
    try:
        source = read_source(source_path)
    except DicomReadError as exc:
        result.status, result.note = "error", str(exc)
        return result
    sr_name = f"{name}_sr.dcm"
    _save(build_sr(source, findings, model), out_dir / sr_name)
    result.sr = sr_name
    used: set[str] = set()
    for finding, overlay in (overlays or {}).items():
        slug, n = _slug(finding), 2
        while slug in used:
            slug, n = f"{_slug(finding)}-{n}", n + 1
        used.add(slug)
        capture_name = f"{name}_{slug}_sc.dcm"
        capture = build_capture(source, overlay, findings, model, finding=finding, method=method)
        _save(capture, out_dir / capture_name)
        result.captures.append(capture_name)
    return result


def write_results_index(out_dir: str | Path, results: Sequence[ResultFiles]) -> Path:
    """Write ``out_dir/dicom_results.csv`` (columns :data:`INDEX_COLUMNS`); return its path."""
    path = Path(out_dir) / "dicom_results.csv"
    table = pd.DataFrame([r.row() for r in results], columns=list(INDEX_COLUMNS))
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        table.to_csv(fh, index=False)
    return path


def _save(dataset, path: Path) -> None:
    with atomic_path(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)


def _slug(finding: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", finding).strip("_.") or "finding"
