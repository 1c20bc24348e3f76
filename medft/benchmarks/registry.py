"""All of issue 8's ratio benchmarks: the registry behind ``medft bench``.

``BENCHMARKS`` maps a name to ``fn(quick) -> list[BenchResult]``. The fit, cache,
freezing and inference benchmarks live in their own modules; decode, saliency and
demo reuse the measuring code of :mod:`.decode`, :mod:`.saliency_latency` and
:mod:`.demo_latency` and only turn their rows into ratio results here. Each benchmark
module is imported only when its benchmark runs (they pull in Lightning, timm, the demo).

    python -m medft.benchmarks.registry --out DIR [--quick] [--only NAME ...] [--threads N]
    python -m medft.benchmarks.registry --out DIR --scale [--scale-sizes 1000 4000] [--keep]
    (the same as ``medft bench``; ``--scale`` runs :mod:`.scale` alone, outside the timed run)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from medft.bench import (
    BenchFn,
    BenchResult,
    Target,
    load_benchmark,
    rate_result,
    run_benchmarks,
    run_scale_benchmark,
)
from medft.bench import time_interleaved as interleaved


def decode(quick: bool) -> list[BenchResult]:
    """read_xray vs bare pydicom (and pydicom + float32), uncompressed and JPEG 2000."""
    script = load_benchmark("decode")
    size, repeats = (512, 3) if quick else (2048, 10)
    readers = {
        "pydicom": script.bare_pydicom,
        "pydicom_f32": script.pydicom_float32,
        "read_xray": script.medft_reader,
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="medft-bench-decode-") as tmp:
        for kind, path in script.write_pair(Path(tmp), size).items():
            times = script.time_pair(path, readers, repeats)
            medians = {name: statistics.median(t) for name, t in times.items()}
            mins = {name: min(t) for name, t in times.items()}
            for reference in ("pydicom", "pydicom_f32"):
                results.append(
                    BenchResult(
                        name=f"decode/{kind}" + ("" if reference == "pydicom" else "_vs_f32"),
                        medft=1 / medians["read_xray"],
                        reference=1 / medians[reference],
                        unit="images/s",
                        repeats=repeats,
                        target=Target(script.TARGET_RATIO) if reference == "pydicom" else None,
                        medft_min=1 / max(times["read_xray"]),
                        reference_min=1 / max(times[reference]),
                        note=f"{size}px 16-bit; reference {reference}",
                        details={"best_ratio": mins[reference] / mins["read_xray"]},
                    )
                )
    return results


def data_check(quick: bool) -> list[BenchResult]:
    """``medft data check`` with two workers vs one on the same synthetic files."""
    from medft.data.check import check_manifest
    from medft.data.synth import synthesize

    n_patients, size, repeats = (60, 64, 2) if quick else (2000, 256, 2)
    with tempfile.TemporaryDirectory(prefix="medft-bench-check-") as tmp:
        manifest = synthesize(Path(tmp) / "synth", n_patients, size=size, seed=0).labels_csv
        times = interleaved(
            {
                "two": lambda: check_manifest(manifest, workers=2),
                "one": lambda: check_manifest(manifest, workers=1),
            },
            repeats=repeats,
        )
    return [
        rate_result("check/workers2_vs_1", times["two"], times["one"], items=n_patients,
                    target=Target(1.6), note=f"{n_patients} files of {size}px")
    ]  # fmt: skip


def saliency(quick: bool) -> list[BenchResult]:
    """Grad-CAM seconds per image vs one forward+backward (lower is better)."""
    script = load_benchmark("saliency_latency")
    name, repeats = ("test_efficientnet", 2) if quick else ("tf_efficientnet_lite0", 5)
    row = script.measure(name, repeats, False)
    return [
        BenchResult(
            name=f"saliency/{name}",
            medft=row["gradcam"],
            reference=row["fwd+bwd"],
            unit="s/image",
            repeats=repeats,
            target=Target(script.TARGET_RATIO, higher=False),
            note="224px, one finding; reference = one forward+backward",
            details={k: v for k, v in row.items() if isinstance(v, float)},
        )
    ]


def demo(quick: bool) -> list[BenchResult]:
    """Demo upload-to-result seconds for a 2k x 2k DICOM against the 2 s budget."""
    script = load_benchmark("demo_latency")
    repeats = 2 if quick else 3
    with tempfile.TemporaryDirectory(prefix="medft-bench-demo-") as tmp:
        folder = Path(tmp)
        checkpoint = script.write_checkpoint(folder / "model.ckpt")
        cases = script.make_cases(folder)
        _, rows = script.measure(checkpoint, {2048: cases[2048]}, repeats, False, folder)
    row = rows[0]
    return [
        BenchResult(
            name="demo/upload_to_result_2k",
            medft=row["service"],
            reference=2.0,
            unit="s (vs 2 s budget)",
            repeats=repeats,
            target=Target(1.0, higher=False),
            note=f"{script.BACKBONE}, 2048x2048 DICOM, inside the server (no browser)",
            details={k: v for k, v in row.items() if isinstance(v, float)},
        )
    ]


def _from_module(stem: str) -> BenchFn:
    """The ``run(quick)`` of module ``stem``, imported when the benchmark runs."""

    def run(quick: bool) -> list[BenchResult]:
        return load_benchmark(stem).run(quick)

    run.__name__ = stem
    return run


def _full_only(fn: BenchFn) -> BenchFn:
    """Skip a benchmark in --quick runs (too slow for the smoke-run budget)."""

    def run(quick: bool) -> list[BenchResult]:
        return [] if quick else fn(quick)

    return run


BENCHMARKS: dict[str, BenchFn] = {
    "fit": _from_module("fit_throughput"),
    "decode": decode,
    "check": data_check,
    "cache": _from_module("cache"),
    "loader": _from_module("loader"),
    "freezing": _from_module("freezing"),
    "inference": _from_module("inference"),
    "saliency": saliency,
    "demo": _full_only(demo),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for bench.json")
    parser.add_argument("--quick", action="store_true", help="smoke run (tiny sizes)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="subset to run")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--scale", action="store_true", help="run the scale benchmark instead")
    parser.add_argument("--scale-sizes", type=int, nargs="+", help="image counts for --scale")
    parser.add_argument("--keep", action="store_true", help="--scale: keep the synthetic data")
    args = parser.parse_args(argv)
    if args.scale:
        run_scale_benchmark(args.out, sizes=args.scale_sizes, keep=args.keep)
        return 0
    run_benchmarks(args.out, quick=args.quick, only=args.only, threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
