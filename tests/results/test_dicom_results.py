"""DICOM results written next to the source image: the SR, the capture, PNG notes, no PHI leaks."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config as pydicom_config

from medft.errors import ConfigError, DicomReadError
from medft.results import (
    RESEARCH_BANNER,
    FindingResult,
    ModelInfo,
    read_sr,
    render_capture,
    write_capture,
    write_results,
    write_results_index,
    write_sr,
)
from medft.results.capture import BANNER_RGB, MIN_WIDTH
from medft.results.writer import NOT_DICOM_NOTE

MODEL = ModelInfo(name="test_efficientnet", version="0.1.0", checkpoint_sha256="ab12" * 16)
FINDINGS = [
    FindingResult("abnormal", 0.8125, 0.43, True),
    FindingResult("nodule", 0.0625, 0.5, False, threshold_source="default", calibrated=False),
]


@pytest.fixture(scope="module")
def named_dicoms(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Synthetic DICOMs with fake names, birth dates and accession numbers."""
    from medft.data.synth import synthesize

    root = tmp_path_factory.mktemp("named")
    synthesize(root, 3, size=64, seed=3, patient_info=True, workers=1)
    return sorted(root.rglob("*.dcm"))


def strict_read(path: Path) -> pydicom.Dataset:
    """Read with pydicom's validation raising on every invalid value, and touch every value."""
    old = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
    try:
        ds = pydicom.dcmread(path)
        ds.walk(lambda dataset, element: element.value)
        return ds
    finally:
        pydicom_config.settings.reading_validation_mode = old


