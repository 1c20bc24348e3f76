"""``medft export``: a checkpoint as an ONNX or TorchScript file, checked against medft.

The export is verified before it is handed over: the file is run (onnxruntime for ONNX,
``torch.jit.load`` for TorchScript) on check images and must reproduce the
:class:`~medft.inference.Predictor`'s calibrated probabilities to 1e-4.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medft._io import check_output_file
from medft.inference import Predictor
from medft.inference.export import (
    ExportResult,
    check_inputs,
    export_predictor,
    random_check_images,
)

__all__ = ["export"]


def export(
    checkpoint: str | Path,
    out: str | Path,
    *,
    format: str = "onnx",
    input_dtype: str = "auto",
    check: bool = True,
    check_files: Sequence[str | Path] = (),
) -> ExportResult:
    """Export ``checkpoint`` to ``out`` (+ ``out.json`` sidecar) and check it.

    Args:
        checkpoint: A medft checkpoint (loaded with ``weights_only=True``).
        out: The model file to write (``.onnx`` or ``.pt``).
        format: ``onnx`` or ``torchscript``.
        input_dtype: ``auto`` (the checkpoint's cache dtype), ``uint8`` or ``uint16``.
        check: Run the exported file and compare it with the Predictor (needs onnxruntime
            for ONNX).
        check_files: Images to check on (default: reproducible synthetic check images).
    """
    check_output_file(out)  # a bad --out is found before the model is loaded
    predictor = Predictor.from_checkpoint(checkpoint)
    images = None
    if check:
        images = check_inputs(predictor, check_files) if check_files else None
        if images is None or not len(images):
            images = random_check_images(predictor.image_size)
    return export_predictor(
        predictor,
        out,
        format=format,
        input_dtype=input_dtype,
        check_images=images,  # type: ignore[arg-type]
    )
