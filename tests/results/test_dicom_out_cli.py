"""`medft predict|explain --dicom-out`: what the commands computed, as DICOM files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from medft.cli import main
from medft.inference import Predictor
from medft.results import read_sr, render_capture
from medft.results.writer import NOT_DICOM_NOTE


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic DICOMs with fake patient data, and one PNG."""
    from medft.data.synth import synthesize

    root = tmp_path_factory.mktemp("mixed")
    synthesize(root / "synth", 3, size=64, seed=31, patient_info=True, workers=1)
    folder = root / "inputs"
    folder.mkdir()
    for i, path in enumerate(sorted((root / "synth").rglob("*.dcm"))):
        (folder / f"case{i}.dcm").write_bytes(path.read_bytes())
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(folder / "photo.png")
    return folder


def _secrets(folder: Path) -> set[str]:
    found = set()
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found |= {str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber}
    return found


def test_predict_dicom_out_writes_srs_equal_to_predictions_csv(
    tiny_checkpoint, mixed_inputs, tmp_path, capsys
):
    out, dicom = tmp_path / "pred", tmp_path / "dicom"
    code = main(
        [
            "predict",
            "--checkpoint",
            str(tiny_checkpoint),
            "--input",
            str(mixed_inputs),
            "--out",
            str(out),
            "--dicom-out",
            str(dicom),
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "DICOM results (RESEARCH USE ONLY): 3 files for 3 of 4 inputs" in printed
    assert "1 PNG/JPEG inputs" in printed

    predictions = pd.read_csv(out / "predictions.csv")
    index = pd.read_csv(dicom / "dicom_results.csv", keep_default_na=False)
    assert sorted(index["status"]) == ["skipped", "written", "written", "written"]
    assert index.loc[index["status"] == "skipped", "note"].item() == NOT_DICOM_NOTE
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    for row in index[index["status"] == "written"].itertuples():
        expected = predictions[predictions["path"] == row.input].iloc[0]
        source = pydicom.dcmread(row.input, stop_before_pixels=True)
        found = read_sr(dicom / row.sr)
        assert [f.finding for f in found] == predictor.labels
        for f in found:
            assert f.probability == pytest.approx(expected[f"probcal_{f.finding}"], abs=1e-12)
            assert f.positive == bool(expected[f"call_{f.finding}"])
            assert f.threshold == pytest.approx(predictor.threshold_for(f.finding))
            assert f.referenced_sop_instance_uids == (source.SOPInstanceUID,)
    # the CSVs medft writes hold no patient data; the SR does (that is how it files)
    secrets = _secrets(mixed_inputs)
    for csv in (out / "predictions.csv", dicom / "dicom_results.csv"):
        text = csv.read_text()
        assert not [s for s in secrets if s and s in text], csv.name
    assert pydicom.dcmread(dicom / index.loc[1, "sr"]).PatientName


def test_explain_dicom_out_writes_srs_and_captures_of_the_overlays(
    tiny_checkpoint, mixed_inputs, tmp_path, capsys
):
    out, dicom = tmp_path / "explain", tmp_path / "dicom"
    code = main(
        [
            "explain",
            "--checkpoint",
            str(tiny_checkpoint),
            "--input",
            str(mixed_inputs),
            "--out",
            str(out),
            "--dicom-out",
            str(dicom),
            "--quiet",
        ]
    )
    assert code == 0
    assert "for 3 of 4 inputs" in capsys.readouterr().out
    explained = pd.read_csv(out / "index.csv")
    index = pd.read_csv(dicom / "dicom_results.csv", keep_default_na=False)
    written = index[index["status"] == "written"]
    assert len(written) == 3 and (index["status"] == "skipped").sum() == 1
    for row in written.itertuples():
        rows = explained[explained["id"] == row.id]
        found = read_sr(dicom / row.sr)
        assert [
            (f.finding, f.probability, f.threshold, f.positive, f.calibrated) for f in found
        ] == [
            (r.finding, r.probability, r.threshold, r.call == "positive", False)
            for r in rows.itertuples()
        ]
        captures = row.captures.split(";")
        assert len(captures) == len(rows)
        for capture, overlay_path in zip(captures, rows["overlay"], strict=True):
            overlay = np.asarray(Image.open(out / overlay_path).convert("RGB"))
            layout = render_capture(overlay, [])
            pixels = pydicom.dcmread(dicom / capture).pixel_array
            enlarged = np.repeat(np.repeat(overlay, layout.scale, 0), layout.scale, 1)
            np.testing.assert_array_equal(
                pixels[layout.top : layout.top + enlarged.shape[0], : enlarged.shape[1]], enlarged
            )
