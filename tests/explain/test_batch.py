"""`medft explain` over files and folders: outputs at original size, index, errors, checks, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_fit_args
from PIL import Image

from medft.cli import main
from medft.data.dicom import load_image
from medft.errors import ConfigError
from medft.explain.batch import (
    INDEX_COLUMNS,
    collect_inputs,
    explain_inputs,
    output_id,
)
from medft.inference import Predictor
from medft.model.checkpoint import load_classifier


@pytest.fixture(scope="module")
def two_label_checkpoint(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multi-label (nodule, effusion) checkpoint from a few training steps."""
    from medft.lightning_cli import last_checkpoint_path, run_lightning

    run_dir = tmp_path_factory.mktemp("two_label_run")
    args = tiny_fit_args(
        tiny_dataset,
        run_dir,
        "--data.labels", "[nodule,effusion]",
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2",
    )  # fmt: skip
    cli = run_lightning("fit", args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return last_checkpoint_path(cli.trainer)


@pytest.fixture(scope="module")
def input_folder(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two DICOMs, one suffix-less DICOM, a non-square PNG, a truncated DICOM, a stray text."""
    table = pd.read_csv(tiny_dataset)
    sources = [tiny_dataset.parent / path for path in table["path"][:3]]
    root = tmp_path_factory.mktemp("inputs")
    (root / "SYN_PATIENT_A").mkdir()
    shutil.copy(sources[0], root / "SYN_PATIENT_A" / "1.2.840.99.1.dcm")
    shutil.copy(sources[1], root / "SYN_PATIENT_A" / "IM0001")  # DICOM without a suffix
    image, _ = load_image(sources[2])
    crop = np.round(image[:50, :] * 255).astype(np.uint8)  # 50 x 64: padding on the way in
    Image.fromarray(crop).save(root / "wide.png")
    (root / "broken.dcm").write_bytes(sources[0].read_bytes()[:400])
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def two_label_run(
    two_label_checkpoint: Path, input_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[pd.DataFrame, Path]:
    out = tmp_path_factory.mktemp("explained")
    return explain_inputs(two_label_checkpoint, input_folder, out), out


def test_folder_inputs_are_found_by_suffix_and_content(input_folder: Path, tmp_path: Path):
    found = [p.relative_to(input_folder).as_posix() for p in collect_inputs(input_folder)]
    assert found == [
        "SYN_PATIENT_A/1.2.840.99.1.dcm",
        "SYN_PATIENT_A/IM0001",
        "broken.dcm",
        "wide.png",
    ]
    single = input_folder / "wide.png"
    assert collect_inputs(single) == [single]
    with pytest.raises(ConfigError, match="no images found"):
        collect_inputs(tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        collect_inputs(tmp_path / "missing")


def test_outputs_inside_the_input_folder_are_not_explained_again(input_folder: Path, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(input_folder, root)
    (root / "out" / "overlays").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "out" / "overlays" / "x.png")
    found = collect_inputs(root, exclude=root / "out")
    assert all("out" not in p.relative_to(root).parts for p in found)
    assert len(found) == 4


def test_output_ids_hide_the_input_name_and_keep_the_order(tmp_path: Path):
    path = tmp_path / "DOE_JOHN" / "1.2.840.113619.2.55.dcm"
    name = output_id(3, path)
    assert name == output_id(3, path)
    assert name.startswith("0003_") and len(name) == 11
    assert "DOE" not in name and "113619" not in name
    assert output_id(3, tmp_path / "other.dcm") != name
    assert output_id(12, path, width=5).startswith("00012_")


def test_one_map_per_finding_at_the_original_size(two_label_run, input_folder: Path):
    index, out = two_label_run
    ok = index[index["status"] == "ok"]
    assert ok["input"].nunique() == 3
    for path, rows in ok.groupby("input"):
        assert list(rows["finding"]) == ["nodule", "effusion"]
        image, _ = load_image(path)
        for row in rows.itertuples():
            raw = np.load(out / row.raw_map)
            assert raw.dtype == np.float32 and raw.shape == image.shape
            assert (row.original_height, row.original_width) == image.shape
            overlay = np.asarray(Image.open(out / row.overlay))
            assert overlay.shape == (*image.shape, 3)
            assert f"{image.shape[0]}x{image.shape[1]}" in row.raw_map_content
            assert "un-normalised" in row.raw_map_content
        assert rows["grid"].nunique() == 1
        grid = np.asarray(Image.open(out / rows["grid"].iloc[0]))
        assert grid.ndim == 3 and grid.shape[1] > grid.shape[0]  # image + 2 panels side by side
    wide = ok[ok["input"].str.endswith("wide.png")]
    assert set(zip(wide["original_height"], wide["original_width"], strict=True)) == {(50, 64)}


def test_the_maps_differ_between_findings_and_are_not_normalised(two_label_run):
    index, out = two_label_run
    rows = index[(index["status"] == "ok") & index["input"].str.endswith("1.2.840.99.1.dcm")]
    nodule, effusion = (np.load(out / path) for path in rows["raw_map"])
    assert not np.allclose(nodule, effusion)
    assert not np.isclose(nodule.max(), 1.0) or nodule.min() < 0  # raw units, not [0, 1]


def test_index_holds_probabilities_calls_and_the_display_sentence(
    two_label_run, two_label_checkpoint: Path
):
    index, out = two_label_run
    assert list(index.columns) == list(INDEX_COLUMNS)
    assert pd.read_csv(out / "index.csv").shape == index.shape
    loaded = load_classifier(two_label_checkpoint)
    ok = index[index["status"] == "ok"]
    assert ok["probability"].between(0, 1).all()
    for row in ok.itertuples():
        assert row.threshold == pytest.approx(loaded.thresholds[row.finding])
        assert row.call == ("positive" if row.probability >= row.threshold else "negative")
        assert row.method == "gradcam" and row.layer.startswith("model.")
        assert row.display_norm.startswith("Colour: each finding's map is scaled")
    names = [p.name for p in out.rglob("*") if p.is_file()]
    assert names and not any("SYN" in n or "1.2.840" in n or "IM0001" in n for n in names)
    assert len(list((out / "overlays").iterdir())) == 6 == len(list((out / "maps").iterdir()))


def test_probabilities_match_the_prediction_path(two_label_run, two_label_checkpoint, tmp_path):
    """The index's probabilities are the ones `medft evaluate`/`predict` report."""
    from medft.data.manifest import load_manifest
    from medft.eval.predict import predict_manifest

    index, _ = two_label_run
    ok = index[(index["status"] == "ok") & index["input"].str.endswith(".dcm")]
    manifest_csv = tmp_path / "manifest.csv"
    pd.DataFrame(
        {"path": ok["input"].unique(), "patient_id": "p", "nodule": 0, "effusion": 0}
    ).to_csv(manifest_csv, index=False)
    predictor = Predictor.from_checkpoint(two_label_checkpoint)
    predictions = predict_manifest(predictor, load_manifest(manifest_csv)).table
    for row in ok.itertuples():
        expected = predictions.loc[predictions["path"] == row.input, f"prob_{row.finding}"]
        assert row.probability == pytest.approx(float(expected.iloc[0]), abs=1e-5)


def test_an_unreadable_input_is_listed_and_the_others_succeed(two_label_run, input_folder):
    index, _ = two_label_run
    errors = index[index["status"] == "error"]
    assert list(errors["input"]) == [str(input_folder / "broken.dcm")]
    reason = errors["error"].iloc[0]
    assert str(input_folder / "broken.dcm") in reason and len(reason) > 40
    assert errors["overlay"].iloc[0] == "" and np.isnan(errors["probability"].iloc[0])
    assert (index["status"] == "ok").sum() == 6


def test_findings_subset_percentile_norm_and_bad_options(
    two_label_checkpoint: Path, input_folder: Path, tmp_path: Path
):
    single = input_folder / "wide.png"
    index = explain_inputs(
        two_label_checkpoint, single, tmp_path, findings=["effusion"], norm="percentile"
    )
    assert list(index["finding"]) == ["effusion"]
    assert "percentile" in index["display_norm"].iloc[0]
    assert len(list((tmp_path / "maps").iterdir())) == 1
    with pytest.raises(ConfigError, match="opacity"):
        explain_inputs(two_label_checkpoint, single, tmp_path, findings=["opacity"])
    with pytest.raises(ConfigError, match="--method"):
        explain_inputs(two_label_checkpoint, single, tmp_path, method="lime")
    with pytest.raises(ConfigError, match="--alpha"):
        explain_inputs(two_label_checkpoint, single, tmp_path, alpha=2.0)


def test_check_mode_writes_checks_json(tiny_checkpoint: Path, input_folder: Path, tmp_path: Path):
    index = explain_inputs(tiny_checkpoint, input_folder, tmp_path, check=True, check_max=2)
    saved = json.loads((tmp_path / "checks.json").read_text())
    assert set(saved) == {"summary", "ids", "randomisation_rows", "deletion_rows"}
    summary = saved["summary"]
    returned = index.attrs["checks"]
    assert summary["randomisation"] == returned["randomisation"]
    assert summary["deletion"]["all"] == returned["deletion"]["all"]
    assert summary["n_images"] == 2 and summary["method"] == "gradcam"
    assert saved["ids"] == list(index.loc[index["status"] == "ok", "id"].unique()[:2])
    levels = summary["randomisation"]
    assert [level["level"] for level in levels] == [0, 1, 2, 3]
    assert levels[0]["median_spearman"] == pytest.approx(1.0)
    assert levels[0]["randomised"] == "none (control)"
    assert {"median_spearman", "median_spearman_abs", "n"} <= set(levels[1])
    deletion = summary["deletion"]["all"]
    assert deletion["n"] == 2
    for key in ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc"):
        assert 0.0 <= deletion[f"mean_{key}"] <= 1.0
    assert set(summary["deletion"]) == {"all", "called_positive"}
    assert len(saved["deletion_rows"]) == 2


def test_cli_explain_prints_where_and_what_the_colours_mean(
    tiny_checkpoint: Path, input_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    out = tmp_path / "cli"
    code = main(
        ["explain", "--checkpoint", str(tiny_checkpoint), "--input", str(input_folder),
         "--out", str(out), "--method", "hirescam", "--alpha", "0.5", "--layer", "model.blocks.3"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "explained 3 of 4 inputs with hirescam at model.blocks.3" in printed
    assert "1 unreadable" in printed
    assert str(out / "index.csv") in printed and "Colour:" in printed
    assert (out / "index.csv").is_file() and not (out / "checks.json").exists()


def test_cli_explain_reports_errors_without_a_traceback(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    code = main(
        ["explain", "--checkpoint", str(tiny_checkpoint), "--input", str(tmp_path / "none"),
         "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 2
    assert "no such file or folder" in capsys.readouterr().err
