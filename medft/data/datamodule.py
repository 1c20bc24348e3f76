"""XrayDataModule: manifest → patient-grouped split → decode-once cache → batches.

Every ``__init__`` argument is a primitive, so LightningCLI turns the signature into
config keys (``data.batch_size``, ...) and the saved hyper-parameters load with
``torch.load(weights_only=True)``.

What ``setup`` does, in order: load and validate the manifest; take the split from
``split_file`` (a holdout ``splits.csv`` or a ``folds.csv`` with ``fold``), from the
manifest's own ``split`` column, or compute a seeded patient-grouped holdout split;
refuse patient overlap between parts; write the split to ``<run_dir>/splits.csv``;
decode the needed parts once into the cache, dropping files that cannot be read
(``on_bad_file="skip"``, listed in ``<run_dir>/skipped_files.csv``) or stopping at
the first (``"fail"``).

Batches are dicts: ``image`` ``(B, 1, S, S)`` in display space, float32 in [0, 1], or,
for a model that accepts them (``XrayClassifier``; see ``compact_batches``), in the compact
form of the cache (``cache_dtype`` uint8 0..255 or uint16 0..65535 for [0, 1]; the model
converts and normalises it on its device, so a batch crosses processes and the bus at a
quarter of float32's bytes),
``label`` float32 ``(B, L)`` with NaN for unknown, ``index`` int64 (row position in
the manifest) and ``path`` (list of str).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from medft._io import write_text
from medft.data.cache import (
    BAD_FILE_POLICIES,
    CACHE_MODES,
    BadFile,
    BadFilePolicy,
    CacheMode,
    DecodeCache,
    Decoder,
    XrayCollate,
    XrayDataset,
    make_cache,
)
from medft.data.manifest import UNCERTAIN_POLICIES, Manifest, UncertainPolicy, load_manifest
from medft.data.seen import SeenPatients, data_fingerprint
from medft.data.splits import (
    align_assignment,
    check_no_leakage,
    folds_for_repeat,
    holdout_split,
    inner_split,
    read_assignment,
    split_from_column,
    write_assignment,
)
from medft.data.transforms import (
    COMPACT_DTYPES,
    FIT_MODES,
    AugmentConfig,
    CacheDtype,
    FitMode,
    build_transforms,
    prefix_config,
)
from medft.errors import ConfigError, DataError, DicomReadError, MedftError

__all__ = [
    "BAD_FILE_POLICIES",
    "PREDICT_SPLITS",
    "SKIPPED_FILES_CSV",
    "SPLITS_CSV",
    "EpochSampler",
    "PredictSplit",
    "ResumableDataLoader",
    "XrayDataModule",
    "default_cache_dir",
    "default_num_workers",
]

log = logging.getLogger(__name__)

PredictSplit = Literal["test", "all"]
"""What ``trainer.predict`` covers: the test part or every image of the manifest."""
PREDICT_SPLITS: tuple[str, ...] = get_args(PredictSplit)
SPLITS_CSV = "splits.csv"
SKIPPED_FILES_CSV = "skipped_files.csv"
CACHE_DIR_ENV = "MEDFT_CACHE_DIR"
_PARTS = ("train", "val", "test")
_TORCH_DTYPES = {"uint8": torch.uint8, "uint16": torch.uint16}
_STAGE_PARTS = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
}


def default_num_workers(cuda: bool | None = None, *, copy_only: bool = False) -> int:
    """DataLoader worker processes that keep the model fed on this machine.

    On CPU the model already uses every core for its own arithmetic and the cached
    loader needs only a few ms per image, so one worker (overlapping augmentation
    with the step) is enough, and none on a single core. When the loader's work per
    image is only a copy out of the memory cache (``copy_only``: no augmentation),
    none: handing a batch over from a worker process (a shared-memory handshake per
    tensor) costs more than the copy. A GPU consumes images much faster: use most
    cores, leaving one for the training process.
    """
    cores = _usable_cores()
    if cuda is None:
        cuda = torch.cuda.is_available()
    if cuda:
        return max(1, min(8, cores - 1))
    return 1 if cores > 1 and not copy_only else 0


def default_cache_dir() -> Path:
    """Shared decode cache: ``$MEDFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/medft/decoded``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medft" / "decoded"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class EpochSampler(DistributedSampler, Sampler[tuple[int, int]]):
    """Seeded per-epoch order that also hands every sample its augmentation seed.

    Yields ``(position, seed)`` pairs drawn from ``numpy.random.default_rng([seed,
    epoch])``: a permutation (or, with ``weights``, a draw with replacement), and one
    32-bit seed per item for :class:`~medft.data.cache.XrayDataset`. The same seed and
    epoch give the same order and the same augmentations, whatever the number of
    workers. Lightning calls :meth:`set_epoch` every epoch; without it each pass
    advances the epoch.

    The position inside an epoch is resumable: :meth:`state_dict` names the next pass
    (epoch and first item), :meth:`load_state_dict` restores it, and
    :meth:`state_after` describes the pass in progress once ``n`` items of it were
    consumed. :class:`ResumableDataLoader` counts the consumed batches and hands these
    states to Lightning's checkpoints, so a run resumed from a mid-epoch checkpoint
    sees exactly the rest of that epoch, with the same augmentation seeds.

    Under DDP each process draws its own shard of the same epoch order (``rank``,
    ``rank + num_replicas``, ...; padded with the first items to equal lengths, as
    PyTorch's ``DistributedSampler``), so the position inside an epoch is one number for
    all processes and survives a checkpoint too. It is a ``DistributedSampler`` only so
    that Lightning uses it as it is instead of wrapping it in its own.

    Args:
        size: Number of items in the dataset.
        seed: Base seed (non-negative).
        weights: Optional per-item sampling weights (a weighted draw of ``size`` items).
        num_replicas: Processes sharing the epoch (DDP world size).
        rank: This process's shard.
    """

    def __init__(
        self,
        size: int,
        *,
        seed: int,
        weights: np.ndarray | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        # DistributedSampler.__init__ is not called: it needs a process group and a dataset.
        self.num_replicas = max(1, int(num_replicas))
        self.rank = int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {self.num_replicas})")
        self.size = int(size)
        self.seed = int(seed) & 0xFFFFFFFF
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        if self.weights is not None and self.weights.shape != (self.size,):
            raise ValueError(f"weights must have shape ({self.size},), got {self.weights.shape}")
        self.epoch = 0
        self.start = 0
        """First item of the next pass (non-zero only after resuming mid-epoch)."""
        self.passes = 0
        """Passes begun so far (lets a loader tell whether its pass has started)."""
        self._current: tuple[int, int] = (0, 0)

    def set_epoch(self, epoch: int) -> None:
        """Pin the next pass to ``epoch`` (a resumed start is kept for the same epoch)."""
        if int(epoch) != self.epoch:
            self.start = 0
        self.epoch = int(epoch)

    def __len__(self) -> int:
        # The whole epoch (this process's shard), also when resuming: Lightning counts the
        # batches it already saw before the checkpoint and stops the epoch at len().
        return -(-self.size // self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.epoch, self.start
        rng = np.random.default_rng([self.seed, epoch])
        if self.weights is None:
            order = rng.permutation(self.size)
        else:
            order = rng.choice(self.size, size=self.size, p=self.weights / self.weights.sum())
        seeds = rng.integers(0, 2**32, size=self.size, dtype=np.uint64)
        self._current = (epoch, start)
        self.passes += 1
        self.epoch, self.start = epoch + 1, 0
        pairs = list(zip(order.tolist(), seeds.tolist(), strict=True))
        if self.num_replicas > 1:
            total = len(self) * self.num_replicas
            pairs = (pairs + pairs[: total - self.size])[self.rank : total : self.num_replicas]
        return iter(pairs[start:])

    def state_dict(self) -> dict[str, int]:
        """Where the next pass begins: ``epoch`` and ``start`` (plus ``seed`` and ``size``)."""
        return {**self._identity(), "epoch": self.epoch, "start": self.start}

    def _identity(self) -> dict[str, int]:
        identity = {"seed": self.seed, "size": self.size}
        if self.num_replicas > 1:  # absent: one process (also in older checkpoints)
            identity["replicas"] = self.num_replicas
        return identity

    def state_after(self, consumed: int) -> dict[str, int]:
        """The state that resumes the latest pass after ``consumed`` more of its items.

        A finished pass resumes at the start of the next epoch.
        """
        epoch, start = self._current
        position = start + int(consumed)
        if position >= len(self):
            epoch, position = epoch + 1, 0
        return {**self._identity(), "epoch": epoch, "start": position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from :meth:`state_dict` / :meth:`state_after` of the same training data.

        Raises:
            ConfigError: The state belongs to another training set or seed, so the rest
                of its epoch cannot be reproduced.
        """
        if int(state["size"]) != self.size or int(state["seed"]) != self.seed:
            raise ConfigError(
                f"the checkpoint's data order covers {state['size']} training images with seed "
                f"{state['seed']}, this run has {self.size} with seed {self.seed}: resume with "
                "the same manifest, split, bad-file outcome and seed_everything, or start a "
                "new run from the checkpoint's weights"
            )
        replicas = int(state.get("replicas", 1))
        if replicas != self.num_replicas and int(state["start"]):
            raise ConfigError(
                f"the checkpoint stopped inside an epoch of {replicas} process(es), this run "
                f"has {self.num_replicas}: resume with the same number of devices, or from an "
                "epoch-end checkpoint"
            )
        self.epoch = int(state["epoch"])
        self.start = int(state["start"])


class ResumableDataLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` whose position survives a checkpoint.

    Lightning (2.x) stores ``state_dict()`` of every training loader that has one in the
    checkpoint's loop state and calls ``load_state_dict()`` before it iterates again; it
    skips nothing itself. (Lightning 2.6 drops that state on resume when the model asked
    for ``trainer.estimated_stepping_batches``, as medft's LR schedule does; Lightning
    issue #20550. :class:`XrayDataModule` therefore also carries the position in its own
    ``state_dict``, which Lightning restores before building the loader.)

    This loader counts the batches it handed out in the current pass (exactly the
    batches the training loop consumed: Lightning does not prefetch from loaders with a
    length, and worker prefetching happens before this count), and the sampler turns
    that count into the next item to draw, so no image of the skipped part is decoded
    again.

    Under DDP every process counts its own batches; they move in lock step, so the
    position saved by rank 0 is every process's position in its shard.
    """

    _yielded = 0
    _passes_before = 0

    def __iter__(self) -> Iterator[Any]:
        if isinstance(self.sampler, EpochSampler):
            self._passes_before = self.sampler.passes
        self._yielded = 0
        return self._counted(super().__iter__())

    def _counted(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The sampler's position after the batches consumed so far in this pass."""
        sampler = self.sampler
        if not isinstance(sampler, EpochSampler):
            return {}
        if sampler.passes > self._passes_before:  # this loader's pass has begun
            done = self._yielded >= len(self)  # drop_last may leave a few items undrawn
            consumed = len(sampler) if done else self._yielded * int(self.batch_size or 1)
            state = sampler.state_after(consumed)
        else:
            state = sampler.state_dict()
        return {"sampler": state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next pass continue where the saved one stopped."""
        if isinstance(self.sampler, EpochSampler) and state.get("sampler"):
            self.sampler.load_state_dict(state["sampler"])


class XrayDataModule(L.LightningDataModule):
    """Patient-grouped splits of an X-ray manifest, decoded once, batched for training.

    Args:
        manifest: Manifest CSV (``path``, ``patient_id``, one column per label) or a
            ``CLASS/**/*`` folder (see the data docs).
        labels: Label columns to use; ``None`` infers them from the manifest.
        uncertain: What an uncertain label (-1) becomes: ``ignore`` (unknown, masked
            in the loss), ``positive`` or ``negative``.
        split_file: An existing split to use: a ``splits.csv`` (``split`` column) or a
            ``folds.csv`` (``fold``, optional ``repeat``; then ``fold`` is required).
            ``None``: use the manifest's ``split`` column if it has one, else compute a
            seeded patient-grouped, label-stratified holdout split.
        fold: With a folds file, the fold held out as the test part; validation is
            carved from the other folds (``val_fraction``, grouped by patient).
        repeat: With a repeated folds file, which repeat ``fold`` refers to.
        val_fraction: Share of images for validation (of the training folds with ``fold``).
        test_fraction: Share of images for test (computed holdout split only).
        split_seed: Seed of the computed split (and of the data order when Lightning's
            ``seed_everything`` was not called).
        image_size: Side of the square model input, in pixels.
        fit_mode: ``pad`` (letterbox the whole image) or ``crop`` (centre crop).
        batch_size: Images per batch.
        num_workers: DataLoader worker processes; ``None`` picks a default for the
            machine (1 on a multi-core CPU, up to 8 with CUDA). Workers persist.
        pin_memory: Page-locked batches for fast GPU copies; ``None`` = only with CUDA.
        cache: ``memory`` (decode once into RAM), ``disk`` (decode once into ``.npy``
            files reused across runs) or ``none`` (decode on every access).
        cache_dir: Folder of the disk cache; ``None`` = ``$MEDFT_CACHE_DIR`` or
            ``~/.cache/medft/decoded``.
        cache_dtype: Cached pixel type: ``uint8`` (display precision) or ``uint16``.
        augment: Train-time augmentation on/off.
        rotate_degrees: Random rotation range, ± degrees.
        scale_range: Random zoom range, 1 ± this.
        translate_fraction: Random shift range, ± this fraction of the side.
        hflip_prob: Left/right flip probability; 0 by default because chest anatomy
            is not left/right symmetric.
        intensity_prob: Probability of each intensity change (contrast, brightness,
            gamma, noise).
        noise_std: Gaussian noise standard deviation (display units; 0 disables).
        clahe_prob: CLAHE probability (0 disables).
        weighted_sampler: Draw training images with weights that balance the labels
            (inverse frequency) instead of shuffling.
        on_bad_file: ``skip`` unreadable files (listed in ``skipped_files.csv``) or
            ``fail`` at the first one, before training starts.
        predict_split: What ``trainer.predict`` (Python API) covers: ``test`` or ``all`` images;
            the ``medft predict`` command scores files with the Predictor instead.
        run_dir: Where ``splits.csv`` and ``skipped_files.csv`` go (the CLI links it
            to ``trainer.default_root_dir``); ``None`` writes nothing.
        allow_patient_overlap: Accept a split in which a patient is in two parts
            (warns instead of refusing).
        audit: Run a quick shortcut audit (headers only, seconds) before fitting and
            write it to ``<run_dir>/audit``; its warning travels into the checkpoint.
        compact_batches: Ship images in the cache's compact form (``cache_dtype``) instead
            of float32 [0, 1]; the model must convert them. ``None`` (default): when the
            model being trained says it accepts them (``accepts_compact_batches``, as
            ``XrayClassifier`` does); float32 for any other consumer.
    """

    def __init__(
        self,
        manifest: str,
        labels: list[str] | None = None,
        uncertain: UncertainPolicy = "ignore",
        split_file: str | None = None,
        fold: int | None = None,
        repeat: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        image_size: int = 224,
        fit_mode: FitMode = "pad",
        batch_size: int = 32,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        cache: CacheMode = "memory",
        cache_dir: str | None = None,
        cache_dtype: CacheDtype = "uint8",
        augment: bool = True,
        rotate_degrees: float = 7.0,
        scale_range: float = 0.08,
        translate_fraction: float = 0.03,
        hflip_prob: float = 0.0,
        intensity_prob: float = 0.5,
        noise_std: float = 0.01,
        clahe_prob: float = 0.0,
        weighted_sampler: bool = False,
        on_bad_file: BadFilePolicy = "skip",
        predict_split: PredictSplit = "test",
        run_dir: str | None = None,
        allow_patient_overlap: bool = False,
        audit: bool = True,
        compact_batches: bool | None = None,
    ) -> None:
        super().__init__()
        _choice("uncertain", uncertain, UNCERTAIN_POLICIES)
        _choice("fit_mode", fit_mode, FIT_MODES)
        _choice("cache", cache, CACHE_MODES)
        _choice("cache_dtype", cache_dtype, COMPACT_DTYPES)
        _choice("on_bad_file", on_bad_file, BAD_FILE_POLICIES)
        _choice("predict_split", predict_split, PREDICT_SPLITS)
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"data.{key}={value} must be a fraction in [0, 1)")
        if val_fraction + test_fraction >= 1.0:
            raise ConfigError(
                f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction:g} "
                "leaves no training images; keep the sum below 1"
            )
        _at_least("image_size", image_size, 8)
        _at_least("batch_size", batch_size, 1)
        _at_least("repeat", repeat, 0)
        if fold is not None:
            _at_least("fold", fold, 0)
        if num_workers is not None:
            _at_least("num_workers", num_workers, 0)
        if fold is not None and split_file is None:
            raise ConfigError("data.fold selects a fold of data.split_file; give a folds.csv")
        self.save_hyperparameters()

        self.manifest_source = manifest
        self.requested_labels = None if labels is None else list(labels)
        self.uncertain = uncertain
        self.split_file = split_file
        self.fold = fold
        self.repeat = repeat
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.split_seed = int(split_seed)
        self.image_size = int(image_size)
        self.fit_mode = fit_mode
        self.batch_size = int(batch_size)
        self.num_workers = (
            default_num_workers(copy_only=cache == "memory" and not augment)
            if num_workers is None
            else int(num_workers)
        )
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.cache_mode = cache
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.cache_dtype = cache_dtype
        self.augment_config = (
            AugmentConfig(
                rotate_degrees=rotate_degrees,
                scale_range=scale_range,
                translate_fraction=translate_fraction,
                hflip_prob=hflip_prob,
                intensity_prob=intensity_prob,
                noise_std=noise_std,
                clahe_prob=clahe_prob,
            )
            if augment
            else None
        )
        self.weighted_sampler = weighted_sampler
        self.on_bad_file = on_bad_file
        self.predict_split = predict_split
        self.run_dir = Path(run_dir) if run_dir else None
        self.allow_patient_overlap = allow_patient_overlap
        self.audit = audit
        self.compact_batches = compact_batches
        self.audit_warning: str | None = None
        self._audited = False

        self.skipped: list[BadFile] = []
        """Files left out because they could not be read (path and reason; no patient data)."""
        self._manifest: Manifest | None = None
        self._split: np.ndarray | None = None
        self._label_matrix: np.ndarray | None = None
        self._cache: DecodeCache | None = None
        self._bad_rows: set[int] = set()
        self._decoded_parts: set[str] = set()
        self._train_loader: DataLoader | None = None
        self._resume_order: dict[str, int] | None = None

    # ------------------------------------------------------------- properties
    @property
    def labels(self) -> list[str]:
        """Label names in output order (resolved from the manifest)."""
        return list(self._get_manifest().labels)

    @property
    def num_labels(self) -> int:
        """Number of outputs the model needs."""
        return len(self.labels)

    @property
    def task(self) -> str:
        """``binary``, ``multilabel`` or ``multiclass`` (from the manifest)."""
        return self._get_manifest().task

    # ---------------------------------------------------------------- setup
    def check_split(self) -> None:
        """Resolve and leakage-check the split now, before a trainer creates run folders.

        Raises:
            LeakageError: a patient is in more than one part (named by salted key).
        """
        self._get_split()

    def setup(self, stage: str | None = None) -> None:
        """Resolve the split and decode the parts ``stage`` needs (once per process)."""
        self._get_split()
        if stage == "fit" and self.audit and not self._audited:
            self._run_quick_audit()
        if stage in _STAGE_PARTS:
            parts: Sequence[str] = _STAGE_PARTS[stage]
        elif stage == "predict":
            parts = _PARTS if self.predict_split == "all" else ("test",)
        else:
            parts = _PARTS
        self._decode(parts)
        if stage == "fit" and not len(self._rows("train")):
            split = self._get_split()
            counts = {part: int((split == part).sum()) for part in _PARTS}
            raise DataError(
                f"{self.manifest_source}: no readable training images (rows per part: "
                f"{counts}; {len(self._bad_rows)} unreadable). Fit needs rows in 'train': "
                "check the manifest's split column, data.split_file/data.fold, or the files"
            )

    def _run_quick_audit(self) -> None:
        """A seconds-long shortcut audit of the manifest before training (headers only).

        The report goes to ``<run_dir>/audit``; a warning is logged and kept in
        ``audit_warning`` so the checkpoint, evaluate's report and the demo repeat it.
        """
        from medft.data.audit import audit_manifest  # scikit-learn; only when a fit audits

        self._audited = True
        try:
            report = audit_manifest(self._get_manifest(), labels=self.labels, quick=True)
        except MedftError as exc:  # the bad-file policy below reports unreadable files
            log.warning("shortcut audit skipped: %s", exc)
            return
        if self.run_dir:
            report.write(Path(self.run_dir) / "audit")
        self.audit_warning = report.warning()
        if self.audit_warning:
            log.warning("shortcut audit: %s", self.audit_warning)

    def pos_weight(self) -> torch.Tensor:
        """Negatives / positives per label on the training part (unknown labels ignored).

        A label with no positive in training gets weight 1.
        """
        labels = self._labels_of(self._rows("train"))
        positives = (labels == 1.0).sum(axis=0)
        negatives = (labels == 0.0).sum(axis=0)
        weights = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
        return torch.as_tensor(weights, dtype=torch.float32)

    def split_summary(self) -> dict[str, dict[str, Any]]:
        """Per part: images, patients, positives per label, and files skipped (no IDs)."""
        manifest = self._get_manifest()
        split = self._get_split()
        summary: dict[str, dict[str, Any]] = {}
        for part in _PARTS:
            rows = self._rows(part)
            labels = self._labels_of(rows)
            patients = manifest.table["patient_id"].iloc[rows].nunique()
            summary[part] = {
                "images": len(rows),
                "patients": int(patients),
                "positives": {
                    name: int((labels[:, j] == 1.0).sum()) for j, name in enumerate(self.labels)
                },
                "skipped": sum(1 for row in self._bad_rows if split[row] == part),
            }
        return summary

    def seen_patients(self) -> SeenPatients:
        """Salted keys of the training and validation patients, for the checkpoint.

        Lets ``medft evaluate`` and ``medft predict`` warn when a manifest holds patients the
        model learned from or was selected on (see :mod:`medft.data.seen`).
        """
        manifest = self._get_manifest()
        ids = manifest.table["patient_id"]
        parts = {part: ids.iloc[self._rows(part)].astype(str) for part in ("train", "val")}
        used = manifest.table.iloc[np.concatenate([self._rows("train"), self._rows("val")])]
        return SeenPatients.from_ids(parts, fingerprint=data_fingerprint(used, manifest.labels))

    # ----------------------------------------------------------- dataloaders
    def train_dataloader(self) -> DataLoader:
        rows = self._rows("train")
        dataset = self._dataset(rows, train=True)
        weights = self._sample_weights(rows) if self.weighted_sampler else None
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        sampler = EpochSampler(
            len(rows), seed=self._order_seed(), weights=weights, num_replicas=replicas, rank=rank
        )
        if self._resume_order is not None:  # restored from a (mid-epoch) checkpoint
            sampler.load_state_dict(self._resume_order)
            self._resume_order = None
        loader = self._loader(
            dataset,
            sampler=sampler,
            drop_last=len(sampler) > self.batch_size,
            loader_class=ResumableDataLoader,
        )
        self._train_loader = loader
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset(self._rows("val"), train=False))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._dataset(self._rows("test"), train=False))

    def predict_dataloader(self) -> DataLoader:
        part = "all" if self.predict_split == "all" else "test"
        return self._loader(self._dataset(self._rows(part), train=False))

    def state_dict(self) -> dict[str, Any]:
        """The training data order's position (epoch, next item) for checkpoints.

        Lightning saves this in every checkpoint and hands it to :meth:`load_state_dict`
        before it asks for the training loader, so a run resumed from a mid-epoch
        checkpoint draws exactly the rest of the interrupted epoch.
        """
        if isinstance(self._train_loader, ResumableDataLoader):
            state = self._train_loader.state_dict()
            if state:
                return {"train_order": state["sampler"]}
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the training order saved by :meth:`state_dict` (applied to the next loader)."""
        order = state_dict.get("train_order")
        self._resume_order = dict(order) if order else None

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """Move a batch's tensors (non-blocking on CUDA, where the loader pins them).

        Lightning's generic transfer walks every element of the batch, the ``path`` strings
        too; a medft batch is a flat dict, so only its tensors are visited.
        """
        if not isinstance(batch, dict):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        non_blocking = device.type == "cuda"
        return {
            key: value.to(device, non_blocking=non_blocking)
            if isinstance(value, torch.Tensor)
            else value
            for key, value in batch.items()
        }

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record files dropped mid-epoch (``cache="none"``) and remove them from the batch."""
        if isinstance(batch, dict) and "skipped" in batch:
            self._record_bad(batch.pop("skipped"))
        return batch

    # -------------------------------------------------------------- internals
    def _get_manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = load_manifest(
                self.manifest_source, labels=self.requested_labels, uncertain=self.uncertain
            )
            table = self._manifest.table
            self._label_matrix = table[self._manifest.labels].to_numpy(dtype=np.float32)
            if self.requested_labels is None:
                # The model gets the resolved labels (CLI link); the saved and logged
                # hyper-parameters must agree, or Lightning refuses to log them ("Error
                # while merging hparams"). Saving again updates both copies.
                self.save_hyperparameters({**self.hparams, "labels": list(self._manifest.labels)})
        return self._manifest

    def _get_split(self) -> np.ndarray:
        """The part name of every manifest row (computed, read or taken from the manifest)."""
        if self._split is None:
            manifest = self._get_manifest()
            split = self._assign(manifest)
            check_no_leakage(manifest.table, split, allow=self.allow_patient_overlap)
            if self.run_dir is not None and rank_zero_only.rank == 0:
                write_assignment(self.run_dir / SPLITS_CSV, manifest.table, split)
            self._split = split.to_numpy(dtype=object)
        return self._split

    def _assign(self, manifest: Manifest) -> pd.Series:
        table = manifest.table
        if self.split_file is not None:
            aligned = align_assignment(table, read_assignment(self.split_file))
            if isinstance(aligned, pd.Series):
                if self.fold is not None:
                    raise ConfigError(
                        f"data.fold={self.fold}: {self.split_file} holds a train/val/test split, "
                        "not folds; drop data.fold or give a folds.csv"
                    )
                return aligned
            if self.fold is None:
                raise ConfigError(
                    f"data.fold: {self.split_file} holds folds; choose the fold to test on "
                    f"({', '.join(map(str, sorted(aligned['fold'].unique())))})"
                )
            return self._fold_split(manifest, folds_for_repeat(aligned, self.repeat))
        if "split" in table.columns:
            log.info("using the manifest's own 'split' column")
            return split_from_column(table, "split", allow_leakage=self.allow_patient_overlap)
        return holdout_split(
            table,
            labels=manifest.labels,
            val=self.val_fraction,
            test=self.test_fraction,
            seed=self.split_seed,
        )

    def _fold_split(self, manifest: Manifest, folds: pd.Series) -> pd.Series:
        available = sorted(int(f) for f in folds.unique())
        if self.fold not in available:
            raise ConfigError(
                f"data.fold={self.fold} is not in {self.split_file}; folds: {available}"
            )
        table = manifest.table
        is_test = (folds == self.fold).reindex(table.index)
        split = pd.Series("test", index=table.index, name="split", dtype=object)
        split[~is_test] = inner_split(
            table[~is_test], labels=manifest.labels, val=self.val_fraction, seed=self.split_seed
        )
        return split

    def _rows(self, part: str) -> np.ndarray:
        """Manifest row positions of a part (``all`` for every row), bad files left out."""
        split = self._get_split()
        rows = np.arange(len(split)) if part == "all" else np.flatnonzero(split == part)
        if self._bad_rows:
            rows = rows[~np.isin(rows, list(self._bad_rows))]
        return rows

    def _labels_of(self, rows: np.ndarray) -> np.ndarray:
        self._get_manifest()
        assert self._label_matrix is not None
        return self._label_matrix[rows]

    def _get_cache(self) -> DecodeCache:
        if self._cache is None:
            prefix, _ = build_transforms(
                image_size=self.image_size,
                fit_mode=self.fit_mode,
                train=False,
                compact_dtype=self.cache_dtype,
            )
            config = prefix_config(
                image_size=self.image_size, fit_mode=self.fit_mode, compact_dtype=self.cache_dtype
            )
            paths = self._get_manifest().table["path"].astype(str).tolist()
            self._cache = make_cache(
                self.cache_mode, paths, Decoder(prefix, config), cache_dir=self.cache_dir
            )
        return self._cache

    def _decode(self, parts: Sequence[str]) -> None:
        """Decode the parts once into the cache; apply the bad-file policy."""
        todo = [part for part in parts if part not in self._decoded_parts]
        if not todo:
            return
        cache = self._get_cache()
        split = self._get_split()
        rows = np.flatnonzero(np.isin(split, todo)).tolist()
        started = time.perf_counter()
        bad = cache.warm(
            rows, workers=_usable_cores(), stop_at_first_error=self.on_bad_file == "fail"
        )
        if bad and self.on_bad_file == "fail":
            first = bad[0]
            raise DicomReadError(
                f"{first.path}: {first.reason}. Stopped before training (data.on_bad_file=fail); "
                "fix or remove the file, or set data.on_bad_file=skip to leave unreadable "
                "files out"
            )
        self._decoded_parts.update(todo)
        if cache.mode != "none":
            seconds = time.perf_counter() - started
            log.info(
                "decoded %d image(s) of %s into the %s cache in %.1f s",
                len(rows) - len(bad),
                "/".join(todo),
                cache.mode,
                seconds,
            )
        self._record_bad(bad)

    def _record_bad(self, bad: Sequence[BadFile]) -> None:
        """Leave unreadable files out, say so loudly, and list them in skipped_files.csv."""
        new = [b for b in bad if b.index not in self._bad_rows]
        if not new:
            return
        for item in new:
            self._bad_rows.add(item.index)
            self.skipped.append(item)
            log.warning("skipped unreadable file %s: %s", item.path, item.reason)
        where = ""
        if self.run_dir is not None and rank_zero_only.rank == 0:
            target = self.run_dir / SKIPPED_FILES_CSV
            write_text(target, _skipped_csv(self.skipped))
            where = f"; listed in {target}"
        log.warning(
            "left out %d unreadable file(s) of %d (data.on_bad_file=skip)%s",
            len(self.skipped),
            len(self._get_split()),
            where,
        )

    def _dataset(self, rows: np.ndarray, *, train: bool) -> XrayDataset:
        _, random_part = build_transforms(
            image_size=self.image_size,
            fit_mode=self.fit_mode,
            train=train,
            augment=self.augment_config,
            compact_dtype=self.cache_dtype,
            compact_output=self._compact(),
        )
        return XrayDataset(
            self._get_cache(),
            rows,
            self._labels_of(rows),
            random_part,
            skip_bad=self.on_bad_file == "skip",
        )

    def _loader(
        self,
        dataset: XrayDataset,
        *,
        sampler: Sampler | None = None,
        drop_last: bool = False,
        loader_class: type[DataLoader] = DataLoader,
    ) -> DataLoader:
        """A loader with its own generator: starting a pass draws a base seed for the
        workers, which must not come from the global torch RNG (dropout). Otherwise a run
        resumed mid-epoch, whose passes start at other points relative to the restored
        RNG state (and whose persistent workers draw at a different first validation),
        would draw different dropout masks. Augmentation seeds come from the sampler.
        """
        workers = self.num_workers
        generator = torch.Generator().manual_seed(self._order_seed())
        return loader_class(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
            drop_last=drop_last,
            collate_fn=XrayCollate(
                self.image_size,
                self.num_labels,
                _TORCH_DTYPES[self.cache_dtype] if self._compact() else torch.float32,
            ),
            generator=generator,
        )

    def _compact(self) -> bool:
        """Whether batches carry the compact cached form (see ``compact_batches``)."""
        if self.compact_batches is not None:
            return bool(self.compact_batches)
        trainer = self.trainer
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        return bool(getattr(module, "accepts_compact_batches", False))

    def _sample_weights(self, rows: np.ndarray) -> np.ndarray:
        """Inverse-frequency weights: rare labels (and the all-negative group) drawn as often."""
        labels = self._labels_of(rows)
        positive = labels == 1.0
        counts = positive.sum(axis=0).astype(np.float64)
        none_positive = ~positive.any(axis=1)
        per_label = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
        weights = (positive * per_label[None, :]).max(axis=1) if labels.shape[1] else 0.0
        weights = np.where(none_positive, 1.0 / max(int(none_positive.sum()), 1), weights)
        return np.asarray(weights, dtype=np.float64)

    def _order_seed(self) -> int:
        """Lightning's global seed when ``seed_everything`` ran, else ``split_seed``."""
        seed = os.environ.get("PL_GLOBAL_SEED")
        return int(seed) if seed not in (None, "") else self.split_seed


def _skipped_csv(items: Sequence[BadFile]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "reason"])
    for item in items:
        writer.writerow([item.path, item.reason])
    return buffer.getvalue()


def _choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"data.{key}={value!r} is not one of {', '.join(allowed)}")


def _at_least(key: str, value: int, minimum: int) -> None:
    if int(value) != value or value < minimum:
        raise ConfigError(f"data.{key}={value!r} must be an integer >= {minimum}")
