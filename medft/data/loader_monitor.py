"""Warn when the data loader, not the model, sets the pace of training.

On a CPU box or a GPU with too few loader workers the model can spend much of each
epoch waiting for its next batch. :class:`LoaderMonitor` measures that share from
Lightning's own hooks: the time between ``on_train_batch_end`` and the next
``on_train_batch_start`` (fetching the batch, plus Lightning's small bookkeeping) against
the time inside the steps. It logs the share every epoch after the first (the first
also pays for starting workers and filling caches) as ``perf/loader_wait_share``, and
warns once per run, naming the likely fixes, when the share crosses a threshold.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from medft.errors import ConfigError

__all__ = ["METRIC", "LoaderMonitor"]

log = logging.getLogger(__name__)

METRIC = "perf/loader_wait_share"
"""Logged every training epoch after the first: wait / (wait + step) time, in [0, 1]."""


class LoaderMonitor(L.Callback):
    """Log the loader wait share per epoch; warn once when the loader is the bottleneck.

    Args:
        threshold: Share of training time spent waiting for batches above which the
            run warns (0.2: the model idles a fifth of the time).
        enabled: Measure and warn at all (``--loader_monitor.enabled false`` turns it off).
        min_batches: Epochs with fewer batches are not judged (too few gaps to measure).
    """

    def __init__(self, threshold: float = 0.2, enabled: bool = True, min_batches: int = 3) -> None:
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"loader_monitor.threshold={threshold} must lie in (0, 1)")
        if min_batches < 2:
            raise ConfigError(f"loader_monitor.min_batches={min_batches} must be at least 2")
        self.threshold = float(threshold)
        self.enabled = bool(enabled)
        self.min_batches = int(min_batches)
        self.warned = False
        self.shares: list[float] = []
        """Wait share of every judged epoch of this run, in order."""
        self._epochs_seen = 0
        self._reset()

    def _reset(self) -> None:
        self._wait = 0.0
        self._step = 0.0
        self._batches = 0
        self._last_end: float | None = None
        self._step_start: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            self._wait += now - self._last_end
        self._step_start = now

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = time.perf_counter()
        if self._step_start is not None:
            self._step += now - self._step_start
            self._batches += 1
        self._last_end = now

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epochs_seen += 1
        if not self.enabled or self._epochs_seen == 1 or self._batches < self.min_batches:
            return
        total = self._wait + self._step
        if total <= 0:
            return
        share = self._wait / total
        self.shares.append(share)
        pl_module.log(METRIC, share, on_step=False, on_epoch=True, logger=True)
        if share > self.threshold and not self.warned:
            self.warned = True
            self._warn(trainer, share)

    @rank_zero_only
    def _warn(self, trainer: L.Trainer, share: float) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        loader = trainer.train_dataloader
        workers = getattr(loader, "num_workers", None)
        cache = getattr(datamodule, "cache_mode", None)
        size = getattr(datamodule, "image_size", None)
        log.warning(
            "the data loader is the bottleneck: in epoch %d the model waited for its next "
            "batch %.0f%% of the training time (threshold %.0f%%). Likely fixes: more loader "
            "workers (data.num_workers, now %s); keep the decode cache on (data.cache=memory "
            "or disk, now %s) so files are decoded once; a smaller data.image_size (now %s) "
            "or lighter augmentation. Turn this check off with --loader_monitor.enabled false.",
            trainer.current_epoch,
            100 * share,
            100 * self.threshold,
            "?" if workers is None else workers,
            cache or "?",
            size or "?",
        )
