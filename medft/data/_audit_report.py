"""The shortcut audit's report: the ``AuditReport`` record and how it is shown (CLI text,
the warning paragraph, audit.json and audit.html). :mod:`medft.data.audit` measures and
re-exports ``AuditReport``; this module needs nothing from it.

The HTML page is self-contained (inline CSS, figures as base64 PNG drawn with matplotlib's
object API on the Agg canvas), so it can be mailed or archived next to a run.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medft._io import write_json, write_text
from medft.data._audit_types import (
    REVIEW_ONLY,
    AuditFinding,
    FeatureResult,
    describe,
    json_safe,
)

__all__ = [
    "AuditReport",
    "format_text",
    "render_html",
    "review_paragraph",
    "warning_paragraph",
    "write_report",
]

_DPI = 100
_FLAG = "<- SHORTCUT"
_REVIEW = "<- review"
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#1b1b1b;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;
border-bottom:1px solid #ddd;padding-bottom:.2em}h3{font-size:1.05em}
.warn{background:#fdecea;border-left:5px solid #c0392b;padding:.6em 1em;margin:.8em 0}
.review{background:#fff4e5;border-left:5px solid #e67e22;padding:.6em 1em;margin:.8em 0}
.ok{background:#eaf7ee;border-left:5px solid #27ae60;padding:.6em 1em;margin:.8em 0}
.meta{color:#555;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}
th{background:#f4f6f8}td.l,th.l{text-align:left}tr.flag td{background:#fdecea}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.85em}
"""


# ---------------------------------------------------------------------------- report


@dataclass
class AuditReport:
    """Everything a shortcut audit measured; ``findings`` are the predictors that fired.

    Attributes:
        source: The manifest audited.
        labels: The labels audited.
        threshold: AUROC at or above which a predictor is a finding.
        folds, seed, n_boot: Cross-validation folds, seed and bootstrap resamples.
        depth: ``"pixels"`` (decoded images) or ``"header"`` (quick, headers only).
        probes: Whether the image probes ran.
        n_images: Rows in the manifest.
        n_audited: Images read and used (after ``max_images`` and unreadable files).
        n_patients: Patients among the audited images.
        n_unreadable: Files that could not be read (run ``medft data check`` for details).
        results: Every predictor's estimate, per label.
        skipped: Features or columns not used, with the reason.
        label_notes: Labels that could not be audited, with the reason.
        distributions: Per label, the class-wise distributions of its strongest features
            (for the HTML report).
        difference_maps: Per label, the mean positive minus mean negative thumbnail
            (32x32, display intensity) — where in the image the classes differ.
        elapsed_s: Wall time.
        workers: Reader processes used.
    """

    source: str | None
    labels: list[str]
    threshold: float
    folds: int
    seed: int
    n_boot: int
    depth: str
    probes: bool
    n_images: int
    n_audited: int
    n_patients: int
    n_unreadable: int
    results: list[FeatureResult]
    skipped: list[dict[str, str]] = field(default_factory=list)
    label_notes: dict[str, str] = field(default_factory=dict)
    distributions: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    difference_maps: dict[str, list[list[float]]] = field(default_factory=dict)
    elapsed_s: float = 0.0
    workers: int = 1

    @property
    def findings(self) -> list[AuditFinding]:
        """Shortcuts: predictors at or above the threshold (CI above chance), strongest first."""
        return self._fired(review=False)

    @property
    def reviews(self) -> list[AuditFinding]:
        """Whole-image signals at or above the threshold that may be disease: look, then judge."""
        return self._fired(review=True)

    def is_finding(self, result: FeatureResult) -> bool:
        """Whether ``result`` is a shortcut finding (not a review) under this threshold."""
        return result.fires(self.threshold) and result.feature not in REVIEW_ONLY

    def _fired(self, *, review: bool) -> list[AuditFinding]:
        fired = [
            r
            for r in self.results
            if r.fires(self.threshold) and (r.feature in REVIEW_ONLY) == review
        ]
        fired.sort(key=lambda r: (-r.auroc, r.label, r.feature))
        return [
            AuditFinding(r.label, r.feature, r.kind, r.auroc, r.ci_low, r.ci_high) for r in fired
        ]

    def warning(self) -> str | None:
        """The one-paragraph warning to show wherever the data are used, or None."""
        return warning_paragraph(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``audit.json``) with ``findings``, ``reviews`` and ``warning``."""
        data = asdict(self)
        data["findings"] = [{**asdict(f), "message": f.message} for f in self.findings]
        data["reviews"] = [{**asdict(f), "message": f.message} for f in self.reviews]
        data["warning"] = self.warning()
        return json_safe(data)

    def format(self, max_rows: int = 12) -> str:
        """The text the CLI prints: per label a table sorted by AUROC, then the warning."""
        return format_text(self, max_rows=max_rows)

    def write(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``audit.json`` and a self-contained ``audit.html`` into ``out_dir``."""
        return write_report(self, Path(out_dir))


