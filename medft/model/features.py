"""Cached backbone features for head-only training (``freeze: linear_probe``).

A linear probe never trains the backbone, so when the training images are the same every
epoch (no random augmentation) the pooled features the classifier sees are the same too.
:class:`FrozenFeatureCache` computes them once per manifest row (the batch's ``index``),
keeps them in memory, and later epochs run only dropout and the classifier on them.

What is cached is the classifier's input in eval mode, ``forward_head(forward_features(x),
pre_logits=True)`` with dropout off. What still happens every step is the part that is
random or trains: timm's pre-classifier dropout (``drop_rate``) and the classifier itself,
so a cached epoch computes the same loss, with the same dropout masks, as an uncached one.
Validation images are never augmented, so ``XrayClassifier`` also looks their features up
(by their own manifest rows) while the cache is on for training.

The cache is used only when that is provably safe (:meth:`FrozenFeatureCache.prepare`):

- the backbone is frozen in every epoch (``linear_probe`` with ``freeze_gate: requires_grad``)
  and has no stochastic depth (``drop_path_rate: 0``);
- the training data is deterministic: an :class:`~medft.data.cache.XrayDataset` whose random
  part holds no random transform (``data.augment: false``);
- the first batch confirms that the head is "dropout, then classifier" on those features.

Entries are keyed by manifest row and checked against the row's path; the whole cache
belongs to a fingerprint of the frozen weights, the input normalisation and the data's
decode config and file list, so a change in any of them empties it. It lives in memory
only (never in checkpoints): a resumed run refills it in its first epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, get_args

import lightning.pytorch  # noqa: F401  (before MONAI; see medft.model's docstring)
import torch
import torch.nn.functional as F
from monai.transforms import Compose, Randomizable
from torch import nn

from medft.errors import ConfigError

__all__ = [
    "FEATURE_CACHE_MODES",
    "FeatureCacheMode",
    "FeatureStore",
    "FrozenFeatureCache",
    "augments",
    "eval_pre_logits",
    "train_data_identity",
    "weights_digest",
]

log = logging.getLogger(__name__)

FeatureCacheMode = Literal["auto", "on", "off"]
"""``model.feature_cache``: use the cache when safe, always (or fail), or never."""
FEATURE_CACHE_MODES: tuple[str, ...] = get_args(FeatureCacheMode)
_INITIAL_ROWS = 1024


class FeatureStore:
    """Feature vectors by manifest row, in one growing matrix (fast batched lookup).

    Args:
        dtype: Storage type; ``float32`` keeps cached training exact, ``float16`` halves
            the memory (about 2.5 KB per image for a 1280-wide backbone).
    """

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self.rows_hint = 0
        """Expected number of manifest rows: the first allocation takes this many at once."""
        self._values: torch.Tensor | None = None
        self._filled: torch.Tensor | None = None
        self._paths: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def nbytes(self) -> int:
        """Bytes allocated for features (one slot per manifest row up to the highest seen)."""
        if self._values is None:
            return 0
        return self._values.numel() * self._values.element_size()

    def clear(self) -> None:
        """Forget every entry and free the memory."""
        self._values = self._filled = None
        self._paths = {}

    def get(
        self, rows: torch.Tensor, paths: Sequence[str] | None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Look ``rows`` up: ``(features (B, D) or None, missing (B,) bool)``.

        Missing rows have zeros in ``features``; ``features`` is ``None`` when every row is
        missing. A row stored under another path (a different manifest) counts as missing.
        """
        missing = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
        if self._values is None or self._filled is None or len(rows) == 0:
            return None, missing
        rows = rows.to(self._filled.device)
        inside = rows < len(self._filled)
        missing = ~self._filled[rows.clamp_max(len(self._filled) - 1)] | ~inside
        if paths is not None:
            stored = self._paths
            wrong = [stored.get(r) != p for r, p in zip(rows.tolist(), paths, strict=True)]
            missing |= torch.tensor(wrong, dtype=torch.bool, device=missing.device)
        if bool(missing.all()):
            return None, missing
        values = self._values[rows.clamp_max(len(self._filled) - 1)]
        return values.masked_fill(missing[:, None], 0), missing

    def put(self, rows: torch.Tensor, paths: Sequence[str] | None, features: torch.Tensor) -> None:
        """Store ``features`` ``(B, D)`` for ``rows`` (overwriting older entries)."""
        if len(rows) == 0:
            return
        features = features.detach().to(self.dtype)
        self._ensure(int(rows.max()) + 1, features)
        assert self._values is not None and self._filled is not None
        rows = rows.to(self._values.device)
        self._values[rows] = features.to(self._values.device)
        self._filled[rows] = True
        names = paths if paths is not None else [""] * len(rows)
        for row, path in zip(rows.tolist(), names, strict=True):
            self._paths[int(row)] = path

    def _ensure(self, rows_needed: int, like: torch.Tensor) -> None:
        width = like.shape[1]
        if self._values is not None and self._values.shape[1] != width:
            self.clear()  # another head width: nothing stored is comparable
        capacity = 0 if self._values is None else self._values.shape[0]
        if rows_needed <= capacity:
            return
        if capacity:
            size = max(rows_needed, 2 * capacity)
        else:
            size = max(rows_needed, self.rows_hint or _INITIAL_ROWS)
        values = torch.zeros((size, width), dtype=self.dtype, device=like.device)
        filled = torch.zeros(size, dtype=torch.bool, device=like.device)
        if self._values is not None and self._filled is not None:
            values[:capacity] = self._values
            filled[:capacity] = self._filled
        self._values, self._filled = values, filled


