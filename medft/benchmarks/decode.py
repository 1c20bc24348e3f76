"""Decode speed: medft's ``read_xray`` against bare ``pydicom.dcmread(path).pixel_array``.

Writes a 2048x2048 16-bit radiograph-like phantom twice into a temporary folder, once
uncompressed and once as JPEG 2000 lossless (pydicom's own encoder), then times the
readers on the same files, alternating them, and prints images/s (median of the repeats)
and the ratio. ``read_xray`` does more (display chain, checks, metadata); issue 8 asks it
to stay at 0.8x or better of the bare decode. A third reader adds one
``astype(np.float32)`` to the baseline: the least any reader returning float32 must do
(its output has twice the bytes of uint16). Everything runs with all the cores the process
may use, then again pinned to one core where the OS allows pinning.

    python -m medft.benchmarks.decode [--quick] [--repeats N] [--size PX] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from medft._io import write_json
from medft.data.dicom import read_xray

TARGET_RATIO = 0.8


def phantom(size: int, seed: int = 0) -> np.ndarray:
    """A 12-bit image with smooth anatomy-like structure and noise (compresses like an X-ray)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = np.exp(-(((x - 0.5) / 0.38) ** 6 + ((y - 0.55) / 0.45) ** 6))
    lungs = sum(np.exp(-(((x - cx) / 0.13) ** 2 + ((y - 0.5) / 0.25) ** 2)) for cx in (0.32, 0.68))
    ribs = 0.08 * (np.sin(y * 60 + 8 * (x - 0.5) ** 2) > 0.6)
    image = 2600 * body - 1400 * lungs * body + 500 * ribs * body + 300
    image += rng.normal(0, 25, image.shape)
    return np.clip(image, 0, 4095).astype(np.uint16)


def write_pair(folder: Path, size: int) -> dict[str, Path]:
    """The same image as uncompressed and JPEG 2000 lossless DICOM files."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "BENCH-0001"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = phantom(size).tobytes()
    paths = {"uncompressed": folder / "native.dcm", "jpeg2000": folder / "j2k.dcm"}
    ds.save_as(paths["uncompressed"], enforce_file_format=True)
    ds.compress(JPEG2000Lossless)
    ds.save_as(paths["jpeg2000"], enforce_file_format=True)
    return paths


def bare_pydicom(path: Path) -> np.ndarray:
    """The baseline: what a script with no display chain does."""
    return pydicom.dcmread(path).pixel_array


def pydicom_float32(path: Path) -> np.ndarray:
    """The least any float32 reader does: the baseline plus one conversion to float32."""
    return pydicom.dcmread(path).pixel_array.astype(np.float32)


def medft_reader(path: Path) -> np.ndarray:
    return read_xray(path)[0]


def time_pair(
    path: Path, readers: dict[str, Callable[[Path], np.ndarray]], repeats: int
) -> dict[str, list[float]]:
    """Seconds per read for each reader, alternating them so drift hits both alike."""
    for read in readers.values():  # warm the page cache and the codecs
        read(path)
    times: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(repeats):
        for name, read in readers.items():
            start = time.perf_counter()
            read(path)
            times[name].append(time.perf_counter() - start)
    return times


def pin_to_one_core() -> int | None:
    """Pin this process to one CPU; the CPU index, or ``None`` where not supported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def run(size: int, repeats: int) -> list[dict[str, object]]:
    readers = {"pydicom": bare_pydicom, "pydicom_f32": pydicom_float32, "read_xray": medft_reader}
    rows = []
    with tempfile.TemporaryDirectory(prefix="medft-bench-") as tmp:
        paths = write_pair(Path(tmp), size)
        cores = {"all": None}
        if hasattr(os, "sched_getaffinity"):
            cores = {f"all ({len(os.sched_getaffinity(0))})": None, "one": "pin"}
        for core_label, pin in cores.items():
            original = os.sched_getaffinity(0) if pin else None
            if pin:
                pin_to_one_core()
            try:
                for kind, path in paths.items():
                    times = time_pair(path, readers, repeats)
                    medians = {name: statistics.median(t) for name, t in times.items()}
                    rows.append(
                        {
                            "file": kind,
                            "cores": core_label,
                            "size": size,
                            "bytes": path.stat().st_size,
                            "repeats": repeats,
                            "pydicom_img_s": 1 / medians["pydicom"],
                            "pydicom_f32_img_s": 1 / medians["pydicom_f32"],
                            "read_xray_img_s": 1 / medians["read_xray"],
                            "ratio": medians["pydicom"] / medians["read_xray"],
                            "ratio_vs_f32": medians["pydicom_f32"] / medians["read_xray"],
                        }
                    )
            finally:
                if original is not None:
                    os.sched_setaffinity(0, original)
    return rows


def print_table(rows: list[dict[str, object]]) -> None:
    print(
        f"{'file':<13}{'cores':<8}{'MB':>6}{'pydicom':>10}{'+float32':>10}{'read_xray':>11}"
        f"{'ratio':>7}{'vs f32':>8}   (images/s, medians)"
    )
    for r in rows:
        print(
            f"{r['file']:<13}{r['cores']:<8}{r['bytes'] / 1e6:>6.2f}{r['pydicom_img_s']:>10.1f}"
            f"{r['pydicom_f32_img_s']:>10.1f}{r['read_xray_img_s']:>11.1f}"
            f"{r['ratio']:>7.2f}{r['ratio_vs_f32']:>8.2f}"
        )
    worst = min(float(r["ratio"]) for r in rows)
    verdict = "meets" if worst >= TARGET_RATIO else "misses"
    print(
        f"worst ratio read_xray / pydicom {worst:.2f} {verdict} the {TARGET_RATIO}x target; "
        "'+float32' is pydicom plus one astype(float32), the floor for any float32 reader"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 px, 3 repeats (smoke run)")
    parser.add_argument("--repeats", type=int, default=15, help="timed reads per reader")
    parser.add_argument("--size", type=int, default=2048, help="image side in pixels")
    parser.add_argument("--out", type=Path, help="folder for decode.json")
    args = parser.parse_args(argv)
    size, repeats = (512, 3) if args.quick else (args.size, args.repeats)
    rows = run(size, repeats)
    print_table(rows)
    if args.out is not None:
        write_json(
            args.out / "decode.json",
            {
                "benchmark": "decode",
                "target_ratio": TARGET_RATIO,
                "python": sys.version.split()[0],
                "pydicom": pydicom.__version__,
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "rows": rows,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
