"""What the page shows about a case, as plain data: tables, headline, safe metadata, windows.

Pure functions of a :class:`~medft.demo.service.Case`, testable without Gradio. The metadata
panel is an allow-list: only acquisition facts (modality, view, photometric interpretation,
size, spacing, encoding) are shown; patient sex, age band and the salted patient hash that
the reader also extracts are deliberately left out, as is everything else in the header.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.uid import UID

from medft._io import atomic_path

from .service import Case, Window

AUTO, FULL, CUSTOM = "auto", "full", "custom"
_PRESET = "header:"

FINDING_COLUMNS = ["Finding", "Probability", "Operating point", "Call"]


def findings_table(case: Case) -> pd.DataFrame:
    """One row per finding, most probable first: probability, threshold and the call."""
    rows = [
        {
            "Finding": call.finding,
            "Probability": round(call.probability, 3),
            "Operating point": round(call.threshold, 3),
            "Call": "POSITIVE" if call.positive else "negative",
        }
        for call in sorted(case.findings, key=lambda c: c.probability, reverse=True)
    ]
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)


def headline(case: Case) -> str:
    """A one-line Markdown summary: the top finding and its call."""
    top = case.top
    call = "**positive**" if top.positive else "negative"
    positives = [c.finding for c in case.findings if c.positive]
    others = (
        f" Positive calls: {', '.join(positives)}."
        if positives
        else " No finding is called positive."
    )
    text = (
        f"Top finding: **{top.finding}** · probability {top.probability:.2f} · {call} at the "
        f"operating point {top.threshold:.2f}.{others}"
    )
    if case.notes:
        text += "\n\n" + "\n".join(f"- Note: {note}" for note in case.notes)
    return text


def metadata_table(case: Case) -> pd.DataFrame:
    """The safe metadata panel (allow-listed acquisition facts only; see module docstring)."""
    meta = case.meta
    rows = [
        ("Modality", meta.modality or "not stated"),
        ("View position", meta.view_position or "not stated"),
        ("Body part", meta.body_part or "not stated"),
        ("Photometric interpretation", meta.photometric or "not stated"),
        ("Size (rows × columns)", f"{meta.original_shape[0]} × {meta.original_shape[1]}"),
        ("Pixel spacing (mm)", _spacing(meta.pixel_spacing)),
        ("Bits stored", str(meta.bits_stored) if meta.bits_stored else "not stated"),
        ("Frames", str(meta.n_frames)),
        ("Encoding", _encoding(meta.transfer_syntax)),
        ("Model's display window", _window_text(meta.window, meta.voi_source)),
        ("File (SHA-256, first 12)", case.short),
    ]
    return pd.DataFrame(rows, columns=["Field", "Value"])


def _spacing(spacing: tuple[float, float] | None) -> str:
    if not spacing:
        return "not stated"
    return f"{spacing[0]:.4g} × {spacing[1]:.4g}"


def _encoding(transfer_syntax: str | None) -> str:
    if not transfer_syntax:
        return "not stated"
    if transfer_syntax[:1].isdigit():
        return UID(transfer_syntax).name
    return transfer_syntax


def _window_text(window: tuple[float, float] | None, source: str) -> str:
    sources = {
        "window": "the file's window",
        "voi_lut": "the file's VOI LUT",
        "minmax": "min-max of the image",
        "full_range": "the pixel type's full range",
        "explicit": "explicit",
    }
    where = sources.get(source, source)
    if window is None:
        return where
    return f"center {window[0]:.6g}, width {window[1]:.6g} ({where})"


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class SliderSetup:
    """Range and starting values of the window center/width sliders, in the image's units."""

    low: float
    high: float
    center: float
    width: float
    step: float

    @property
    def width_max(self) -> float:
        """Widest window offered: twice the image's value range."""
        return max(2.0 * (self.high - self.low), 2.0)

    @property
    def width_min(self) -> float:
        """Narrowest window offered."""
        return max(self.step, 1e-6)


def slider_setup(case: Case) -> SliderSetup:
    """Slider ranges and start values, in the image's units, at the model's display window.

    The range is the image's value range when known (``case.value_range``); until then it
    is twice the model's window around its center, which covers any sensible window.
    """
    if case.value_range is not None:
        low, high = case.value_range
    elif case.meta.window is not None:
        center, width = case.meta.window
        low, high = center - width, center + width
    else:
        low, high = 0.0, 1.0
    if not high > low:
        high = low + 1.0
    span = high - low
    center, width = case.meta.window or ((low + high) / 2.0, span)
    center = float(np.clip(center, low, high))
    width = float(np.clip(width, span / 1000.0, 2.0 * span))
    return SliderSetup(low=low, high=high, center=center, width=width, step=_nice_step(span))


