"""Predictor over a manifest: training's transforms, calls at the stored threshold, bad files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medft.data.manifest import load_manifest
from medft.data.synth import synthesize
from medft.data.transforms import build_transforms
from medft.errors import ConfigError, DicomReadError
from medft.eval.calibration import apply_temperature
from medft.eval.predict import predict_manifest
from medft.inference import Predictor, skipped_table
from medft.model.module import XrayClassifier

IMAGE_SIZE = 64
THRESHOLD = 0.48
TEMPERATURE = 2.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six patients, two 64-px images each."""
    root = tmp_path_factory.mktemp("predict_data")
    return synthesize(root, 6, images_per_patient=2, size=64, seed=3, workers=1).labels_csv


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight test_resnet saved the way Lightning saves medft checkpoints."""
    torch.manual_seed(0)
    model = XrayClassifier(backbone="test_resnet", labels=["abnormal"], pretrained=False)
    path = tmp_path_factory.mktemp("predict_ckpt") / "model.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "medft": {
                "labels": ["abnormal"],
                "task": "binary",
                "image_size": IMAGE_SIZE,
                "fit_mode": "pad",
                "operating_points": {"abnormal": {"threshold": THRESHOLD}},
                "temperature": TEMPERATURE,
            },
        },
        path,
    )
    return path


def test_probabilities_match_a_direct_forward_pass(dataset: Path, checkpoint: Path) -> None:
    predictor = Predictor.from_checkpoint(checkpoint)
    manifest = load_manifest(dataset, labels=["abnormal"])
    result = predict_manifest(predictor, manifest, batch_size=5)
    table = result.table
    assert len(table) + len(result.skipped) == len(manifest.table)
    assert len(table) >= 10

    prefix, to_float = build_transforms(image_size=IMAGE_SIZE, fit_mode="pad", train=False)
    images = torch.stack(
        [torch.as_tensor(to_float(prefix({"image": p}))["image"]) for p in table["path"]]
    )
    with torch.inference_mode():
        expected = predictor.model(images).sigmoid().numpy()[:, 0]
    np.testing.assert_allclose(table["prob_abnormal"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(table["call_abnormal"], (expected >= THRESHOLD).astype(int))
    assert result.thresholds == {"abnormal": THRESHOLD}
    assert result.logits.shape == (len(table), 1)


def test_table_names_patients_by_salted_key_only(dataset: Path, checkpoint: Path) -> None:
    manifest = load_manifest(dataset, labels=["abnormal"])
    table = predict_manifest(Predictor.from_checkpoint(checkpoint), manifest).table
    assert list(table.columns[:3]) == ["path", "patient_key", "abnormal"]
    assert "patient_id" not in table.columns
    raw_ids = set(manifest.table["patient_id"])
    assert not raw_ids & set(table["patient_key"])
    assert table["patient_key"].str.fullmatch(r"[0-9a-f]{16}").all()
    # one key per patient
    assert table["patient_key"].nunique() == manifest.table["patient_id"].nunique()

    with_ids = predict_manifest(
        Predictor.from_checkpoint(checkpoint), manifest, include_patient_id=True
    )
    assert set(with_ids.table["patient_id"]) <= raw_ids


def test_true_labels_are_carried(dataset: Path, checkpoint: Path) -> None:
    manifest = load_manifest(dataset, labels=["abnormal"])
    table = predict_manifest(Predictor.from_checkpoint(checkpoint), manifest).table
    truth = manifest.table.set_index("path")["abnormal"]
    np.testing.assert_array_equal(table["abnormal"], truth.loc[table["path"]].to_numpy())


def test_calibrate_rescales_probabilities_but_keeps_the_calls(
    dataset: Path, checkpoint: Path
) -> None:
    classifier = Predictor.from_checkpoint(checkpoint)
    manifest = load_manifest(dataset, labels=["abnormal"])
    raw = predict_manifest(classifier, manifest)
    scaled = predict_manifest(classifier, manifest, calibrate=True)
    assert scaled.temperature == TEMPERATURE
    expected = apply_temperature(raw.logits, TEMPERATURE)[:, 0]
    np.testing.assert_allclose(scaled.table["prob_abnormal"], expected, rtol=1e-9)
    np.testing.assert_array_equal(scaled.table["call_abnormal"], raw.table["call_abnormal"])
    assert scaled.thresholds["abnormal"] != pytest.approx(THRESHOLD)


def test_calibrated_thresholds_call_the_same_images(checkpoint: Path) -> None:
    predictor = Predictor.from_checkpoint(checkpoint)
    rng = np.random.default_rng(0)
    p = rng.random((500, 1))
    scaled = apply_temperature(p, TEMPERATURE, kind="probs")
    assert predictor.raw_thresholds == {"abnormal": THRESHOLD}
    assert predictor.thresholds["abnormal"] != pytest.approx(THRESHOLD)
    np.testing.assert_array_equal(
        predictor.call(p, calibrated=False), predictor.call(scaled, calibrated=True)
    )
    given = Predictor.from_checkpoint(checkpoint, thresholds={"abnormal": 1.0})
    assert given.raw_thresholds == {"abnormal": 1.0} and given.threshold_source == "given"


def test_calibrate_without_stored_temperature_is_refused(dataset: Path, checkpoint: Path) -> None:
    predictor = Predictor.from_checkpoint(checkpoint)
    predictor.temperatures = [None]
    manifest = load_manifest(dataset, labels=["abnormal"])
    with pytest.raises(ConfigError, match="no temperature"):
        predict_manifest(predictor, manifest, calibrate=True)


def test_metadata_and_manifest_columns_for_subgroups(dataset: Path, checkpoint: Path) -> None:
    manifest = load_manifest(dataset, labels=["abnormal"])
    table = predict_manifest(
        Predictor.from_checkpoint(checkpoint),
        manifest,
        extra_columns=["view", "view_position", "manufacturer", "patient_sex"],
    ).table
    truth = manifest.table.set_index("path")
    np.testing.assert_array_equal(table["view"], truth.loc[table["path"], "view"].to_numpy())
    # the DICOM header's View Position is what synth wrote into the manifest's view column
    np.testing.assert_array_equal(table["view_position"], table["view"])
    assert table["manufacturer"].notna().all()
    with pytest.raises(ConfigError, match="neither manifest columns nor DICOM metadata"):
        predict_manifest(
            Predictor.from_checkpoint(checkpoint), manifest, extra_columns=["patient_hash"]
        )


def test_manifest_without_the_checkpoints_finding_is_refused(
    dataset: Path, checkpoint: Path
) -> None:
    manifest = load_manifest(dataset, labels=["nodule"])
    with pytest.raises(ConfigError, match="abnormal"):
        predict_manifest(Predictor.from_checkpoint(checkpoint), manifest)


def _with_bad_files(dataset: Path, tmp_path: Path) -> Path:
    """A copy of the manifest with one truncated file and one missing file."""
    table = pd.read_csv(dataset)
    root = dataset.parent
    truncated = tmp_path / "truncated.dcm"
    source = root / table.loc[0, "path"]
    truncated.write_bytes(source.read_bytes()[:600])
    copied = tmp_path / "images"
    shutil.copytree(root / "images", copied)
    table["path"] = [str(copied.parent / p) for p in table["path"]]
    extra = table.iloc[[0, 1]].copy()
    extra["path"] = [str(truncated), str(tmp_path / "missing.dcm")]
    out = tmp_path / "labels.csv"
    pd.concat([table, extra]).to_csv(out, index=False)
    return out


def test_bad_files_are_skipped_with_reasons(
    dataset: Path, checkpoint: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(_with_bad_files(dataset, tmp_path), check_files=False)
    result = predict_manifest(Predictor.from_checkpoint(checkpoint), manifest, batch_size=4)
    skipped = {Path(s.path).name: s.reason for s in result.skipped}
    assert {"truncated.dcm", "missing.dcm"} <= set(skipped)
    assert all(reason and not reason.startswith("/") for reason in skipped.values())
    assert len(result.table) + len(result.skipped) == len(manifest.table)
    assert not set(result.table["path"]) & {s.path for s in result.skipped}
    csv = skipped_table(result.skipped)
    assert list(csv.columns) == ["path", "reason"] and len(csv) == len(result.skipped)


def test_bad_file_policy_fail_names_the_file(
    dataset: Path, checkpoint: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(_with_bad_files(dataset, tmp_path), check_files=False)
    with pytest.raises(DicomReadError, match=r"(truncated|missing|\.dcm)"):
        predict_manifest(Predictor.from_checkpoint(checkpoint), manifest, on_bad_file="fail")
