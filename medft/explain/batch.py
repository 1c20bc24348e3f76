"""``medft explain``: saliency maps for a trained checkpoint over a file or a folder of images.

:func:`explain_inputs` reads every input (DICOM, PNG or JPEG, chosen by content), runs the
checkpoint's model on it the way ``medft predict`` does (its ``image_size`` and ``fit_mode``,
8-bit display values like the training cache), and writes, per input:

- ``overlays/<id>_<finding>.png``: the map coloured over the radiograph at its ORIGINAL size;
- ``maps/<id>_<finding>.npy``: the raw map, un-normalised, on the original pixel grid;
- ``grids/<id>_grid.png``: the image plus one panel per finding with its probability, the
  positive/negative call at the checkpoint's stored threshold, and the method;

and one ``index.csv`` for the run. ``<id>`` is a running number plus a short hash of the
input path (``0003_ab12cd``), so no file name carries a patient name or a DICOM UID; the
index maps ids back to paths. Unreadable inputs get a row with the reason and do not stop
the run. With ``check=True`` the two trust checks of :mod:`medft.explain.checks` run on the
first ``check_max`` readable inputs and their summary goes to ``checks.json``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import torch

from medft._io import atomic_open, write_json
from medft.data.dicom import load_image
from medft.errors import ConfigError, MedftError
from medft.explain.checks import deletion_score, randomisation_check
from medft.explain.overlay import DisplayNorm, grid_image, render_overlay
from medft.explain.saliency import METHODS, Method, SaliencyResult, explain
from medft.inference import INPUT_SUFFIXES, Predictor, collect_inputs, output_id
from medft.progress import track

__all__ = [
    "INDEX_COLUMNS",
    "INPUT_SUFFIXES",
    "NORM_MODES",
    "collect_inputs",
    "explain_inputs",
    "format_summary",
    "output_id",
]

NormMode = Literal["probability", "percentile"]
"""How the maps of one image share a display scale."""
NORM_MODES: tuple[str, ...] = get_args(NormMode)
INDEX_COLUMNS = (
    "id",
    "input",
    "status",
    "error",
    "finding",
    "probability",
    "threshold",
    "call",
    "method",
    "layer",
    "overlay",
    "raw_map",
    "raw_map_content",
    "grid",
    "original_height",
    "original_width",
    "display_norm",
)


def explain_inputs(
    checkpoint: str | Path,
    inputs: str | Path,
    out: str | Path,
    *,
    method: Method = "gradcam",
    findings: Sequence[str] | None = None,
    norm: NormMode = "probability",
    alpha: float = 0.4,
    target_layer: str = "auto",
    check: bool = False,
    check_max: int = 20,
) -> pd.DataFrame:
    """Explain every image under ``inputs`` with the model in ``checkpoint``; write to ``out``.

    Args:
        checkpoint: a medft checkpoint (loaded safely by :class:`~medft.inference.Predictor`).
        inputs: one image file, or a folder searched recursively for ``*.dcm``, ``*.png``,
            ``*.jpg`` (and ``.dicom``, ``.jpeg``) and suffix-less files whose content is DICOM.
        out: output folder (created); files of an earlier run with the same ids are replaced.
        method: ``gradcam``, ``gradcam++``, ``hirescam`` or ``occlusion``.
        findings: which of the model's findings to explain (default: every finding).
        norm: display normalisation shared by the findings of one image: ``probability``
            (peak = probability) or ``percentile`` (one scale, the 99th percentile).
        alpha: opacity of full colour in the overlays, in [0, 1].
        target_layer: CAM layer: ``"auto"`` (the last feature stage) or a module name
            relative to the checkpoint's model (e.g. ``model.layer3`` for a finer map);
            ignored by occlusion.
        check: also run the randomisation check and the deletion/insertion score
            (written to ``checks.json``; summary in ``index.attrs["checks"]``).
        check_max: how many readable inputs the checks use (the first ones in order).

    Returns:
        The index (also ``out/index.csv``, columns :data:`INDEX_COLUMNS`): one row per input
        and finding, or one row with ``status == "error"`` and the reason per unreadable
        input. Output paths are relative to ``out``.
    """
    _check_options(method, norm, alpha, check_max)
    predictor = Predictor.from_checkpoint(checkpoint)
    model = predictor.single().model
    wanted = _requested_findings(predictor, findings)
    out = Path(out)
    paths = collect_inputs(inputs, exclude=out)
    writer = _OutputWriter(out, predictor, norm=norm, alpha=alpha)
    options = {"method": method, "multilabel": _multilabel(predictor)}
    if method != "occlusion":
        options["target_layer"] = target_layer
    checks = _CheckRun(predictor, options, check_max) if check else None

    rows: list[dict[str, Any]] = []
    width = max(4, len(str(len(paths) - 1)))
    for number, path in enumerate(track(paths, "explain", unit="images")):
        name = output_id(number, path, width=width)
        try:
            image, _meta = load_image(path)
            prepared = predictor.preprocess(image)
        except MedftError as exc:
            rows.append(_error_row(name, path, exc))
            continue
        results = explain(model, prepared, labels=predictor.labels, findings=wanted, **options)
        rows += writer.write(name, path, image, results)
        if checks is not None and checks.wants_more():
            checks.add(name, prepared, results)

    index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    for column in ("original_height", "original_width"):
        index[column] = index[column].astype("Int64")  # blank, not NaN, for unreadable inputs
    with atomic_open(out / "index.csv", "w", newline="", encoding="utf-8") as fh:
        index.to_csv(fh, index=False)
    if checks is not None:
        index.attrs["checks"] = checks.finish(out / "checks.json")
    return index


# --------------------------------------------------------------------------- model side


def _multilabel(predictor: Predictor) -> bool:
    return predictor.task != "multiclass"


def _requested_findings(predictor: Predictor, findings: Sequence[str] | None) -> list[str]:
    wanted = list(findings) if findings else list(predictor.labels)
    unknown = [name for name in wanted if name not in predictor.labels]
    if unknown:
        raise ConfigError(
            f"--labels {' '.join(unknown)}: not predicted by this checkpoint; it predicts "
            f"{', '.join(predictor.labels)}"
        )
    return list(dict.fromkeys(wanted))


def _check_options(method: str, norm: str, alpha: float, check_max: int) -> None:
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}; got {method!r}")
    if norm not in NORM_MODES:
        raise ConfigError(f"--norm must be one of {', '.join(NORM_MODES)}; got {norm!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--alpha must be in [0, 1]; got {alpha}")
    if check_max < 1:
        raise ConfigError(f"--check-max must be at least 1; got {check_max}")


# --------------------------------------------------------------------------- outputs


class _OutputWriter:
    """Writes one input's overlays, raw maps and grid atomically; returns its index rows."""

    def __init__(self, out: Path, predictor: Predictor, *, norm: str, alpha: float) -> None:
        self.out = out
        self.predictor = predictor
        self.norm = norm
        self.alpha = alpha
        self.slugs = _finding_slugs(predictor.labels)

    def write(
        self, name: str, path: Path, image: np.ndarray, results: Sequence[SaliencyResult]
    ) -> list[dict[str, Any]]:
        norm = DisplayNorm.shared(results, mode=self.norm)  # type: ignore[arg-type]
        grid = Path("grids") / f"{name}_grid.png"
        captions, rows = [], []
        for result in results:
            # saliency reports the uncalibrated probability: compare it on that scale
            threshold = self.predictor.threshold_for(result.finding, calibrated=False)
            positive = self.predictor.call_one(result.finding, result.probability, calibrated=False)
            call = "positive" if positive else "negative"
            overlay = render_overlay(image, result, normalization=norm, alpha=self.alpha)
            stem = f"{name}_{self.slugs[result.finding]}"
            overlay_path = Path("overlays") / f"{stem}.png"
            map_path = Path("maps") / f"{stem}.npy"
            _write_png(self.out / overlay_path, overlay)
            with atomic_open(self.out / map_path, "wb") as fh:
                np.save(fh, result.original.astype(np.float32, copy=False))
            captions.append(f"{call.upper()} at threshold {threshold:.3f}")
            rows.append(
                {
                    "id": name,
                    "input": str(path),
                    "status": "ok",
                    "error": "",
                    "finding": result.finding,
                    "probability": result.probability,
                    "threshold": threshold,
                    "call": call,
                    "method": result.method,
                    "layer": result.layer,
                    "overlay": overlay_path.as_posix(),
                    "raw_map": map_path.as_posix(),
                    "raw_map_content": (
                        f"un-normalised {result.method} map (float32) on the original image "
                        f"grid, {image.shape[0]}x{image.shape[1]}; units: {result.units}; "
                        "> 0 = evidence for the finding"
                    ),
                    "grid": grid.as_posix(),
                    "original_height": int(image.shape[0]),
                    "original_width": int(image.shape[1]),
                    "display_norm": norm.describe(),
                }
            )
        figure = grid_image(image, results, norm, captions=captions, alpha=self.alpha)
        _write_png(self.out / grid, figure)
        return rows


