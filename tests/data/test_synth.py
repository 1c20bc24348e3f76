"""Tests for medft.data.synth: labels, determinism, DICOM variety and validity, shortcuts."""

from __future__ import annotations

import csv
import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from medft.data.synth import (
    CSV_COLUMNS,
    FINDINGS,
    MANUFACTURERS,
    SHORTCUT_MANUFACTURER,
    SHORTCUTS,
    SIZE_SHORTCUT_ASPECT,
    plan_case,
    plan_cases,
    render_case,
    synthesize,
    write_case,
)
from medft.errors import ConfigError

SMALL = dict(n_patients=10, images_per_patient=2, size=64, seed=3, prevalence=0.5)
IDENTIFYING = ("PatientName", "PatientBirthDate", "AccessionNumber", "InstitutionName", "StudyDate")


def _rows(labels_csv: Path) -> list[dict[str, str]]:
    with open(labels_csv, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _display(ds: pydicom.Dataset) -> np.ndarray:
    """A reference display chain: Modality LUT, min-max, MONOCHROME1 inverted."""
    values = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1.0))
    values += float(ds.get("RescaleIntercept", 0.0))
    values = (values - values.min()) / (values.max() - values.min())
    return 1.0 - values if ds.PhotometricInterpretation == "MONOCHROME1" else values


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):
    result = synthesize(tmp_path_factory.mktemp("synth") / "ds", workers=1, **SMALL)
    return result, _rows(result.labels_csv)


@pytest.fixture(scope="module")
def plans_400():
    """Plans (no pixels) for a mid-sized dataset: cheap header statistics."""
    return plan_cases(400, size=64, seed=11)


def test_labels_csv_columns_counts_and_values(small) -> None:
    result, rows = small
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert result.n_images == len(rows) == 20
    assert result.seconds > 0
    for row in rows:
        assert (result.root / row["path"]).is_file()
        # Folders are numbered: paths travel into splits and reports, patient IDs must not.
        assert row["path"].startswith("images/") and row["patient_id"] not in row["path"]
        flags = {name: row[name] for name in ("abnormal", *FINDINGS)}
        assert set(flags.values()) <= {"0", "1"}
        assert row["abnormal"] == str(int(any(row[f] == "1" for f in FINDINGS)))
        lesion = [row["lesion_x"], row["lesion_y"], row["lesion_r"], row["lesion_finding"]]
        if row["abnormal"] == "1":
            assert row["lesion_finding"] in FINDINGS and row[row["lesion_finding"]] == "1"
            x, y, r = (float(v) for v in lesion[:3])
            assert 0 <= x < SMALL["size"] and 0 <= y < SMALL["size"] and r > 0
        else:
            assert lesion == ["", "", "", ""]
        assert row["modality"] in {"CR", "DX"}
        assert row["manufacturer"] in MANUFACTURERS
        assert row["view"] in {"PA", "AP"}
        assert row["photometric"] in {"MONOCHROME1", "MONOCHROME2"}


@pytest.mark.parametrize("prevalence", [0.0, 0.1, 0.5, 0.83, 1.0])
def test_prevalence_is_exact_per_patient(prevalence: float) -> None:
    plans = plan_cases(120, images_per_patient=2, size=64, seed=5, prevalence=prevalence)
    per_patient = {p.patient_id: p.abnormal for p in plans}
    assert sum(per_patient.values()) == round(prevalence * 120)
    findings = Counter(p.findings[0].kind for p in plans if p.abnormal and p.image_index == 0)
    if prevalence >= 0.5:
        assert set(findings) == set(FINDINGS)


