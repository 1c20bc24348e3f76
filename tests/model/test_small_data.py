"""Small-data tools: weight EMA, L2-SP and the forgetting meter, on seconds-long fits."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from medft.errors import ConfigError
from medft.model.averaging import CHECKPOINT_KEY, WeightEMA, ema_decay
from medft.model.checkpoint import load_classifier, read_checkpoint
from medft.model.l2sp import L2SP


def _fit(fit_args, manifest: Path, run_dir: Path, *extra: str):
    from medft.lightning_cli import run_lightning

    cli = run_lightning("fit", fit_args(manifest, run_dir, *extra), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli


def _callback(trainer, kind):
    return next(c for c in trainer.callbacks if isinstance(c, kind))


def _net_state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


# ----------------------------------------------------------------------------- EMA


def test_ema_decay_warms_up_then_caps() -> None:
    assert ema_decay(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay(0.9, 1000) == 0.9
    assert ema_decay(0.9, 1, warmup=False) == 0.9
    with pytest.raises(ConfigError, match=r"ema\.decay"):
        WeightEMA(decay=1.0)


def test_ema_checkpoint_holds_the_average_and_evaluates_it(
    tiny_dataset: Path, fit_args, tmp_path: Path
) -> None:
    cli = _fit(
        fit_args,
        tiny_dataset,
        tmp_path / "run",
        "--ema.enabled",
        "true",
        "--ema.decay",
        "0.5",
        "--checkpoint.save_top_k",
        "0",
    )
    ema = _callback(cli.trainer, WeightEMA)
    assert ema.updates == cli.trainer.global_step > 0
    ckpt_path = Path(cli.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(ckpt_path)
    raw = checkpoint[CHECKPOINT_KEY]["raw"]
    averaged = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items()}
    # The average differs from the raw training weights somewhere that trained...
    moved = [k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], averaged[k])]
    assert moved
    # ...and after fit the in-memory model holds the average too.
    for key, value in cli.model.model.state_dict().items():
        assert torch.equal(value, averaged[key]), key
    assert checkpoint["medft"]["averaging"]["method"] == "ema"
    # The free-space check counts the second copy of the weights.
    from jsonargparse import Namespace

    from medft.lightning_cli import _checkpoint_bytes

    model = Namespace(backbone="test_efficientnet", labels=["abnormal"])
    plain = _checkpoint_bytes(Namespace(model=model))
    with_ema = _checkpoint_bytes(Namespace(model=model, ema=Namespace(enabled=True)))
    assert with_ema > plain
    assert 0.75 * ckpt_path.stat().st_size <= with_ema <= 1.25 * ckpt_path.stat().st_size

    # What the checkpoint evaluates is the averaged model: the validation loss it logged in
    # the last epoch is the loss of the loaded checkpoint on the validation part.
    logged = float(cli.trainer.callback_metrics["val/loss"])
    model = load_classifier(ckpt_path).model.eval()
    cli.datamodule.setup("validate")
    losses, weights = [], []
    with torch.no_grad():
        for batch in cli.datamodule.val_dataloader():
            logits = model(batch["image"])
            losses.append(model.loss_fn(logits, batch["label"]) * len(logits))
            weights.append(len(logits))
    assert float(sum(losses) / sum(weights)) == pytest.approx(logged, rel=1e-4)
    # The raw weights give other outputs.
    batch = next(iter(cli.datamodule.val_dataloader()))
    with torch.no_grad():
        averaged_logits = model(batch["image"])
        model.model.load_state_dict({**model.model.state_dict(), **raw})
        raw_logits = model(batch["image"])
    assert not torch.allclose(averaged_logits, raw_logits, atol=1e-6)


def test_validating_an_ema_checkpoint_uses_the_average(
    tiny_dataset: Path, fit_args, tmp_path: Path
) -> None:
    from medft.lightning_cli import run_lightning

    extra = ("--ema.enabled", "true", "--ema.decay", "0.5", "--trainer.max_epochs", "1")
    cli = _fit(fit_args, tiny_dataset, tmp_path / "run", *extra)
    ckpt = Path(cli.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    averaged = read_checkpoint(ckpt)["state_dict"]
    args = fit_args(tiny_dataset, tmp_path / "val", *extra)
    validated = run_lightning("validate", [*args, "--ckpt_path", str(ckpt)])
    for key, value in validated.model.model.state_dict().items():
        assert torch.equal(value, averaged["model." + key]), key


def test_ema_of_a_frozen_stage_is_its_weights(tiny_dataset: Path, fit_args, tmp_path: Path) -> None:
    cli = _fit(
        fit_args,
        tiny_dataset,
        tmp_path / "run",
        "--ema.enabled",
        "true",
        "--ema.decay",
        "0.5",
        "--model.freeze",
        "linear_probe",
    )
    checkpoint = read_checkpoint(Path(cli.trainer.default_root_dir) / "checkpoints" / "last.ckpt")
    raw = checkpoint[CHECKPOINT_KEY]["raw"]
    state = checkpoint["state_dict"]
    head = {n for n, _ in cli.model.schedule.stages[-1].params}
    for name, value in raw.items():
        if name in head:
            continue
        assert torch.equal(state["model." + name], value), name
    assert any(not torch.equal(state["model." + n], raw[n]) for n in head)


class _StopAfterEpoch(L.Callback):
    """Interrupt a fit after its first epoch (as a kill would, but after the checkpoint)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.should_stop = True