# ------------------------------------------------------------------------------ text


def _ci_text(result: Any) -> str:
    if not math.isfinite(result.ci_low):
        return "n/a"
    return f"[{result.ci_low:.2f}, {result.ci_high:.2f}]"


def _sorted(results: Sequence[FeatureResult]) -> list[FeatureResult]:
    return sorted(results, key=lambda r: (-(r.auroc if math.isfinite(r.auroc) else 0.0), r.feature))


def warning_paragraph(report: AuditReport) -> str | None:
    """One paragraph naming the strongest shortcut of each affected label, or None."""
    findings = report.findings
    if not findings:
        return None
    strongest = {}
    for finding in findings:  # strongest first; name a single feature when one fired
        current = strongest.get(finding.label)
        if current is None or (current.kind == "combined" and finding.kind != "combined"):
            strongest[finding.label] = finding
    sentences = [f.message[0].upper() + f.message[1:] + "." for f in strongest.values()]
    more = len(findings) - len(strongest)
    extra = f" {more} more predictor(s) also reached the threshold." if more else ""
    return (
        f"Shortcut warning: {' '.join(sentences)}{extra} A model trained on these data may "
        "score well by reading how, where or on what machine an image was taken instead of "
        "the disease, and fail on data collected differently. Check how the labels relate "
        "to the acquisition, balance or remove the confounder, and evaluate on an external "
        "site (see the 'Data bias and shortcuts' page of the docs)."
    )


def _flag(report: AuditReport, result: FeatureResult) -> str:
    if report.is_finding(result):
        return f"  {_FLAG}"
    return f"  {_REVIEW}" if result.fires(report.threshold) else ""


def review_paragraph(report: AuditReport) -> str | None:
    """A note on whole-image signals that may be disease rather than a shortcut, or None."""
    reviews = report.reviews
    if not reviews:
        return None
    sentences = " ".join(r.message[0].upper() + r.message[1:] + "." for r in reviews)
    return f"To review: {sentences}"


def format_text(report: AuditReport, *, max_rows: int = 12) -> str:
    """The CLI rendering: a header, one table per label sorted by AUROC, the warning."""
    lines = [
        f"shortcut audit   {report.source or '(in memory)'}",
        f"images           {report.n_audited} audited of {report.n_images}  "
        f"({report.n_patients} patients, {report.n_unreadable} unreadable)",
        f"method           {report.folds}-fold patient-grouped CV, out-of-fold AUROC, "
        f"patient bootstrap 95% CI ({report.n_boot}); "
        f"{'decoded pixels' if report.depth == 'pixels' else 'headers only (quick)'}"
        f"{', image probes' if report.probes else ''}",
        f"finding when     AUROC >= {report.threshold:.2f} and CI above 0.5"
        f"   ({report.elapsed_s:.1f} s)",
    ]
    for label in report.labels:
        lines.append("")
        if label in report.label_notes:
            lines.append(f"label {label!r}: {report.label_notes[label]}")
            continue
        rows = _sorted([r for r in report.results if r.label == label])
        n = rows[0].n_images if rows else 0
        lines.append(f"label {label!r}  ({n} images)")
        width = max([len("feature"), *(len(r.feature) for r in rows[:max_rows])])
        lines.append(f"  {'feature':<{width}}  {'kind':<11}  AUROC  95% CI")
        for result in rows[:max_rows]:
            flag = _flag(report, result)
            lines.append(
                f"  {result.feature:<{width}}  {result.kind:<11}  {result.auroc:5.2f}  "
                f"{_ci_text(result)}{flag}"
            )
        if len(rows) > max_rows:
            lines.append(f"  ... {len(rows) - max_rows} more below (see --json or audit.html)")
    if report.skipped:
        names = ", ".join(sorted({s["feature"] for s in report.skipped}))
        lines.extend(["", f"not used: {names}"])
    lines.append("")
    lines.append(warning_paragraph(report) or _no_shortcut(report))
    review = review_paragraph(report)
    if review:
        lines.extend(["", review])
    return "\n".join(lines)


