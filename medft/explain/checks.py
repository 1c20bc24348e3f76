"""Trust checks for saliency maps: does the map depend on the model, and on the evidence?

Two questions a reviewer should ask before believing a saliency map:

- :func:`randomisation_check` (Adebayo et al., 2018, "Sanity checks for saliency maps"):
  re-initialise the model's top layers, cascading down from the head, and measure how
  similar the maps stay (Spearman rank correlation). A map that barely changes when the
  weights are destroyed shows the image (edges, contrast), not what the model learned.
- :func:`deletion_score` (Petsiuk et al., 2018, RISE): remove the most salient pixels first
  and watch the probability fall, compared with removing pixels in random order; optionally
  the mirror image, insertion. A faithful map makes the probability fall faster than random.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from medft.data.geometry import Geometry
from medft.errors import ConfigError
from medft.explain.saliency import (
    ImageInput,
    Method,
    Preprocess,
    SaliencyResult,
    explain,
    find_backbone,
    model_probabilities,
    neutral_fill,
    prepare_input,
    resolve_target_layer,
)

Baseline = Literal["mean", "blur"]


def randomisation_check(
    model: nn.Module,
    image: ImageInput,
    *,
    labels: Sequence[str] | None = None,
    findings: Sequence[str] | None = None,
    method: Method = "gradcam",
    levels: int = 3,
    target_layer: str | nn.Module = "auto",
    preprocess: Preprocess | None = None,
    geometry: Geometry | None = None,
    multilabel: bool = True,
    seed: int = 0,
) -> dict:
    """Cascading parameter randomisation: maps of the model vs. copies randomised from the top.

    Level 0 is a control (an untouched copy: correlation 1 unless the pipeline is
    non-deterministic); level k re-initialises the last k parameter groups (timm's
    ``group_matcher``: head, last stage, …; top-level children for other models). The
    model itself is not modified.

    Returns:
        ``{"method", "layer", "groups", "rows"}``; each row has ``level``, ``randomised``
        (group names), ``finding``, ``spearman`` (signed maps), ``spearman_abs`` (absolute
        maps) and the randomised model's ``probability``. Low correlations are what a
        method that depends on the learned weights should give.
    """
    tensor, geometry = prepare_input(model, image, preprocess=preprocess, geometry=geometry)
    if levels < 1:
        raise ConfigError(f"levels must be at least 1, got {levels}")
    layer_name = "input"
    if method != "occlusion":
        layer_name = resolve_target_layer(model, target_layer, example_input=tensor).name
    options = dict(
        labels=labels,
        findings=findings,
        method=method,
        multilabel=multilabel,
        **({} if method == "occlusion" else {"target_layer": layer_name}),
    )
    reference = explain(model, (tensor, geometry), **options)
    groups = parameter_groups(model)
    levels = min(levels, len(groups))

    rows: list[dict] = []
    randomised = copy.deepcopy(model)
    names: list[str] = []
    for level in range(levels + 1):
        if level > 0:
            group_name, params = groups[-level]
            _reinitialise(randomised, params, seed=seed + level)
            names.append(group_name)
        maps = explain(randomised, (tensor, geometry), **options)
        for ref, other in zip(reference, maps, strict=True):
            rows.append(
                {
                    "level": level,
                    "randomised": "+".join(names) if names else "none (control)",
                    "finding": ref.finding,
                    "spearman": _spearman(ref.raw, other.raw),
                    "spearman_abs": _spearman(np.abs(ref.raw), np.abs(other.raw)),
                    "probability": other.probability,
                }
            )
    return {
        "method": method,
        "layer": layer_name,
        "groups": [name for name, _ in groups],
        "rows": rows,
    }


def deletion_score(
    model: nn.Module,
    image: ImageInput,
    saliency: SaliencyResult | np.ndarray,
    *,
    labels: Sequence[str] | None = None,
    finding: str | None = None,
    preprocess: Preprocess | None = None,
    geometry: Geometry | None = None,
    multilabel: bool = True,
    steps: int = 20,
    n_random: int = 3,
    baseline: Baseline = "mean",
    insertion: bool = True,
    batch_size: int = 32,
    seed: int = 0,
) -> dict:
    """Deletion (and insertion) curves of one map against random pixel orders.

    Pixels of the model input that show the image (not padding) are ranked by saliency
    (ties broken at random) and replaced, ``1/steps`` of them at a time, by the baseline:
    ``"mean"`` (the data mean: 0 after normalisation, or the ``input_mean`` of a model that
    normalises inside) or ``"blur"`` (a Gaussian-blurred copy). Insertion starts from the
    baseline and restores the most salient pixels first. The same is done for ``n_random``
    random orders.

    Args:
        saliency: a :class:`SaliencyResult` from :func:`~medft.explain.saliency.explain`
            on the same image and preprocessing, or a (h, w) map over the model input
            (upsampled to it) together with ``finding``.

    Returns:
        ``deletion_auc`` (lower = more faithful), ``random_deletion_auc`` (mean over random
        orders) and ``deletion_gain`` = random − deletion (> 0: better than random); the
        same for insertion (``insertion_gain`` = insertion − random, > 0 is better); the
        starting ``probability`` and all curves over ``fractions`` of pixels.
    """
    if steps < 1 or n_random < 1 or batch_size < 1:
        raise ConfigError("steps, n_random and batch_size must be at least 1")
    tensor, geometry = prepare_input(model, image, preprocess=preprocess, geometry=geometry)
    parameter = next(iter(model.parameters()), None)
    if parameter is not None:
        tensor = tensor.to(device=parameter.device, dtype=parameter.dtype)
    index, finding, method, saliency_map = _target(
        model, tensor, geometry, saliency, labels, finding, multilabel
    )

    content = torch.from_numpy(geometry.content_mask()).to(tensor.device)
    pixels = np.flatnonzero(geometry.content_mask())
    rng = np.random.default_rng(seed)
    keys = saliency_map.ravel()[pixels]
    orders = [pixels[np.lexsort((rng.random(pixels.size), -keys))]]
    orders += [rng.permutation(pixels) for _ in range(n_random)]
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * pixels.size).astype(int)
    fill = _baseline(model, tensor, baseline)

    modes = ["deletion", "insertion"] if insertion else ["deletion"]
    curves: dict[str, np.ndarray] = {}
    was_training = model.training
    model.eval()
    try:
        for mode in modes:
            curves[mode] = _curves(
                model, tensor, fill, content, orders, counts, mode, index, multilabel, batch_size
            )
    finally:
        model.train(was_training)

    result: dict = {
        "finding": finding,
        "method": method,
        "baseline": baseline,
        "steps": steps,
        "n_random": n_random,
        "probability": float(curves["deletion"][0, 0]),
        "fractions": fractions.tolist(),
    }
    for mode in modes:
        ranked, random = curves[mode][0], curves[mode][1:]
        aucs = np.array([np.trapezoid(curve, fractions) for curve in random])
        auc = float(np.trapezoid(ranked, fractions))
        gain = float(aucs.mean()) - auc if mode == "deletion" else auc - float(aucs.mean())
        result[f"{mode}_auc"] = auc
        result[f"random_{mode}_auc"] = float(aucs.mean())
        result[f"random_{mode}_auc_std"] = float(aucs.std())
        result[f"{mode}_gain"] = gain
        result[f"{mode}_curve"] = ranked.tolist()
        result[f"random_{mode}_curve"] = random.mean(axis=0).tolist()
    return result


def parameter_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Parameter names grouped from input to head, each group named by its common prefix.

    The timm backbone (:func:`~medft.explain.saliency.find_backbone`) is split by its
    ``group_matcher(coarse=True)`` (stem, stages, head); parameters outside it (a wrapper's
    own head) form the last group; a model without ``group_matcher`` is split by its
    top-level children.
    """
    backbone, prefix = find_backbone(model)
    named = [name for name, _ in model.named_parameters()]
    if hasattr(backbone, "group_matcher"):
        from timm.models import group_parameters

        grouped = group_parameters(backbone, backbone.group_matcher(coarse=True))
        groups = [[prefix + name for name in params] for _, params in sorted(grouped.items())]
        inside = {name for params in groups for name in params}
        groups.append([name for name in named if name not in inside])
    else:
        by_child: dict[str, list[str]] = {}
        for name in named:
            by_child.setdefault(name.split(".")[0] if "." in name else "", []).append(name)
        groups = list(by_child.values())
    return [(_group_name(params, prefix), params) for params in groups if params]


