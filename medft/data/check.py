"""``medft data check``: read every image of a manifest and summarise what is there.

Each file is decoded in a pool of worker processes through the same reader training
uses (:func:`medft.data.dicom.load_image`), so a file that passes the check will load
at training time. One bad file never stops the check: reader errors, unexpected
exceptions and even a worker process that crashes are recorded against that file, and
the rest of the files are still read. The report holds counts only, never patient IDs.
"""

from __future__ import annotations

import math
import os
import pickle
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medft.data.dicom import load_image
from medft.data.manifest import Manifest, load_manifest
from medft.errors import ConfigError, MedftError
from medft.progress import Progress, progress

__all__ = ["CheckReport", "FileResult", "check_manifest"]

ReadFn = Callable[[str], tuple[Any, Any]]
"""A reader: ``path -> (image, meta)``; ``meta`` may carry the summarised header fields."""

META_FIELDS = ("modality", "photometric", "transfer_syntax", "bits_stored")
"""Header fields of ``XrayMeta`` that the report counts."""

MISSING_VALUE = "(none)"
"""How the report counts a header field the file does not have."""

_CHUNKS_PER_WORKER = 8
_MAX_CHUNK = 64
_LISTED_FAILURES = 50


@dataclass(frozen=True)
class FileResult:
    """Outcome of reading one file: an error reason, or the summarised header fields."""

    path: str
    error: str | None = None
    modality: str | None = None
    photometric: str | None = None
    transfer_syntax: str | None = None
    bits_stored: str | None = None


