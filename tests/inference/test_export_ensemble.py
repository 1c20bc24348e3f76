"""An ensemble, or a ``medft cv`` study, is exported as one graph with the Predictor's answer.

The graph holds every member with its own normalisation and temperature and returns the
mean of their calibrated probabilities: what ``Predictor.probabilities(...)[1]`` returns
for the ensemble (and not what any member alone returns). The sidecar names the members
and keeps the ensemble's thresholds (for a study, the out-of-fold ones).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medft.cli import main
from medft.errors import ConfigError
from medft.eval.ensemble import study_predictor
from medft.inference import Predictor
from medft.inference.export import export_predictor
from medft.inference.predictor import checkpoint_sha256
from medft.model.module import XrayClassifier
from medft.workflows.export import export
from tests.inference.test_parity import SIZE, _checkpoint


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two small checkpoints with the same settings and different weights."""
    root = tmp_path_factory.mktemp("ensemble")
    return [_checkpoint(root / f"m{seed}.ckpt", "uint16", "pad", seed=seed) for seed in (3, 4)]


def _pixels(n: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 65536, (n, 1, SIZE, SIZE), generator=generator).to(torch.uint16)


def _expected(predictor: Predictor, pixels: torch.Tensor) -> np.ndarray:
    return predictor.probabilities(pixels.to(torch.float32) / 65535.0)[1]


def _run(path: Path, fmt: str, pixels: torch.Tensor) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": pixels.numpy()})[0]
    loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        return loaded(pixels).numpy()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_two_checkpoints_export_as_one_averaging_graph(
    members: list[Path], tmp_path: Path, fmt: str
) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    folder = tmp_path / "exported"
    argv = ["export", "--checkpoint", str(members[0]), "--checkpoint", str(members[1]),
            "--format", fmt, "--out", str(folder)]  # fmt: skip
    assert main(argv) == 0
    path = folder / ("model.onnx" if fmt == "onnx" else "model.pt")

    pixels = _pixels()
    got = _run(path, fmt, pixels)
    ensemble = Predictor.from_checkpoints(members)
    expected = _expected(ensemble, pixels)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    for member in members:  # it averages: no member alone gives the graph's numbers
        alone = _expected(Predictor.from_checkpoint(member), pixels)
        assert np.max(np.abs(alone - got)) > 1e-3, member
    np.testing.assert_allclose(
        got,
        np.mean([_expected(Predictor.from_checkpoint(m), pixels) for m in members], axis=0),
        atol=1e-4,
    )

    side = json.loads(path.with_name(path.name + ".json").read_text())
    assert [m["sha256"] for m in side["members"]] == [checkpoint_sha256(m) for m in members]
    assert [m["backbone"] for m in side["members"]] == ["test_efficientnet"] * 2
    assert [m["temperature"] for m in side["members"]] == [1.7, 1.7]
    assert side["checkpoint"] is None and side["temperature"] is None
    assert side["thresholds"] == pytest.approx(ensemble.thresholds)
    assert side["threshold_source"] == ensemble.threshold_source
    assert side["output"]["meaning"].startswith("mean of the 2 members'")


def test_one_checkpoint_still_lists_itself_as_the_only_member(
    members: list[Path], tmp_path: Path
) -> None:
    result = export(members[0], out=tmp_path / "model.pt", format="torchscript")
    side = json.loads(result.sidecar_path.read_text())
    assert side["checkpoint"]["sha256"] == checkpoint_sha256(members[0])
    assert side["members"] == [side["checkpoint"]] and side["temperature"] == 1.7
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4


@pytest.mark.parametrize(
    ("other", "field"), [(("uint8", "pad", SIZE), "uint8"), (("uint16", "pad", 64), "64")]
)
def test_members_with_different_inputs_are_refused(
    members: list[Path], tmp_path: Path, other: tuple[str, str, int], field: str
) -> None:
    dtype, fit, size = other
    odd = _checkpoint(tmp_path / "odd.ckpt", dtype, fit, seed=5)
    if size != SIZE:
        saved = torch.load(odd, weights_only=True)
        saved["medft"]["image_size"] = size
        torch.save(saved, odd)
    with pytest.raises(ConfigError, match="share preprocessing") as caught:
        export([members[0], odd], out=tmp_path / "out", format="torchscript")
    assert "\n" not in str(caught.value) and field in str(caught.value)

    # the exporter refuses too when handed members that disagree
    predictor = Predictor.from_checkpoints(members)
    predictor.members[1].meta = {**predictor.members[1].meta, "cache_dtype": "uint8"}
    with pytest.raises(ConfigError, match="one graph only when its members share") as caught:
        export_predictor(predictor, tmp_path / "x.pt", format="torchscript")
    assert "\n" not in str(caught.value)


def test_the_model_comes_from_checkpoints_or_a_study(members: list[Path], tmp_path: Path):
    with pytest.raises(ConfigError, match="not both"):
        export([members[0]], study=tmp_path, out=tmp_path / "a")
    with pytest.raises(ConfigError, match="give a model"):
        export(out=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert main(["export", "--out", str(tmp_path / "c")]) == 2


@pytest.mark.slow
def test_a_study_exports_with_its_out_of_fold_threshold(tiny_study: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    study = tiny_study
    folder = tmp_path / "exported"
    assert main(["export", "--study", str(study), "--out", str(folder)]) == 0
    side = json.loads((folder / "model.onnx.json").read_text())
    predictor = study_predictor(study)
    assert len(predictor.members) == 2 and len(side["members"]) == 2
    assert side["thresholds"] == pytest.approx(predictor.thresholds)
    assert side["threshold_source"] == predictor.threshold_source
    assert side["threshold_source"].startswith("study out-of-fold")
    assert (side["input"]["dtype"], side["preprocessing"]["fit_mode"]) == ("uint16", "crop")
    pixels = torch.randint(0, 65536, (3, 1, 48, 48), dtype=torch.int32).to(torch.uint16)
    got = _run(folder / "model.onnx", "onnx", pixels)
    np.testing.assert_allclose(got, _expected(predictor, pixels), atol=1e-4)


def _multiclass_checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    labels = ["a", "b", "c"]
    model = XrayClassifier(
        backbone="test_efficientnet",
        labels=labels,
        task="multiclass",
        loss="ce",
        pretrained=False,
    )
    torch.nn.init.normal_(model.model.get_classifier().weight, std=3.0)
    meta = {"labels": labels, "task": "multiclass", "image_size": SIZE, "fit_mode": "pad"}
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "medft": {**meta, "cache_dtype": "uint8"},
        },
        path,
    )
    return path


def test_a_multiclass_ensemble_averages_the_softmax_outputs(tmp_path: Path) -> None:
    members = [_multiclass_checkpoint(tmp_path / f"m{s}.ckpt", s) for s in (1, 2)]
    result = export(members, out=tmp_path / "model.pt", format="torchscript")
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    pixels = torch.randint(0, 256, (4, 1, SIZE, SIZE), dtype=torch.int32).to(torch.uint8)
    with torch.inference_mode():
        got = torch.jit.load(str(result.model_path))(pixels).numpy()
    inputs = pixels.to(torch.float32) / 255.0
    expected = Predictor.from_checkpoints(members).probabilities(inputs)[1]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    alone = Predictor.from_checkpoint(members[0]).probabilities(inputs)[1]
    assert np.max(np.abs(alone - got)) > 1e-3
