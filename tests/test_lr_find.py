"""`medft lr-find`: Lightning's range test for the head-only and the unfrozen phase."""

from __future__ import annotations

import itertools
import json
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
