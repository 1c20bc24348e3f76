"""Regenerate the pictures in docs/images/ from a real medft run on synthetic data.

    python docs/make_pictures.py          # quickstart recipe: lite0 with offline ImageNet weights
    python docs/make_pictures.py --tiny   # random-weight test_resnet at 64 px (a quick check)

Runs the quickstart (synthesise, split by patient, fine-tune, test), evaluates the best
checkpoint on the held-out patients, explains a few of them and photographs report.html in
headless Chromium (/usr/bin/chromium via Playwright). Writes roc.png, reliability.png,
saliency_grid.png and report.png, each re-encoded to stay under --max-kb.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]


def save_png(image: Image.Image, path: Path, max_bytes: int) -> int:
    """Write ``image`` as PNG under ``max_bytes``: optimise, then 256 colours, then shrink."""
    image = image.convert("RGB")
    for attempt in range(8):
        candidate = image if attempt == 0 else image.quantize(256, dither=Image.Dither.NONE)
        candidate.save(path, optimize=True)
        if path.stat().st_size <= max_bytes:
            return path.stat().st_size
        image = image.resize((int(image.width * 0.85), int(image.height * 0.85)), Image.LANCZOS)
    raise RuntimeError(f"{path}: cannot get under {max_bytes} bytes")


def test_manifest(data_dir: Path, splits_csv: Path) -> Path:
    """A manifest of the run's held-out test patients (paths stay relative to ``data_dir``)."""
    labels = pd.read_csv(data_dir / "labels.csv")
    splits = pd.read_csv(splits_csv)
    test_paths = set(splits.loc[splits["split"] == "test", "path"])
    absolute = labels["path"].map(lambda p: str((data_dir / p).resolve()))
    out = data_dir / "test.csv"
    labels[absolute.isin(test_paths)].to_csv(out, index=False)
    return out


def mosaic(paths: Sequence[Path], columns: int = 2) -> Image.Image:
    """Tile same-sized images row by row on a white canvas."""
    tiles = [Image.open(p).convert("RGB") for p in paths]
    width, height = max(t.width for t in tiles), max(t.height for t in tiles)
    rows = -(-len(tiles) // columns)
    canvas = Image.new("RGB", (columns * width, rows * height), "white")
    for i, tile in enumerate(tiles):
        canvas.paste(tile, ((i % columns) * width, (i // columns) * height))
    return canvas


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 1400) -> None:
    """Photograph the top of a self-contained HTML page; any network request is refused."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": width, "height": height})
        page.route("http*://**", lambda route: route.abort())
        page.goto(html.resolve().as_uri())
        page.screenshot(path=str(png))
        browser.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--work", type=Path, help="keep the run here (default: a temp folder)")
    parser.add_argument("--tiny", action="store_true", help="random-weight test_resnet, 64 px")
    parser.add_argument("--patients", type=int, help="default: the quickstart's 400")
    parser.add_argument("--epochs", type=int, help="default: the recipe's 8")
    parser.add_argument("--image-size", type=int, help="default: the recipe's 192 (--tiny: 64)")
    parser.add_argument("--max-kb", type=int, default=290)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from medft.eval.evaluate import evaluate
    from medft.explain.batch import explain_inputs
    from medft.quickstart import run_quickstart

    work = args.work or Path(tempfile.mkdtemp(prefix="medft-pictures-"))
    model = {"backbone": "test_resnet", "pretrained": False, "image_size": 64} if args.tiny else {}
    if args.image_size:
        model["image_size"] = args.image_size
    result = run_quickstart(work, epochs=args.epochs, n_patients=args.patients, quiet=True, **model)
    checkpoint = Path(result["checkpoint"])
    data_dir = work / "data"
    manifest = test_manifest(data_dir, work / "run" / "splits.csv")
    metrics = evaluate(checkpoint, manifest, work / "eval", n_boot=500, by=["view"])

    predictions = pd.read_csv(work / "eval" / "predictions.csv")
    ranked = predictions.sort_values("prob_abnormal", ascending=False)
    picks = pd.concat([ranked[ranked["abnormal"] == 1].head(2), ranked[ranked["abnormal"] == 0]])
    inputs = work / "explain_inputs"
    inputs.mkdir(exist_ok=True)
    for i, path in enumerate(picks["path"].head(3).tolist() + picks["path"].tail(1).tolist()):
        shutil.copy(path, inputs / f"case{i}.dcm")
    explain_inputs(checkpoint, inputs, work / "explain")
    grids = sorted((work / "explain" / "grids").glob("*_grid.png"))

    args.out.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    budget = args.max_kb * 1024
    sizes["roc.png"] = save_png(Image.open(work / "eval" / "roc.png"), args.out / "roc.png", budget)
    sizes["reliability.png"] = save_png(
        Image.open(work / "eval" / "reliability.png"), args.out / "reliability.png", budget
    )
    sizes["saliency_grid.png"] = save_png(mosaic(grids), args.out / "saliency_grid.png", budget)
    raw_shot = work / "report_raw.png"
    screenshot(work / "eval" / "report.html", raw_shot)
    sizes["report.png"] = save_png(Image.open(raw_shot), args.out / "report.png", budget)

    auroc = metrics["auroc"]["per_class"]["abnormal"]
    print(
        f"run in {work}: {result['backbone']}, {metrics['n_images']} test images, AUROC "
        f"{auroc['value']:.3f} ({auroc['ci_low']:.3f}-{auroc['ci_high']:.3f})"
    )
    for name, size in sizes.items():
        shape = np.asarray(Image.open(args.out / name)).shape
        print(f"  {args.out / name}  {size / 1024:.0f} KB  {shape}")


if __name__ == "__main__":
    main()
