"""Distributed training on CPU: two gloo processes run a freezing schedule to the end,
and the thresholds they store come from the whole validation part."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_two_process_ddp_fit_on_cpu(tmp_path: Path, fit_args) -> None:
    from medft.data.synth import synthesize

    # One image per patient and 7 validation images: an odd count, so DistributedSampler
    # pads one shard with a duplicate that the operating-point callback must drop.
    data = synthesize(tmp_path / "data", 40, images_per_patient=1, size=64, seed=0, workers=1)
    args = fit_args(
        data.labels_csv,
        tmp_path / "run",
        "--data.val_fraction",
        "0.18",
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
    # Thresholds come from the whole validation part, gathered from both processes,
    # without the duplicates DistributedSampler pads an odd shard with.
    import pandas as pd

    splits = pd.read_csv(tmp_path / "run" / "splits.csv")
    n_val = int((splits["split"] == "val").sum())
    assert n_val == 7
    assert checkpoint["medft"]["val_n_images"] == n_val
