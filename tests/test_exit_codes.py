"""Every command follows one exit-status table (docs/reference/running.md#exit-status).

0 ok; 1 a check found problems; 2 usage or configuration error; 130 interrupted (Ctrl-C);
143 terminated (SIGTERM).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medft.cli import main


def status(argv: list[str]) -> int:
    """What the console script would exit with (argparse exits through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    "argv",
    [
        ["synth"],
        ["data", "check"],
        ["data", "audit"],
        ["data", "import", "nih"],
        ["evaluate", "--input", "m.csv"],
        ["explain", "--input", "x"],
        ["predict", "--input", "x"],
        ["export", "--out", "x.onnx"],
        ["send", "folder"],
        ["bench"],
        ["cv"],
        ["cv", "compare", "only-one"],
        ["nonsense"],
        ["data"],
        ["synth", "--out", "x", "--n-patients", "many"],
        ["fit", "--no-such-option", "1"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert status(argv) == 2
    assert capsys.readouterr().err  # and say why on stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "check", "--input", "no/such.csv"],
        ["evaluate", "--checkpoint", "none.ckpt", "--input", "m.csv", "--out", "{tmp}/e"],
        ["explain", "--checkpoint", "none.ckpt", "--input", "x", "--out", "{tmp}/x"],
        ["synth", "--out", "{tmp}/s", "--n-patients", "0"],
        ["bench", "--out", "{tmp}/b", "--only", "nosuch"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_configuration_errors_exit_2_in_one_line(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert status([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("medft: error:") and "Traceback" not in "\n".join(err)


def test_an_endless_fit_is_a_configuration_error(
    tmp_path: Path, tiny_dataset: Path, fit_args, capsys: pytest.CaptureFixture
) -> None:
    """max_epochs -1 died with OverflowError (exit 1, a traceback); now exit 2, one line."""
    argv = ["fit", *fit_args(tiny_dataset, tmp_path / "run", "--trainer.max_epochs", "-1")]
    assert status(argv) == 2
    assert "trainer.max_epochs" in capsys.readouterr().err


def test_a_check_that_finds_problems_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert status(["synth", "--out", str(tmp_path), "--n-patients", "4", "--size", "64"]) == 0
    broken = next(tmp_path.rglob("*.dcm"))
    broken.write_bytes(b"not a dicom file")
    manifest = str(tmp_path / "labels.csv")
    assert status(["data", "check", "--input", manifest, "--workers", "1"]) == 1
    assert "failed 1" in capsys.readouterr().out


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import functools

    import medft.data.check

    @functools.wraps(medft.data.check.check_manifest)  # the command reads its options from it
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(medft.data.check, "check_manifest", interrupted)
    assert status(["data", "check", "--input", "any.csv"]) == 130
    assert "interrupted" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sigterm_exits_143(tmp_path: Path) -> None:
    medft = Path(sys.executable).parent / "medft"
    command = [str(medft), "synth", "--out", str(tmp_path), "--n-patients", "20000", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (tmp_path / "images").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # wait until it is working, not still importing
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    assert code in (-signal.SIGTERM, 143)  # killed by the signal: a shell reports 128 + 15
