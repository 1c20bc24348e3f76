"""The clinician's demo: review predictions and saliency maps of uploaded X-rays in a browser.

``medft demo`` (or ``python demo/app.py``) serves a Gradio page built on the library:
:class:`InferenceService` (a loaded checkpoint, thread-safe, with a case cache) does the
work, :mod:`medft.demo.ui` lays out the page, :mod:`medft.demo.server` starts it with safe
defaults. See docs/demo.md.

Imports are lazy so that ``medft --help`` does not pay for torch and Gradio.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DemoSettings": "settings",
    "add_demo_arguments": "settings",
    "settings_from_args": "settings",
    "DemoServer": "server",
    "find_quickstart_checkpoint": "server",
    "run_demo": "server",
    "start_demo": "server",
    "Case": "service",
    "FindingCall": "service",
    "InferenceService": "service",
    "ExampleCase": "examples",
    "model_card": "modelcard",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medft.demo' has no attribute {name!r}")
    return getattr(importlib.import_module(f"medft.demo.{module}"), name)
