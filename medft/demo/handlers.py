"""The review page's event handlers: from what the browser sent to the components to update.

Each ``on_*`` method takes the event's own value (if any) and one :class:`ViewState` (the
page's controls), and returns ``{component: new value}`` for the components it changes.
The components themselves are laid out by :class:`~medft.demo.ui.ReviewPage`, which
inherits these handlers; Gradio's positional inputs become a :class:`ViewState` in its
wiring, and every handler runs behind its guard (no traceback reaches the browser).

Uploads are read once and deleted at once (:class:`~medft.demo.uploads.UploadInbox`);
cases are cached by content, so re-submitting the same file reuses the analysis.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from medft.errors import MedftError
from medft.explain import METHOD_UNITS

from .examples import ExampleCase
from .service import Case, InferenceService, Window
from .uploads import RequestBudget, UploadInbox, display_name, is_inside, user_message
from .views import (
    AUTO,
    CUSTOM,
    FULL,
    BatchEntry,
    ViewState,
    batch_table,
    findings_table,
    headline,
    metadata_table,
    slider_setup,
    to_uint8,
    window_choices,
    write_predictions_csv,
)

log = logging.getLogger("medft.demo")

DOWNLOAD_MAX_AGE_S = 3600
PNG_COMPRESS_LEVEL = 1  # zlib level: 4x faster than the default for an RGB overlay, same size


def new_session() -> dict[str, Any]:
    """Per-browser-session state: names and content keys only (cases live in the service)."""
    return {"entries": [], "csv": None, "current": None}


class ReviewHandlers:
    """The handlers of the review page; :class:`~medft.demo.ui.ReviewPage` adds the layout.

    The attributes below are set by the page: its service, limits and folders in its
    constructor, the Gradio components when it builds the layout.
    """

    service: InferenceService
    examples: list[ExampleCase]
    inbox: UploadInbox
    views_dir: Path
    downloads_dir: Path
    max_request_bytes: int
    max_request_pixels: int
    state: gr.State
    status: gr.Markdown
    case_choice: gr.Dropdown
    metadata: gr.Dataframe
    headline: gr.Markdown
    original: gr.Image
    overlay: gr.Image
    colour_note: gr.Markdown
    finding: gr.Radio
    method: gr.Radio
    alpha: gr.Slider
    preset: gr.Dropdown
    center: gr.Slider
    width: gr.Slider
    findings: gr.Dataframe
    batch: gr.Dataframe
    download: gr.DownloadButton

    # ------------------------------------------------------------------ events
    def on_upload(self, paths: Any, view: ViewState) -> dict:
        """Analyse every uploaded file; show the first readable one; fill the batch table."""
        started = time.perf_counter()
        paths = [paths] if isinstance(paths, str) else list(paths or [])
        session = dict(view.session or new_session())
        budget = RequestBudget(self.max_request_bytes, self.max_request_pixels)
        try:
            budget.check_sizes([str(p) for p in paths])
        except MedftError:
            for path in paths:  # refused as a whole: nothing of it stays on disk
                self.inbox.discard(str(path))
            raise
        entries: list[BatchEntry] = []
        for number, path in enumerate(paths, start=1):
            name = display_name(Path(str(path)).name, f"file {number}")
            entries.append(self._analyse_upload(str(path), name, budget))
        return self._show_entries(session, entries, view, time.perf_counter() - started)

    def _analyse_upload(self, path: str, name: str, budget: RequestBudget) -> BatchEntry:
        try:
            data = self.inbox.take(path)
            budget.charge(data)  # from the header, before anything is decoded
            return BatchEntry(name, self.service.analyse_bytes(data))
        except MedftError as exc:
            log.info("upload refused: %s", type(exc).__name__)
            return BatchEntry(name, None, user_message(exc))

    def on_example(self, index: Any, view: ViewState) -> dict:
        """Open example case number ``index`` (server-side file chosen by position)."""
        started = time.perf_counter()
        if not isinstance(index, int) or not 0 <= index < len(self.examples):
            return {self.status: "**Not possible:** no such example case."}
        example = self.examples[index]
        try:
            entry = BatchEntry(example.title, self.service.analyse_file(example.path))
        except MedftError as exc:
            entry = BatchEntry(example.title, None, user_message(exc))
        session = dict(view.session or new_session())
        return self._show_entries(session, [entry], view, time.perf_counter() - started)

    def on_case(self, choice: Any, view: ViewState) -> dict:
        """Show another case of the current batch."""
        entries = view.session.get("entries") or []
        index = int(choice) if str(choice).isdigit() else -1
        if not 0 <= index < len(entries) or not entries[index].get("key"):
            return {self.status: "**Not possible:** pick a case from the list."}
        case = self._case(entries[index]["key"])
        session = {**view.session, "current": case.key}
        status = f"Showing **{entries[index]['name']}**."
        return {self.state: session, self.status: status, **self._case_view(case, view)}

    def on_overlay(self, view: ViewState) -> dict:
        """Redraw the overlay for another finding, method or opacity."""
        case = self._current(view.session)
        window = view.window(case)
        return {
            self.status: gr.skip(),
            self.overlay: self._png(
                self.service.overlay(
                    case, view.finding, method=view.method, alpha=view.alpha, window=window
                )
            ),
            self.colour_note: self._colour_note(case, view.method),
        }

    def on_preset(self, view: ViewState) -> dict:
        """Apply a window preset and move the sliders to it."""
        case = self._current(view.session)
        if view.preset == FULL:
            self.service.value_range(case)  # decoded once; widens the sliders to the data
        window = view.window(case)
        shown = window or case.meta.window or (view.center, view.width)
        return {
            self.status: gr.skip(),
            **self._windowed(case, view, window),
            **self._sliders(case, shown),
        }

    def on_slider(self, view: ViewState) -> dict:
        """Render the window the sliders describe."""
        case = self._current(view.session)
        window = view.window(case, CUSTOM)
        return {
            self.status: gr.skip(),
            **self._windowed(case, view, window),
            self.preset: gr.update(value=CUSTOM),
        }

    def on_api_predict(self, path: Any) -> dict:
        """The ``/predict`` endpoint: findings and safe metadata, or the reason for refusal."""
        if not path:
            return {"ok": False, "error": "send one file"}
        try:
            case = self.service.analyse_bytes(self.inbox.take(str(path)))
        except MedftError as exc:
            return {"ok": False, "error": user_message(exc)}
        return {
            "ok": True,
            "sha256": case.short,
            "top_finding": case.top.finding,
            "findings": findings_table(case).to_dict(orient="records"),
            "metadata": dict(metadata_table(case).itertuples(index=False, name=None)),
            "notes": case.notes,
        }

    # ------------------------------------------------------------------ views
    def _show_entries(
        self, session: dict, entries: list[BatchEntry], view: ViewState, seconds: float
    ) -> dict:
        session["entries"] = [
            {"name": e.name, "key": e.case.key if e.case else None, "error": e.error}
            for e in entries
        ]
        session["csv"] = self._write_csv(entries, session.get("csv"))
        readable = [(i, e) for i, e in enumerate(entries) if e.case is not None]
        session["current"] = readable[0][1].case.key if readable else None
        out: dict = {
            self.state: session,
            self.status: status_text(entries, seconds),
            self.case_choice: gr.update(
                choices=[(e.name, str(i)) for i, e in readable],
                value=str(readable[0][0]) if readable else None,
            ),
            self.batch: batch_table(entries, self.service.labels),
            self.download: gr.update(value=session["csv"], visible=bool(entries)),
        }
        if readable:
            out.update(self._case_view(readable[0][1].case, view))
        else:
            out.update(self._empty_view())
        return out

    def _case_view(self, case: Case, view: ViewState) -> dict:
        """Everything shown for one case, starting at its top finding and the model's window."""
        finding = case.top.finding
        return {
            self.headline: headline(case),
            self.original: self._png(to_uint8(self.service.view_image(case))),
            self.overlay: self._png(
                self.service.overlay(case, finding, method=view.method, alpha=view.alpha)
            ),
            self.colour_note: self._colour_note(case, view.method),
            self.findings: findings_table(case),
            self.finding: gr.update(value=finding),
            self.preset: gr.update(choices=window_choices(case), value=AUTO),
            **self._sliders(case),
            self.metadata: metadata_table(case),
        }

    def _sliders(self, case: Case, shown: tuple[float, float] | None = None) -> dict:
        """Slider ranges for ``case``, set to ``shown`` (default: the model's window)."""
        setup = slider_setup(case)
        center, width = shown or (setup.center, setup.width)
        tidy = functools.partial(on_grid, step=setup.step)
        low, high = (
            tidy(min(setup.low, center), math.floor),
            tidy(max(setup.high, center), math.ceil),
        )
        return {
            self.center: gr.update(minimum=low, maximum=high, value=center, step=setup.step),
            self.width: gr.update(
                minimum=tidy(min(setup.width_min, width), math.floor),
                maximum=tidy(max(setup.width_max, width), math.ceil),
                value=width,
                step=setup.step,
            ),
        }

    def _empty_view(self) -> dict:
        return {
            self.headline: "",
            self.original: None,
            self.overlay: None,
            self.colour_note: "",
            self.findings: None,
            self.metadata: None,
        }

    def _windowed(self, case: Case, view: ViewState, window: Window) -> dict:
        return {
            self.original: self._png(to_uint8(self.service.view_image(case, window))),
            self.overlay: self._png(
                self.service.overlay(
                    case, view.finding, method=view.method, alpha=view.alpha, window=window
                )
            ),
        }

    def _png(self, image: np.ndarray) -> str:
        """Encode an image for the browser ourselves, fast, inside Gradio's cache.

        Gradio would encode numpy outputs at PNG's default compression, about four times
        slower for a 1024-px RGB overlay for the same size; a file already in its cache is
        served as it is and swept with the rest of the cache.
        """
        self.views_dir.mkdir(parents=True, exist_ok=True)
        path = self.views_dir / f"{secrets.token_hex(12)}.png"
        Image.fromarray(image).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return str(path)

    def _colour_note(self, case: Case, method: str) -> str:
        maps = self.service.saliency(case, method)
        return f"{maps.norm.describe()} Method: {method} ({METHOD_UNITS[method]})."

    # ------------------------------------------------------------------ cases and files
    def _current(self, session: dict) -> Case:
        """The case shown now (the first readable one, or the one picked in the list)."""
        key = (session or {}).get("current")
        if not key:
            raise NoCase("upload a file or pick an example case first")
        return self._case(key)

    def _case(self, key: str) -> Case:
        case = self.service.get(key)
        if case is None:
            raise NoCase("this case is no longer in memory: upload the file again")
        return case

    def _write_csv(self, entries: list[BatchEntry], previous: str | None) -> str | None:
        if previous and is_inside(previous, self.downloads_dir):
            shutil.rmtree(Path(previous).parent, ignore_errors=True)
        if not entries:
            return None
        prune(self.downloads_dir, DOWNLOAD_MAX_AGE_S)
        folder = self.downloads_dir / secrets.token_hex(8)
        return str(write_predictions_csv(folder / "predictions.csv", entries, self.service.labels))