class FrozenFeatureCache:
    """Reuse a frozen backbone's pooled features across the epochs of a linear probe.

    Args:
        mode: ``auto`` (on when safe, else off with one info line saying why), ``on``
            (on, or a :class:`~medft.errors.ConfigError` naming what prevents it) or
            ``off``.
        dtype: Storage type of the features (see :class:`FeatureStore`).

    Typical use in a LightningModule: ``prepare(...)`` in ``on_train_start``; in the
    training step, while the backbone is frozen and :attr:`active`,
    ``logits = cache.logits(model, rows, paths, lambda: normalise(images))``.
    """

    def __init__(self, mode: FeatureCacheMode = "auto", dtype: torch.dtype = torch.float32) -> None:
        if mode not in FEATURE_CACHE_MODES:
            raise ConfigError(
                f"model.feature_cache: {mode!r} is not one of {', '.join(FEATURE_CACHE_MODES)}"
            )
        self.mode = mode
        self.store = FeatureStore(dtype)
        self.active = False
        self.reason = "not prepared: call prepare() at the start of training"
        self.drop_rate = 0.0
        self.fingerprint: str | None = None
        self._head_checked = False

    # -------------------------------------------------------------- decision
    def prepare(
        self,
        model: nn.Module,
        *,
        linear_probe: bool,
        backbone_frozen: bool,
        drop_rate: float,
        drop_path_rate: float,
        data: dict[str, Any] | None,
        identity: dict[str, Any],
    ) -> bool:
        """Decide whether this fit may use the cache; empty it if anything it depends on changed.

        Args:
            model: The timm model (backbone and classifier).
            linear_probe: The schedule never trains the backbone.
            backbone_frozen: The backbone runs without autograd (``requires_grad`` gate).
            drop_rate: timm's dropout before the classifier (re-applied on cached features).
            drop_path_rate: Stochastic depth of the backbone (makes features random).
            data: :func:`train_data_identity` of the training data, ``None`` when unknown.
            identity: Anything else the features depend on (backbone name, normalisation).

        Returns:
            Whether the cache is active. Raises :class:`~medft.errors.ConfigError` in mode
            ``on`` when it cannot be.
        """
        self.drop_rate = float(drop_rate)
        self._head_checked = False
        if self.mode == "off":
            blocker: str | None = "model.feature_cache is off"
        else:
            blocker = _blocker(linear_probe, backbone_frozen, drop_path_rate, data, self.mode)
        if blocker is not None:
            # Only a linear probe could cache: say why not there, stay quiet elsewhere.
            return self._deactivate(blocker, quiet=not linear_probe)
        fingerprint = _digest(
            {"weights": weights_digest(model), "data": data or {}, "model": identity}
        )
        if fingerprint != self.fingerprint:
            self.store.clear()
            self.fingerprint = fingerprint
        self.store.rows_hint = int((data or {}).get("rows", 0))
        self.active = True
        self.reason = "backbone frozen, training images deterministic"
        log.info(
            "feature cache on: pooled backbone features are computed once per training image "
            "and reused in later epochs (model.feature_cache=%s)",
            self.mode,
        )
        return True

    def _deactivate(self, reason: str, *, quiet: bool = False) -> bool:
        if self.mode == "on":
            raise ConfigError(
                f"model.feature_cache=on, but the features cannot be cached: {reason}. "
                "Set model.feature_cache to auto or off, or remove the cause"
            )
        self.active = False
        self.reason = reason
        self.store.clear()
        if self.mode == "auto":
            log.log(logging.DEBUG if quiet else logging.INFO, "feature cache off: %s", reason)
        return False

    # ------------------------------------------------------------- training
    def logits(
        self,
        model: nn.Module,
        rows: torch.Tensor | None,
        paths: Sequence[str] | None,
        inputs: Callable[[], torch.Tensor],
    ) -> torch.Tensor:
        """Classifier logits for a batch, running the backbone only for rows not cached yet.

        Args:
            model: The timm model; its classifier trains, everything before it is frozen.
            rows: Manifest rows of the batch (``batch["index"]``); ``None`` turns the cache off.
            paths: The rows' paths (``batch["path"]``), checked against the stored ones.
            inputs: Returns the normalised model input; called only on a cache miss.
        """
        if rows is None:
            self._deactivate("the training batches carry no 'index' (manifest row)")
            return _uncached_logits(model, inputs())
        features, missing = self.store.get(rows, paths)
        if features is None or bool(missing.any()):
            images = inputs()
            if features is not None:  # run the backbone only for the rows not cached yet
                images = images[missing.to(images.device)]
            with torch.no_grad():
                unpooled = model.forward_features(images)
                fresh = eval_pre_logits(model, unpooled)
            if not self._head_checked and not self._check_head(model, unpooled, fresh):
                return _uncached_logits(model, inputs())
            fresh = fresh.to(self.store.dtype)
            self.store.put(rows[missing.to(rows.device)], _subset(paths, missing), fresh)
            if features is None:
                features = fresh
            else:
                features = features.to(fresh.device)
                features[missing.to(fresh.device)] = fresh
        return self._head(model, features)

    def _head(self, model: nn.Module, features: torch.Tensor) -> torch.Tensor:
        classifier = model.get_classifier()
        weight = next(classifier.parameters(), None)
        if weight is not None:
            features = features.to(weight.dtype)
        if self.drop_rate > 0:
            features = F.dropout(features, p=self.drop_rate, training=model.training)
        return classifier(features)

    def _check_head(self, model: nn.Module, unpooled: torch.Tensor, features: torch.Tensor) -> bool:
        """Confirm on real data that ``forward_head`` is dropout + classifier on ``features``."""
        self._head_checked = True
        with torch.no_grad():
            with _same_random_draws(unpooled.device):
                expected = model.forward_head(unpooled)
            with _same_random_draws(unpooled.device):
                got = self._head(model, features)
        if (
            features.dim() == 2
            and expected.shape == got.shape
            and torch.allclose(expected.float(), got.float(), rtol=1e-4, atol=1e-5)
        ):
            return True
        self._deactivate(
            f"{type(model).__name__}'s head is not dropout + classifier on pooled features"
        )
        return False