@dataclass
class CheckReport:
    """Summary of a manifest check; ``ok`` is true only when every file was readable.

    Attributes:
        source: The manifest checked.
        n_files: Images listed in the manifest.
        n_ok: Images that read without error.
        failures: ``(path, reason)`` of every unreadable image, in manifest order.
        task: The manifest's task (binary, multilabel or multiclass).
        label_balance: Per label: positive, negative, unknown and uncertain counts.
        n_patients: Distinct patients (IDs themselves are never reported).
        images_per_patient: ``min``, ``median`` and ``max`` images per patient.
        modality, photometric, transfer_syntax, bits_stored: Counts over readable images.
        elapsed_s: Wall time of the reading (not part of equality).
        workers: Worker processes used (not part of equality).
    """

    source: str | None
    n_files: int
    n_ok: int
    failures: list[tuple[str, str]]
    task: str
    label_balance: dict[str, dict[str, int]]
    n_patients: int
    images_per_patient: dict[str, float]
    modality: dict[str, int]
    photometric: dict[str, int]
    transfer_syntax: dict[str, int]
    bits_stored: dict[str, int]
    elapsed_s: float = field(default=0.0, compare=False)
    workers: int = field(default=1, compare=False)

    @property
    def ok(self) -> bool:
        """True when the manifest has images and every one of them was readable."""
        return self.n_files > 0 and not self.failures

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``--json`` output), including ``ok``."""
        data = asdict(self)
        data["failures"] = [{"path": path, "reason": reason} for path, reason in self.failures]
        data["ok"] = self.ok
        return data

    def format(self, max_failures: int = _LISTED_FAILURES) -> str:
        """Render a short human-readable report (what ``medft data check`` prints)."""
        lines = [f"manifest   {self.source or '(in memory)'}"]
        rate = f"  ({self.n_files / self.elapsed_s:.0f} files/s)" if self.elapsed_s > 0 else ""
        lines.append(
            f"files      {self.n_files}  readable {self.n_ok}  failed {len(self.failures)}{rate}"
        )
        ipp = self.images_per_patient
        lines.append(
            f"patients   {self.n_patients}  images per patient: min {ipp['min']:g}  "
            f"median {ipp['median']:g}  max {ipp['max']:g}"
        )
        lines.append("")
        lines.extend(_label_table(self.task, self.label_balance))
        lines.append("")
        for title, counts in (
            ("modality", self.modality),
            ("photometric", self.photometric),
            ("transfer syntax", self.transfer_syntax),
            ("bits stored", self.bits_stored),
        ):
            listed = ", ".join(f"{key}: {n}" for key, n in counts.items()) or "-"
            lines.append(f"{title:<16} {listed}")
        if self.failures:
            lines.append("")
            lines.append(f"unreadable files ({len(self.failures)}):")
            for path, reason in self.failures[:max_failures]:
                lines.append(f"  {path}: {reason}")
            if len(self.failures) > max_failures:
                lines.append(f"  ... and {len(self.failures) - max_failures} more (see --json)")
        lines.append("")
        if self.ok:
            lines.append(f"OK: all {self.n_files} files readable")
        else:
            lines.append(f"FAILED: {len(self.failures)} of {self.n_files} files unreadable")
        return "\n".join(lines)


def _label_table(task: str, balance: dict[str, dict[str, int]]) -> list[str]:
    width = max([len("label"), *(len(name) for name in balance)])
    columns = ("positive", "negative", "unknown", "uncertain")
    rows = [f"{'label':<{width}}  " + "  ".join(f"{c:>9}" for c in columns) + f"   ({task})"]
    for name, counts in balance.items():
        rows.append(f"{name:<{width}}  " + "  ".join(f"{counts[c]:>9}" for c in columns))
    return rows


def check_manifest(
    manifest_or_path: Manifest | str | os.PathLike[str],
    *,
    workers: int | None = None,
    read_fn: ReadFn | None = None,
) -> CheckReport:
    """Read every image of a manifest in parallel and summarise the data set.

    Args:
        manifest_or_path: A loaded :class:`Manifest`, or a manifest CSV / class folder
            (loaded without the file-existence check, so missing files are listed as
            unreadable instead of stopping the check).
        workers: Worker processes (default: the CPUs this process may use). ``1`` reads in this
            process; with 2 or more, a worker that crashes on a file is survived and
            that file reported.
        read_fn: The reader, ``path -> (image, meta)``; default
            :func:`medft.data.dicom.load_image`. With workers it must be picklable (a
            module-level function).

    Returns:
        The :class:`CheckReport`.

    Raises:
        DataError: The manifest itself is invalid (from :func:`load_manifest`).
    """
    if isinstance(manifest_or_path, Manifest):
        manifest = manifest_or_path
    else:
        manifest = load_manifest(manifest_or_path, check_files=False)
    paths = manifest.table["path"].astype(str).tolist()
    n_workers = max(1, int(workers if workers is not None else _usable_cpus()))
    if n_workers > 1 and read_fn is not None:
        try:
            pickle.dumps(read_fn)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise ConfigError(
                f"read_fn {read_fn!r} cannot be sent to worker processes ({exc}); pass a "
                "module-level function, or workers=1"
            ) from exc
    started = time.perf_counter()
    with progress("data check: reading", total=len(paths), unit="files") as bar:
        if n_workers == 1 or len(paths) <= 1:
            results = []
            for start in range(0, len(paths), _MAX_CHUNK):
                results += _read_chunk(paths[start : start + _MAX_CHUNK], read_fn)
                bar.advance(len(paths[start : start + _MAX_CHUNK]))
            n_workers = 1
        else:
            results = _read_in_pool(paths, read_fn, n_workers, bar)
    elapsed = time.perf_counter() - started
    return _summarise(manifest, results, elapsed, n_workers)


def _usable_cpus() -> int:
    """CPUs this process may run on (respects container/affinity limits, unlike cpu_count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _read_one(path: str, read_fn: ReadFn) -> FileResult:
    if not os.path.isfile(path):
        reason = "not a regular file" if os.path.exists(path) else "file not found"
        return FileResult(path, error=reason)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decoder chatter: a file either reads or fails
            _, meta = read_fn(path)
    except MedftError as exc:
        return FileResult(path, error=_reason(path, str(exc)))
    except Exception as exc:
        return FileResult(
            path, error=f"unexpected: {type(exc).__name__}: {_reason(path, str(exc))}"
        )
    values = {}
    for name in META_FIELDS:
        value = getattr(meta, name, None)
        values[name] = None if value is None or value == "" else str(value)
    return FileResult(path, **values)


def _reason(path: str, message: str) -> str:
    """One-line reason without the leading path the reader's messages start with."""
    if message.startswith(path):
        message = message[len(path) :].lstrip(" :")
    return " ".join(message.split()) or "no reason given"


def _read_chunk(paths: Sequence[str], read_fn: ReadFn | None) -> list[FileResult]:
    """Read a batch of files (runs in a worker process)."""
    if read_fn is None:
        read_fn = load_image
    return [_read_one(path, read_fn) for path in paths]


def _read_in_pool(
    paths: list[str], read_fn: ReadFn | None, workers: int, bar: Progress | None = None
) -> list[FileResult]:
    """Read files in chunks across processes, isolating any file that kills its worker.

    Chunks amortise process overhead; several chunks per worker keep the cores busy when
    files differ in cost. When a worker dies, every file of the chunks in flight is
    retried alone, and a file is reported as the culprit only if it kills a worker that
    reads nothing else.
    """
    size = max(1, min(_MAX_CHUNK, math.ceil(len(paths) / (workers * _CHUNKS_PER_WORKER))))
    batches = [(start, paths[start : start + size]) for start in range(0, len(paths), size)]
    results: list[FileResult | None] = [None] * len(paths)
    suspects: list[int] = []
    for start, batch in _run_batches(batches, read_fn, workers, results, bar):
        suspects.extend(range(start, start + len(batch)))
    singles = [(i, [paths[i]]) for i in suspects]
    for index, _ in _run_batches(singles, read_fn, workers, results, bar):
        if not _run_batches([(index, [paths[index]])], read_fn, 1, results, bar):
            continue
        if bar is not None:
            bar.advance(1)  # the culprit is done too: reported as unreadable
        results[index] = FileResult(
            paths[index], error="unexpected: the reader process crashed on this file"
        )
    return [
        result or FileResult(paths[i], error="unexpected: no result from the reader process")
        for i, result in enumerate(results)
    ]


def _run_batches(
    batches: list[tuple[int, list[str]]],
    read_fn: ReadFn | None,
    workers: int,
    results: list[FileResult | None],
    bar: Progress | None = None,
) -> list[tuple[int, list[str]]]:
    """Run batches in one pool, filling ``results``; return the batches lost to a crash.

    ``bar`` counts the files of every batch that came back.
    """
    if not batches:
        return []
    lost = []
    with ProcessPoolExecutor(max_workers=min(workers, len(batches))) as pool:
        futures = {
            pool.submit(_read_chunk, batch, read_fn): (start, batch) for start, batch in batches
        }
        for future in as_completed(futures):
            start, batch = futures[future]
            try:
                results[start : start + len(batch)] = future.result()
                if bar is not None:
                    bar.advance(len(batch))
            except BrokenProcessPool:
                lost.append((start, batch))
    return sorted(lost)


def _summarise(
    manifest: Manifest, results: list[FileResult], elapsed: float, workers: int
) -> CheckReport:
    readable = [r for r in results if r.error is None]
    per_patient = manifest.table.groupby("patient_id", sort=False).size().to_numpy()
    balance = {
        str(label): {key: int(value) for key, value in counts.items()}
        for label, counts in manifest.label_counts().to_dict(orient="index").items()
    }
    return CheckReport(
        source=None if manifest.source is None else str(manifest.source),
        n_files=len(results),
        n_ok=len(readable),
        failures=[(r.path, r.error) for r in results if r.error is not None],
        task=manifest.task,
        label_balance=balance,
        n_patients=len(per_patient),
        images_per_patient={
            "min": int(per_patient.min()) if len(per_patient) else 0,
            "median": float(np.median(per_patient)) if len(per_patient) else 0.0,
            "max": int(per_patient.max()) if len(per_patient) else 0,
        },
        **{name: _count(readable, name) for name in META_FIELDS},
        elapsed_s=round(elapsed, 3),
        workers=workers,
    )


def _count(results: list[FileResult], name: str) -> dict[str, int]:
    counts = Counter(getattr(r, name) or MISSING_VALUE for r in results)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
