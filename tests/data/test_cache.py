"""Decode-once caches: identical output in every mode, reuse, rebuild, bad files, dataset."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medft.data import dicom
from medft.data.cache import (
    BadFile,
    Decoder,
    DiskCache,
    MemoryCache,
    NoCache,
    XrayCollate,
    XrayDataset,
    make_cache,
)
from medft.data.transforms import AugmentConfig, build_transforms, prefix_config
from medft.errors import DicomReadError

SIZE = 24


def _decoder(size: int = SIZE, dtype: str = "uint8") -> Decoder:
    prefix, _ = build_transforms(image_size=size, fit_mode="pad", train=False, compact_dtype=dtype)
    return Decoder(prefix, prefix_config(image_size=size, fit_mode="pad", compact_dtype=dtype))


@pytest.fixture
def files(tmp_path: Path) -> list[str]:
    """Five small images of different shapes and one file that is no image."""
    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate([(30, 20), (20, 30), (25, 25), (40, 10), (12, 18)]):
        path = tmp_path / "images" / f"img{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        paths.append(str(path))
    bad = tmp_path / "images" / "broken.dcm"
    bad.write_bytes(b"DICM but not really")
    paths.append(str(bad))
    return paths


@pytest.fixture
def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every call of the reader (the transforms look it up at call time)."""
    calls: list[str] = []
    real = dicom.load_image

    def counting(path, **kwargs):
        calls.append(str(path))
        return real(path, **kwargs)

    monkeypatch.setattr(dicom, "load_image", counting)
    return calls


def test_every_mode_returns_what_the_decoder_returns(files: list[str], tmp_path: Path) -> None:
    decoder = _decoder()
    good = files[:-1]
    expected = [decoder(p) for p in good]
    caches = [
        NoCache(good, decoder),
        MemoryCache(good, decoder),
        DiskCache(good, decoder, tmp_path / "cache"),
    ]
    for cache in caches:
        assert cache.warm(range(len(good)), workers=2) == []
        for index, want in enumerate(expected):
            got = cache.get(index)
            assert got.dtype == np.uint8 and got.shape == (1, SIZE, SIZE)
            np.testing.assert_array_equal(got, want)


def test_memory_cache_decodes_once(files: list[str], count_reads: list[str]) -> None:
    cache = MemoryCache(files[:3], _decoder())
    cache.warm([0, 1, 2])
    assert len(count_reads) == 3
    for _ in range(3):
        cache.get(1)
    assert len(count_reads) == 3
    assert cache.nbytes_used == 3 * SIZE * SIZE


def test_disk_cache_is_reused_by_a_new_instance(
    files: list[str], tmp_path: Path, count_reads: list[str]
) -> None:
    good = files[:-1]
    first = DiskCache(good, _decoder(), tmp_path / "cache")
    first.warm(range(len(good)))
    assert len(count_reads) == len(good)
    arrays = [first.get(i) for i in range(len(good))]

    count_reads.clear()
    second = DiskCache(good, _decoder(), tmp_path / "cache")
    second.warm(range(len(good)), workers=2)
    for index, want in enumerate(arrays):
        np.testing.assert_array_equal(second.get(index), want)
    assert count_reads == []


def test_disk_entries_are_plain_npy_named_by_key_and_digest(
    files: list[str], tmp_path: Path
) -> None:
    cache = DiskCache(files[:1], _decoder(), tmp_path / "cache")
    cache.warm([0])
    entry = cache.entry(0)
    assert entry is not None and entry.parent.parent == tmp_path / "cache" / "v1"
    key, digest, suffix = entry.name.split(".")
    assert key == cache.key(0) and entry.parent.name == key[:2]
    assert len(digest) == 16 and suffix == "npy"
    np.testing.assert_array_equal(np.load(entry, allow_pickle=False), cache.get(0))


def test_key_changes_with_the_file_and_the_pipeline(files: list[str], tmp_path: Path) -> None:
    path = files[0]
    key = DiskCache([path], _decoder(), tmp_path / "c").key(0)
    assert DiskCache([path], _decoder(size=SIZE + 8), tmp_path / "c").key(0) != key
    assert DiskCache([path], _decoder(dtype="uint16"), tmp_path / "c").key(0) != key
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert DiskCache([path], _decoder(), tmp_path / "c").key(0) != key


