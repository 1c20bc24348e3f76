"""Manifest loading: CSV and folder layouts, label policy, and every validation error."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medft.data._hashing import DEFAULT_SALT, KEY_LENGTH, SALT_ENV, patient_key
from medft.data.manifest import Manifest, load_manifest
from medft.errors import ConfigError, DataError


def write_csv(folder: Path, text: str, *, name: str = "labels.csv", touch: bool = True) -> Path:
    """Write a manifest CSV and (optionally) an empty file for every relative path in it."""
    path = folder / name
    path.write_text(text, encoding="utf-8")
    if touch:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        for rel in frame.get("path", []):
            if rel and not Path(rel).is_absolute():
                target = folder / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b"x")
    return path


def test_csv_paths_labels_and_kept_columns(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "abs.dcm"
    outside.parent.mkdir()
    outside.write_bytes(b"x")
    (tmp_path / "data").mkdir()
    csv = write_csv(
        tmp_path / "data",
        "path,patient_id,effusion,nodule,age,study_id,view\n"
        "img/a.dcm,007,1,0,61,0012,PA\n"
        f"{outside},007,0,,70,0013,AP\n"
        "img/c.dcm,P2,,1,,0014,PA\n",
    )
    manifest = load_manifest(csv)

    table = manifest.table
    assert manifest.labels == ["effusion", "nodule"]
    assert manifest.task == "multilabel"
    assert manifest.source == csv
    assert table["path"].tolist() == [
        str(tmp_path / "data" / "img" / "a.dcm"),
        str(outside),
        str(tmp_path / "data" / "img" / "c.dcm"),
    ]
    assert table["patient_id"].tolist() == ["007", "007", "P2"]
    assert table["effusion"].dtype == float and table["nodule"].dtype == float
    assert table["effusion"].tolist()[:2] == [1.0, 0.0] and math.isnan(table["effusion"][2])
    assert table["study_id"].tolist() == ["0012", "0013", "0014"]  # ids keep leading zeros
    assert table["age"].tolist()[:2] == [61, 70] and math.isnan(table["age"][2])
    assert table["view"].tolist() == ["PA", "AP", "PA"]
    assert list(table.columns[:4]) == ["path", "patient_id", "effusion", "nodule"]


def test_single_label_is_binary(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,patient_id,abnormal\na.dcm,p1,1\nb.dcm,p2,0\n")
    assert load_manifest(csv).task == "binary"


def test_label_inference_skips_reserved_and_metadata_columns(tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path,
        "path,patient_id,split,fold,repeat,study_id,lesion_x,sex,empty,a,b,c\n"
        "a.dcm,p1,train,0,0,1,1,F,,1.0,True,-1\n"
        "b.dcm,p2,test,1,0,0,0,M,,0.0,False,0\n",
    )
    manifest = load_manifest(csv)
    assert manifest.labels == ["a", "b", "c"]
    assert manifest.table["b"].tolist() == [1.0, 0.0]


def test_explicit_labels_are_validated(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,patient_id,a,b\na.dcm,p1,1,0\n")
    assert load_manifest(csv, labels=["b"]).labels == ["b"]
    with pytest.raises(DataError, match=r"'nodule' not in the manifest; columns found: 'path'"):
        load_manifest(csv, labels=["nodule"])
    with pytest.raises(DataError, match="reserved column"):
        load_manifest(csv, labels=["patient_id"])


def test_missing_required_column_names_what_exists(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,subject,a\na.dcm,p1,1\n")
    with pytest.raises(DataError) as err:
        load_manifest(csv)
    message = str(err.value)
    assert "missing required column(s) 'patient_id'" in message
    assert "'path', 'subject', 'a'" in message
    renamed = load_manifest(csv, patient_column="subject")
    assert renamed.table["patient_id"].tolist() == ["p1"]
    assert "subject" not in renamed.table.columns


def test_duplicate_paths_name_both_rows(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,patient_id,a\na.dcm,p1,1\nb.dcm,p2,0\n./a.dcm,p3,0\n")
    with pytest.raises(DataError, match=r"row 3 \(line 4\), column 'path': duplicate of row 1"):
        load_manifest(csv)


@pytest.mark.parametrize("bad", ["2", "yes", "0.5", "positive"])
def test_unknown_label_value_names_row_and_column(tmp_path: Path, bad: str) -> None:
    csv = write_csv(tmp_path, f"path,patient_id,a,b\na.dcm,p1,1,0\nb.dcm,p2,0,{bad}\n")
    with pytest.raises(DataError) as err:
        load_manifest(csv, labels=["a", "b"])
    assert f"row 2 (line 3), column 'b': '{bad}' is not a label value" in str(err.value)


def test_empty_patient_id_names_row(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,patient_id,a\na.dcm,p1,1\nb.dcm,  ,0\n")
    with pytest.raises(DataError, match=r"row 2 \(line 3\), column 'patient_id': empty patient"):
        load_manifest(csv)


def test_empty_path_names_row(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,patient_id,a\n,p1,1\nb.dcm,p2,0\n")
    with pytest.raises(DataError, match=r"row 1 \(line 2\), column 'path': empty path"):
        load_manifest(csv)


def test_all_problems_reported_together_in_row_order(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,patient_id,a\na.dcm,,1\nb.dcm,p2,yes\na.dcm,p3,0\n")
    with pytest.raises(DataError) as err:
        load_manifest(csv, labels=["a"])
    lines = str(err.value).splitlines()
    assert "3 problem(s)" in lines[0]
    assert [line.split(",")[0].strip() for line in lines[1:]] == [
        "row 1 (line 2)",
        "row 2 (line 3)",
        "row 3 (line 4)",
    ]


def test_blank_lines_keep_line_numbers_true(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,patient_id,a\na.dcm,p1,1\n\nc.dcm,p3,\n", touch=True)
    manifest = load_manifest(csv)
    assert len(manifest) == 2
    assert list(manifest.table.index) == [0, 1]
    bad = write_csv(tmp_path, "path,patient_id,a\na.dcm,p1,1\n\nc.dcm,p3,7\n", name="bad.csv")
    with pytest.raises(DataError, match=r"line 4\), column 'a': '7'"):
        load_manifest(bad, labels=["a"])


def test_missing_files_listed_then_counted(tmp_path: Path) -> None:
    rows = ["path,patient_id,a", "real.dcm,p0,1"] + [f"gone{i}.dcm,p{i},0" for i in range(25)]
    csv = write_csv(tmp_path, "\n".join(rows) + "\n", touch=False)
    (tmp_path / "real.dcm").write_bytes(b"x")
    (tmp_path / "folder.dcm").mkdir()
    with pytest.raises(DataError) as err:
        load_manifest(csv)
    message = str(err.value)
    assert "25 file problem(s)" in message
    assert (
        "row 2 (line 3), column 'path': file not found: " + str(tmp_path / "gone0.dcm") in message
    )
    assert "... and 5 more" in message
    assert load_manifest(csv, check_files=False).table.shape[0] == 26

    dir_csv = write_csv(tmp_path, "path,patient_id,a\nfolder.dcm,p1,1\n", name="d.csv", touch=False)
    with pytest.raises(DataError, match="not a regular file"):
        load_manifest(dir_csv)


def test_all_files_missing_points_at_the_base_folder(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,patient_id,a\nx.dcm,p1,1\ny.dcm,p2,0\n", touch=False)
    with pytest.raises(DataError, match="none of the 2 files exist; relative paths are resolved"):
        load_manifest(csv)


def test_no_label_columns_says_what_a_label_is(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,patient_id,finding\na.dcm,p1,1\nb.dcm,p2,0\nc.dcm,p3,maybe\n")
    with pytest.raises(DataError) as err:
        load_manifest(csv)
    message = str(err.value)
    assert "no label columns" in message
    assert "'finding' (row 3 (line 4): 'maybe')" in message


@pytest.mark.parametrize(
    ("policy", "expected"), [("ignore", math.nan), ("positive", 1.0), ("negative", 0.0)]
)
def test_uncertain_policy(tmp_path: Path, policy: str, expected: float) -> None:
    csv = write_csv(tmp_path, "path,patient_id,a\na.dcm,p1,-1\nb.dcm,p2,1\nc.dcm,p3,-1.0\n")
    manifest = load_manifest(csv, uncertain=policy)
    values = manifest.table["a"].tolist()
    assert values[1] == 1.0
    for value in (values[0], values[2]):
        assert (math.isnan(value) and math.isnan(expected)) or value == expected
    counts = manifest.label_counts().loc["a"]
    assert counts["uncertain"] == 2
    assert counts["positive"] == 1 + 2 * (policy == "positive")
    assert counts["negative"] == 2 * (policy == "negative")
    assert counts["unknown"] == 2 * (policy == "ignore")


def test_unknown_uncertain_policy_is_refused(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,patient_id,a\na.dcm,p1,1\n")
    with pytest.raises(ConfigError, match="ignore, positive, negative"):
        load_manifest(csv, uncertain="zeros")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "empty"),
        ("path,patient_id,a\n", "no data rows"),
        ("path,patient_id,a,a\nx.dcm,p1,1,0\n", "'a' appears twice"),
        ('path,patient_id,a\nx.dcm,"p1,1\n', "not a valid CSV"),
        ("path,patient_id,a\nx.dcm,p1,1\ny.dcm,p2,0,9\n", "line 3"),
    ],
)
def test_malformed_csv_is_a_data_error(tmp_path: Path, content: str, match: str) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text(content)
    with pytest.raises(DataError, match=match):
        load_manifest(csv, check_files=False)


def test_missing_manifest_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="manifest not found"):
        load_manifest(tmp_path / "nope.csv")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,patient_id,a\nx.dcm,Jos\xe9,1\n".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        load_manifest(latin, check_files=False)


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    csv = tmp_path / "bom.csv"
    csv.write_bytes("\ufeffpath,patient_id,a\nx.dcm,p1,1\n".encode())
    assert load_manifest(csv, check_files=False).labels == ["a"]


def test_subset_keeps_index_and_recounts(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,patient_id,a\na.dcm,p1,-1\nb.dcm,p2,1\nc.dcm,p3,0\n")
    manifest = load_manifest(csv, uncertain="positive")
    part = manifest.subset(manifest.table["patient_id"] != "p2")
    assert isinstance(part, Manifest)
    assert list(part.table.index) == [0, 2]
    assert part.label_counts().loc["a"].to_dict() == {
        "positive": 1,
        "negative": 1,
        "unknown": 0,
        "uncertain": 1,
    }
    assert len(manifest.subset(np.array([True, False, False]))) == 1
    with pytest.raises(DataError, match="3 rows"):
        manifest.subset([True])


def make_folder_layout(root: Path) -> None:
    files = [
        "normal/p1/study/a.dcm",
        "normal/p1/b.DCM",
        "normal/c.png",
        "pneumonia/p2/d.jpg",
        "pneumonia/e.jpeg",
        "pneumonia/notes.txt",
        "pneumonia/.hidden/f.dcm",
        ".cache/g.dcm",
        "empty_class/readme.md",
    ]
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")


def test_folder_layout_is_one_hot_multiclass(tmp_path: Path) -> None:
    make_folder_layout(tmp_path)
    with pytest.warns(UserWarning, match="no patient IDs"):
        manifest = load_manifest(tmp_path)
    assert manifest.task == "multiclass"
    assert manifest.labels == ["normal", "pneumonia"]
    table = manifest.table.set_index(manifest.table["path"].map(lambda p: Path(p).name))
    assert sorted(table.index) == ["a.dcm", "b.DCM", "c.png", "d.jpg", "e.jpeg"]
    assert table.loc["a.dcm", "patient_id"] == "p1"
    assert table.loc["b.DCM", "patient_id"] == "p1"
    assert table.loc["c.png", "patient_id"] == "c"
    assert table.loc["d.jpg", "patient_id"] == "p2"
    assert table.loc["d.jpg", ["normal", "pneumonia"]].tolist() == [0.0, 1.0]
    assert (table[["normal", "pneumonia"]].sum(axis=1) == 1.0).all()
    assert all(Path(p).is_absolute() for p in manifest.table["path"])


def test_folder_layout_with_patient_map(tmp_path: Path) -> None:
    make_folder_layout(tmp_path)
    mapping = {
        "normal/p1/study/a.dcm": "A",
        "normal/p1/b.DCM": "A",
        "normal/c.png": "B",
        "pneumonia/p2/d.jpg": "B",
        str(tmp_path / "pneumonia" / "e.jpeg"): "C",
    }
    manifest = load_manifest(tmp_path, patient_map=mapping)
    assert sorted(manifest.table["patient_id"]) == ["A", "A", "B", "B", "C"]

    map_csv = tmp_path.parent / f"{tmp_path.name}_map.csv"
    pd.DataFrame({"path": list(mapping)[:3], "patient_id": ["A", "A", "B"]}).to_csv(
        map_csv, index=False
    )
    with pytest.raises(DataError, match=r"no patient ID for 2 image\(s\)"):
        load_manifest(tmp_path, patient_map=map_csv)


def test_folder_layout_needs_two_classes_and_safe_names(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.dcm").write_bytes(b"x")
    with pytest.raises(DataError, match="at least two class folders"):
        load_manifest(tmp_path)
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "b.dcm").write_bytes(b"x")
    with pytest.raises(DataError, match="reserved column name"):
        load_manifest(tmp_path)


def test_options_that_do_not_apply_are_refused(tmp_path: Path) -> None:
    make_folder_layout(tmp_path / "root")
    csv = write_csv(tmp_path, "path,patient_id,a\na.dcm,p1,1\n")
    with pytest.raises(ConfigError, match="folder layouts"):
        load_manifest(csv, patient_map={"a.dcm": "x"})
    with pytest.raises(ConfigError, match="class folders"):
        load_manifest(tmp_path / "root", labels=["normal"])


def test_patient_key_is_salted_stable_and_opaque(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SALT_ENV, raising=False)
    key = patient_key("PAT-0042")
    assert len(key) == KEY_LENGTH and int(key, 16) >= 0
    assert "0042" not in key
    assert key == patient_key("PAT-0042 ") == patient_key("PAT-0042", salt=DEFAULT_SALT)
    assert key != patient_key("PAT-0043")
    assert key != patient_key("PAT-0042", salt="site-secret")
    monkeypatch.setenv(SALT_ENV, "site-secret")
    assert patient_key("PAT-0042") == patient_key("PAT-0042", salt="site-secret")


def test_patient_key_matches_the_dicom_readers_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    """folds.csv keys and XrayMeta.patient_hash must agree, or grouping by header breaks."""
    meta = pytest.importorskip("medft.data._dicom_meta")
    monkeypatch.delenv(SALT_ENV, raising=False)
    assert meta.patient_hash("PAT-7 ") == patient_key("PAT-7")
    assert meta.patient_hash("PAT-7", salt="s") == patient_key("PAT-7", salt="s")