def test_ema_resume_continues_the_average(tiny_dataset: Path, fit_args, tmp_path: Path) -> None:
    from medft.lightning_cli import run_lightning

    extra = ("--ema.enabled", "true", "--ema.decay", "0.5")
    straight = _fit(fit_args, tiny_dataset, tmp_path / "a", *extra)
    first = run_lightning("fit", fit_args(tiny_dataset, tmp_path / "b", *extra), run=False)
    first.trainer.callbacks.append(_StopAfterEpoch())
    first.trainer.fit(first.model, datamodule=first.datamodule)
    assert first.trainer.current_epoch == 1 < straight.trainer.current_epoch
    last = Path(first.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    cli = run_lightning("fit", fit_args(tiny_dataset, tmp_path / "b", *extra), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(last))
    assert (
        _callback(cli.trainer, WeightEMA).updates == _callback(straight.trainer, WeightEMA).updates
    )
    a, b = _net_state(straight.model), _net_state(cli.model)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# --------------------------------------------------------------------------- L2-SP


def test_l2sp_at_zero_is_bit_identical(tiny_dataset: Path, fit_args, tmp_path: Path) -> None:
    plain = _fit(fit_args, tiny_dataset, tmp_path / "a", "--trainer.max_epochs", "1")
    zero = _fit(
        fit_args, tiny_dataset, tmp_path / "b", "--trainer.max_epochs", "1", "--l2sp.alpha", "0"
    )
    assert not _callback(zero.trainer, L2SP).groups
    a, b = _net_state(plain.model), _net_state(zero.model)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_l2sp_keeps_the_backbone_near_its_start(
    tiny_dataset: Path, fit_args, tmp_path: Path
) -> None:
    from medft.model.l2sp import l2sp_distance

    def distance(cli) -> float:
        groups = _callback(cli.trainer, L2SP).groups
        assert groups
        return sum(float(l2sp_distance([p.detach() for p in ps], rs)) for _, _, ps, rs in groups)

    common = ("--model.freeze", "full", "--model.lr", "0.01", "--trainer.max_epochs", "2")
    free = _fit(fit_args, tiny_dataset, tmp_path / "a", *common, "--l2sp.alpha", "1e-12")
    held = _fit(fit_args, tiny_dataset, tmp_path / "b", *common, "--l2sp.alpha", "1000")
    d_free, d_held = distance(free), distance(held)
    assert d_free > 0
    # A strong pull keeps the squared distance under a tenth of the unpenalised one.
    assert d_held < 0.1 * d_free
    # And no single backbone weight strays further than a few Adam steps of size lr.
    l2sp = _callback(held.trainer, L2SP)
    worst = max(
        float((p.detach() - r).abs().max())
        for _, _, ps, rs in l2sp.groups
        for p, r in zip(ps, rs, strict=True)
    )
    assert worst < 5 * 0.01


def test_l2sp_stage_alpha_names_unknown_stages() -> None:
    with pytest.raises(ConfigError, match="unknown stage"):
        L2SP(stage_alpha={"stage99": 1.0}).strengths(["stem", "stage1", "head"])
    strengths = L2SP(alpha=0.1, stage_alpha={"stem": 1.0}).strengths(["stem", "stage1", "head"])
    assert strengths == {"stem": 1.0, "stage1": 0.1, "head": 0.0}


# ---------------------------------------------------------------- forgetting meter


def test_forgetting_meter_is_zero_at_start_and_while_frozen_then_rises(
    tiny_dataset: Path, fit_args, tmp_path: Path
) -> None:
    import csv

    from medft.model.forgetting import CSV_NAME, PLOT_NAME, ForgettingMeter

    # freeze_unfreeze with unfreeze_epoch 1: epoch 0 trains the head, epoch 1 everything.
    cli = _fit(fit_args, tiny_dataset, tmp_path / "run", "--forgetting.cka", "true")
    meter = _callback(cli.trainer, ForgettingMeter)
    stages = cli.model.schedule.stage_names
    rows = {(r["epoch"], r["stage"]): r for r in meter.history}
    for stage in stages:
        assert rows[(-1, stage)]["distance"] == 0.0  # before the first step
        assert rows[(-1, stage)]["cka"] == pytest.approx(1.0, abs=1e-9) or stage == "head"
    for stage in stages[:-1]:
        assert rows[(0, stage)]["distance"] == 0.0  # frozen in epoch 0: exactly unchanged
        assert rows[(0, stage)]["cka"] == pytest.approx(1.0, abs=1e-9)
        assert rows[(1, stage)]["distance"] > 0.0  # trained in epoch 1
        assert rows[(1, stage)]["trains"] and not rows[(0, stage)]["trains"]
    assert rows[(0, "head")]["distance"] > 0.0
    assert any(rows[(1, s)]["cka"] < 1.0 - 1e-6 for s in stages[:-1])

    # Logged every epoch to the CSV logger, and written as a table and a plot.
    run = Path(cli.trainer.default_root_dir)
    metrics = next(run.glob("logs/version_*/metrics.csv")).read_text()
    assert f"forgetting/{stages[0]}" in metrics and f"cka/{stages[0]}" in metrics
    with (run / CSV_NAME).open() as fh:
        assert len(list(csv.DictReader(fh))) == 3 * len(stages)
    assert (run / PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_linear_cka_is_one_for_rotated_features_and_lower_for_others() -> None:
    from medft.model.forgetting import linear_cka

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 16, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=generator))
    assert linear_cka(x, 3.0 * x @ rotation) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, torch.randn(32, 16, generator=generator)) < 0.8


@pytest.mark.slow
def test_two_process_ddp_fit_with_ema_l2sp_and_meter(tmp_path: Path, fit_args) -> None:
    import os
    import subprocess
    import sys

    from medft.data.synth import synthesize
    from medft.model.forgetting import CSV_NAME

    data = synthesize(tmp_path / "data", 40, images_per_patient=1, size=64, seed=0, workers=1)
    args = fit_args(
        data.labels_csv,
        tmp_path / "run",
        *("--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"),
        *("--model.freeze_gate", "lr", "--model.unfreeze_epoch", "1"),
        *("--ema.enabled", "true", "--ema.decay", "0.5", "--l2sp.alpha", "0.1"),
        *("--forgetting.cka", "true"),
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "medft.cli", "fit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    raw = checkpoint[CHECKPOINT_KEY]["raw"]
    assert checkpoint[CHECKPOINT_KEY]["updates"] == checkpoint["global_step"] > 0
    assert any(not torch.equal(checkpoint["state_dict"]["model." + k], v) for k, v in raw.items())
    rows = (tmp_path / "run" / CSV_NAME).read_text().splitlines()
    assert len(rows) > 1 and rows[0].startswith("epoch,step,stage,distance")
