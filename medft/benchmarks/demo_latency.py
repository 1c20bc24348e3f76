"""Demo latency: seconds from upload to result for one image, on this CPU.

Times what the demo does when a clinician drops one file on the page, for a 2048-px and a
256-px synthetic chest DICOM, with the quickstart backbone (``tf_efficientnet_lite0`` at
224 px, random weights: the weights do not change the cost) or a given checkpoint:

- ``analyse``: read the upload, decode it in display space, fit it into the model input,
  predict every finding (:meth:`InferenceService.analyse_bytes`, cache empty);
- ``overlay``: Grad-CAM maps of every finding on the view grid and the overlay of the top
  finding (:meth:`InferenceService.overlay`);
- ``png``: encoding the image and the overlay as PNG files for the browser;
- ``service``: the sum, i.e. upload-to-result inside the server;
- ``client`` (with ``--client``): the same request end to end through ``gradio_client``
  against the app on a local port (upload, queue, processing; output files not
  downloaded), each run with a file of new content so no cache helps.

Each figure is the median of ``--repeats`` runs after one warm-up; service and client runs
alternate. On a shared machine use ``--threads 1``: with more torch threads than free cores
a forward pass can take ten times longer (see docs/demo.md).

    python -m medft.benchmarks.demo_latency [--repeats N] [--threads T] [--checkpoint CKPT]
                                      [--client] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image

from medft._io import write_json
from medft.data.synth import synthesize
from medft.demo.service import InferenceService
from medft.demo.ui import PNG_COMPRESS_LEVEL
from medft.demo.uploads import read_limited
from medft.model.checkpoint import load_classifier
from medft.model.module import XrayClassifier

SIZES = (2048, 256)
LABELS = ["abnormal", "nodule", "opacity", "effusion"]
BACKBONE = "tf_efficientnet_lite0"


def write_checkpoint(path: Path, backbone: str = BACKBONE, image_size: int = 224) -> Path:
    """A medft checkpoint of a randomly initialised classifier (same cost as a trained one)."""
    model = XrayClassifier(backbone=backbone, labels=LABELS, pretrained=False)
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "medft": {"labels": LABELS, "task": "multilabel", "backbone": backbone,
                  "image_size": image_size, "fit_mode": "pad", "cache_dtype": "uint8"},
    }  # fmt: skip
    torch.save(checkpoint, path)
    return path


def make_cases(folder: Path) -> dict[int, Path]:
    """One synthetic chest DICOM per size (uncompressed, so the size is the matrix size)."""
    cases = {}
    for size in SIZES:
        root = synthesize(folder / f"s{size}", 1, size=size, seed=11, workers=1).root
        path = next((root / "images").rglob("*.dcm"))
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        ds.save_as(path, enforce_file_format=True)
        cases[size] = path
    return cases


def variant(path: Path, index: int, folder: Path) -> Path:
    """The same image with new content bytes (Instance Number changed): defeats caches."""
    ds = pydicom.dcmread(path)
    ds.InstanceNumber = 1000 + index
    out = folder / f"{path.stem}-{index}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def png_bytes(image: np.ndarray) -> int:
    """Encode for the browser as the page does (PNG, fast zlib level); returns the size."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.tell()


def time_service(classifier, path: Path) -> dict[str, float]:
    """One upload-to-result pass inside the server (fresh service: nothing cached)."""
    service = InferenceService(classifier)
    start = time.perf_counter()
    case = service.analyse_bytes(read_limited(path, service.max_bytes))
    analysed = time.perf_counter()
    overlay = service.overlay(case, case.top.finding)
    drawn = time.perf_counter()
    png_bytes(np.round(service.view_image(case) * 255).astype(np.uint8))
    png_bytes(overlay)
    done = time.perf_counter()
    return {
        "analyse": analysed - start,
        "overlay": drawn - analysed,
        "png": done - drawn,
        "service": done - start,
    }


def time_client(url: str, path: Path) -> float:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)
    start = time.perf_counter()
    client.predict([handle_file(str(path))], LABELS[0], "gradcam", 0.5, api_name="/analyse")
    return time.perf_counter() - start


def measure(checkpoint: Path, cases: dict[int, Path], repeats: int, client: bool, tmp: Path):
    classifier = load_classifier(checkpoint)
    rows = []
    server = None
    if client:
        from medft.demo import DemoSettings, start_demo

        server = start_demo(DemoSettings(checkpoint=checkpoint, port=0, examples=tmp / "s256"))
    try:
        for size, path in cases.items():
            time_service(classifier, path)  # warm-up
            if server is not None:
                time_client(server.url, variant(path, 0, tmp))
            samples, runs = [], []
            for index in range(repeats):  # interleaved, so machine load hits both alike
                samples.append(time_service(classifier, path))
                if server is not None:
                    runs.append(time_client(server.url, variant(path, index + 1, tmp)))
            row: dict[str, object] = {
                "image": f"{size}x{size}",
                "file_mb": path.stat().st_size / 2**20,
                **{key: statistics.median(s[key] for s in samples) for key in samples[0]},
            }
            if runs:
                row["client"] = statistics.median(runs)
            rows.append(row)
    finally:
        if server is not None:
            server.close()
    return classifier, rows


def print_table(rows: list[dict[str, object]], backbone: str, image_size: int) -> None:
    columns = ["analyse", "overlay", "png", "service"] + (["client"] if "client" in rows[0] else [])
    header = f"{'image':>10s}{'file MB':>9s}" + "".join(f"{c:>10s}" for c in columns)
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = "".join(f"{row[c]:9.3f}s" for c in columns)
        print(f"{row['image']:>10s}{row['file_mb']:9.1f}{cells}")
    print(
        f"median seconds; model {backbone} at {image_size} px, {len(LABELS)} findings; "
        f"torch threads = {torch.get_num_threads()}, cpu_count = {os.cpu_count()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: random lite0")
    parser.add_argument("--client", action="store_true", help="also time through gradio_client")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="medft-demo-bench-") as folder:
        tmp = Path(folder)
        checkpoint = args.checkpoint or write_checkpoint(tmp / "lite0.ckpt")
        cases = make_cases(tmp)
        classifier, rows = measure(checkpoint, cases, args.repeats, args.client, tmp)
    backbone = str(classifier.meta.get("backbone", "?"))
    print_table(rows, backbone, classifier.image_size)
    if args.out is not None:
        write_json(
            args.out,
            {
                "benchmark": "demo_latency",
                "rows": rows,
                "repeats": args.repeats,
                "backbone": backbone,
                "image_size": classifier.image_size,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.platform(),
                "cpu_count": os.cpu_count(),
                "load_average": os.getloadavg(),
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
