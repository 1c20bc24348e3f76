"""Cached backbone features for linear probes: same training, far fewer backbone passes."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
import torch

from medft.data.datamodule import XrayDataModule
from medft.errors import ConfigError
from medft.model.features import (
    FeatureStore,
    FrozenFeatureCache,
    eval_pre_logits,
    train_data_identity,
    weights_digest,
)
from medft.model.module import XrayClassifier

BATCH = 8


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic patients (64 px files, trained at 32 px)."""
    from medft.data.synth import synthesize

    out = tmp_path_factory.mktemp("features_synth")
    return synthesize(out, 24, size=64, seed=1, workers=1).labels_csv


def _data(manifest: Path, **kwargs) -> XrayDataModule:
    defaults = {
        "image_size": 32,
        "batch_size": BATCH,
        "num_workers": 0,
        "cache": "memory",
        "augment": False,
        "audit": False,
        "labels": ["abnormal"],
        "val_fraction": 0.0,  # 24 training images: three full batches, none left out
        "test_fraction": 0.0,
    }
    return XrayDataModule(str(manifest), **{**defaults, **kwargs})


def _probe(**kwargs) -> XrayClassifier:
    defaults = {
        "backbone": "test_resnet",
        "pretrained": False,
        "freeze": "linear_probe",
        "drop_rate": 0.3,  # dropout still runs on cached features, every step
        "auto_pos_weight": False,
    }
    return XrayClassifier(**{**defaults, **kwargs})


def _count_backbone_passes(module: XrayClassifier) -> list[int]:
    """Wrap ``forward_features`` of the training model; returns the live call counter."""
    calls = [0]
    original = module.model.forward_features

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return original(x)

    module.model.forward_features = counted
    return calls


def _fit(
    manifest: Path,
    feature_cache: str,
    epochs: int,
    *,
    ckpt_path: str | None = None,
    save_to: Path | None = None,
) -> tuple[XrayClassifier, list[int]]:
    torch.set_num_threads(1)
    L.seed_everything(0, workers=True)
    module = _probe(feature_cache=feature_cache)
    calls = _count_backbone_passes(module)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        deterministic=True,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=_data(manifest), ckpt_path=ckpt_path)
    if save_to is not None:
        trainer.save_checkpoint(save_to)
    return module, calls


def _head(module: XrayClassifier) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.get_classifier().state_dict().items()}


# --------------------------------------------------------------------- end to end


def test_cached_linear_probe_trains_the_same_head_with_one_backbone_pass(manifest: Path) -> None:
    cached, cached_calls = _fit(manifest, "auto", epochs=3)
    plain, plain_calls = _fit(manifest, "off", epochs=3)

    assert cached.feature_cache.active
    assert not plain.feature_cache.active
    batches_per_epoch = plain_calls[0] // 3
    assert batches_per_epoch == 3
    assert cached_calls[0] == batches_per_epoch  # the backbone ran in the first epoch only
    assert len(cached.feature_cache.store) == batches_per_epoch * BATCH

    cached_head, plain_head = _head(cached), _head(plain)
    start = _head(_probe())  # same seed-independent check that training moved the head
    assert any(not torch.allclose(plain_head[k], start[k]) for k in plain_head)
    for key, value in plain_head.items():
        torch.testing.assert_close(cached_head[key], value, rtol=1e-5, atol=1e-6)


class _ValLosses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.losses.append(float(trainer.callback_metrics["val/loss"]))


def _fit_with_validation(manifest: Path, feature_cache: str) -> tuple[list[float], list[int]]:
    """Three epochs with validation: the val losses, and images the backbone saw in each
    validation epoch."""
    torch.set_num_threads(1)
    L.seed_everything(0, workers=True)
    module = _probe(feature_cache=feature_cache)
    original = module.model.forward_features
    val_images: list[int] = []

    def counted(x: torch.Tensor) -> torch.Tensor:
        if module.trainer.validating:
            val_images[module.current_epoch] += len(x)
        return original(x)

    class Epochs(_ValLosses):
        def on_validation_epoch_start(self, trainer: L.Trainer, pl: L.LightningModule) -> None:
            val_images.append(0)

    module.model.forward_features = counted
    losses = Epochs()
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        deterministic=True,
        num_sanity_val_steps=0,
        callbacks=[losses],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=_data(manifest, val_fraction=0.25))
    return losses.losses, val_images


def test_validation_reuses_cached_features_with_the_same_results(manifest: Path) -> None:
    cached_losses, cached_images = _fit_with_validation(manifest, "auto")
    plain_losses, plain_images = _fit_with_validation(manifest, "off")
    n_val = plain_images[0]
    assert n_val > 0 and plain_images == [n_val] * 3
    assert cached_images == [n_val, 0, 0]  # the backbone saw the validation images once
    assert cached_losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-6)
    assert len(set(cached_losses)) > 1  # the head trains, so the validation loss moves


