"""``medft bench``: ratio benchmarks of medft against plain PyTorch, side by side.

Every benchmark times a medft path and its plain reference in one process, same model,
batch, threads and data, with warm-up excluded and the two interleaved repeat by repeat
so machine load hits both alike. It reports the ratio medft / reference (the number that
survives a shared, noisy machine) with the min and median of the repeats.

The benchmarks themselves are the modules of :mod:`medft.benchmarks` (tools, not library
code: only this module imports them, and only when a run starts); :func:`run_benchmarks`
takes its list from :mod:`medft.benchmarks.registry`. This module holds what they share:
the interleaved timer, the result record, the machine summary, the table printer and the
JSON writer.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from medft._io import check_output_dir, write_json
from medft.errors import ConfigError

BENCH_JSON = "bench.json"

BenchFn = Callable[[bool], list["BenchResult"]]


@dataclass
class Timing:
    """Seconds of the timed repeats of one operation (warm-up already excluded)."""

    samples: list[float]

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def time_interleaved(
    ops: Mapping[str, Callable[[], object]], *, repeats: int, warmup: int = 1
) -> dict[str, Timing]:
    """Time each operation ``repeats`` times, alternating them, after ``warmup`` untimed calls.

    Interleaving means a burst of load from other processes lands on every operation
    alike, so their ratio stays meaningful even when absolute times drift.
    """
    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        for op in ops.values():
            op()
    samples: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(repeats):
        for name, op in ops.items():
            start = time.perf_counter()
            op()
            samples[name].append(time.perf_counter() - start)
    return {name: Timing(values) for name, values in samples.items()}


@dataclass
class Target:
    """A threshold on the ratio: ``ratio >= value`` (``higher=True``) or ``ratio < value``."""

    value: float
    higher: bool = True

    def met(self, ratio: float) -> bool:
        return ratio >= self.value if self.higher else ratio < self.value

    def __str__(self) -> str:
        return f"{'>=' if self.higher else '<'} {self.value:g}"


@dataclass
class BenchResult:
    """One row of the table: medft against its reference.

    ``medft`` and ``reference`` are medians in ``unit``; ``ratio`` is medft / reference.
    ``target`` is ``None`` for information-only rows; ``implemented=False`` marks a
    reference measurement of a fast path medft does not have yet (never counted as met).
    """

    name: str
    medft: float
    reference: float
    unit: str
    repeats: int
    target: Target | None = None
    medft_min: float | None = None
    reference_min: float | None = None
    note: str = ""
    implemented: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.medft / self.reference if self.reference else float("nan")

    @property
    def met(self) -> bool | None:
        if self.target is None or not self.implemented:
            return None
        return self.target.met(self.ratio)

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["target"] = None if self.target is None else str(self.target)
        row.update(ratio=self.ratio, met=self.met)
        return row


def rate_result(
    name: str,
    medft: Timing,
    reference: Timing,
    *,
    items: int,
    unit: str = "images/s",
    target: Target | None = None,
    note: str = "",
    **details: Any,
) -> BenchResult:
    """A throughput row from two timings of ``items`` items each (median and best rates)."""
    return BenchResult(
        name=name,
        medft=items / medft.median,
        reference=items / reference.median,
        unit=unit,
        repeats=len(medft.samples),
        target=target,
        medft_min=items / max(medft.samples),
        reference_min=items / max(reference.samples),
        note=note,
        details={
            "medft_seconds": medft.samples,
            "reference_seconds": reference.samples,
            # Per-repeat ratios: each pair ran back to back, so load drift cancels within it.
            "paired_ratio_median": statistics.median(
                r / m for m, r in zip(medft.samples, reference.samples, strict=True)
            ),
            **details,
        },
    )


def machine_summary() -> dict[str, Any]:
    """What the numbers depend on: cores, threads, library versions, GPU, load."""
    import timm
    import torch

    summary: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if hasattr(os, "getloadavg"):
        summary["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return summary


def format_table(results: Sequence[BenchResult]) -> str:
    """The results as a fixed-width text table (also valid Markdown)."""
    header = ["benchmark", "medft", "reference", "ratio", "unit", "target", "met"]
    rows = [header, ["---"] * len(header)]
    for r in results:
        met = {True: "yes", False: "NO", None: "n/a"}[r.met]
        if not r.implemented:
            met = "not implemented"
        rows.append(
            [
                r.name,
                f"{r.medft:.3g}",
                f"{r.reference:.3g}",
                f"{r.ratio:.2f}",
                r.unit,
                "-" if r.target is None else str(r.target),
                met,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    )


def write_results(
    out: str | os.PathLike[str], results: Sequence[BenchResult], *, quick: bool
) -> Path:
    """Write ``out/bench.json``: one object per benchmark, each with the machine summary."""
    machine = machine_summary()
    return write_json(
        Path(out) / BENCH_JSON,
        [{**r.to_dict(), "quick": quick, "machine": machine} for r in results],
    )


def load_benchmark(name: str) -> ModuleType:
    """The benchmark module ``medft.benchmarks.<name>``, imported on first use.

    Importing one only when its benchmark runs keeps ``medft bench --only inference`` from
    loading what the others need (Lightning, the demo's Gradio).
    """
    try:
        return importlib.import_module(f"medft.benchmarks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"medft.benchmarks.{name}":
            raise  # a dependency of the benchmark is missing, not the benchmark
        raise ConfigError(f"no benchmark module medft.benchmarks.{name}") from exc


def benchmark_registry() -> dict[str, BenchFn]:
    """Benchmark name -> ``fn(quick) -> results``: ``BENCHMARKS`` of the registry module."""
    from medft.benchmarks.registry import BENCHMARKS  # tools, imported only to run them

    return dict(BENCHMARKS)


def run_benchmarks(
    out: str | os.PathLike[str],
    *,
    quick: bool = False,
    only: Sequence[str] | None = None,
    registry: Mapping[str, BenchFn] | None = None,
    threads: int | None = None,
    echo: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Run the (selected) benchmarks, print the table and write ``out/bench.json``.

    On a shared, overloaded machine ``threads=1`` is far steadier: a parallel region waits
    for its slowest thread, and a descheduled thread stalls them all.

    Args:
        out: Folder for ``bench.json`` (created).
        quick: Tiny sizes for a smoke run (minutes); the numbers are then indicative only.
        only: Names of the benchmarks to run (default: all).
        registry: Benchmarks to choose from (default: :func:`benchmark_registry`).
        threads: torch intra-op threads for every benchmark (default: torch's choice).
        echo: Where progress lines and the table go (default: stdout, flushed).

    Returns:
        All result rows, in run order.
    """
    check_output_dir(out)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    echo = echo or functools.partial(print, flush=True)
    if threads is not None:
        import torch

        if threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    registry = benchmark_registry() if registry is None else dict(registry)
    names = list(only) if only else list(registry)
    unknown = [name for name in names if name not in registry]
    if unknown:
        raise ConfigError(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(registry)}"
        )
    results: list[BenchResult] = []
    for name in names:
        started = time.perf_counter()
        echo(f"[bench] {name} ...")
        rows = registry[name](quick)
        results.extend(rows)
        echo(f"[bench] {name}: {len(rows)} row(s) in {time.perf_counter() - started:.1f} s")
        write_results(out, results, quick=quick)  # partial results survive an interrupted run
    echo(format_table(results))
    machine = machine_summary()
    echo(
        f"machine: {machine['usable_cpus']} usable CPU(s), {machine['torch_threads']} torch "
        f"thread(s), torch {machine['torch']}, timm {machine['timm']}, GPU {machine['gpu']}, "
        f"load {machine.get('load_average')}"
    )
    echo(f"wrote {Path(out) / BENCH_JSON}")
    return results


