"""One file, one answer: every path after training gives the same probabilities.

Two tiny models, one trained (as far as the checkpoint says) on a ``uint8`` cache with
``pad`` and one on ``uint16`` with ``crop``, score the same files (synthetic DICOMs, a
MONOCHROME1 DX, a JPEG 2000 and an RLE file from the corpus, and a 16-bit PNG) through:
the training datamodule's eval path, ``medft predict``, ``medft evaluate``, ``medft
explain``, the demo's service and the ONNX export. All agree to 1e-5 (1e-4 for ONNX).
Before the Predictor, ``explain`` and the demo rounded every input to 8 bits and
``evaluate`` used uint8 whatever the checkpoint was trained on, so the uint16 model failed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medft.cli import main
from medft.data.datamodule import XrayDataModule
from medft.data.synth import synthesize
from medft.demo.service import InferenceService
from medft.explain.batch import explain_inputs
from medft.inference import Predictor
from medft.model.module import XrayClassifier

SIZE = 48
LABELS = ["abnormal"]
CORPUS_FILES = ("dx_mono1_u8_explvr.dcm", "mr_s16_j2k_lossless.dcm", "mr_s16_rle.dcm")
SETTINGS = {"uint8": "pad", "uint16": "crop"}


def _checkpoint(path: Path, cache_dtype: str, fit_mode: str, seed: int) -> Path:
    """A random-weight model with a strong head (so 8 vs 16 bits shows) saved as medft does."""
    torch.manual_seed(seed)
    model = XrayClassifier(backbone="test_efficientnet", labels=LABELS, pretrained=False)
    head = model.model.get_classifier()
    torch.nn.init.normal_(head.weight, std=3.0)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "medft": {
                "labels": LABELS,
                "task": "binary",
                "image_size": SIZE,
                "fit_mode": fit_mode,
                "cache_dtype": cache_dtype,
                "operating_points": {"abnormal": {"threshold": 0.5, "method": "youden"}},
                "operating_point_method": "youden",
                "temperature": 1.7,
            },
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Path:
    """A folder of inputs and a labelled manifest (``labels.csv``) naming them all."""
    root = tmp_path_factory.mktemp("parity")
    synth = synthesize(root / "synth", 2, images_per_patient=1, size=80, seed=5, workers=1)
    images = root / "inputs"
    images.mkdir()
    paths = []
    for i, source in enumerate(sorted((root / "synth").rglob("*.dcm"))):
        paths.append(shutil.copy(source, images / f"synth_{i}.dcm"))
    for name in CORPUS_FILES:
        paths.append(shutil.copy(corpus_dir / "dicom" / name, images / name))
    gradient = (np.linspace(0, 65535, 70 * 90).reshape(70, 90)).astype(np.uint16)
    png = images / "grey16.png"
    Image.fromarray(gradient).save(png)
    paths.append(png)
    assert synth.labels_csv.is_file()
    pd.DataFrame(
        {
            "path": [str(Path(p).resolve()) for p in paths],
            "patient_id": [f"P{i}" for i in range(len(paths))],
            "abnormal": [i % 2 for i in range(len(paths))],
        }
    ).to_csv(root / "labels.csv", index=False)
    return root


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def model(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    dtype = request.param
    path = tmp_path_factory.mktemp(f"ckpt_{dtype}") / "model.ckpt"
    return dtype, _checkpoint(path, dtype, SETTINGS[dtype], seed=len(dtype))


def _reference(checkpoint: Path, manifest: Path) -> pd.Series:
    """Probabilities through the training datamodule's eval path (cache dtype, fit mode)."""
    meta = torch.load(checkpoint, map_location="cpu", weights_only=True)["medft"]
    datamodule = XrayDataModule(
        manifest=str(manifest),
        labels=LABELS,
        image_size=SIZE,
        fit_mode=meta["fit_mode"],
        cache_dtype=meta["cache_dtype"],
        batch_size=4,
        num_workers=0,
        cache="memory",
        predict_split="all",
        audit=False,
    )
    datamodule.setup("predict")
    predictor = Predictor.from_checkpoint(checkpoint)
    out = {}
    table = pd.read_csv(manifest)
    for batch in datamodule.predict_dataloader():
        raw, _ = predictor.probabilities_from_logits(
            torch.stack([predictor.model(batch["image"]).float()])[:, None]
        )
        for path, p in zip(batch["path"], raw[:, 0], strict=True):
            out[str(path)] = float(p)
    assert len(out) == len(table)
    return pd.Series(out)


