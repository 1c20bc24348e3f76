"""XrayDataModule: splits, leakage guard, bad files, caches, batches, order, pos_weight."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medft.data import dicom
from medft.data.datamodule import EpochSampler, XrayDataModule
from medft.data.splits import read_assignment, write_assignment
from medft.errors import ConfigError, DataError, DicomReadError, LeakageError

SIZE = 16
N_PATIENTS = 12


def _write_dataset(root: Path, *, bad: tuple[int, ...] = ()) -> Path:
    """Two images for each of 12 patients; two labels (one partly unknown); some bad files."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(N_PATIENTS):
        for k in range(2):
            index = 2 * p + k
            path = root / "img" / f"p{p:02d}_{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if index in bad:
                path.write_bytes(b"this is not an image")
            else:
                Image.fromarray(rng.integers(0, 256, (20, 14), dtype=np.uint8)).save(path)
            effusion = "" if index % 5 == 0 else str(int(index % 3 == 0))
            rows.append([path.relative_to(root).as_posix(), f"PID-{p:03d}", p % 2, effusion])
    manifest = root / "labels.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "patient_id", "abnormal", "effusion"])
        writer.writerows(rows)
    return manifest


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return _write_dataset(tmp_path / "data")


@pytest.fixture
def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = dicom.load_image

    def counting(path, **kwargs):
        calls.append(str(path))
        return real(path, **kwargs)

    monkeypatch.setattr(dicom, "load_image", counting)
    return calls


def _module(manifest: Path, tmp_path: Path, **kwargs) -> XrayDataModule:
    options = dict(
        image_size=SIZE,
        batch_size=4,
        num_workers=0,
        val_fraction=0.25,
        test_fraction=0.25,
        run_dir=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "cache"),
    )
    options.update(kwargs)
    return XrayDataModule(str(manifest), **options)


def _paths(loader) -> list[str]:
    return [p for batch in loader for p in batch["path"]]


def test_batches_have_the_documented_keys_and_keep_nan(manifest: Path, tmp_path: Path) -> None:
    dm = _module(manifest, tmp_path)
    assert dm.labels == ["abnormal", "effusion"] and dm.num_labels == 2
    assert dm.task == "multilabel"
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    batch = batches[0]
    assert set(batch) == {"image", "label", "index", "path"}
    assert batch["image"].shape == (4, 1, SIZE, SIZE) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    assert batch["label"].shape == (4, 2) and batch["label"].dtype == torch.float32
    assert batch["index"].dtype == torch.int64 and len(batch["path"]) == 4
    table = pd.read_csv(manifest)
    labels = torch.cat([b["label"] for b in batches])
    index = torch.cat([b["index"] for b in batches]).numpy()
    expected = table.loc[index, ["abnormal", "effusion"]].to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(labels.numpy(), expected)  # NaN where the CSV is blank
    assert torch.isnan(labels).any()


def test_split_is_written_and_reused(manifest: Path, tmp_path: Path) -> None:
    dm = _module(manifest, tmp_path)
    dm.setup("fit")
    dm.setup("test")
    written = tmp_path / "run" / "splits.csv"
    saved = read_assignment(written)
    assert set(saved["split"]) == {"train", "val", "test"}
    assert "PID-" not in written.read_text()  # patient keys are salted hashes

    again = _module(manifest, tmp_path / "second", split_file=str(written))
    again.setup("test")
    assert _paths(again.test_dataloader()) == _paths(dm.test_dataloader())
    assert sorted(_paths(again.val_dataloader())) == sorted(_paths(dm.val_dataloader()))
    same_seed = _module(manifest, tmp_path / "third")
    same_seed.setup("test")
    assert _paths(same_seed.test_dataloader()) == _paths(dm.test_dataloader())