def _no_shortcut(report: AuditReport) -> str:
    return (
        f"No shortcut found: no metadata feature and no border probe reached AUROC "
        f"{report.threshold:.2f} for any label."
    )


# ------------------------------------------------------------------------------ files


def write_report(report: AuditReport, out_dir: Path) -> dict[str, Path]:
    """Write ``audit.json`` and ``audit.html`` atomically; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = write_json(out_dir / "audit.json", report.to_dict())
    html_path = write_text(out_dir / "audit.html", render_html(report))
    return {"json": json_path, "html": html_path}


def render_html(report: AuditReport) -> str:
    """The self-contained audit page."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width, initial-scale=1">',
        f"<title>Shortcut audit</title><style>{_CSS}</style></head><body>",
        "<h1>Shortcut audit</h1>",
        f"<p class=meta>{esc(report.source or '(in memory)')}<br>"
        f"{report.n_audited} of {report.n_images} images audited ({report.n_patients} patients, "
        f"{report.n_unreadable} unreadable); {report.folds}-fold patient-grouped "
        f"cross-validation; out-of-fold AUROC with a {report.n_boot}-resample patient bootstrap "
        f"95% CI; a finding needs AUROC &ge; {report.threshold:.2f} and a CI above 0.5.</p>",
    ]
    warning = warning_paragraph(report)
    if warning:
        parts.append(f"<div class=warn>{esc(warning)}</div>")
    else:
        parts.append(f"<div class=ok>{esc(_no_shortcut(report))}</div>")
    review = review_paragraph(report)
    if review:
        parts.append(f"<div class=review>{esc(review)}</div>")
    parts.append(
        "<p>Each bar is how well one feature alone (or all metadata together, or a tiny "
        "image model) separates the label's positives from its negatives on patients it "
        "was not fitted on. 0.5 is chance; a bar at or past the dashed line means a "
        "network could learn the label from that feature instead of from the disease.</p>"
    )
    for label in report.labels:
        parts.append(f"<h2>{esc(label)}</h2>")
        if label in report.label_notes:
            parts.append(f"<p>{esc(report.label_notes[label])}</p>")
            continue
        rows = _sorted([r for r in report.results if r.label == label])
        parts.append(_figure(_bars_png(report, rows), f"AUROC per predictor: {label}"))
        parts.append(_table(report, rows))
        distributions = report.distributions.get(label, {})
        if distributions:
            parts.append("<h3>Strongest single features, by class</h3>")
            parts.append(_figure(_distributions_png(distributions), f"Distributions by {label}"))
        if label in report.difference_maps:
            parts.append(
                _figure(
                    _difference_png(report.difference_maps[label]),
                    f"Mean {label}-positive minus mean negative image (padded to square, "
                    "32x32): bright spots away from the lungs (corners, edges) point to "
                    "markers, collimation or padding",
                )
            )
    if report.skipped:
        items = "".join(
            f"<li><code>{esc(s['feature'])}</code>: {esc(s['reason'])}</li>" for s in report.skipped
        )
        parts.append(f"<h2>Not used</h2><ul>{items}</ul>")
    parts.append("</body></html>\n")
    return "".join(parts)


