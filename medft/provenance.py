"""What produced a result: software versions and the medft source commit.

Checkpoints, ``run.json`` files and reports record these so a number can be traced to the
stack that made it. Only installed-package metadata is read (no heavy imports), so this is
cheap enough to call anywhere.
"""

from __future__ import annotations

import datetime as dt
import functools
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["RUN_JSON", "STACK", "git_commit", "run_record", "software_versions"]

RUN_JSON = "run.json"
"""File name of the run record every command writes into its output folder."""

STACK = ("medft", "torch", "torchvision", "timm", "lightning", "monai", "pydicom", "numpy")
"""Distributions whose versions every record names."""


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the medft source tree in use, or None (installed wheel, no git)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    if done.returncode != 0 or not commit:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    )
    return f"{commit}-dirty" if dirty.stdout.strip() else commit


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str | None], ...]:
    found: list[tuple[str, str | None]] = [("python", platform.python_version())]
    for name in STACK:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            found.append((name, None))
    return tuple(found)


def software_versions(*, commit: bool = True) -> dict[str, str | None]:
    """Python and :data:`STACK` versions (None when not installed), plus ``medft_commit``."""
    versions = dict(_versions())
    if commit:
        versions["medft_commit"] = git_commit()
    return versions


def run_record(
    *, argv: Sequence[str] | None = None, settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What a command's ``run.json`` holds: when, the exact command line, settings, versions.

    Args:
        argv: The command line (default: this process's ``sys.argv``).
        settings: The resolved options of the command (plain JSON values).
    """
    words = list(sys.argv if argv is None else argv)
    return {
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "command": shlex.join(words),
        "settings": dict(settings or {}),
        "software": software_versions(),
    }
