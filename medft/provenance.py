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

from medft._io import write_json

__all__ = [
    "RUN_JSON",
    "STACK",
    "accelerator",
    "git_commit",
    "run_record",
    "software_versions",
    "version_text",
    "write_run_json",
]

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


def accelerator() -> dict[str, Any]:
    """The CUDA build of torch and the GPUs it sees (imports torch; ``{}`` without torch).

    Returns:
        ``{"cuda_build": "12.8" | None, "cuda_devices": ["NVIDIA H100 ...", ...]}``; the
        device list is empty when no GPU is usable.
    """
    try:
        import torch
    except ImportError:
        return {}
    devices: list[str] = []
    if torch.cuda.is_available():
        devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"cuda_build": torch.version.cuda, "cuda_devices": devices}


def version_text() -> str:
    """What ``medft --version`` prints: medft, then python, the stack and CUDA when present."""
    versions = software_versions()
    lines = [f"medft {versions.pop('medft')}"]
    commit = versions.pop("medft_commit", None)
    if commit:
        lines[0] += f" (git {commit})"
    lines += [f"  {name:<12} {version or 'not installed'}" for name, version in versions.items()]
    gpu = accelerator()
    if gpu.get("cuda_devices"):
        names = ", ".join(gpu["cuda_devices"])
        lines.append(f"  {'cuda':<12} {gpu['cuda_build']} ({names})")
    elif gpu:
        build = gpu.get("cuda_build")
        built = f" (torch built for {build})" if build else ""
        lines.append(f"  {'cuda':<12} no GPU visible{built}")
    return "\n".join(lines)


def write_run_json(
    out_dir: str | Path,
    *,
    settings: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    argv: Sequence[str] | None = None,
) -> Path:
    """Write ``out_dir/run.json``: :func:`run_record` plus the resolved config and the GPUs.

    Args:
        out_dir: The command's output folder (created if needed).
        settings: The command's resolved options (plain JSON values; paths become strings).
        config: The resolved training config (``medft fit``'s YAML as a dict), if any.
        argv: The command line (default: ``sys.argv``).

    Returns:
        The path written.
    """
    record = run_record(argv=argv, settings={k: _plain(v) for k, v in (settings or {}).items()})
    if config is not None:
        record["config"] = dict(config)
    if "torch" in sys.modules:  # never import torch only to write a record
        record["accelerator"] = accelerator()
    return write_json(Path(out_dir) / RUN_JSON, record)


def _plain(value: Any) -> Any:
    """A JSON value for an option: paths and other objects become strings."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)