def overlay_for(path: Path) -> np.ndarray:
    """A recognisable RGB pattern on the source's grid."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    rows, cols = int(ds.Rows), int(ds.Columns)
    yy, xx = np.mgrid[0:rows, 0:cols]
    return np.stack([xx * 255 // cols, yy * 255 // rows, (xx + yy) % 256], axis=-1).astype(np.uint8)


def test_sr_names_findings_model_and_source(named_dicoms, tmp_path):
    src = named_dicoms[0]
    out = write_sr(src, FINDINGS, MODEL, tmp_path / "sr.dcm")
    ds, source = strict_read(out), pydicom.dcmread(src, stop_before_pixels=True)
    assert ds.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    # filed next to the image: patient and study copied, a new series
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "StudyInstanceUID",
        "AccessionNumber",
        "StudyDate",
    ):
        assert ds[keyword].value == source[keyword].value, keyword
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.SeriesDescription.startswith(RESEARCH_BANNER)
    assert (ds.VerificationFlag, ds.PreliminaryFlag) == ("UNVERIFIED", "PRELIMINARY")
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    found = read_sr(out)
    assert [f.finding for f in found] == ["abnormal", "nodule"]
    assert [f.probability for f in found] == [0.8125, 0.0625]
    assert [f.threshold for f in found] == [0.43, 0.5]
    assert [f.positive for f in found] == [True, False]
    assert [f.calibrated for f in found] == [True, False]
    assert all(f.referenced_sop_instance_uids == (source.SOPInstanceUID,) for f in found)
    assert f"checkpoint sha256 {MODEL.checkpoint_sha256}" in found[0].algorithm_parameters
    assert "probability calibrated no" in found[1].algorithm_parameters
    assert "threshold source default" in found[1].algorithm_parameters

    # the model is the observer device: its serial number is the checkpoint hash
    values: list[str] = []
    ds.walk(lambda _ds, element: values.append(str(element.value)) if element.VR != "SQ" else None)
    assert MODEL.checkpoint_sha256 in values and MODEL.device_uid in values


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk's dsrdump not installed")
def test_sr_passes_dsrdump(named_dicoms, tmp_path):
    out = write_sr(named_dicoms[1], FINDINGS, MODEL, tmp_path / "sr.dcm")
    run = subprocess.run(["dsrdump", str(out)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "E:" not in run.stderr and "W:" not in run.stderr, run.stderr
    assert '"Calibrated probability")="0.8125"' in run.stdout
    assert '"Probability (not calibrated)")="0.0625"' in run.stdout
    assert '(52101004,SCT,"Present")' in run.stdout and '(272519000,SCT,"Absent")' in run.stdout


def test_sr_uid_is_stable_for_same_content_and_new_for_new_content(named_dicoms, tmp_path):
    src = named_dicoms[0]
    first = strict_read(write_sr(src, FINDINGS, MODEL, tmp_path / "a.dcm"))
    again = strict_read(write_sr(src, FINDINGS, MODEL, tmp_path / "b.dcm"))
    changed = [FindingResult("abnormal", 0.5, 0.43, True), FINDINGS[1]]
    other = strict_read(write_sr(src, changed, MODEL, tmp_path / "c.dcm"))
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert other.SOPInstanceUID != first.SOPInstanceUID
    assert other.SeriesInstanceUID == first.SeriesInstanceUID  # one series per model and study


def test_capture_shows_overlay_under_a_research_banner(named_dicoms, tmp_path):
    src = named_dicoms[0]
    overlay = overlay_for(src)
    out = write_capture(
        src, overlay, FINDINGS, MODEL, tmp_path / "sc.dcm", finding="nodule", method="gradcam"
    )
    ds, source = strict_read(out), pydicom.dcmread(src, stop_before_pixels=True)
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert ds.PhotometricInterpretation == "RGB" and ds.BurnedInAnnotation == "YES"
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.PatientName == source.PatientName
    assert ds.SeriesInstanceUID not in (source.SeriesInstanceUID,)
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert RESEARCH_BANNER in ds.ImageComments

    expected = render_capture(overlay, ["x"])
    scale = expected.scale
    assert scale * overlay.shape[1] >= MIN_WIDTH
    pixels = ds.pixel_array
    enlarged = np.repeat(np.repeat(overlay, scale, axis=0), scale, axis=1)
    top = expected.top
    np.testing.assert_array_equal(
        pixels[top : top + enlarged.shape[0], : enlarged.shape[1]], enlarged
    )
    banner = pixels[:top]
    red = np.all(banner == BANNER_RGB, axis=-1).mean()
    white = np.all(banner == (255, 255, 255), axis=-1).mean()
    assert red > 0.5 and white > 0.02  # a red band with text burned into it
    footer = pixels[top + enlarged.shape[0] :]
    assert footer.shape[0] > 0 and (footer > 200).any()  # the caption lines


def test_capture_refuses_a_gray_overlay(named_dicoms, tmp_path):
    with pytest.raises(ConfigError, match="uint8 RGB"):
        write_capture(
            named_dicoms[0], np.zeros((64, 64), np.float32), FINDINGS, MODEL, tmp_path / "sc.dcm"
        )
    assert not (tmp_path / "sc.dcm").exists()


def test_png_input_gets_a_note_and_no_dicom(tmp_path):
    from PIL import Image

    png = tmp_path / "case.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(png)
    result = write_results(
        png,
        FINDINGS,
        MODEL,
        tmp_path / "out",
        name="0000_abcdef",
        overlays={"abnormal": np.zeros((32, 32, 3), np.uint8)},
    )
    assert (result.status, result.note, result.sr, result.captures) == (
        "skipped",
        NOT_DICOM_NOTE,
        "",
        [],
    )
    assert not list((tmp_path / "out").glob("*.dcm")) if (tmp_path / "out").exists() else True


def test_dicom_without_uids_is_refused_by_name(named_dicoms, tmp_path):
    broken = tmp_path / "no-uid.dcm"
    ds = pydicom.dcmread(named_dicoms[0])
    del ds.StudyInstanceUID
    ds.save_as(broken)
    with pytest.raises(DicomReadError, match=r"no-uid\.dcm.*StudyInstanceUID"):
        write_sr(broken, FINDINGS, MODEL, tmp_path / "sr.dcm")
    result = write_results(broken, FINDINGS, MODEL, tmp_path / "out", name="0001_abcdef")
    assert result.status == "error" and "StudyInstanceUID" in result.note


def test_finding_result_checks_its_values():
    with pytest.raises(ConfigError, match="not in"):
        FindingResult("abnormal", 1.5, 0.5, True)
    with pytest.raises(ConfigError, match="repeat"):
        write_sr(Path("unused.dcm"), [FINDINGS[0], FINDINGS[0]], MODEL, Path("unused_sr.dcm"))


def test_no_patient_data_outside_the_dicom_files(named_dicoms, tmp_path, caplog):
    """Names, IDs, birth dates and accession numbers reach the DICOM outputs only."""
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "dicom-out"
    results = [
        write_results(
            path,
            FINDINGS,
            MODEL,
            out,
            name=f"{i:04d}_abcdef",
            overlays={"abnormal": overlay_for(path)},
            method="gradcam",
        )
        for i, path in enumerate(named_dicoms)
    ]
    write_results_index(out, results)
    assert all(r.status == "written" and len(r.captures) == 1 for r in results)
    secrets = set()
    for path in named_dicoms:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        secrets |= {
            str(ds.PatientName),
            ds.PatientID,
            ds.PatientBirthDate,
            ds.AccessionNumber,
            str(ds.PatientName).split("^")[0],
            ds.StudyInstanceUID,
        }
    written = sorted(p for p in out.rglob("*") if p.is_file())
    assert {p.suffix for p in written} == {".dcm", ".csv"}
    # the DICOM outputs carry the patient (that is how they file next to the image) ...
    assert str(pydicom.dcmread(out / results[0].sr).PatientName) in secrets
    # ... nothing else does: not the index, not file names, not the log
    for path in written:
        text = path.name + (path.read_text(encoding="utf-8") if path.suffix != ".dcm" else "")
        leaked = [s for s in secrets if s and s in text]
        assert not leaked, f"{path.name} holds {leaked}"
    assert not [s for s in secrets if s and s in caplog.text]


def test_model_info_from_predictor_info_names_one_model_or_an_ensemble(named_dicoms, tmp_path):
    one = ModelInfo.from_predictor_info(
        {"checkpoints": [{"backbone": "resnet18", "sha256": "aa" * 32}]}
    )
    assert (one.name, one.checkpoint_sha256, one.members) == ("resnet18", "aa" * 32, ())
    two = ModelInfo.from_predictor_info(
        {
            "checkpoints": [
                {"backbone": "resnet18", "sha256": "aa" * 32},
                {"backbone": "resnet18", "sha256": "bb" * 32},
            ]
        }
    )
    assert two.name == "ensemble of 2 (resnet18)" and two.members == ("aa" * 32, "bb" * 32)
    assert len(two.checkpoint_sha256) == 64 and two.device_uid != one.device_uid
    found = read_sr(write_sr(named_dicoms[0], FINDINGS, two, tmp_path / "sr.dcm"))
    assert f"member checkpoint sha256 {'bb' * 32}" in found[0].algorithm_parameters
    with pytest.raises(ConfigError, match="SHA-256"):
        ModelInfo.from_predictor_info({"checkpoints": [{"backbone": "resnet18"}]})


def test_non_ascii_patient_names_keep_their_character_set(named_dicoms, tmp_path):
    ds = pydicom.dcmread(named_dicoms[0])
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jürgen"
    source = tmp_path / "utf8.dcm"
    ds.save_as(source)
    sr = strict_read(write_sr(source, FINDINGS, MODEL, tmp_path / "sr.dcm"))
    sc = strict_read(
        write_capture(source, overlay_for(source), FINDINGS, MODEL, tmp_path / "sc.dcm")
    )
    for written in (sr, sc):
        assert written.SpecificCharacterSet == "ISO_IR 192"
        assert str(written.PatientName) == "Müller^Jürgen"
