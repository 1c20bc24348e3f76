"""Compact batches (uint8/uint16 converted inside the model) and the per-step cost cuts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medft.data.datamodule import XrayDataModule, default_num_workers
from medft.data.transforms import AugmentConfig, build_transforms
from medft.model.module import XrayClassifier

SIZE = 16


def _model(**kwargs) -> XrayClassifier:
    return XrayClassifier(backbone="test_resnet", pretrained=False, labels=["a"], **kwargs)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16])
@pytest.mark.parametrize("channels_last", [True, False])
def test_compact_input_matches_float_input(dtype: torch.dtype, channels_last: bool) -> None:
    model = _model(channels_last=channels_last).eval()
    top = torch.iinfo(dtype).max
    compact = torch.randint(0, top + 1, (3, 1, 20, 20), dtype=torch.int64).to(dtype)
    display = compact.double().div(top).float()
    x_compact, x_float = model.normalize(compact), model.normalize(display)
    assert x_compact.dtype == torch.float32 and x_compact.shape == (3, 3, 20, 20)
    assert torch.allclose(x_compact, x_float, atol=1e-5)
    assert x_compact.is_contiguous(memory_format=torch.channels_last) == channels_last
    with torch.no_grad():
        assert torch.allclose(model(compact), model(display), atol=1e-4)


def test_one_channel_stem_takes_compact_input() -> None:
    model = _model(in_chans=1).eval()
    compact = torch.randint(0, 256, (2, 1, 20, 20), dtype=torch.int64).to(torch.uint8)
    assert torch.allclose(
        model.normalize(compact), model.normalize(compact.float() / 255), atol=1e-5
    )


def test_compact_random_part_quantises_augmented_images() -> None:
    _, plain = build_transforms(image_size=SIZE, train=True, augment=None, compact_output=True)
    assert not plain.transforms  # nothing to do: the cached array passes through
    _, augmenting = build_transforms(
        image_size=SIZE, train=True, augment=AugmentConfig(), compact_output=True
    )
    compact = np.full((1, SIZE, SIZE), 128, dtype=np.uint8)
    out = np.asarray(augmenting({"image": compact})["image"])
    assert out.dtype == np.uint8 and out.shape == (1, SIZE, SIZE)
    _, floats = build_transforms(image_size=SIZE, train=True, augment=None)
    assert floats({"image": compact})["image"].dtype == torch.float32  # the default is unchanged


def _dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for p in range(8):
        path = root / f"{p}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 18), dtype=np.uint8)).save(path)
        rows.append([path.name, f"P{p}", p % 2])
    manifest = root / "labels.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "patient_id", "a"], *rows])
    return manifest


def test_datamodule_ships_compact_batches_only_to_models_that_take_them(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path / "data")
    options = dict(image_size=SIZE, batch_size=4, num_workers=0, val_fraction=0.25,
                   test_fraction=0.0, audit=False, cache_dir=str(tmp_path / "cache"),
                   cache_dtype="uint16", augment=False)  # fmt: skip
    plain = XrayDataModule(str(manifest), **options)
    plain.setup("fit")
    float_batch = next(iter(plain.train_dataloader()))
    assert float_batch["image"].dtype == torch.float32  # any LightningModule still gets floats

    compact = XrayDataModule(str(manifest), compact_batches=True, **options)
    compact.setup("fit")
    batch = next(iter(compact.train_dataloader()))
    assert batch["image"].dtype == torch.uint16 and batch["image"].shape == (4, 1, SIZE, SIZE)
    assert torch.allclose(batch["image"].double() / 65535, float_batch["image"].double(), atol=1e-6)

    class _Trainer:  # what the datamodule asks of the trainer it is attached to
        lightning_module = _model()
        world_size, global_rank = 1, 0

    auto = XrayDataModule(str(manifest), **options)
    auto.trainer = _Trainer()  # type: ignore[assignment]
    auto.setup("fit")
    assert next(iter(auto.train_dataloader()))["image"].dtype == torch.uint16


def test_a_copy_only_loader_runs_in_process_on_cpu() -> None:
    assert default_num_workers(cuda=False, copy_only=True) == 0
    assert default_num_workers(cuda=True, copy_only=True) >= 1


def test_fit_logs_the_loss_every_n_steps_and_per_epoch(
    tiny_dataset: Path, tmp_path: Path, fit_args
) -> None:
    from medft.lightning_cli import run_lightning

    extra = ["--model.freeze", "full", "--trainer.max_epochs", "2",
             "--trainer.log_every_n_steps", "2", "--trainer.limit_train_batches", "4",
             "--trainer.limit_val_batches", "1"]  # fmt: skip
    cli = run_lightning("fit", fit_args(tiny_dataset, tmp_path / "run", *extra), run=False)
    assert cli.datamodule._compact() is False  # not attached to a trainer yet
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    metrics_csv = next((tmp_path / "run").glob("logs/*/metrics.csv"))
    rows = list(csv.DictReader(metrics_csv.open()))
    step_losses = [r for r in rows if r.get("train/loss")]
    steps = cli.trainer.global_step
    assert steps >= 4
    # One value per two steps (the mean since the previous one), at Lightning's logging steps.
    assert [int(r["step"]) for r in step_losses] == list(range(1, steps, 2))
    epoch_losses = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert len(epoch_losses) == 2 and all(np.isfinite(epoch_losses))
    assert any(k.startswith("lr/") and r[k] for r in rows for k in r)  # lr per group, per epoch
    assert "train/loss_epoch" in cli.trainer.progress_bar_metrics


def test_batch_transfer_moves_tensors_and_leaves_paths_alone() -> None:
    model = XrayDataModule("unused.csv")
    paths = ["a.dcm", "b.dcm"]
    batch = {"image": torch.zeros(2, 1, 4, 4, dtype=torch.uint8), "label": torch.zeros(2, 1),
             "index": torch.arange(2), "path": paths}  # fmt: skip
    moved = model.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert moved["path"] is paths and set(moved) == set(batch)
    assert moved["image"].dtype == torch.uint8 and moved["index"].tolist() == [0, 1]
    assert model.transfer_batch_to_device([torch.ones(1)], torch.device("cpu"), 0)[0].item() == 1
