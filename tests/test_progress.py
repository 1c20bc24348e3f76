"""Progress of long commands: plain lines through a pipe, a bar on a terminal, none when quiet."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medft import progress as progress_module
from medft.cli import main
from medft.progress import Progress, is_quiet, set_quiet, track


@pytest.fixture(autouse=True)
def _not_quiet(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MEDFT_QUIET", raising=False)
    set_quiet(False)
    yield
    set_quiet(False)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", fake)
    return fake


def test_lines_every_five_percent_with_counts_rate_and_eta(clock: _Clock) -> None:
    out = io.StringIO()
    with Progress("reading", total=200, unit="files", stream=out) as bar:
        for _ in range(200):
            clock.now += 0.5  # 2 files/s
            bar.advance()
    lines = out.getvalue().splitlines()
    assert lines[0] == "medft: reading: 0/200 files (0%), 0.0 files/s"
    assert lines[1] == "medft: reading: 10/200 files (5%), 2.0 files/s, ETA 0:01:35"
    assert len(lines) == 1 + 19 + 1  # start, 5% ... 95%, the end line
    assert lines[-1] == "medft: reading: 200/200 files (100%), 2.0 files/s, done in 0:01:40"


def test_small_fast_jobs_print_start_and_end_only(clock: _Clock) -> None:
    out = io.StringIO()
    bar = Progress("writing", total=30, stream=out)
    for _ in range(30):
        clock.now += 0.01
        bar.advance()
    bar.close()
    assert len(out.getvalue().splitlines()) == 2


def test_unknown_total_reports_counts_and_a_heartbeat(clock: _Clock) -> None:
    out = io.StringIO()
    with Progress("indexing", unit="files", stream=out) as bar:
        bar.advance(150)  # crosses 100: a line
        clock.now += 61
        bar.advance(1)  # a minute passed: a line
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "medft: indexing: 0 files",
        "medft: indexing: 151 files",
        "medft: indexing: 151 files",
    ]
    assert "ETA" not in out.getvalue()


def test_quiet_silences_by_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    set_quiet(True)
    with Progress("x", total=3, stream=out) as bar:
        bar.advance(3)
    assert out.getvalue() == "" and is_quiet()
    set_quiet(False)
    monkeypatch.setenv("MEDFT_QUIET", "1")
    with Progress("x", total=3, stream=out) as bar:
        bar.advance(3)
    assert out.getvalue() == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_rich_bar_with_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    screen = _Terminal()
    with Progress("reading", total=7, unit="files", stream=screen) as bar:
        assert bar.style == "bar"
        bar.advance(7)
    text = screen.getvalue()
    assert "reading" in text and "7/7" in text and "medft:" not in text


def test_track_counts_every_item(capsys: pytest.CaptureFixture) -> None:
    assert list(track([1, 2, 3], "items")) == [1, 2, 3]
    assert "items: 3/3 items (100%)" in capsys.readouterr().err


# ------------------------------------------------------------------ the commands, in-process


def _progress_lines(err: str, what: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"medft: {what}")]


@pytest.fixture(scope="module")
def synth_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medft.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("p"), 12, size=64, seed=0, workers=1).labels_csv


def _nih_dataset(root: Path) -> Path:
    """A tiny NIH ChestX-ray14 look-alike: the label table and PNGs in sub-folders."""
    rows = ["Image Index,Finding Labels,Patient ID"]
    for i in range(8):
        name = f"{i:08d}_000.png"
        (root / f"images_00{1 + i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(
            root / f"images_00{1 + i % 2}" / name
        )
        rows.append(f"{name},{'Effusion' if i % 2 else 'No Finding'},{i // 2 + 1}")
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize(
    ("command", "what"),
    [
        (["synth", "--out", "{tmp}/s", "--n-patients", "4", "--size", "64"], "synth"),
        (["data", "check", "--input", "{csv}", "--workers", "1"], "data check"),
        (["data", "audit", "--input", "{csv}", "--quick", "--workers", "1"], "data audit"),
        (["data", "import", "nih", "--input", "{folder}", "--out", "{tmp}/m.csv"], "data import"),
    ],
)
def test_long_commands_print_progress_lines_unless_quiet(
    command: list[str],
    what: str,
    synth_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    folder = _nih_dataset(tmp_path / "nih") if what == "data import" else tmp_path
    args = [a.format(tmp=tmp_path, csv=synth_csv, folder=folder) for a in command]
    assert main(args) in (0, 1)
    captured = capsys.readouterr()
    lines = _progress_lines(captured.err, what)
    assert lines and "done in" in lines[-1], captured.err
    assert not _progress_lines(captured.out, what)  # stdout keeps the result only

    set_quiet(False)
    if what in ("synth", "data import"):  # write to a fresh place
        args = [a.format(tmp=tmp_path / "q", csv=synth_csv, folder=folder) for a in command]
    assert main([*args, "--quiet"]) in (0, 1)
    assert not _progress_lines(capsys.readouterr().err, what)


def test_cv_reports_folds_as_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """One line per finished fold (fits are stubbed: only the loop's reporting is tested)."""
    from medft.workflows import cv

    ran: list[object] = []
    monkeypatch.setattr(cv, "prepare", lambda *a, **k: {"repeats": 1, "folds": 3})
    monkeypatch.setattr(cv, "study_config", lambda config, out: config)
    monkeypatch.setattr(cv, "resolved_data", lambda *a, **k: {})
    monkeypatch.setattr(cv, "study_audit", lambda *a, **k: None)
    monkeypatch.setattr(cv, "run_fold", lambda study, out, fid, **k: ran.append(fid))
    monkeypatch.setattr(cv, "missing_folds", lambda out: [cv.FoldId(0, 0)])
    monkeypatch.setattr(cv, "collect_predictions", lambda *a, **k: None)
    monkeypatch.setattr(cv, "read_study", lambda out: {"labels": []})
    monkeypatch.setattr(cv, "fold_metrics", lambda *a: None)
    cv.run("unused.yaml", 3, tmp_path)
    err = capsys.readouterr().err
    assert len(ran) == 3
    assert _progress_lines(err, "cv: 0/3 folds") and _progress_lines(err, "cv: 3/3 folds")


@pytest.mark.parametrize(
    ("command", "what"),
    [
        (["evaluate", "--input", "{csv}", "--out", "{tmp}/e", "--n-boot", "20"], "predicting"),
        (["explain", "--input", "{images}", "--out", "{tmp}/x", "--method", "gradcam"], "explain"),
    ],
    ids=["evaluate", "explain"],
)
def test_model_commands_print_progress_lines_unless_quiet(
    command: list[str],
    what: str,
    tiny_checkpoint: Path,
    synth_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    images = tmp_path / "three"  # explain is slow on CPU: three images show the lines
    images.mkdir()
    for source in sorted((synth_csv.parent / "images").rglob("*.dcm"))[:3]:
        shutil.copy(source, images / f"{source.parent.name}.dcm")
    args = ["--checkpoint", str(tiny_checkpoint)]
    args += [a.format(tmp=tmp_path, csv=synth_csv, images=images) for a in command]
    assert main([args[2], *args[:2], *args[3:]]) == 0
    lines = _progress_lines(capsys.readouterr().err, what)
    count = "3/3" if what == "explain" else "12/12"
    assert lines and f"{count} images (100%)" in lines[-1] and "done in" in lines[-1]
    set_quiet(False)
    quiet = list(args)
    quiet[quiet.index("--out") + 1] += "-quiet"
    assert main([quiet[2], *quiet[:2], *quiet[3:], "--quiet"]) == 0
    assert not _progress_lines(capsys.readouterr().err, what)


# ------------------------------------------------------------------ a real pipe


def test_data_check_through_a_pipe(synth_csv: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MEDFT_QUIET", None)
    cmd = [sys.executable, "-m", "medft.cli", "data", "check", "--input", str(synth_csv)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "medft: data check: reading: 12/12 files (100%)" in done.stderr
    quiet = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 0 and "medft: data check" not in quiet.stderr
    assert quiet.stdout.splitlines()[0] == done.stdout.splitlines()[0]  # the report is kept
