"""Saliency maps for any timm backbone: CAM family and occlusion, on the original pixel grid.

One call, :func:`explain`, turns a display-space radiograph into one map per requested
finding. It fixes the usual traps of CAM tooling:

- the target layer is found automatically (:func:`resolve_target_layer`): the last feature
  stage for CNNs (``model.feature_info``), the last transformer block for ViT-style token
  models, with tokens reshaped onto the patch grid derived from the model itself;
- each finding is explained through its own logit, so sigmoid multi-label heads are never
  reduced to an argmax-softmax target;
- maps are returned *un-normalised* (:attr:`SaliencyResult.raw`), so a map of a p=0.02
  finding is not stretched to look like one of a p=0.98 finding; display scaling is a
  separate, shared decision (:mod:`medft.explain.overlay`);
- every map is also resampled onto the original image (:attr:`SaliencyResult.original`)
  through the :class:`~medft.data.geometry.Geometry` of the preprocessing, undoing the
  resize, the padding or the crop.

The image -> model-input step lives in :mod:`medft.explain.inputs` and the target layer in
:mod:`medft.explain.layers`; their names are re-exported here.

The CAM family is computed here from activations and gradients captured with hooks (the
gradient is taken only down to the target layer, so a map costs one forward pass and a
backward pass through the head); ``pytorch_grad_cam`` is the reference it is tested against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medft.data.geometry import Geometry
from medft.errors import ConfigError
from medft.explain.inputs import (
    ImageInput,
    Preprocess,
    default_preprocess,
    neutral_fill,
    normalising_mean,
    prepare_input,
)
from medft.explain.layers import TargetLayer, find_backbone, resolve_target_layer, to_spatial

# The preprocessing (medft.explain.inputs) and the target layer (medft.explain.layers) have
# their own modules; their names stay importable from here, the CAM front door.
__all__ = [
    "METHODS",
    "METHOD_UNITS",
    "ImageInput",
    "Method",
    "Preprocess",
    "SaliencyResult",
    "TargetLayer",
    "default_preprocess",
    "explain",
    "find_backbone",
    "model_probabilities",
    "neutral_fill",
    "normalising_mean",
    "prepare_input",
    "resolve_target_layer",
]

Method = Literal["gradcam", "gradcam++", "hirescam", "occlusion"]
METHODS: tuple[str, ...] = get_args(Method)

#: What one unit of a raw map means, per method (shown in display-normalisation captions).
METHOD_UNITS: dict[str, str] = {
    "gradcam": "logit contribution per feature cell",
    "gradcam++": "weighted activation (Grad-CAM++ units)",
    "hirescam": "logit contribution per feature cell",
    "occlusion": "drop in probability when the patch is hidden",
}


@dataclass(frozen=True, eq=False)
class SaliencyResult:
    """The explanation of one finding for one image.

    Attributes:
        finding: label name.
        index: position of the finding in the model's output.
        probability: model probability for the finding (sigmoid for multi-label and
            single-output heads, softmax otherwise).
        method: one of :data:`METHODS`.
        layer: module name the CAM was taken at (``"input"`` for occlusion).
        raw: signed float32 map, NOT normalised, at the resolution the method works at: the
            target layer's grid for the CAM family (e.g. 7×7), the model input for
            occlusion. Positive = evidence for the finding, negative = against it; units in
            :data:`METHOD_UNITS`.
        original: ``raw`` resampled onto the original image grid (H, W), undoing resize, pad
            and crop; parts of the image the model never saw (crop mode) are 0.
        geometry: how the image was fitted into the model input.
    """

    finding: str
    index: int
    probability: float
    method: str
    layer: str
    raw: np.ndarray = field(repr=False)
    original: np.ndarray = field(repr=False)
    geometry: Geometry

    @property
    def units(self) -> str:
        """What one unit of :attr:`raw` / :attr:`original` means."""
        return METHOD_UNITS[self.method]

    def at_input(self) -> np.ndarray:
        """The raw map upsampled (bilinear) to the square model input, (size, size)."""
        size = self.geometry.size
        if self.raw.shape == (size, size):
            return self.raw.copy()
        grid = torch.from_numpy(np.ascontiguousarray(self.raw, dtype=np.float32))[None, None]
        up = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)
        return up[0, 0].numpy()


# --------------------------------------------------------------------------- explain


def explain(
    model: nn.Module,
    image: ImageInput,
    *,
    labels: Sequence[str] | None = None,
    preprocess: Preprocess | None = None,
    geometry: Geometry | None = None,
    method: Method = "gradcam",
    findings: Sequence[str] | None = None,
    target_layer: str | nn.Module = "auto",
    multilabel: bool = True,
    patch: int | None = None,
    stride: int | None = None,
    batch_size: int = 32,
) -> list[SaliencyResult]:
    """Explain one image: one un-normalised saliency map per requested finding.

    Args:
        model: a classifier returning logits (1, n_labels); put in eval mode for the call
            and restored afterwards.
        image: display-space (H, W) image in [0, 1], or a prepared model input (see
            :func:`prepare_input`).
        labels: names of the model outputs, in order (default ``class_0`` …).
        preprocess: display image → ((1, C, S, S) input, Geometry); default
            :func:`default_preprocess` (timm data config, pad to square).
        geometry: Geometry of an already prepared tensor ``image``.
        method: ``"gradcam"``, ``"gradcam++"``, ``"hirescam"`` or ``"occlusion"``.
        findings: which labels to explain (default: all), in the order wanted.
        target_layer: ``"auto"``, a module name or a module (CAM family only).
        multilabel: sigmoid per output (True) or softmax over outputs (False) for the
            probabilities; a single-output head always uses the sigmoid. CAM targets are
            always the finding's logit, never an argmax.
        patch: occlusion patch side in model pixels (default: input side / 8).
        stride: occlusion stride (default: patch / 2).
        batch_size: occluded images per forward pass.

    Returns:
        One :class:`SaliencyResult` per finding, in the order of ``findings``.
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    tensor, geometry = prepare_input(model, image, preprocess=preprocess, geometry=geometry)
    parameter = next(iter(model.parameters()), None)
    if parameter is not None:
        tensor = tensor.to(device=parameter.device, dtype=parameter.dtype)

    with _eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        if method == "occlusion":
            probabilities = model_probabilities(model, tensor, multilabel=multilabel)[0]
            indices, names = _select(labels, findings, len(probabilities))
            maps = _occlusion(
                model, tensor, geometry, probabilities[indices], indices, multilabel,
                patch=patch, stride=stride, batch_size=batch_size,
            )  # fmt: skip
            layer_name = "input"
        else:
            layer = resolve_target_layer(model, target_layer, example_input=tensor)
            probabilities, maps, layer_name, indices, names = _cam(
                model, tensor, layer, method, labels, findings, multilabel
            )

    return [
        SaliencyResult(
            finding=name,
            index=index,
            probability=float(probabilities[index]),
            method=method,
            layer=layer_name,
            raw=raw,
            original=geometry.to_original(raw).astype(np.float32),
            geometry=geometry,
        )
        for name, index, raw in zip(names, indices, maps, strict=True)
    ]


