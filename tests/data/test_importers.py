"""Dataset importers, each on a tiny look-alike of the real layout (real column names)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medft.cli import main
from medft.data.dicom import load_image
from medft.data.importers import (
    CHEXPERT_LABELS,
    IMPORTERS,
    NIH_LABELS,
    VINDR_LABELS,
    VOCABULARY,
    import_chexpert,
    import_dataset,
    import_folder,
    import_medmnist,
    import_mimic,
    import_nih,
    import_rsna,
    import_siim,
    import_vindr,
)
from medft.data.manifest import load_manifest
from medft.errors import ConfigError, DataError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write_png(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)
    return path


def write_dicom(path: Path, patient_id: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.Modality = "CR"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(64))
    ds.save_as(path, enforce_file_format=True)
    return path


def rows_by_name(manifest_csv: Path, **kwargs) -> pd.DataFrame:
    table = load_manifest(manifest_csv, **kwargs).table
    return table.set_index(table["path"].map(lambda p: Path(p).stem))


# ----------------------------------------------------------------------------- NIH


@pytest.fixture
def nih_root(tmp_path: Path) -> Path:
    root = tmp_path / "nih"
    findings = ["Cardiomegaly|Effusion", "No Finding", "Nodule", "Pleural_Thickening",
                "No Finding", "Mass|Hernia", "Pneumothorax", "No Finding"]  # fmt: skip
    rows = []
    for i, finding in enumerate(findings * 2):
        name = f"{i:08d}_000.png"
        write_png(root / f"images_00{1 + i % 2}" / "images" / name)
        rows.append({"Image Index": name, "Finding Labels": finding, "Follow-up #": "0",
                     "Patient ID": str(i // 2 + 1), "Patient Age": "58", "Patient Gender": "M",
                     "View Position": "PA", "OriginalImage[Width": "2682", "Height]": "2749",
                     "OriginalImagePixelSpacing[x": "0.143", "y]": "0.143"})  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "Data_Entry_2017.csv", index=False)
    names = [r["Image Index"] for r in rows]
    (root / "train_val_list.txt").write_text("\n".join(names[:12]) + "\n")
    (root / "test_list.txt").write_text("\n".join(names[12:]) + "\n")
    return root


@pytest.mark.filterwarnings("ignore:label .* has positives in only")
def test_nih_labels_split_and_paths(nih_root: Path, tmp_path: Path) -> None:
    result = import_nih(nih_root, tmp_path / "out" / "nih.csv", val_fraction=0.25)
    table = rows_by_name(result.manifest)
    assert result.n_images == 16 and result.n_patients == 8
    assert result.labels == list(NIH_LABELS.values())
    first = table.loc["00000000_000"]
    assert (first["cardiomegaly"], first["effusion"], first["nodule"]) == (1.0, 1.0, 0.0)
    assert table.loc["00000005_000", ["mass", "hernia"]].tolist() == [1.0, 1.0]
    assert table.loc["00000003_000", "pleural_thickening"] == 1.0
    assert table["no_finding"].sum() == 6
    assert set(table["split"]) == {"train", "val", "test"}
    assert (table["split"] == "test").sum() == 4
    assert set(table.loc[table["official_split"] == "train_val", "split"]) == {"train", "val"}
    by_patient = table.groupby("patient_id")["split"].nunique()
    assert (by_patient == 1).all()
    assert "images_002" in table.loc["00000001_000", "path"]


def test_nih_missing_images_error_or_skip(nih_root: Path, tmp_path: Path) -> None:
    next((nih_root / "images_001" / "images").glob("*.png")).unlink()
    with pytest.raises(DataError, match="--missing skip"):
        import_nih(nih_root, tmp_path / "nih.csv")
    assert not (tmp_path / "nih.csv").exists()
    result = import_nih(nih_root, tmp_path / "nih.csv", missing="skip", val_fraction=0)
    assert (result.n_images, result.n_missing) == (15, 1)


def test_nih_refuses_unknown_finding(nih_root: Path, tmp_path: Path) -> None:
    entries = pd.read_csv(nih_root / "Data_Entry_2017.csv")
    entries.loc[0, "Finding Labels"] = "Covid"
    entries.to_csv(nih_root / "Data_Entry_2017.csv", index=False)
    with pytest.raises(DataError, match="Covid"):
        import_nih(nih_root, tmp_path / "nih.csv")


# ------------------------------------------------------------------------ CheXpert


@pytest.fixture
def chexpert_root(tmp_path: Path) -> Path:
    root = tmp_path / "CheXpert-v1.0-small"
    rows = []
    for patient in range(1, 9):
        for view in ("frontal", "lateral"):
            rel = f"CheXpert-v1.0-small/train/patient{patient:05d}/study1/view1_{view}.jpg"
            write_png(tmp_path / rel)
            labels = dict.fromkeys(CHEXPERT_LABELS, "")
            labels.update({"Cardiomegaly": "1.0", "Edema": "-1.0", "Pleural Effusion": "0.0"}
                          if patient % 2 else {"No Finding": "1.0"})  # fmt: skip
            projection = "AP" if view == "frontal" else ""
            rows.append({"Path": rel, "Sex": "Female", "Age": "68", "AP/PA": projection,
                         "Frontal/Lateral": view.title(), **labels})  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    valid_rel = "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg"
    write_png(tmp_path / valid_rel)
    valid = {"Path": valid_rel, "Sex": "Male", "Age": "73", "Frontal/Lateral": "Frontal",
             "AP/PA": "AP", **dict.fromkeys(CHEXPERT_LABELS, "0.0"), "Edema": "1.0"}  # fmt: skip
    pd.DataFrame([valid]).to_csv(root / "valid.csv", index=False)
    return root


def test_chexpert_keeps_uncertain_and_unknown(chexpert_root: Path, tmp_path: Path) -> None:
    result = import_chexpert(chexpert_root, tmp_path / "chexpert.csv", val_fraction=0.25)
    table = load_manifest(result.manifest).table
    assert result.n_images == 17 and result.n_patients == 9
    odd = table[table["patient_id"] == "patient00001"].iloc[0]
    assert odd["cardiomegaly"] == 1.0 and odd["effusion"] == 0.0
    assert math.isnan(odd["edema"])  # -1 under the default "ignore" policy
    assert math.isnan(odd["pneumonia"])  # blank: not mentioned, unknown
    raw = pd.read_csv(result.manifest, dtype=str, keep_default_na=False)
    assert set(raw["edema"]) == {"-1", "", "1"}
    positive = load_manifest(result.manifest, uncertain="positive")
    assert positive.label_counts().loc["edema", "uncertain"] == 8
    assert (positive.table["edema"] == 1.0).sum() == 9
    test = table[table["split"] == "test"]
    assert test["patient_id"].tolist() == ["patient64541"]
    assert set(table["split"]) == {"train", "val", "test"}
    assert set(table["view"]) == {"Frontal", "Lateral"}


def test_chexpert_frontal_only_and_blank_negative(chexpert_root: Path, tmp_path: Path) -> None:
    result = import_chexpert(
        chexpert_root, tmp_path / "c.csv", frontal_only=True, blank_negative=True, val_fraction=0
    )
    table = load_manifest(result.manifest).table
    assert result.n_images == 9 and set(table["view"]) == {"Frontal"}
    assert table["pneumonia"].eq(0.0).all()  # blank -> negative
    raw = pd.read_csv(result.manifest, dtype=str)
    assert (raw["edema"] == "-1").sum() == 4  # uncertain stays uncertain


# ----------------------------------------------------------------------------- MIMIC


@pytest.fixture
def mimic_root(tmp_path: Path) -> Path:
    root = tmp_path / "mimic-cxr-jpg"
    meta, splits, studies = [], [], []
    for s, (subject, study, split) in enumerate(
        [("10000032", "50414267", "train"), ("10000032", "53189527", "train"),
         ("10000764", "57375967", "validate"), ("10000898", "50771383", "test")]
    ):  # fmt: skip
        for view in ("PA", "LATERAL"):
            dicom_id = f"{s}{view.lower()}-02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
            write_png(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
                      / f"{dicom_id}.jpg")  # fmt: skip
            meta.append({"dicom_id": dicom_id, "subject_id": subject, "study_id": study,
                         "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                         "ViewPosition": view, "Rows": "3056", "Columns": "2544"})  # fmt: skip
            splits.append({"dicom_id": dicom_id, "study_id": study, "subject_id": subject,
                           "split": split})  # fmt: skip
        labels = dict.fromkeys(CHEXPERT_LABELS, "")
        labels["Edema" if s == 0 else "No Finding"] = "-1.0" if s == 0 else "1.0"
        labels["Pleural Effusion"] = "1.0" if s == 0 else ""
        studies.append({"subject_id": subject, "study_id": study, **labels})
    pd.DataFrame(meta).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    pd.DataFrame(studies).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    pd.DataFrame(splits).to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    return root


def test_mimic_study_labels_reach_every_image(mimic_root: Path, tmp_path: Path) -> None:
    result = import_mimic(mimic_root, tmp_path / "mimic.csv")
    table = load_manifest(result.manifest, uncertain="positive").table
    assert result.n_images == 8 and result.n_patients == 3
    study = table[table["study_id"] == "50414267"]
    assert len(study) == 2 and study["effusion"].eq(1.0).all() and study["edema"].eq(1.0).all()
    assert result.splits == {"train": 4, "val": 2, "test": 2}
    assert table.loc[table["study_id"] == "57375967", "split"].eq("val").all()
    assert table["patient_id"].str.fullmatch(r"\d{8}").all()


def test_mimic_frontal_only(mimic_root: Path, tmp_path: Path) -> None:
    result = import_mimic(mimic_root, tmp_path / "mimic.csv", frontal_only=True)
    table = load_manifest(result.manifest).table
    assert result.n_images == 4 and set(table["view"]) == {"PA"}


# ------------------------------------------------------------------------------ RSNA


@pytest.fixture
def rsna_root(tmp_path: Path) -> Path:
    root = tmp_path / "rsna"
    ids = ["0004cfab-14fd-4e49-80ba-63a80b6bddd6", "00436515-870c-4b36-a041-de91049b9ab4",
           "00704310-78a8-4b38-8475-49f4573b2dbb"]  # fmt: skip
    for image_id in ids:
        write_dicom(root / "stage_2_train_images" / f"{image_id}.dcm", image_id)
    rows = [
        [ids[0], "", "", "", "", "0"],
        [ids[1], "264.0", "152.0", "213.0", "379.0", "1"],
        [ids[1], "562.0", "152.0", "256.0", "453.0", "1"],
        [ids[2], "323.0", "577.0", "160.0", "104.0", "1"],
    ]
    pd.DataFrame(rows, columns=["patientId", "x", "y", "width", "height", "Target"]).to_csv(
        root / "stage_2_train_labels.csv", index=False
    )
    pd.DataFrame(
        {
            "patientId": ids,
            "class": ["No Lung Opacity / Not Normal", "Lung Opacity", "Lung Opacity"],
        }
    ).to_csv(root / "stage_2_detailed_class_info.csv", index=False)
    return root


def test_rsna_labels_and_boxes_sidecar(rsna_root: Path, tmp_path: Path) -> None:
    result = import_rsna(rsna_root, tmp_path / "rsna.csv")
    table = load_manifest(result.manifest).table.set_index("patient_id")
    assert result.n_images == 3 and result.labels == ["pneumonia"]
    assert table["pneumonia"].tolist() == [0.0, 1.0, 1.0]
    assert table["n_boxes"].tolist() == [0, 2, 1]
    assert table["rsna_class"].iloc[0] == "No Lung Opacity / Not Normal"
    boxes = pd.read_csv(result.sidecars["boxes"])
    assert result.sidecars["boxes"].name == "rsna_boxes.csv"
    assert len(boxes) == 3 and list(boxes.columns) == ["path", "label", "x", "y", "width", "height"]
    assert (tmp_path / boxes["path"].iloc[0]).is_file()
    image, _ = load_image(table["path"].iloc[1])
    assert image.shape == (8, 8)


# ------------------------------------------------------------------------------ SIIM


@pytest.fixture
def siim_root(tmp_path: Path) -> Path:
    root = tmp_path / "siim"
    uids = [f"1.2.276.0.7230010.3.1.4.8323329.{n}.1517875188.959090" for n in (5597, 12515, 4904)]
    for n, uid in enumerate(uids):
        study = root / "dicom-images-train" / f"1.2.276.0.7230010.3.1.2.{n}" / f"1.2.3.{n}"
        write_dicom(study / f"{uid}.dcm", f"17d405a3-a0d2-4901-b33a-63906aa4{n:04d}")
    text = (
        "ImageId, EncodedPixels\n"
        f"{uids[0]}, -1\n"
        f"{uids[1]}, 175349 7 1013 12 1009 17\n"
        f"{uids[1]}, 407576 2 1021 7 1015 10\n"
        f"{uids[2]}, -1\n"
    )
    (root / "train-rle.csv").write_text(text)
    return root


def test_siim_label_patient_and_masks(siim_root: Path, tmp_path: Path) -> None:
    result = import_siim(siim_root, tmp_path / "siim.csv")
    table = rows_by_name(result.manifest)
    assert result.n_images == 3 and result.n_patients == 3
    assert table["pneumothorax"].tolist() == [0.0, 1.0, 0.0]
    assert table["patient_id"].str.startswith("17d405a3-").all()
    masks = pd.read_csv(result.sidecars["masks"])
    assert len(masks) == 2 and set(masks["encoding"]) == {"relative"}
    assert masks["rle"].iloc[0] == "175349 7 1013 12 1009 17"


# ----------------------------------------------------------------------------- VinDr


@pytest.fixture
def vindr_root(tmp_path: Path) -> Path:
    root = tmp_path / "vinbigdata"
    a, b = "9a5094b2563a1ef3ff50dc5c7ff71345", "051132a778e61a86eb147c7c6f564dfe"
    for image_id in (a, b):
        write_dicom(root / "train" / f"{image_id}.dicom", "")
    box = ["691.0", "1375.0", "1653.0", "1831.0"]
    rows = [
        [a, "Cardiomegaly", "3", "R10", *box],
        [a, "Cardiomegaly", "3", "R9", *box],
        [a, "Nodule/Mass", "8", "R9", *box],
        [a, "Nodule/Mass", "8", "R9", *box],  # one reader, two boxes: still one vote
        [a, "No finding", "14", "R8", "", "", "", ""],
        [b, "No finding", "14", "R8", "", "", "", ""],
        [b, "No finding", "14", "R9", "", "", "", ""],
        [b, "Pleural effusion", "10", "R10", *box],
    ]
    columns = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    pd.DataFrame(rows, columns=columns).to_csv(root / "train.csv", index=False)
    return root


def test_vindr_majority_and_any(vindr_root: Path, tmp_path: Path) -> None:
    majority = import_vindr(vindr_root, tmp_path / "majority.csv")
    table = load_manifest(majority.manifest).table.set_index("patient_id")
    a, b = "9a5094b2563a1ef3ff50dc5c7ff71345", "051132a778e61a86eb147c7c6f564dfe"
    assert majority.labels == [*VINDR_LABELS.values(), "no_finding"]
    assert table.loc[a, ["cardiomegaly", "nodule_mass", "no_finding"]].tolist() == [1, 0, 0]
    assert table.loc[b, ["effusion", "no_finding"]].tolist() == [0.0, 1.0]
    assert table["n_readers"].tolist() == [3, 3]
    assert len(pd.read_csv(majority.sidecars["boxes"])) == 5
    anyone = load_manifest(import_vindr(vindr_root, tmp_path / "any.csv", rule="any").manifest)
    table = anyone.table.set_index("patient_id")
    assert table.loc[a, ["cardiomegaly", "nodule_mass"]].tolist() == [1.0, 1.0]
    assert table.loc[b, ["effusion", "no_finding"]].tolist() == [1.0, 0.0]
    with pytest.raises(ConfigError, match="rule"):
        import_vindr(vindr_root, tmp_path / "x.csv", rule="unanimous")


# -------------------------------------------------------------------------- MedMNIST


def test_medmnist_npz_with_official_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    result = import_medmnist(tmp_path / "pneumoniamnist.npz", tmp_path / "out" / "m.csv")
    table = load_manifest(result.manifest).table
    assert result.labels == ["pneumonia"] and result.splits == {"train": 6, "val": 2, "test": 3}
    val = table[table["split"] == "val"].sort_values("index")
    assert val["pneumonia"].tolist() == arrays["val_labels"][:, 0].astype(float).tolist()
    image = np.asarray(Image.open(val["path"].iloc[1]))
    np.testing.assert_array_equal(image, arrays["val_images"][1])
    assert result.sidecars["images"] == (tmp_path / "out" / "pneumoniamnist_images")


def test_medmnist_multiclass_names(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "organamnist.npz",
        test_images=np.zeros((3, 28, 28), np.uint8),
        test_labels=np.array([[0], [2], [1]]),
    )
    result = import_medmnist(tmp_path / "organamnist.npz", tmp_path / "o.csv")
    table = load_manifest(result.manifest).table
    assert result.labels == ["class_0", "class_1", "class_2"]
    assert table[result.labels].to_numpy().tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]


def test_medmnist_real_pneumoniamnist_sample(corpus_dir: Path, tmp_path: Path) -> None:
    result = import_medmnist(
        corpus_dir / "pneumoniamnist", tmp_path / "pm.csv", images_out=tmp_path / "png"
    )
    manifest = load_manifest(result.manifest)
    listed = pd.read_csv(corpus_dir / "pneumoniamnist" / "labels.csv")
    assert result.n_images == 624 and result.splits == {"test": 624}
    assert manifest.label_counts().loc["pneumonia", "positive"] == 390
    assert manifest.table["pneumonia"].tolist() == listed["label"].astype(float).tolist()
    image, _ = load_image(manifest.table["path"].iloc[0])
    assert image.shape == (28, 28)


# ---------------------------------------------------------------------------- folder


def test_folder_layout_one_hot(tmp_path: Path) -> None:
    for cls, patient in (("normal", "p1"), ("normal", "p2"), ("pneumonia", "p3")):
        write_png(tmp_path / "xrays" / cls / patient / "a.png")
    with pytest.warns(UserWarning, match="patient"):
        result = import_folder(tmp_path / "xrays", tmp_path / "folder.csv")
    table = load_manifest(result.manifest).table
    assert result.labels == ["normal", "pneumonia"]
    assert table[["normal", "pneumonia"]].to_numpy().tolist() == [[1, 0], [1, 0], [0, 1]]
    assert table["patient_id"].tolist() == ["p1", "p2", "p3"]
    assert pd.read_csv(result.manifest)["path"].iloc[0] == "xrays/normal/p1/a.png"


# ------------------------------------------------------------------ registry and CLI


def test_every_mapped_name_is_in_the_vocabulary() -> None:
    for mapping in (NIH_LABELS, CHEXPERT_LABELS, VINDR_LABELS):
        assert set(mapping.values()) <= set(VOCABULARY)


def test_import_dataset_refuses_unknown_format_and_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dataset format"):
        import_dataset("padchest", tmp_path, tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="--rule"):
        import_dataset("nih", tmp_path, tmp_path / "x.csv", rule="any")


def test_cli_data_import(vindr_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "v.csv"
    assert main(["data", "import", "vindr", "--input", str(vindr_root), "--out", str(out),
                 "--rule", "any"]) == 0  # fmt: skip
    assert "wrote 2 images" in capsys.readouterr().out
    assert load_manifest(out).table["nodule_mass"].sum() == 1
    assert main(["data", "import", "nih", "--input", str(vindr_root), "--out", str(out)]) == 2


# --------------------------------------------------------------------------- configs

CONFIG_LABELS = {
    "nih": set(NIH_LABELS.values()),
    "chexpert": set(CHEXPERT_LABELS.values()),
    "mimic": set(CHEXPERT_LABELS.values()),
    "rsna": {"pneumonia"},
    "siim": {"pneumothorax"},
    "vindr": {*VINDR_LABELS.values(), "no_finding"},
    "medmnist": {"pneumonia"},
    "folder": set(),
}


@pytest.mark.parametrize("name", sorted(IMPORTERS))
def test_config_parses_and_names_importer_labels(name: str, capsys: pytest.CaptureFixture) -> None:
    from medft.lightning_cli import run_lightning

    path = CONFIGS / f"{name}.yaml"
    with pytest.raises(SystemExit) as exited:
        run_lightning("fit", ["--config", str(path), "--print_config"])
    assert exited.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["manifest"].endswith(".csv")
    assert set(printed["data"]["labels"] or []) <= CONFIG_LABELS[name]
    assert f"medft data import {name}" in path.read_text()


def test_cli_data_import_writes_into_the_out_folder(vindr_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "vindr"
    assert main(["data", "import", "vindr", "--input", str(vindr_root), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "manifest_boxes.csv"]
    assert len(load_manifest(out / "manifest.csv").table) == 2


def test_cli_passes_zero_val_fraction(nih_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "nih.csv"
    args = ["data", "import", "nih", "--input", str(nih_root), "--out", str(out)]
    assert main([*args, "--val-fraction", "0"]) == 0
    assert set(pd.read_csv(out)["split"]) == {"train", "test"}
