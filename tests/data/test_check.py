"""medft data check: every file read in parallel, every failure reported, never a crash."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from medft.data.check import CheckReport, check_manifest
from medft.data.manifest import load_manifest
from medft.errors import ConfigError, DicomReadError

# A few valid files of the test corpus (small CR/DX) and its adversarial files.
VALID = [
    "cr_mono1_u16s12_explvr_rescale_16x16.dcm",
    "dx_mono1_u8_explvr.dcm",
    "cr_mono2_u16s10_jpeg_extended.dcm",
]
ALWAYS_BROKEN = [
    "zero_bytes.dcm",
    "text_file.dcm",
    "random_bytes.dcm",
    "png_renamed.dcm",
    "preamble_only.dcm",
    "truncated_header.dcm",
    "truncated_pixeldata_native.dcm",
    "truncated_pixeldata_encapsulated.dcm",
    "no_pixeldata.dcm",
    "huge_dims_declared.dcm",
    "x.dcm",
]


# ---------------------------------------------------------------- fake readers
# Module-level so worker processes can unpickle them.


def scripted_read(path: str) -> tuple[np.ndarray, SimpleNamespace]:
    """Behave as the file's text says: ``ok MOD PHOTO TS BITS``, ``bad``, ``boom``, ``crash``."""
    words = Path(path).read_text().split()
    if words[0] == "bad":
        raise DicomReadError(f"{path}: not a DICOM file (no 'DICM' marker)")
    if words[0] == "boom":
        raise ValueError("index out of range in decoder")
    if words[0] == "crash":
        os._exit(3)
    modality, photometric, syntax, bits = words[1:5]
    meta = SimpleNamespace(
        modality=modality, photometric=photometric, transfer_syntax=syntax, bits_stored=int(bits)
    )
    return np.zeros((4, 4), np.float32), meta


def pydicom_read(path: str) -> tuple[np.ndarray, SimpleNamespace]:
    """A bare pydicom decode (stand-in for the medft reader); errors escape untyped."""
    import pydicom

    ds = pydicom.dcmread(path)
    if int(ds.Rows) * int(ds.Columns) > 4096 * 4096:
        raise DicomReadError(f"{path}: {ds.Rows}x{ds.Columns} is too large")
    pixels = ds.pixel_array
    meta = SimpleNamespace(
        modality=ds.get("Modality"),
        photometric=ds.get("PhotometricInterpretation"),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        bits_stored=ds.get("BitsStored"),
    )
    return pixels.astype(np.float32), meta


# ---------------------------------------------------------------------- helpers


def scripted_manifest(tmp_path: Path, scripts: list[str], patients: list[str]) -> Path:
    rows = []
    for i, (script, patient) in enumerate(zip(scripts, patients, strict=True)):
        name = f"f{i:04d}.dcm"
        (tmp_path / name).write_text(script)
        rows.append((name, patient, float(i % 3 == 0)))
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["path", "patient_id", "abnormal"]).to_csv(csv, index=False)
    return csv


def corpus_manifest(tmp_path: Path, corpus_dir: Path) -> tuple[Path, list[str]]:
    """Copy valid and corrupt corpus files into tmp_path, list them and one missing file."""
    names = []
    for name in VALID:
        shutil.copy(corpus_dir / "dicom" / name, tmp_path / name)
        names.append(name)
    for source in sorted((corpus_dir / "corrupt").iterdir()):
        if source.is_dir():
            (tmp_path / source.name).mkdir()
        else:
            shutil.copy(source, tmp_path / source.name)
        names.append(source.name)
    names.append("never_written.dcm")
    csv = tmp_path / "labels.csv"
    pd.DataFrame(
        {
            "path": names,
            "patient_id": [f"PAT-{i // 2:03d}" for i in range(len(names))],
            "abnormal": [i % 2 for i in range(len(names))],
        }
    ).to_csv(csv, index=False)
    return csv, names


# ------------------------------------------------------------------------ tests


def test_mixed_corpus_lists_every_bad_file(tmp_path: Path, corpus_dir: Path) -> None:
    csv, names = corpus_manifest(tmp_path, corpus_dir)
    report = check_manifest(csv, workers=2, read_fn=pydicom_read)

    assert report.n_files == len(names)
    failed = {Path(path).name: reason for path, reason in report.failures}
    assert report.n_ok + len(failed) == report.n_files
    for name in VALID:
        assert name not in failed
    for name in [*ALWAYS_BROKEN, "never_written.dcm"]:
        assert name in failed
        assert failed[name].strip()
    assert failed["never_written.dcm"] == "file not found"
    assert failed["x.dcm"] == "not a regular file"
    assert failed["zero_bytes.dcm"].startswith("unexpected: ")  # pydicom's own error type
    assert not report.ok
    assert report.modality["CR"] >= 2 and report.modality["DX"] == 1
    assert report.n_patients == (len(names) + 1) // 2
    assert "PAT-" not in json.dumps(report.to_dict())  # counts only, never patient IDs
    assert "PAT-" not in report.format()


def test_workers_give_the_same_report(tmp_path: Path, corpus_dir: Path) -> None:
    csv, _ = corpus_manifest(tmp_path, corpus_dir)
    one = check_manifest(csv, workers=1, read_fn=pydicom_read)
    two = check_manifest(csv, workers=2, read_fn=pydicom_read)
    assert one == two
    assert one.failures == two.failures  # same order too
    assert (one.workers, two.workers) == (1, 2)


