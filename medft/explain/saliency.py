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

The CAM family is computed here from activations and gradients captured with hooks (the
gradient is taken only down to the target layer, so a map costs one forward pass and a
backward pass through the head); ``pytorch_grad_cam`` is the reference it is tested against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medft.data.geometry import FitMode, Geometry, fit_to_square, plan_fit
from medft.errors import ConfigError

Method = Literal["gradcam", "gradcam++", "hirescam", "occlusion"]
METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "hirescam", "occlusion")

#: What one unit of a raw map means, per method (shown in display-normalisation captions).
METHOD_UNITS: dict[str, str] = {
    "gradcam": "logit contribution per feature cell",
    "gradcam++": "weighted activation (Grad-CAM++ units)",
    "hirescam": "logit contribution per feature cell",
    "occlusion": "drop in probability when the patch is hidden",
}

Preprocess = Callable[[np.ndarray], tuple[torch.Tensor, Geometry]]
ImageInput = np.ndarray | torch.Tensor | tuple[torch.Tensor, Geometry]


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


@dataclass(frozen=True)
class TargetLayer:
    """The module a CAM is taken at.

    Attributes:
        name: dotted module name inside the model (``model.get_submodule(name)``).
        module: the module itself.
        channels: expected channel count (from ``feature_info``) when known; used to tell
            NCHW from NHWC outputs.
        backbone: the module whose attributes (``patch_embed``, ``num_prefix_tokens``,
            ``output_fmt``) describe the layer's layout.
    """

    name: str
    module: nn.Module
    channels: int | None
    backbone: nn.Module


# --------------------------------------------------------------------------- preprocessing


