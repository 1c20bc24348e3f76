"""Defensive access to DICOM header values.

Real archives hold non-numeric strings in numeric fields, the wrong number of values,
and text in an undeclared character set. pydicom raises or warns on some of these only
when a value is first touched. Every header read in medft goes through these getters,
which return ``None`` for anything unusable, so one bad field never crashes a read; the
caller decides whether a missing value matters for the pixels.
"""

from __future__ import annotations

import math
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

_MAX_TEXT = 64
_DETAIL_CHARS = 300


INVALID = object()
"""Returned by :func:`raw_value` for a present element that pydicom cannot convert."""


def raw_value(ds: Dataset, keyword: str) -> Any:
    """The top-level value of ``keyword``; ``None`` when absent, ``INVALID`` when unreadable."""
    try:
        return ds.get(keyword)
    except Exception:  # pydicom converts lazily and raises on malformed bytes
        return INVALID


def is_empty(value: Any) -> bool:
    """True for an absent or zero-length value (``None``, ``""``, ``b""``, no items)."""
    if value is None:
        return True
    if isinstance(value, (str, bytes)):
        return not value.strip()
    return isinstance(value, (MultiValue, list, tuple)) and len(value) == 0


def _as_list(value: Any) -> list[Any]:
    if value is None or value is INVALID:
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return list(value)
    if isinstance(value, str) and "\\" in value:  # a multi-valued string left unsplit
        return value.split("\\")
    return [value]


def to_float(value: Any) -> float | None:
    """``value`` as a finite float, or ``None``."""
    if value is INVALID:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _to_int(value: Any) -> int | None:
    number = to_float(value)
    if number is None or number != int(number):
        return None
    return int(number)


def float_values(ds: Dataset, keyword: str) -> list[float | None]:
    """Every value of a numeric field, ``None`` in place of each invalid one."""
    return [to_float(v) for v in _as_list(raw_value(ds, keyword))]


def floats(ds: Dataset, keyword: str) -> tuple[float, ...] | None:
    """All values of a numeric field as floats; ``None`` if absent, empty or any is invalid."""
    values = [to_float(v) for v in _as_list(raw_value(ds, keyword))]
    if not values or any(v is None for v in values):
        return None
    return tuple(v for v in values if v is not None)


def first_float(ds: Dataset, keyword: str) -> float | None:
    """The first value of a numeric field, or ``None``."""
    values = floats(ds, keyword)
    return values[0] if values else None


def first_int(ds: Dataset, keyword: str) -> int | None:
    """The first value of an integer field, or ``None`` (also for non-integral numbers)."""
    values = _as_list(raw_value(ds, keyword))
    return _to_int(values[0]) if values else None


def ints(ds: Dataset, keyword: str) -> tuple[int, ...] | None:
    """All values of an integer field, or ``None`` if absent or any is invalid."""
    values = [_to_int(v) for v in _as_list(raw_value(ds, keyword))]
    if not values or any(v is None for v in values):
        return None
    return tuple(v for v in values if v is not None)


def text(ds: Dataset, keyword: str) -> str | None:
    """A short single-valued text field, stripped; ``None`` if absent, empty or unreadable.

    Only the first value of a multi-valued field is kept, control characters are dropped
    and the result is cut to 64 characters (the longest VR medft reads, LO).
    """
    values = _as_list(raw_value(ds, keyword))
    if not values:
        return None
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    cleaned = "".join(ch for ch in str(value) if ch.isprintable()).strip()
    return cleaned[:_MAX_TEXT] or None


def code(ds: Dataset, keyword: str) -> str | None:
    """A code string (CS) upper-cased, or ``None``."""
    value = text(ds, keyword)
    return value.upper() if value else None


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line, cut to 300 characters for messages."""
    text = " ".join(str(exc).split())
    if len(text) > _DETAIL_CHARS:
        text = text[: _DETAIL_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {text}"