def test_fit_with_no_training_rows_is_one_clear_error(manifest: Path, tmp_path: Path) -> None:
    """A manifest whose split column says test everywhere used to crash in a reshape."""
    table = pd.read_csv(manifest)
    only_test = manifest.parent / "only_test.csv"  # paths are relative to the CSV
    table.assign(split="test").to_csv(only_test, index=False)
    dm = _module(only_test, tmp_path)
    with pytest.raises(DataError, match=r"no readable training images.*'test': \d+"):
        dm.setup("fit")
    dm.setup("test")  # testing such a manifest is fine
    assert len(_paths(dm.test_dataloader())) == len(table)


def test_patient_overlap_is_refused_unless_allowed(manifest: Path, tmp_path: Path) -> None:
    table = pd.read_csv(manifest)
    table["patient_id"] = table["patient_id"].astype(str)
    table["path"] = [str(manifest.parent / p) for p in table["path"]]
    split = pd.Series(["train", "test"] * N_PATIENTS, name="split")  # each patient in both
    split_file = tmp_path / "leaky.csv"
    write_assignment(split_file, table, split)
    with pytest.raises(LeakageError, match="patient"):
        _module(manifest, tmp_path, split_file=str(split_file)).setup("fit")
    allowed = _module(manifest, tmp_path, split_file=str(split_file), allow_patient_overlap=True)
    with pytest.warns(UserWarning, match="more than one part"):
        allowed.setup("fit")


def test_bad_files_are_skipped_and_listed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = _write_dataset(tmp_path / "data", bad=(3, 10))
    dm = _module(manifest, tmp_path)
    with caplog.at_level(logging.WARNING, logger="medft.data.datamodule"):
        dm.setup("fit")
        dm.setup("test")
    bad_paths = {str(manifest.parent / "img" / name) for name in ("p01_1.png", "p05_0.png")}
    assert {b.path for b in dm.skipped} == bad_paths
    listed = list(csv.DictReader(io.StringIO((tmp_path / "run" / "skipped_files.csv").read_text())))
    assert {row["path"] for row in listed} == bad_paths
    assert all(row["reason"] for row in listed)
    assert "p01_1.png" in caplog.text and "left out 2 unreadable" in caplog.text
    seen = set()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        seen |= {loader.dataset.cache.paths[row] for row in loader.dataset.rows}
    assert not seen & bad_paths and len(seen) == 2 * N_PATIENTS - 2
    summary = dm.split_summary()
    assert sum(part["skipped"] for part in summary.values()) == 2
    assert sum(part["images"] for part in summary.values()) == 2 * N_PATIENTS - 2


def test_fail_policy_stops_before_training(tmp_path: Path) -> None:
    manifest = _write_dataset(tmp_path / "data", bad=tuple(range(24)))
    dm = _module(manifest, tmp_path, on_bad_file="fail")
    with pytest.raises(DicomReadError, match=r"p\d\d_\d\.png.*on_bad_file=fail"):
        dm.setup("fit")


def test_uncached_bad_file_is_dropped_mid_epoch(tmp_path: Path) -> None:
    manifest = _write_dataset(tmp_path / "data", bad=tuple(range(0, 24, 3)))
    dm = _module(manifest, tmp_path, cache="none", augment=False)
    dm.setup("fit")
    assert dm.skipped == []  # nothing is decoded up front without a cache
    kept = []
    for batch in dm.val_dataloader():
        batch = dm.on_before_batch_transfer(batch, 0)
        assert "skipped" not in batch
        kept += batch["path"]
    assert dm.skipped and not {b.path for b in dm.skipped} & set(kept)
    assert (tmp_path / "run" / "skipped_files.csv").is_file()