def _error_row(name: str, path: Path, exc: MedftError) -> dict[str, Any]:
    """The index row of an input that could not be read (the reason names the file)."""
    row: dict[str, Any] = dict.fromkeys(INDEX_COLUMNS, "")
    row.update({"id": name, "input": str(path), "status": "error", "error": str(exc)})
    for key in ("probability", "threshold", "original_height", "original_width"):
        row[key] = np.nan
    return row


def _finding_slugs(labels: Sequence[str]) -> dict[str, str]:
    """A file-name-safe, unique short form of each finding name."""
    slugs: dict[str, str] = {}
    for label in labels:
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_.") or "finding"
        base, n = slug, 2
        while slug in slugs.values():
            slug, n = f"{base}-{n}", n + 1
        slugs[label] = slug
    return slugs


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    with atomic_open(path, "wb") as fh:
        Image.fromarray(rgb).save(fh, format="PNG")


# --------------------------------------------------------------------------- trust checks


class _CheckRun:
    """Collects randomisation and deletion/insertion results over the first inputs."""

    def __init__(self, predictor: Predictor, options: dict[str, Any], limit: int) -> None:
        self.predictor = predictor
        self.options = options
        self.method = str(options["method"])
        self.limit = limit
        self.randomisation: list[dict[str, Any]] = []
        self.deletion: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.layer = ""

    def wants_more(self) -> bool:
        return len(self.ids) < self.limit

    def add(
        self, name: str, prepared: tuple[torch.Tensor, Any], results: Sequence[SaliencyResult]
    ) -> None:
        """Run both checks on one input whose maps are ``results``."""
        predictor = self.predictor
        model, labels, multilabel = predictor.model, predictor.labels, _multilabel(predictor)
        findings = [result.finding for result in results]
        randomised = randomisation_check(
            model, prepared, labels=labels, findings=findings, **self.options
        )
        self.layer = randomised["layer"]
        self.randomisation += [{"id": name, **row} for row in randomised["rows"]]
        for result in results:
            score = deletion_score(model, prepared, result, labels=labels, multilabel=multilabel)
            positive = predictor.call_one(result.finding, result.probability, calibrated=False)
            self.deletion.append(
                {
                    "id": name,
                    "finding": result.finding,
                    "probability": score["probability"],
                    "call": "positive" if positive else "negative",
                    **{key: score[key] for key in _SCORE_KEYS},
                }
            )
        self.ids.append(name)

    def finish(self, path: Path) -> dict[str, Any]:
        """Write ``checks.json`` (summary + per-input rows); return the summary."""
        summary = {
            "method": self.method,
            "layer": self.layer,
            "n_images": len(self.ids),
            "randomisation": _randomisation_summary(self.randomisation),
            "deletion": {
                "all": _deletion_summary(self.deletion),
                "called_positive": _deletion_summary(
                    [row for row in self.deletion if row["call"] == "positive"]
                ),
            },
        }
        write_json(
            path,
            {
                "summary": summary,
                "ids": self.ids,
                "randomisation_rows": self.randomisation,
                "deletion_rows": self.deletion,
            },
        )
        return summary