def test_images_of_a_patient_share_anatomy_and_label_but_not_pose(small) -> None:
    result, rows = small
    by_patient: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], []).append(row)
    assert len(by_patient) == SMALL["n_patients"]
    folders = {}
    for patient_id, images in by_patient.items():
        assert len(images) == SMALL["images_per_patient"]
        assert len({r["abnormal"] for r in images}) == 1
        (folder,) = {Path(r["path"]).parent for r in images}
        folders[folder] = patient_id
        for row in images:
            ds = pydicom.dcmread(result.root / row["path"], stop_before_pixels=True)
            assert ds.PatientID == patient_id
    assert len(folders) == SMALL["n_patients"]
    plans = plan_cases(3, images_per_patient=2, size=64, seed=1)
    assert plans[0].anatomy == plans[1].anatomy and plans[0].findings == plans[1].findings
    assert plans[0].pose != plans[1].pose
    assert plans[0].anatomy != plans[2].anatomy


def test_same_seed_same_bytes_any_workers_and_new_seed_differs(small, tmp_path: Path) -> None:
    result, rows = small
    again = synthesize(tmp_path / "again", workers=2, **SMALL)
    other = synthesize(tmp_path / "other", workers=1, **{**SMALL, "seed": 4})
    assert _rows(again.labels_csv) == rows
    changed = 0
    for row in rows:
        first = pydicom.dcmread(result.root / row["path"])
        second = pydicom.dcmread(again.root / row["path"])
        assert first.pixel_array.tobytes() == second.pixel_array.tobytes()
        assert (result.root / row["path"]).read_bytes() == (again.root / row["path"]).read_bytes()
        third = pydicom.dcmread(other.root / row["path"])
        changed += first.pixel_array.tobytes() != third.pixel_array.tobytes()
    assert changed == len(rows)


def test_headers_vary_like_an_archive(plans_400) -> None:
    headers = [p.header for p in plans_400]
    assert {h.photometric for h in headers} == {"MONOCHROME1", "MONOCHROME2"}
    assert {h.modality for h in headers} == {"CR", "DX"}
    assert {h.bits_stored for h in headers} == {10, 12, 14, 15, 16}
    syntaxes = Counter(h.transfer_syntax for h in headers)
    assert set(syntaxes) == {
        JPEG2000Lossless,
        RLELossless,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    }
    compressed = (syntaxes[JPEG2000Lossless] + syntaxes[RLELossless]) / len(headers)
    assert 0.3 < compressed < 0.5
    assert any(h.rescale for h in headers) and not all(h.rescale for h in headers)
    assert any(h.window for h in headers) and not all(h.window for h in headers)
    assert any(h.wide_window for h in headers)
    assert len({h.manufacturer for h in headers}) == len(MANUFACTURERS)


def _variety(plans) -> list:
    """One plan per (transfer syntax, photometric, modality) combination present."""
    picked = {}
    for plan in plans:
        key = (plan.header.transfer_syntax, plan.header.photometric, plan.header.modality)
        picked.setdefault(key, plan)
    return list(picked.values())


def test_every_kind_of_file_is_valid_dicom_and_displays_the_phantom(
    plans_400, tmp_path: Path
) -> None:
    variants = _variety(plans_400)
    assert len(variants) == 16
    for plan in variants:
        write_case(plan, tmp_path)
        ds = pydicom.dcmread(tmp_path / plan.relpath)
        header = plan.header
        assert ds.file_meta.TransferSyntaxUID == header.transfer_syntax
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
            assert uid.is_valid
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (
            16,
            header.bits_stored,
            header.bits_stored - 1,
        )
        assert ds.PixelRepresentation == 0 and ds.SamplesPerPixel == 1
        assert ds.BodyPartExamined == "CHEST" and ds.ViewPosition in {"PA", "AP"}
        assert len(ds.ImagerPixelSpacing) == 2
        assert ("PixelSpacing" in ds) == (ds.Modality == "DX")
        pixels = ds.pixel_array
        assert pixels.shape == plan.shape and pixels.dtype == np.uint16
        assert int(pixels.max()) < 2**header.bits_stored
        if header.window:
            assert float(ds.WindowWidth[0] if header.wide_window else ds.WindowWidth) > 0
        # Same anatomy on display, whichever photometric interpretation stores it.
        corr = np.corrcoef(_display(ds).ravel(), render_case(plan).ravel())[0, 1]
        assert corr > 0.999, (plan.relpath, header)


