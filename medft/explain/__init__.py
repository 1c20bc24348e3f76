"""Saliency maps that can be trusted: CAM family and occlusion for any timm backbone.

Maps come back un-normalised and on the original image grid (:func:`explain`); overlays
share one stated display normalisation across findings (:class:`DisplayNorm`); and two
trust checks say whether a map depends on the model (:func:`randomisation_check`) and on
the evidence (:func:`deletion_score`). See docs/saliency.md.
"""

from __future__ import annotations

from medft.explain.checks import deletion_score, parameter_groups, randomisation_check
from medft.explain.overlay import DisplayNorm, grid_figure, grid_image, render_overlay
from medft.explain.saliency import (
    METHOD_UNITS,
    METHODS,
    SaliencyResult,
    TargetLayer,
    default_preprocess,
    explain,
    find_backbone,
    model_probabilities,
    prepare_input,
    resolve_target_layer,
)

__all__ = [
    "METHODS",
    "METHOD_UNITS",
    "DisplayNorm",
    "SaliencyResult",
    "TargetLayer",
    "default_preprocess",
    "deletion_score",
    "explain",
    "find_backbone",
    "grid_figure",
    "grid_image",
    "model_probabilities",
    "parameter_groups",
    "prepare_input",
    "randomisation_check",
    "render_overlay",
    "resolve_target_layer",
]
