"""medft evaluate end to end on a checkpoint trained here (tiny model, tiny synthetic data)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medft.cli import main
from medft.data.synth import synthesize
from medft.errors import ConfigError
from medft.eval.evaluate import analysis_arrays, evaluate, table_metrics
from medft.eval.metrics import summarize
from medft.model.checkpoint import load_classifier

N_BOOT = 200


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fit test_resnet for two epochs on 20 synthetic patients (64 px) with `medft fit`'s wiring."""
    from medft.lightning_cli import run_lightning

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evaluate")
    data = synthesize(root / "data", 20, images_per_patient=2, size=64, seed=5, workers=1)
    cli = run_lightning(
        "fit",
        [
            "--data.manifest", str(data.labels_csv),
            "--data.labels", "[abnormal]",
            "--data.image_size", "64",
            "--data.batch_size", "8",
            "--data.num_workers", "0",
            "--data.test_fraction", "0.3",
            "--model.backbone", "test_resnet",
            "--model.pretrained", "false",
            "--model.freeze", "full",
            "--trainer.max_epochs", "2",
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(root / "run"),
        ],
        run=False,
    )  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    best = cli.trainer.checkpoint_callback.best_model_path
    best = best or str(root / "run" / "checkpoints" / "last.ckpt")
    return {"checkpoint": Path(best), "manifest": data.labels_csv, "root": root}


@pytest.fixture(scope="module")
def evaluated(trained: dict[str, Path]) -> tuple[dict, Path]:
    out = trained["root"] / "eval"
    metrics = evaluate(
        trained["checkpoint"], trained["manifest"], out, n_boot=N_BOOT, seed=0,
        by=["view", "patient_sex"],
    )  # fmt: skip
    return metrics, out


def _intervals(node, path=""):
    """Every {"value", "ci_low", "ci_high"} entry in a nested metrics dict."""
    if isinstance(node, dict):
        if {"value", "ci_low", "ci_high"} <= set(node):
            yield path, node
        for key, value in node.items():
            yield from _intervals(value, f"{path}.{key}")


def test_outputs_are_written(evaluated: tuple[dict, Path]) -> None:
    _, out = evaluated
    names = {p.name for p in out.iterdir()}
    assert {"predictions.csv", "metrics.json", "skipped_files.csv", "report.html"} <= names
    assert {"roc.png", "pr.png", "reliability.png", "confusion.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")], "a temporary file was left behind"
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_json_structure(evaluated: tuple[dict, Path]) -> None:
    metrics, out = evaluated
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["auroc"]["per_class"].keys() == {"abnormal"}
    for metric in ("auroc", "average_precision"):
        for entry in (on_disk[metric]["macro"], on_disk[metric]["per_class"]["abnormal"]):
            assert {"value", "ci_low", "ci_high", "n_boot_valid"} <= set(entry)
    point = on_disk["at_operating_point"]["abnormal"]
    for rate in ("sensitivity", "specificity", "ppv", "npv"):
        assert {"value", "ci_low", "ci_high"} <= set(point[rate])
    assert {"ece", "brier"} <= set(on_disk["calibration"]["abnormal"])
    assert on_disk["n_images"] == len(pd.read_csv(out / "predictions.csv"))
    assert on_disk["n_patients"] <= on_disk["n_images"]
    assert on_disk["skipped_files"]["csv"] == "skipped_files.csv"
    skipped = pd.read_csv(out / "skipped_files.csv")
    assert on_disk["skipped_files"]["count"] == len(skipped)
    assert on_disk["data"]["n_images_manifest"] == on_disk["n_images"] + len(skipped)
    assert on_disk["bootstrap"] == {
        "n": N_BOOT, "seed": 0, "ci": 0.95, "unit": "patient", "method": "percentile"
    }  # fmt: skip
    assert "not for diagnosis" in on_disk["notice"]
    assert metrics["auroc"]["macro"]["value"] == pytest.approx(
        on_disk["auroc"]["macro"]["value"], nan_ok=True
    )


def test_intervals_are_ordered(evaluated: tuple[dict, Path]) -> None:
    metrics, _ = evaluated
    checked = 0
    for path, entry in _intervals(metrics):
        values = [entry["value"], entry["ci_low"], entry["ci_high"]]
        if any(v is None or not math.isfinite(v) for v in values):
            continue
        assert entry["ci_low"] <= entry["ci_high"], path
        assert entry["ci_low"] - 1e-12 <= entry["value"] <= entry["ci_high"] + 1e-12, path
        checked += 1
    assert checked >= 10


