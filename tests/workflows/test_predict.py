"""`medft predict`: unlabelled inputs, bad files, ensembles, studies, old checkpoints, leakage."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medft.cli import main
from medft.inference import Predictor
from medft.workflows.predict import predict


@pytest.fixture(scope="module")
def unlabelled(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 10 DICOMs (no labels, no patients) plus a truncated and a non-DICOM file."""
    folder = tmp_path_factory.mktemp("unlabelled")
    for i, source in enumerate(sorted(tiny_dataset.parent.rglob("*.dcm"))[:10]):
        shutil.copy(source, folder / f"{i:02d}.dcm")
    first = sorted(folder.iterdir())[0]
    (folder / "truncated.dcm").write_bytes(first.read_bytes()[:700])
    (folder / "notes.png").write_text("this is not a PNG")
    return folder


def test_unlabelled_folder_with_two_corrupt_files(
    tiny_checkpoint: Path, unlabelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "preds"
    code = main(["predict", "--checkpoint", str(tiny_checkpoint), "--input", str(unlabelled),
                 "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    table = pd.read_csv(out / "predictions.csv")
    skipped = pd.read_csv(out / "skipped_files.csv")
    assert len(table) == 10 and len(skipped) == 2
    assert {Path(p).name for p in skipped["path"]} == {"truncated.dcm", "notes.png"}
    assert skipped["reason"].str.len().min() > 10
    labels = Predictor.from_checkpoint(tiny_checkpoint).labels
    for label in labels:
        for prefix in ("prob_", "probcal_", "call_", "threshold_"):
            assert f"{prefix}{label}" in table.columns
        called = (table[f"prob_{label}"] >= table[f"threshold_{label}"]).astype(int)
        np.testing.assert_array_equal(table[f"call_{label}"], called)
    assert table["threshold_source"].str.startswith("validation").all()
    assert "patient_key" not in table.columns  # a folder names no patients
    record = json.loads((out / "run.json").read_text())
    assert record["images"] == {"predicted": 10, "skipped": 2}
    assert len(record["model"]["checkpoints"][0]["sha256"]) == 64
    assert torch.__version__.startswith(record["model"]["checkpoints"][0]["software"]["torch"])
    assert record["model"]["preprocessing"]["cache_dtype"] == "uint8"
    assert "predict" in record["command"]
    assert "10 image(s) predicted" in capsys.readouterr().out


def test_evaluating_on_the_training_manifest_warns_with_the_overlap(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--input",
                 str(tiny_dataset), "--out", str(out), "--n-boot", "10"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    seen = metrics["seen_patients"]
    manifest = pd.read_csv(tiny_dataset)
    summary = torch.load(tiny_checkpoint, weights_only=True)["medft"]["data_summary"]
    assert seen["patients"] == manifest["patient_id"].nunique()
    assert seen["train"] == summary["train"]["patients"]
    assert seen["val"] == summary["val"]["patients"]
    assert seen["any"] == seen["train"] + seen["val"] < seen["patients"]  # test part unseen
    text = f"{seen['any']} of the {seen['patients']} patients"
    assert any(text in w for w in metrics["warnings"])
    assert text in capsys.readouterr().out
    assert text in (out / "report.html").read_text()

    # predict on a manifest says the same in run.json; held-out patients alone do not warn
    run = predict(tiny_dataset, tmp_path / "pred", checkpoints=[tiny_checkpoint], quiet=True)
    assert run.record["seen_patients"]["any"] == seen["any"]
    held_out = manifest[~manifest["patient_id"].isin(_seen_ids(tiny_checkpoint, manifest))]
    csv = tmp_path / "held_out.csv"
    held_out.assign(path=[str(tiny_dataset.parent / p) for p in held_out["path"]]).to_csv(
        csv, index=False
    )
    clean = predict(csv, tmp_path / "clean", checkpoints=[tiny_checkpoint], quiet=True)
    assert clean.record["seen_patients"]["any"] == 0
    assert clean.record["seen_patients"]["warning"] is None


def _seen_ids(checkpoint: Path, manifest: pd.DataFrame) -> set[str]:
    predictor = Predictor.from_checkpoint(checkpoint)
    ids = sorted(manifest["patient_id"].astype(str).unique())
    record = predictor.seen_patients()[0]
    return {pid for pid, hit in zip(ids, record.contains(ids), strict=True) if hit}


def test_checkpoint_without_new_fields_loads_with_one_warning(
    tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = torch.load(tiny_checkpoint, weights_only=True)
    for key in ("cache_dtype", "seen_patients", "software"):
        old["medft"].pop(key)
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    with caplog.at_level(logging.WARNING, logger="medft.inference"):
        predictor = Predictor.from_checkpoint(path)
    assert predictor.cache_dtype == "uint8" and predictor.missing_fields == ["cache_dtype"]
    warnings = [r for r in caplog.records if "predates" in r.getMessage()]
    assert len(warnings) == 1 and "cache_dtype=uint8" in warnings[0].getMessage()
    assert predictor.seen_overlap(["P1"]) is None


def test_ensemble_averages_calibrated_probabilities(
    tiny_checkpoint: Path, unlabelled: Path, tmp_path: Path
) -> None:
    other = torch.load(tiny_checkpoint, weights_only=True)
    torch.manual_seed(1)
    for name, tensor in other["state_dict"].items():
        if tensor.is_floating_point() and "classifier" in name:
            other["state_dict"][name] = tensor + 0.5 * torch.randn_like(tensor)
    other["medft"]["temperature"] = 2.5
    second = tmp_path / "second.ckpt"
    torch.save(other, second)
    inputs = sorted(unlabelled.glob("0*.dcm"))[:4]
    singles = [
        predict(inputs, tmp_path / f"s{i}", checkpoints=[c], quiet=True).predictions.table
        for i, c in enumerate((tiny_checkpoint, second))
    ]
    both = predict(inputs, tmp_path / "e", checkpoints=[tiny_checkpoint, second], quiet=True)
    label = both.predictions.labels[0]
    expected = (singles[0][f"probcal_{label}"] + singles[1][f"probcal_{label}"]) / 2
    np.testing.assert_allclose(both.predictions.table[f"probcal_{label}"], expected, atol=1e-9)
    assert "mean of the members" in both.predictions.threshold_source
    assert len(both.record["model"]["checkpoints"]) == 2


def test_tta_averages_views_and_keeps_identity_first(tiny_checkpoint: Path) -> None:
    plain = Predictor.from_checkpoint(tiny_checkpoint)
    tta = Predictor.from_checkpoint(tiny_checkpoint, tta=True)
    images = torch.rand(3, 1, plain.image_size, plain.image_size)
    logits = tta.logits(images)
    assert logits.shape[:3] == (1, 5, 3)
    np.testing.assert_allclose(logits[0, 0].numpy(), plain.logits(images)[0, 0].numpy(), atol=1e-6)
    raw, _ = tta.probabilities(images)
    np.testing.assert_allclose(raw, logits[0].sigmoid().mean(dim=0).numpy(), atol=1e-6)
    assert not np.allclose(raw, plain.probabilities(images)[0], atol=1e-7)
    assert "hflip" not in tta.tta_views()


def test_model_sources_are_exclusive(tiny_checkpoint: Path, unlabelled: Path, tmp_path: Path):
    code = main(["predict", "--input", str(unlabelled), "--out", str(tmp_path / "x")])
    assert code == 2
    code = main(["predict", "--checkpoint", str(tiny_checkpoint), "--study", str(tmp_path),
                 "--input", str(unlabelled), "--out", str(tmp_path / "y")])  # fmt: skip
    assert code == 2


@pytest.mark.slow
def test_study_ensemble_with_out_of_fold_threshold(
    tiny_study: Path, tmp_path: Path, unlabelled: Path
) -> None:
    study = tiny_study
    out = tmp_path / "ens"
    assert main(["predict", "--study", str(study), "--input", str(unlabelled),
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 10
    assert table["threshold_source"].iloc[0].startswith("study out-of-fold")
    record = json.loads((out / "run.json").read_text())
    assert len(record["model"]["checkpoints"]) == 2

    # cv's held-out predictions are the Predictor's: same files, same numbers (uint16, crop)
    done = json.loads((study / "fold_0" / "DONE").read_text())
    fold = Predictor.from_checkpoint(study / "fold_0" / done["best_checkpoint"])
    assert (fold.cache_dtype, fold.fit_mode) == ("uint16", "crop")
    held = pd.read_csv(study / "fold_0" / "predictions.csv")
    again = predict(held["path"].tolist(), tmp_path / "again", checkpoints=[fold.members[0].path])
    label = fold.labels[0]
    np.testing.assert_allclose(
        again.predictions.table[f"prob_{label}"], held[f"prob_{label}"], atol=1e-5
    )
