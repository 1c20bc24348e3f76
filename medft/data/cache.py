"""Decode once: compact caches of the deterministic prefix, and the dataset on top.

Decoding a DICOM (codec, LUTs, antialiased resize) costs far more than the
augmentation that follows it, and its result never changes between epochs. The
caches here run :func:`medft.data.transforms.build_transforms`' prefix once per file
and keep its compact ``(1, S, S)`` uint8/uint16 output:

- :class:`MemoryCache`: one preallocated array for the whole manifest, filled in
  parallel during ``setup``. Fastest; costs ``S*S`` bytes per image (uint8) of RAM.
- :class:`DiskCache`: one ``.npy`` per image, keyed by the file's identity and the
  prefix config, reused across epochs, folds and runs. The dataset does not live in
  RAM (only paths and keys do).
- :class:`NoCache`: decode on every access (for data that fits neither).

We keep our own ``.npy`` cache instead of MONAI's ``PersistentDataset`` because
that one stores items with ``torch.save`` (pickle): loading a cache file would run
whatever code a tampered file carries. Ours loads with ``np.load(allow_pickle=False)``
and checks a content digest, so a corrupted or foreign entry is rebuilt, not trusted.

:class:`XrayDataset` applies the random part on top and turns unreadable files into
skip markers that :class:`XrayCollate` drops (``on_bad_file="skip"``).
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import lightning.pytorch  # noqa: F401  (before MONAI; see medft.model's docstring)
import numpy as np
import torch
from monai.transforms import Compose
from torch.utils.data import Dataset

from medft._io import atomic_open
from medft.data.transforms import CacheDtype, metadata_off, share_random_state
from medft.errors import DicomReadError, MedftError

__all__ = [
    "BAD_FILE_POLICIES",
    "CACHE_MODES",
    "BadFile",
    "BadFilePolicy",
    "CacheDtype",
    "CacheMode",
    "DecodeCache",
    "Decoder",
    "DiskCache",
    "MemoryCache",
    "NoCache",
    "XrayCollate",
    "XrayDataset",
    "bad_file_reason",
    "make_cache",
]

log = logging.getLogger(__name__)

CacheMode = Literal["memory", "disk", "none"]
"""Where decoded images live: RAM, ``.npy`` files, or nowhere (decode every access)."""
CACHE_MODES: tuple[str, ...] = get_args(CacheMode)

BadFilePolicy = Literal["skip", "fail"]
"""What an unreadable file does: leave it out (listed with its reason) or stop the run."""
BAD_FILE_POLICIES: tuple[str, ...] = get_args(BadFilePolicy)

# CacheDtype (``uint8``/``uint16``) is defined next to the transforms that quantise to it
# and re-exported here with the other cache choices.

CACHE_FORMAT = "v1"
"""Folder under the cache directory; bumped if the file layout changes."""

_DIGEST_BYTES = 8
_CHUNK = 16  # files per pool task: amortises scheduling, keeps both cores busy


@dataclass(frozen=True)
class BadFile:
    """A manifest row whose file could not be decoded (no patient data: path and reason)."""

    index: int
    path: str
    reason: str


def bad_file_reason(path: str, error: BaseException) -> str:
    """One-line reason from a reader error, without the path its message starts with."""
    message = str(error)
    if message.startswith(path):
        message = message[len(path) :].lstrip(" :")
    return " ".join(message.split()) or type(error).__name__


class Decoder:
    """The deterministic prefix as a function ``path -> compact (1, S, S) array``.

    Args:
        prefix: The prefix Compose from :func:`~medft.data.transforms.build_transforms`.
        config: Its :func:`~medft.data.transforms.prefix_config` (what the output
            depends on besides the file; part of disk-cache keys).
    """

    def __init__(self, prefix: Compose, config: dict[str, Any]) -> None:
        self.prefix = prefix
        self.config = dict(config)
        size = int(config["image_size"])
        self.shape = (1, size, size)
        self.dtype = np.dtype(config["compact_dtype"])

    def __call__(self, path: str) -> np.ndarray:
        array = np.ascontiguousarray(self.prefix({"image": path})["image"])
        if array.shape != self.shape or array.dtype != self.dtype:
            raise RuntimeError(
                f"the prefix produced {array.dtype}{array.shape}, expected "
                f"{self.dtype}{self.shape}; the prefix and its config disagree"
            )
        return array


# ------------------------------------------------------------------------ caches


class DecodeCache(abc.ABC):
    """Compact images for every manifest row, by row position.

    Args:
        paths: Absolute file path of every manifest row.
        decoder: The prefix to run on a path.
    """

    mode = ""

    def __init__(self, paths: Sequence[str], decoder: Decoder) -> None:
        self.paths = [str(p) for p in paths]
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.paths)

    @abc.abstractmethod
    def get(self, index: int) -> np.ndarray:
        """The compact image of row ``index``; raises the reader's MedftError if unreadable."""

    def warm(
        self, indices: Sequence[int], *, workers: int = 1, stop_at_first_error: bool = False
    ) -> list[BadFile]:
        """Decode (or find) the given rows now, in parallel; return the unreadable ones.

        Args:
            indices: Row positions to prepare.
            workers: Threads to use (decoding releases the GIL in the codecs, numpy and
                torch, so threads use both cores without copying images between processes).
            stop_at_first_error: Return as soon as one file fails (``on_bad_file="fail"``).

        Returns:
            The rows that raised a :class:`~medft.errors.MedftError`, in row order (with
            ``stop_at_first_error`` at least the first one met).
        """
        todo = [int(i) for i in indices if not self._is_ready(int(i))]
        bad: list[BadFile] = []
        for index, error in _run_parallel(self._prepare, todo, workers, stop_at_first_error):
            bad.append(BadFile(index, self.paths[index], bad_file_reason(self.paths[index], error)))
        return sorted(bad, key=lambda b: b.index)

    def _is_ready(self, index: int) -> bool:
        return False

    @abc.abstractmethod
    def _prepare(self, index: int) -> None:
        """Make row ``index`` ready for :meth:`get` (raises the reader's error)."""


