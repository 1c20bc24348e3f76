"""Tests for medft.explain.checks: model randomisation and deletion/insertion faithfulness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medft.errors import ConfigError
from medft.explain.checks import deletion_score, parameter_groups, randomisation_check
from medft.explain.saliency import explain

# Shared with the saliency tests: tiny timm models, one thread per test (an autouse fixture),
# and the handcrafted model whose logit reads one quadrant only.
from test_saliency import QuadrantModel, _one_thread, quadrant_input, tiny  # isort: skip  # noqa: F401

LABELS = ["effusion", "nodule", "pneumothorax"]


@pytest.fixture(scope="module")
def xray() -> np.ndarray:
    rows, cols = np.mgrid[0:200, 0:160].astype(np.float32)
    image = 0.3 + 0.4 * np.exp(-((rows - 60) ** 2 + (cols - 110) ** 2) / 300)
    return np.clip(image + np.random.default_rng(0).normal(0, 0.05, image.shape), 0, 1)


# ----------------------------------------------------------------------- randomisation


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_randomised_top_layers_decorrelate_the_maps(name, xray):
    model = tiny(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = randomisation_check(model, xray, labels=LABELS, levels=2)
    rows = report["rows"]
    assert report["layer"] == explain(model, xray, labels=LABELS)[0].layer
    assert len(rows) == 3 * 3  # levels 0..2 × findings
    control = [row for row in rows if row["level"] == 0]
    assert all(row["spearman"] == pytest.approx(1.0) for row in control)
    randomised = [row["spearman"] for row in rows if row["level"] > 0]
    assert np.mean(randomised) < 0.8
    assert rows[-1]["randomised"] == "+".join(report["groups"][::-1][:2])
    # The model under test is untouched.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_parameter_groups_run_from_input_to_head():
    names = [name for name, _ in parameter_groups(tiny("test_resnet"))]
    assert names == ["conv1+bn1", "layer1.0", "layer2.0", "layer3.0", "layer4.0", "fc"]
    vit = [name for name, _ in parameter_groups(tiny("test_vit"))]
    assert vit[-1] == "head" and vit[-2] == "blocks.5+norm"
    groups = parameter_groups(QuadrantModel())
    assert [name for name, _ in groups] == ["features.0", "head"]
    model = tiny("test_resnet")
    every = sorted(p for _, params in parameter_groups(model) for p in params)
    assert every == sorted(name for name, _ in model.named_parameters())


# ----------------------------------------------------------------------- deletion / insertion


@pytest.mark.parametrize("method", ["hirescam", "occlusion"])
def test_faithful_map_beats_random_on_the_quadrant_model(method):
    model, inputs = QuadrantModel(), quadrant_input()
    (saliency,) = explain(model, inputs, labels=["finding"], method=method)
    score = deletion_score(model, inputs, saliency, steps=16, n_random=3)
    assert score["deletion_auc"] < score["random_deletion_auc"]
    assert score["deletion_gain"] > 0.05
    assert score["insertion_gain"] > 0.05
    curve = score["deletion_curve"]
    assert curve[0] == pytest.approx(score["probability"])
    # Everything removed: the ranked and random curves end at the same image.
    assert curve[-1] == pytest.approx(score["random_deletion_curve"][-1])


def test_misleading_map_scores_worse_than_random():
    """A map pointing at the bottom-left quadrant (which the model ignores) must lose."""
    model, inputs = QuadrantModel(), quadrant_input()
    wrong = np.zeros((64, 64), np.float32)
    wrong[32:, :32] = 1.0
    score = deletion_score(model, inputs, wrong, finding="class_0", steps=16)
    assert score["deletion_gain"] < 0 and score["insertion_gain"] < 0
    assert score["method"] == "array"


def test_blur_baseline_and_deletion_only(xray):
    model = tiny("test_resnet")
    results = explain(model, xray, labels=LABELS, findings=["nodule"])
    score = deletion_score(
        model, xray, results[0], labels=LABELS, baseline="blur", insertion=False, steps=5
    )
    assert score["finding"] == "nodule"
    assert np.isfinite(score["deletion_auc"]) and "insertion_auc" not in score
    assert len(score["deletion_curve"]) == len(score["fractions"]) == 6


def test_deletion_refuses_mismatched_inputs(xray):
    model = tiny("test_resnet")
    (result,) = explain(model, xray, labels=LABELS, findings=["nodule"])
    with pytest.raises(ConfigError, match="another preprocessing"):
        deletion_score(model, xray[:100], result, labels=LABELS)
    with pytest.raises(ConfigError, match="finding"):
        deletion_score(model, xray, result.raw, labels=LABELS)
    with pytest.raises(ConfigError, match="baseline"):
        deletion_score(model, xray, result, labels=LABELS, baseline="noise")
