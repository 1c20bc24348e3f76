"""Hardening round two (issue 18): attacks and faults a careless user or an attacker tries.

Each test here reproduces one numbered item of the issue and failed before its fix; the
table in docs/reliability.md maps each to what medft does.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from medft.cli import main
from medft.errors import CheckpointError

# ------------------------------------------------------------ 1. checkpoints from URLs


class _Payload:
    """Unpickling this touches ``marker``: a stand-in for arbitrary code."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _crafted_checkpoint(folder: Path, marker: Path) -> Path:
    """A file shaped like a Lightning checkpoint whose unpickling runs code."""
    _Payload.marker = str(marker)
    path = folder / "evil.ckpt"
    import torch

    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": _Payload()}, path)
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep stderr for medft's own message
        pass


@contextlib.contextmanager
def _serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1 (a free port); yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def crafted(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """(URL of a crafted checkpoint, the same file locally, the marker it would create)."""
    marker = tmp_path / "code-ran"
    served = tmp_path / "served"
    served.mkdir()
    local = _crafted_checkpoint(served, marker)
    with _serve(served) as base:
        yield f"{base}/evil.ckpt", local, marker


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test"])
@pytest.mark.parametrize("opt_in", [False, True], ids=["refused", "opted-in"])
def test_ckpt_path_url_never_runs_code(
    subcommand: str,
    opt_in: bool,
    crafted: tuple[str, Path, Path],
    tiny_dataset: Path,
    fit_args,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _, marker = crafted
    if opt_in:
        monkeypatch.setenv("MEDFT_ALLOW_REMOTE_CHECKPOINTS", "1")
    else:
        monkeypatch.delenv("MEDFT_ALLOW_REMOTE_CHECKPOINTS", raising=False)
    args = [subcommand, *fit_args(tiny_dataset, tmp_path / "run"), "--ckpt_path", url]
    assert main(args) == 2
    assert not marker.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "evil.ckpt" in err[0]
    assert ("refused to load a checkpoint from a URL" in err[0]) != opt_in
    if opt_in:
        assert "could run code" in err[0]


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test"])
def test_crafted_local_ckpt_path_is_one_clear_line(
    subcommand: str,
    crafted: tuple[str, Path, Path],
    tiny_dataset: Path,
    fit_args,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The resume path (``--ckpt_path last.ckpt``) with a crafted file: refused, no traceback."""
    _, local, marker = crafted
    args = [subcommand, *fit_args(tiny_dataset, tmp_path / "run"), "--ckpt_path", str(local)]
    assert main(args) == 2
    assert not marker.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could run code" in err[0] and "Traceback" not in err[0], err


def test_text_file_as_checkpoint_is_not_called_dangerous(
    tiny_dataset: Path, fit_args, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint at all\n")
    assert main(["fit", *fit_args(tiny_dataset, tmp_path / "run"), "--ckpt_path", str(text)]) == 2
    err = capsys.readouterr().err
    assert "not a PyTorch checkpoint" in err and "could run code" not in err


def test_weights_only_false_is_refused(
    tiny_dataset: Path, fit_args, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["validate", *fit_args(tiny_dataset, tmp_path / "run"), "--weights_only", "false"]
    assert main(args) == 2
    assert "weights_only=false is not allowed" in capsys.readouterr().err


@pytest.mark.parametrize("opt_in", [False, True], ids=["refused", "opted-in"])
@pytest.mark.parametrize("command", ["evaluate", "predict", "explain", "export", "demo"])
def test_checkpoint_option_url_never_runs_code(
    command: str,
    opt_in: bool,
    crafted: tuple[str, Path, Path],
    tiny_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _, marker = crafted
    if opt_in:
        monkeypatch.setenv("MEDFT_ALLOW_REMOTE_CHECKPOINTS", "1")
    else:
        monkeypatch.delenv("MEDFT_ALLOW_REMOTE_CHECKPOINTS", raising=False)
    out = str(tmp_path / "out")
    argv = {
        "evaluate": ["evaluate", "--checkpoint", url, "--input", str(tiny_dataset)],
        "predict": ["predict", "--checkpoint", url, "--input", str(tiny_dataset)],
        "explain": ["explain", "--checkpoint", url, "--input", str(tiny_dataset.parent)],
        "export": ["export", "--checkpoint", url],
        "demo": ["demo", "--checkpoint", url, "--port", "0"],
    }[command]
    if command == "export":
        argv += ["--out", str(tmp_path / "model.onnx")]
    elif command != "demo":
        argv += ["--out", out]
    if command == "demo":
        import argparse

        from medft.demo import settings_from_args, start_demo
        from medft.demo.settings import add_demo_arguments

        parser = argparse.ArgumentParser()
        add_demo_arguments(parser)
        with pytest.raises(CheckpointError, match="could run code" if opt_in else "from a URL"):
            start_demo(settings_from_args(parser.parse_args(argv[1:])))
    else:
        assert main(argv) == 2
    assert not marker.exists()


def test_programmatic_trainer_loads_remote_checkpoints_safely(
    crafted: tuple[str, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even a Trainer built by hand (cv builds one) gets the safe checkpoint I/O."""
    from lightning.pytorch import Trainer

    from medft.lightning_cli import make_checkpoint_loading_safe

    url, local, marker = crafted
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    make_checkpoint_loading_safe(trainer)
    with pytest.raises(CheckpointError, match="refused"):
        trainer.strategy.load_checkpoint(url, weights_only=False)
    monkeypatch.setenv("MEDFT_ALLOW_REMOTE_CHECKPOINTS", "1")
    for source in (url, local):
        with pytest.raises(CheckpointError, match="could run code"):
            trainer.strategy.load_checkpoint(source, weights_only=False)
    assert not marker.exists()


def test_cv_resume_gate_and_pretrained_file_refuse_crafted_files(
    crafted: tuple[str, Path, Path],
) -> None:
    from medft.errors import WeightsError
    from medft.model.backbones import create_backbone
    from medft.workflows.cv import readable_checkpoint

    url, local, marker = crafted
    assert readable_checkpoint(local) is False  # cv --resume restarts the fold instead
    for source in (url, local.with_suffix(".pth")):
        if not str(source).startswith("http"):
            local.rename(source)
        with pytest.raises(WeightsError):
            create_backbone(
                "test_efficientnet", num_classes=1, pretrained=True, pretrained_file=str(source)
            )
    assert not marker.exists()


# ------------------------------------------------------------ 2. a typo in a label column


def _manifest_with_typo(folder: Path, typo: str, rows: int = 30) -> Path:
    """A manifest whose 0/1 ``effusion`` column has ``typo`` in row 8 (files are stubs)."""
    folder.mkdir(parents=True)
    lines = ["path,patient_id,abnormal,effusion,site"]
    for i in range(rows):
        (folder / f"{i}.dcm").write_bytes(b"stub")
        effusion = typo if i == 7 else str(i % 2)
        lines.append(f"{i}.dcm,P{i},{(i // 2) % 2},{effusion},{i % 3}")
    labels = folder / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    return labels


@pytest.mark.parametrize("typo", ["yes", "2"])
def test_stray_value_in_an_inferred_label_column_names_row_and_column(
    typo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medft.data.manifest import load_manifest
    from medft.errors import DataError

    labels = _manifest_with_typo(tmp_path / "data", typo)
    with pytest.raises(DataError) as caught:
        load_manifest(labels)
    message = str(caught.value)
    assert f"row 8 (line 9), column 'effusion': '{typo}' is not a label value" in message
    assert "site" not in message  # an evenly spread 0/1/2 column stays metadata
    assert main(["data", "check", "--input", str(labels)]) == 2
    assert "'effusion'" in capsys.readouterr().err
    # Named labels keep the column as metadata: the user's explicit choice.
    manifest = load_manifest(labels, labels=["abnormal"])
    assert "effusion" not in manifest.labels and "effusion" in manifest.table


# ------------------------------------------------------------ 7. one file, two names


def test_two_rows_naming_one_file_through_a_symlink_are_duplicates(tmp_path: Path) -> None:
    from medft.data.manifest import load_manifest
    from medft.errors import DataError

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.dcm").write_bytes(b"stub")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "y.dcm").write_bytes(b"stub")
    (tmp_path / "alias").symlink_to(tmp_path / "a")  # a linked folder
    (tmp_path / "b" / "z.dcm").symlink_to(tmp_path / "b" / "y.dcm")  # a linked file
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "path,patient_id,abnormal\na/x.dcm,P1,1\nb/y.dcm,P2,0\nalias/x.dcm,P3,0\nb/z.dcm,P4,1\n"
    )
    with pytest.raises(DataError) as caught:
        load_manifest(csv)
    message = str(caught.value)
    assert "row 3 (line 4), column 'path': duplicate of row 1 (line 2)" in message
    assert "row 4 (line 5), column 'path': duplicate of row 2 (line 3)" in message


# ------------------------------------------------------------ 3. unusable --out, found first


@pytest.fixture
def readonly_mount(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs (root only; skipped where mounting is not allowed)."""
    import os
    import subprocess

    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


_DIR_COMMANDS = {
    "synth": ["synth", "--n-patients", "2"],
    "evaluate": ["evaluate", "--checkpoint", "missing.ckpt", "--input", "missing.csv"],
    "explain": ["explain", "--checkpoint", "missing.ckpt", "--input", "missing"],
    "predict": ["predict", "--checkpoint", "missing.ckpt", "--input", "missing"],
    "data audit": ["data", "audit", "--input", "missing.csv"],
    "cv": ["cv", "--config", "missing.yaml"],
    "quickstart": ["quickstart"],
    "bench": ["bench", "--quick"],
    "data import": ["data", "import", "folder", "--input", "missing"],
    "cv compare": ["cv", "compare", "missing_a", "missing_b"],
    "export": ["export", "--checkpoint", "missing.ckpt"],
}
_FILE_COMMANDS = {  # the same commands given their file by name (--out m.csv), as before 0.2
    "data import m.csv": _DIR_COMMANDS["data import"],
    "cv compare c.json": _DIR_COMMANDS["cv compare"],
    "export m.onnx": _DIR_COMMANDS["export"],
}


@pytest.mark.parametrize(
    ("command", "fault"),
    [
        *((c, f) for c in _DIR_COMMANDS for f in ("is-file", "under-a-file", "read-only-mount")),
        # a folder named m.csv is a folder (the file goes inside it), so no "is-file" here
        *((c, f) for c in _FILE_COMMANDS for f in ("under-a-file", "read-only-mount")),
    ],
)
def test_unusable_out_is_one_line_before_any_work(
    command: str, fault: str, tmp_path: Path, request: pytest.FixtureRequest, capsys
) -> None:
    """Inputs are missing on purpose: the --out problem must be reported before them."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    file_name = command.split()[-1] if command in _FILE_COMMANDS else ""
    if fault == "is-file":
        out = a_file
    elif fault == "under-a-file":
        out = a_file / "sub" / file_name
    else:
        out = request.getfixturevalue("readonly_mount") / "sub" / file_name
    argv = {**_DIR_COMMANDS, **_FILE_COMMANDS}[command]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"medft: error: --out {out}"), err[0]
    expected = {"is-file": "is a f", "under-a-file": "is a file", "read-only-mount": "Read-only"}
    assert expected[fault] in err[0]


# ------------------------------------------------------------ 5. permissions and durability


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_outputs_respect_the_umask(umask: int, mode: int, tmp_path: Path) -> None:
    import os
    import stat

    from medft._io import atomic_path, write_json

    old = os.umask(umask)
    try:
        written = write_json(tmp_path / "metrics.json", {"auroc": 0.9})
        with atomic_path(tmp_path / "table.csv") as tmp:
            tmp.write_text("a,b\n")
    finally:
        os.umask(old)
    for path in (written, tmp_path / "table.csv"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, oct(path.stat().st_mode)


def test_the_folder_is_fsynced_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import stat

    import medft._io as io

    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(io.os, "fsync", spy)
    io.write_text(tmp_path / "x.txt", "hello")
    assert synced == ["file", "dir"]  # the data, then the folder entry of the rename


# ------------------------------------------------------------ 8. leakage before run folders


def test_failed_leakage_check_leaves_no_run_folders(
    tiny_dataset: Path, fit_args, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pandas as pd

    table = pd.read_csv(tiny_dataset)
    table["path"] = [str(tiny_dataset.parent / p) for p in table["path"]]
    table["split"] = ["train", "val", "test", "train"] * (len(table) // 4)
    table.loc[2, "patient_id"] = table.loc[0, "patient_id"]  # one patient in train and test
    leaky = tmp_path / "leaky.csv"
    table.to_csv(leaky, index=False)
    run = tmp_path / "run"
    assert main(["fit", *fit_args(leaky, run)]) == 2
    assert "LeakageError" not in capsys.readouterr().err
    left = sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) if run.exists() else []
    assert not [p for p in left if p.startswith(("tensorboard", "logs", "checkpoints"))], left


# ------------------------------------------------------------ 4. SIGTERM / SIGINT


def _start(argv: list[str], cwd: Path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "medft.cli", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc, timeout: float = 300.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def _read_ckpt(path: Path) -> dict:
    from medft.model.checkpoint import read_checkpoint

    return read_checkpoint(path)


@pytest.mark.slow
@pytest.mark.parametrize(("signame", "status"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_fit_stopped_by_a_signal_saves_last_ckpt_and_exits_non_zero(
    signame: str, status: int, tiny_dataset: Path, fit_args, tmp_path: Path
) -> None:
    import signal

    run = tmp_path / "run"
    args = fit_args(tiny_dataset, run, "--data.batch_size", "2", "--checkpoint.monitor", "null")
    args[args.index("--trainer.max_epochs") + 1] = "50"
    proc = _start(["fit", *args], tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    _wait_for(last, proc)  # epoch 0 done: stop in the middle of epoch 1
    before = _read_ckpt(last)["global_step"]
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == status, err[-2000:]
    assert f"medft: stopped by {signame}; saved {last}" in err
    after = _read_ckpt(last)
    assert after["global_step"] > before  # saved at the interrupted batch, not the epoch end
    assert after["epoch"] < 49


def test_sigterm_during_validation_still_saves_last_ckpt_at_the_next_batch(
    tiny_dataset: Path, fit_args, tmp_path: Path
) -> None:
    """Lightning's own SIGTERM flag used to end the fit at the epoch end, nothing saved.

    The signal is sent from inside validation of epoch 0, deterministically: medft's handler
    must get it, so training stops after the next batch with last.ckpt saved there.
    """
    import os
    import signal

    from lightning.pytorch.callbacks import Callback

    from medft import signals
    from medft.lightning_cli import run_lightning

    class TermDuringValidation(Callback):
        def on_validation_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 0 and trainer.global_step > 0:
                os.kill(os.getpid(), signal.SIGTERM)

    run = tmp_path / "run"
    args = fit_args(tiny_dataset, run, "--data.batch_size", "4", "--checkpoint.monitor", "null")
    cli = run_lightning("fit", args, run=False)
    cli.trainer.callbacks.append(TermDuringValidation())
    signals.install()
    try:
        with pytest.raises(signals.Interrupted) as stopped:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signals.reset()
    assert stopped.value.signum == signal.SIGTERM
    assert "saved" in str(stopped.value)
    steps_per_epoch = cli.trainer.num_training_batches
    saved = _read_ckpt(run / "checkpoints" / "last.ckpt")
    assert saved["epoch"] == 1 and saved["global_step"] == steps_per_epoch + 1


@pytest.mark.slow
def test_cv_stopped_by_sigterm_exits_143_writes_no_done_and_resumes(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    import signal

    from tests.conftest import ROOT

    study = tmp_path / "study"
    overrides = [
        "--data.manifest", str(tiny_dataset), "--data.image_size", "64",
        "--data.batch_size", "2", "--data.num_workers", "0",
        "--model.backbone", "test_efficientnet", "--model.pretrained", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    base = ["cv", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--folds", "2"]
    overrides += ["--trainer.max_epochs", "3"]
    argv = [*base, "--out", str(study), "--n-boot", "20"]
    proc = _start([*argv, "--", *overrides], tmp_path)
    last = study / "fold_0" / "checkpoints" / "last.ckpt"
    _wait_for(last, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err
    assert not (study / "fold_0" / "DONE").exists()
    assert _read_ckpt(last)["global_step"] > 0
    # Requeued with --resume: the fold continues from last.ckpt and the study finishes.
    resumed = _start([*argv, "--resume", "--", *overrides], tmp_path)
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-3000:]
    assert "resuming from last.ckpt" in out
    assert (study / "fold_0" / "DONE").exists() and (study / "fold_1" / "DONE").exists()


# ------------------------------------------------------------ 6. the demo keeps nothing


def _upload_only(url: str, name: str, data: bytes) -> None:
    """POST a file to Gradio's upload route and never run an event with it."""
    import httpx

    response = httpx.post(f"{url.rstrip('/')}/gradio_api/upload", files={"files": (name, data)})
    response.raise_for_status()


def test_an_upload_never_analysed_is_deleted_after_its_ttl(tmp_path: Path) -> None:
    import time

    from medft.demo import DemoSettings, start_demo

    settings = DemoSettings(port=0, quickstart_dir=tmp_path / "none", upload_ttl_s=2.0)
    with start_demo(settings) as running:
        uploads = running.workdir / "gradio"
        _upload_only(running.url, "patient.dcm", b"DICM" * 100)
        stored = [p for p in uploads.rglob("patient.dcm")]
        assert stored, "the upload route did not store the file"
        deadline = time.monotonic() + 20
        while any(p.exists() for p in stored) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(p.exists() for p in stored)


def test_sweep_uploads_spares_fresh_uploads_and_the_demos_own_renderings(tmp_path: Path) -> None:
    import os
    import time

    from medft.demo.uploads import sweep_uploads

    old = time.time() - 600
    stale = tmp_path / "a1b2" / "scan.dcm"
    fresh = tmp_path / "c3d4" / "scan.dcm"
    view = tmp_path / "views" / "x.png"
    csv = tmp_path / "downloads" / "k" / "predictions.csv"
    for path in (stale, fresh, view, csv):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    for path in (stale, view, csv):
        os.utime(path, (old, old))
    assert sweep_uploads(tmp_path, 120.0) == 1
    assert not stale.exists() and not stale.parent.exists()
    assert fresh.exists() and view.exists() and csv.exists()


def test_start_up_sweeps_folders_of_killed_demos(tmp_path: Path) -> None:
    import os
    import subprocess

    from medft.demo.uploads import OWNER_FILE, sweep_stale_workdirs

    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = tmp_path / "medft-demo-killed"
    running = tmp_path / "medft-demo-running"
    legacy_fresh = tmp_path / "medft-demo-fresh"
    other = tmp_path / "not-medft"
    for folder in (killed, running, legacy_fresh, other):
        (folder / "gradio" / "h").mkdir(parents=True)
        (folder / "gradio" / "h" / "scan.dcm").write_bytes(b"patient pixels")
    (killed / OWNER_FILE).write_text(str(dead.pid))
    (running / OWNER_FILE).write_text(str(os.getpid()))
    assert sweep_stale_workdirs(tmp_path) == 1
    assert not killed.exists()
    assert running.exists() and legacy_fresh.exists() and other.exists()


def _header_only_dicom(rows: int, columns: int) -> bytes:
    """A DICOM whose header claims rows x columns (a tiny RLE-like payload; never decoded)."""
    import io

    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\0\0" * 16
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_request_budget_counts_decoded_pixels_from_headers_and_total_bytes(
    tmp_path: Path,
) -> None:
    from medft.demo.settings import DEFAULT_MAX_PIXELS
    from medft.demo.uploads import RequestBudget, header_pixels
    from medft.errors import DicomReadError

    big = _header_only_dicom(7000, 7000)
    assert len(big) < 2000 and header_pixels(big) == 49_000_000
    assert header_pixels(_header_only_dicom(5000, 5000)) <= DEFAULT_MAX_PIXELS
    budget = RequestBudget(max_bytes=10_000, max_pixels=50_000_000)
    budget.charge(_header_only_dicom(5000, 5000))
    budget.charge(_header_only_dicom(4000, 5000))
    with pytest.raises(DicomReadError, match="per request"):
        budget.charge(_header_only_dicom(3000, 3000))
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.dcm")
        files[-1].write_bytes(b"x" * 4000)
    with pytest.raises(DicomReadError, match=r"total 0\.0 MB, over the limit"):
        budget.check_sizes(files)


def test_a_7000_square_dicom_is_refused_from_its_header_by_the_demo(tmp_path: Path) -> None:
    from medft.data.dicom import load_image
    from medft.demo.settings import DEFAULT_MAX_PIXELS
    from medft.errors import DicomReadError

    with pytest.raises(DicomReadError):
        load_image(_header_only_dicom(7000, 7000), max_pixels=DEFAULT_MAX_PIXELS)


def test_failed_logins_are_rate_limited_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from medft.demo.server import LOGIN_ATTEMPTS, LOGIN_WINDOW_S, LoginGuard

    now = [1000.0]
    guard = LoginGuard("doctor", "s3cret-pass", clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="medft.demo"):
        results = [guard("doctor", f"guess{i}") for i in range(200)]
    assert not any(results)
    assert guard.refused == 200 - LOGIN_ATTEMPTS  # only 5 guesses were even compared
    failures = [r for r in caplog.records if "failed login for" in r.getMessage()]
    assert len(failures) == LOGIN_ATTEMPTS and "guess" not in caplog.text
    assert any("refusing every login" in r.getMessage() for r in caplog.records)
    assert guard("doctor", "s3cret-pass") is False  # locked out, even with the password
    now[0] += LOGIN_WINDOW_S + 1
    assert guard("doctor", "s3cret-pass") is True


def test_non_local_bind_without_login_is_refused_unless_accepted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from medft.demo import DemoSettings
    from medft.errors import ConfigError

    with pytest.raises(ConfigError, match="without a login"):
        DemoSettings(host="0.0.0.0")
    DemoSettings(host="0.0.0.0", auth=("u", "p"))
    DemoSettings(host="0.0.0.0", allow_unauthenticated=True)
    DemoSettings(host="127.0.0.2")
    assert main(["demo", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allow-unauthenticated" in err[0]


def test_the_review_page_applies_the_request_limits_and_deletes_refused_uploads(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from medft.demo.service import InferenceService
    from medft.demo.ui import ReviewPage
    from medft.demo.views import ViewState

    uploads = tmp_path / "gradio"
    page = ReviewPage(
        InferenceService.from_checkpoint(tiny_checkpoint, max_pixels=25_000_000),
        examples=[],
        card="",
        upload_dir=uploads,
        downloads_dir=uploads / "downloads",
        title="t",
        max_request_bytes=4000,
        max_request_pixels=30_000_000,
    )
    paths = []
    for i, side in enumerate((5000, 4000)):
        paths.append(uploads / f"h{i}" / "scan.dcm")
        paths[-1].parent.mkdir(parents=True)
        paths[-1].write_bytes(_header_only_dicom(side, side))
    entries = []
    page._show_entries = lambda session, found, *args: entries.extend(found) or {}
    page.on_upload([str(p) for p in paths], ViewState({}, "abnormal", "gradcam", 0.4))
    assert "30 million per request" in entries[1].error  # refused from its header
    assert not any(p.exists() for p in paths)
    big = uploads / "h9" / "big.dcm"
    big.parent.mkdir()
    big.write_bytes(b"\0" * 5000)
    with pytest.raises(Exception, match="per request"):
        page.on_upload([str(big)], ViewState({}, "abnormal", "gradcam", 0.4))
    assert not big.exists()


# ------------------------------------------------------------ 9. distributed and disk faults


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 48 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    import os
    import subprocess

    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> None:
    """Write zeros until the filesystem is full (a real ENOSPC for the next writer)."""
    import errno

    with open(folder / "filler.bin", "wb", buffering=0) as fh:
        for chunk in (2**20, 2**14, 2**10, 64, 1):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    assert (folder / "filler.bin").stat().st_size > 0


@pytest.mark.slow
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint_and_says_so(
    small_tmpfs: Path, tiny_dataset: Path, fit_args, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    from lightning.pytorch import Callback

    from medft.lightning_cli import run_lightning

    run = small_tmpfs / "run"
    last = run / "checkpoints" / "last.ckpt"
    seen: dict[str, str] = {}

    class FillDiskAfterFirstEpoch(Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                seen["before"] = hashlib.sha256(last.read_bytes()).hexdigest()
                _fill(small_tmpfs)

    args = fit_args(tiny_dataset, run, "--checkpoint.monitor", "null")
    args[args.index("--trainer.max_epochs") + 1] = "3"
    cli = run_lightning("fit", args, run=False)
    cli.trainer.callbacks.append(FillDiskAfterFirstEpoch())
    with pytest.raises(CheckpointError) as caught:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    message = str(caught.value)
    assert "no space left" in message and "previous checkpoint" in message
    assert "\n" not in message
    assert hashlib.sha256(last.read_bytes()).hexdigest() == seen["before"]
    assert _read_ckpt(last)["epoch"] == 0  # intact and loadable
    leftovers = [p.name for p in last.parent.iterdir() if p.name.startswith(".")]
    names = sorted(p.name for p in last.parent.iterdir())
    assert not leftovers and names == ["best-00.ckpt", "last.ckpt", "latest-00.ckpt"], names


_DDP = (
    "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
    "--model.freeze_gate", "lr",
)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("where", ["epoch_end", "mid_epoch"])
def test_kill_9_of_a_two_process_ddp_fit_then_resume_matches_an_uninterrupted_run(
    where: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    """SIGKILL to the whole job (both gloo ranks, as a lost node), then --ckpt_path last.ckpt.

    No dropout or augmentation: checkpoints hold rank 0's RNG state only, so random ops on
    rank 1 would differ after a resume. ``mid_epoch`` checkpoints every step and kills
    inside an epoch: each rank continues its shard of that epoch where it stopped.
    """
    import os
    import signal
    import subprocess

    from tests.conftest import ROOT
    from tests.test_reliability import (
        CHECKPOINTING,
        RESUME_TOLERANCE,
        _checkpoint_progress,
        _env,
        _fit_command,
        _max_weight_difference,
    )

    extra = (*CHECKPOINTING["epoch_end_no_random_ops"], *_DDP, "--data.batch_size", "2")
    if where == "mid_epoch":
        extra = (*extra, "--last_checkpoint.every_n_train_steps", "1")
    reference = tmp_path / "reference"
    subprocess.run(
        _fit_command(tiny_dataset, reference, *extra), cwd=ROOT, env=_env(), check=True,
        timeout=900, capture_output=True,
    )  # fmt: skip
    ref_last = reference / "checkpoints" / "last.ckpt"
    ref_progress = _checkpoint_progress(ref_last)
    assert ref_progress is not None
    steps_per_epoch = ref_progress[1] // (ref_progress[0] + 1)
    assert steps_per_epoch > 1  # room to stop inside an epoch

    killed = tmp_path / "killed"
    last = killed / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        _fit_command(tiny_dataset, killed, *extra), cwd=ROOT, env=_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    import time

    killed_at = None
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            progress = _checkpoint_progress(last) if last.exists() else None
            mid = progress is not None and progress[1] % steps_per_epoch != 0
            if progress is not None and progress[0] >= 1 and (where == "epoch_end" or mid):
                killed_at = progress
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # rank 0 and the rank-1 process it launched
        proc.wait()
    assert killed_at is not None and ref_progress is not None
    assert killed_at[1] < ref_progress[1]

    subprocess.run(
        _fit_command(tiny_dataset, killed, *extra, "--ckpt_path", str(last)), cwd=ROOT,
        env=_env(), check=True, timeout=900, capture_output=True,
    )  # fmt: skip
    difference = _max_weight_difference(ref_last, last)
    print(f"[ddp {where}] killed at {killed_at}; reference {ref_progress}; |diff| {difference:.3g}")
    assert _checkpoint_progress(last) == ref_progress
    assert difference <= RESUME_TOLERANCE


def test_epoch_sampler_shards_one_epoch_order_and_resumes_inside_a_shard() -> None:
    from medft.data.datamodule import EpochSampler

    whole = list(EpochSampler(11, seed=5))
    shards = [EpochSampler(11, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
    drawn = [list(s) for s in shards]
    assert [len(d) for d in drawn] == [6, 6] == [len(s) for s in shards]
    assert drawn[0] == whole[0::2] and drawn[1] == [*whole[1::2], whole[0]]  # padded
    state = shards[1].state_after(4)
    assert state == {"seed": 5, "size": 11, "replicas": 2, "epoch": 0, "start": 4}
    resumed = EpochSampler(11, seed=5, num_replicas=2, rank=1)
    resumed.load_state_dict(state)
    assert list(resumed) == drawn[1][4:]
    with pytest.raises(Exception, match="same number of devices"):
        EpochSampler(11, seed=5).load_state_dict(state)
