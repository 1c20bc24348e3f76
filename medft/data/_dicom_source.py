"""Where the bytes come from (path, bytes, file object) and what kind of file they are.

The reader accepts a path, the file's bytes, or an open binary file (the demo hands over
uploads). Every error message starts with a label for the source: the path as given, the
file object's name, or ``<bytes>``. The kind of content is decided by its first bytes,
not by the file name: a DICOM Part 10 file (``DICM`` at byte 128), a bare DICOM data set
without preamble or File Meta, or a PNG, JPEG or TIFF image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import struct
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pydicom.valuerep import VR

from medft.errors import DicomReadError

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

DICOM = "dicom"
DICOM_BARE = "dicom-bare"
PNG, JPEG, TIFF = "PNG", "JPEG", "TIFF"
RASTER_KINDS = (PNG, JPEG, TIFF)

_HEAD = 132
_MAGIC = {
    b"\x89PNG\r\n\x1a\n": PNG,
    b"\xff\xd8\xff": JPEG,
    b"II*\x00": TIFF,
    b"MM\x00*": TIFF,
}
# A data set without File Meta starts with its lowest tag, in practice one of these groups.
_FIRST_GROUPS = {0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028}
_VRS = frozenset(str(vr) for vr in VR)


@dataclasses.dataclass
class Source:
    """An open, seekable stream plus the label used in messages and the sniffed kind."""

    label: str
    stream: BinaryIO
    kind: str | None
    size: int


@contextlib.contextmanager
def open_source(source: ImageSource) -> Iterator[Source]:
    """Open ``source`` for reading; DicomReadError (with the label) if it cannot be opened."""
    label, stream, owned = _open(source)
    try:
        start = stream.tell()
        head = stream.read(_HEAD)
        size = stream.seek(0, io.SEEK_END) - start
        stream.seek(start)
        if size == 0:
            raise DicomReadError(f"{label}: empty file (0 bytes)")
        yield Source(label=label, stream=stream, kind=sniff(head), size=size)
    finally:
        if owned:
            stream.close()


def _open(source: ImageSource) -> tuple[str, BinaryIO, bool]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>", io.BytesIO(bytes(source)), True
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        label = os.fspath(name) if isinstance(name, (str, os.PathLike)) else "<stream>"
        stream = source if _seekable(source) else io.BytesIO(source.read())
        return str(label), stream, stream is not source
    if isinstance(source, (str, os.PathLike)):
        label = os.fspath(source)
        label = label if isinstance(label, str) else os.fsdecode(label)
        path = Path(label)
        if path.is_dir():
            raise DicomReadError(f"{label}: is a directory, not a file")
        try:
            return label, path.open("rb"), True
        except FileNotFoundError:
            raise DicomReadError(f"{label}: file not found") from None
        except OSError as exc:
            raise DicomReadError(f"{label}: cannot be opened ({exc.strerror or exc})") from None
    raise DicomReadError(
        f"<{type(source).__name__}>: not a path, bytes or binary file object; pass one of those"
    )


def _seekable(stream: object) -> bool:
    try:
        return bool(stream.seekable())  # type: ignore[attr-defined]
    except Exception:
        return False


def sniff(head: bytes) -> str | None:
    """The kind of content from its first 132 bytes, or ``None`` if unrecognised."""
    if len(head) >= _HEAD and head[128:132] == b"DICM":
        return DICOM
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    if _looks_like_bare_dataset(head):
        return DICOM_BARE
    return None


def _looks_like_bare_dataset(head: bytes) -> bool:
    """Whether the bytes start with a plausible DICOM data element (either byte order)."""
    if len(head) < 8:
        return False
    for order in "<>":
        group, _element = struct.unpack(f"{order}HH", head[:4])
        if group not in _FIRST_GROUPS:
            continue
        if head[4:6].decode("latin-1") in _VRS:  # explicit VR
            return True
        (length,) = struct.unpack(f"{order}I", head[4:8])  # implicit VR: a sane first length
        if length < 1 << 16 or length == 0xFFFFFFFF:
            return True
    return False


def not_dicom_reason(kind: str | None, size: int) -> str:
    """Why content of ``kind`` is not read as DICOM, with what to do instead."""
    if kind in RASTER_KINDS:
        return f"not a DICOM file: it is a {kind} image (use load_image or read_image)"
    if size < _HEAD:
        return f"not a DICOM file: only {size} bytes, shorter than a DICOM preamble"
    return "not a DICOM file: no 'DICM' marker at byte 128 and no DICOM data element at the start"


@contextlib.contextmanager
def captured_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Collect warnings raised while reading one file, when that is safe to do.

    ``warnings.catch_warnings`` swaps process-wide state, so it is only used on the main
    thread; on worker threads warnings pass through untouched and the list stays empty.
    Nothing relies on the list for correctness: it only adds pydicom's words to messages.
    """
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