_SCORE_KEYS = (
    "deletion_auc",
    "random_deletion_auc",
    "deletion_gain",
    "insertion_auc",
    "random_insertion_auc",
    "insertion_gain",
)


def _randomisation_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median Spearman correlation per randomisation level, over images and findings."""
    levels: list[dict[str, Any]] = []
    for level in sorted({row["level"] for row in rows}):
        at_level = [row for row in rows if row["level"] == level]
        signed = np.array([row["spearman"] for row in at_level], dtype=float)
        absolute = np.array([row["spearman_abs"] for row in at_level], dtype=float)
        levels.append(
            {
                "level": level,
                "randomised": at_level[0]["randomised"],
                "median_spearman": _nan_median(signed),
                "median_spearman_abs": _nan_median(absolute),
                "n": int(np.isfinite(signed).sum()),
            }
        )
    return levels


def _deletion_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means of the deletion and insertion AUCs and gains, and how often the map beat random."""
    summary: dict[str, Any] = {"n": len(rows)}
    for key in _SCORE_KEYS:
        values = np.array([row[key] for row in rows], dtype=float)
        summary[f"mean_{key}"] = float(values.mean()) if values.size else float("nan")
    for mode in ("deletion", "insertion"):
        gains = np.array([row[f"{mode}_gain"] for row in rows], dtype=float)
        summary[f"{mode}_beats_random"] = float((gains > 0).mean()) if gains.size else float("nan")
    return summary


