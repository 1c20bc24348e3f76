"""`medft lr-find`: Lightning's range test for the head-only and the unfrozen phase."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from medft.errors import ConfigError
from medft.lr_find import _scale_steps, find_learning_rates, format_results


def test_each_group_steps_with_its_discriminative_scale() -> None:
    low, high = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD(
        [{"params": [low], "lr_scale": 0.25}, {"params": [high], "lr_scale": 1.0}], lr=1.0
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    _scale_steps(optimizer)
    low.grad, high.grad = torch.ones(1), torch.ones(1)
    optimizer.step()
    scheduler.step()
    assert float(low) == -0.25 and float(high) == -1.0
    assert [g["lr"] for g in optimizer.param_groups] == [1.0, 1.0]  # the swept rate is kept


def test_lr_find_runs_both_phases_and_writes_plots(
    tiny_dataset: Path, fit_args, tmp_path: Path
) -> None:
    overrides = fit_args(tiny_dataset, tmp_path / "unused")[2:]  # drop --config
    results = find_learning_rates(
        Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml",
        tmp_path / "lr",
        overrides=overrides,
        steps=8,
        head_epochs=1,
        early_stop=None,
        say=lambda _: None,
    )
    assert [r["phase"] for r in results] == ["head", "unfrozen"]
    for result in results:
        assert result["steps_run"] == 8
        lrs = result["lrs"]
        assert lrs[0] == pytest.approx(1e-6) and all(b > a for a, b in itertools.pairwise(lrs))
        assert (tmp_path / "lr" / result["plot"]).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert [p["phase"] for p in saved["phases"]] == ["head", "unfrozen"]
    assert "suggested lr" in format_results(results, tmp_path / "lr")


def test_lr_find_refuses_unknown_phases_and_bad_ranges(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="phases"):
        find_learning_rates("x.yaml", tmp_path, phases=["middle"])
    with pytest.raises(ConfigError, match="min_lr"):
        find_learning_rates("x.yaml", tmp_path, min_lr=1.0, max_lr=0.1)


def test_debias_recovers_a_constant_loss_from_lightnings_smoothing() -> None:
    from medft.lr_find import SMOOTHING, debias

    beta, average, smoothed = SMOOTHING, 0.0, []
    for step in range(1, 61):  # Lightning's formula: global_step already counts this update
        average = beta * average + (1 - beta) * 0.7
        smoothed.append(average / (1 - beta ** (step + 1)))
    assert smoothed[0] == pytest.approx(0.7 / (1 + beta))  # half the loss at the first step
    assert debias(smoothed) == pytest.approx([0.7] * 60)


def test_suggestion_is_the_steepest_fall_per_decade() -> None:
    from medft.lr_find import suggest

    lrs = [10 ** (-6 + 6 * i / 59) for i in range(60)]
    # Flat, then a fall centred at 1e-2, then divergence; tiny noise at the low end.
    losses = [
        0.5 - 0.3 / (1 + math.exp(-(math.log10(lr) + 2) * 4)) + 1e-4 * (-1) ** i
        for i, lr in enumerate(lrs)
    ]
    losses[-3:] = [0.5, 0.9, 2.0]
    assert suggest(lrs, losses) == pytest.approx(1e-2, rel=0.3)