def test_disk_cache_is_reused_by_the_next_run(
    manifest: Path, tmp_path: Path, count_reads: list[str]
) -> None:
    first = _module(manifest, tmp_path / "a", cache="disk", cache_dir=str(tmp_path / "cache"))
    first.setup("fit")
    assert len(count_reads) > 0
    images = [b["image"] for b in first.val_dataloader()]
    count_reads.clear()
    second = _module(manifest, tmp_path / "b", cache="disk", cache_dir=str(tmp_path / "cache"))
    second.setup("fit")
    again = [b["image"] for b in second.val_dataloader()]
    assert count_reads == []
    for x, y in zip(images, again, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("cache", ["disk", "none"])
def test_cache_modes_give_the_same_batches(manifest: Path, tmp_path: Path, cache: str) -> None:
    reference = _module(manifest, tmp_path / "m", cache="memory")
    other = _module(manifest, tmp_path / cache, cache=cache)
    for dm in (reference, other):
        dm.setup("fit")
    for x, y in zip(reference.train_dataloader(), other.train_dataloader(), strict=True):
        assert torch.equal(x["image"], y["image"]) and x["path"] == y["path"]


def test_same_seed_same_order_new_epoch_new_augmentation(manifest: Path, tmp_path: Path) -> None:
    def epoch(dm: XrayDataModule, number: int) -> tuple[list[str], torch.Tensor]:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(number)
        batches = list(loader)
        return [p for b in batches for p in b["path"]], torch.cat([b["image"] for b in batches])

    one, two = _module(manifest, tmp_path / "1"), _module(manifest, tmp_path / "2")
    for dm in (one, two):
        dm.setup("fit")
    paths0, images0 = epoch(one, 0)
    paths0b, images0b = epoch(two, 0)
    assert paths0 == paths0b and torch.equal(images0, images0b)
    paths1, _ = epoch(one, 1)
    assert paths1 != paths0
    _, images1 = epoch(one, 1)
    position = {p: i for i, p in enumerate(paths1)}
    reordered = images1[[position[p] for p in paths0]]
    assert not torch.equal(reordered, images0)  # the same image looks different next epoch


def test_workers_do_not_change_the_data(manifest: Path, tmp_path: Path) -> None:
    serial = _module(manifest, tmp_path / "s")
    forked = _module(manifest, tmp_path / "w", num_workers=1)
    for dm in (serial, forked):
        dm.setup("fit")
    loader = forked.train_dataloader()
    assert loader.persistent_workers
    for x, y in zip(serial.train_dataloader(), loader, strict=True):
        assert torch.equal(x["image"], y["image"])


def test_epoch_sampler_is_seeded_and_weighted() -> None:
    a, b = EpochSampler(10, seed=3), EpochSampler(10, seed=3)
    assert list(a) == list(b)
    assert list(a) != list(EpochSampler(10, seed=3))  # the second pass is epoch 1
    a.set_epoch(0)
    assert list(a) == list(EpochSampler(10, seed=3))
    assert sorted(i for i, _ in EpochSampler(10, seed=1)) == list(range(10))
    weights = np.array([1.0] + [0.0] * 9)
    assert {i for i, _ in EpochSampler(10, seed=1, weights=weights)} == {0}


def test_epoch_sampler_resumes_inside_an_epoch() -> None:
    reference = EpochSampler(10, seed=3)
    reference.set_epoch(2)
    whole = list(reference)
    resumed = EpochSampler(10, seed=3)
    resumed.load_state_dict({"seed": 3, "size": 10, "epoch": 2, "start": 4})
    resumed.set_epoch(2)  # Lightning pins the epoch again: the start is kept
    assert list(resumed) == whole[4:]
    assert resumed.state_dict() == {"seed": 3, "size": 10, "epoch": 3, "start": 0}
    assert resumed.state_after(6)["epoch"] == 3  # a finished pass resumes at the next epoch
    with pytest.raises(ConfigError, match="11 training images"):
        resumed.load_state_dict({"seed": 3, "size": 11, "epoch": 0, "start": 0})


@pytest.mark.parametrize("workers", [0, 1])
def test_train_loader_resumes_mid_epoch_with_the_same_batches(
    manifest: Path, tmp_path: Path, workers: int
) -> None:
    """A loader restored from a mid-epoch state yields exactly the rest of that epoch."""
    from lightning.fabric.utilities.types import _Stateful

    def loader(name: str) -> torch.utils.data.DataLoader:
        dm = _module(manifest, tmp_path / name, num_workers=workers, cache="none")
        dm.setup("fit")
        return dm.train_dataloader()

    reference = loader("reference")
    assert isinstance(reference, _Stateful)  # what Lightning checks before saving a state
    reference.sampler.set_epoch(1)
    expected = list(reference)
    assert len(expected) == len(reference) >= 3

    interrupted = loader("interrupted")
    interrupted.sampler.set_epoch(1)
    batches = iter(interrupted)
    seen = [next(batches), next(batches)]
    state = interrupted.state_dict()
    del batches

    resumed = loader("resumed")
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)
    rest = list(resumed)
    assert len(rest) == len(expected) - len(seen)
    for got, want in zip(seen + rest, expected, strict=True):
        assert got["path"] == want["path"]
        assert torch.equal(got["image"], want["image"])  # same augmentation seeds
    after_epoch = resumed.state_dict()["sampler"]
    assert (after_epoch["epoch"], after_epoch["start"]) == (2, 0)


