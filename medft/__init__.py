"""medft: fine-tune ImageNet-pretrained image models on DICOM X-ray data.

The public surface is small and re-exported here lazily (PEP 562 ``__getattr__``), so
``import medft`` stays fast: torch, timm and Lightning load only when a name that needs
them is first used. docs/reference/api.md lists what each name is for.
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
from typing import Any

from medft.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DicomReadError,
    LeakageError,
    MedftError,
    UnsupportedCodecError,
    WeightsError,
)

# Public name -> (module, attribute in that module); imported on first use. No
# ``if TYPE_CHECKING:`` imports of them here: import-linter counts those, and every module
# that reads ``medft.__version__`` would then seem to import the workflows.
_LAZY: dict[str, tuple[str, str]] = {
    "Predictor": ("medft.inference", "Predictor"),
    "predict": ("medft.workflows.predict", "predict"),
    "export": ("medft.workflows.export", "export"),
    "evaluate": ("medft.eval.evaluate", "evaluate"),
    "run_cv": ("medft.workflows.cv", "run"),
    "read_xray": ("medft.data.dicom", "read_xray"),
    "load_manifest": ("medft.data.manifest", "load_manifest"),
    "synthesize": ("medft.data.synth", "synthesize"),
    "XrayDataModule": ("medft.data.datamodule", "XrayDataModule"),
    "XrayClassifier": ("medft.model.module", "XrayClassifier"),
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562) and cache the name here."""
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'medft' has no attribute {name!r}")
    module, attribute = target
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DicomReadError",
    "LeakageError",
    "MedftError",
    "Predictor",
    "UnsupportedCodecError",
    "WeightsError",
    "XrayClassifier",
    "XrayDataModule",
    "__version__",
    "evaluate",
    "export",
    "load_manifest",
    "predict",
    "read_xray",
    "run_cv",
    "synthesize",
]
