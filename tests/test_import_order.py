"""LightningCLI reads integer limits as integers whatever medft module was imported first.

typing caches ``Optional[Union[...]]`` by an inner Union that compares equal in any order;
when MONAI created ``Optional[Union[float, int]]`` before Lightning defined the Trainer,
``--trainer.limit_train_batches 1`` became ``1.0`` (the whole epoch). It did when
``medft.inference`` (which reaches MONAI through the data transforms) came first, as in
``medft bench`` and ``medft cv``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "first",
    ["medft.inference", "medft.data.transforms", "medft.data.cache", "medft.model.features"],
)
def test_integer_limits_stay_integers(first: str) -> None:
    code = (
        f"import {first}\n"
        "from medft.cli import main\n"
        "main(['fit', '--config', 'configs/quickstart.yaml',"
        " '--trainer.limit_train_batches', '1', '--print_config'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.strip() for line in done.stdout.splitlines()]
    assert "limit_train_batches: 1" in lines, [ln for ln in lines if "limit_train" in ln]


def test_a_float_first_union_from_another_library_is_repaired() -> None:
    """MONAI imported before Lightning (as pytest's collection or a user's script may do)."""
    code = (
        "import monai  # creates Optional[Union[float, int]] before Lightning exists\n"
        "from medft.cli import main\n"
        "main(['fit', '--config', 'configs/quickstart.yaml',"
        " '--trainer.limit_train_batches', '1', '--trainer.limit_val_batches', '0.5',"
        " '--print_config'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.strip() for line in done.stdout.splitlines()]
    assert "limit_train_batches: 1" in lines, [ln for ln in lines if "limit_" in ln]
    assert "limit_val_batches: 0.5" in lines