def test_pos_weight_on_a_hand_made_split(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    labels = {  # train: abnormal 1,0,0,NaN -> 2/1; effusion 1,1,0,0 -> 2/2
        "a": ("train", "1", "1"),
        "b": ("train", "0", "1"),
        "c": ("train", "0", "0"),
        "d": ("train", "", "0"),
        "e": ("val", "1", "1"),
        "f": ("test", "1", "1"),
    }
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "patient_id", "abnormal", "effusion", "split"])
        for name, (part, abnormal, effusion) in labels.items():
            Image.fromarray(np.full((8, 8), 100, np.uint8)).save(root / f"{name}.png")
            writer.writerow([f"{name}.png", name, abnormal, effusion, part])
    dm = _module(root / "labels.csv", tmp_path)
    dm.setup("fit")
    torch.testing.assert_close(dm.pos_weight(), torch.tensor([2.0, 1.0]))
    summary = dm.split_summary()
    assert summary["train"] == {
        "images": 4,
        "patients": 4,
        "positives": {"abnormal": 1, "effusion": 2},
        "skipped": 0,
    }


def test_folds_file_holds_out_one_fold(manifest: Path, tmp_path: Path) -> None:
    table = pd.read_csv(manifest)
    table["path"] = [str(manifest.parent / p) for p in table["path"]]
    folds = pd.DataFrame({"repeat": 0, "fold": [(i // 2) % 3 for i in range(len(table))]})
    folds_file = tmp_path / "folds.csv"
    write_assignment(folds_file, table, folds)
    dm = _module(manifest, tmp_path, split_file=str(folds_file), fold=1)
    dm.setup("fit")
    dm.setup("test")
    test = set(_paths(dm.test_dataloader()))
    assert test == set(table.loc[folds["fold"] == 1, "path"])
    assert not test & set(_paths(dm.val_dataloader()))
    with pytest.raises(ConfigError, match=r"data\.fold"):
        _module(manifest, tmp_path, split_file=str(folds_file)).setup("fit")
    with pytest.raises(ConfigError, match=r"folds: \[0, 1, 2\]"):
        _module(manifest, tmp_path, split_file=str(folds_file), fold=7).setup("fit")


def test_predict_covers_test_or_everything(manifest: Path, tmp_path: Path) -> None:
    dm = _module(manifest, tmp_path, predict_split="all")
    dm.setup("predict")
    assert len(_paths(dm.predict_dataloader())) == 2 * N_PATIENTS
    default = _module(manifest, tmp_path / "t")
    default.setup("predict")
    assert len(_paths(default.predict_dataloader())) == default.split_summary()["test"]["images"]


def test_weighted_sampler_favours_rare_positives(manifest: Path, tmp_path: Path) -> None:
    dm = _module(manifest, tmp_path, weighted_sampler=True, labels=["effusion"], augment=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    labels = torch.cat([b["label"] for _ in range(10) for b in loader])[:, 0]
    share = float((labels == 1).float().mean())  # positives drawn half the time by design
    base = dm.split_summary()["train"]
    assert base["positives"]["effusion"] / base["images"] <= 0.25 and share > 0.35


@pytest.mark.parametrize(
    "key, value",
    [
        ("cache", "ram"),
        ("fit_mode", "stretch"),
        ("on_bad_file", "ignore"),
        ("uncertain", "maybe"),
        ("predict_split", "val"),
        ("cache_dtype", "float16"),
    ],
)
def test_bad_choices_name_the_key_and_the_allowed_values(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"data\.{key}=.*is not one of"):
        XrayDataModule("labels.csv", **{key: value})


def test_numbers_are_validated() -> None:
    with pytest.raises(ConfigError, match="leaves no training"):
        XrayDataModule("labels.csv", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match=r"data\.batch_size"):
        XrayDataModule("labels.csv", batch_size=0)
    with pytest.raises(ConfigError, match=r"data\.fold"):
        XrayDataModule("labels.csv", fold=1)


def test_hparams_and_summary_are_safe_to_save(manifest: Path, tmp_path: Path) -> None:
    dm = _module(manifest, tmp_path)
    dm.setup("fit")
    saved = tmp_path / "hparams.pt"
    torch.save({"hparams": dict(dm.hparams), "summary": dm.split_summary()}, saved)
    loaded = torch.load(saved, weights_only=True)
    assert loaded["hparams"]["image_size"] == SIZE
    text = json.dumps(loaded["summary"])
    assert "PID-" not in text


def test_inferred_labels_are_saved_as_the_model_gets_them(manifest: Path, tmp_path: Path) -> None:
    """Lightning refuses to log a model and datamodule whose ``labels`` hparams differ."""
    dm = _module(manifest, tmp_path, labels=None)
    assert dm.hparams["labels"] is None
    assert dm.labels == ["abnormal", "effusion"]  # what the CLI links into model.labels
    assert dm.hparams["labels"] == ["abnormal", "effusion"]
    assert dm.hparams_initial["labels"] == ["abnormal", "effusion"]  # what Lightning logs
    assert dm.hparams["image_size"] == SIZE  # the other values are kept


class _TinyModel(L.LightningModule):
    """Counts what reaches the model; no learning needed to test the data path."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(SIZE * SIZE, 2)
        self.seen: list[str] = []

    def training_step(self, batch, batch_idx):
        assert "skipped" not in batch
        self.seen += batch["path"]
        return self.layer(batch["image"].flatten(1)).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_fit_sets_epochs_and_records_bad_files(tmp_path: Path) -> None:
    manifest = _write_dataset(tmp_path / "data", bad=(4,))
    dm = _module(manifest, tmp_path, cache="none", val_fraction=0.0, test_fraction=0.0)
    model = _TinyModel()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    per_epoch = len(model.seen) // 2
    assert model.seen[:per_epoch] != model.seen[per_epoch:]  # a new order each epoch
    bad = str(manifest.parent / "img" / "p02_0.png")
    assert [b.path for b in dm.skipped] == [bad]  # found mid-epoch, recorded once
    assert bad not in model.seen
    assert per_epoch >= 2 * N_PATIENTS - 4  # drop_last loses at most one partial batch


def test_summary_counts_patients_not_ids(manifest: Path, tmp_path: Path) -> None:
    dm = _module(manifest, tmp_path)
    summary = dm.split_summary()
    assert sum(part["patients"] for part in summary.values()) == N_PATIENTS
    assert sum(part["images"] for part in summary.values()) == 2 * N_PATIENTS
    assert not math.isnan(dm.pos_weight().sum().item())