@pytest.mark.parametrize("damage", ["flip", "truncate", "pickle"])
def test_corrupted_entry_is_detected_and_rebuilt(
    files: list[str], tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = DiskCache(files[:1], _decoder(), tmp_path / "cache")
    cache.warm([0])
    want = cache.get(0)
    entry = cache.entry(0)
    assert entry is not None
    raw = bytearray(entry.read_bytes())
    if damage == "flip":
        raw[-10] ^= 0xFF  # a pixel changes: the digest no longer matches
        entry.write_bytes(bytes(raw))
    elif damage == "truncate":
        entry.write_bytes(bytes(raw[: len(raw) // 2]))
    else:
        np.save(entry, np.array([{"not": "pixels"}], dtype=object), allow_pickle=True)

    fresh = DiskCache(files[:1], _decoder(), tmp_path / "cache")
    fresh.warm([0])
    with caplog.at_level(logging.WARNING, logger="medft.data.cache"):
        got = fresh.get(0)
    np.testing.assert_array_equal(got, want)
    assert fresh.rebuilt == 1
    assert "rebuilding" in caplog.text
    rebuilt = fresh.entry(0)
    assert rebuilt is not None and rebuilt.is_file()
    np.testing.assert_array_equal(DiskCache(files[:1], _decoder(), tmp_path / "cache").get(0), want)


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_warm_reports_bad_files_with_reasons(files: list[str], tmp_path: Path, mode: str) -> None:
    cache = make_cache(mode, files, _decoder(), cache_dir=tmp_path / "cache")
    bad = cache.warm(range(len(files)), workers=2)
    assert bad == [BadFile(5, files[5], bad[0].reason)]
    assert bad[0].reason and not bad[0].reason.startswith(files[5])
    with pytest.raises(DicomReadError, match=r"broken\.dcm"):
        cache.get(5)
    np.testing.assert_array_equal(cache.get(0), _decoder()(files[0]))


def test_warm_can_stop_at_the_first_bad_file(files: list[str], count_reads: list[str]) -> None:
    order = [5, 0, 1, 2, 3, 4]
    cache = MemoryCache(files, _decoder())
    bad = cache.warm(order, stop_at_first_error=True)
    assert [b.index for b in bad] == [5]
    assert len(count_reads) == 1


def test_make_cache_checks_its_arguments(files: list[str]) -> None:
    with pytest.raises(ValueError, match="cache_dir"):
        make_cache("disk", files, _decoder())
    with pytest.raises(ValueError, match="memory"):
        make_cache("ram", files, _decoder())


def _dataset(files: list[str], *, train: bool, skip_bad: bool = True) -> XrayDataset:
    _, random_part = build_transforms(
        image_size=SIZE, fit_mode="pad", train=train, augment=AugmentConfig()
    )
    labels = np.array([[1.0, np.nan]] * len(files), dtype=np.float32)
    cache = NoCache(files, _decoder())
    return XrayDataset(cache, range(len(files)), labels, random_part, skip_bad=skip_bad)


def test_dataset_items_and_seeded_augmentation(files: list[str]) -> None:
    dataset = _dataset(files, train=True)
    item = dataset[(2, 11)]
    assert set(item) == {"image", "label", "index", "path"}
    assert item["image"].shape == (1, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert item["index"] == 2 and item["path"] == files[2]
    assert item["label"][0] == 1.0 and torch.isnan(item["label"][1])
    assert torch.equal(dataset[(2, 11)]["image"], item["image"])
    assert not torch.equal(dataset[(2, 12)]["image"], item["image"])


def test_dataset_marks_or_raises_on_bad_files(files: list[str]) -> None:
    marker = _dataset(files, train=False)[5]
    assert set(marker) == {"skipped"}
    assert marker["skipped"].path == files[5] and marker["skipped"].index == 5
    with pytest.raises(DicomReadError, match=r"broken\.dcm"):
        _dataset(files, train=False, skip_bad=False)[5]


def test_collate_drops_bad_files_and_keeps_nan(files: list[str]) -> None:
    dataset = _dataset(files, train=False)
    collate = XrayCollate(SIZE, num_labels=2)
    batch = collate([dataset[i] for i in (0, 5, 3)])
    assert batch["image"].shape == (2, 1, SIZE, SIZE)
    assert batch["label"].shape == (2, 2) and torch.isnan(batch["label"][:, 1]).all()
    assert batch["index"].tolist() == [0, 3] and batch["index"].dtype == torch.int64
    assert batch["path"] == [files[0], files[3]]
    assert [b.path for b in batch["skipped"]] == [files[5]]

    empty = collate([dataset[5]])
    assert empty["image"].shape == (0, 1, SIZE, SIZE) and empty["label"].shape == (0, 2)
    assert "skipped" not in collate([dataset[0]])
