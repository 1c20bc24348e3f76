"""Uploads are untrusted: read them within limits, name them safely, explain refusals plainly.

- Size is checked before reading (``stat``) and again while reading, so a file that grows
  or lies about its size cannot exhaust memory.
- The kind of file is decided by its content (the medft reader sniffs the first bytes);
  the name the browser sent is only ever *shown*, never used as a path.
- Uploads are deleted as soon as they are read (:class:`UploadInbox`); an upload no request
  reads (an upload-only call, a rejected event) is deleted by :func:`sweep_uploads` after
  a short time-to-live, and a killed demo's folder by :func:`sweep_stale_workdirs` at the
  next start.
- One request is bounded as a whole (:class:`RequestBudget`): the total upload size, and
  the decoded samples summed from the files' headers before any pixel is decoded.
- Identification is a SHA-256 of the content; logs carry its first 12 hex digits only.
- Messages for the page say what was wrong and what to do, in words, with no traceback
  and without the server-side path of the temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

from medft.data.dicom import XrayMeta
from medft.errors import DicomReadError, MedftError

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
RASTER_FORMATS = ("PNG", "JPEG", "TIFF")  # XrayMeta.transfer_syntax of non-DICOM images
log = logging.getLogger("medft.demo")
WORKDIR_PREFIX = "medft-demo-"
OWNER_FILE = "owner.pid"
OWN_OUTPUTS = ("views", "downloads")
"""Folders of the upload folder that hold the demo's own renderings, not uploads."""
_LABEL_PREFIX = re.compile(r"^(<bytes>|<stream>|/[^:]*|[A-Za-z]:\\[^:]*): ")
_MAX_NAME = 80


def content_key(data: bytes) -> str:
    """SHA-256 hex digest of the file's bytes (the cache key of a case)."""
    return hashlib.sha256(data).hexdigest()


def short_key(key: str) -> str:
    """The part of a content key that logs and tables show (12 hex digits)."""
    return key[:12]