def test_real_reader_on_the_corpus(tmp_path: Path, corpus_dir: Path) -> None:
    pytest.importorskip("medft.data.dicom")
    csv, names = corpus_manifest(tmp_path, corpus_dir)

    report = check_manifest(csv, workers=2)

    reasons = {Path(path).name: reason for path, reason in report.failures}
    # load_image sniffs content: png_renamed.dcm is a real PNG and reads as one.
    assert set(ALWAYS_BROKEN) - {"png_renamed.dcm"} <= set(reasons)
    assert not set(VALID) & set(reasons)
    assert reasons["never_written.dcm"] == "file not found"
    for name, reason in reasons.items():
        assert not reason.startswith(("unexpected", str(tmp_path))), (name, reason)
    assert report.n_ok == len(names) - len(reasons)
    assert report.transfer_syntax.get("PNG") == 1


def test_counts_balance_and_patients(tmp_path: Path) -> None:
    scripts = (
        ["ok CR MONOCHROME1 1.2.840.10008.1.2.1 12"] * 5
        + ["ok DX MONOCHROME2 1.2.840.10008.1.2.4.90 16"] * 3
        + ["bad", "boom"]
    )
    patients = ["a", "a", "a", "b", "b", "c", "d", "e", "f", "f"]
    csv = scripted_manifest(tmp_path, scripts, patients)
    report = check_manifest(csv, workers=1, read_fn=scripted_read)

    assert (report.n_files, report.n_ok) == (10, 8)
    assert report.modality == {"CR": 5, "DX": 3}
    assert report.photometric == {"MONOCHROME1": 5, "MONOCHROME2": 3}
    assert report.transfer_syntax == {"1.2.840.10008.1.2.1": 5, "1.2.840.10008.1.2.4.90": 3}
    assert report.bits_stored == {"12": 5, "16": 3}
    assert report.n_patients == 6
    assert report.images_per_patient == {"min": 1, "median": 1.5, "max": 3}
    assert report.label_balance == {
        "abnormal": {"positive": 4, "negative": 6, "unknown": 0, "uncertain": 0}
    }
    assert report.task == "binary"
    reasons = dict((Path(p).name, r) for p, r in report.failures)
    assert reasons["f0008.dcm"] == "not a DICOM file (no 'DICM' marker)"  # path prefix dropped
    assert reasons["f0009.dcm"] == "unexpected: ValueError: index out of range in decoder"


def test_ok_report_and_renderings(tmp_path: Path) -> None:
    csv = scripted_manifest(
        tmp_path, ["ok CR MONOCHROME1 1.2.840.10008.1.2.1 12"] * 4, list("aabb")
    )
    report = check_manifest(csv, workers=2, read_fn=scripted_read)
    assert report.ok
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["failures"] == [] and data["n_patients"] == 2
    text = report.format()
    assert "OK: all 4 files readable" in text
    assert "abnormal" in text and "positive" in text
    assert "modality         CR: 4" in text


def test_failures_are_rendered_and_capped(tmp_path: Path) -> None:
    csv = scripted_manifest(tmp_path, ["bad"] * 6, list("abcdef"))
    report = check_manifest(csv, workers=1, read_fn=scripted_read)
    text = report.format(max_failures=2)
    assert "FAILED: 6 of 6 files unreadable" in text
    assert "f0000.dcm: not a DICOM file" in text
    assert "... and 4 more (see --json)" in text
    assert len(report.to_dict()["failures"]) == 6


def test_a_crashing_worker_only_costs_its_file(tmp_path: Path) -> None:
    scripts = ["ok CR MONOCHROME2 1.2.840.10008.1.2.1 12"] * 30
    scripts[17] = "crash"
    csv = scripted_manifest(tmp_path, scripts, [f"p{i}" for i in range(30)])
    report = check_manifest(csv, workers=2, read_fn=scripted_read)
    assert report.n_ok == 29
    assert [(Path(p).name, r) for p, r in report.failures] == [
        ("f0017.dcm", "unexpected: the reader process crashed on this file")
    ]


def test_accepts_a_loaded_manifest_and_a_folder(tmp_path: Path) -> None:
    for klass in ("normal", "pneumonia"):
        (tmp_path / klass).mkdir()
        (tmp_path / klass / "x.dcm").write_text("ok DX MONOCHROME2 1.2.840.10008.1.2.1 16")
    with pytest.warns(UserWarning):
        manifest = load_manifest(tmp_path)
    report = check_manifest(manifest, workers=1, read_fn=scripted_read)
    assert report.ok and report.task == "multiclass"
    assert report.label_balance["normal"]["positive"] == 1


def test_unpicklable_reader_needs_one_worker(tmp_path: Path) -> None:
    csv = scripted_manifest(tmp_path, ["ok CR MONOCHROME1 1.2.840.10008.1.2.1 12"] * 2, ["a", "b"])
    with pytest.raises(ConfigError, match="module-level function"):
        check_manifest(csv, workers=2, read_fn=lambda p: scripted_read(p))
    report = check_manifest(csv, workers=1, read_fn=lambda p: scripted_read(p))
    assert isinstance(report, CheckReport) and report.ok