def test_calls_use_the_operating_point_stored_in_the_checkpoint(
    trained: dict[str, Path], evaluated: tuple[dict, Path]
) -> None:
    metrics, out = evaluated
    stored = load_classifier(trained["checkpoint"]).thresholds["abnormal"]
    table = pd.read_csv(out / "predictions.csv")
    np.testing.assert_array_equal(
        table["call_abnormal"], (table["prob_abnormal"] >= stored).astype(int)
    )
    assert metrics["at_operating_point"]["abnormal"]["threshold"] == pytest.approx(stored)
    assert metrics["operating_points"]["abnormal"]["applied_threshold"] == pytest.approx(stored)


def test_threshold_source_says_default_when_the_checkpoint_stores_none(
    trained: dict[str, Path], evaluated: tuple[dict, Path], tmp_path: Path
) -> None:
    """docs/statistics.md: a finding without a stored threshold uses 0.5 and says `default`."""
    metrics, _ = evaluated
    assert metrics["at_operating_point"]["abnormal"]["threshold_source"] == "given"
    checkpoint = torch.load(trained["checkpoint"], map_location="cpu", weights_only=True)
    checkpoint["medft"].pop("operating_points", None)
    bare = tmp_path / "no-threshold.ckpt"
    torch.save(checkpoint, bare)
    plain = evaluate(bare, trained["manifest"], tmp_path / "eval", n_boot=20, seed=0)
    entry = plain["at_operating_point"]["abnormal"]
    assert entry["threshold"] == pytest.approx(0.5)
    assert entry["threshold_source"] == "default"


def test_numbers_match_a_recomputation_from_predictions_csv(evaluated: tuple[dict, Path]) -> None:
    metrics, out = evaluated
    table = pd.read_csv(out / "predictions.csv", dtype={"patient_key": str})
    threshold = metrics["at_operating_point"]["abnormal"]["threshold"]
    again = summarize(
        table[["abnormal"]].to_numpy(), table[["prob_abnormal"]].to_numpy(), ["abnormal"],
        table["patient_key"].to_numpy(), thresholds={"abnormal": threshold}, n_boot=N_BOOT, seed=0,
    )  # fmt: skip
    assert again["auroc"]["per_class"]["abnormal"] == pytest.approx(
        metrics["auroc"]["per_class"]["abnormal"], nan_ok=True
    )
    got = metrics["at_operating_point"]["abnormal"]["sensitivity"]
    assert again["at_operating_point"]["abnormal"]["sensitivity"] == pytest.approx(got, nan_ok=True)


def test_no_raw_patient_ids_in_any_output(
    trained: dict[str, Path], evaluated: tuple[dict, Path]
) -> None:
    """Patients appear by salted key only (image paths are written as the manifest gives them:
    synthetic data stores images under a folder per patient ID, so paths are blanked first)."""
    _, out = evaluated
    manifest = pd.read_csv(trained["manifest"])
    raw_ids = set(manifest["patient_id"].astype(str))
    paths = [str(trained["manifest"].parent / p) for p in manifest["path"]]
    assert "patient_id" not in pd.read_csv(out / "predictions.csv").columns
    for path in out.iterdir():
        text = path.read_bytes().decode("latin-1")
        for image_path in paths:
            text = text.replace(image_path, "")
        found = [pid for pid in raw_ids if pid in text]
        assert not found, f"{path.name} contains raw patient IDs {found[:3]}"


def test_subgroups_are_reported(evaluated: tuple[dict, Path]) -> None:
    metrics, _ = evaluated
    by = metrics["subgroups"]["by"]
    assert set(by) == {"view", "patient_sex"}
    for groups in by["view"]["abnormal"].values():
        assert {"n_images", "n_patients", "auroc", "sensitivity", "specificity"} <= set(groups)
    total = sum(g["n_images"] for g in by["view"]["abnormal"].values())
    assert total == metrics["counts"]["abnormal"]["n_known"]


def test_temperature_before_and_after(trained: dict[str, Path], evaluated: tuple[dict, Path]):
    metrics, _ = evaluated
    stored = load_classifier(trained["checkpoint"]).temperature
    scaling = metrics["temperature_scaling"]
    if stored is None:
        assert scaling is None
        return
    assert scaling["temperature"] == pytest.approx(stored)
    assert scaling["applied"] is False
    entry = scaling["per_class"]["abnormal"]
    assert entry["ece_before"] == pytest.approx(metrics["calibration"]["abnormal"]["ece"])
    assert {"ece_after", "brier_before", "brier_after"} <= set(entry)


