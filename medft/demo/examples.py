"""Example cases one click away: held-out quickstart images, or a few freshly synthesised ones.

Examples are files on the server chosen by the demo itself; the page refers to them by
position, never by a path the browser could change.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from medft.data.synth import LABEL_COLUMNS, synthesize

DEFAULT_COUNT = 6
_SYNTH_PATIENTS = 6
_SYNTH_SIZE = 320
_SYNTH_SEED = 20240607


@dataclass(frozen=True)
class ExampleCase:
    """A server-side example image and the label shown for it (with its ground truth)."""

    title: str
    path: Path


def read_examples(
    folder: str | Path, *, splits_csv: Path | None = None, count: int = DEFAULT_COUNT
) -> list[ExampleCase]:
    """Pick up to ``count`` cases from a synthetic dataset folder (its ``labels.csv``).

    Held-out test images (from ``splits_csv``, a run's ``splits.csv``) come first, then
    alternately abnormal and normal cases so both kinds are on offer.
    """
    folder = Path(folder)
    labels_csv = folder / "labels.csv"
    if not labels_csv.is_file():
        return []
    with labels_csv.open(newline="", encoding="utf-8") as fh:
        rows = [row for row in csv.DictReader(fh) if row.get("path")]
    held_out = _test_paths(splits_csv)
    first = [row for row in rows if str((folder / row["path"]).resolve()) in held_out]
    rest = [row for row in rows if str((folder / row["path"]).resolve()) not in held_out]
    chosen = (_alternate(first) + _alternate(rest))[:count]
    cases = []
    for number, row in enumerate(chosen, start=1):
        path = (folder / row["path"]).resolve()
        if path.is_file():
            cases.append(ExampleCase(f"Example {number}: {_truth(row)}", path))
    return cases


def synthesize_examples(folder: str | Path, *, count: int = _SYNTH_PATIENTS) -> list[ExampleCase]:
    """Write a few small synthetic cases into ``folder`` (about a second) and list them."""
    synthesize(folder, count, size=_SYNTH_SIZE, seed=_SYNTH_SEED, workers=1)
    return read_examples(folder, count=count)


def _alternate(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Abnormal and normal cases taken in turn (the rest of the longer list at the end)."""
    abnormal = [row for row in rows if row.get("abnormal") == "1"]
    normal = [row for row in rows if row.get("abnormal") != "1"]
    mixed = [row for pair in zip(abnormal, normal, strict=False) for row in pair]
    shorter = min(len(abnormal), len(normal))
    return mixed + abnormal[shorter:] + normal[shorter:]


def _truth(row: dict[str, str]) -> str:
    findings = [name for name in LABEL_COLUMNS[1:] if row.get(name) == "1"]
    if findings:
        return "abnormal (" + ", ".join(findings) + ")"
    return "abnormal" if row.get("abnormal") == "1" else "normal"


def _test_paths(splits_csv: Path | None) -> set[str]:
    if splits_csv is None or not splits_csv.is_file():
        return set()
    with splits_csv.open(newline="", encoding="utf-8") as fh:
        return {
            str(Path(row["path"]).resolve())
            for row in csv.DictReader(fh)
            if row.get("split") == "test" and row.get("path")
        }
