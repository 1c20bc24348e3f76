"""Results as DICOM, filed next to the image in the hospital's PACS (research use only).

- :func:`write_sr`: the findings of one image as a Comprehensive SR (TID 1500);
- :func:`write_capture`: a saliency overlay as a Secondary Capture with a burned-in
  ``RESEARCH USE ONLY - NOT FOR DIAGNOSIS`` banner;
- :func:`send_results`: store written results in a PACS (DICOMweb STOW-RS or DIMSE C-STORE).

Layer: above ``medft.inference`` and ``medft.explain``, below the workflows. See docs/pacs.md.
"""

from __future__ import annotations

from medft.results.capture import Capture, build_capture, render_capture, write_capture
from medft.results.common import RESEARCH_BANNER, FindingResult, ModelInfo, read_source
from medft.results.send import SendReport, parse_destination, send_results
from medft.results.sr import SrFinding, build_sr, read_sr, write_sr
from medft.results.writer import ResultFiles, write_results, write_results_index

__all__ = [
    "RESEARCH_BANNER",
    "Capture",
    "FindingResult",
    "ModelInfo",
    "ResultFiles",
    "SendReport",
    "SrFinding",
    "build_capture",
    "build_sr",
    "parse_destination",
    "read_source",
    "read_sr",
    "render_capture",
    "send_results",
    "write_capture",
    "write_results",
    "write_results_index",
    "write_sr",
]
