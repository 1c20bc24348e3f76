"""Load medft checkpoints safely: tensors and primitives only, never pickled code.

A checkpoint passed around between people is untrusted input. Loading goes
through ``torch.load(weights_only=True)``, which refuses any pickled object that
is not a tensor or a plain container, so a crafted file cannot run code; the
model is rebuilt from the saved hyper-parameters (random init, no weight
download) and the weights are loaded strictly.

A checkpoint given as a URL is refused unless the user opts in with
``MEDFT_ALLOW_REMOTE_CHECKPOINTS=1``; then it is downloaded to a private temporary
file and read the same safe way (Lightning on its own would unpickle a remote file
with ``weights_only=False``).
"""

from __future__ import annotations

import atexit
import inspect
import os
import pickle
import re
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medft.errors import CheckpointError, MedftError
from medft.model.module import XrayClassifier


@dataclass
class LoadedClassifier:
    """A model ready for inference and what it needs to be used consistently.

    Attributes:
        model: the classifier in eval mode (inputs: display-space images in [0, 1]).
        labels: finding names, in output order.
        task: ``binary``, ``multilabel`` or ``multiclass``.
        image_size: side of the square input the model was trained at.
        fit_mode: ``pad`` or ``crop`` (how images were fitted into the square).
        thresholds: per-finding decision thresholds (``p >= t`` is positive).
        temperature: fitted on validation data, or None.
        meta: everything else stored under ``checkpoint["medft"]``.
        path: where it was loaded from.
    """

    model: XrayClassifier
    labels: list[str]
    task: str
    image_size: int
    fit_mode: str
    thresholds: dict[str, float]
    temperature: float | None
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


REMOTE_ENV = "MEDFT_ALLOW_REMOTE_CHECKPOINTS"
"""Set to ``1`` to allow checkpoints given as http(s) URLs (downloaded, then loaded safely)."""

