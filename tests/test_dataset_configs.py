"""Every dataset config in configs/ reaches its first training step (tiny stand-ins).

Each config runs as written except for what a CPU test must change: a manifest of tiny
synthetic DICOMs with the config's label columns (and a ``split`` column where the config
takes the split from the manifest, as the importers write it), a tiny timm backbone whose
"pretrained" weights come from a local file (random weights, so nothing is downloaded),
64 px, fp32 and one batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    from medft.data.synth import synthesize

    out = tmp_path_factory.mktemp("configs-data")
    labels = synthesize(out, 30, size=64, seed=3, workers=1).labels_csv
    table = pd.read_csv(labels)[["path", "patient_id"]]
    table["path"] = [str(out / p) for p in table["path"]]  # the manifests live elsewhere
    return table


@pytest.fixture(scope="module")
def stand_in_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local "pretrained" file for test_resnet (random weights, ImageNet-shaped head)."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "test_resnet.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(path))
    return path


def _manifest(images: pd.DataFrame, data: dict, out: Path) -> Path:
    rng = np.random.default_rng(0)
    table = images.copy()
    for label in data.get("labels") or ["effusion"]:
        table[label] = (np.arange(len(table)) + rng.integers(0, 2)) % 2  # both classes everywhere
    if "val_fraction" not in data:  # the config takes the split from the manifest
        table["split"] = np.array(["train", "train", "train", "val", "test"])[
            np.arange(len(table)) % 5
        ]
    table.to_csv(out, index=False)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_reaches_its_first_training_step(
    config: Path, images: pd.DataFrame, stand_in_weights: Path, tmp_path: Path
) -> None:
    from medft.lightning_cli import run_lightning

    recipe = yaml.safe_load(config.read_text())
    manifest = _manifest(images, recipe["data"], tmp_path / "manifest.csv")
    args = [
        "--config", str(config),
        "--data.manifest", str(manifest),
        "--data.image_size", "64",
        "--data.batch_size", "4",
        "--data.num_workers", "0",
        "--data.cache", "memory",
        "--model.backbone", "test_resnet",
        "--model.pretrained", "true",
        "--model.pretrained_file", str(stand_in_weights),
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.precision", "32-true",
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "1",
        "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    cli = run_lightning("fit", args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1
    assert cli.model.hparams.freeze == recipe["model"].get("freeze", cli.model.hparams.freeze)