class NoCache(DecodeCache):
    """Decode on every access; :meth:`warm` does nothing (bad files surface per batch)."""

    mode = "none"

    def warm(
        self, indices: Sequence[int], *, workers: int = 1, stop_at_first_error: bool = False
    ) -> list[BadFile]:
        return []

    def _prepare(self, index: int) -> None:
        """Nothing is kept, so nothing is prepared."""

    def get(self, index: int) -> np.ndarray:
        return self.decoder(self.paths[index])


class MemoryCache(DecodeCache):
    """All compact images in one preallocated array (shared copy-on-write with workers).

    Untouched rows cost no RAM (the operating system maps pages on first write), so a
    run that only fits and validates never pays for the test images.
    """

    mode = "memory"

    def __init__(self, paths: Sequence[str], decoder: Decoder) -> None:
        super().__init__(paths, decoder)
        self._store = np.empty((len(self.paths), *decoder.shape), dtype=decoder.dtype)
        self._ready = np.zeros(len(self.paths), dtype=bool)

    @property
    def nbytes_used(self) -> int:
        """Bytes held by decoded images."""
        return (
            int(self._ready.sum()) * int(np.prod(self.decoder.shape)) * self.decoder.dtype.itemsize
        )

    def _is_ready(self, index: int) -> bool:
        return bool(self._ready[index])

    def _prepare(self, index: int) -> None:
        self._store[index] = self.decoder(self.paths[index])
        self._ready[index] = True

    def get(self, index: int) -> np.ndarray:
        if not self._ready[index]:
            self._prepare(index)
        return self._store[index]


