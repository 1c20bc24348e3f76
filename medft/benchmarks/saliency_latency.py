"""Saliency latency: one Grad-CAM map for one 224-px image, against one forward+backward pass.

For each backbone (random weights, ``pretrained=False``; the weights do not change the cost)
it times, alternating them on the same prepared input so machine load hits all alike:

- ``forward``: one forward pass under ``no_grad`` (what a prediction costs);
- ``fwd+bwd``: one forward pass and a full backward pass to every parameter (what
  pytorch-grad-cam's Grad-CAM does inside; the yardstick issue 6 asks for);
- ``gradcam``: :func:`medft.explain.explain` end to end for one finding: preprocessing
  from the display image, forward, gradient down to the target layer only, map back to
  the original grid;
- ``gradcam_all``: the same for every finding of a 14-finding head (one forward pass,
  one head-only backward pass per finding);
- ``pytorch_grad_cam``: the library's ``GradCAM`` on the prepared input, for reference
  (only where grad-cam, a dev dependency, is installed; an installed medft may lack it).

It prints the median of the repeats in seconds and the ratio gradcam / fwd+bwd (targets:
under 0.5 s for tf_efficientnet_lite0, ratio at most 1.5).

    python -m medft.benchmarks.saliency_latency [--repeats N] [--threads T] [--channels-last]
                                          [--models a,b] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch

from medft._io import write_json
from medft.explain import default_preprocess, explain, resolve_target_layer

TARGET_SECONDS = {"tf_efficientnet_lite0": 0.5}
TARGET_RATIO = 1.5
FINDINGS = [f"finding_{i}" for i in range(14)]


def radiograph(size: int = 224, seed: int = 0) -> np.ndarray:
    """A display-space image with smooth structure and noise, values in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = 0.6 * np.exp(-(((x - 0.5) / 0.4) ** 4 + ((y - 0.5) / 0.45) ** 4)) + 0.2
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    return np.clip(image, 0, 1).astype(np.float32)


def timers(name: str, channels_last: bool) -> dict[str, Callable[[], object]]:
    """The operations to time for one backbone, keyed by column name."""
    model = timm.create_model(name, pretrained=False, num_classes=len(FINDINGS)).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    image = radiograph()
    preprocess = default_preprocess(model, size=224)
    inputs, _ = preprocess(image)
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)

    def forward() -> object:
        with torch.no_grad():
            return model(inputs)

    def forward_backward() -> object:
        model.zero_grad(set_to_none=True)
        model(inputs)[0, 0].backward()
        return None

    def gradcam() -> object:
        return explain(model, image, labels=FINDINGS, findings=FINDINGS[:1], preprocess=preprocess)

    def gradcam_all() -> object:
        return explain(model, image, labels=FINDINGS, preprocess=preprocess)

    ops: dict[str, Callable[[], object]] = {
        "forward": forward,
        "fwd+bwd": forward_backward,
        "gradcam": gradcam,
        "gradcam_all": gradcam_all,
    }
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        return ops  # the reference column is optional (grad-cam is a dev dependency)

    layer = resolve_target_layer(model).module
    library = GradCAM(model=model, target_layers=[layer])

    def pytorch_grad_cam() -> object:
        return library(inputs, targets=[ClassifierOutputTarget(0)])

    return {**ops, "pytorch_grad_cam": pytorch_grad_cam}


def measure(name: str, repeats: int, channels_last: bool) -> dict[str, object]:
    """Median seconds per operation, the operations interleaved repeat by repeat."""
    ops = timers(name, channels_last)
    for op in ops.values():  # warm-up: allocator, kernels, lazy imports
        op()
    samples: dict[str, list[float]] = {key: [] for key in ops}
    for _ in range(repeats):
        for key, op in ops.items():
            start = time.perf_counter()
            op()
            samples[key].append(time.perf_counter() - start)
    row: dict[str, object] = {"model": name}
    row.update({key: statistics.median(values) for key, values in samples.items()})
    row["ratio"] = row["gradcam"] / row["fwd+bwd"]
    row["target_s"] = TARGET_SECONDS.get(name)
    return row


def print_table(rows: list[dict[str, object]]) -> None:
    columns = ["forward", "fwd+bwd", "gradcam", "gradcam_all", "pytorch_grad_cam"]
    header = f"{'model':24s}" + "".join(f"{c:>17s}" for c in columns) + f"{'ratio':>8s}"
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = "".join(f"{row[c]:16.3f}s" if c in row else f"{'-':>17s}" for c in columns)
        print(f"{row['model']:24s}{cells}{row['ratio']:7.2f}x")
    print(
        f"ratio = gradcam / fwd+bwd (target <= {TARGET_RATIO}); gradcam_all = 14 findings; "
        f"threads = {torch.get_num_threads()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--models", default="tf_efficientnet_lite0,resnet50")
    parser.add_argument("--out", type=Path, help="folder for saliency_latency.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = [measure(name, args.repeats, args.channels_last) for name in args.models.split(",")]
    print_table(rows)
    if args.out is not None:
        write_json(
            args.out / "saliency_latency.json",
            {
                "benchmark": "saliency_latency",
                "target_ratio": TARGET_RATIO,
                "rows": rows,
                "repeats": args.repeats,
                "threads": torch.get_num_threads(),
                "channels_last": args.channels_last,
                "torch": torch.__version__,
                "timm": timm.__version__,
                "machine": platform.platform(),
                "cpu_count": os.cpu_count(),
            },
        )
    for row in rows:
        if row["target_s"]:
            verdict = "met" if row["gradcam"] < row["target_s"] else "MISSED"
            print(f"{row['model']}: target < {row['target_s']} s {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
