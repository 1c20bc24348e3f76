"""The `medft` command: dispatch, error handling and its generated reference page."""

from __future__ import annotations

from pathlib import Path

import pytest

from medft.cli import main
from medft.cli_docs import render

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_page_matches_the_parser() -> None:
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert page == render(), "docs/cli.md is stale: run `python -m medft.cli_docs > docs/cli.md`"


def test_medft_error_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("path,patient_id,abnormal\nmissing.dcm,,2\n")
    code = main(["data", "check", "--input", str(bad)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("medft: error:") and "Traceback" not in err


def test_synth_then_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["synth", "--out", str(tmp_path / "s"), "--n-patients", "6", "--size", "64"]) == 0
    assert main(["data", "check", "--input", str(tmp_path / "s" / "labels.csv")]) == 0
    out = capsys.readouterr().out
    assert "6" in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 0
    assert "synth" in capsys.readouterr().out


def test_fit_config_error_names_the_key(
    tmp_path: Path, tiny_dataset: Path, fit_args, capsys: pytest.CaptureFixture
) -> None:
    args = fit_args(tiny_dataset, tmp_path, "--model.freeze", "sometimes")
    assert main(["fit", *args]) == 2
    err = capsys.readouterr().err
    assert "model.freeze" in err and "linear_probe" in err
    assert "usage:" not in err  # one line naming the key, not LightningCLI's 100-line usage
    assert "medft: error:" in err