# ------------------------------------------------------------------ helpers


def _uncached_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The plain frozen-backbone path: backbone without autograd, head with it."""
    with torch.no_grad():
        unpooled = model.forward_features(images)
    return model.forward_head(unpooled)


def _subset(paths: Sequence[str] | None, mask: torch.Tensor) -> list[str] | None:
    if paths is None:
        return None
    return [p for p, keep in zip(paths, mask.tolist(), strict=True) if keep]


def eval_pre_logits(model: nn.Module, unpooled: torch.Tensor) -> torch.Tensor:
    """The classifier's input for ``forward_features`` output, with dropout off.

    The model is switched to eval mode for the call only, so timm's functional
    ``F.dropout(..., training=self.training)`` and dropout modules are identities; every
    module's own mode is restored afterwards (frozen norm layers stay as they were).
    """
    with _eval_mode(model):
        return model.forward_head(unpooled, pre_logits=True)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer except the classifier's (what features depend on)."""
    classifier = model.get_classifier()
    heads = classifier if isinstance(classifier, tuple | list) else (classifier,)
    skip = {
        id(tensor)
        for head in heads
        if isinstance(head, nn.Module)
        for tensor in head.state_dict(keep_vars=True).values()
    }
    digest = hashlib.sha256()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in skip:
            continue
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(data.numpy())
    return digest.hexdigest()


