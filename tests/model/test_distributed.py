"""Distributed training on CPU: two gloo processes run a freezing schedule to the end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_two_process_ddp_fit_on_cpu(tiny_dataset: Path, tmp_path: Path, fit_args) -> None:
    args = fit_args(
        tiny_dataset,
        tmp_path / "run",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--model.freeze_gate",
        "lr",  # DDP needs every parameter in the graph: freeze by LR, not requires_grad
        "--model.unfreeze_epoch",
        "1",
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "medft.cli", "fit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    import torch

    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1  # the last save happened in the second (final) epoch
    assert checkpoint["global_step"] > 0
