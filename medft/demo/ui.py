"""The Gradio Blocks page: layout and wiring, thin over :class:`InferenceService`.

The handlers live in :mod:`medft.demo.handlers` (:class:`ReviewPage` inherits them); this
module lays out the components and wires each event to its handler. Gradio sends a
handler's inputs as positional arguments: the wiring gathers the view controls into one
:class:`~medft.demo.views.ViewState` before the handler sees them.

Every handler is wrapped so that no exception reaches the browser as a traceback: reader
refusals become a sentence in the status line, anything unexpected becomes a short
message with an incident number (the log gets the exception type and the short content
hash, nothing about the file's header or name). User-driven events use ``.input`` /
``.release`` so programmatic updates of a control never trigger a second render.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from medft.errors import MedftError

from .examples import ExampleCase
from .handlers import PNG_COMPRESS_LEVEL, ReviewHandlers, new_session
from .modelcard import NOTICE
from .service import DEFAULT_METHOD, InferenceService
from .uploads import UploadInbox, user_message
from .views import AUTO, ViewState

__all__ = ["CSS", "METHOD_CHOICES", "PNG_COMPRESS_LEVEL", "ReviewPage", "inbox_budget"]

log = logging.getLogger("medft.demo")

METHOD_CHOICES = [
    ("Grad-CAM", "gradcam"),
    ("Grad-CAM++", "gradcam++"),
    ("HiResCAM", "hirescam"),
    ("Occlusion (slow)", "occlusion"),
]
CSS = """
#status p { margin: 0.2em 0; }
#headline { font-size: 1.05em; }
.medft-notice { border-left: 4px solid #b45309; padding: 0.4em 0.8em; background: #fffbeb; }
#original img, #overlay img { width: 100%; height: 100%; object-fit: contain; }
"""
INITIAL = ViewState({}, "", DEFAULT_METHOD, 0.5)
"""The controls as the page first shows them (the window ones are what upload events get)."""


class ReviewPage(ReviewHandlers):
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
            self.state = gr.State(new_session())
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
                        value=INITIAL.method,
                        label="Saliency method",
                        elem_id="method",
                    )
                    self.alpha = gr.Slider(
                        0.0,
                        1.0,
                        value=INITIAL.alpha,
                        step=0.05,
                        label="Overlay opacity",
                        elem_id="opacity",
                    )
                with gr.Row():
                    self.preset = gr.Dropdown(
                        label="Window preset",
                        choices=[("As the model sees it (file default)", AUTO)],
                        value=INITIAL.preset,
                        interactive=True,
                        elem_id="preset",
                    )
                    self.center = gr.Slider(
                        0, 1, value=INITIAL.center, label="Window center", elem_id="center"
                    )
                    self.width = gr.Slider(
                        0, 1, value=INITIAL.width, label="Window width", elem_id="width"
                    )
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
            self._event(self.on_upload, 1), [self.files, *view_in], case_out, api_name="analyse"
        )
        self.example_list.click(
            self._event(self.on_example, 1),
            [self.example_list, *view_in],
            case_out,
            api_name="example",
        )
        self.case_choice.input(
            self._event(self.on_case, 1), [self.case_choice, *view_in], case_out, api_name="case"
        )
        overlay_out = [self.status, self.overlay, self.colour_note]
        for control, name in ((self.finding, "finding"), (self.method, "method")):
            control.input(self._event(self.on_overlay), window_in, overlay_out, api_name=name)
        self.alpha.release(self._event(self.on_overlay), window_in, overlay_out, api_name="opacity")
        window_out = [self.status, self.original, self.overlay, self.center, self.width]
        self.preset.input(self._event(self.on_preset), window_in, window_out, api_name="preset")
        slider_out = [self.status, self.original, self.overlay, self.preset]
        for slider, name in ((self.center, "center"), (self.width, "width")):
            slider.release(self._event(self.on_slider), window_in, slider_out, api_name=name)
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
    def _event(self, handler: Callable[..., dict], leading: int = 0) -> Callable[..., dict]:
        """A handler as Gradio calls it: ``leading`` event values, then the view controls.

        The view controls (session, finding, method, opacity and, for window events,
        preset, center and width) arrive as positional arguments in the order the wiring
        lists them; they become one :class:`ViewState` here. The result is guarded.
        """

        def from_inputs(*args: Any) -> dict:
            return handler(*args[:leading], ViewState(*args[leading:]))

        from_inputs.__name__ = handler.__name__  # for the incident log; no __wrapped__, so
        # Gradio sees a function of *args and does not check the handler's own arity
        return self._guard(from_inputs)

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


def inbox_budget(service: InferenceService) -> int:
    """Memory for recently read uploads: a quarter of the case cache, at least one file.

    Under load most uploads are new content, so whatever the inbox keeps for its five
    minutes is memory on top of the case cache: with a fixed 256 MB it was the main
    growth of the server's RSS in the load test (benchmarks/demo_load.py). Tying it to
    ``cache_mb`` keeps the demo's memory within the one budget the operator sets.
    """
    return max(service.max_bytes, service.cache_bytes // 4)