def _nan_median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


# --------------------------------------------------------------------------- summary


def format_summary(index: pd.DataFrame, out: str | Path) -> str:
    """A few lines for the terminal: what was written where, and what the colours mean."""
    out = Path(out)
    ok = index[index["status"] == "ok"]
    failed = index.loc[index["status"] == "error", "input"].nunique()
    n_inputs = ok["input"].nunique() + failed
    lines = [f"explained {ok['input'].nunique()} of {n_inputs} inputs"]
    if len(ok):
        lines[0] += f" with {ok['method'].iloc[0]} at {ok['layer'].iloc[0]}"
    if failed:
        lines.append(f"{failed} unreadable: reasons in the 'error' column of the index")
    lines += [
        f"overlays (original size): {out / 'overlays'}",
        f"raw maps (.npy, un-normalised, original size): {out / 'maps'}",
        f"grids: {out / 'grids'}",
        f"index: {out / 'index.csv'}",
    ]
    sentences = ok["display_norm"].unique()
    if len(sentences) == 1:
        lines.append(sentences[0])
    elif len(sentences) > 1:
        lines.append(f"{sentences[0]} (scale differs per image; see display_norm in the index)")
    checks = index.attrs.get("checks")
    if checks:
        lines += _format_checks(checks, out / "checks.json")
    return "\n".join(lines)


def _format_checks(summary: dict[str, Any], path: Path) -> list[str]:
    lines = [
        f"trust checks on {summary['n_images']} images ({summary['method']}), details: {path}",
        "  randomisation: median Spearman of trained vs randomised maps (1 = unchanged; a "
        "map that depends on the weights falls towards 0):",
    ]
    previous = ""
    for level in summary["randomisation"]:
        randomised = level["randomised"]
        added = randomised[len(previous) + 1 :] if previous else randomised
        previous = randomised if level["level"] else ""
        lines.append(
            f"    level {level['level']} ({'+ ' if level['level'] > 1 else ''}{added}): "
            f"{_rounded(level['median_spearman'])} (|map| {_rounded(level['median_spearman_abs'])})"
        )
    for subset, label in (("all", "all maps"), ("called_positive", "findings called positive")):
        scores = summary["deletion"][subset]
        if not scores["n"]:
            continue
        lines.append(
            f"  {label} (n={scores['n']}): deletion AUC {scores['mean_deletion_auc']:.3f} vs "
            f"{scores['mean_random_deletion_auc']:.3f} random (lower is better); insertion AUC "
            f"{scores['mean_insertion_auc']:.3f} vs {scores['mean_random_insertion_auc']:.3f} "
            "random (higher is better)"
        )
    return lines


def _rounded(value: float) -> str:
    """Two decimals without a minus sign on zero."""
    return f"{round(value, 2) + 0.0:.2f}"