def default_preprocess(
    model: nn.Module, *, mode: FitMode = "pad", size: int | None = None
) -> Preprocess:
    """Build the standard image → model-input function from the model's own data config.

    Input size, mean and std come from ``timm.data.resolve_model_data_config`` of the
    backbone (:func:`find_backbone`); a model with a fixed patch-embedding size uses that
    size, and ``size`` overrides both (pass the training resolution of a fine-tuned model).
    The gray image is fitted into the square with :func:`~medft.data.geometry.fit_to_square`
    (``"pad"`` keeps the whole image, ``"crop"`` centre-crops), replicated to the stem's
    channel count and normalised. A model that normalises its input itself (it carries an
    ``input_mean`` buffer, like medft's ``XrayClassifier``) gets the display-space square,
    (1, 1, S, S) in [0, 1], instead.
    """
    import timm.data

    backbone, _ = find_backbone(model)
    config = timm.data.resolve_model_data_config(backbone)
    size = size or _model_input_size(backbone, tuple(config["input_size"]))
    if normalising_mean(model) is not None:

        def display_space(image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
            square, geometry = fit_to_square(_as_display_image(image), size, mode)
            return square[None, None], geometry

        return display_space

    channels = _stem_channels(backbone, int(config["input_size"][0]))
    mean = _per_channel(config["mean"], channels)
    std = _per_channel(config["std"], channels)

    def normalised(image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        square, geometry = fit_to_square(_as_display_image(image), size, mode)
        stacked = square.expand(channels, size, size)
        return ((stacked - mean) / std)[None], geometry

    return normalised


def normalising_mean(model: nn.Module) -> torch.Tensor | None:
    """The ``input_mean`` buffer of a model that normalises its own input, else None."""
    mean = getattr(model, "input_mean", None)
    return mean if isinstance(mean, torch.Tensor) else None


def neutral_fill(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The value that hides a pixel without adding a signal: the data mean, (1, C, 1, 1).

    For a normalised input that is 0; for a model that normalises inside, its
    ``input_mean`` (averaged over channels when gray is replicated inside the model).
    """
    channels = int(inputs.shape[1])
    mean = normalising_mean(model)
    if mean is None:
        return torch.zeros((1, channels, 1, 1), dtype=inputs.dtype, device=inputs.device)
    flat = mean.detach().reshape(-1).to(dtype=inputs.dtype, device=inputs.device)
    values = flat if flat.numel() == channels else flat.mean().expand(channels)
    return values.reshape(1, channels, 1, 1)


def prepare_input(
    model: nn.Module,
    image: ImageInput,
    *,
    preprocess: Preprocess | None = None,
    geometry: Geometry | None = None,
) -> tuple[torch.Tensor, Geometry]:
    """Turn what a caller holds into a (1, C, S, S) model input and its Geometry.

    Accepts a display-space (H, W) image (array or tensor, floats in [0, 1] or uint8), run
    through ``preprocess`` (default: :func:`default_preprocess`); a model-input tensor
    (C, S, S) or (1, C, S, S) with its ``geometry`` (an identity geometry when omitted); or
    the ``(tensor, Geometry)`` pair a preprocess function returns.
    """
    if isinstance(image, tuple):
        if len(image) != 2 or not isinstance(image[1], Geometry):
            raise ConfigError("image tuple must be (model-input tensor, Geometry)")
        image, geometry = image
    if isinstance(image, torch.Tensor) and image.ndim in (3, 4):
        tensor = image if image.ndim == 4 else image[None]
        if tensor.shape[0] != 1 or tensor.shape[-1] != tensor.shape[-2]:
            raise ConfigError(
                f"model-input tensor must be one square image (1, C, S, S), got "
                f"{tuple(image.shape)}; pass a display-space (H, W) image to fit it instead"
            )
        if geometry is None:
            side = int(tensor.shape[-1])
            geometry = plan_fit((side, side), side, "pad")
        elif geometry.size != tensor.shape[-1]:
            raise ConfigError(
                f"geometry.size {geometry.size} does not match the input tensor side "
                f"{tensor.shape[-1]}"
            )
        return tensor.detach(), geometry
    fn = preprocess if preprocess is not None else default_preprocess(model)
    tensor, geometry = fn(_as_display_image(image))
    if tensor.ndim == 3:
        tensor = tensor[None]
    return tensor.detach(), geometry


def _as_display_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """A (H, W) float32 array in [0, 1]; uint8 is scaled, anything else outside is refused."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 2:
        raise ConfigError(
            f"expected a gray (H, W) display-space image, got shape {array.shape}; read "
            "radiographs with medft.data.dicom.read_xray, or pass a (1, C, S, S) model input"
        )
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all() or array.min() < -1e-6 or array.max() > 1 + 1e-6:
        raise ConfigError(
            "display-space image must be finite floats in [0, 1] (got range "
            f"{np.nanmin(array):.3g}..{np.nanmax(array):.3g}); window it first "
            "(medft.data.dicom.read_xray does)"
        )
    return np.clip(array, 0.0, 1.0)


def _model_input_size(model: nn.Module, input_size: tuple[int, ...]) -> int:
    embed = getattr(model, "patch_embed", None)
    fixed = getattr(embed, "img_size", None) if getattr(embed, "strict_img_size", False) else None
    height, width = (int(fixed[0]), int(fixed[1])) if fixed else (input_size[1], input_size[2])
    if height != width:
        raise ConfigError(
            f"the model expects a non-square input {height}x{width}; pass a preprocess "
            "function that produces it"
        )
    return height


def _stem_channels(model: nn.Module, fallback: int) -> int:
    """Input channels of the first convolution (timm keeps in_chans there), else ``fallback``."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    return fallback


def _per_channel(values: Sequence[float], channels: int) -> torch.Tensor:
    stats = [float(v) for v in values]
    if len(stats) != channels:
        stats = [sum(stats) / len(stats)] * channels
    return torch.tensor(stats, dtype=torch.float32).view(channels, 1, 1)


# --------------------------------------------------------------------------- target layer


def find_backbone(model: nn.Module) -> tuple[nn.Module, str]:
    """The timm backbone inside ``model`` and its name prefix (``(model, "")`` if it is one).

    A backbone is the first module (the model itself, then its submodules in order) that
    describes its own layout: ``feature_info``, or a ViT-style ``patch_embed``. This lets a
    wrapper (e.g. a LightningModule holding the timm model) be explained like the model.
    """
    for name, module in model.named_modules():
        if hasattr(module, "feature_info") or hasattr(module, "patch_embed"):
            return module, f"{name}." if name else ""
    return model, ""


def resolve_target_layer(
    model: nn.Module,
    target_layer: str | nn.Module = "auto",
    *,
    example_input: torch.Tensor | None = None,
) -> TargetLayer:
    """Find the module to take CAMs at.

    ``"auto"`` looks at the backbone (:func:`find_backbone`) and picks, in order: for
    ViT-style token models (``patch_embed`` + ``blocks``), the last block's ``norm1`` when
    the head reads the class token (patch tokens after the last block no longer reach it),
    else the last block; for timm models with ``feature_info``, the last feature stage
    (``feature_info[-1]["module"]``); for any other module, the last module (in execution
    order) whose output is a spatial (N, C, H, W) map, found with one forward pass of
    ``example_input``. A module name (relative to ``model``) or a module overrides.
    """
    backbone, prefix = find_backbone(model)
    if isinstance(target_layer, nn.Module):
        for name, module in model.named_modules():
            if module is target_layer:
                return _layer(model, name, backbone, prefix)
        raise ConfigError("target_layer module is not part of the model; pass one of its modules")
    if target_layer != "auto":
        try:
            model.get_submodule(target_layer)
        except AttributeError as err:
            stages = [prefix + info["module"] for info in _feature_info(backbone)]
            raise ConfigError(
                f"target_layer {target_layer!r} is not a module of {type(model).__name__} "
                f"(its feature stages: {', '.join(stages) or 'none'}); or use 'auto'"
            ) from err
        return _layer(model, target_layer, backbone, prefix)

    blocks = getattr(backbone, "blocks", None)
    if hasattr(backbone, "patch_embed") and isinstance(blocks, nn.Sequential | nn.ModuleList):
        last = len(blocks) - 1
        name = f"blocks.{last}"
        reads_class_token = getattr(backbone, "global_pool", None) == "token"
        if reads_class_token and hasattr(blocks[last], "norm1"):
            name = f"blocks.{last}.norm1"
        return _layer(model, prefix + name, backbone, prefix)
    info = _feature_info(backbone)
    if info:
        return _layer(model, prefix + info[-1]["module"], backbone, prefix)
    if example_input is None:
        raise ConfigError(
            f"cannot pick a target layer for {type(model).__name__} without an example input "
            "(it has no timm feature_info); name the layer instead"
        )
    return _layer(model, _last_spatial_module(model, example_input), backbone, prefix)


def _layer(model: nn.Module, name: str, backbone: nn.Module, prefix: str) -> TargetLayer:
    """A TargetLayer with the channel count ``feature_info`` gives for it, if any."""
    channels = None
    for entry in _feature_info(backbone):
        if prefix + entry["module"] == name:
            channels = entry.get("num_chs")
    return TargetLayer(name, model.get_submodule(name), channels, backbone)


def _feature_info(model: nn.Module) -> list[dict]:
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list | tuple):
        return []
    return [dict(entry) for entry in info if isinstance(entry, dict) and "module" in entry]


def _last_spatial_module(model: nn.Module, example_input: torch.Tensor) -> str:
    """Name of the last module to run whose output is a (1, C, H, W) map larger than 1×1.

    When containers pass the same tensor on (a Sequential ending in it), the innermost
    module that produced it is named.
    """
    seen: list[tuple[str, torch.Tensor]] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(_module, _inputs, output, name=name) -> None:
            spatial = isinstance(output, torch.Tensor) and output.ndim == 4
            if spatial and output.shape[-2:].numel() > 1:
                seen.append((name, output))

        handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise ConfigError(
            f"{type(model).__name__} has no module with a spatial (N, C, H, W) output; "
            "use method='occlusion'"
        )
    last = seen[-1][1]
    return next(name for name, output in seen if output is last)


def _to_spatial(
    tensor: torch.Tensor, layer: TargetLayer, input_hw: tuple[int, int]
) -> torch.Tensor:
    """Reshape a layer output (1, …) to (C, h, w): NCHW as is, NHWC permuted, tokens gridded."""
    if tensor.ndim == 4:
        if _is_channels_last(tensor, layer):
            return tensor[0].permute(2, 0, 1)
        return tensor[0]
    if tensor.ndim == 3:
        prefix, grid = _token_grid(layer, int(tensor.shape[1]), input_hw)
        tokens = tensor[0, prefix:]
        return tokens.reshape(grid[0], grid[1], tokens.shape[-1]).permute(2, 0, 1)
    raise ConfigError(
        f"layer {layer.name!r} outputs shape {tuple(tensor.shape)}; a CAM needs (N, C, H, W), "
        "(N, H, W, C) or (N, tokens, C); pick another layer"
    )


def _is_channels_last(tensor: torch.Tensor, layer: TargetLayer) -> bool:
    """NHWC when the last axis has the expected channel count, else the model's output_fmt."""
    model_nhwc = str(getattr(layer.backbone, "output_fmt", "NCHW")) == "NHWC"
    if layer.channels is None:
        return model_nhwc
    first, last = tensor.shape[1] == layer.channels, tensor.shape[-1] == layer.channels
    return last and (model_nhwc or not first)


def _token_grid(
    layer: TargetLayer, n_tokens: int, input_hw: tuple[int, int]
) -> tuple[int, tuple[int, int]]:
    """Number of prefix tokens and the (rows, cols) patch grid, both read from the model."""
    embed = getattr(layer.backbone, "patch_embed", None)
    grids: list[tuple[int, int]] = []
    if embed is not None and hasattr(embed, "dynamic_feat_size"):
        grids.append(tuple(embed.dynamic_feat_size(input_hw)))
    if embed is not None and getattr(embed, "grid_size", None) is not None:
        grids.append(tuple(embed.grid_size))
    prefixes = (int(getattr(layer.backbone, "num_prefix_tokens", 0)), 0)
    for grid in grids:
        for prefix in prefixes:
            if grid[0] * grid[1] == n_tokens - prefix:
                return prefix, (int(grid[0]), int(grid[1]))
    raise ConfigError(
        f"layer {layer.name!r} outputs {n_tokens} tokens, which does not fit the model's patch "
        f"grid {grids or 'unknown'} with {prefixes[0]} prefix tokens; name a spatial layer"
    )


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
    spatial_activation = _to_spatial(activation.detach(), layer, input_hw).float()
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
        spatial_gradient = _to_spatial(gradient, layer, input_hw).float()
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
