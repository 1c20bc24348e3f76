"""What a shortcut audit reports: feature names, one predictor's result, a finding.

Pure data, shared by the audit (:mod:`medft.data.audit`, which re-exports every public name)
and its report (``medft.data._audit_report``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from medft.data._audit_features import THUMB_SIDE

__all__ = [
    "BORDER_PROBE",
    "COLUMN_PREFIX",
    "COMBINED",
    "DESCRIPTIONS",
    "PROBES",
    "REVIEW_ONLY",
    "THUMBNAIL_PROBE",
    "AuditFinding",
    "FeatureResult",
    "describe",
    "json_safe",
]

COMBINED = "all_metadata"
"""Name of the predictor that uses every metadata feature together."""

THUMBNAIL_PROBE = "thumbnail_probe"
BORDER_PROBE = "border_probe"
PROBES = (THUMBNAIL_PROBE, BORDER_PROBE)
"""Names of the image-level probes."""

REVIEW_ONLY = frozenset({THUMBNAIL_PROBE})
"""Predictors that can also see the disease itself: reaching the threshold asks for a look
(a *review*), not a shortcut finding. Large findings such as an effusion are visible on a
16x16 thumbnail; measured on 2,000 default synthetic images, the thumbnail predicts
effusion with AUROC 0.82 while the border probe and every metadata feature stay near 0.5."""

COLUMN_PREFIX = "column:"
"""Features taken from the manifest's own columns are named ``column:<name>``."""

DESCRIPTIONS = {
    "rows": "image height (rows)",
    "columns": "image width (columns)",
    "aspect_ratio": "aspect ratio (rows / columns)",
    "pixel_spacing": "pixel spacing (mm)",
    "bits_stored": "bits stored",
    "padding_fraction": "fraction of padding pixels",
    "raw_mean": "mean stored pixel value (before windowing)",
    "raw_sd": "SD of stored pixel values (before windowing)",
    "photometric": "photometric interpretation",
    "transfer_syntax": "transfer syntax / compression",
    "modality": "modality",
    "manufacturer": "manufacturer",
    "manufacturer_model": "manufacturer's model",
    "view_position": "view position",
    "body_part": "body part",
    COMBINED: "all metadata together",
    THUMBNAIL_PROBE: f"a {THUMB_SIDE}x{THUMB_SIDE} thumbnail of the image",
    BORDER_PROBE: "the image border (centre masked)",
}
"""Plain-language names used in messages and reports."""


@dataclass(frozen=True)
class FeatureResult:
    """One predictor's cross-validated AUROC for one label.

    Attributes:
        label: The label predicted.
        feature: Feature name (``column:<name>`` for manifest columns, ``all_metadata``,
            ``thumbnail_probe``, ``border_probe``).
        kind: ``"numeric"``, ``"categorical"``, ``"combined"`` or ``"probe"``.
        auroc: Out-of-fold AUROC under patient-grouped CV (0.5 = chance).
        ci_low, ci_high: 95% patient-bootstrap interval of that AUROC.
        n_images: Images with a known label that the estimate used.
    """

    label: str
    feature: str
    kind: str
    auroc: float
    ci_low: float
    ci_high: float
    n_images: int

    def fires(self, threshold: float) -> bool:
        """AUROC at or above ``threshold`` with a CI that excludes chance.

        For a predictor in :data:`REVIEW_ONLY` this makes a review, otherwise a finding.
        """
        return (
            math.isfinite(self.auroc)
            and self.auroc >= threshold
            and math.isfinite(self.ci_low)
            and self.ci_low > 0.5
        )


@dataclass(frozen=True)
class AuditFinding:
    """A predictor that reached the threshold: a shortcut a model could learn."""

    label: str
    feature: str
    kind: str
    auroc: float
    ci_low: float
    ci_high: float

    @property
    def message(self) -> str:
        """One plain-language sentence naming the label, the feature and the strength."""
        strength = f"(AUROC {self.auroc:.2f} [{self.ci_low:.2f}, {self.ci_high:.2f}])"
        if self.feature == THUMBNAIL_PROBE:
            return (
                f"{describe(self.feature)} predicts {self.label} {strength}; large findings "
                "can show at that size, so this may be the disease itself — look at the "
                "difference map in audit.html: a difference over the lungs is disease, one "
                "at the edges, corners or outside the body is a shortcut"
            )
        if self.feature == BORDER_PROBE:
            source = "the image border alone, with the centre masked"
        elif self.kind == "combined":
            source = "the image metadata alone"
        else:
            what = describe(self.feature)
            source = f"{self.feature} alone" + (f" ({what})" if what != self.feature else "")
        return (
            f"a model could learn to predict {self.label} from {source} {strength} — "
            "this is a shortcut, not disease"
        )


def describe(feature: str) -> str:
    """Plain-language name of a feature (manifest columns keep their name)."""
    if feature.startswith(COLUMN_PREFIX):
        return f"manifest column {feature[len(COLUMN_PREFIX) :]!r}"
    return DESCRIPTIONS.get(feature, feature)


def json_safe(value: Any) -> Any:
    """NaN (an undefined AUROC) becomes None, so ``--json`` output is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
