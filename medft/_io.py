"""Atomic file writes: a killed run never leaves a half-written file behind.

Every output medft writes (metrics, predictions, folds, reports, caches) goes
through these helpers: the bytes land in a temporary file in the same folder,
are flushed to disk, and replace the target with one ``os.replace``; the folder is
then flushed too, so the rename itself survives a power cut. Files get the usual
permissions for the process's umask (``0644`` under the common ``022``), like any
file ``open`` creates, not ``mkstemp``'s private ``0600``.

:func:`check_output_dir` and :func:`check_output_file` are what every command calls
first: an unusable ``--out`` is reported in one line before any work is done.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from medft.errors import ConfigError

_WRITE_PROBE = ".medft-write-test-"


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no other portable way to read it (Python < 3.13)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output_dir(path: str | os.PathLike[str], *, option: str = "--out") -> Path:
    """Make sure ``path`` is (or can become) a writable folder, before any work is done.

    Creates the folder (and its parents) and writes and removes a probe file in it, so a
    read-only folder, a read-only mount, a full disk or a file in the way is reported now
    rather than after an hour of inference.

    Args:
        path: the output folder.
        option: how the user named it (``--out``, ``trainer.default_root_dir``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: one line naming the folder and what is wrong with it.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{option} {target}: is a file, not a folder; choose a folder")
    _check_writable_dir(target, f"{option} {target}")
    return target


def check_output_file(path: str | os.PathLike[str], *, option: str = "--out") -> Path:
    """Make sure the file ``path`` can be written (its folder is writable, it is no folder).

    Raises:
        ConfigError: one line naming the file and what is wrong.
    """
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{option} {target}: is a folder; give a file name")
    _check_writable_dir(target.parent, f"{option} {target}")
    return target


def output_file_in(
    out: str | os.PathLike[str], name: str, *, suffixes: tuple[str, ...], option: str = "--out"
) -> Path:
    """The file a command writes when ``--out`` names a folder, checked writable.

    Every medft command's ``--out`` is a folder; the file is ``out/name``. A path that
    ends in one of ``suffixes`` (``model.onnx``, ``compare.json``) names the file itself,
    as these commands took it before the folder rule.

    Raises:
        ConfigError: one line naming the file or folder and what is wrong.
    """
    target = Path(out)
    if target.suffix.lower() in suffixes and not target.is_dir():
        return check_output_file(target, option=option)
    check_output_dir(target, option=option)
    return check_output_file(target / name, option=option)


def _check_writable_dir(folder: Path, label: str) -> None:
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{label}: cannot create its folder because {existing} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=_WRITE_PROBE, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"{label}: cannot write there ({reason}); choose a writable folder"
        ) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    Use when a library insists on writing to a filename itself (``df.to_csv``,
    ``fig.savefig``, ``torch.save``). On an exception the temporary file is removed
    and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        # mkstemp makes a private 0600 file; outputs get what the umask allows instead.
        os.chmod(tmp_path, 0o666 & ~current_umask())
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces ``path`` when closed cleanly."""
    if "r" in mode or "a" in mode:
        raise ValueError("atomic_open only writes whole files ('w' or 'wb')")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (NaN becomes null)."""
    return write_text(path, json.dumps(_nan_to_none(obj), indent=2, sort_keys=False) + "\n")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {str(k): _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return _nan_to_none(obj.item())
    return obj
