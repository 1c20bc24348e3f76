"""The layer a CAM is taken at, found automatically for any timm backbone.

:func:`resolve_target_layer` picks it (the last feature stage of a CNN, the last block of a
ViT-style token model, or the last spatial module of anything else) and :func:`to_spatial`
reads its output as a (C, h, w) map whatever its layout (NCHW, NHWC or tokens on the patch
grid derived from the model itself). Used by :mod:`medft.explain.saliency`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medft.errors import ConfigError


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


def to_spatial(tensor: torch.Tensor, layer: TargetLayer, input_hw: tuple[int, int]) -> torch.Tensor:
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
