"""One self-contained ``report.html``: numbers with intervals, figures, data, warnings.

The page carries everything inline (CSS in a ``<style>`` block, figures as base64 PNG
``data:`` URIs, no scripts, no web fonts, no links to other hosts), so it opens offline,
survives being mailed or archived, and never makes a request that could leak where it was
opened. Every value shown comes from the ``metrics.json`` / ``summary.json`` dictionary it
is rendered from. Text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["NOTICE", "cv_report", "evaluation_report"]

NOTICE = (
    "Research tool, not for diagnosis: medft is not a medical device. These numbers describe "
    "a model on one data set; they are not evidence that it is safe or effective for "
    "patient care."
)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#1b1b1b;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;
border-bottom:1px solid #ddd;padding-bottom:.2em}
.notice{background:#fff4e5;border-left:5px solid #e67e22;padding:.7em 1em;margin:1em 0;
font-weight:600}
.warn{background:#fdecea;border-left:5px solid #c0392b;padding:.5em 1em;margin:.4em 0}
.meta{color:#555;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right;vertical-align:top;
white-space:nowrap}
th{background:#f4f6f8}td.l,th.l{text-align:left}
tr.flag td{background:#fdecea}
figure{display:inline-block;vertical-align:top;margin:1em 1em 1em 0;max-width:100%}
figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.85em}
code{background:#f4f6f8;padding:0 .2em}.scroll{overflow-x:auto;max-width:100%}
"""


# ----------------------------------------------------------------------- helpers


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _esc(value)
    return f"{number:.{digits}f}" if math.isfinite(number) else "n/a"