def _nice_step(span: float) -> float:
    """A round step of about span/1000 (1, 2 or 5 times a power of ten)."""
    raw = max(span / 1000.0, 1e-6)
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def window_choices(case: Case) -> list[tuple[str, str]]:
    """Dropdown entries ``(label, value)``: the model's view, each header preset, full range."""
    choices = [("As the model sees it (file default)", AUTO)]
    for index, (center, width) in enumerate(case.meta.window_presets):
        choices.append(
            (f"Header preset {index + 1}: C {center:g} / W {width:g}", _PRESET + str(index))
        )
    choices.append(("Full range (min-max)", FULL))
    choices.append(("Custom (sliders)", CUSTOM))
    return choices


@dataclass(frozen=True)
class ViewState:
    """What the page shows now: the controls every view event sends, as one value.

    Gradio hands a handler its inputs as positional arguments; the page's wiring
    (``medft.demo.ui``) gathers them into this once, and every handler and helper after
    that takes this one object. Events that do not send the window controls
    (upload, example, case) get the page's initial window controls.

    Attributes:
        session: the browser session's state (entries, csv, current case key).
        finding: the finding shown in the overlay.
        method: the saliency method.
        alpha: the overlay opacity.
        preset: the window preset dropdown's value.
        center: the window center slider.
        width: the window width slider.
    """

    session: dict
    finding: str
    method: str
    alpha: float
    preset: str = AUTO
    center: float = 0.5
    width: float = 1.0

    def window(self, case: Case, preset: str | None = None) -> Window:
        """The window these controls ask for on ``case`` (``preset`` overrides the dropdown)."""
        return resolve_window(
            case, self.preset if preset is None else preset, self.center, self.width
        )


def resolve_window(case: Case, choice: str | None, center: float, width: float) -> Window:
    """The window a preset choice (or the sliders, for ``custom``) stands for.

    ``full`` needs ``case.value_range`` (see :meth:`InferenceService.value_range`).
    """
    if choice in (None, "", AUTO):
        return None
    if choice == FULL:
        low, high = case.value_range or (0.0, 1.0)
        return ((low + high) / 2.0, max(high - low, 1e-6))
    if choice.startswith(_PRESET):
        presets = case.meta.window_presets
        index = int(choice.removeprefix(_PRESET)) if choice.removeprefix(_PRESET).isdigit() else -1
        if 0 <= index < len(presets):
            return (float(presets[index][0]), float(presets[index][1]))
        return None
    return (float(center), max(float(width), 1e-6))


# --------------------------------------------------------------------------- batch


@dataclass(frozen=True)
class BatchEntry:
    """One uploaded file in a batch: its display name and its case, or why it was refused."""

    name: str
    case: Case | None
    error: str | None = None


def batch_table(entries: Sequence[BatchEntry], labels: Sequence[str]) -> pd.DataFrame:
    """One row per file: status, top finding and every probability and call."""
    columns = ["file", "sha256", "status", "top finding"]
    columns += [f"prob_{label}" for label in labels] + [f"call_{label}" for label in labels]
    rows = []
    for entry in entries:
        row: dict[str, object] = {"file": entry.name}
        if entry.case is None:
            row.update({"sha256": "", "status": f"not analysed: {entry.error}"})
        else:
            case = entry.case
            row.update({"sha256": case.short, "status": "ok", "top finding": case.top.finding})
            for call in case.findings:
                row[f"prob_{call.finding}"] = round(call.probability, 4)
                row[f"call_{call.finding}"] = int(call.positive)
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    for label in labels:  # 1/0, blank for files that were not analysed
        table[f"call_{label}"] = table[f"call_{label}"].astype("Int64")
    return table


def write_predictions_csv(
    path: str | Path, entries: Sequence[BatchEntry], labels: Sequence[str]
) -> Path:
    """Write the batch table as ``predictions.csv`` (atomically)."""
    with atomic_path(path) as tmp:
        batch_table(entries, labels).to_csv(tmp, index=False)
    return Path(path)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A display image in [0, 1] as 8-bit gray for the browser."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