def test_checkpoint_holds_no_features_and_resume_refills_the_cache(
    manifest: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "two.ckpt"
    first, _ = _fit(manifest, "on", epochs=2, save_to=checkpoint)
    saved = torch.load(checkpoint, weights_only=True)
    assert set(saved["state_dict"]) == {f"{k}" for k in first.state_dict()}
    assert not any("feature" in key for key in saved["state_dict"])
    assert saved["hyper_parameters"]["feature_cache"] == "on"

    resumed, calls = _fit(manifest, "on", epochs=4, ckpt_path=str(checkpoint))
    uncached, _ = _fit(manifest, "off", epochs=4, ckpt_path=str(checkpoint))

    assert resumed.feature_cache.active
    assert calls[0] == 3  # the empty cache was rebuilt in the first resumed epoch only
    assert len(resumed.feature_cache.store) == len(first.feature_cache.store)
    for key, value in _head(uncached).items():
        torch.testing.assert_close(_head(resumed)[key], value, rtol=1e-5, atol=1e-6)


def test_augmented_training_data_turns_auto_off_with_a_reason(
    manifest: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _data(manifest, augment=True)
    data.setup("fit")
    identity = train_data_identity(data.train_dataloader().dataset)
    assert identity is not None and identity["random"]

    cache = FrozenFeatureCache("auto")
    with caplog.at_level(logging.INFO, logger="medft.model.features"):
        active = _prepare(cache, _probe().model, data=identity)
    assert not active and "augmented" in cache.reason
    assert "feature cache off" in caplog.text

    with pytest.raises(ConfigError, match=r"model\.feature_cache=on.*augmented"):
        _prepare(FrozenFeatureCache("on"), _probe().model, data=identity)


def test_deterministic_training_data_is_recognised(manifest: Path) -> None:
    data = _data(manifest)
    data.setup("fit")
    identity = train_data_identity(data.train_dataloader().dataset)
    assert identity is not None and not identity["random"]
    assert identity["decode"]["image_size"] == 32
    assert identity["rows"] == 24
    assert train_data_identity(object()) is None


# ------------------------------------------------------------------ decisions


def _prepare(cache: FrozenFeatureCache, model: torch.nn.Module, **overrides) -> bool:
    kwargs = {
        "linear_probe": True,
        "backbone_frozen": True,
        "drop_rate": 0.0,
        "drop_path_rate": 0.0,
        "data": {"random": False, "decode": {"image_size": 32}},
        "identity": {"backbone": "test_resnet"},
    }
    return cache.prepare(model, **{**kwargs, **overrides})


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"linear_probe": False}, "linear_probe"),
        ({"backbone_frozen": False}, "freeze_gate=lr"),
        ({"drop_path_rate": 0.1}, "drop_path_rate"),
        ({"data": None}, "XrayDataset"),
    ],
)
def test_auto_stays_off_when_features_could_change(overrides: dict, reason: str) -> None:
    cache = FrozenFeatureCache("auto")
    assert not _prepare(cache, _probe().model, **overrides)
    assert reason in cache.reason


def test_auto_is_quiet_when_no_linear_probe_was_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="medft.model.features"):
        assert not _prepare(FrozenFeatureCache("auto"), _probe().model, linear_probe=False)
    assert caplog.text == ""
    with pytest.raises(ConfigError, match="linear_probe"):
        _prepare(FrozenFeatureCache("on"), _probe().model, linear_probe=False)


def test_on_trusts_data_it_cannot_inspect_and_off_never_caches() -> None:
    assert _prepare(FrozenFeatureCache("on"), _probe().model, data=None)
    off = FrozenFeatureCache("off")
    assert not _prepare(off, _probe().model)
    assert "off" in off.reason


def test_unknown_mode_names_the_config_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.feature_cache"):
        _probe(feature_cache="always")


def test_changed_weights_or_data_empty_the_cache() -> None:
    model = _probe().model.eval()
    cache = FrozenFeatureCache("auto")
    _prepare(cache, model)
    rows = torch.arange(4)
    cache.logits(model, rows, None, lambda: torch.randn(4, 3, 32, 32))
    assert len(cache.store) == 4

    _prepare(cache, model)  # nothing changed: kept
    assert len(cache.store) == 4
    model.get_classifier().weight.data.add_(1.0)  # the head trains: not part of the key
    _prepare(cache, model)
    assert len(cache.store) == 4

    _prepare(cache, model, data={"random": False, "decode": {"image_size": 64}})
    assert len(cache.store) == 0
    cache.logits(model, rows, None, lambda: torch.randn(4, 3, 32, 32))
    first_param = next(model.parameters())
    first_param.data.mul_(0.5)  # other frozen weights: stale
    _prepare(cache, model, data={"random": False, "decode": {"image_size": 64}})
    assert len(cache.store) == 0