def _group_name(params: list[str], prefix: str) -> str:
    """The modules' common dotted prefix, else the common prefix under each top-level name."""
    inside = all(name.startswith(prefix) for name in params)
    modules = [(name[len(prefix) :] if inside else name).rsplit(".", 1)[0] for name in params]
    name = _common_prefix(modules)
    if not name:
        tops = list(dict.fromkeys(module.split(".")[0] for module in modules))
        heads = [_common_prefix([m for m in modules if m.split(".")[0] == top]) for top in tops]
        name = "+".join(heads[:3]) + ("+…" if len(heads) > 3 else "")
    return (prefix if inside else "") + name


def _common_prefix(dotted: Sequence[str]) -> str:
    common: list[str] = []
    for pieces in zip(*(name.split(".") for name in dotted), strict=False):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    return ".".join(common)


def _reinitialise(model: nn.Module, params: Sequence[str], *, seed: int) -> None:
    """Re-initialise the named parameters: layers' own ``reset_parameters`` where a module's
    parameters all belong to the set, a N(0, 0.02²) draw for anything else."""
    wanted = set(params)
    done: set[str] = set()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module_name, module in model.named_modules():
            prefix = f"{module_name}." if module_name else ""
            own = [prefix + name for name, _ in module.named_parameters(recurse=False)]
            if own and set(own) <= wanted and hasattr(module, "reset_parameters"):
                module.reset_parameters()
                done.update(own)
        for name, parameter in model.named_parameters():
            if name in wanted and name not in done:
                parameter.normal_(0.0, 0.02)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (NaN when either is constant)."""
    x, y = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _target(
    model: nn.Module,
    tensor: torch.Tensor,
    geometry: Geometry,
    saliency: SaliencyResult | np.ndarray,
    labels: Sequence[str] | None,
    finding: str | None,
    multilabel: bool,
) -> tuple[int, str, str, np.ndarray]:
    """Output index, finding name, method and the (S, S) map to rank pixels by."""
    size = geometry.size
    if isinstance(saliency, SaliencyResult):
        if saliency.geometry != geometry:
            raise ConfigError(
                "the saliency result was computed with another preprocessing "
                f"({saliency.geometry}) than this image ({geometry}); pass the same image and "
                "preprocess"
            )
        return saliency.index, saliency.finding, saliency.method, saliency.at_input()
    if finding is None:
        raise ConfigError("deletion_score with an array saliency needs finding=NAME")
    n_outputs = model_probabilities(model, tensor, multilabel=multilabel).shape[1]
    names = list(labels) if labels is not None else [f"class_{i}" for i in range(n_outputs)]
    if finding not in names or len(names) != n_outputs:
        raise ConfigError(f"finding {finding!r} is not one of the model's labels {names}")
    array = np.asarray(saliency, dtype=np.float32)
    if array.ndim != 2:
        raise ConfigError(f"saliency array must be 2-D, got shape {array.shape}")
    grid = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    resized = torch.nn.functional.interpolate(grid, size=(size, size), mode="bilinear")
    return names.index(finding), finding, "array", resized[0, 0].numpy()


def _baseline(model: nn.Module, tensor: torch.Tensor, baseline: str) -> torch.Tensor:
    """What removed pixels become: the data mean (:func:`neutral_fill`) or a blurred copy."""
    if baseline == "mean":
        return torch.zeros_like(tensor) + neutral_fill(model, tensor)
    if baseline == "blur":
        from torchvision.transforms.functional import gaussian_blur

        sigma = max(1.0, tensor.shape[-1] / 16)
        kernel = min(int(4 * sigma) | 1, (tensor.shape[-1] - 1) | 1)
        return gaussian_blur(tensor, kernel_size=[kernel, kernel], sigma=[sigma, sigma])
    raise ConfigError(f"baseline must be 'mean' or 'blur', got {baseline!r}")


def _curves(
    model: nn.Module,
    tensor: torch.Tensor,
    fill: torch.Tensor,
    content: torch.Tensor,
    orders: Sequence[np.ndarray],
    counts: np.ndarray,
    mode: str,
    index: int,
    multilabel: bool,
    batch_size: int,
) -> np.ndarray:
    """Probability of the target after each step, (len(orders), len(counts)), in batches."""
    size = tensor.shape[-1]
    ranks = []
    for order in orders:
        rank = torch.full((size * size,), size * size, dtype=torch.long)
        rank[torch.from_numpy(order)] = torch.arange(order.size)
        ranks.append(rank.view(size, size).to(tensor.device))
    jobs = [(o, k) for o in range(len(orders)) for k in range(len(counts))]
    probabilities = np.empty(len(jobs), dtype=np.float64)
    for begin in range(0, len(jobs), batch_size):
        chunk = jobs[begin : begin + batch_size]
        removed = torch.stack([ranks[o] < int(counts[k]) for o, k in chunk])[:, None]
        if mode == "deletion":
            batch = torch.where(removed, fill, tensor)
        else:
            batch = torch.where(removed | ~content, tensor, fill)
        probs = model_probabilities(model, batch, multilabel=multilabel)[:, index]
        probabilities[begin : begin + len(chunk)] = probs
    return probabilities.reshape(len(orders), len(counts))
