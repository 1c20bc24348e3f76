"""The demo's inference service: one loaded model, safe to call from many threads at once.

A :class:`Case` is everything the page needs about one uploaded image, computed once and
cached by the SHA-256 of the file's bytes, so moving a slider never re-runs the model:

- the model's prediction, on exactly the input ``medft predict`` would build (the reader's
  automatic display window, then :meth:`medft.inference.Predictor.preprocess`: the
  checkpoint's square, fit mode and cached pixel type, uint8 or uint16);
- a copy of the display image at view size (the browser never receives the full matrix);
- saliency maps per method, computed on first request and resampled onto the view grid;
- the file's bytes, so a new window/level is rendered by the reader from the stored
  (modality) values rather than by stretching the 8-bit display image.

The model runs under one lock (saliency hooks live on the shared model, and CPU inference
gains nothing from overlapping requests); decoding, resizing and rendering run outside it.
The cache is bounded by memory (``cache_mb``), oldest case first.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medft.data.dicom import XrayMeta, load_image
from medft.data.geometry import Geometry
from medft.errors import ConfigError
from medft.explain import METHODS, DisplayNorm, explain, render_overlay
from medft.inference import Predictor
from medft.model.checkpoint import LoadedClassifier

from .uploads import (
    check_size,
    content_key,
    read_limited,
    refuse_unsupported,
    short_key,
)

log = logging.getLogger("medft.demo")

DEFAULT_METHOD = "gradcam"
Window = tuple[float, float] | None  # None: the file's own (automatic) display window


@dataclass(frozen=True)
class FindingCall:
    """One finding's probability and the call at the checkpoint's operating point.

    ``positive`` is decided by :meth:`medft.inference.Predictor.call`, the rule
    ``medft predict`` and ``evaluate`` use (``probability >= threshold``).
    """

    finding: str
    probability: float
    threshold: float
    positive: bool


@dataclass(frozen=True)
class SaliencyView:
    """Saliency maps of every finding for one method, on the view grid, with their colour scale."""

    method: str
    maps: dict[str, np.ndarray]
    norm: DisplayNorm

    @property
    def nbytes(self) -> int:
        """Memory held by the maps."""
        return sum(m.nbytes for m in self.maps.values())


@dataclass(eq=False)
class Case:
    """One analysed image (see the module docstring). Never holds patient identifiers."""

    key: str
    data: bytes = field(repr=False)
    meta: XrayMeta
    view: np.ndarray = field(repr=False)
    value_range: tuple[float, float] | None
    findings: list[FindingCall]
    tensor: torch.Tensor = field(repr=False)
    view_geometry: Geometry
    notes: list[str]
    seconds: float
    saliency: dict[str, SaliencyView] = field(default_factory=dict, repr=False)
    windowed: tuple[Window, np.ndarray] | None = field(default=None, repr=False)

    @property
    def short(self) -> str:
        """The short content hash shown in tables and logs."""
        return short_key(self.key)

    @property
    def top(self) -> FindingCall:
        """The finding with the highest probability."""
        return max(self.findings, key=lambda call: call.probability)

    @property
    def nbytes(self) -> int:
        """Approximate memory held by the case."""
        held = len(self.data) + self.view.nbytes + self.tensor.numel() * 4
        held += sum(view.nbytes for view in self.saliency.values())
        if self.windowed is not None:
            held += self.windowed[1].nbytes
        return held


class InferenceService:
    """Predictions, saliency and windowing for uploaded images, cached per file content.

    Args:
        classifier: the model: a :class:`~medft.inference.Predictor` of one checkpoint (or a
            loaded checkpoint, wrapped in one).
        max_bytes: largest file accepted.
        max_pixels: largest decoded frame (samples), refused before decoding.
        view_size: longest side of view images (what the browser receives).
        cache_mb: memory budget of the case cache.
    """

    def __init__(
        self,
        classifier: Predictor | LoadedClassifier,
        *,
        max_bytes: int = 64 * 2**20,
        max_pixels: int = 50_000_000,
        view_size: int = 1024,
        cache_mb: int = 512,
    ) -> None:
        predictor = classifier if isinstance(classifier, Predictor) else Predictor([classifier])
        self.predictor = predictor
        self.classifier = predictor.single()
        self.model = self.classifier.model.eval()
        self.labels = list(predictor.labels)
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        self.view_size = int(view_size)
        self.cache_bytes = int(cache_mb) * 2**20
        self._multilabel = predictor.task != "multiclass"
        self._model_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._cases: OrderedDict[str, Case] = OrderedDict()

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> InferenceService:
        """Load a checkpoint safely (``weights_only=True``) and wrap it."""
        return cls(Predictor.from_checkpoint(path), **kwargs)

    # ------------------------------------------------------------------ analysis
    def analyse_file(self, path: str | Path) -> Case:
        """Read an uploaded file within the size limit and analyse it."""
        return self.analyse_bytes(read_limited(path, self.max_bytes))

    def analyse_bytes(self, data: bytes) -> Case:
        """Decode, check and predict one image; cached by content.

        Raises:
            DicomReadError: unreadable, empty, too large, multi-frame or colour DICOM; the
                message says why (see :func:`medft.demo.uploads.user_message`).
        """
        check_size(data, self.max_bytes)
        key = content_key(data)
        cached = self.get(key)
        if cached is not None:
            return cached
        started = time.perf_counter()
        image, meta = load_image(data, max_pixels=self.max_pixels)
        notes = refuse_unsupported(meta)
        # The Predictor's own preprocessing: the input `medft predict` builds for this file.
        tensor, geometry = self.predictor.preprocess(image)
        probabilities = self._predict(tensor)
        view = shrink(image, view_shape(image.shape, self.view_size))
        calls = self.predictor.call(np.array([probabilities]), calibrated=False)[0]
        thresholds = self.predictor.raw_thresholds
        case = Case(
            key=key,
            data=data,
            meta=meta,
            view=view,
            value_range=_known_range(meta),
            findings=[
                FindingCall(name, float(p), float(thresholds[name]), bool(call))
                for name, p, call in zip(self.labels, probabilities, calls, strict=True)
            ],
            tensor=tensor,
            view_geometry=dataclasses.replace(geometry, original_shape=tuple(view.shape)),
            notes=notes,
            seconds=time.perf_counter() - started,
        )
        self._store(case)
        log.info("case %s analysed in %.2f s", case.short, case.seconds)
        return case

    def value_range(self, case: Case) -> tuple[float, float]:
        """(min, max) of the image's values in modality units (decoded once, on first use).

        Known without decoding when the reader already windowed by min-max or full range;
        otherwise (the file's own window or VOI LUT was used) the file is read again.
        """
        if case.value_range is None:
            _, meta = load_image(case.data, voi="none", max_pixels=self.max_pixels)
            case.value_range = _known_range(meta) or (0.0, 1.0)
        return case.value_range

    def _predict(self, tensor: torch.Tensor) -> list[float]:
        """Uncalibrated probabilities, the ones ``medft predict`` writes as ``prob_``."""
        with self._model_lock:
            raw, _calibrated = self.predictor.probabilities(tensor)
        return raw[0].tolist()

    # ------------------------------------------------------------------ views
    def view_image(self, case: Case, window: Window = None) -> np.ndarray:
        """The display image at view size, in the file's window or in ``(center, width)``.

        An explicit window is rendered by the reader from the file's stored values (modality
        units for DICOM, stored units for PNG/JPEG), so nothing is lost to 8-bit rounding;
        the last window per case is kept.
        """
        if window is None:
            return case.view
        window = (float(window[0]), max(float(window[1]), 1e-6))
        last = case.windowed
        if last is not None and last[0] == window:
            return last[1]
        image, _ = load_image(case.data, voi=window, max_pixels=self.max_pixels)
        view = shrink(image, case.view.shape)
        case.windowed = (window, view)
        self._trim()
        return view

    def saliency(self, case: Case, method: str = DEFAULT_METHOD) -> SaliencyView:
        """Maps of every finding for ``method`` on the view grid (computed once per case)."""
        if method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        cached = case.saliency.get(method)
        if cached is not None:
            return cached
        started = time.perf_counter()
        with self._model_lock:
            results = explain(
                self.model,
                (case.tensor, case.view_geometry),
                labels=self.labels,
                method=method,  # type: ignore[arg-type]
                multilabel=self._multilabel,
            )
        view = SaliencyView(
            method=method,
            maps={r.finding: r.original for r in results},
            norm=DisplayNorm.shared(results, mode="probability"),
        )
        case.saliency[method] = view
        self._trim()
        log.info("case %s: %s maps in %.2f s", case.short, method, time.perf_counter() - started)
        return view

    def overlay(
        self,
        case: Case,
        finding: str,
        *,
        method: str = DEFAULT_METHOD,
        alpha: float = 0.5,
        window: Window = None,
    ) -> np.ndarray:
        """The saliency of ``finding`` coloured over the (windowed) view image; uint8 RGB."""
        if finding not in self.labels:
            raise ConfigError(f"unknown finding {finding!r}; the model predicts {self.labels}")
        maps = self.saliency(case, method)
        base = self.view_image(case, window)
        return render_overlay(
            base,
            maps.maps[finding],
            normalization=maps.norm,
            finding=finding,
            alpha=float(np.clip(alpha, 0.0, 1.0)),
        )

    # ------------------------------------------------------------------ cache
    def get(self, key: str) -> Case | None:
        """A cached case by content key (most recently used moves to the end)."""
        with self._cache_lock:
            case = self._cases.get(key)
            if case is not None:
                self._cases.move_to_end(key)
            return case

    def __len__(self) -> int:
        return len(self._cases)

    def cached_bytes(self) -> int:
        """Memory held by the cache, approximately."""
        with self._cache_lock:
            return sum(case.nbytes for case in self._cases.values())

    def _store(self, case: Case) -> None:
        with self._cache_lock:
            self._cases[case.key] = case
            self._cases.move_to_end(case.key)
        self._trim()

    def _trim(self) -> None:
        """Drop least recently used cases until the cache fits its budget (keeps the newest)."""
        with self._cache_lock:
            total = sum(case.nbytes for case in self._cases.values())
            while total > self.cache_bytes and len(self._cases) > 1:
                _, dropped = self._cases.popitem(last=False)
                total -= dropped.nbytes


def _known_range(meta: XrayMeta) -> tuple[float, float] | None:
    """The value range a min-max or full-range window spans; None for a header window/LUT."""
    if meta.window is None or meta.voi_source not in ("minmax", "full_range"):
        return None
    center, width = meta.window
    return center - width / 2.0, center + width / 2.0


def view_shape(shape: tuple[int, ...], view_size: int) -> tuple[int, int]:
    """``shape`` scaled so its longest side is at most ``view_size`` (never enlarged)."""
    height, width = int(shape[0]), int(shape[1])
    scale = min(1.0, view_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of a (H, W) float image to ``shape`` (float32)."""
    array = np.asarray(image, dtype=np.float32)
    if tuple(array.shape) == tuple(shape):
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    out = F.interpolate(tensor, size=tuple(shape), mode="bilinear", antialias=True)
    return out[0, 0].clamp_(0.0, 1.0).numpy()