def _cam(
    model: nn.Module,
    tensor: torch.Tensor,
    layer: TargetLayer,
    method: str,
    labels: Sequence[str] | None,
    findings: Sequence[str] | None,
    multilabel: bool,
) -> tuple[np.ndarray, list[np.ndarray], str, list[int], list[str]]:
    """CAM maps at ``layer`` for the selected findings, from one forward pass."""
    with _capture_output(layer.module) as captured:
        logits = _logits(model(tensor.detach().clone().requires_grad_(True)))
    if len(captured) != 1:
        raise ConfigError(
            f"layer {layer.name!r} ran {len(captured)} times in one forward pass; name a "
            "module that runs exactly once"
        )
    activation = captured[0]
    probabilities = _probabilities(logits.detach(), multilabel)[0]
    indices, names = _select(labels, findings, logits.shape[1])
    input_hw = (int(tensor.shape[-2]), int(tensor.shape[-1]))
    spatial_activation = to_spatial(activation.detach(), layer, input_hw).float()
    maps = []
    for position, index in enumerate(indices):
        last = position == len(indices) - 1
        (gradient,) = torch.autograd.grad(
            logits[0, index], activation, retain_graph=not last, allow_unused=True
        )
        if gradient is None:
            raise ConfigError(
                f"the output does not depend on layer {layer.name!r}; pick a layer on the path "
                "to the head"
            )
        spatial_gradient = to_spatial(gradient, layer, input_hw).float()
        maps.append(_combine(method, spatial_activation, spatial_gradient).cpu().numpy())
    return probabilities, maps, layer.name, indices, names


