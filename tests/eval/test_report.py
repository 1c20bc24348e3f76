"""report.html is one self-contained file with the numbers, figures and the research notice."""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest

from medft.eval import plots
from medft.eval.metrics import roc_band, summarize
from medft.eval.report import NOTICE, cv_report, evaluation_report
from medft.eval.subgroups import subgroup_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = ["Effusion", "Nodule <rare>"]


def _data(seed: int = 0, n_patients: int = 60):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), 2).astype(str)
    y = np.repeat((rng.random((n_patients, 2)) < 0.35).astype(float), 2, axis=0)
    p = np.clip(0.45 * y + 0.55 * rng.random(y.shape), 0, 1)
    return y, p, groups


@pytest.fixture(scope="module")
def metrics() -> dict:
    y, p, groups = _data()
    thresholds = {LABELS[0]: 0.5, LABELS[1]: 0.45}
    result = summarize(y, p, LABELS, groups, thresholds=thresholds, n_boot=100, seed=0)
    views = np.where(np.arange(len(y)) % 3, "PA", "AP")
    table = pd.DataFrame({"patient_id": groups, "view": views})
    for j, label in enumerate(LABELS):
        table[label] = y[:, j]
        table[f"prob_{label}"] = p[:, j]
    result["subgroups"] = subgroup_metrics(
        table, ["view"], LABELS, thresholds=thresholds, n_boot=100, min_count=5
    ).to_dict()
    result.update(
        {
            "notice": NOTICE,
            "checkpoint": {"file": "best.ckpt", "backbone": "test_resnet", "task": "multilabel"},
            "manifest": {"file": "labels.csv"},
            "level": "image",
            "data": {
                "n_images_manifest": len(y) + 3,
                "n_images_evaluated": len(y),
                "n_patients": 60,
                "positives": {label: int(y[:, j].sum()) for j, label in enumerate(LABELS)},
                "training_split": {"train": {"images": 10, "patients": 5, "positives": {}}},
            },
            "skipped_files": {"count": 3, "csv": "skipped_files.csv"},
            "temperature_scaling": {
                "temperature": 1.8,
                "applied": False,
                "per_class": {
                    label: {
                        "ece_before": 0.2,
                        "ece_after": 0.05,
                        "brier_before": 0.3,
                        "brier_after": 0.2,
                    }
                    for label in LABELS
                },
            },
            "warnings": ["3 file(s) could not be read <and were left out>"],
        }
    )
    return result


@pytest.fixture(scope="module")
def figures(metrics: dict) -> dict[str, bytes]:
    y, p, groups = _data()
    bands = {label: roc_band(y[:, j], p[:, j], groups, n=50) for j, label in enumerate(LABELS)}
    return {
        "roc": plots.roc_png(bands, metrics["auroc"]["per_class"]),
        "pr": plots.pr_png(y, p, LABELS, metrics["average_precision"]["per_class"]),
        "reliability": plots.reliability_png(y, p, LABELS, p_after=p**1.2, temperature=1.8),
        "confusion": plots.confusion_png(y, p, LABELS, {LABELS[0]: 0.5, LABELS[1]: 0.45}),
    }


def _assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "@import" not in page and "url(" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    for src in re.findall(r'src="([^"]+)"', page):
        assert src.startswith("data:image/png;base64,")


def test_plots_are_png(figures: dict[str, bytes]) -> None:
    for name, png in figures.items():
        assert png[:8] == PNG_MAGIC, name
        assert len(png) > 5000, name


def test_plots_survive_undefined_findings() -> None:
    y = np.array([[1.0], [1.0], [np.nan]])
    p = np.array([[0.2], [0.7], [0.4]])
    assert plots.roc_png({"only_pos": None}, {"only_pos": {}})[:8] == PNG_MAGIC
    assert plots.pr_png(y, p, ["only_pos"], {"only_pos": {}})[:8] == PNG_MAGIC
    assert plots.reliability_png(y, p, ["only_pos"])[:8] == PNG_MAGIC
    assert plots.confusion_png(y, p, ["only_pos"], {})[:8] == PNG_MAGIC


def test_evaluation_report_is_self_contained(metrics: dict, figures: dict[str, bytes]) -> None:
    page = evaluation_report(metrics, figures)
    _assert_self_contained(page)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4
    assert all(base64.b64decode(data)[:8] == PNG_MAGIC for data in images)


def test_evaluation_report_shows_the_numbers(metrics: dict, figures: dict[str, bytes]) -> None:
    page = evaluation_report(metrics, figures)
    assert "Research tool, not for diagnosis" in page
    auroc = metrics["auroc"]["per_class"]["Effusion"]
    assert f"{auroc['value']:.3f}" in page
    assert f"{auroc['ci_low']:.3f}&ndash;{auroc['ci_high']:.3f}" in page
    sens = metrics["at_operating_point"]["Effusion"]["sensitivity"]
    assert f"{sens['value']:.3f}" in page
    macro = metrics["auroc"]["macro"]
    assert f"{macro['ci_low']:.3f}&ndash;{macro['ci_high']:.3f}" in page
    assert "files skipped (unreadable)" in page and "skipped_files.csv" in page
    assert "Calibration before / after temperature scaling" in page and "1.800" in page
    assert "Largest AUROC gap" in page and "Subgroups" in page


def test_text_is_escaped(metrics: dict, figures: dict[str, bytes]) -> None:
    page = evaluation_report(metrics, figures)
    assert "Nodule &lt;rare&gt;" in page and "Nodule <rare>" not in page
    assert "&lt;and were left out&gt;" in page


def test_report_without_optional_parts(metrics: dict) -> None:
    bare = {k: v for k, v in metrics.items() if k not in ("subgroups", "temperature_scaling")}
    page = evaluation_report(bare, {})
    _assert_self_contained(page)
    assert "stores no temperature" in page
    assert "<img" not in page


def test_cv_report(metrics: dict) -> None:
    folds = [
        {"repeat": 0, "fold": f, "n_images": 40, "n_patients": 20, "auroc_macro": 0.7 + f / 100,
         "auroc_Effusion": 0.71, "sensitivity_Effusion": 0.8, "specificity_Effusion": 0.6}
        for f in range(3)
    ]  # fmt: skip
    summary = {
        "study": {"config": "cv.yaml", "folds": 3, "repeats": 1, "seed": 0, "labels": ["Effusion"]},
        "folds": folds,
        "mean_sd": {"auroc_macro": {"mean": 0.71, "sd": 0.01, "n": 3}},
        "pooled": {"repeat_0": {k: metrics[k] for k in ("auroc", "average_precision",
                                                         "at_operating_point", "bootstrap")}},
        "data": {"n_images": 120, "n_patients": 60, "positives": {"Effusion": 40}},
        "skipped_files": {"count": 0},
        "warnings": [],
    }  # fmt: skip
    png = plots.fold_roc_png(
        {"Effusion": [plots.FoldCurve("fold 0", np.linspace(0, 1, 5), np.linspace(0, 1, 5), 0.5)]},
        {"Effusion": None},
        {},
    )
    page = cv_report(summary, {"roc_folds": png})
    _assert_self_contained(page)
    assert "repeat 0 fold 2" in page
    assert "0.710 &plusmn; 0.010" in page
    pooled = metrics["auroc"]["per_class"]["Effusion"]
    assert f"{pooled['ci_low']:.3f}&ndash;{pooled['ci_high']:.3f}" in page
    assert NOTICE in page
