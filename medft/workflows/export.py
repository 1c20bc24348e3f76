"""``medft export``: a model as an ONNX or TorchScript file, checked against medft.

The model is one checkpoint, several (an ensemble), or the fold models of a ``medft cv``
study; an ensemble becomes one graph that returns the mean of its members' calibrated
probabilities, with the ensemble's thresholds (a study's out-of-fold ones) in the sidecar.

The export is verified before it is handed over: the file is run (onnxruntime for ONNX,
``torch.jit.load`` for TorchScript) on check images and must reproduce the
:class:`~medft.inference.Predictor`'s calibrated probabilities to 1e-4.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from medft._io import output_file_in
from medft.errors import ConfigError
from medft.inference.export import (
    ExportResult,
    check_inputs,
    export_predictor,
    random_check_images,
)
from medft.workflows.predict import build_predictor

__all__ = ["MODEL_FILES", "ExportFormat", "export"]

ExportFormat = Literal["onnx", "torchscript"]
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
"""The model file ``medft export --out DIR`` writes into DIR, by format."""


def export(
    checkpoint: Sequence[str | Path] | None = None,
    out: str | Path = "medft-export",
    *,
    study: str | Path | None = None,
    format: ExportFormat = "onnx",
    input_dtype: Literal["auto", "uint8", "uint16"] = "auto",
    check: bool = True,
    check_files: Sequence[str | Path] = (),
) -> ExportResult:
    """Export a model into the folder ``out`` (model + JSON sidecar) and check it.

    Args:
        checkpoint: One checkpoint, or several for an ensemble (mean calibrated probability),
            exported as one graph (loaded with ``weights_only=True``).
        study: A ``medft cv`` folder: its fold models as an ensemble, with the operating
            point chosen on the study's out-of-fold predictions.
        out: Folder for model.onnx (or model.pt) and its .json sidecar; a path ending in
            .onnx or .pt names the model file itself.
        format: ``onnx`` or ``torchscript``.
        input_dtype: ``auto`` (the checkpoint's cache dtype), ``uint8`` or ``uint16``.
        check: Run the exported file and compare it with the Predictor (needs onnxruntime
            for ONNX).
        check_files: Images to check on (default: reproducible synthetic check images).

    Raises:
        ConfigError: Neither or both of ``checkpoint`` and ``study``; ensemble members
            that differ in labels or preprocessing; the check disagrees by more than 1e-4.
    """
    checkpoints = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint or ())
    if study is not None and checkpoints:  # before --out is created
        raise ConfigError("give either --checkpoint (one or more) or --study, not both")
    if study is None and not checkpoints:
        raise ConfigError("give a model: --checkpoint CKPT (repeatable) or --study DIR")
    out = output_file_in(
        out, MODEL_FILES.get(format, "model"), suffixes=(".onnx", ".pt")
    )  # before any work
    predictor = build_predictor(checkpoints, study=study)
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
