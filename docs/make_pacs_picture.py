"""Regenerate docs/images/pacs_capture.png and the SR excerpt of docs/pacs.md from a real run.

    python docs/make_pacs_picture.py [--work DIR] [--epochs 3] [--n-patients 120] [--reuse]

Runs a short quickstart (synthetic data, lite0 with the offline ImageNet weights), explains
the held-out abnormal image the model is surest about with Grad-CAM, writes its SR and
Secondary Capture with :func:`medft.results.write_results`, decodes the capture from the
DICOM file and saves it as a PNG, and prints ``dsrdump``'s rendering of the SR.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pydicom
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    """Build the picture; print where it went and the SR as dsrdump shows it."""
    from medft.data.dicom import load_image
    from medft.explain import DisplayNorm, default_preprocess, explain, render_overlay
    from medft.model.checkpoint import load_classifier
    from medft.quickstart import run_quickstart
    from medft.results import FindingResult, ModelInfo, write_results

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=None, help="keep the run here")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-patients", type=int, default=120)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "pacs_capture.png")
    parser.add_argument("--reuse", action="store_true", help="reuse the quickstart in --work")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="medft-pacs-"))
    if not args.reuse:
        run_quickstart(work / "qs", epochs=args.epochs, n_patients=args.n_patients, quiet=True)
    checkpoint = sorted((work / "qs" / "run").rglob("best*.ckpt"))[-1]
    loaded = load_classifier(checkpoint)
    preprocess = default_preprocess(loaded.model, mode=loaded.fit_mode, size=loaded.image_size)
    labels = pd.read_csv(work / "qs" / "data" / "labels.csv")
    candidates = labels[labels["abnormal"] == 1]["path"].head(12)
    best = None
    for relative in candidates:
        path = work / "qs" / "data" / relative
        image, _ = load_image(path)
        maps = explain(loaded.model, preprocess(image), labels=loaded.labels, method="gradcam")
        if best is None or maps[0].probability > best[2][0].probability:
            best = (path, image, maps)
    assert best is not None
    path, image, maps = best
    norm = DisplayNorm.shared(maps)
    findings = [
        FindingResult(
            m.finding,
            float(m.probability),
            loaded.thresholds[m.finding],
            bool(m.probability >= loaded.thresholds[m.finding]),
            calibrated=False,
        )
        for m in maps
    ]
    overlays = {m.finding: render_overlay(image, m, normalization=norm) for m in maps}
    out = work / "dicom-out"
    written = write_results(
        path,
        findings,
        ModelInfo.from_checkpoint(checkpoint),
        out,
        name="0000_docs",
        overlays=overlays,
        method="gradcam",
    )
    capture = pydicom.dcmread(out / written.captures[0]).pixel_array
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(capture).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB) from {checkpoint}")
    if shutil.which("dsrdump"):
        print(
            subprocess.run(
                ["dsrdump", str(out / written.sr)], capture_output=True, text=True
            ).stdout
        )


if __name__ == "__main__":
    main()
