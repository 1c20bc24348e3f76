"""A saliency overlay as a DICOM Secondary Capture that any PACS viewer displays.

The capture is the overlay (RGB, the original image grid) with a red banner burned in
above it, ``RESEARCH USE ONLY - NOT FOR DIAGNOSIS``, and a black footer naming the model and
each finding's probability and call. The banner and footer sit *outside* the image area,
so no pixel of the overlay is hidden. Narrow images are enlarged by a whole factor
(nearest neighbour, to at least :data:`MIN_WIDTH` pixels) so that the text stays legible
next to them. The Secondary Capture joins the source's study in its own new series, with
Burned In Annotation = YES and a reference to the source image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from medft._io import atomic_path
from medft.errors import ConfigError
from medft.results.common import (
    RESEARCH_BANNER,
    FindingResult,
    ModelInfo,
    check_findings,
    read_source,
    series_identity,
)

__all__ = [
    "CAPTURE_SERIES_NUMBER",
    "MIN_WIDTH",
    "Capture",
    "build_capture",
    "render_capture",
    "write_capture",
]

#: Series number of medft's capture series (the SR series is 9901).
CAPTURE_SERIES_NUMBER = 9902
#: Captures narrower than this are enlarged by a whole factor so the text is legible.
MIN_WIDTH = 512
BANNER_RGB = (176, 0, 0)
FOOTER_RGB = (0, 0, 0)
TEXT_RGB = (255, 255, 255)


@dataclass(frozen=True)
class Capture:
    """A rendered capture and where the overlay lies in it.

    Attributes:
        pixels: uint8 RGB (H, W, 3).
        top: first row of the overlay (the banner's height).
        scale: whole factor the overlay was enlarged by (nearest neighbour).
        image_shape: (rows, columns) of the enlarged overlay inside ``pixels``.
    """

    pixels: np.ndarray
    top: int
    scale: int
    image_shape: tuple[int, int]

    def image_area(self) -> np.ndarray:
        """The overlay's pixels inside the capture (a view)."""
        rows, cols = self.image_shape
        return self.pixels[self.top : self.top + rows, :cols]


def render_capture(overlay: np.ndarray, lines: Sequence[str]) -> Capture:
    """Burn the research-use banner above ``overlay`` and ``lines`` of text below it.

    Args:
        overlay: uint8 RGB (H, W, 3), e.g. from :func:`medft.explain.render_overlay`.
        lines: footer text (model, findings); long lines are cut to fit.
    """
    from PIL import Image, ImageDraw

    overlay = np.asarray(overlay)
    if overlay.ndim != 3 or overlay.shape[2] != 3 or overlay.dtype != np.uint8:
        raise ConfigError(
            f"a capture needs a uint8 RGB overlay (H, W, 3); got {overlay.dtype} {overlay.shape}"
        )
    scale = max(1, math.ceil(MIN_WIDTH / overlay.shape[1]))
    image = np.repeat(np.repeat(overlay, scale, axis=0), scale, axis=1)
    rows, width = image.shape[:2]
    banner_height = max(28, round(width * 0.06))
    line_height = max(18, round(banner_height * 0.7))
    footer_height = line_height * len(lines) + (line_height // 2 if lines else 0)
    canvas = Image.new("RGB", (width, banner_height + rows + footer_height), FOOTER_RGB)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, width - 1, banner_height - 1), fill=BANNER_RGB)
    font = _fitting_font(draw, RESEARCH_BANNER, width - 8, round(banner_height * 0.62))
    centre = (width / 2, banner_height / 2)
    draw.text(centre, RESEARCH_BANNER, fill=TEXT_RGB, font=font, anchor="mm")
    canvas.paste(Image.fromarray(image), (0, banner_height))
    small = _font(round(line_height * 0.7))
    for number, line in enumerate(lines):
        text = _cut(draw, line, width - 8, small)
        y = banner_height + rows + line_height // 4 + number * line_height
        draw.text((4, y), text, fill=TEXT_RGB, font=small)
    return Capture(
        pixels=np.asarray(canvas, dtype=np.uint8).copy(),
        top=banner_height,
        scale=scale,
        image_shape=(rows, width),
    )


def build_capture(
    source: Dataset,
    overlay: np.ndarray,
    findings: Sequence[FindingResult],
    model: ModelInfo,
    *,
    finding: str | None = None,
    method: str = "saliency",
) -> hd.sc.SCImage:
    """The Secondary Capture of ``overlay`` for one source image header.

    Args:
        source: the source image's header (:func:`medft.results.common.read_source`).
        overlay: uint8 RGB (H, W, 3) saliency overlay on the source's grid.
        findings: the image's findings; the footer lists them (the explained one first).
        model: the model that made them.
        finding: which finding the overlay explains (names the capture; default: the first).
        method: the saliency method, for the footer and the series description.
    """
    findings = check_findings(findings)
    grid = (int(source.Rows), int(source.Columns))
    if np.shape(overlay)[:2] != grid:
        raise ConfigError(
            f"overlay shape {np.shape(overlay)[:2]} is not the source image's grid {grid}; "
            "render it on the original pixels (SaliencyResult.original)"
        )
    finding = finding or findings[0].finding
    shown = sorted(findings, key=lambda r: r.finding != finding)
    lines = [f"{method} map of '{finding}'", model.describe()]
    lines += [result.caption() for result in shown]
    capture = render_capture(overlay, lines)
    orientation = source.get("PatientOrientation")
    known = orientation is not None and len(orientation) == 2 and all(orientation)
    content_key = [finding, method, [r.caption() for r in findings]]
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=capture.pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=tuple(orientation) if known else ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        **series_identity("sc", source, model, content_key, CAPTURE_SERIES_NUMBER),
    )
    if not known:
        sc.PatientOrientation = None  # Type 2: empty = unknown (the source does not say)
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = f"{RESEARCH_BANNER}. {lines[0]} - {lines[1]}"[:10240]
    sc.DerivationDescription = f"{method} saliency overlay of '{finding}' by {model.describe()}"[
        :1024
    ]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    return sc


def write_capture(
    source_path: str | Path,
    overlay: np.ndarray,
    findings: Sequence[FindingResult],
    model: ModelInfo,
    out_path: str | Path,
    *,
    finding: str | None = None,
    method: str = "saliency",
) -> Path:
    """Write the Secondary Capture of ``overlay`` for the DICOM at ``source_path`` (atomically).

    Args:
        source_path: the DICOM image the overlay was computed from.
        overlay: uint8 RGB (H, W, 3) overlay on the original grid
            (:func:`medft.explain.render_overlay`).
        findings: the image's findings (probability and call of each go in the footer).
        model: the model (name, version, checkpoint SHA-256).
        out_path: the ``.dcm`` file to write.
        finding: the finding the overlay explains (default: the first of ``findings``).
        method: the saliency method's name (e.g. ``gradcam``).

    Returns:
        ``out_path``.

    Raises:
        DicomReadError: ``source_path`` is not a DICOM image a result can reference.
        ConfigError: ``overlay`` is not uint8 RGB.
    """
    findings = check_findings(findings)  # before touching the file: cheap errors first
    sc = build_capture(
        read_source(source_path), overlay, findings, model, finding=finding, method=method
    )
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        sc.save_as(tmp, enforce_file_format=True)
    return out_path


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=max(8, size))


def _fitting_font(draw, text: str, width: int, size: int):
    """The largest default font up to ``size`` whose rendering of ``text`` fits ``width``."""
    while size > 8:
        font = _font(size)
        if draw.textlength(text, font=font) <= width:
            return font
        size -= 1
    return _font(8)


def _cut(draw, text: str, width: int, font) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
