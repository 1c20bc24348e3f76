"""Pointing game: `medft explain` maps of a model trained on synthetic radiographs hit the lesion.

A small timm CNN (``test_byobnet``, random init) is fine-tuned with `medft fit`'s wiring on
synthetic chest radiographs (medft synth's phantoms, 128 px) in which each abnormal image holds
one nodule or opacity whose centre and radius are recorded. The lesions are made larger and
denser than synth's defaults (radius x2, contrast x3): the defaults are meant to be hard, and a
model that trains in two minutes on a shared CPU does not learn them. Effusions (a band along a
lung base, no single point) and second findings are left out, so every image has one target.

Held-out abnormal images are then explained by :func:`explain_inputs` and scored as in the
pointing game (Zhang et al., 2018): a hit is a map whose maximum, on the original pixel grid,
lies within ``k = lesion_r + 15/224 * side`` of the lesion centre, i.e. inside the lesion with
the game's usual 15-px tolerance at 224 px scaled to the image (8.6 px at 128 px). Two
baselines that do not look at the image: a uniformly random pixel (exact expected hit rate:
the share of pixels within ``k``) and a pointer that knows where lesions usually are (the
centres of the other test images' lesions, averaged over all pairs).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT

from medft.data._phantom import Finding
from medft.data.synth import CSV_COLUMNS, plan_cases, write_case
from medft.explain.batch import explain_inputs

pytestmark = pytest.mark.slow

SIZE = 128
TOLERANCE = 15 / 224  # pointing-game tolerance as a fraction of the image side
RADIUS_GAIN, CONTRAST_GAIN = 2.0, 3.0


def enlarge(finding: Finding) -> Finding:
    """The same finding, larger and denser (a nodule or opacity that a small model can learn)."""
    return dataclasses.replace(
        finding, radius=finding.radius * RADIUS_GAIN, contrast=finding.contrast * CONTRAST_GAIN
    )


def lesion_dataset(out: Path, n_patients: int, *, seed: int, prevalence: float) -> Path:
    """Synthetic DICOMs with one enlarged nodule or opacity per abnormal image; labels.csv."""
    rows = []
    for plan in plan_cases(n_patients, size=SIZE, seed=seed, prevalence=prevalence):
        if plan.findings and plan.findings[0].kind == "effusion":
            continue
        findings = tuple(enlarge(finding) for finding in plan.findings[:1])
        rows.append(write_case(dataclasses.replace(plan, findings=findings), out))
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return out / "labels.csv"


@pytest.fixture(scope="module")
def lesion_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A checkpoint that tells abnormal from normal, and held-out abnormal images."""
    from medft.lightning_cli import best_checkpoint_path, run_lightning

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than 2 on a shared CPU
    root = tmp_path_factory.mktemp("pointing")
    (root / "train").mkdir()
    (root / "test").mkdir()
    train_csv = lesion_dataset(root / "train", 600, seed=11, prevalence=0.5)
    test_csv = lesion_dataset(root / "test", 40, seed=12, prevalence=1.0)
    cli = run_lightning(
        "fit",
        [
            "--config", str(ROOT / "configs" / "quickstart.yaml"),
            "--data.manifest", str(train_csv),
            "--data.labels", "[abnormal]",
            "--data.image_size", str(SIZE),
            "--data.batch_size", "16",
            "--data.num_workers", "0",
            "--data.val_fraction", "0.15",
            "--data.test_fraction", "0.0",
            "--model.backbone", "test_byobnet",
            "--model.pretrained", "false",
            "--model.freeze", "full",
            "--model.lr", "0.003",
            "--model.lr_decay", "1.0",
            "--model.drop_rate", "0.0",
            "--trainer.max_epochs", "12",
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(root / "run"),
        ],
        run=False,
    )  # fmt: skip
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        yield {
            "checkpoint": best_checkpoint_path(cli.trainer),
            "test_csv": test_csv,
            "root": root,
        }
    finally:
        torch.set_num_threads(threads)