def test_weights_digest_ignores_the_classifier_only() -> None:
    model = _probe().model
    before = weights_digest(model)
    model.get_classifier().bias.data.add_(1.0)
    assert weights_digest(model) == before
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.add_(0.1)  # running statistics shape the features too
            break
    assert weights_digest(model) != before


# ---------------------------------------------------------------- the head path


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet", "test_vit"])
def test_classifier_on_eval_features_reproduces_forward_head(backbone: str) -> None:
    torch.manual_seed(0)
    module = _probe(backbone=backbone, drop_rate=0.5, channels_last=False).train()
    module.schedule.apply(0)
    model = module.model
    size = model.pretrained_cfg["input_size"][-1] if backbone == "test_vit" else 32
    x = module.normalize(torch.rand(4, 1, size, size))
    cache = FrozenFeatureCache("auto")
    _prepare(cache, model, drop_rate=0.5)
    with torch.no_grad():
        unpooled = model.forward_features(x)
        features = eval_pre_logits(model, unpooled)
        state = torch.get_rng_state()
        expected = model.forward_head(unpooled)
        torch.set_rng_state(state)
        got = cache.logits(model, torch.arange(4), None, lambda: x)
    assert cache.active, cache.reason
    torch.testing.assert_close(got, expected)
    assert features.shape == (4, model.get_classifier().in_features)
    assert model.training  # modes restored after the eval-mode feature pass


def test_a_head_that_is_not_dropout_plus_classifier_turns_the_cache_off() -> None:
    model = _probe(drop_rate=0.0).model.eval()
    original = model.forward_head

    def shifted(x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        out = original(x, pre_logits=pre_logits)
        return out if pre_logits else out + 1.0

    model.forward_head = shifted
    cache = FrozenFeatureCache("auto")
    assert _prepare(cache, model)
    x = torch.randn(2, 3, 32, 32)
    logits = cache.logits(model, torch.arange(2), None, lambda: x)
    assert not cache.active and "head" in cache.reason
    torch.testing.assert_close(logits, shifted(model.forward_features(x)))
    assert len(cache.store) == 0


# ------------------------------------------------------------------- the store


def test_store_marks_missing_rows_and_rows_of_another_manifest() -> None:
    store = FeatureStore()
    rows = torch.tensor([3, 2000])
    features = torch.randn(2, 5)
    store.put(rows, ["a.dcm", "b.dcm"], features)
    got, missing = store.get(rows, ["a.dcm", "b.dcm"])
    torch.testing.assert_close(got, features)
    assert not missing.any()

    got, missing = store.get(torch.tensor([3, 4, 9000]), None)
    assert missing.tolist() == [False, True, True]
    torch.testing.assert_close(got[0], features[0])
    assert store.get(torch.tensor([3]), ["other.dcm"])[1].tolist() == [True]
    assert store.get(torch.tensor([4]), None)[0] is None
    assert store.nbytes == 2001 * 5 * 4  # one float32 slot per row up to the highest
    store.clear()
    assert len(store) == 0 and store.get(rows, None)[0] is None


def test_half_precision_store_halves_the_memory() -> None:
    store = FeatureStore(torch.float16)
    store.rows_hint = 10
    features = torch.randn(3, 8)
    store.put(torch.arange(3), None, features)
    assert store.nbytes == 10 * 8 * 2
    got, _ = store.get(torch.arange(3), None)
    torch.testing.assert_close(got.float(), features, atol=1e-2, rtol=1e-2)


def test_a_partly_cached_batch_runs_the_backbone_on_the_new_rows_only() -> None:
    module = _probe(drop_rate=0.0)
    model = module.model.eval()
    calls = []
    original = model.forward_features
    model.forward_features = lambda x: calls.append(len(x)) or original(x)
    cache = FrozenFeatureCache("auto")
    _prepare(cache, model)
    images = torch.randn(4, 3, 32, 32)
    cache.logits(model, torch.tensor([0, 1, 2, 3]), None, lambda: images[:4])
    more = torch.cat([images[2:], torch.randn(2, 3, 32, 32)])
    logits = cache.logits(model, torch.tensor([2, 3, 4, 5]), None, lambda: more)
    assert calls == [4, 2]
    with torch.no_grad():
        expected = model.forward_head(original(more))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert len(cache.store) == 6