def run_scale_benchmark(
    out: str | os.PathLike[str],
    *,
    sizes: Sequence[int] | None = None,
    keep: bool = False,
    echo: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """The scale benchmark (``medft bench scale``): pipeline time and peak RSS vs data size.

    Kept out of the 20-minute :func:`run_benchmarks` run: synthesizing and decoding 16k
    images takes far longer on a small box. See :mod:`medft.benchmarks.scale`.

    Args:
        out: Folder for ``bench.json`` and, while it runs, the synthetic data.
        sizes: Numbers of images (default 1000, 4000, 16000).
        keep: Keep the synthetic data and decode caches instead of deleting them.
        echo: Where progress lines and the tables go (default: stdout, flushed).

    Returns:
        The result rows (also written to ``out/bench.json``).
    """
    check_output_dir(out)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from medft.benchmarks import scale  # tools, imported only to run them

    return scale.run_scale(
        out,
        scale.DEFAULT_SIZES if sizes is None else sizes,
        keep=keep,
        echo=echo or functools.partial(print, flush=True),
    )


def standalone_main(
    run: Callable[[bool], list[BenchResult]], description: str, argv: list[str] | None = None
) -> int:
    """The command line every benchmark module shares: ``[--quick] [--out DIR]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny data set")
    parser.add_argument("--out", type=Path, help="folder for bench.json")
    args = parser.parse_args(argv)
    results = run(args.quick)
    print(format_table(results))
    if args.out is not None:
        write_results(args.out, results, quick=args.quick)
    return 0
