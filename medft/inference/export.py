"""Take a trained model out of medft: ONNX or TorchScript, with a JSON sidecar.

The exported graph takes what medft's decode cache holds, the *cached form* of an image:
a batch ``(N, 1, S, S)`` of ``uint8`` (or ``uint16``) display-space pixels at the model's
size (dynamic batch axis). Inside it are everything a Predictor does after that: scaling to
[0, 1], the backbone's normalisation and grey-to-RGB, the network, the sigmoid (softmax for
multiclass) and the temperature. Its output is the calibrated probabilities ``(N, L)``.

What must happen *before* it (reading the file, the display chain, fitting into the square,
quantising) is written in the sidecar, ``<model>.json``, with the labels, the thresholds and
the versions, so the model can run where medft is not installed (docs/inference.md).

An ensemble (several checkpoints, or a ``medft cv`` study's fold models) is exported as one
graph: every member with its own normalisation and temperature, and the mean of the
members' calibrated probabilities out, exactly what the ensemble Predictor returns.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from medft._io import atomic_path, write_json
from medft.errors import ConfigError, MedftError
from medft.inference.predictor import CHECKPOINT_DEFAULTS, Predictor
from medft.provenance import software_versions

__all__ = [
    "EXPORT_FORMATS",
    "ExportResult",
    "ExportedClassifier",
    "ExportedEnsemble",
    "export_predictor",
    "sidecar",
]

EXPORT_FORMATS = ("onnx", "torchscript")
ExportFormat = Literal["onnx", "torchscript"]
ONNX_OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


class ExportedClassifier(nn.Module):
    """Cached-form pixels in, calibrated probabilities out (the exported computation).

    Holds the bare timm network and the classifier's normalisation buffers rather than the
    LightningModule, so tracing never touches trainer state. The parity tests hold it to
    the Predictor's numbers.

    Args:
        model: medft's classifier (its ``model``, ``input_mean`` and ``input_std`` are used).
        temperature: Divides the logits before the sigmoid (None or multiclass: 1).
        max_value: 255 for uint8 input, 65535 for uint16.
        multiclass: Softmax across classes instead of a sigmoid per finding.
    """

    def __init__(
        self, model: nn.Module, *, temperature: float | None, max_value: float, multiclass: bool
    ) -> None:
        super().__init__()
        self.network = model.model
        self.multiclass = bool(multiclass)
        mean = model.input_mean.detach().clone().float()
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", 1.0 / model.input_std.detach().clone().float())
        self.channels = int(mean.shape[1])
        self.register_buffer("inv_temperature", torch.tensor(1.0 / float(temperature or 1.0)))
        self.register_buffer("inv_max", torch.tensor(1.0 / float(max_value)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, 1, S, S)`` integer pixels -> ``(N, L)`` calibrated probabilities."""
        x = image.to(torch.float32) * self.inv_max
        if self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        logits = self.network((x - self.mean) * self.inv_std).float()
        if self.multiclass:
            return logits.softmax(dim=1)
        return (logits * self.inv_temperature).sigmoid()