class DiskCache(DecodeCache):
    """One ``.npy`` per image under ``root/v1/ab/<key>.<digest>.npy``.

    ``key`` is the SHA-256 of (absolute path, file size, mtime in ns, prefix config):
    a changed file or a changed pipeline gets a new entry and never a stale one.
    ``digest`` is a BLAKE2b digest of the array's bytes, checked on every read; an entry
    that fails to load, has the wrong shape or dtype, or does not match its digest is
    deleted and rebuilt. Entries are written atomically, so concurrent runs and
    DataLoader workers can share one cache directory. Nothing but pixels is stored.
    """

    mode = "disk"

    def __init__(
        self, paths: Sequence[str], decoder: Decoder, root: str | os.PathLike[str]
    ) -> None:
        super().__init__(paths, decoder)
        self.root = Path(root) / CACHE_FORMAT
        self._files: list[str | None] = [None] * len(self.paths)
        self._config = json.dumps(decoder.config, sort_keys=True)
        self.rebuilt = 0
        """Entries found corrupted and rebuilt (in this process)."""

    def key(self, index: int) -> str:
        """The cache key of row ``index`` (raises DicomReadError if the file is gone)."""
        path = os.path.abspath(self.paths[index])
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise DicomReadError(f"{path}: cannot read the file ({exc.strerror})") from exc
        material = json.dumps([path, stat.st_size, stat.st_mtime_ns, self._config])
        return hashlib.sha256(material.encode()).hexdigest()

    def entry(self, index: int) -> Path | None:
        """The entry file of row ``index`` if one exists (after :meth:`warm` or :meth:`get`)."""
        name = self._files[index]
        return None if name is None else Path(name)

    def _is_ready(self, index: int) -> bool:
        return self._files[index] is not None

    def _prepare(self, index: int) -> None:
        key = self.key(index)
        found = self._find(key)
        if found is None:
            found = self._write(key, self.decoder(self.paths[index]))
        self._files[index] = str(found)

    def get(self, index: int) -> np.ndarray:
        if self._files[index] is None:
            self._prepare(index)
        entry = Path(str(self._files[index]))
        array = self._load(entry)
        if array is not None:
            return array
        log.warning("cache entry %s is corrupted or missing; rebuilding it", entry.name)
        with contextlib.suppress(OSError):
            entry.unlink()
        array = self.decoder(self.paths[index])
        self._files[index] = str(self._write(self.key(index), array))
        self.rebuilt += 1
        return array

    def _shard(self, key: str) -> Path:
        return self.root / key[:2]

    def _find(self, key: str) -> Path | None:
        try:
            names = os.listdir(self._shard(key))
        except FileNotFoundError:
            return None
        prefix = key + "."
        for name in names:
            if name.startswith(prefix) and name.endswith(".npy"):
                return self._shard(key) / name
        return None

    def _write(self, key: str, array: np.ndarray) -> Path:
        path = self._shard(key) / f"{key}.{_digest(array)}.npy"
        with atomic_open(path, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        return path

    def _load(self, entry: Path) -> np.ndarray | None:
        """Load and verify an entry; ``None`` when it is unreadable or does not verify."""
        expected = entry.name.split(".")[1] if entry.name.count(".") == 2 else ""
        try:
            array = np.load(entry, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if array.shape != self.decoder.shape or array.dtype != self.decoder.dtype:
            return None
        if _digest(array) != expected:
            return None
        return array


def make_cache(
    mode: CacheMode,
    paths: Sequence[str],
    decoder: Decoder,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DecodeCache:
    """Build the cache for ``mode`` (one of :data:`CACHE_MODES`)."""
    if mode == "memory":
        return MemoryCache(paths, decoder)
    if mode == "disk":
        if cache_dir is None:
            raise ValueError("a disk cache needs a cache_dir")
        return DiskCache(paths, decoder, cache_dir)
    if mode == "none":
        return NoCache(paths, decoder)
    raise ValueError(f"cache mode must be one of {CACHE_MODES}, got {mode!r}")


def _digest(array: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(array).data, digest_size=_DIGEST_BYTES).hexdigest()


def _run_parallel(
    prepare: Callable[[int], None], indices: list[int], workers: int, stop_at_first_error: bool
) -> Iterator[tuple[int, MedftError]]:
    """Call ``prepare`` on every index in a thread pool; yield ``(index, error)`` failures."""

    def run_chunk(chunk: list[int]) -> list[tuple[int, MedftError]]:
        failures = []
        for index in chunk:
            try:
                prepare(index)
            except MedftError as exc:
                failures.append((index, exc))
                if stop_at_first_error:
                    break
        return failures

    chunks = [indices[i : i + _CHUNK] for i in range(0, len(indices), _CHUNK)]
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            failures = run_chunk(chunk)
            yield from failures
            if failures and stop_at_first_error:
                return
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medft-decode") as pool:
        pending: set[Future] = {pool.submit(run_chunk, chunk) for chunk in chunks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            failures = [f for future in done for f in future.result()]
            yield from failures
            if failures and stop_at_first_error:
                for future in pending:
                    future.cancel()
                return


# ------------------------------------------------------------------------ dataset


class XrayDataset(Dataset):
    """Rows of a manifest as training samples: cached compact image + random part.

    Items are dicts ``image`` (``(1, S, S)``: float32 in [0, 1], or the compact
    uint8/uint16 form when the random part returns it), ``label`` (float32
    ``(L,)``, NaN = unknown), ``index`` (the row's position in the manifest) and
    ``path``. An index may be a plain position or ``(position, seed)``: the seed
    (from :class:`~medft.data.datamodule.EpochSampler`) reseeds the random part, so a
    sample's augmentation depends only on (seed, epoch, position) and not on worker
    count, batch size or resume point.

    Args:
        cache: Where compact images come from.
        rows: Manifest row positions in this part.
        labels: ``(len(rows), L)`` float labels of those rows.
        random_part: The random Compose from ``build_transforms``.
        skip_bad: Return a skip marker for an unreadable file instead of raising.
    """

    def __init__(
        self,
        cache: DecodeCache,
        rows: Sequence[int],
        labels: np.ndarray,
        random_part: Compose,
        *,
        skip_bad: bool = True,
    ) -> None:
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.float32).reshape(len(self.rows), -1)
        self.random_part = random_part
        self.skip_bad = skip_bad
        self._state = share_random_state(random_part)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        position, seed = item if isinstance(item, tuple) else (item, None)
        row = int(self.rows[position])
        path = self.cache.paths[row]
        try:
            compact = self.cache.get(row)
        except MedftError as exc:
            if not self.skip_bad:
                raise
            return {"skipped": BadFile(row, path, bad_file_reason(path, exc))}
        if self.random_part.transforms:
            if seed is not None:
                self._state.seed(int(seed))
            with metadata_off():
                image = self.random_part({"image": compact})["image"]
        else:  # compact output, nothing random: the cached array as it is (copied at collation)
            image = compact
        image = torch.as_tensor(image)
        return {
            "image": image if image.dtype in _COMPACT_TORCH else image.float(),
            "label": torch.from_numpy(self.labels[position].copy()),
            "index": row,
            "path": path,
        }


_COMPACT_TORCH = (torch.uint8, torch.uint16)


class XrayCollate:
    """Stack samples into a batch, dropping skip markers of unreadable files.

    The batch is ``image`` ``(B, 1, S, S)`` (float32, or the items' compact
    uint8/uint16; ``dtype`` is the type of an empty batch), ``label`` float32 ``(B, L)`` (NaN
    kept), ``index`` int64 ``(B,)`` and ``path`` (list of B str). Dropped files are
    listed under ``skipped`` as :class:`BadFile` records, only when there are any;
    :class:`~medft.data.datamodule.XrayDataModule` records and removes that key before
    the batch reaches the model. If every file of a batch was dropped, ``B`` is 0.
    """

    def __init__(
        self, image_size: int, num_labels: int, dtype: torch.dtype = torch.float32
    ) -> None:
        self.image_size = int(image_size)
        self.num_labels = int(num_labels)
        self.dtype = dtype

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        kept = [item for item in items if "skipped" not in item]
        skipped = [item["skipped"] for item in items if "skipped" in item]
        if kept:
            image = torch.stack([item["image"] for item in kept])
            label = torch.stack([item["label"] for item in kept])
        else:
            image = torch.empty((0, 1, self.image_size, self.image_size), dtype=self.dtype)
            label = torch.empty((0, self.num_labels))
        batch: dict[str, Any] = {
            "image": image,
            "label": label,
            "index": torch.tensor([item["index"] for item in kept], dtype=torch.int64),
            "path": [item["path"] for item in kept],
        }
        if skipped:
            batch["skipped"] = skipped
        return batch