def train_data_identity(dataset: Any) -> dict[str, Any] | None:
    """What the training images depend on, or ``None`` when ``dataset`` cannot tell.

    Understands :class:`~medft.data.cache.XrayDataset`: its decode config (image size, fit
    mode, cached dtype, pipeline version), the number of manifest rows and a digest of
    their file list, and whether its per-access part holds a random transform
    (augmentation).
    """
    cache = getattr(dataset, "cache", None)
    random = augments(dataset)
    if cache is None or random is None:
        return None
    return {
        "decode": dict(cache.decoder.config),
        "rows": len(cache.paths),
        "paths": _digest(list(cache.paths)),
        "transforms": [type(t).__name__ for t in _flatten(dataset.random_part)],
        "random": random,
    }


def augments(dataset: Any) -> bool | None:
    """Whether an :class:`~medft.data.cache.XrayDataset` applies a random transform per
    access; ``None`` when ``dataset`` cannot tell (cheap: no file list is hashed)."""
    random_part = getattr(dataset, "random_part", None)
    decoder = getattr(getattr(dataset, "cache", None), "decoder", None)
    if random_part is None or decoder is None:
        return None
    return any(isinstance(t, Randomizable) for t in _flatten(random_part))


def _blocker(
    linear_probe: bool,
    backbone_frozen: bool,
    drop_path_rate: float,
    data: dict[str, Any] | None,
    mode: str,
) -> str | None:
    """Why features cannot be cached for this fit, or ``None`` when they can."""
    if not linear_probe:
        return "the backbone trains in some epochs (only freeze=linear_probe caches features)"
    if not backbone_frozen:
        return "freeze_gate=lr keeps the backbone in the autograd graph"
    if drop_path_rate > 0:
        return f"drop_path_rate={drop_path_rate:g} makes the backbone's features random"
    if data is None and mode == "auto":
        return "the training data does not say whether it is augmented (not an XrayDataset)"
    if data is not None and data["random"]:
        return "the training images are augmented (set data.augment=false to cache features)"
    return None


def _flatten(compose: Any) -> Iterator[Any]:
    for transform in getattr(compose, "transforms", ()):
        if isinstance(transform, Compose):
            yield from _flatten(transform)
        else:
            yield transform


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def _same_random_draws(device: torch.device) -> Iterator[None]:
    """Run a block on a copy of the random state: two such blocks draw the same numbers."""
    devices: list[int] = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield
