"""The model card tab: what the model is, what it was trained and validated on, how to use it.

Everything comes from the checkpoint's ``medft`` metadata (backbone, findings, data summary,
operating points chosen on validation data, validation AUROC) and, when given, from a
``metrics.json`` written by ``medft evaluate`` (AUROC and sensitivity/specificity with
patient-level bootstrap confidence intervals).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medft.errors import ConfigError, MedftError
from medft.model.checkpoint import LoadedClassifier, read_checkpoint

NOTICE = (
    "**Research tool, not for diagnosis.** medft is not a medical device. Its outputs must "
    "not be used for diagnosis, triage or any decision about a patient's care."
)

INTENDED_USE = (
    "Reviewing what a model fine-tuned with medft predicts, and where in the image it found "
    "evidence, on de-identified or synthetic radiographs: for research, teaching and error "
    "analysis. The numbers below describe this model on its own validation/test data; they "
    "are not evidence of safety or effectiveness on other patients, scanners or sites."
)


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read a ``metrics.json`` (from ``medft evaluate`` or ``medft quickstart``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: metrics file not found; pass --metrics PATH/metrics.json"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable metrics.json ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a metrics.json (expected a JSON object)")
    return data


def model_card(classifier: LoadedClassifier, metrics: Mapping[str, Any] | None = None) -> str:
    """The model card as Markdown."""
    meta = classifier.meta
    hparams = _training_hparams(classifier)
    backbone = meta.get("backbone") or hparams.get("backbone", "unknown")
    pretrained = hparams.get("pretrained")
    parts = [
        "## Model card",
        NOTICE,
        "### Model",
        _table(
            ["Item", "Value"],
            [
                ["Backbone", f"`{backbone}` (timm)"],
                ["Initialisation", _initialisation(pretrained, hparams.get("freeze"))],
                ["Task", classifier.task],
                ["Findings", ", ".join(classifier.labels)],
                ["Input", f"{classifier.image_size} px square, fit mode `{classifier.fit_mode}`"],
                ["Checkpoint", f"`{classifier.path.name}`" if classifier.path else "in memory"],
                ["Temperature (calibration, not applied here)", _num(classifier.temperature)],
            ],
        ),
        "### Training data",
        _data_summary(meta.get("data_summary"), classifier.labels),
        "### Operating points",
        _operating_points(meta, classifier),
        "### Validation metrics",
        _validation(meta, classifier.labels),
    ]
    warnings = (meta.get("audit") or {}).get("warnings") or []
    if warnings:
        parts += [
            "### Data bias warning",
            "The shortcut audit run before training found that metadata or image borders "
            "alone predict a label; the model may have learned them instead of disease:",
            *[f"> {text}" for text in warnings],
        ]
    if metrics:
        parts += ["### Evaluation", _evaluation(metrics, classifier.labels)]
    parts += [
        "### Intended use",
        INTENDED_USE,
        "### How an image is processed",
        "The file is read by the medft reader (Modality LUT, the file's own window or VOI "
        "LUT, MONOCHROME1 inverted), fitted into the model's square input keeping its aspect "
        "ratio, and classified. The window/level controls change only what you see, never "
        "what the model sees. Saliency maps show where the model found evidence *for* a "
        "finding; their colour scale is explained under the overlay.",
    ]
    return "\n\n".join(parts)


def _training_hparams(classifier: LoadedClassifier) -> dict[str, Any]:
    """The hyper-parameters the model was trained with (the loaded model is rebuilt with
    ``pretrained=False``, so its own record does not say how training started)."""
    if classifier.path is not None:
        try:
            return dict(read_checkpoint(classifier.path).get("hyper_parameters") or {})
        except MedftError:
            pass
    return dict(getattr(classifier.model, "hparams", {}) or {})


def _initialisation(pretrained: Any, freeze: Any) -> str:
    if pretrained is None:
        return "not recorded"
    start = "ImageNet-pretrained" if pretrained else "random initialisation"
    return f"{start}, fine-tuned ({freeze})" if freeze else start


def _data_summary(summary: Any, labels: list[str]) -> str:
    if not isinstance(summary, Mapping) or not summary:
        return "Not recorded in this checkpoint."
    header = ["Part", "Images", "Patients", *[f"{label} +" for label in labels], "Skipped"]
    rows = []
    for part, info in summary.items():
        if not isinstance(info, Mapping):
            continue
        positives = info.get("positives") or {}
        rows.append(
            [
                str(part),
                str(info.get("images", "")),
                str(info.get("patients", "")),
                *[str(positives.get(label, "")) for label in labels],
                str(info.get("skipped", 0)),
            ]
        )
    return _table(header, rows) + "\n\n(+ = images labelled positive.)"


def _operating_points(meta: Mapping[str, Any], classifier: LoadedClassifier) -> str:
    points = meta.get("operating_points") or {}
    method = meta.get("operating_point_method") or "not recorded"
    rows = []
    for label in classifier.labels:
        point = points.get(label) or {}
        rows.append(
            [
                label,
                _num(classifier.thresholds.get(label)),
                str(point.get("method", "default 0.5")),
                _num(point.get("sensitivity")),
                _num(point.get("specificity")),
            ]
        )
    table = _table(["Finding", "Threshold", "Chosen by", "Sensitivity", "Specificity"], rows)
    return (
        f"A finding is called positive when its probability is at or above its threshold, "
        f"chosen on the validation data ({method}); sensitivity and specificity are on that "
        f"validation data.\n\n{table}"
    )


def _validation(meta: Mapping[str, Any], labels: list[str]) -> str:
    auroc = meta.get("val_auroc") or {}
    ece = meta.get("val_ece") or {}
    if not auroc:
        return "Not recorded in this checkpoint."
    rows = [[label, _num(auroc.get(label)), _num(ece.get(label))] for label in labels]
    n_images = meta.get("val_n_images", "?")
    return (
        f"On {n_images} validation images, at the epoch this checkpoint was saved (point "
        "estimates; for confidence intervals run `medft evaluate` and start the demo with "
        "`--metrics out/metrics.json`).\n\n" + _table(["Finding", "AUROC", "ECE"], rows)
    )


def _evaluation(metrics: Mapping[str, Any], labels: list[str]) -> str:
    if "auroc" in metrics and isinstance(metrics["auroc"], Mapping):
        per_class = metrics["auroc"].get("per_class") or {}
        at_point = metrics.get("at_operating_point") or {}
        rows = []
        for label in labels:
            point = at_point.get(label) or {}
            rows.append(
                [
                    label,
                    _ci(per_class.get(label)),
                    _ci(point.get("sensitivity")),
                    _ci(point.get("specificity")),
                ]
            )
        ci = (metrics.get("bootstrap") or {}).get("ci", 0.95)
        header = ["Finding", "AUROC", "Sensitivity", "Specificity"]
        source = (metrics.get("manifest") or {}).get("file", "the evaluation manifest")
        return (
            f"`medft evaluate` on {metrics.get('n_images', '?')} images of "
            f"{metrics.get('n_patients', '?')} patients ({source}); "
            f"{_percent(ci)} patient-level bootstrap confidence intervals.\n\n"
            + _table(header, rows)
        )
    test = metrics.get("test")
    if isinstance(test, Mapping):
        rows = [[name, _num(value)] for name, value in test.items() if "auroc" in name]
        return (
            "Quickstart test split (held-out patients; point estimates, no intervals):\n\n"
            + _table(["Metric", "Value"], rows)
        )
    return "The metrics file holds no AUROC."


def _ci(entry: Any) -> str:
    if not isinstance(entry, Mapping):
        return "n/a"
    value, low, high = entry.get("value"), entry.get("ci_low"), entry.get("ci_high")
    if not _finite(value):
        return "n/a"
    if _finite(low) and _finite(high):
        return f"{value:.3f} ({low:.3f}–{high:.3f})"
    return f"{value:.3f}"


def _percent(value: Any) -> str:
    return f"{float(value) * 100:g}%" if _finite(value) else "95%"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def _num(value: Any) -> str:
    return f"{float(value):.3f}" if _finite(value) else "n/a"


def _table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])
