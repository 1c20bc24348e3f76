"""One statistics engine: evaluate, cv, compare, subgroups and the audit share medft.stats.

Issue 19: the audit used to re-implement the weighted AUROC (with scikit-learn for the point
value) and the patient bootstrap, with its own random draws. These tests pin that every user
takes the same functions from :mod:`medft.stats`, and that no second AUROC or bootstrap
creeps back into the code base.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import medft
import medft.stats as stats
from medft.data import _audit_models
from medft.eval import calibration, cv, metrics, subgroups, summary

SOURCE = Path(medft.__file__).parent


def test_users_take_the_kernel_and_the_bootstrap_from_medft_stats() -> None:
    # evaluate (summarize) and the public front door medft.eval.metrics
    for name in ("auroc", "average_precision", "bootstrap_counts", "resample_ranking"):
        assert getattr(summary, name) is getattr(stats, name), name
    for name in stats.__all__:
        if hasattr(metrics, name):
            assert getattr(metrics, name) is getattr(stats, name), name
    # cv and compare
    for name in ("auroc", "paired_bootstrap", "delong_test", "roc_band"):
        assert getattr(cv, name) is getattr(stats, name), name
    # subgroups, calibration
    assert subgroups.resample_ranking is stats.resample_ranking
    assert subgroups.bootstrap_counts is stats.bootstrap_counts
    assert calibration.known_pairs is stats.known_pairs
    # the shortcut audit
    assert _audit_models.cluster_bootstrap is stats.cluster_bootstrap
    assert _audit_models.auroc is stats.auroc


def test_audit_and_evaluate_give_the_same_interval_on_the_same_data() -> None:
    rng = np.random.default_rng(11)
    y = (rng.random(240) < 0.35).astype(float)
    scores = 1.0 / (1.0 + np.exp(-(y + rng.normal(0, 1.2, 240))))  # probabilities
    patients = np.array([f"P{i // 4:03d}" for i in range(240)])
    audit = _audit_models.estimate(scores, y, patients, n_boot=300, seed=5)
    evaluation = metrics.summarize(
        y[:, None], scores[:, None], ["x"], patients, n_boot=300, seed=5
    )["auroc"]["per_class"]["x"]
    assert (audit.auroc, audit.ci_low, audit.ci_high) == pytest.approx(
        (evaluation["value"], evaluation["ci_low"], evaluation["ci_high"]), abs=0, rel=0
    )


_RANDOM_DRAWS = {"integers", "choice", "randint", "multinomial", "default_rng"}


def _imported_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_second_auroc_or_bootstrap_outside_medft_stats() -> None:
    """scikit-learn's ranking metrics and hand-drawn patient resamples live only in stats."""
    forbidden_imports = {
        "sklearn.metrics.roc_auc_score",
        "sklearn.metrics.average_precision_score",
    }
    offenders = []
    for path in sorted(SOURCE.rglob("*.py")):
        if path.parent.name == "stats":
            continue
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        hits = _imported_names(tree) & forbidden_imports
        if hits:
            offenders.append(f"{path.relative_to(SOURCE)}: imports {sorted(hits)}")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and "bootstrap" in node.name:
                draws = {
                    sub.attr
                    for sub in ast.walk(node)
                    if isinstance(sub, ast.Attribute) and sub.attr in _RANDOM_DRAWS
                }
                if draws:
                    offenders.append(f"{path.relative_to(SOURCE)}: {node.name}() draws {draws}")
    assert not offenders, "\n".join(offenders)
