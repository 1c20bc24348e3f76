"""Tests for medft.data.loader_monitor: a slow loader warns once, a fast one stays quiet."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from medft.data.loader_monitor import METRIC, LoaderMonitor
from medft.errors import ConfigError

LOGGER = "medft.data.loader_monitor"


class _Items(Dataset):
    """Eight random vectors; each fetch sleeps ``delay`` seconds (a slow decoder)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.data = torch.randn(8, 4)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        return self.data[index]


class _Model(L.LightningModule):
    """A linear layer whose step sleeps ``step_delay`` seconds (a model doing real work)."""

    def __init__(self, step_delay: float) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.step_delay = step_delay

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if self.step_delay:
            time.sleep(self.step_delay)
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(
    tmp_path: Path, *, item_delay: float, step_delay: float, epochs: int, **monitor: object
) -> tuple[LoaderMonitor, L.Trainer]:
    callback = LoaderMonitor(**monitor)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    loader = DataLoader(_Items(item_delay), batch_size=2, num_workers=0)  # 4 batches
    trainer.fit(_Model(step_delay), train_dataloaders=loader)
    return callback, trainer


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_slow_loader_warns_once_with_share_and_fixes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    callback, trainer = _fit(tmp_path, item_delay=0.03, step_delay=0.0, epochs=3)
    assert len(callback.shares) == 2  # epochs after the first
    assert all(share > 0.5 for share in callback.shares)
    assert trainer.callback_metrics[METRIC].item() == pytest.approx(callback.shares[-1])
    records = _warnings(caplog)
    assert len(records) == 1  # once per run, not once per epoch
    message = records[0].getMessage()
    assert "bottleneck" in message and "data.num_workers, now 0" in message
    assert "data.cache" in message and "data.image_size" in message
    assert f"{100 * callback.shares[0]:.0f}%" in message


def test_fast_loader_logs_share_without_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    callback, trainer = _fit(tmp_path, item_delay=0.0, step_delay=0.05, epochs=3)
    assert len(callback.shares) == 2
    assert all(share < 0.2 for share in callback.shares)
    assert METRIC in trainer.callback_metrics
    assert not _warnings(caplog) and not callback.warned


def test_first_epoch_is_not_judged_and_disabled_monitor_is_silent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    first_only, trainer = _fit(tmp_path, item_delay=0.03, step_delay=0.0, epochs=1)
    assert first_only.shares == [] and METRIC not in trainer.callback_metrics
    disabled, trainer = _fit(tmp_path, item_delay=0.03, step_delay=0.0, epochs=2, enabled=False)
    assert disabled.shares == [] and METRIC not in trainer.callback_metrics
    assert not _warnings(caplog)


def test_threshold_is_validated() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        LoaderMonitor(threshold=1.5)
    with pytest.raises(ConfigError, match="min_batches"):
        LoaderMonitor(min_batches=1)


def test_medft_fit_has_the_monitor_by_default_and_can_turn_it_off(
    tiny_dataset: Path, tmp_path: Path, fit_args
) -> None:
    from medft.lightning_cli import run_lightning

    cli = run_lightning("fit", fit_args(tiny_dataset, tmp_path / "on"), run=False)
    monitors = [c for c in cli.trainer.callbacks if isinstance(c, LoaderMonitor)]
    assert len(monitors) == 1 and monitors[0].enabled and monitors[0].threshold == 0.2
    args = fit_args(tiny_dataset, tmp_path / "off", "--loader_monitor.enabled", "false")
    cli = run_lightning("fit", args, run=False)
    monitors = [c for c in cli.trainer.callbacks if isinstance(c, LoaderMonitor)]
    assert len(monitors) == 1 and not monitors[0].enabled
