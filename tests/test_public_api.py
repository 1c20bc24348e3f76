"""The public API re-exported from ``medft``: every name resolves, and importing is cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

import medft


def test_every_public_name_resolves_to_its_home() -> None:
    from medft.data.datamodule import XrayDataModule
    from medft.data.dicom import read_xray
    from medft.data.manifest import load_manifest
    from medft.data.synth import synthesize
    from medft.eval.evaluate import evaluate
    from medft.inference import Predictor
    from medft.model.module import XrayClassifier
    from medft.workflows.cv import run
    from medft.workflows.export import export
    from medft.workflows.predict import predict

    homes = {
        "Predictor": Predictor,
        "predict": predict,
        "export": export,
        "evaluate": evaluate,
        "run_cv": run,
        "read_xray": read_xray,
        "load_manifest": load_manifest,
        "synthesize": synthesize,
        "XrayDataModule": XrayDataModule,
        "XrayClassifier": XrayClassifier,
    }
    for name, obj in homes.items():
        assert name in medft.__all__
        assert getattr(medft, name) is obj
    for name in medft.__all__:  # errors and __version__ too
        assert getattr(medft, name) is not None
    assert set(homes) <= set(dir(medft))


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        medft.no_such_thing  # noqa: B018
    assert not hasattr(medft, "run")  # cv's run is public only as run_cv


def test_import_medft_does_not_import_torch() -> None:
    code = (
        "import sys, medft\n"
        "heavy = [m for m in ('torch', 'timm', 'lightning', 'monai') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "medft.read_xray\n"
        "assert 'torch' not in sys.modules\n"
        "medft.Predictor\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