def test_every_path_gives_the_same_probability(files: Path, model, tmp_path: Path) -> None:
    dtype, checkpoint = model
    manifest = files / "labels.csv"
    reference = _reference(checkpoint, manifest)

    # medft predict (folder input, unlabelled)
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(files / "inputs"),
                 "--out", str(tmp_path / "predict"), "--quiet"]) == 0  # fmt: skip
    predicted = pd.read_csv(tmp_path / "predict" / "predictions.csv")
    predicted["path"] = [str(Path(p).resolve()) for p in predicted["path"]]
    predicted = predicted.set_index("path")
    assert len(predicted) == len(reference)
    np.testing.assert_allclose(
        predicted.loc[reference.index, "prob_abnormal"], reference, atol=1e-5
    )

    # medft evaluate (labelled manifest)
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--input", str(manifest),
                 "--out", str(tmp_path / "evaluate"), "--n-boot", "10"]) == 0  # fmt: skip
    evaluated = pd.read_csv(tmp_path / "evaluate" / "predictions.csv").set_index("path")
    np.testing.assert_allclose(
        evaluated.loc[reference.index, "prob_abnormal"], reference, atol=1e-5
    )

    # medft explain (saliency's own forward pass)
    index = explain_inputs(checkpoint, files / "inputs", tmp_path / "explain")
    ok = index[index["status"] == "ok"].copy()
    ok["input"] = [str(Path(p).resolve()) for p in ok["input"]]
    explained = ok.set_index("input")["probability"]
    assert len(explained) == len(reference)
    np.testing.assert_allclose(explained.loc[reference.index], reference, atol=1e-5)

    # the demo's service (bytes in, as an upload)
    service = InferenceService.from_checkpoint(checkpoint)
    for path, expected in reference.items():
        case = service.analyse_file(path)
        assert case.findings[0].probability == pytest.approx(expected, abs=1e-5), path
        assert case.findings[0].positive == bool(predicted.loc[path, "call_abnormal"])

    # the power of the test: 8-bit inputs (what explain and the demo used to build) give
    # answers that differ by more than the tolerance for the uint16 model
    if dtype == "uint16":
        member = Predictor.from_checkpoint(checkpoint).members[0]
        member.meta = {**member.meta, "cache_dtype": "uint8"}
        as_uint8 = Predictor([member])
        diffs = [
            abs(as_uint8.probabilities(as_uint8.load(path)[0][None])[0][0, 0] - expected)
            for path, expected in reference.items()
        ]
        assert max(diffs) > 1e-4, "8-bit and 16-bit inputs should differ for this model"


@pytest.mark.parametrize("dtype", sorted(SETTINGS))
def test_onnx_export_matches_the_predictor(files: Path, tmp_path: Path, dtype: str) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    checkpoint = _checkpoint(tmp_path / "model.ckpt", dtype, SETTINGS[dtype], seed=1)
    folder = tmp_path / "exported"  # --out is a folder (the .pt test below names the file)
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx",
                 "--out", str(folder)]) == 0  # fmt: skip
    out = folder / "model.onnx"
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.onnx.json"]
    side = json.loads(out.with_name("model.onnx.json").read_text())
    assert side["input"]["dtype"] == dtype and side["labels"] == LABELS
    assert side["preprocessing"]["fit_mode"] == SETTINGS[dtype]

    predictor = Predictor.from_checkpoint(checkpoint)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for path in sorted((files / "inputs").iterdir()):
        image, data = predictor.load(path)
        compact = np.asarray(data["image"])[None]  # the cached form: (1, 1, S, S) integers
        assert compact.dtype == np.dtype(dtype)
        got = session.run(None, {"image": compact})[0]
        expected = predictor.probabilities(image[None])[1]
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_torchscript_export_matches_the_predictor(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "model.ckpt", "uint16", "pad", seed=2)
    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript",
                 "--out", str(out)]) == 0  # fmt: skip
    loaded = torch.jit.load(str(out))
    predictor = Predictor.from_checkpoint(checkpoint)
    pixels = torch.randint(0, 65536, (3, 1, SIZE, SIZE), dtype=torch.int32).to(torch.uint16)
    with torch.inference_mode():
        got = loaded(pixels).numpy()
    expected = predictor.probabilities(pixels.to(torch.float32) / 65535.0)[1]
    np.testing.assert_allclose(got, expected, atol=1e-5)