def _read_xray():
    """The project's DICOM reader, or a skip while it is not importable."""
    dicom = pytest.importorskip(
        "medft.data.dicom", reason="medft.data.dicom (read_xray) is not importable yet"
    )
    if not hasattr(dicom, "read_xray"):
        pytest.skip("medft.data.dicom has no read_xray yet")
    return dicom.read_xray


def test_every_file_reads_through_the_reader_as_the_phantom(small) -> None:
    read_xray = _read_xray()
    result, rows = small
    plans = {p.relpath: p for p in plan_cases(**SMALL)}
    for row in rows:
        image, meta = read_xray(result.root / row["path"])
        assert meta.photometric == row["photometric"] and meta.modality == row["modality"]
        corr = np.corrcoef(image.ravel(), render_case(plans[row["path"]]).ravel())[0, 1]
        assert corr > 0.999, row


def test_monochrome1_and_2_read_back_alike_through_the_reader(tmp_path: Path) -> None:
    read_xray = _read_xray()
    base = plan_case(7, 0, 0, n_patients=1, abnormal=True, size=64)
    images = {}
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        for window in (False, True):
            header = dataclasses.replace(base.header, photometric=photometric, window=window)
            plan = dataclasses.replace(
                base, header=header, patient_id=f"P{photometric[-1]}{window:d}"
            )
            write_case(plan, tmp_path)
            image, meta = read_xray(tmp_path / plan.relpath)
            assert meta.photometric == photometric
            images[photometric, window] = image
    for window in (False, True):
        mono1, mono2 = images["MONOCHROME1", window], images["MONOCHROME2", window]
        assert np.abs(mono1 - mono2).max() < 0.01
        assert np.corrcoef(mono2.ravel(), render_case(base).ravel())[0, 1] > 0.99


def test_lesion_centre_lies_where_the_finding_changes_the_image(small) -> None:
    _, rows = small
    plans = {p.relpath: p for p in plan_cases(**SMALL)}
    abnormal = [row for row in rows if row["abnormal"] == "1"]
    assert abnormal
    for row in abnormal:
        plan = plans[row["path"]]
        diff = np.abs(render_case(plan) - render_case(plan, with_findings=False))
        x, y, r = float(row["lesion_x"]), float(row["lesion_y"]), float(row["lesion_r"])
        assert diff[round(y), round(x)] > 0.25 * diff.max(), row
        rows_idx, cols_idx = np.indices(diff.shape)
        near = np.hypot(cols_idx - x, rows_idx - y) <= 1.5 * r + 2
        if len(plan.findings) == 1:
            assert diff[near].sum() > 0.6 * diff.sum(), row
    normal = next(p for p in plans.values() if not p.abnormal)
    assert np.array_equal(render_case(normal), render_case(normal, with_findings=False))


def test_findings_range_from_faint_to_obvious(plans_400) -> None:
    nodules = [f for p in plans_400 for f in p.findings if f.kind == "nodule"]
    contrasts = np.array([f.contrast for f in nodules])
    radii = np.array([f.radius for f in nodules])
    # Sizes and contrasts spread over a wide range: faint small nodules and obvious ones.
    assert contrasts.max() / contrasts.min() > 2.5
    assert radii.max() / radii.min() > 2


def test_default_metadata_does_not_depend_on_the_label() -> None:
    for patient in range(30):
        for image in range(2):
            sick = plan_case(9, patient, image, n_patients=30, abnormal=True, size=64)
            well = plan_case(9, patient, image, n_patients=30, abnormal=False, size=64)
            assert sick.header == well.header and sick.shape == well.shape
            assert sick.pose == well.pose and sick.exposure == well.exposure
            assert not sick.marker and not well.marker
            assert sick.findings and not well.findings


