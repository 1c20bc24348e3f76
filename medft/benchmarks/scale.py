"""Scale: data-pipeline epoch time and peak RSS at growing data set sizes (issue 8, #7).

For each size N the benchmark trains a tiny random-init timm model (``test_vit`` at 128 px:
about 3 ms of CPU per image for forward+backward, so the data pipeline dominates) for two
epochs over N synthetic 256-px DICOMs through the real path:
:class:`~medft.data.datamodule.XrayDataModule` with the disk decode cache and its train
loader (default workers, augmentation on). Epoch 1 includes ``setup`` (decoding every
file into an empty disk cache); epoch 2 reads the cache only.

Every size runs in a fresh child process, so its peak memory is its own and not the
high-water mark of a smaller run. Inside the child a sampler thread reads ``/proc`` every
50 ms: the resident set (``VmRSS``) of the process and of each of its children (the loader
workers), summed; and CPU time (``utime + stime``) of the process and its live children at
epoch boundaries. Summing RSS counts pages shared copy-on-write between the process and
its workers twice, so the peak is an upper bound.

On a shared machine wall time swings with other people's jobs; process CPU seconds do
not, so linearity is judged on CPU seconds per image: each size against the smallest,
within +-20%. "RSS flat" compares the peak RSS growth from the smallest to the largest
size with the growth of the decoded data itself (``N * S * S`` bytes of uint8): a data
set that lived in RAM would grow RSS by about that much.

The synthetic data is written once at the largest size (``medft synth`` with parallel
workers); smaller sizes use the first N rows of its ``labels.csv``. Each size gets its
own empty cache folder. Everything goes to a temporary folder under ``--out``, deleted
afterwards unless ``--keep``.

    python -m medft.benchmarks.scale --out DIR [--sizes 1000 4000 16000] [--keep]
    (the same as ``medft bench scale --out DIR [--sizes ...]``)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medft.bench import BenchResult, Target, format_table, write_results
from medft.errors import ConfigError

DEFAULT_SIZES = (1000, 4000, 16000)
SYNTH_SIZE = 256
IMAGE_SIZE = 128
BATCH_SIZE = 32
BACKBONE = "test_vit"
LINEAR_TOLERANCE = 0.20
RSS_GROWTH_TARGET = 0.25  # RSS may grow by at most a quarter of the decoded data's size
_SAMPLE_SECONDS = 0.05
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ------------------------------------------------------------------ /proc readers


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    found: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            text = (task / "children").read_text()
            found.extend(int(p) for p in text.split())
        return found
    except OSError:
        pass
    try:  # kernels without CONFIG_PROC_CHILDREN: scan every process's parent
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _stat_fields(int(entry.name))[1] == pid:
                found.append(int(entry.name))
    except OSError:
        return []
    return found


def _stat_fields(pid: int) -> tuple[float, int]:
    """``(cpu seconds, parent pid)`` of a process from ``/proc/PID/stat`` (0s if gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, -1
    fields = text.rsplit(")", 1)[1].split()
    # After the command name: state, ppid, ..., utime (field 14), stime (15) of stat(5).
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS, int(fields[1])


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class ProcessMeter:
    """Peak RSS of this process and its children, and their CPU time, from ``/proc``.

    A daemon thread samples RSS every ``interval`` seconds (the sum over the process
    tree and the process alone). :meth:`cpu_seconds` is the CPU time of this process
    plus its live children plus children already reaped (``os.times``).
    """

    def __init__(self, interval: float = _SAMPLE_SECONDS) -> None:
        self.interval = interval
        self.peak_total = 0
        self.peak_self = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medft-rss", daemon=True)

    def __enter__(self) -> ProcessMeter:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """Read the current RSS and update the peaks."""
        own = _rss_bytes(os.getpid())
        total = own + sum(_rss_bytes(pid) for pid in _children(os.getpid()))
        self.peak_self = max(self.peak_self, own)
        self.peak_total = max(self.peak_total, total)

    @staticmethod
    def cpu_seconds() -> float:
        """CPU seconds so far of this process, its live children and its reaped children."""
        times = os.times()
        live = sum(_stat_fields(pid)[0] for pid in _children(os.getpid()))
        return times.user + times.system + times.children_user + times.children_system + live


# ------------------------------------------------------------------ one size (child)


@dataclass
class SizeResult:
    """What one size measured (all in one child process)."""

    n_images: int
    epoch1_wall_s: float
    epoch1_cpu_s: float
    epoch2_wall_s: float
    epoch2_cpu_s: float
    peak_rss_mb: float
    peak_rss_self_mb: float
    maxrss_self_mb: float
    num_workers: int
    data_mb: float

    def per_1k(self, value: float) -> float:
        return value * 1000.0 / self.n_images


def _train_epoch(loader: Any, model: Any, optimizer: Any) -> int:
    import torch
    import torch.nn.functional as F

    seen = 0
    for batch in loader:
        logits = model(batch["image"])
        labels = batch["label"]
        known = ~torch.isnan(labels)
        loss = F.binary_cross_entropy_with_logits(logits[known], labels[known])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(labels)
    return seen


def measure_size(manifest: Path, cache_dir: Path, image_size: int = IMAGE_SIZE) -> SizeResult:
    """Two epochs of the real train loader + a tiny model over ``manifest``; times and RSS."""
    import resource

    import timm
    import torch

    from medft.data.datamodule import XrayDataModule

    torch.set_num_threads(1)
    torch.manual_seed(0)
    with ProcessMeter() as meter:
        wall0, cpu0 = time.perf_counter(), meter.cpu_seconds()
        data = XrayDataModule(
            str(manifest),
            val_fraction=0.0,
            test_fraction=0.0,
            image_size=image_size,
            batch_size=BATCH_SIZE,
            cache="disk",
            cache_dir=str(cache_dir),
            audit=False,
        )
        data.setup("fit")
        model = timm.create_model(
            BACKBONE,
            pretrained=False,
            num_classes=data.num_labels,
            in_chans=1,
            img_size=image_size,
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        loader = data.train_dataloader()
        _train_epoch(loader, model, optimizer)
        wall1, cpu1 = time.perf_counter(), meter.cpu_seconds()
        seen = _train_epoch(loader, model, optimizer)
        wall2, cpu2 = time.perf_counter(), meter.cpu_seconds()
        n_images = len(data._rows("train"))
        del loader  # persistent workers exit here
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if seen < n_images - BATCH_SIZE:
        raise RuntimeError(f"epoch 2 saw {seen} of {n_images} images")
    return SizeResult(
        n_images=n_images,
        epoch1_wall_s=wall1 - wall0,
        epoch1_cpu_s=cpu1 - cpu0,
        epoch2_wall_s=wall2 - wall1,
        epoch2_cpu_s=cpu2 - cpu1,
        peak_rss_mb=meter.peak_total / 2**20,
        peak_rss_self_mb=meter.peak_self / 2**20,
        maxrss_self_mb=maxrss_kb / 1024,
        num_workers=data.num_workers,
        data_mb=n_images * image_size * image_size / 2**20,
    )


def _measure_in_child(manifest: Path, cache_dir: Path, image_size: int) -> SizeResult:
    """Run :func:`measure_size` in a fresh interpreter (so its peak RSS is its own)."""
    command = [sys.executable, "-m", __spec__.name, "--child", str(manifest),
               str(cache_dir), str(image_size)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scale child for {manifest} failed:\n{done.stderr[-4000:]}")
    return SizeResult(**json.loads(done.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------ the benchmark


def _subset(labels_csv: Path, n_images: int, target: Path) -> Path:
    """The first ``n_images`` rows of ``labels_csv`` as a CSV next to it (same folder)."""
    with open(labels_csv, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [row for _, row in zip(range(n_images), reader, strict=False)]
    with open(target, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return target


def results_from_sizes(sizes: Sequence[SizeResult], synth_s: float) -> list[BenchResult]:
    """Bench rows: CPU s per 1k images of each size vs the smallest, and RSS growth."""
    base = sizes[0]
    rows: list[BenchResult] = []
    for size in sizes:
        details = {**asdict(size), "synth_s_total": synth_s}
        for epoch in ("epoch1", "epoch2"):
            cpu = getattr(size, f"{epoch}_cpu_s")
            wall = getattr(size, f"{epoch}_wall_s")
            ratio = size.per_1k(cpu) / base.per_1k(getattr(base, f"{epoch}_cpu_s"))
            rows.append(
                BenchResult(
                    name=f"scale/{epoch}_cpu_{size.n_images}",
                    medft=size.per_1k(cpu),
                    reference=base.per_1k(getattr(base, f"{epoch}_cpu_s")),
                    unit="CPU s/1k images",
                    repeats=1,
                    target=None if size is base else Target(1 + LINEAR_TOLERANCE, higher=False),
                    note=(
                        f"{size.n_images} images vs {base.n_images}; wall "
                        f"{size.per_1k(wall):.1f} s/1k; linear within +-20%: "
                        f"{abs(ratio - 1) <= LINEAR_TOLERANCE}"
                    ),
                    details=details,
                )
            )
    largest = sizes[-1]
    growth = largest.peak_rss_mb - base.peak_rss_mb
    data_growth = largest.data_mb - base.data_mb
    rows.append(
        BenchResult(
            name=f"scale/rss_growth_{base.n_images}_to_{largest.n_images}",
            medft=growth,
            reference=data_growth,
            unit="MB (RSS growth / data growth)",
            repeats=1,
            target=Target(RSS_GROWTH_TARGET, higher=False) if data_growth > 0 else None,
            note=(
                f"peak RSS (process + loader workers) {base.peak_rss_mb:.0f} -> "
                f"{largest.peak_rss_mb:.0f} MB; decoded data {base.data_mb:.0f} -> "
                f"{largest.data_mb:.0f} MB"
            ),
            details={"peak_rss_mb": {s.n_images: s.peak_rss_mb for s in sizes}},
        )
    )
    return rows


def size_table(sizes: Sequence[SizeResult]) -> str:
    """Per-size Markdown table: wall and CPU seconds, seconds per 1k images, peak RSS."""
    base = sizes[0]
    lines = [
        "| images | epoch 1 wall s | epoch 1 CPU s | epoch 2 wall s | epoch 2 CPU s | "
        "CPU s/1k (ep1, ep2) | vs smallest (ep1, ep2) | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in sizes:
        r1 = s.per_1k(s.epoch1_cpu_s) / base.per_1k(base.epoch1_cpu_s)
        r2 = s.per_1k(s.epoch2_cpu_s) / base.per_1k(base.epoch2_cpu_s)
        lines.append(
            f"| {s.n_images} | {s.epoch1_wall_s:.1f} | {s.epoch1_cpu_s:.1f} | "
            f"{s.epoch2_wall_s:.1f} | {s.epoch2_cpu_s:.1f} | "
            f"{s.per_1k(s.epoch1_cpu_s):.1f}, {s.per_1k(s.epoch2_cpu_s):.1f} | "
            f"{r1:.2f}, {r2:.2f} | {s.peak_rss_mb:.0f} |"
        )
    return "\n".join(lines)


def run_scale(
    out: str | os.PathLike[str],
    sizes: Sequence[int] = DEFAULT_SIZES,
    *,
    keep: bool = False,
    image_size: int = IMAGE_SIZE,
    echo: Callable[[str], None] = print,
) -> list[BenchResult]:
    """Synthesize, measure every size in its own process, write ``out/bench.json``.

    Args:
        out: Folder for ``bench.json`` and the temporary data (``out/scale-*``).
        sizes: Numbers of images, measured in increasing order.
        keep: Keep the synthetic data and caches instead of deleting them.
        image_size: Model input side (the decoded cache holds ``S*S`` bytes per image).
        echo: Where progress lines and the tables go.

    Returns:
        The result rows (also written to ``out/bench.json``).
    """
    sizes = sorted({int(n) for n in sizes})
    if not sizes or sizes[0] < BATCH_SIZE * 2:
        raise ConfigError(f"--sizes must be at least {BATCH_SIZE * 2} images, got {sizes}")
    from medft.data.synth import synthesize

    Path(out).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="scale-", dir=out))
    try:
        echo(f"[scale] synthesizing {sizes[-1]} images of {SYNTH_SIZE} px in {work}")
        synth = synthesize(work / "synth", sizes[-1], size=SYNTH_SIZE, seed=0)
        echo(f"[scale] synthesized in {synth.seconds:.0f} s")
        measured: list[SizeResult] = []
        for n in sizes:
            manifest = _subset(synth.labels_csv, n, work / "synth" / f"labels_{n}.csv")
            started = time.perf_counter()
            result = _measure_in_child(manifest, work / f"cache_{n}", image_size)
            measured.append(result)
            echo(f"[scale] {n} images measured in {time.perf_counter() - started:.0f} s")
        results = results_from_sizes(measured, synth.seconds)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    write_results(out, results, quick=False)
    echo(size_table(measured))
    echo(format_table(results))
    return results


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--child"]:
        manifest, cache_dir, image_size = args[1:4]
        result = measure_size(Path(manifest), Path(cache_dir), int(image_size))
        print(json.dumps(asdict(result)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for bench.json")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--keep", action="store_true", help="keep the synthetic data")
    parsed = parser.parse_args(args)
    run_scale(parsed.out, parsed.sizes, keep=parsed.keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
