"""Reproducibility: `medft --version` names the stack; every output folder gets run.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medft.cli import main
from medft.provenance import RUN_JSON, write_run_json


def test_version_prints_the_stack(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("medft 0.")
    names = {line.split()[0] for line in lines[1:]}
    assert {"python", "torch", "timm", "lightning", "monai", "pydicom", "cuda"} <= names


def test_write_run_json_makes_options_plain(tmp_path: Path) -> None:
    path = write_run_json(
        tmp_path / "out",
        settings={"out": tmp_path, "by": ("view",), "n": 3},
        config={"model": {"lr": 0.001}},
        argv=["medft", "evaluate", "--out", "out dir"],
    )
    record = json.loads(path.read_text())
    assert record["command"] == "medft evaluate --out 'out dir'"
    assert record["settings"] == {"out": str(tmp_path), "by": ["view"], "n": 3}
    assert record["config"] == {"model": {"lr": 0.001}}
    assert record["software"]["torch"] and "medft_commit" in record["software"]


def test_synth_and_audit_write_run_json(tmp_path: Path) -> None:
    out = tmp_path / "s"
    assert main(["synth", "--out", str(out), "--n-patients", "8", "--size", "64", "--quiet"]) == 0
    record = json.loads((out / RUN_JSON).read_text())
    assert record["command"].startswith("medft synth --out")
    assert record["settings"]["n_patients"] == 8 and record["settings"]["quiet"] is True
    audit = tmp_path / "audit"
    args = ["data", "audit", "--input", str(out / "labels.csv"), "--out", str(audit)]
    assert main([*args, "--quick", "--quiet"]) == 0
    assert json.loads((audit / RUN_JSON).read_text())["settings"]["quick"] is True


def test_fit_writes_run_json_with_the_resolved_config(
    tmp_path: Path, tiny_dataset: Path, fit_args
) -> None:
    run = tmp_path / "run"
    assert main(["fit", *fit_args(tiny_dataset, run, "--trainer.max_epochs", "1")]) == 0
    record = json.loads((run / RUN_JSON).read_text())
    assert record["config"]["model"]["backbone"] == "test_efficientnet"
    assert record["config"]["trainer"]["max_epochs"] == 1
    assert record["config"]["data"]["image_size"] == 64  # resolved, not just what was typed
    assert record["software"]["lightning"]
    assert "cuda_build" in record["accelerator"]
