"""From what a caller holds to a model input: the image -> (1, C, S, S) step of saliency.

:func:`default_preprocess` builds the standard function from the model's own timm data
config (size, mean, std; pad or crop into the square); :func:`prepare_input` accepts a
display-space image, a prepared tensor or a ``(tensor, Geometry)`` pair; and
:func:`neutral_fill` is the value that hides a pixel (occlusion, deletion scores).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from medft.data.geometry import FitMode, Geometry, fit_to_square, plan_fit
from medft.errors import ConfigError
from medft.explain.layers import find_backbone

Preprocess = Callable[[np.ndarray], tuple[torch.Tensor, Geometry]]
ImageInput = np.ndarray | torch.Tensor | tuple[torch.Tensor, Geometry]


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
