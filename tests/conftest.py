"""Shared fixtures: the read-only test corpus, tiny synthetic datasets, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


CORPUS = ROOT / "tests" / "data" / "corpus"
"""The read-only test corpus in the repository (real DICOMs, corrupt files, PneumoniaMNIST)."""


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The read-only test corpus ``tests/data/corpus`` (see its README for provenance).

    It is part of the repository, so it never skips: a missing corpus is an error here, and
    ``tests/data/test_dicom_corpus.py`` checks every file against ``corpus.csv``.
    """
    if not (CORPUS / "corpus.csv").is_file():
        raise FileNotFoundError(f"{CORPUS}: the test corpus is missing (corpus.csv not found)")
    return CORPUS


@pytest.fixture(autouse=True)
def _offline_and_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the network: make any hub download fail fast."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 synthetic patients at 64 px (labels.csv path); made once per test session."""
    from medft.data.synth import synthesize

    out = tmp_path_factory.mktemp("tiny_synth")
    return synthesize(out, 40, size=64, seed=0).labels_csv


def tiny_fit_args(manifest: Path, run_dir: Path, *extra: str) -> list[str]:
    """`medft fit` arguments for a seconds-long run: tiny timm model, random init, 64 px."""
    return [
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
        "--data.manifest",
        str(manifest),
        "--data.image_size",
        "64",
        "--data.batch_size",
        "8",
        "--data.num_workers",
        "0",
        "--model.backbone",
        "test_efficientnet",
        "--model.pretrained",
        "false",
        "--trainer.max_epochs",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.default_root_dir",
        str(run_dir),
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a 2-epoch fit on the tiny dataset (best by validation AUROC)."""
    from medft.lightning_cli import last_checkpoint_path, run_lightning

    run_dir = tmp_path_factory.mktemp("tiny_run")
    cli = run_lightning("fit", tiny_fit_args(tiny_dataset, run_dir), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return last_checkpoint_path(cli.trainer)


@pytest.fixture(scope="session")
def tiny_study(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-fold `medft cv` study of test_efficientnet (uint16, crop) on the tiny data.

    Made once per session; tests read it and write elsewhere.
    """
    import yaml

    from medft.cli import main

    root = tmp_path_factory.mktemp("tiny_study")
    base = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text(encoding="utf-8"))
    base["trainer"].update(max_epochs=1, enable_progress_bar=False, enable_model_summary=False)
    base["model"].update(backbone="test_efficientnet", pretrained=False)
    base["data"].update(
        manifest=str(tiny_dataset), image_size=48, batch_size=8, num_workers=0,
        cache_dtype="uint16", fit_mode="crop",
    )  # fmt: skip
    config = root / "cv.yaml"
    config.write_text(yaml.safe_dump(base), encoding="utf-8")
    study = root / "study"
    assert main(["cv", "--config", str(config), "--folds", "2", "--out", str(study)]) == 0
    return study


@pytest.fixture(scope="session")
def fit_args():
    """The :func:`tiny_fit_args` builder, for tests that assemble their own fit."""
    return tiny_fit_args
