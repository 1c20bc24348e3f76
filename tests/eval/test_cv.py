"""Cross-validation studies: folds before training, aggregation, missing folds, comparison,
a 5-fold study end to end and a SIGKILL mid-fold resumed with --resume (the last two slow)."""

from __future__ import annotations

import html
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from medft.cli import main
from medft.data.splits import check_no_leakage, read_assignment
from medft.errors import ConfigError, DataError
from medft.eval import cv
from medft.eval.metrics import auroc, cluster_bootstrap, rate_at
from medft.workflows import cv as study_runner

LABELS = ["Effusion", "Nodule"]
N_BOOT = 100


# ------------------------------------------------------------- a study without training


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """30 patients with 1-3 images each; the files only need to exist for prepare()."""
    rng = np.random.default_rng(0)
    rows = []
    (tmp_path / "img").mkdir()
    for patient in range(30):
        effusion, nodule = float(patient % 3 == 0), float(patient % 4 == 1)
        for image in range(1 + patient % 3):
            path = tmp_path / "img" / f"P{patient:03d}_{image}.dcm"
            path.write_bytes(b"")
            view = "AP" if rng.random() < 0.4 else "PA"
            rows.append((str(path), f"P{patient:03d}", effusion, nodule, view))
    table = pd.DataFrame(rows, columns=["path", "patient_id", *LABELS, "view"])
    table.to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path / "labels.csv"


def _data(manifest: Path) -> dict:
    """The data section `medft fit` would resolve from _config's YAML."""
    return {"manifest": str(manifest), "labels": LABELS, "uncertain": "ignore"}