def _has_tell(plan, shortcut: str) -> bool:
    if shortcut == "manufacturer":
        return plan.header.manufacturer == SHORTCUT_MANUFACTURER
    if shortcut == "size":
        return plan.shape != (plan.shape[1], plan.shape[1])
    if shortcut == "photometric":
        return plan.header.photometric == "MONOCHROME1"
    return plan.marker


@pytest.mark.parametrize("shortcut", SHORTCUTS)
def test_shortcuts_are_planted_with_the_requested_strength(shortcut: str) -> None:
    plans = plan_cases(300, size=64, seed=2, shortcut=shortcut, shortcut_strength=0.9)
    sick = np.mean([_has_tell(p, shortcut) for p in plans if p.abnormal])
    well = np.mean([_has_tell(p, shortcut) for p in plans if not p.abnormal])
    assert abs(sick - 0.9) < 0.07 and abs(well - 0.1) < 0.07, (sick, well)
    neutral = plan_cases(300, size=64, seed=2, shortcut=shortcut, shortcut_strength=0.5)
    sick = np.mean([_has_tell(p, shortcut) for p in neutral if p.abnormal])
    well = np.mean([_has_tell(p, shortcut) for p in neutral if not p.abnormal])
    assert abs(sick - well) < 0.15


def test_planted_shortcuts_reach_the_files(tmp_path: Path) -> None:
    size = 64
    tall = synthesize(
        tmp_path / "size", 8, size=size, shortcut="size", shortcut_strength=1.0, workers=1
    )
    for row in _rows(tall.labels_csv):
        ds = pydicom.dcmread(tall.root / row["path"])
        expected = round(size * SIZE_SHORTCUT_ASPECT) if row["abnormal"] == "1" else size
        assert (ds.Rows, ds.Columns) == (expected, size)
        if row["abnormal"] == "1":
            assert 0 <= float(row["lesion_y"]) < expected
    marked = synthesize(
        tmp_path / "marker", 6, size=size, shortcut="marker", shortcut_strength=1.0, workers=1
    )
    for row in _rows(marked.labels_csv):
        corner = _display(pydicom.dcmread(marked.root / row["path"]))[: size // 8, -size // 8 :]
        assert ((corner > 0.99).sum() >= 9) == (row["abnormal"] == "1")
    vendor = synthesize(
        tmp_path / "vendor", 6, size=size, shortcut="manufacturer", shortcut_strength=1.0, workers=1
    )
    for row in _rows(vendor.labels_csv):
        ds = pydicom.dcmread(vendor.root / row["path"], stop_before_pixels=True)
        assert (ds.Manufacturer == SHORTCUT_MANUFACTURER) == (row["abnormal"] == "1")
        assert ds.Manufacturer == row["manufacturer"]


def test_identifying_fields_only_on_request(small, tmp_path: Path) -> None:
    result, rows = small
    for row in rows:
        ds = pydicom.dcmread(result.root / row["path"], stop_before_pixels=True)
        assert not [name for name in IDENTIFYING if name in ds]
    named = synthesize(tmp_path / "named", 2, size=64, patient_info=True, workers=1)
    for row in _rows(named.labels_csv):
        ds = pydicom.dcmread(named.root / row["path"], stop_before_pixels=True)
        assert all(ds.get(name) for name in IDENTIFYING)
        assert "SYNTHETIC" in str(ds.PatientName)


@pytest.mark.parametrize(
    "changes",
    [
        {"n_patients": 0},
        {"images_per_patient": 0},
        {"size": 16},
        {"seed": -1},
        {"prevalence": 1.5},
        {"shortcut": "hospital"},
        {"shortcut_strength": -0.1},
        {"workers": 0},
    ],
)
def test_bad_arguments_raise_config_error_naming_them(changes: dict, tmp_path: Path) -> None:
    kwargs = {"n_patients": 2, "size": 64, "workers": 1, **changes}
    with pytest.raises(ConfigError, match=next(iter(changes))):
        synthesize(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad" / "labels.csv").exists()


def test_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        synthesize(target, 1, size=64, workers=1)