def _combine(method: str, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Signed (h, w) map from (C, h, w) activations and gradients of the target logit."""
    if method == "hirescam":
        return (gradient * activation).sum(0)
    if method == "gradcam":
        weights = gradient.mean(dim=(1, 2))
    else:  # gradcam++ (Chattopadhay et al. 2018, eq. 19, closed form for an exp score)
        squared = gradient.pow(2)
        denominator = 2 * squared + activation.sum(dim=(1, 2), keepdim=True) * squared * gradient
        alpha = torch.where(
            gradient != 0, squared / (denominator + 1e-6), torch.zeros_like(gradient)
        )
        weights = (alpha * gradient.clamp(min=0)).sum(dim=(1, 2))
    return torch.einsum("c,chw->hw", weights, activation)


def _occlusion(
    model: nn.Module,
    tensor: torch.Tensor,
    geometry: Geometry,
    base: np.ndarray,
    indices: list[int],
    multilabel: bool,
    *,
    patch: int | None,
    stride: int | None,
    batch_size: int,
) -> np.ndarray:
    """Probability drop when a square patch is hidden (set to :func:`neutral_fill`), (k, S, S).

    Patches lying entirely in padding are skipped; each pixel's value is the mean drop over
    the patches that covered it. All findings come from the same forward passes.
    """
    size = int(tensor.shape[-1])
    patch = patch or max(1, size // 8)
    stride = stride or max(1, patch // 2)
    if not 0 < patch <= size or stride < 1 or batch_size < 1:
        raise ConfigError(f"occlusion needs 0 < patch <= {size}, stride >= 1, batch_size >= 1")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    content = geometry.content_mask()
    positions = [
        (top, left)
        for top in starts
        for left in starts
        if content[top : top + patch, left : left + patch].any()
    ]
    fill = neutral_fill(model, tensor)[0]
    total = np.zeros((len(indices), size, size), dtype=np.float64)
    count = np.zeros((size, size), dtype=np.float64)
    for begin in range(0, len(positions), batch_size):
        chunk = positions[begin : begin + batch_size]
        batch = tensor.repeat(len(chunk), 1, 1, 1)
        for row, (top, left) in enumerate(chunk):
            batch[row, :, top : top + patch, left : left + patch] = fill
        drops = base[None, :] - model_probabilities(model, batch, multilabel=multilabel)[:, indices]
        for row, (top, left) in enumerate(chunk):
            total[:, top : top + patch, left : left + patch] += drops[row][:, None, None]
            count[top : top + patch, left : left + patch] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)


# --------------------------------------------------------------------------- helpers


def _logits(output: torch.Tensor) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ConfigError(f"model must return logits of shape (N, n_labels); got {shape}")
    return output


def _probabilities(logits: torch.Tensor, multilabel: bool) -> np.ndarray:
    """Per-label probabilities (N, n_labels): sigmoid, or softmax for single-label heads."""
    if multilabel or logits.shape[-1] == 1:
        probs = torch.sigmoid(logits)
    else:
        probs = torch.softmax(logits, dim=-1)
    return probs.detach().float().cpu().numpy()


def _select(
    labels: Sequence[str] | None, findings: Sequence[str] | None, n_outputs: int
) -> tuple[list[int], list[str]]:
    """Indices and names of the requested findings; every name is checked."""
    names = list(labels) if labels is not None else [f"class_{i}" for i in range(n_outputs)]
    if len(names) != n_outputs:
        raise ConfigError(
            f"labels has {len(names)} names but the model has {n_outputs} outputs; pass one "
            "name per output, in order"
        )
    wanted = list(findings) if findings is not None else names
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise ConfigError(f"unknown findings {unknown}; the model predicts {names}")
    return [names.index(name) for name in wanted], wanted


@contextlib.contextmanager
def _capture_output(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    outputs: list[torch.Tensor] = []

    def hook(_module, _inputs, output) -> None:
        if not isinstance(output, torch.Tensor):
            raise ConfigError(
                f"target layer {type(_module).__name__} returns {type(output).__name__}, not a "
                "tensor; pick another layer"
            )
        outputs.append(output)

    handle = module.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_probabilities(
    model: nn.Module, batch: torch.Tensor, *, multilabel: bool = True
) -> np.ndarray:
    """Probabilities (N, n_labels) for a batch of prepared inputs, without gradients."""
    with torch.no_grad():
        return _probabilities(_logits(model(batch)), multilabel)