class ExportedEnsemble(nn.Module):
    """Several :class:`ExportedClassifier` members; the mean of their calibrated probabilities.

    This is how an ensemble Predictor combines its members (for multiclass too: the mean
    of the members' softmax outputs), so one graph gives the ensemble's answer.

    Args:
        members: One exported module per checkpoint, all taking the same input.
    """

    def __init__(self, members: Sequence[ExportedClassifier]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ConfigError("an exported ensemble needs at least two members")
        self.members = nn.ModuleList(members)
        self.register_buffer("inv_count", torch.tensor(1.0 / len(members)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, 1, S, S)`` integer pixels -> ``(N, L)`` mean calibrated probabilities."""
        total = self.members[0](image)
        for member in self.members[1:]:
            total = total + member(image)
        return total * self.inv_count


@dataclass
class ExportResult:
    """Where the export went and how well it matches the Predictor.

    Attributes:
        model_path: The exported model file.
        sidecar_path: Its JSON sidecar.
        format: ``onnx`` or ``torchscript``.
        max_abs_diff: Largest difference from the Predictor's calibrated probabilities on
            check images (None when not checked).
        checked_with: What ran the exported file for the check.
    """

    model_path: Path
    sidecar_path: Path
    format: str
    max_abs_diff: float | None = None
    checked_with: str | None = None

    def describe(self) -> str:
        """One line per fact, for the terminal."""
        lines = [f"exported {self.format}: {self.model_path}", f"sidecar: {self.sidecar_path}"]
        if self.max_abs_diff is not None:
            lines.append(
                f"check: {self.checked_with} agrees with medft's Predictor to "
                f"{self.max_abs_diff:.2e} (max |difference| of probabilities)"
            )
        return "\n".join(lines)


def _input_dtype(predictor: Predictor, input_dtype: str) -> str:
    dtype = predictor.cache_dtype if input_dtype == "auto" else input_dtype
    if dtype not in ("uint8", "uint16"):
        raise ConfigError(f"--input-dtype {input_dtype!r} is not auto, uint8 or uint16")
    return dtype


def _check_members(predictor: Predictor) -> None:
    """One graph takes one input: members must share image size, cache dtype and fit mode."""
    first = predictor.members[0]
    for member in predictor.members[1:]:
        for key, default in CHECKPOINT_DEFAULTS.items():
            mine, theirs = member.meta.get(key, default), first.meta.get(key, default)
            if mine != theirs:
                raise ConfigError(
                    f"{member.path or 'checkpoint'}: {key} {mine!r}, but the first member's is "
                    f"{theirs!r}; an ensemble is exported as one graph only when its members "
                    "share image_size, cache_dtype and fit_mode"
                )


def exported_module(
    predictor: Predictor, input_dtype: str = "auto"
) -> ExportedClassifier | ExportedEnsemble:
    """The module that is exported: the Predictor's model(s) with their post-processing.

    One member gives an :class:`ExportedClassifier`; several give an
    :class:`ExportedEnsemble` of them (each with its own normalisation and temperature).
    """
    _check_members(predictor)
    dtype = _input_dtype(predictor, input_dtype)
    modules = [
        ExportedClassifier(
            member.model,
            temperature=temperature,
            max_value=float(np.iinfo(dtype).max),
            multiclass=predictor.task == "multiclass",
        )
        for member, temperature in zip(predictor.members, predictor.temperatures, strict=True)
    ]
    module = modules[0] if len(modules) == 1 else ExportedEnsemble(modules)
    return module.eval()


def sidecar(predictor: Predictor, fmt: str, input_dtype: str) -> dict[str, Any]:
    """The JSON that travels with an exported model: its contract and provenance."""
    info = predictor.info()
    size = predictor.image_size
    members = info["checkpoints"]
    multiclass = predictor.task == "multiclass"
    if len(members) == 1:
        meaning = (
            "calibrated probabilities (softmax across classes for multiclass)"
            if multiclass
            else "calibrated probability per finding: sigmoid(logit / temperature)"
        )
    else:
        each = "softmax across classes" if multiclass else "sigmoid(logit / its temperature)"
        meaning = f"mean of the {len(members)} members' calibrated probabilities ({each})"
    return {
        "format": fmt,
        "input": {
            "name": INPUT_NAME,
            "shape": ["N", 1, size, size],
            "dtype": input_dtype,
            "meaning": "display-space grey image, fitted into the square and quantised "
            f"(0 = black, {np.iinfo(input_dtype).max} = white); see preprocessing",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["N", len(predictor.labels)],
            "meaning": meaning,
        },
        "labels": list(predictor.labels),
        "task": predictor.task,
        "thresholds": dict(predictor.thresholds),
        "threshold_rule": "positive when probability >= threshold (calibrated scale)",
        "threshold_source": predictor.threshold_source,
        "temperature": predictor.temperature,
        "preprocessing": {
            **predictor.preprocessing.as_dict(),
            "read": "DICOM: Modality LUT -> VOI LUT or window (the file's first; min-max when "
            "absent) -> MONOCHROME1 inverted -> Pixel Padding Value to 0, scaled to [0, 1]; "
            "PNG/JPEG: grey, scaled by the bit depth's maximum",
            "fit": "pad: scale the long side to image_size (antialiased bilinear), centre, pad "
            "with 0; crop: scale the short side to image_size and centre-crop",
            "quantise": "round(clip(x, 0, 1) * max) to the input dtype",
        },
        "checkpoint": members[0] if len(members) == 1 else None,
        "members": members,
        "exported_with": software_versions(),
    }


def export_predictor(
    predictor: Predictor,
    out: str | Path,
    *,
    format: ExportFormat = "onnx",
    input_dtype: str = "auto",
    check_images: torch.Tensor | None = None,
) -> ExportResult:
    """Export a Predictor to ``out`` (+ ``out.json``) as one graph, optionally checked.

    Args:
        predictor: One checkpoint's Predictor, or an ensemble's (one graph: the mean of the
            members' calibrated probabilities; its thresholds go into the sidecar).
        out: The model file to write.
        format: ``onnx`` or ``torchscript``.
        input_dtype: ``auto`` (the checkpoint's cache dtype), ``uint8`` or ``uint16``.
        check_images: Display-space model inputs ``(N, 1, S, S)`` in [0, 1] on the cached
            grid: the exported file must reproduce the Predictor's calibrated probabilities
            on them (ONNX is run with onnxruntime, TorchScript with torch.jit.load).

    Raises:
        ConfigError: An unknown format, ensemble members with different image size, cache
            dtype or fit mode, or the check disagrees by more than 1e-4.
    """
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"--format {format!r} is not one of {', '.join(EXPORT_FORMATS)}")
    dtype = _input_dtype(predictor, input_dtype)
    module = exported_module(predictor, dtype).to("cpu")
    size = predictor.image_size
    example = torch.zeros((2, 1, size, size), dtype=getattr(torch, dtype))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "onnx":
        _export_onnx(module, example, out)
    else:
        _export_torchscript(module, example, out)
    side = out.with_name(out.name + ".json")
    write_json(side, sidecar(predictor, format, dtype))
    result = ExportResult(out, side, format)
    if check_images is not None and len(check_images):
        result.max_abs_diff, result.checked_with = _check(
            predictor, out, format, dtype, check_images
        )
        if result.max_abs_diff > 1e-4:
            raise ConfigError(
                f"{out}: the exported model differs from medft's Predictor by "
                f"{result.max_abs_diff:.2e} (> 1e-4) on the check images; do not use it"
            )
    return result


def _export_onnx(module: nn.Module, example: torch.Tensor, out: Path) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs it; say so plainly when missing)
    except ImportError as exc:
        raise MedftError(
            "ONNX export needs the onnx and onnxscript packages: pip install 'medft[export]'"
        ) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
            opset_version=ONNX_OPSET,
            external_data=False,
        )
    buffer = io.BytesIO()
    program.save(buffer)
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())


def _export_torchscript(module: nn.Module, example: torch.Tensor, out: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (example,), check_trace=False)
    with atomic_path(out) as tmp:
        torch.jit.save(traced, str(tmp))


def _quantised(images: torch.Tensor, dtype: str) -> torch.Tensor:
    scale = float(np.iinfo(dtype).max)
    values = torch.round(images.clamp(0, 1) * scale).to(torch.int32)
    return values.to(getattr(torch, dtype))


def _check(
    predictor: Predictor, path: Path, fmt: str, dtype: str, images: torch.Tensor
) -> tuple[float, str]:
    pixels = _quantised(images, dtype)
    expected = predictor.probabilities(pixels.to(torch.float32) / float(np.iinfo(dtype).max))[1]
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MedftError(
                "checking an ONNX export needs onnxruntime: pip install 'medft[export]' "
                "(or export with --no-check)"
            ) from exc
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run([OUTPUT_NAME], {INPUT_NAME: pixels.numpy()})[0]
        runner = f"onnxruntime {ort.__version__}"
    else:
        loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.inference_mode():
            got = loaded(pixels).numpy()
        runner = "torch.jit.load"
    return float(np.max(np.abs(np.asarray(got, dtype=np.float64) - expected))), runner


def load_sidecar(path: str | Path) -> dict[str, Any]:
    """Read an export's sidecar JSON (``model.onnx.json``)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def random_check_images(size: int, n: int = 8, seed: int = 0) -> torch.Tensor:
    """``n`` reproducible check inputs ``(n, 1, size, size)`` in [0, 1]: smooth and noisy."""
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    smooth = (ramp[None, :] * ramp[:, None])[None, None].expand(n // 2, 1, size, size)
    noisy = torch.rand((n - n // 2, 1, size, size), generator=generator)
    return torch.cat([smooth, noisy])


def check_inputs(predictor: Predictor, paths: Sequence[str | Path]) -> torch.Tensor:
    """Model inputs of readable files among ``paths`` (for the export check)."""
    batch = []
    for path in paths:
        try:
            batch.append(predictor.load(path)[0])
        except MedftError:
            continue
    if not batch:
        return torch.zeros((0, 1, predictor.image_size, predictor.image_size))
    return torch.stack(batch)