def pointing_game(index: pd.DataFrame, labels_csv: Path, out: Path) -> dict[str, float]:
    """Hit rate of the maps' maxima, and of the two image-blind baselines."""
    table = pd.read_csv(labels_csv)
    table = table[table["abnormal"] == 1]
    table["input"] = [str(labels_csv.parent / path) for path in table["path"]]
    scored = table.merge(index[index["status"] == "ok"], on="input", validate="one_to_one")
    centres = scored[["lesion_y", "lesion_x"]].to_numpy(float)
    hits, uniform = [], []
    for row, (cy, cx) in zip(scored.itertuples(), centres, strict=True):
        saliency = np.load(out / row.raw_map)
        k = row.lesion_r + TOLERANCE * max(saliency.shape)
        peak = np.unravel_index(np.argmax(saliency), saliency.shape)
        hits.append(np.hypot(peak[0] - cy, peak[1] - cx) <= k)
        rows, cols = np.indices(saliency.shape)
        uniform.append(float((np.hypot(rows - cy, cols - cx) <= k).mean()))
    k_all = scored["lesion_r"].to_numpy(float) + TOLERANCE * SIZE
    distances = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
    prior = distances <= k_all[:, None]
    np.fill_diagonal(prior, False)
    n = len(scored)
    return {
        "n": n,
        "hit_rate": float(np.mean(hits)),
        "uniform_baseline": float(np.mean(uniform)),
        "prior_baseline": float(prior.sum() / (n * (n - 1))),
    }


#: (method, target layer, run the trust checks): the automatic layer is the last stage (a
#: 4 x 4 grid at 128 px); the stage before it gives an 8 x 8 grid.
RUNS = {
    "gradcam": ("gradcam", "auto", True),
    "gradcam-stage2": ("gradcam", "model.stages.2", False),
    "occlusion": ("occlusion", "auto", True),
}


@pytest.fixture(scope="module")
def explained(lesion_model, tmp_path_factory) -> dict[str, tuple[pd.DataFrame, Path]]:
    """`medft explain [--check]` over the held-out images, per entry of RUNS."""
    images = lesion_model["test_csv"].parent / "images"
    runs = {}
    for name, (method, layer, check) in RUNS.items():
        out = tmp_path_factory.mktemp(name)
        index = explain_inputs(
            lesion_model["checkpoint"], images, out, method=method, target_layer=layer,
            check=check, check_max=10,
        )  # fmt: skip
        runs[name] = (index, out)
    return runs


@pytest.mark.parametrize("run", list(RUNS))
def test_the_map_peaks_at_the_lesion(run, explained, lesion_model):
    index, out = explained[run]
    score = pointing_game(index, lesion_model["test_csv"], out)
    print(f"\npointing game, {run} at {index['layer'].iloc[0]}: {json.dumps(score)}")
    assert score["n"] >= 20
    assert score["hit_rate"] >= score["uniform_baseline"] + 0.35, score
    assert score["hit_rate"] >= score["prior_baseline"] + 0.25, score


def checks_summary(explained, run: str) -> dict:
    summary = json.loads((explained[run][1] / "checks.json").read_text())["summary"]
    print(f"\ntrust checks, {run}: {json.dumps(summary)}")
    return summary


def test_randomising_the_model_changes_the_gradcam_maps(explained):
    levels = checks_summary(explained, "gradcam")["randomisation"]
    assert levels[0]["median_spearman"] == pytest.approx(1.0)
    assert levels[-1]["median_spearman"] < 0.5


@pytest.mark.parametrize("run", ["gradcam", "occlusion"])
def test_the_salient_pixels_are_the_ones_the_model_uses(run, explained):
    """Removing the most salient pixels first lowers the probability faster than random order,
    and restoring them first brings it back faster (images the model calls positive)."""
    positive = checks_summary(explained, run)["deletion"]["called_positive"]
    assert positive["n"] >= 5
    assert positive["mean_deletion_gain"] > 0.15
    assert positive["mean_insertion_gain"] > 0.15