def test_patient_level_aggregation(trained: dict[str, Path], tmp_path: Path) -> None:
    metrics = evaluate(
        trained["checkpoint"], trained["manifest"], tmp_path, n_boot=50, aggregate="patient",
        how="mean",
    )  # fmt: skip
    table = pd.read_csv(tmp_path / "predictions.csv", dtype={"patient_key": str})
    assert metrics["level"] == "patient"
    assert metrics["n_images"] == table["patient_key"].nunique()
    assert metrics["bootstrap"]["unit"] == "image"  # one row per patient: rows are patients
    y, p, groups = analysis_arrays(table, ["abnormal"], level="patient", how="mean")
    assert groups is None and len(y) == metrics["n_images"]
    np.testing.assert_allclose(
        np.sort(p[:, 0]), np.sort(table.groupby("patient_key")["prob_abnormal"].mean())
    )


def test_study_level_needs_a_study_column(evaluated: tuple[dict, Path]) -> None:
    _, out = evaluated
    table = pd.read_csv(out / "predictions.csv", dtype={"patient_key": str})
    with pytest.raises(ConfigError, match="study_id"):
        table_metrics(table, ["abnormal"], {"abnormal": 0.5}, n_boot=0, level="study")


def test_skipped_files_are_counted(trained: dict[str, Path], tmp_path: Path) -> None:
    """Issue 9: a corrupt and a missing file are skipped, listed and counted in metrics.json."""
    table = pd.read_csv(trained["manifest"])
    root = trained["manifest"].parent
    table["path"] = [str(root / p) for p in table["path"]]
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(b"DICM" + bytes(300))
    extra = table.iloc[[0, 1]].copy()
    extra["path"] = [str(corrupt), str(tmp_path / "gone.dcm")]
    manifest = tmp_path / "labels.csv"
    pd.concat([table, extra]).to_csv(manifest, index=False)
    clean = evaluate(trained["checkpoint"], trained["manifest"], tmp_path / "clean", n_boot=0)
    metrics = evaluate(trained["checkpoint"], manifest, tmp_path / "out", n_boot=0)
    assert metrics["skipped_files"]["count"] == clean["skipped_files"]["count"] + 2
    listed = pd.read_csv(tmp_path / "out" / "skipped_files.csv")
    assert {"corrupt.dcm", "gone.dcm"} <= {Path(p).name for p in listed["path"]}
    assert listed["reason"].str.len().gt(0).all()
    assert metrics["n_images"] == clean["n_images"]
    assert any("could not be read" in w for w in metrics["warnings"])


def test_cli_evaluate(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "evaluate", "--checkpoint", str(trained["checkpoint"]),
            "--input", str(trained["manifest"]), "--out", str(tmp_path), "--n-boot", "20",
            "--by", "view",
        ]
    )  # fmt: skip
    assert code == 0
    assert "AUROC" in capsys.readouterr().out
    assert (tmp_path / "report.html").is_file()
    assert "view" in json.loads((tmp_path / "metrics.json").read_text())["subgroups"]["by"]


def test_cli_reports_a_bad_checkpoint_without_traceback(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.ckpt"
    shutil.copy(trained["manifest"], bad)
    code = main(
        ["evaluate", "--checkpoint", str(bad), "--input", str(trained["manifest"]),
         "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 2
    assert "bad.ckpt" in capsys.readouterr().err


def test_study_level_scores_studies_and_resamples_patients() -> None:
    table = pd.DataFrame(
        {
            "patient_key": ["a", "a", "a", "b", "b", "c"],
            "study_key": ["s1", "s1", "s2", "s3", "s3", "s4"],
            "abnormal": [1.0, 0.0, 0.0, 1.0, 1.0, 0.0],
            "prob_abnormal": [0.9, 0.2, 0.3, 0.4, 0.6, 0.1],
            "call_abnormal": [1, 0, 0, 0, 1, 0],
        }
    )
    y, p, groups = analysis_arrays(table, ["abnormal"], level="study", how="max")
    np.testing.assert_array_equal(y[:, 0], [1.0, 0.0, 1.0, 0.0])  # s1 s2 s3 s4
    np.testing.assert_allclose(p[:, 0], [0.9, 0.3, 0.6, 0.1])
    np.testing.assert_array_equal(groups, ["a", "a", "b", "c"])
    metrics = table_metrics(table, ["abnormal"], {"abnormal": 0.5}, n_boot=20, level="study")
    assert metrics["n_images"] == 4 and metrics["n_patients"] == 3
    assert metrics["auroc"]["per_class"]["abnormal"]["value"] == pytest.approx(1.0)
    assert metrics["aggregation"] == {"level": "study", "how": "max"}