def _config(tmp_path: Path, manifest: Path, name: str = "cv.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"data": {"manifest": str(manifest), "labels": LABELS}}))
    return path


def _fake_folds(out: Path, manifest: Path, *, noise: float, seed: int, skip: str | None = None):
    """Write what a finished fold writes, with scores = label + noise (no training)."""
    study = json.loads((out / "study.json").read_text())
    folds = read_assignment(out / "folds.csv")
    truth = pd.read_csv(manifest).set_index("path")
    rng = np.random.default_rng(seed)
    for (repeat, fold), part in folds.groupby(["repeat", "fold"]):
        fid = cv.FoldId(int(repeat), int(fold))
        directory = cv.fold_dir(out, fid, study["repeats"])
        directory.mkdir(parents=True, exist_ok=True)
        own_skip = skip is not None and skip in set(part["path"])
        part = part[part["path"] != skip]
        table = pd.DataFrame({"repeat": repeat, "fold": fold, "path": part["path"].to_numpy(),
                              "patient_key": part["patient_key"].to_numpy()})  # fmt: skip
        thresholds = {}
        for label in LABELS:
            y = truth.loc[table["path"], label].to_numpy()
            table[label] = y
            table[f"prob_{label}"] = np.clip(0.3 * y + noise * rng.random(len(y)), 0, 1)
        for label in LABELS:
            thresholds[label] = 0.3 + 0.05 * fold
            table[f"call_{label}"] = (table[f"prob_{label}"] >= thresholds[label]).astype(int)
        table["view"] = truth.loc[table["path"], "view"].to_numpy()
        table.to_csv(directory / "predictions.csv", index=False)
        skipped = [(skip, "unreadable")] if own_skip else []
        pd.DataFrame(skipped, columns=["path", "reason"]).to_csv(
            directory / cv.TEST_SKIPPED_CSV, index=False
        )
        (directory / cv.DONE).write_text(json.dumps({"thresholds": thresholds}))


@pytest.fixture
def study(tmp_path: Path, manifest: Path) -> Path:
    out = tmp_path / "study_a"
    cv.prepare(
        _config(tmp_path, manifest),
        data=_data(manifest),
        folds=3,
        out=out,
        seed=0,
        by=["view"],
        n_boot=N_BOOT,
    )
    _fake_folds(out, manifest, noise=0.8, seed=1)
    return out


def test_prepare_writes_patient_grouped_folds(tmp_path: Path, manifest: Path) -> None:
    out = tmp_path / "study"
    settings = cv.prepare(
        _config(tmp_path, manifest), data=_data(manifest), folds=3, out=out, repeats=2, seed=4
    )
    folds = read_assignment(out / "folds.csv")
    assert set(folds.columns) == {"path", "patient_key", "repeat", "fold"}
    assert len(folds) == 2 * len(pd.read_csv(manifest))
    assert set(folds["fold"]) == {0, 1, 2}
    check_no_leakage(folds, folds[["repeat", "fold"]])  # raises on a patient in two folds
    assert not set(pd.read_csv(manifest)["patient_id"]) & set(folds["patient_key"])
    study = json.loads((out / "study.json").read_text())
    assert study["labels"] == LABELS and study["folds"] == 3 and study["repeats"] == 2
    assert settings["seed"] == 4
    assert cv.missing_folds(out) == [cv.FoldId(r, f) for r in range(2) for f in range(3)]
    assert cv.fold_dir(out, cv.FoldId(1, 2), 2) == out / "repeat_1" / "fold_2"


def test_prepare_is_repeatable_but_refuses_other_settings(tmp_path: Path, manifest: Path):
    config = _config(tmp_path, manifest)
    out = tmp_path / "study"
    cv.prepare(config, data=_data(manifest), folds=3, out=out, seed=0)
    before = (out / "folds.csv").read_bytes()
    cv.prepare(
        config, data=_data(manifest), folds=3, out=out, seed=0
    )  # a second job of the same study
    assert (out / "folds.csv").read_bytes() == before
    with pytest.raises(ConfigError, match="seed"):
        cv.prepare(config, data=_data(manifest), folds=3, out=out, seed=1)
    with pytest.raises(ConfigError, match="folds"):
        cv.prepare(config, data=_data(manifest), folds=4, out=out, seed=0)


def test_prepare_takes_a_dict_config(tmp_path: Path, manifest: Path) -> None:
    out = tmp_path / "study"
    data = {"manifest": str(manifest), "labels": ["Nodule"]}
    cv.prepare({"trainer": {"max_epochs": 1}}, data=data, folds=2, out=out)
    assert yaml.safe_load((out / "config.yaml").read_text()) == {"trainer": {"max_epochs": 1}}
    assert json.loads((out / "study.json").read_text())["labels"] == ["Nodule"]
    with pytest.raises(ConfigError, match=r"data\.manifest"):
        cv.prepare({"trainer": {}}, data={}, folds=2, out=tmp_path / "other")


def test_summary_equals_a_recomputation_from_oof_predictions(study: Path) -> None:
    summary = cv.aggregate(study)
    oof = pd.read_csv(study / "oof_predictions.csv", dtype={"patient_key": str})
    manifest_paths = set(read_assignment(study / "folds.csv")["path"])
    assert sorted(oof["path"]) == sorted(manifest_paths)  # every image exactly once
    for record in summary["folds"]:
        part = oof[oof["fold"] == record["fold"]]
        for label in LABELS:
            expected = roc_auc_score(part[label], part[f"prob_{label}"])
            assert record[f"auroc_{label}"] == pytest.approx(expected, abs=1e-12)
            called = part[f"call_{label}"] == 1
            sensitivity = (called & (part[label] == 1)).sum() / (part[label] == 1).sum()
            assert record[f"sensitivity_{label}"] == pytest.approx(sensitivity)
        per_label = [record[f"auroc_{label}"] for label in LABELS]
        assert record["auroc_macro"] == pytest.approx(np.mean(per_label))
    values = np.array([r["auroc_Effusion"] for r in summary["folds"]])
    assert summary["mean_sd"]["auroc_Effusion"]["mean"] == pytest.approx(values.mean())
    assert summary["mean_sd"]["auroc_Effusion"]["sd"] == pytest.approx(values.std(ddof=1))

    pooled = summary["pooled"]["repeat_0"]
    for label in LABELS:
        ci = cluster_bootstrap(oof[label], oof[f"prob_{label}"], oof["patient_key"], auroc,
                               n=N_BOOT, seed=0)  # fmt: skip
        entry = pooled["auroc"]["per_class"][label]
        assert entry["value"] == pytest.approx(roc_auc_score(oof[label], oof[f"prob_{label}"]))
        assert (entry["ci_low"], entry["ci_high"]) == pytest.approx((ci.ci_low, ci.ci_high))
        sens = cluster_bootstrap(oof[label], oof[f"call_{label}"], oof["patient_key"],
                                 rate_at("sensitivity", 0.5), n=N_BOOT, seed=0)  # fmt: skip
        got = pooled["at_operating_point"][label]["sensitivity"]
        assert (got["value"], got["ci_low"], got["ci_high"]) == pytest.approx(
            (sens.value, sens.ci_low, sens.ci_high)
        )
    on_disk = json.loads((study / "summary.json").read_text())
    assert on_disk["pooled"]["repeat_0"]["auroc"]["macro"]["value"] == pytest.approx(
        pooled["auroc"]["macro"]["value"]
    )
    assert set(on_disk["subgroups"]["by"]["view"]["Effusion"]) == {"AP", "PA"}
    page = (study / "report.html").read_text()
    assert "repeat 0 fold 2" in page and "data:image/png;base64," in page


def test_a_real_subgroup_gap_is_a_summary_warning(study: Path) -> None:
    assert not [w for w in cv.aggregate(study)["warnings"] if w.startswith("Subgroup gap")]
    # Plant a gap: perfect ranking on PA images, reversed ranking on AP images.
    for predictions in study.glob("**/predictions.csv"):
        table = pd.read_csv(predictions)
        flip = np.where(table["view"] == "AP", -1.0, 1.0)
        for label in LABELS:
            table[f"prob_{label}"] = 0.5 + 0.3 * flip * (2 * table[label] - 1)
        table.to_csv(predictions, index=False)
    summary = cv.aggregate(study)
    gaps = [w for w in summary["warnings"] if w.startswith("Subgroup gap")]
    assert len(gaps) == len(LABELS)
    assert all("view='PA' and 'AP'" in w and "excludes 0" in w for w in gaps)
    assert html.escape(gaps[0]) in (study / "report.html").read_text()


def test_aggregate_names_missing_folds(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (cv.fold_dir(study, cv.FoldId(0, 1), 1) / cv.DONE).unlink()
    assert cv.missing_folds(study) == [cv.FoldId(0, 1)]
    with pytest.raises(cv.IncompleteStudyError, match="fold 1") as info:
        cv.aggregate(study)
    assert "fold 0" not in str(info.value) and "--fold I --resume" in str(info.value)
    assert main(["cv", "aggregate", str(study)]) == 2
    assert "repeat 0 fold 1" in capsys.readouterr().err
    assert not (study / "summary.json").exists()


def test_aggregate_counts_skipped_files(tmp_path: Path, manifest: Path) -> None:
    out = tmp_path / "study"
    cv.prepare(_config(tmp_path, manifest), data=_data(manifest), folds=3, out=out, n_boot=20)
    bad = pd.read_csv(manifest)["path"].iloc[4]
    _fake_folds(out, manifest, noise=0.8, seed=1, skip=bad)
    summary = cv.aggregate(out)
    assert summary["skipped_files"]["count"] == 1
    assert summary["data"]["n_images"] == len(pd.read_csv(manifest)) - 1
    assert any("could not be read" in w for w in summary["warnings"])


def test_study_audit_runs_once_and_its_warning_reaches_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medft.data.synth import synthesize

    data = synthesize(tmp_path / "data", 120, size=64, seed=0, shortcut="manufacturer")
    config = tmp_path / "cv.yaml"
    config.write_text(yaml.safe_dump({"data": {"manifest": str(data.labels_csv),
                                               "labels": ["abnormal"]}}))  # fmt: skip
    out = tmp_path / "study"
    section = {"manifest": str(data.labels_csv), "labels": ["abnormal"]}
    cv.prepare(config, data=section, folds=3, out=out, seed=0, n_boot=N_BOOT)
    said: list[str] = []
    warning = cv.study_audit(out, say=said.append)
    assert warning and "manufacturer" in warning
    assert (out / cv.AUDIT_DIR / "audit.json").is_file() and "manufacturer" in said[0]

    def no_second_audit(*args, **kwargs):
        raise AssertionError("the study audit ran twice")

    monkeypatch.setattr("medft.eval.study.audit_manifest", no_second_audit)
    assert cv.study_audit(out, say=said.append) == warning  # read back, not recomputed
    assert study_runner._fold_args(cv.read_study(out), out, cv.FoldId(0, 0), out / "f")[2:4] == [
        "--data.audit", "false"
    ]  # fmt: skip


def test_aggregate_repeats_the_study_audit_warning(study: Path) -> None:
    assert "audit" not in cv.aggregate(study, n_boot=N_BOOT)
    (study / cv.AUDIT_DIR).mkdir()
    (study / cv.AUDIT_DIR / "audit.json").write_text(json.dumps({"warning": "rows predict it"}))
    summary = cv.aggregate(study, n_boot=N_BOOT)
    assert summary["audit"]["warning"] == "rows predict it"
    assert "Shortcut audit: rows predict it" in summary["warnings"]
    assert "rows predict it" in (study / cv.REPORT_HTML).read_text()


def test_aggregate_refuses_an_image_predicted_twice(study: Path) -> None:
    first = cv.fold_dir(study, cv.FoldId(0, 0), 1) / "predictions.csv"
    second = cv.fold_dir(study, cv.FoldId(0, 1), 1) / "predictions.csv"
    twice = pd.concat([pd.read_csv(second), pd.read_csv(first).head(1).assign(fold=1)])
    twice.to_csv(second, index=False)
    with pytest.raises(DataError, match="predicted twice"):
        cv.aggregate(study)


def test_compare_is_paired_on_the_same_folds(
    tmp_path: Path, manifest: Path, study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "study_b"
    cv.prepare(
        _config(tmp_path, manifest, "b.yaml"),
        data=_data(manifest),
        folds=3,
        out=other,
        seed=0,
        n_boot=N_BOOT,
    )
    _fake_folds(other, manifest, noise=1.5, seed=2)
    result = cv.compare(study, other, n_boot=N_BOOT, seed=0)
    folds_a = cv.fold_metrics(pd.read_csv(study / "fold_0/predictions.csv"), LABELS)
    row = result["per_fold"][0]
    assert row["auroc_Effusion_a"] == pytest.approx(folds_a["auroc_Effusion"].iloc[0])
    assert row["auroc_Effusion_diff"] == pytest.approx(
        row["auroc_Effusion_a"] - row["auroc_Effusion_b"]
    )
    pooled = result["pooled"]["repeat_0"]
    assert pooled["n_images"] == len(pd.read_csv(manifest))
    for label in LABELS:
        boot, delong = pooled[label]["paired_bootstrap"], pooled[label]["delong"]
        assert boot["difference"] == pytest.approx(boot["value_a"] - boot["value_b"])
        assert boot["ci_low"] <= boot["difference"] <= boot["ci_high"]
        assert 0.0 < boot["p_value"] <= 1.0 and 0.0 <= delong["p_value"] <= 1.0
        assert delong["difference"] == pytest.approx(boot["difference"])
    # the noisier model B loses clearly on this data
    assert pooled["Effusion"]["paired_bootstrap"]["difference"] > 0

    folder = tmp_path / "comparison"  # --out is a folder; a .json path names the file itself
    assert (
        main(["cv", "compare", str(study), str(other), "--out", str(folder), "--n-boot", "50"]) == 0
    )
    assert "DeLong" in capsys.readouterr().out
    assert json.loads((folder / "compare.json").read_text())["labels"] == LABELS
    named = tmp_path / "named.json"
    assert (
        main(["cv", "compare", str(study), str(other), "--out", str(named), "--n-boot", "20"]) == 0
    )
    assert json.loads(named.read_text())["labels"] == LABELS


def test_compare_refuses_different_folds(tmp_path: Path, manifest: Path, study: Path) -> None:
    other = tmp_path / "study_c"
    cv.prepare(
        _config(tmp_path, manifest, "c.yaml"), data=_data(manifest), folds=3, out=other, seed=7
    )
    _fake_folds(other, manifest, noise=1.0, seed=3)
    with pytest.raises(ConfigError, match="same folds"):
        cv.compare(study, other)


def test_run_refuses_a_fold_out_of_range(tmp_path: Path, manifest: Path) -> None:
    with pytest.raises(ConfigError, match="--fold 5"):
        study_runner.run(
            _config(tmp_path, manifest), folds=3, out=tmp_path / "s", fold=5, quiet=True
        )


def test_interrupted_fold_needs_resume(tmp_path: Path, manifest: Path) -> None:
    out = tmp_path / "s"
    cv.prepare(_config(tmp_path, manifest), data=_data(manifest), folds=3, out=out)
    partial = cv.fold_dir(out, cv.FoldId(0, 0), 1)
    partial.mkdir()
    (partial / "splits.csv").write_text("path\n")
    with pytest.raises(ConfigError, match="--resume"):
        study_runner.run(_config(tmp_path, manifest), folds=3, out=out, fold=0, quiet=True)


def test_cli_cv_needs_config_and_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cv", "--folds", "3"]) == 2
    assert "--config" in capsys.readouterr().err


# ------------------------------------------------------------------ with training (slow)


def _training_config(tmp_path: Path, n_patients: int, epochs: int) -> Path:
    from medft.data.synth import synthesize

    data = synthesize(tmp_path / "data", n_patients, images_per_patient=2, size=64, seed=11,
                      workers=1)  # fmt: skip
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": epochs, "accelerator": "cpu", "devices": 1,
                    "deterministic": True, "enable_progress_bar": False,
                    "enable_model_summary": False, "log_every_n_steps": 1},
        "model": {"backbone": "test_resnet", "pretrained": False, "freeze": "full",
                  "drop_rate": 0.0, "lr": 0.003},
        "data": {"manifest": str(data.labels_csv), "labels": ["abnormal"], "image_size": 64,
                 "batch_size": 8, "num_workers": 0, "cache": "memory", "val_fraction": 0.2},
    }  # fmt: skip
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_five_fold_study_end_to_end(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    config = _training_config(tmp_path, 20, epochs=1)
    out = tmp_path / "study"
    table = study_runner.run(config, folds=5, out=out, n_boot=N_BOOT, by=["view"], quiet=True)
    assert list(table["fold"]) == [0, 1, 2, 3, 4]
    summary = json.loads((out / "summary.json").read_text())
    oof = pd.read_csv(out / "oof_predictions.csv", dtype={"patient_key": str})
    skipped = sum(len(pd.read_csv(out / f"fold_{f}" / cv.TEST_SKIPPED_CSV)) for f in range(5))
    assert len(oof) + skipped == 40 and oof["path"].is_unique
    assert summary["skipped_files"]["count"] == skipped
    for record in summary["folds"]:
        part = oof[oof["fold"] == record["fold"]]
        assert record["auroc_abnormal"] == pytest.approx(
            roc_auc_score(part["abnormal"], part["prob_abnormal"])
        )
    assert table["auroc_abnormal"].tolist() == pytest.approx(
        [r["auroc_abnormal"] for r in summary["folds"]]
    )
    pooled = summary["pooled"]["repeat_0"]["auroc"]["per_class"]["abnormal"]
    ci = cluster_bootstrap(oof["abnormal"], oof["prob_abnormal"], oof["patient_key"], auroc,
                           n=N_BOOT, seed=0)  # fmt: skip
    assert (pooled["value"], pooled["ci_low"], pooled["ci_high"]) == pytest.approx(
        (ci.value, ci.ci_low, ci.ci_high)
    )
    for fold in range(5):
        done = json.loads((out / f"fold_{fold}" / cv.DONE).read_text())
        assert (out / f"fold_{fold}" / done["best_checkpoint"]).is_file()
        assert set(pd.read_csv(out / f"fold_{fold}" / "splits.csv")["split"]) == {
            "train", "val", "test"
        }  # fmt: skip
    assert "view" in summary["subgroups"]["by"]
    assert (out / cv.AUDIT_DIR / "audit.json").is_file()  # once for the study, not per fold
    assert not any((out / f"fold_{fold}" / "audit").exists() for fold in range(5))


@pytest.mark.slow
def test_sigkill_mid_fold_then_resume(tmp_path: Path) -> None:
    """Kill -9 while fold 1 trains; --resume keeps fold 0, resumes fold 1 from last.ckpt, and
    ends with the same out-of-fold predictions as an uninterrupted run (|diff| < 1e-5)."""
    config = _training_config(tmp_path, 18, epochs=3)
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "medft.cli", "cv", "--config", str(config), "--folds", "3",
               "--out", str(out), "--n-boot", "50"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = out / "fold_1" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    try:
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert last.exists(), f"fold 1 never saved a checkpoint: {process.stderr.read()[-2000:]}"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert (out / "fold_0" / cv.DONE).is_file()
    assert not (out / "fold_1" / cv.DONE).exists(), "the kill came too late to be mid-fold"
    assert not (out / "summary.json").exists()
    fold0 = (out / "fold_0" / cv.DONE).read_text()
    fold0_predictions = (out / "fold_0" / "predictions.csv").stat().st_mtime_ns

    with pytest.raises(ConfigError, match="--resume"):
        study_runner.run(config, folds=3, out=out, n_boot=50, quiet=True)
    study_runner.run(config, folds=3, out=out, n_boot=50, resume=True, quiet=True)
    assert (out / "fold_0" / cv.DONE).read_text() == fold0  # kept, not repeated
    assert (out / "fold_0" / "predictions.csv").stat().st_mtime_ns == fold0_predictions
    resumed = json.loads((out / "fold_1" / cv.DONE).read_text())
    if resumed["resumed_from"] is None:  # killed while last.ckpt was half written
        assert not study_runner.readable_checkpoint(last) or resumed["epochs"] == 3
    else:
        assert resumed["resumed_from"] == "checkpoints/last.ckpt"
    oof = pd.read_csv(out / "oof_predictions.csv")
    assert oof["path"].is_unique and set(oof["fold"]) == {0, 1, 2}

    reference = tmp_path / "uninterrupted"
    study_runner.run(config, folds=3, out=reference, n_boot=50, quiet=True)
    expected = pd.read_csv(reference / "oof_predictions.csv")
    merged = oof.merge(expected, on="path", suffixes=("", "_ref"))
    assert len(merged) == len(oof) == len(expected)
    np.testing.assert_allclose(merged["prob_abnormal"], merged["prob_abnormal_ref"], atol=1e-5)
    got = json.loads((out / "summary.json").read_text())["pooled"]["repeat_0"]["auroc"]["macro"]
    ref = json.loads((reference / "summary.json").read_text())["pooled"]["repeat_0"]["auroc"]
    assert got["value"] == pytest.approx(ref["macro"]["value"], abs=1e-6)
