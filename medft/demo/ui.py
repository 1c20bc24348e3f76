"""The Gradio Blocks page: layout and event handlers, thin over :class:`InferenceService`.

Every handler is wrapped so that no exception reaches the browser as a traceback: reader
refusals become a sentence in the status line, anything unexpected becomes a short
message with an incident number (the log gets the exception type and the short content
hash, nothing about the file's header or name). User-driven events use ``.input`` /
``.release`` so programmatic updates of a control never trigger a second render.

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from medft.errors import MedftError
from medft.explain import METHOD_UNITS

from .examples import ExampleCase
from .modelcard import NOTICE
from .service import DEFAULT_METHOD, Case, InferenceService, Window
from .uploads import RequestBudget, UploadInbox, display_name, is_inside, user_message
from .views import (
    AUTO,
    CUSTOM,
    FULL,
    BatchEntry,
    batch_table,
    findings_table,
    headline,
    metadata_table,
    resolve_window,
    slider_setup,
    to_uint8,
    window_choices,
    write_predictions_csv,
)

log = logging.getLogger("medft.demo")

METHOD_CHOICES = [
    ("Grad-CAM", "gradcam"),
    ("Grad-CAM++", "gradcam++"),
    ("HiResCAM", "hirescam"),
    ("Occlusion (slow)", "occlusion"),
]
DOWNLOAD_MAX_AGE_S = 3600
PNG_COMPRESS_LEVEL = 1  # zlib level: 4x faster than the default for an RGB overlay, same size
CSS = """
#status p { margin: 0.2em 0; }
#headline { font-size: 1.05em; }
.medft-notice { border-left: 4px solid #b45309; padding: 0.4em 0.8em; background: #fffbeb; }
#original img, #overlay img { width: 100%; height: 100%; object-fit: contain; }
"""


def _new_session() -> dict[str, Any]:
    """Per-browser-session state: names and content keys only (cases live in the service)."""
    return {"entries": [], "csv": None, "current": None}


class ReviewPage:
    """Builds the demo page around one service.

    Args:
        service: the loaded model and case cache.
        examples: server-side example cases, offered by position.
        card: model card Markdown.
        upload_dir: Gradio's upload folder (uploads outside it are refused).
        downloads_dir: where predictions.csv files are written.
        title: the line under the page's heading (which model is served).
        max_request_bytes: total upload bytes of one request (:class:`RequestBudget`).
        max_request_pixels: decoded samples of one request, from the headers.
    """

    def __init__(
        self,
        service: InferenceService,
        *,
        examples: Sequence[ExampleCase],
        card: str,
        upload_dir: Path,
        downloads_dir: Path,
        title: str,
        max_request_bytes: int = 256 * 2**20,
        max_request_pixels: int = 50_000_000,
    ) -> None:
        self.service = service
        self.max_request_bytes = int(max_request_bytes)
        self.max_request_pixels = int(max_request_pixels)
        self.examples = list(examples)
        self.card = card
        self.inbox = UploadInbox(upload_dir, service.max_bytes, budget_bytes=inbox_budget(service))
        self.views_dir = Path(upload_dir) / "views"
        self.downloads_dir = Path(downloads_dir)
        self.title = title

    # ------------------------------------------------------------------ layout
    def build(self) -> gr.Blocks:
        """The Blocks app (not launched)."""
        labels = self.service.labels
        with gr.Blocks(
            title="medft · X-ray review", analytics_enabled=False, delete_cache=(300, 1800)
        ) as blocks:
            self.state = gr.State(_new_session())
            gr.Markdown(f"# medft · X-ray review\n{self.title}", elem_id="title")
            gr.Markdown(NOTICE, elem_classes=["medft-notice"], elem_id="notice")
            with gr.Tabs():
                with gr.Tab("Review", id="review"):
                    self._review_tab(labels)
                with gr.Tab("Batch", id="batch"):
                    gr.Markdown(
                        "One row per uploaded file: probabilities (`prob_*`) and calls at the "
                        "operating point (`call_*`, 1 = positive). Files that could not be "
                        "read are listed with the reason."
                    )
                    self.batch = gr.Dataframe(interactive=False, elem_id="batch-table", wrap=True)
                    self.download = gr.DownloadButton(
                        "Download predictions.csv", visible=False, elem_id="download"
                    )
                with gr.Tab("Model card", id="card"):
                    gr.Markdown(self.card, elem_id="model-card")
            self._api_endpoint()
            self._wire()
        return blocks

    def _review_tab(self, labels: list[str]) -> None:
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                self.files = gr.File(
                    label="Upload DICOM, PNG or JPEG files (one or several)",
                    file_count="multiple",
                    type="filepath",
                    elem_id="upload",
                )
                self.example_list = gr.Dataset(
                    label="Example cases (synthetic)",
                    components=["textbox"],
                    samples=[[example.title] for example in self.examples],
                    type="index",
                    layout="table",
                    elem_id="examples",
                )
                self.status = gr.Markdown(
                    "Upload a file or pick an example case.", elem_id="status"
                )
                self.case_choice = gr.Dropdown(
                    label="Case shown", choices=[], interactive=True, elem_id="case"
                )
                self.metadata = gr.Dataframe(
                    label="Image information (no patient identifiers)",
                    interactive=False,
                    wrap=True,
                    column_widths=["45%", "55%"],
                    max_height=800,
                    elem_id="metadata",
                )
            with gr.Column(scale=3):
                self.headline = gr.Markdown(elem_id="headline")
                with gr.Row():
                    self.original = self._image("Image (window/level below)", "original")
                    self.overlay = self._image("Saliency overlay", "overlay")
                self.colour_note = gr.Markdown(elem_id="colour-note")
                with gr.Row():
                    self.finding = gr.Radio(
                        labels, value=labels[0], label="Finding in the overlay", elem_id="finding"
                    )
                    self.method = gr.Radio(
                        METHOD_CHOICES,
                        value=DEFAULT_METHOD,
                        label="Saliency method",
                        elem_id="method",
                    )
                    self.alpha = gr.Slider(
                        0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity", elem_id="opacity"
                    )
                with gr.Row():
                    self.preset = gr.Dropdown(
                        label="Window preset",
                        choices=[("As the model sees it (file default)", AUTO)],
                        value=AUTO,
                        interactive=True,
                        elem_id="preset",
                    )
                    self.center = gr.Slider(
                        0, 1, value=0.5, label="Window center", elem_id="center"
                    )
                    self.width = gr.Slider(0, 1, value=1.0, label="Window width", elem_id="width")
                self.findings = gr.Dataframe(
                    label="Findings (called positive at the model's stored operating point)",
                    interactive=False,
                    elem_id="findings",
                )

    @staticmethod
    def _image(label: str, elem_id: str) -> gr.Image:
        return gr.Image(
            label=label,
            type="numpy",
            format="png",
            interactive=False,
            height=480,
            buttons=["fullscreen", "download"],
            elem_id=elem_id,
        )

    def _api_endpoint(self) -> None:
        """``/predict``: one file in, JSON out (for scripts and load tests; hidden in the page)."""
        self.api_file = gr.File(visible=False, type="filepath")
        self.api_result = gr.JSON(visible=False)
        self.api_trigger = gr.Button(visible=False)

    def _wire(self) -> None:
        case_out = self._case_outputs()
        view_in = [self.state, self.finding, self.method, self.alpha]
        window_in = [*view_in, self.preset, self.center, self.width]
        self.files.upload(
            self._guard(self.on_upload), [self.files, *view_in], case_out, api_name="analyse"
        )
        self.example_list.click(
            self._guard(self.on_example),
            [self.example_list, *view_in],
            case_out,
            api_name="example",
        )
        self.case_choice.input(
            self._guard(self.on_case), [self.case_choice, *view_in], case_out, api_name="case"
        )
        overlay_out = [self.status, self.overlay, self.colour_note]
        for control, name in ((self.finding, "finding"), (self.method, "method")):
            control.input(self._guard(self.on_overlay), window_in, overlay_out, api_name=name)
        self.alpha.release(self._guard(self.on_overlay), window_in, overlay_out, api_name="opacity")
        window_out = [self.status, self.original, self.overlay, self.center, self.width]
        self.preset.input(self._guard(self.on_preset), window_in, window_out, api_name="preset")
        slider_out = [self.status, self.original, self.overlay, self.preset]
        for slider, name in ((self.center, "center"), (self.width, "width")):
            slider.release(self._guard(self.on_slider), window_in, slider_out, api_name=name)
        self.api_trigger.click(
            self._guard_api(self.on_api_predict),
            [self.api_file],
            [self.api_result],
            api_name="predict",
        )

    def _case_outputs(self) -> list[gr.components.Component]:
        return [
            self.state, self.status, self.case_choice, self.headline, self.original,
            self.overlay, self.colour_note, self.findings, self.finding, self.preset,
            self.center, self.width, self.metadata, self.batch, self.download,
        ]  # fmt: skip

    # ------------------------------------------------------------------ guards
    def _guard(self, handler: Callable[..., dict]) -> Callable[..., dict]:
        """Turn any exception into a status message (the page never shows a traceback)."""

        @functools.wraps(handler)
        def guarded(*args: Any) -> dict:
            try:
                return handler(*args)
            except MedftError as exc:
                return {self.status: f"**Not possible:** {user_message(exc)}"}
            except Exception as exc:
                incident = secrets.token_hex(4)
                log.error(
                    "handler %s failed: %s (incident %s)",
                    handler.__name__,
                    type(exc).__name__,
                    incident,
                )
                log.debug("incident %s", incident, exc_info=True)
                return {
                    self.status: "**Something went wrong** while preparing this view "
                    f"(incident {incident}). The app is still running: try again, or upload "
                    "the file again."
                }

        return guarded  # every output list includes self.status

    def _guard_api(self, handler: Callable[[Any], dict]) -> Callable[[Any], dict]:
        @functools.wraps(handler)
        def guarded(path: Any) -> dict:
            try:
                return handler(path)
            except Exception as exc:
                incident = secrets.token_hex(4)
                log.error("api predict failed: %s (incident %s)", type(exc).__name__, incident)
                return {"ok": False, "error": f"internal error (incident {incident})"}

        return guarded

    # ------------------------------------------------------------------ handlers
    def on_upload(self, paths: Any, session: dict, finding: str, method: str, alpha: float) -> dict:
        """Analyse every uploaded file; show the first readable one; fill the batch table."""
        started = time.perf_counter()
        paths = [paths] if isinstance(paths, str) else list(paths or [])
        session = dict(session or _new_session())
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
        return self._show_entries(session, entries, method, alpha, time.perf_counter() - started)

    def _analyse_upload(self, path: str, name: str, budget: RequestBudget) -> BatchEntry:
        try:
            data = self.inbox.take(path)
            budget.charge(data)  # from the header, before anything is decoded
            return BatchEntry(name, self.service.analyse_bytes(data))
        except MedftError as exc:
            log.info("upload refused: %s", type(exc).__name__)
            return BatchEntry(name, None, user_message(exc))

    def on_example(
        self, index: Any, session: dict, finding: str, method: str, alpha: float
    ) -> dict:
        """Open example case number ``index`` (server-side file chosen by position)."""
        started = time.perf_counter()
        if not isinstance(index, int) or not 0 <= index < len(self.examples):
            return {self.status: "**Not possible:** no such example case."}
        example = self.examples[index]
        try:
            entry = BatchEntry(example.title, self.service.analyse_file(example.path))
        except MedftError as exc:
            entry = BatchEntry(example.title, None, user_message(exc))
        session = dict(session or _new_session())
        return self._show_entries(session, [entry], method, alpha, time.perf_counter() - started)

    def on_case(self, choice: Any, session: dict, finding: str, method: str, alpha: float) -> dict:
        """Show another case of the current batch."""
        entries = session.get("entries") or []
        index = int(choice) if str(choice).isdigit() else -1
        if not 0 <= index < len(entries) or not entries[index].get("key"):
            return {self.status: "**Not possible:** pick a case from the list."}
        case = self._case(entries[index]["key"])
        session = {**session, "current": case.key}
        status = f"Showing **{entries[index]['name']}**."
        return {self.state: session, self.status: status, **self._case_view(case, method, alpha)}

    def on_overlay(
        self,
        session: dict,
        finding: str,
        method: str,
        alpha: float,
        preset: str,
        center: float,
        width: float,
    ) -> dict:
        """Redraw the overlay for another finding, method or opacity."""
        case = self._current(session)
        window = resolve_window(case, preset, center, width)
        return {
            self.status: gr.skip(),
            self.overlay: self._png(
                self.service.overlay(case, finding, method=method, alpha=alpha, window=window)
            ),
            self.colour_note: self._colour_note(case, method),
        }

    def on_preset(
        self,
        session: dict,
        finding: str,
        method: str,
        alpha: float,
        preset: str,
        center: float,
        width: float,
    ) -> dict:
        """Apply a window preset and move the sliders to it."""
        case = self._current(session)
        if preset == FULL:
            self.service.value_range(case)  # decoded once; widens the sliders to the data
        window = resolve_window(case, preset, center, width)
        shown = window or case.meta.window or (center, width)
        return {
            self.status: gr.skip(),
            **self._windowed(case, finding, method, alpha, window),
            **self._sliders(case, shown),
        }

    def on_slider(
        self,
        session: dict,
        finding: str,
        method: str,
        alpha: float,
        preset: str,
        center: float,
        width: float,
    ) -> dict:
        """Render the window the sliders describe."""
        case = self._current(session)
        window = resolve_window(case, CUSTOM, center, width)
        return {
            self.status: gr.skip(),
            **self._windowed(case, finding, method, alpha, window),
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

    # ------------------------------------------------------------------ helpers
    def _show_entries(
        self, session: dict, entries: list[BatchEntry], method: str, alpha: float, seconds: float
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
            self.status: _status_text(entries, seconds),
            self.case_choice: gr.update(
                choices=[(e.name, str(i)) for i, e in readable],
                value=str(readable[0][0]) if readable else None,
            ),
            self.batch: batch_table(entries, self.service.labels),
            self.download: gr.update(value=session["csv"], visible=bool(entries)),
        }
        if readable:
            out.update(self._case_view(readable[0][1].case, method, alpha))
        else:
            out.update(self._empty_view())
        return out

    def _case_view(self, case: Case, method: str, alpha: float) -> dict:
        """Everything shown for one case, starting at its top finding and the model's window."""
        finding = case.top.finding
        return {
            self.headline: headline(case),
            self.original: self._png(to_uint8(self.service.view_image(case))),
            self.overlay: self._png(
                self.service.overlay(case, finding, method=method, alpha=alpha)
            ),
            self.colour_note: self._colour_note(case, method),
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
        tidy = functools.partial(_on_grid, step=setup.step)
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

    def _windowed(
        self, case: Case, finding: str, method: str, alpha: float, window: Window
    ) -> dict:
        return {
            self.original: self._png(to_uint8(self.service.view_image(case, window))),
            self.overlay: self._png(
                self.service.overlay(case, finding, method=method, alpha=alpha, window=window)
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

    def _current(self, session: dict) -> Case:
        """The case shown now (the first readable one, or the one picked in the list)."""
        key = (session or {}).get("current")
        if not key:
            raise _NoCase("upload a file or pick an example case first")
        return self._case(key)

    def _case(self, key: str) -> Case:
        case = self.service.get(key)
        if case is None:
            raise _NoCase("this case is no longer in memory: upload the file again")
        return case

    def _write_csv(self, entries: list[BatchEntry], previous: str | None) -> str | None:
        if previous and is_inside(previous, self.downloads_dir):
            shutil.rmtree(Path(previous).parent, ignore_errors=True)
        if not entries:
            return None
        _prune(self.downloads_dir, DOWNLOAD_MAX_AGE_S)
        folder = self.downloads_dir / secrets.token_hex(8)
        return str(write_predictions_csv(folder / "predictions.csv", entries, self.service.labels))


def inbox_budget(service: InferenceService) -> int:
    """Memory for recently read uploads: a quarter of the case cache, at least one file.

    Under load most uploads are new content, so whatever the inbox keeps for its five
    minutes is memory on top of the case cache: with a fixed 256 MB it was the main
    growth of the server's RSS in the load test (benchmarks/demo_load.py). Tying it to
    ``cache_mb`` keeps the demo's memory within the one budget the operator sets.
    """
    return max(service.max_bytes, service.cache_bytes // 4)


class _NoCase(MedftError):
    """No case to act on (nothing uploaded yet, or it left the cache)."""


def _on_grid(value: float, rounding: Callable[[float], int], *, step: float) -> float:
    """``value`` rounded to a multiple of ``step`` (no float noise such as -5052.000000000001)."""
    digits = max(0, -math.floor(math.log10(step))) + 1
    return round(rounding(value / step) * step, digits)


def _status_text(entries: list[BatchEntry], seconds: float) -> str:
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


def _prune(folder: Path, max_age_s: float) -> None:
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
