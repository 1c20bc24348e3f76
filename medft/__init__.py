"""medft: fine-tune ImageNet-pretrained image models on DICOM X-ray data.

The public surface is small and re-exported here lazily, so ``import medft``
stays fast (torch and timm load only when a model is used).
"""

from __future__ import annotations

__version__ = "0.1.0"

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

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DicomReadError",
    "LeakageError",
    "MedftError",
    "UnsupportedCodecError",
    "WeightsError",
    "__version__",
]
