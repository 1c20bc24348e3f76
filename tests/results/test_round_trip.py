"""The whole way: synthetic DICOMs → a trained checkpoint → SR + captures → Orthanc → back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medft.results import (
    FindingResult,
    ModelInfo,
    read_sr,
    render_capture,
    send_results,
    write_results,
    write_results_index,
)

pytestmark = pytest.mark.slow


def _model_results(checkpoint: Path, paths: list[Path]):
    """Per image: findings (probability, stored threshold, call) and one overlay per finding."""
    from medft.data.dicom import load_image
    from medft.explain import DisplayNorm, default_preprocess, explain, render_overlay
    from medft.model.checkpoint import load_classifier

    loaded = load_classifier(checkpoint)
    preprocess = default_preprocess(loaded.model, mode=loaded.fit_mode, size=loaded.image_size)
    out = []
    for path in paths:
        image, _ = load_image(path)
        maps = explain(loaded.model, preprocess(image), labels=loaded.labels, method="gradcam")
        norm = DisplayNorm.shared(maps)
        findings = [
            FindingResult(
                m.finding,
                float(m.probability),
                loaded.thresholds[m.finding],
                bool(m.probability >= loaded.thresholds[m.finding]),
                calibrated=False,
            )
            for m in maps
        ]
        overlays = {m.finding: render_overlay(image, m, normalization=norm) for m in maps}
        out.append((findings, overlays))
    return out


def test_trained_model_results_round_trip_through_orthanc(tiny_checkpoint, tmp_path, empty_orthanc):
    from dicomweb_client.api import DICOMwebClient

    from medft.data.synth import synthesize

    synthesize(tmp_path / "synth", 3, size=64, seed=21, patient_info=True, workers=1)
    paths = sorted((tmp_path / "synth").rglob("*.dcm"))
    png = tmp_path / "synth" / "plain.png"
    from PIL import Image

    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(png)
    model = ModelInfo.from_checkpoint(tiny_checkpoint)
    assert model.name == "test_efficientnet" and len(model.checkpoint_sha256) == 64

    out = tmp_path / "dicom-out"
    computed = _model_results(tiny_checkpoint, paths)
    written = [
        write_results(
            path, findings, model, out, name=f"{i:04d}_x", overlays=overlays, method="gradcam"
        )
        for i, (path, (findings, overlays)) in enumerate(zip(paths, computed, strict=True))
    ]
    written.append(write_results(png, computed[0][0], model, out, name="9999_x"))
    write_results_index(out, written)
    assert [r.status for r in written] == ["written"] * 3 + ["skipped"]

    if shutil.which("dsrdump"):
        for result in written[:3]:
            run = subprocess.run(
                ["dsrdump", str(out / result.sr)], capture_output=True, text=True, timeout=60
            )
            assert run.returncode == 0 and not run.stderr.strip(), run.stderr

    report = send_results(out, empty_orthanc.dicomweb_url)
    n_files = sum(1 + len(r.captures) for r in written[:3])
    assert report.ok and report.stored == n_files

    client = DICOMwebClient(url=empty_orthanc.dicomweb_url)
    for path, (findings, overlays) in zip(paths, computed, strict=True):
        source = pydicom.dcmread(path, stop_before_pixels=True)
        hits = client.search_for_instances(
            study_instance_uid=source.StudyInstanceUID, search_filters={"Modality": "SR"}
        )
        assert len(hits) == 1
        hit = pydicom.Dataset.from_json(hits[0])
        sr = client.retrieve_instance(
            source.StudyInstanceUID, hit.SeriesInstanceUID, hit.SOPInstanceUID
        )
        assert sr.PatientID == source.PatientID and sr.StudyInstanceUID == source.StudyInstanceUID
        back = read_sr(sr)
        assert [(f.finding, f.probability, f.threshold, f.positive) for f in back] == [
            (f.finding, f.probability, f.threshold, f.positive) for f in findings
        ]
        assert all(f.referenced_sop_instance_uids == (source.SOPInstanceUID,) for f in back)
        assert any(model.checkpoint_sha256 in p for p in back[0].algorithm_parameters)

        captures = client.search_for_instances(
            study_instance_uid=source.StudyInstanceUID, search_filters={"Modality": "OT"}
        )
        assert len(captures) == len(overlays)
        for item in captures:
            hit = pydicom.Dataset.from_json(item)
            sc = client.retrieve_instance(
                source.StudyInstanceUID, hit.SeriesInstanceUID, hit.SOPInstanceUID
            )
            finding = sc.DerivationDescription.split("'")[1]
            overlay = overlays[finding]
            layout = render_capture(overlay, [])
            enlarged = np.repeat(np.repeat(overlay, layout.scale, 0), layout.scale, 1)
            area = sc.pixel_array[layout.top : layout.top + enlarged.shape[0], : enlarged.shape[1]]
            np.testing.assert_array_equal(area, enlarged)


def test_predict_dicom_out_then_medft_send_round_trip(tiny_checkpoint, tmp_path, empty_orthanc):
    """The commands a user types: predict --dicom-out, send, then the PACS has predictions.csv."""
    import pandas as pd
    from dicomweb_client.api import DICOMwebClient

    from medft.cli import main
    from medft.data.synth import synthesize

    synthesize(tmp_path / "synth", 3, size=64, seed=41, patient_info=True, workers=1)
    out, dicom = tmp_path / "preds", tmp_path / "preds" / "dicom"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(tiny_checkpoint),
                "--input",
                str(tmp_path / "synth" / "images"),
                "--out",
                str(out),
                "--dicom-out",
                str(dicom),
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["send", str(dicom), "--to", empty_orthanc.dimse_url]) == 0
    predictions = pd.read_csv(out / "predictions.csv")
    labels = [c.removeprefix("probcal_") for c in predictions.columns if c.startswith("probcal_")]
    client = DICOMwebClient(url=empty_orthanc.dicomweb_url)
    hits = client.search_for_instances(search_filters={"Modality": "SR"})
    assert len(hits) == len(predictions) == 3
    for item in hits:
        hit = pydicom.Dataset.from_json(item)
        sr = client.retrieve_instance(
            hit.StudyInstanceUID, hit.SeriesInstanceUID, hit.SOPInstanceUID
        )
        back = read_sr(sr)
        uid = back[0].referenced_sop_instance_uids[0]
        path = next(
            p
            for p in predictions["path"]
            if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == uid
        )
        row = predictions[predictions["path"] == path].iloc[0]
        assert [f.finding for f in back] == labels
        assert [f.probability for f in back] == pytest.approx(
            [row[f"probcal_{label}"] for label in labels], abs=1e-12
        )
        assert [f.positive for f in back] == [bool(row[f"call_{label}"]) for label in labels]