def _table(report: AuditReport, rows: Sequence[FeatureResult]) -> str:
    esc = html.escape
    body = []
    for r in rows:
        flag = " class=flag" if report.is_finding(r) else ""
        body.append(
            f"<tr{flag}><td class=l><code>{esc(r.feature)}</code></td>"
            f"<td class=l>{esc(describe(r.feature))}</td><td class=l>{r.kind}</td>"
            f"<td>{r.auroc:.3f}</td><td>{_ci_text(r)}</td><td>{r.n_images}</td></tr>"
        )
    head = (
        "<tr><th class=l>feature</th><th class=l>what</th><th class=l>kind</th>"
        "<th>AUROC</th><th>95% CI</th><th>images</th></tr>"
    )
    return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


def _figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = html.escape(caption)
    return (
        f'<figure><img alt="{cap}" src="data:image/png;base64,{data}">'
        f"<figcaption>{cap}</figcaption></figure>"
    )


# ------------------------------------------------------------------------------ figures


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _bars_png(report: AuditReport, rows: Sequence[FeatureResult]) -> bytes:
    threshold = report.threshold
    shown = [r for r in rows if math.isfinite(r.auroc)][::-1]  # strongest at the top
    fig = _new_figure(7.5, 0.9 + 0.28 * max(1, len(shown)))
    ax = fig.add_subplot(1, 1, 1)
    positions = np.arange(len(shown))
    values = np.array([r.auroc for r in shown])
    low = np.array([r.ci_low if math.isfinite(r.ci_low) else r.auroc for r in shown])
    high = np.array([r.ci_high if math.isfinite(r.ci_high) else r.auroc for r in shown])
    colours = [
        "#c0392b" if report.is_finding(r) else "#e67e22" if r.fires(threshold) else "#7f8c8d"
        for r in shown
    ]
    ax.barh(positions, values - 0.5, left=0.5, color=colours, height=0.65)
    # A percentile interval need not contain the point estimate; matplotlib refuses
    # negative error lengths, so draw the part of the interval on each side of it.
    below, above = np.clip(values - low, 0, None), np.clip(high - values, 0, None)
    ax.errorbar(values, positions, xerr=[below, above], fmt="none",
                ecolor="#2c3e50", capsize=2, linewidth=1)  # fmt: skip
    ax.axvline(0.5, color="#2c3e50", linewidth=0.8)
    ax.axvline(threshold, color="#c0392b", linestyle="--", linewidth=1)
    ax.set_yticks(positions, [r.feature for r in shown], fontsize=8)
    ax.set_xlim(min(0.3, float(low.min(initial=0.5)) - 0.02), 1.0)
    ax.set_xlabel("out-of-fold AUROC (patient-grouped CV), 95% CI")
    return _png(fig)


def _distributions_png(distributions: dict[str, dict[str, Any]]) -> bytes:
    n = len(distributions)
    fig = _new_figure(3.6 * n, 3.0)
    for index, (feature, dist) in enumerate(distributions.items()):
        ax = fig.add_subplot(1, n, index + 1)
        if dist["kind"] == "numeric":
            edges = np.asarray(dist["edges"], dtype=float)
            for name, colour in (("negative", "#2980b9"), ("positive", "#c0392b")):
                counts = np.asarray(dist[name], dtype=float)
                share = counts / max(counts.sum(), 1.0)
                ax.stairs(share, edges, color=colour, label=name, linewidth=1.5)
            ax.set_ylabel("share of class")
        else:
            levels = dist["levels"]
            positions = np.arange(len(levels))
            for offset, (name, colour) in zip(
                (-0.2, 0.2), (("negative", "#2980b9"), ("positive", "#c0392b")), strict=True
            ):
                counts = np.asarray(dist[name], dtype=float)
                share = counts / max(counts.sum(), 1.0)
                ax.bar(positions + offset, share, width=0.4, color=colour, label=name)
            ax.set_xticks(positions, [_short(level) for level in levels], rotation=45,
                          ha="right", fontsize=7)  # fmt: skip
            ax.set_ylabel("share of class")
        ax.set_title(feature, fontsize=9)
        ax.legend(fontsize=7)
    return _png(fig)


def _short(text: str, limit: int = 18) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _difference_png(difference: list[list[float]]) -> bytes:
    array = np.asarray(difference, dtype=float)
    limit = float(np.abs(array).max()) or 1e-6
    fig = _new_figure(3.6, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(array, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="positive - negative")
    return _png(fig)