def read_limited(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """Read a whole uploaded file, refusing empty files and files over ``max_bytes``.

    Raises:
        DicomReadError: the file is empty, too large, or cannot be opened.
    """
    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            raise DicomReadError(_too_large(size, max_bytes))
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise DicomReadError(
            f"the upload could not be read ({exc.strerror or type(exc).__name__}); upload it again"
        ) from None
    check_size(data, max_bytes)
    return data


def check_size(data: bytes, max_bytes: int) -> None:
    """Refuse empty content and content over ``max_bytes`` (DicomReadError)."""
    if not data:
        raise DicomReadError("the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise DicomReadError(_too_large(len(data), max_bytes))


def _too_large(size: int, max_bytes: int) -> str:
    return (
        f"the file is larger than the limit of {max_bytes / 2**20:.0f} MB "
        f"({size / 2**20:.1f} MB or more); the administrator can raise it with --max-file-mb"
    )


def display_name(name: str | None, fallback: str) -> str:
    """A printable, short version of a client-supplied file name (for display only).

    Directory parts, control characters and anything past 80 characters are dropped; the
    result is never used to open or create a file.
    """
    if not name:
        return fallback
    base = re.split(r"[\\/]", str(name))[-1]
    clean = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    clean = clean.replace("|", "/").replace("`", "'")
    if len(clean) > _MAX_NAME:
        clean = clean[: _MAX_NAME - 1] + "…"
    return clean or fallback


def refuse_unsupported(meta: XrayMeta) -> list[str]:
    """Refuse what the model must not see; return notes about what was adapted.

    Multi-frame files and colour DICOMs are refused (a radiograph classifier should not
    silently look at frame 1 of a cine loop or at an ultrasound). A colour PNG/JPEG is
    accepted with a note, because exports of radiographs are often stored as RGB.

    Raises:
        DicomReadError: the image is multi-frame, or a colour DICOM.
    """
    notes: list[str] = []
    is_dicom = meta.transfer_syntax not in RASTER_FORMATS
    if meta.n_frames > 1:
        raise DicomReadError(
            f"the file holds {meta.n_frames} frames; this demo reads single-frame "
            "radiographs: export the one image you want to review"
        )
    if meta.photometric not in GRAYSCALE:
        if is_dicom:
            raise DicomReadError(
                f"it is a colour image (photometric interpretation {meta.photometric}); "
                "the model reads grayscale X-rays (MONOCHROME1/2)"
            )
        notes.append(
            f"colour {meta.transfer_syntax} image converted to grayscale (luminance); "
            "check that it is a radiograph"
        )
    return notes


def user_message(error: BaseException) -> str:
    """The reason from an error, without the reader's source label or server paths."""
    text = " ".join(str(error).split())
    text = _LABEL_PREFIX.sub("", text)
    if not isinstance(error, MedftError):
        return "an internal error occurred while reading it"
    return text or type(error).__name__


def is_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` resolves to a location inside ``folder`` (no traversal, no symlinks out)."""
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, ValueError):
        return False


class UploadInbox:
    """Take uploads out of Gradio's upload folder: read once, delete at once, remember briefly.

    Gradio stores an upload at ``<folder>/<hash of the content>/<name>``, so two requests
    carrying the same file (two tabs, two users, a retry) share one path. The first request
    reads and deletes the file; the bytes stay in memory for ``ttl_s`` seconds (within
    ``budget_bytes``) for any other request naming the same path. Nothing is written to disk.

    Args:
        folder: Gradio's upload folder; any other path is refused.
        max_bytes: largest upload accepted.
        ttl_s: how long read uploads stay available in memory.
        budget_bytes: memory held by remembered uploads at most (oldest dropped first).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        max_bytes: int,
        *,
        ttl_s: float = 300.0,
        budget_bytes: int = 256 * 2**20,
    ) -> None:
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)
        self.ttl_s = float(ttl_s)
        self.budget_bytes = int(budget_bytes)
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, tuple[float, bytes | DicomReadError]] = OrderedDict()

    def take(self, path: str | os.PathLike[str]) -> bytes:
        """The upload's bytes (the file itself is deleted on first read).

        Raises:
            DicomReadError: the path is not an upload of this page, the file is empty or too
                large, or it was read too long ago and is gone.
        """
        path = os.fspath(path)
        if not is_inside(path, self.folder):
            raise DicomReadError("refused: not a file uploaded to this page")
        with self._lock:
            self._expire()
            if os.path.lexists(path):
                try:
                    outcome: bytes | DicomReadError = read_limited(path, self.max_bytes)
                except DicomReadError as exc:
                    outcome = exc
                finally:
                    self._discard(path)
                self._recent[path] = (time.monotonic(), outcome)
                self._recent.move_to_end(path)
                self._trim()
            elif path in self._recent:
                outcome = self._recent[path][1]
            else:
                raise DicomReadError("the upload is no longer available; upload the file again")
        if isinstance(outcome, DicomReadError):
            raise DicomReadError(str(outcome))
        return outcome

    def __len__(self) -> int:
        return len(self._recent)

    def discard(self, path: str | os.PathLike[str]) -> None:
        """Delete an upload without reading it (a refused request); only inside the folder."""
        path = os.fspath(path)
        if is_inside(path, self.folder):
            with self._lock:
                self._discard(path)

    def _discard(self, path: str) -> None:
        """Delete the upload and its folder (if empty); never outside the upload folder."""
        with contextlib.suppress(OSError):
            os.unlink(path)
        parent = Path(path).parent
        if parent.resolve() != self.folder.resolve():
            with contextlib.suppress(OSError):
                parent.rmdir()

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.ttl_s
        while self._recent and next(iter(self._recent.values()))[0] < cutoff:
            self._recent.popitem(last=False)

    def _trim(self) -> None:
        def held() -> int:
            return sum(len(v) for _, v in self._recent.values() if isinstance(v, bytes))

        while len(self._recent) > 1 and held() > self.budget_bytes:
            self._recent.popitem(last=False)


# --------------------------------------------------------------------------- request limits


def header_pixels(data: bytes) -> int:
    """Decoded samples of a file, from its header only (0 when the header is unreadable).

    DICOM: Rows × Columns × Number of Frames × Samples per Pixel, read with
    ``stop_before_pixels``; PNG/JPEG/TIFF: width × height × bands from the image header.
    Nothing is decoded; an unreadable header is left to the reader, which refuses it.
    """
    import pydicom
    from PIL import Image

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        if rows and columns:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
            return rows * columns * max(frames, 1) * max(samples, 1)
    except Exception:  # not DICOM, or a damaged header: try an image header
        pass
    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.width) * int(image.height) * len(image.getbands())
    except Exception:
        return 0


class RequestBudget:
    """What one request may cost: total upload bytes, and decoded samples from headers.

    Args:
        max_bytes: total bytes of the request's files.
        max_pixels: total decoded samples of the request's files.
    """

    def __init__(self, max_bytes: int, max_pixels: int) -> None:
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        self.pixels = 0

    def check_sizes(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        """Refuse a request whose files together exceed the byte quota (``stat`` only).

        Raises:
            DicomReadError: naming the total and the limit.
        """
        total = 0
        for path in paths:
            with contextlib.suppress(OSError):
                total += os.stat(path).st_size
        if total > self.max_bytes:
            raise DicomReadError(
                f"the {len(paths)} files of this request total {total / 2**20:.1f} MB, over "
                f"the limit of {self.max_bytes / 2**20:.0f} MB per request; upload fewer files "
                "at a time (the administrator can raise it with --max-request-mb)"
            )

    def charge(self, data: bytes) -> None:
        """Count one file's decoded samples; refuse it when the request would go over.

        Raises:
            DicomReadError: the request's decoded-pixel budget would be exceeded.
        """
        pixels = header_pixels(data)
        if self.pixels + pixels > self.max_pixels:
            raise DicomReadError(
                f"this request's images hold {(self.pixels + pixels) / 1e6:.0f} million "
                f"samples with this file, over the limit of {self.max_pixels / 1e6:.0f} million "
                "per request; upload it on its own (the administrator can raise it with "
                "--max-request-pixels)"
            )
        self.pixels += pixels


# --------------------------------------------------------------------------- sweeping


def sweep_uploads(folder: str | os.PathLike[str], ttl_s: float, *, now: float | None = None) -> int:
    """Delete uploads older than ``ttl_s`` that no request has read; return how many.

    Gradio stores each upload as ``<folder>/<hash>/<name>`` whether or not an event ever
    reads it (an upload-only API call, an event the queue rejected). The demo's own
    renderings (:data:`OWN_OUTPUTS`) are left to their own pruning.
    """
    root = Path(folder)
    if not root.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - float(ttl_s)
    removed = 0
    for child in root.iterdir():
        if child.name in OWN_OUTPUTS or not child.is_dir() or child.is_symlink():
            continue
        for file in _files(child):
            try:
                if file.lstat().st_mtime < cutoff:
                    file.unlink()
                    removed += 1
            except OSError:
                continue
        with contextlib.suppress(OSError):
            child.rmdir()  # only when empty
    if removed:
        log.info("deleted %d upload(s) that no request read within %.0f s", removed, ttl_s)
    return removed


def _files(folder: Path) -> Iterable[Path]:
    for parent, _, names in os.walk(folder):
        for name in names:
            yield Path(parent) / name


def claim_workdir(workdir: str | os.PathLike[str]) -> None:
    """Record this process as the owner of a demo work folder (for :func:`sweep_stale_workdirs`)."""
    (Path(workdir) / OWNER_FILE).write_text(str(os.getpid()), encoding="ascii")


def sweep_stale_workdirs(
    parent: str | os.PathLike[str] | None = None, *, min_age_s: float = 3600.0
) -> int:
    """Remove demo work folders whose demo is gone (killed with ``kill -9``, a crash).

    A folder counts as stale when the process recorded in its ``owner.pid`` no longer
    runs, or, without that file, when it is older than ``min_age_s``. Only folders named
    ``medft-demo-*`` and owned by this user are touched.

    Returns:
        How many folders were removed.
    """
    base = Path(parent or tempfile.gettempdir())
    removed = 0
    for folder in base.glob(f"{WORKDIR_PREFIX}*"):
        try:
            info = folder.lstat()
        except OSError:
            continue
        if folder.is_symlink() or not folder.is_dir() or info.st_uid != os.getuid():
            continue
        if _alive(folder / OWNER_FILE, info.st_mtime, min_age_s):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    if removed:
        log.info("removed %d demo folder(s) left behind by a demo that did not stop", removed)
    return removed


def _alive(owner: Path, mtime: float, min_age_s: float) -> bool:
    try:
        pid = int(owner.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return time.time() - mtime < min_age_s
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
