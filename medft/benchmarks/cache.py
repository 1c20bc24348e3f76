"""Decode cache: epoch-2 vs epoch-1 wall time, and the loader's wait share (issue 8, #3).

Runs ``medft fit`` (memory cache, tiny model so the data pipeline shows) for ``1 + repeats``
epochs. Epoch 1 is timed from the ``Trainer.fit`` call to its end hook, so it includes
decoding every file into the cache; later epochs read the cache only. Target: a later
epoch takes under half the time of the first.

The wait share is ``1 - (time inside training steps) / (epoch time)`` over the epochs
after the first: the part of an epoch the model spends waiting for the loader (plus
Lightning's own per-step bookkeeping, so it is an upper bound). Target: under 5%.

    python -m medft.benchmarks.cache [--quick] [--out DIR]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from medft.bench import (
    BenchResult,
    Target,
    standalone_main,
)
from medft.benchmarks import fit_throughput as fit

QUICK_SIZES = {"n_patients": 80, "synth_size": 128, "image_size": 64, "repeats": 2}
FULL_SIZES = {"n_patients": 300, "synth_size": 512, "image_size": 128, "repeats": 3}


def run(quick: bool) -> list[BenchResult]:
    """Epoch times and wait share of one cached fit."""
    sizes = QUICK_SIZES if quick else FULL_SIZES
    cfg = fit.FitConfig(
        "test_efficientnet",
        sizes["image_size"],
        16,
        sizes["n_patients"],
        sizes["synth_size"],
        sizes["repeats"],
    )
    with tempfile.TemporaryDirectory(prefix="medft-bench-cache-") as tmp:
        work = Path(tmp)
        manifest = fit.synth_manifest(work, cfg.n_patients, cfg.synth_size)
        cli = fit.build_fit(manifest, work / "run", cfg, "--model.freeze", "full",
                            "--trainer.max_epochs", str(cfg.repeats + 1))  # fmt: skip
        clock = fit.EpochClock()
        cli.trainer.callbacks.append(clock)
        started = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    first = clock.epoch_ends[0] - started
    later = clock.epoch_seconds[1:]
    waits = [e - s for e, s in zip(later, clock.step_seconds[1:], strict=True)]
    note = f"{cfg.n_patients} files of {cfg.synth_size}px -> {cfg.image_size}px, test_efficientnet"
    workers = cli.datamodule.num_workers
    return [
        BenchResult(
            name="cache/epoch2_vs_epoch1",
            medft=statistics.median(later),
            reference=first,
            unit="s/epoch",
            repeats=len(later),
            target=Target(0.5, higher=False),
            medft_min=min(later),
            reference_min=first,
            note=note + " (epoch 1 includes decoding into the memory cache)",
            details={"later_epochs_s": later, "num_workers": workers},
        ),
        BenchResult(
            name="cache/loader_wait_share",
            medft=sum(waits),
            reference=sum(later),
            unit="s (wait/epoch)",
            repeats=len(later),
            target=Target(0.05, higher=False),
            note=f"epochs after the first, {workers} loader worker(s); includes Lightning's "
            "per-step overhead",
            details={"wait_s": waits, "epoch_s": later, "num_workers": workers},
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    return standalone_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
