"""The LightningModule end to end: fit, checkpoints, safe loading, losses and gating."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch

from medft.data.cache import CACHE_MODES
from medft.errors import CheckpointError, ConfigError
from medft.model.checkpoint import load_classifier, read_checkpoint
from medft.model.module import FREEZE_MODES, XrayClassifier


def _tiny(**kwargs) -> XrayClassifier:
    defaults = {"backbone": "test_efficientnet", "pretrained": False, "labels": ["a", "b"]}
    return XrayClassifier(**{**defaults, **kwargs})


def test_forward_takes_one_channel_display_images() -> None:
    model = _tiny().eval()
    logits = model(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 2)


def test_normalisation_uses_the_backbones_pretrained_cfg() -> None:
    model = _tiny()
    mean = model.model.pretrained_cfg["mean"]
    assert torch.allclose(model.input_mean.flatten(), torch.tensor(mean, dtype=torch.float32))
    x = torch.full((1, 1, 8, 8), 0.5)
    normed = model.normalize(x)
    expected = (0.5 - mean[0]) / model.model.pretrained_cfg["std"][0]
    assert normed[0, 0, 0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_bce_masks_unknown_labels() -> None:
    model = _tiny()
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    targets = torch.tensor([[1.0, float("nan")], [0.0, float("nan")]])
    loss = model.loss_fn(logits, targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], targets[:, 0])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # Changing the logit of an unknown label changes nothing.
    logits2 = logits.clone()
    logits2[:, 1] = -10.0
    assert model.loss_fn(logits2, targets).item() == pytest.approx(loss.item())


def test_focal_loss_downweights_easy_examples() -> None:
    bce, focal = _tiny(), _tiny(loss="focal")
    easy = torch.tensor([[6.0, -6.0]])
    targets = torch.tensor([[1.0, 0.0]])
    assert focal.loss_fn(easy, targets) < 0.01 * bce.loss_fn(easy, targets)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"freeze": "sometimes"}, "model.freeze"),
        ({"loss": "hinge"}, "model.loss"),
        ({"task": "multiclass", "loss": "bce"}, "model.loss"),
        ({"in_chans": 2}, "model.in_chans"),
        ({"pos_weight": [1.0]}, "model.pos_weight"),
    ],
)
def test_bad_config_names_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        _tiny(**kwargs)


@pytest.mark.parametrize(
    ("option", "allowed"), [("--model.freeze", FREEZE_MODES), ("--data.cache", CACHE_MODES)]
)
def test_cli_refuses_an_unknown_choice_while_parsing(
    option: str, allowed: tuple[str, ...], tmp_path: Path, fit_args, capsys
) -> None:
    """The choice types are Literals, so jsonargparse refuses a typo before any work.

    The manifest does not exist: a refusal that came from medft's own check would only
    happen after the data module had tried to load it.
    """
    from medft.lightning_cli import run_lightning

    args = fit_args(tmp_path / "missing.csv", tmp_path / "run", option, "bogus")
    with pytest.raises(ConfigError) as refused:  # medft prints it as one line, exit 2
        run_lightning("fit", args, run=False)
    message = str(refused.value)
    assert f'"{option.removeprefix("--")}"' in message and "bogus" in message
    assert all(repr(value) in message for value in allowed), message[-500:]
    assert not (tmp_path / "run").exists()


def test_cli_help_lists_the_choices(capsys) -> None:
    from medft.lightning_cli import run_lightning

    with pytest.raises(SystemExit) as stopped:
        run_lightning("fit", ["--help"], run=False)
    assert stopped.value.code == 0
    shown = capsys.readouterr().out
    assert f"--model.freeze {{{','.join(FREEZE_MODES)}}}" in shown
    assert f"--data.cache {{{','.join(CACHE_MODES)}}}" in shown


def test_frozen_backbone_runs_without_autograd() -> None:
    model = _tiny(freeze="linear_probe").train()
    model.schedule.apply(0)
    logits = model.model.forward_head(
        model.model.forward_features(model.normalize(torch.rand(2, 1, 32, 32)))
    )
    logits.sum().backward()
    grads = {n: p.grad is not None for n, p in model.model.named_parameters()}
    classifier = {n for n, _ in model.model.get_classifier().named_parameters()}
    assert all(grads[f"classifier.{n}"] for n in classifier)
    assert not any(v for n, v in grads.items() if not n.startswith("classifier."))


def test_fit_writes_a_checkpoint_that_loads_safely(tiny_checkpoint: Path) -> None:
    loaded = load_classifier(tiny_checkpoint)
    assert loaded.labels == ["abnormal"]
    assert loaded.image_size == 64 and loaded.fit_mode == "pad"
    threshold = loaded.thresholds["abnormal"]
    assert 0.0 <= threshold <= 1.0 + 1e-6
    assert loaded.meta["operating_point_method"] == "youden"
    probs = loaded.model.probabilities(loaded.model(torch.rand(3, 1, 64, 64)))
    assert probs.shape == (3, 1) and torch.all((probs >= 0) & (probs <= 1))
    # Everything in the file is plain data: weights_only loading succeeded above, and the
    # split summary holds counts, never patient identifiers.
    summary = loaded.meta.get("data_summary", {})
    assert "SYN" not in repr(summary)


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(_Exploit.marker),))


def test_crafted_pickle_checkpoint_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as fh:
        pickle.dump({"state_dict": {}, "payload": _Exploit()}, fh)
    with pytest.raises(CheckpointError, match="refused"):
        load_classifier(evil)
    assert not marker.exists()


def test_not_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk\.ckpt"):
        read_checkpoint(junk)
    with pytest.raises(CheckpointError, match="no such"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_training_improves_on_chance_and_logs_per_epoch(tiny_checkpoint: Path) -> None:
    metrics_csv = next(tiny_checkpoint.parent.parent.glob("logs/*/metrics.csv"))
    text = metrics_csv.read_text()
    assert "train/trainable_params" in text and "val/auroc" in text
    assert "lr/" in text
    loaded = load_classifier(tiny_checkpoint)
    assert not math.isnan(loaded.meta["val_auroc"]["abnormal"])


def test_new_head_starts_near_zero_logits() -> None:
    """A fresh one-finding head must not start at ±20 logits (timm's EfficientNet init does:
    uniform(±1/sqrt(num_classes)) weights over 1280 pretrained features)."""
    torch.manual_seed(0)
    model = XrayClassifier(backbone="test_efficientnet", pretrained=False, labels=["a"]).eval()
    head = model.model.get_classifier()
    assert head.weight.std().item() < 0.05 and head.bias.abs().max().item() == 0.0
    features = torch.ones(4, head.in_features) * 5.0  # pretrained-like magnitudes
    assert head(features).abs().max().item() < 2.0


def test_compile_wraps_the_network_but_checkpoints_keep_plain_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled_models: list[torch.nn.Module] = []
    real_compile = torch.compile

    def eager_compile(model: torch.nn.Module):  # dynamo without inductor: seconds, not minutes
        compiled_models.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    plain, compiled = _tiny(), _tiny(compile=True)
    compiled.load_state_dict(plain.state_dict())
    assert plain.network() is plain.model and not compiled_models
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval()(images), plain.eval()(images))
    assert compiled_models == [compiled.model]  # compiled once, the module's own network
    assert compiled.network() is not compiled.model
    assert list(compiled.state_dict()) == list(plain.state_dict())  # no "_orig_mod." keys

    path = tmp_path / "compiled.ckpt"
    torch.save({"state_dict": compiled.state_dict(), "hyper_parameters": dict(compiled.hparams)},
               path)  # fmt: skip
    loaded = load_classifier(path).model
    assert loaded.hparams["compile"] is False and loaded.network() is loaded.model


@pytest.mark.slow
def test_fit_with_inductor_compile_trains_and_saves_plain_weights(
    tiny_dataset: Path, tmp_path: Path, fit_args
) -> None:
    from medft.lightning_cli import last_checkpoint_path, run_lightning

    extra = ["--model.compile", "true", "--model.freeze", "full", "--trainer.max_epochs", "1",
             "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]  # fmt: skip
    args = fit_args(tiny_dataset, tmp_path / "run", *extra)
    cli = run_lightning("fit", args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.model.network() is not cli.model.model  # the compiled wrapper was used
    assert cli.trainer.global_step == 2
    checkpoint = read_checkpoint(last_checkpoint_path(cli.trainer))
    assert not [key for key in checkpoint["state_dict"] if "_orig_mod" in key]
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
