"""Loader throughput: compact uint8 batches against float32 batches (issue 20).

Builds one ``XrayDataModule`` (memory cache, no augmentation) and iterates its training
loader with worker processes, once shipping the cache's compact uint8 images (what
``XrayClassifier`` gets) and once float32 in [0, 1] (what the loader shipped before, and
still ships to models that do not take compact batches), interleaved pass by pass. The
rate is images/s handed over to the training process: collation in the workers, the
shared-memory handover and, for the compact side, nothing else (the model converts on its
device). With CUDA the loader also pins memory, and each batch is copied to the GPU
(non-blocking) and, on the compact side, converted there, as the model does.

    python -m medft.benchmarks.loader [--quick] [--out DIR]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from medft.bench import BenchResult, Timing, rate_result, standalone_main
from medft.benchmarks import fit_throughput as fit

QUICK = {"n_patients": 120, "synth_size": 64, "image_size": 64, "batch_size": 32, "passes": 3}
FULL = {"n_patients": 700, "synth_size": 256, "image_size": 224, "batch_size": 256, "passes": 5}
WORKERS = 2


def _module(manifest: Path, sizes: dict[str, int], compact: bool, work: Path) -> Any:
    from medft.data.datamodule import XrayDataModule

    dm = XrayDataModule(
        str(manifest),
        image_size=sizes["image_size"],
        batch_size=sizes["batch_size"],
        num_workers=WORKERS,
        cache="memory",
        augment=False,
        audit=False,
        val_fraction=0.0,
        test_fraction=0.0,
        compact_batches=compact,
        run_dir=str(work / ("compact" if compact else "float")),
    )
    dm.setup("fit")
    return dm


def _consume(loader: Any, device: torch.device | None) -> int:
    images = 0
    for batch in loader:
        image = batch["image"]
        if device is not None:
            image = image.to(device, non_blocking=True)
            if not image.dtype.is_floating_point:
                image = image.float().mul_(1.0 / 255)
        images += len(image)
    if device is not None:
        torch.cuda.synchronize(device)
    return images


def run(quick: bool) -> list[BenchResult]:
    """Images/s of compact against float32 batches through the same loader setup."""
    sizes = QUICK if quick else FULL
    device = torch.device("cuda") if torch.cuda.is_available() else None
    with tempfile.TemporaryDirectory(prefix="medft-bench-loader-") as tmp:
        work = Path(tmp)
        manifest = fit.synth_manifest(work, sizes["n_patients"], sizes["synth_size"])
        modules = {name: _module(manifest, sizes, name == "compact", work) for name in
                   ("compact", "float")}  # fmt: skip
        loaders = {name: dm.train_dataloader() for name, dm in modules.items()}
        counts = {name: _consume(loader, device) for name, loader in loaders.items()}  # warm-up
        seconds: dict[str, list[float]] = {name: [] for name in loaders}
        for _ in range(sizes["passes"]):
            for name, loader in loaders.items():
                start = time.perf_counter()
                counts[name] = _consume(loader, device)
                seconds[name].append(time.perf_counter() - start)
    batch_bytes = {
        "compact": sizes["batch_size"] * sizes["image_size"] ** 2,
        "float": 4 * sizes["batch_size"] * sizes["image_size"] ** 2,
    }
    return [
        rate_result(
            "loader/compact_vs_float32",
            Timing(seconds["compact"]),
            Timing(seconds["float"]),
            items=counts["compact"],
            target=None,
            note=f"{sizes['image_size']}px batch {sizes['batch_size']}, {WORKERS} workers, "
            f"memory cache, {'CUDA' if device else 'CPU only (no pinning)'}",
            batch_mb={k: v / 2**20 for k, v in batch_bytes.items()},
            images_per_pass=counts["compact"],
            workers=WORKERS,
            device=str(device) if device else "cpu",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    return standalone_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
