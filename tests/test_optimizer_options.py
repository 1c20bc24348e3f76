"""LightningCLI's --optimizer and --lr_scheduler would discard medft's optimizer: refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medft.cli import main


@pytest.mark.parametrize(
    "extra",
    [["--optimizer", "SGD"], ["--optimizer.lr=0.1"], ["--lr_scheduler", "StepLR"]],
    ids=["optimizer", "optimizer-key", "lr_scheduler"],
)
def test_replacing_the_optimizer_is_refused_in_one_line(
    extra: list[str], tmp_path: Path, tiny_dataset: Path, fit_args, capsys: pytest.CaptureFixture
) -> None:
    assert main(["fit", *fit_args(tiny_dataset, tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medft: error: --") and "not supported" in err
    assert "\n" not in err and "--model.lr" in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training


def test_an_optimizer_in_a_config_file_is_refused_too(
    tmp_path: Path, tiny_dataset: Path, fit_args, capsys: pytest.CaptureFixture
) -> None:
    extra = tmp_path / "sgd.yaml"
    extra.write_text(yaml.safe_dump({"optimizer": {"class_path": "torch.optim.SGD"}}))
    assert main(["fit", *fit_args(tiny_dataset, tmp_path / "run"), "--config", str(extra)]) == 2
    assert "--optimizer is not supported" in capsys.readouterr().err


def test_fit_help_no_longer_offers_them(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "--model.lr" in text
    assert "--optimizer " not in text and "--lr_scheduler" not in text