def _ci(entry: Mapping[str, Any] | None) -> str:
    """``0.912 (0.871–0.948)`` from ``{"value", "ci_low", "ci_high"}``."""
    if not entry:
        return "n/a"
    value = _num(entry.get("value"))
    low, high = entry.get("ci_low"), entry.get("ci_high")
    if value == "n/a" or _num(low) == "n/a" or _num(high) == "n/a":
        return value
    return f"{value} <span class=meta>({_num(low)}&ndash;{_num(high)})</span>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, flags: Sequence[bool] = ()):
    """An HTML table; cells are already-escaped HTML; the first column is left-aligned."""
    head = "".join(
        f"<th class=l>{h}</th>" if i == 0 else f"<th>{h}</th>" for i, h in enumerate(headers)
    )
    body = []
    for index, row in enumerate(rows):
        cls = " class=flag" if index < len(flags) and flags[index] else ""
        cells = "".join(
            f"<td class=l>{c}</td>" if i == 0 else f"<td>{c}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f"<div class=scroll>{table}</div>"


def _figure(png: bytes | None, caption: str) -> str:
    if not png:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{_esc(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _page(title: str, sections: Sequence[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        + "".join(sections)
        + "</body></html>\n"
    )


def _header(title: str, lines: Sequence[str]) -> str:
    meta = "<br>".join(_esc(line) for line in lines if line)
    return f"<h1>{_esc(title)}</h1><p class=meta>{meta}</p><div class=notice>{_esc(NOTICE)}</div>"


def _warnings(items: Sequence[str]) -> str:
    if not items:
        return ""
    return "<h2>Warnings</h2>" + "".join(f"<div class=warn>{_esc(w)}</div>" for w in items)


def _subgroup_section(subgroups: Mapping[str, Any] | None, title: str) -> str:
    if not subgroups:
        return ""
    rows, flags = [], []
    for attribute, by_label in subgroups.get("by", {}).items():
        for label, groups in by_label.items():
            for name, entry in groups.items():
                rows.append(
                    [
                        _esc(attribute),
                        _esc(name),
                        _esc(label),
                        _num(entry.get("n_images")),
                        _num(entry.get("n_patients")),
                        _num(entry.get("n_positive")),
                        _ci(entry.get("auroc")),
                        _ci(entry.get("sensitivity")),
                        _ci(entry.get("specificity")),
                        _esc(entry.get("note", "")),
                    ]
                )
                flags.append(not entry.get("eligible", True))
    parts = [f"<h2>{_esc(title)}</h2>"]
    largest = subgroups.get("largest_gap")
    if largest:
        gap = {
            "value": largest["auroc_gap"],
            "ci_low": largest["gap_ci_low"],
            "ci_high": largest["gap_ci_high"],
        }
        parts.append(
            "<div class=warn>Largest AUROC gap: "
            f"{_esc(largest['attribute'])} for {_esc(largest['label'])}: "
            f"{_esc(largest['best_subgroup'])} {_num(largest['best_auroc'])} vs "
            f"{_esc(largest['worst_subgroup'])} {_num(largest['worst_auroc'])}, gap "
            f"{_ci(gap)}"
            ". An interval that includes 0 is no evidence of a real difference.</div>"
        )
    headers = ["column", "subgroup", "finding", "images", "patients", "positives", "AUROC",
               "sensitivity", "specificity", "note"]  # fmt: skip
    parts.append(_table(headers, rows, flags=flags))
    parts.append(
        "<p class=meta>Shaded rows: too few images or one class only; reported, never "
        "flagged. Intervals: patient-level bootstrap shared by all subgroups.</p>"
    )
    return "".join(parts)


def _bootstrap_note(boot: Mapping[str, Any] | None) -> str:
    if not boot:
        return ""
    return (
        f"<p class=meta>Intervals: {_num(boot.get('ci'), 2)} {_esc(boot.get('method', ''))} "
        f"intervals from {_esc(boot.get('n'))} {_esc(boot.get('unit', ''))}-level bootstrap "
        f"resamples (seed {_esc(boot.get('seed'))}). See docs/statistics.md.</p>"
    )


# -------------------------------------------------------------------- evaluation


def _headline_rows(metrics: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for label, point in metrics.get("at_operating_point", {}).items():
        calibration = metrics.get("calibration", {}).get(label, {})
        rows.append(
            [
                _esc(label),
                _num(metrics.get("counts", {}).get(label, {}).get("n_positive")),
                _ci(metrics["auroc"]["per_class"].get(label)),
                _ci(metrics["average_precision"]["per_class"].get(label)),
                _num(point.get("threshold")),
                _ci(point.get("sensitivity")),
                _ci(point.get("specificity")),
                _ci(point.get("ppv")),
                _ci(point.get("npv")),
                _num(calibration.get("ece")),
                _num(calibration.get("brier")),
            ]
        )
    rows.append(
        ["<b>macro</b>", "", _ci(metrics["auroc"].get("macro")),
         _ci(metrics["average_precision"].get("macro")), "", "", "", "", "", "", ""]
    )  # fmt: skip
    return rows


def _data_section(metrics: Mapping[str, Any]) -> str:
    data = metrics.get("data", {})
    skipped = metrics.get("skipped_files", {})
    rows = [
        ["images in the manifest", _num(data.get("n_images_manifest"))],
        ["images evaluated", _num(data.get("n_images_evaluated"))],
        ["patients", _num(data.get("n_patients"))],
        [
            "files skipped (unreadable)",
            f"{_num(skipped.get('count', 0))} "
            f"<span class=meta>({_esc(skipped.get('csv', ''))})</span>",
        ],
        ["unit of analysis", _esc(metrics.get("level", "image"))],
    ]
    for label, n in data.get("positives", {}).items():
        prevalence = metrics.get("prevalence", {}).get(label)
        rows.append([f"positives: {_esc(label)}", f"{_num(n)} ({_num(prevalence)})"])
    parts = ["<h2>Data</h2>", _table(["", "value"], rows)]
    split = data.get("training_split")
    if isinstance(split, Mapping) and split:
        split_rows = [
            [_esc(part), _num(info.get("images")), _num(info.get("patients")),
             _esc(", ".join(f"{k}: {v}" for k, v in info.get("positives", {}).items()))]
            for part, info in split.items()
            if isinstance(info, Mapping)
        ]  # fmt: skip
        parts.append("<p class=meta>The split the checkpoint was trained and validated on:</p>")
        parts.append(_table(["part", "images", "patients", "positives"], split_rows))
    return "".join(parts)


def _calibration_section(metrics: Mapping[str, Any]) -> str:
    scaling = metrics.get("temperature_scaling")
    if not scaling or scaling.get("temperature") is None:
        return (
            "<h2>Calibration</h2><p>The checkpoint stores no temperature; calibration is "
            "reported as trained (ECE and Brier score in the table above).</p>"
        )
    applied = "applied to the reported probabilities" if scaling.get("applied") else "not applied"
    rows = [
        [_esc(label), _num(v.get("ece_before")), _num(v.get("ece_after")),
         _num(v.get("brier_before")), _num(v.get("brier_after"))]
        for label, v in scaling.get("per_class", {}).items()
    ]  # fmt: skip
    return (
        "<h2>Calibration before / after temperature scaling</h2>"
        f"<p>Temperature T = {_num(scaling['temperature'])}, fitted on the validation data "
        f"during training ({applied}). It rescales probabilities but never changes their "
        "order, so AUROC, AP and the positive/negative calls are unaffected.</p>"
        + _table(["finding", "ECE before", "ECE after", "Brier before", "Brier after"], rows)
    )


def evaluation_report(metrics: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """Render ``report.html`` for ``medft evaluate`` from its metrics.json dictionary.

    Args:
        metrics: The dictionary written to ``metrics.json``.
        figures: ``roc``, ``pr``, ``reliability``, ``confusion`` PNG bytes (missing ones
            are left out).
    """
    checkpoint = metrics.get("checkpoint", {})
    header = _header(
        "medft evaluation report",
        [
            f"checkpoint: {checkpoint.get('file', '')} ({checkpoint.get('backbone', '')}, "
            f"{checkpoint.get('task', '')}, {checkpoint.get('image_size', '')} px, "
            f"fit {checkpoint.get('fit_mode', '')})",
            f"manifest: {metrics.get('manifest', {}).get('file', '')}",
            f"created {metrics.get('created_utc', '')} UTC with medft "
            f"{metrics.get('medft_version', '')}",
        ],
    )
    method = checkpoint.get("operating_point_method") or "stored in the checkpoint"
    headline = (
        "<h2>Discrimination and operating point</h2>"
        f"<p>Operating points were chosen on validation data ({_esc(method)}) and stored in "
        "the checkpoint; an image is called positive when its probability is at least the "
        "threshold.</p>"
        + _table(
            ["finding", "positives", "AUROC", "AP", "threshold", "sensitivity", "specificity",
             "PPV", "NPV", "ECE", "Brier"],
            _headline_rows(metrics),
        )
        + _bootstrap_note(metrics.get("bootstrap"))
    )  # fmt: skip
    plots = "<h2>Figures</h2>" + "".join(
        _figure(figures.get(key), caption)
        for key, caption in (
            ("roc", "ROC curves with pointwise patient-bootstrap bands"),
            ("pr", "Precision-recall curves (dotted: prevalence)"),
            ("reliability", "Reliability diagrams (marker area: images per bin)"),
            ("confusion", "Confusion matrices at the stored operating points"),
        )
    )
    return _page(
        "medft evaluation report",
        [
            header,
            _warnings(metrics.get("warnings", [])),
            headline,
            _data_section(metrics),
            plots,
            _calibration_section(metrics),
            _subgroup_section(metrics.get("subgroups"), "Subgroups"),
        ],
    )


# ---------------------------------------------------------------- cross-validation


def _fold_rows(summary: Mapping[str, Any], labels: Sequence[str]) -> list[list[str]]:
    rows = []
    for fold in summary.get("folds", []):
        row = [
            f"repeat {fold['repeat']} fold {fold['fold']}",
            _num(fold.get("n_images")),
            _num(fold.get("n_patients")),
            _num(fold.get("auroc_macro")),
        ]
        for label in labels:
            row += [
                _num(fold.get(f"auroc_{label}")),
                _num(fold.get(f"sensitivity_{label}")),
                _num(fold.get(f"specificity_{label}")),
            ]
        rows.append(row)
    stats = summary.get("mean_sd", {})

    def mean_sd(key: str) -> str:
        entry = stats.get(key)
        if not entry:
            return ""
        return f"{_num(entry.get('mean'))} &plusmn; {_num(entry.get('sd'))}"

    last = ["<b>mean &plusmn; sd</b>", "", "", mean_sd("auroc_macro")]
    for label in labels:
        last += [mean_sd(f"auroc_{label}"), mean_sd(f"sensitivity_{label}"),
                 mean_sd(f"specificity_{label}")]  # fmt: skip
    rows.append(last)
    return rows


def cv_report(summary: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """Render a cross-validation study's ``report.html`` from its summary.json dictionary.

    Args:
        summary: The dictionary written to ``summary.json``.
        figures: ``roc_folds`` PNG bytes (ROC per fold and pooled).
    """
    study = summary.get("study", {})
    labels = list(study.get("labels", []))
    header = _header(
        "medft cross-validation report",
        [
            f"config: {study.get('config', '')}",
            f"{study.get('folds', '')} folds x {study.get('repeats', '')} repeat(s), "
            f"patient-grouped and label-stratified, seed {study.get('seed', '')}",
            f"created {summary.get('created_utc', '')} UTC with medft "
            f"{summary.get('medft_version', '')}",
        ],
    )
    headers = ["fold", "images", "patients", "macro AUROC"]
    for label in labels:
        headers += [f"AUROC {_esc(label)}", f"sens. {_esc(label)}", f"spec. {_esc(label)}"]
    folds = (
        "<h2>Per fold</h2><p>Each fold: fitted on the other folds (validation carved out of "
        "them by patient, for early stopping and the operating point), then predicted on the "
        "held-out patients. Sensitivity and specificity at each fold's own operating point.</p>"
        + _table(headers, _fold_rows(summary, labels))
    )
    pooled_rows = []
    for repeat, pooled in summary.get("pooled", {}).items():
        for label in labels:
            at_point = pooled.get("at_operating_point", {}).get(label, {})
            pooled_rows.append(
                [
                    f"{_esc(repeat)}: {_esc(label)}",
                    _ci(pooled["auroc"]["per_class"].get(label)),
                    _ci(pooled["average_precision"]["per_class"].get(label)),
                    _ci(at_point.get("sensitivity")),
                    _ci(at_point.get("specificity")),
                ]
            )
        pooled_rows.append(
            [f"{_esc(repeat)}: <b>macro</b>", _ci(pooled["auroc"].get("macro")),
             _ci(pooled["average_precision"].get("macro")), "", ""]
        )  # fmt: skip
    first = next(iter(summary.get("pooled", {}).values()), {})
    pooled = (
        "<h2>Pooled out-of-fold predictions</h2><p>Every image predicted once per repeat by "
        "the model that never saw its patient. Pooling mixes models whose probabilities may be "
        "calibrated differently; the mean &plusmn; sd over folds above does not.</p>"
        + _table(["", "AUROC", "AP", "sensitivity", "specificity"], pooled_rows)
        + _bootstrap_note(first.get("bootstrap"))
    )
    data = summary.get("data", {})
    data_rows = [
        ["images", _num(data.get("n_images"))],
        ["patients", _num(data.get("n_patients"))],
        ["files skipped (unreadable)", _num(summary.get("skipped_files", {}).get("count", 0))],
    ]
    for label, n in data.get("positives", {}).items():
        data_rows.append([f"positives: {_esc(label)}", _num(n)])
    return _page(
        "medft cross-validation report",
        [
            header,
            _warnings(summary.get("warnings", [])),
            folds,
            pooled,
            _figure(
                figures.get("roc_folds"),
                "ROC per fold (thin) and pooled out-of-fold (black, with band)",
            ),
            "<h2>Data</h2>" + _table(["", "value"], data_rows),
            _subgroup_section(summary.get("subgroups"), "Subgroups (pooled out-of-fold, repeat 0)"),
        ],
    )
