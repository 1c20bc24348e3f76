"""GPU training throughput: ``medft`` fit vs the bare model, and the loader's share (issue 8).

Runs only on a CUDA machine. For each backbone (default ``resnet50`` and ``convnext_tiny``)
at 224 px, bf16-mixed, channels-last, batch 64, with and without augmentation, it trains
the real medft stack (``XrayDataModule`` with the disk decode cache, its default loader
workers and pinned memory; ``XrayClassifier``; a Lightning ``Trainer``) for one warm-up
epoch and ``--epochs`` timed ones, and times each epoch from its start hook to its end hook
with the GPU synchronised at both ends. Right after each medft epoch the reference runs:
the same timm model (channels-last, same normalisation, AdamW, BCE, clipping at 1.0)
under ``torch.autocast(bfloat16)`` over the same number of images already on the GPU, with
no loader at all. medft / reference is the share of the model's own speed that medft
delivers: at ``>= 0.90`` the loader keeps the GPU busy more than 90% of the time.
``LoaderMonitor``'s wait share (host time spent waiting for the next batch) is reported
with each row.

    python -m medft.benchmarks.gpu --out DIR [--images 4096] [--backbones resnet50 convnext_tiny]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F

from medft.bench import BenchResult, Target, Timing, format_table, rate_result, write_results

TARGET = Target(0.90)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a host clock reads what the GPU did."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SyncCounter(L.Callback):
    """Record where the training steps make the host wait for the GPU (CUDA sync debug mode).

    A synchronising call inside the step stops the host from queueing work ahead, so the
    GPU idles while Python runs; this lists such calls by their Python stack.
    """

    def __init__(self) -> None:
        self.stacks: dict[str, int] = {}
        self._saved: Any = None

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, idx: int) -> None:
        import warnings

        torch.cuda.set_sync_debug_mode("warn")
        self._saved = warnings.showwarning
        warnings.simplefilter("always")

        def record(message: Any, category: Any, *rest: Any, **kwargs: Any) -> None:
            if "synchroniz" not in str(message):
                return
            import traceback

            frames = [f for f in traceback.extract_stack()[:-2] if "warnings" not in f.filename]
            key = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames[-6:][::-1])
            self.stacks[key] = self.stacks.get(key, 0) + 1

        warnings.showwarning = record

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        import warnings

        torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = self._saved


class SyncedEpochClock(L.Callback):
    """Epoch seconds with the GPU synchronised at both ends; runs ``after_epoch`` after each."""

    def __init__(self, after_epoch: Any, device: torch.device) -> None:
        self.after_epoch = after_epoch
        self.device = device
        self.epoch_seconds: list[float] = []
        self.images: list[int] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        sync(self.device)
        self.images.append(0)
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.images[-1] += len(batch["image"])

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        sync(self.device)
        self.epoch_seconds.append(time.perf_counter() - self._start)
        self.after_epoch()


class GpuReference:
    """The bare model: a hand-written bf16 training loop over batches already on the GPU."""

    def __init__(
        self, backbone: str, batch: int, size: int, n_images: int, device: torch.device
    ) -> None:
        self.device = device
        model = timm.create_model(backbone, pretrained=False, num_classes=1)
        self.model = model.to(device, memory_format=torch.channels_last).train()
        cfg = self.model.pretrained_cfg
        self.mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=1e-4)
        generator = torch.Generator(device=device).manual_seed(0)
        self.images = torch.rand(batch, 1, size, size, device=device, generator=generator)
        self.labels = (torch.rand(batch, 1, device=device, generator=generator) > 0.5).float()
        self.steps = max(1, n_images // batch)
        self.seconds: list[float] = []

    def epoch(self) -> None:
        """As many steps as one medft epoch has images; timed with the GPU synchronised."""
        sync(self.device)
        start = time.perf_counter()
        for _ in range(self.steps):
            x = (self.images.expand(-1, 3, -1, -1) - self.mean) / self.std
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                logits = self.model(x)
            loss = F.binary_cross_entropy_with_logits(logits.float(), self.labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
        sync(self.device)
        self.seconds.append(time.perf_counter() - start)


def measure(
    manifest: Path,
    n_images: int,
    cache_dir: Path,
    backbone: str,
    *,
    augment: bool,
    args: argparse.Namespace,
) -> BenchResult:
    """One backbone, with or without augmentation: medft epochs interleaved with the bare model."""
    from medft.data.datamodule import XrayDataModule
    from medft.data.loader_monitor import LoaderMonitor
    from medft.model.module import XrayClassifier

    L.seed_everything(0, workers=True)
    data = XrayDataModule(
        str(manifest), image_size=args.size, batch_size=args.batch, cache=args.cache,
        num_workers=args.workers,
        cache_dir=str(cache_dir), augment=augment, val_fraction=0.0, test_fraction=0.0,
        labels=["abnormal"], audit=False,
    )  # fmt: skip
    model = XrayClassifier(backbone=backbone, pretrained=False, freeze="full", lr=1e-4)
    # Every image trains (no validation or test part); drop_last leaves the last partial batch.
    device = torch.device(args.device)
    reference = GpuReference(backbone, args.batch, args.size, n_images, device)
    clock = SyncedEpochClock(reference.epoch, device)
    monitor = LoaderMonitor()
    callbacks: list[L.Callback] = [clock, monitor]
    counter = SyncCounter() if args.sync_debug and device.type == "cuda" else None
    if counter is not None:
        callbacks.append(counter)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision="bf16-mixed", max_epochs=1 + args.epochs,
        limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
        callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    if counter is not None:
        print(f"[gpu] synchronising calls inside {backbone} training steps:")
        for stack, count in sorted(counter.stacks.items(), key=lambda kv: -kv[1])[:8]:
            print(f"  {count:5d}  {stack}")
    images = clock.images[1]
    ref_images = reference.steps * args.batch
    tag = "augment" if augment else "no_augment"
    return rate_result(
        f"gpu/fit/{backbone}/{tag}",
        Timing(clock.epoch_seconds[1:]),
        Timing([s * images / ref_images for s in reference.seconds[1:]]),
        items=images,
        target=TARGET,
        note=(
            f"{args.size}px batch {args.batch} bf16-mixed, {images} img/epoch, "
            f"{data.num_workers} workers; loader wait share "
            + ", ".join(f"{s:.3f}" for s in monitor.shares)
        ),
        backbone=backbone,
        augment=augment,
        num_workers=data.num_workers,
        loader_wait_shares=monitor.shares,
        gpu=torch.cuda.get_device_name(0) if device.type == "cuda" else None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after a warm-up")
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "convnext_tiny"])
    parser.add_argument("--synth-workers", type=int, default=None)
    parser.add_argument("--augment", choices=["both", "on", "off"], default="both")
    parser.add_argument("--cache", choices=["disk", "memory"], default="disk")
    parser.add_argument("--workers", type=int, default=None, help="default: medft's choice")
    parser.add_argument(
        "--sync-debug", action="store_true", help="list calls that make the host wait (CUDA)"
    )
    parser.add_argument(
        "--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run of the script"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("medft.benchmarks.gpu needs a CUDA GPU; none is visible here.", file=sys.stderr)
        return 2
    from medft.data.synth import synthesize

    args.out.mkdir(parents=True, exist_ok=True)
    results: list[BenchResult] = []
    with tempfile.TemporaryDirectory(prefix="medft-bench-gpu-") as tmp:
        work = Path(tmp)
        made = synthesize(work / "synth", args.images, size=256, seed=0,
                          workers=args.synth_workers)  # fmt: skip
        print(f"[gpu] {made.n_images} images synthesized in {made.seconds:.0f} s", flush=True)
        for backbone in args.backbones:
            modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.augment]
            for augment in modes:
                started = time.perf_counter()
                row = measure(
                    made.labels_csv, made.n_images, work / "cache", backbone,
                    augment=augment, args=args,
                )  # fmt: skip
                results.append(row)
                print(f"[gpu] {results[-1].name}: {time.perf_counter() - started:.0f} s",
                      flush=True)  # fmt: skip
    write_results(args.out, results, quick=False)
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