class NoCase(MedftError):
    """No case to act on (nothing uploaded yet, or it left the cache)."""


def on_grid(value: float, rounding: Callable[[float], int], *, step: float) -> float:
    """``value`` rounded to a multiple of ``step`` (no float noise such as -5052.000000000001)."""
    digits = max(0, -math.floor(math.log10(step))) + 1
    return round(rounding(value / step) * step, digits)


def status_text(entries: list[BatchEntry], seconds: float) -> str:
    """The status line after a batch: how many files were analysed, and why others were not."""
    if not entries:
        return "No file received."
    good = [e for e in entries if e.case is not None]
    lines = []
    if good:
        noun = "file" if len(good) == 1 else "files"
        lines.append(f"Analysed {len(good)} {noun} in {seconds:.1f} s.")
    for entry in entries:
        if entry.case is None:
            lines.append(f"**Could not use `{entry.name}`:** {entry.error}.")
    return "\n\n".join(lines)


def prune(folder: Path, max_age_s: float) -> None:
    """Remove download folders older than ``max_age_s``."""
    if not folder.is_dir():
        return
    cutoff = time.time() - max_age_s
    for child in folder.iterdir():
        try:
            if child.stat().st_mtime < cutoff:
                shutil.rmtree(child, ignore_errors=True)
        except OSError:
            continue