MAX_REMOTE_BYTES = 8 * 2**30
"""Largest checkpoint downloaded from a URL (8 GiB)."""

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_UNSAFE_MARKERS = ("unsupported global", "weights only load failed", "weights_only")


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a URL (``http://``, ``s3://``, ...) rather than a local file."""
    return bool(_URL.match(os.fspath(path)))


def remote_allowed() -> bool:
    """Whether the user opted in to remote checkpoints (``MEDFT_ALLOW_REMOTE_CHECKPOINTS=1``)."""
    return os.environ.get(REMOTE_ENV, "").strip().lower() in ("1", "true", "yes")


def local_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A local file for ``path``: the path itself, or a URL downloaded (only with opt-in).

    The download is checked with :func:`safe_torch_load` (``weights_only=True``) before
    it is returned, so whatever reads the file next reads a file already proven safe.

    Raises:
        CheckpointError: a URL without the opt-in, a scheme other than http(s), or a
            download that fails or is not a safe checkpoint.
    """
    text = os.fspath(path)
    if not is_remote(text):
        return Path(text)
    if not remote_allowed():
        raise CheckpointError(
            f"{text}: refused to load a checkpoint from a URL (a remote file could be crafted "
            f"to run code); download it, check where it came from, and pass the local file, or "
            f"set {REMOTE_ENV}=1 to let medft download it (it is then loaded with "
            "weights_only=True like any other checkpoint)"
        )
    if not text.lower().startswith(("http://", "https://")):
        raise CheckpointError(
            f"{text}: only http(s) URLs are downloaded; copy the checkpoint to a local file"
        )
    local = _download(text)
    safe_torch_load(local, label=text)
    return local


def _download(url: str) -> Path:
    """Fetch ``url`` into a private temporary folder removed at exit (size-limited)."""
    folder = Path(tempfile.mkdtemp(prefix="medft-ckpt-"))
    atexit.register(shutil.rmtree, folder, True)
    target = folder / "remote.ckpt"
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as fh:
            copied = 0
            while chunk := response.read(2**20):
                copied += len(chunk)
                if copied > MAX_REMOTE_BYTES:
                    raise CheckpointError(
                        f"{url}: larger than {MAX_REMOTE_BYTES // 2**30} GiB; download it yourself"
                    )
                fh.write(chunk)
    except CheckpointError:
        raise
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{url}: download failed ({_first_line(err)})") from None
    return target


def safe_torch_load(
    path: str | os.PathLike[str], map_location: Any = "cpu", *, label: str | None = None
) -> Any:
    """``torch.load(weights_only=True)`` with one clear :class:`CheckpointError` per failure.

    A file that is not a PyTorch save at all (text, an image, an empty file) is named as
    such; only a real pickle that asks for other Python objects is described as one that
    could run code.
    """
    label = label or os.fspath(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError as err:
        raise CheckpointError(f"{label}: cannot read the file ({err.strerror or err})") from None
    if not head:
        raise CheckpointError(f"{label}: the file is empty, not a checkpoint")
    # torch.save writes a zip archive; the legacy format is a pickle (PROTO opcode 0x80).
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        raise CheckpointError(
            f"{label}: not a PyTorch checkpoint (neither a torch.save archive nor a pickle; "
            "is it a text file or an image?)"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if any(marker in str(err).lower() for marker in _UNSAFE_MARKERS):
            raise CheckpointError(
                f"{label}: refused to load: the file holds Python objects other than tensors "
                f"and plain data, which could run code when unpickled ({_unsafe_reason(err)}). "
                "Only load checkpoints written by medft from sources you trust."
            ) from None
        raise CheckpointError(f"{label}: not a readable checkpoint ({_first_line(err)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        raise CheckpointError(f"{label}: not a readable checkpoint ({_first_line(err)})") from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint dictionary with ``weights_only=True``; refuse anything else.

    ``path`` may be a URL only with the opt-in of :func:`local_checkpoint`.
    """
    label = os.fspath(path)
    path = local_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"{label}: no such checkpoint file")
    checkpoint = safe_torch_load(path, label=label)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{label}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def load_classifier(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> LoadedClassifier:
    """Rebuild the trained classifier from a medft checkpoint (safe loading, strict weights)."""
    path = local_checkpoint(path)  # a URL only with the opt-in; downloaded and checked
    checkpoint = read_checkpoint(path)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if "backbone" not in hparams:
        raise CheckpointError(f"{path}: not a medft checkpoint (no backbone in hyper_parameters)")
    allowed = set(inspect.signature(XrayClassifier.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in hparams.items() if k in allowed}
    kwargs["pretrained"] = False  # the weights come from the checkpoint, not from ImageNet
    kwargs["pretrained_file"] = None
    kwargs["compile"] = False  # inference runs eagerly: no compile wait in evaluate or the demo
    try:
        model = XrayClassifier(**kwargs)
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except MedftError:
        raise
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{path}: weights do not fit the model ({_first_line(err)})"
        ) from None
    model.eval().to(map_location)
    meta = dict(checkpoint.get("medft") or {})
    labels = list(meta.get("labels") or model.labels)
    points = meta.get("operating_points") or {}
    thresholds = {name: float(points.get(name, {}).get("threshold", 0.5)) for name in labels}
    return LoadedClassifier(
        model=model,
        labels=labels,
        task=str(meta.get("task", model.task)),
        image_size=int(meta.get("image_size", 224)),
        fit_mode=str(meta.get("fit_mode", "pad")),
        thresholds=thresholds,
        temperature=meta.get("temperature"),
        meta=meta,
        path=path,
    )


def _unsafe_reason(err: BaseException) -> str:
    """The line of torch's message that names the refused global, else a short summary."""
    for line in str(err).splitlines():
        if "global" in line.lower():
            return line.strip()[:300]
    return "objects outside the weights-only allow-list"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
