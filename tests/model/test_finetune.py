"""Freezing schedules: exactly the intended weights and BN statistics move, epoch by epoch."""

from __future__ import annotations

import io
import itertools
import math
from dataclasses import dataclass

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from medft.errors import ConfigError
from medft.model.finetune import MODES, FinetuneSchedule, warmup_cosine

TINY = {
    "test_resnet": {},
    "test_efficientnet": {},
    "test_vit": {"img_size": 32},
    "test_convnext": {},
}
STEPS_PER_EPOCH = 3
EPOCHS = 4
BASE_LR = 1e-2


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=3, **TINY[name])


def _batch(epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * epoch + step)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 3, (4,), generator=g)


@dataclass
class Run:
    """A model trained the way the LightningModule will: AdamW + LambdaLR, schedule per epoch."""

    model: nn.Module
    schedule: FinetuneSchedule
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR

    @classmethod
    def start(cls, name: str, seed: int = 0, epochs: int = EPOCHS, **kwargs) -> Run:
        model = _model(name, seed)
        schedule = FinetuneSchedule(model, **kwargs)
        optimizer = torch.optim.AdamW(schedule.param_groups(BASE_LR, weight_decay=0.05))
        lambdas = schedule.lr_lambdas(epochs * STEPS_PER_EPOCH, 2, STEPS_PER_EPOCH)
        return cls(model, schedule, optimizer, LambdaLR(optimizer, lambdas))

    def epoch(self, epoch: int) -> list[list[float]]:
        """Train one epoch; returns the LR of every group at every step."""
        self.model.train()
        self.schedule.apply(epoch)
        lrs = []
        for step in range(STEPS_PER_EPOCH):
            x, y = _batch(epoch, step)
            lrs.append([g["lr"] for g in self.optimizer.param_groups])
            loss = F.cross_entropy(self.model(x), y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
        return lrs

    def checkpoint(self) -> dict:
        """Everything a Lightning checkpoint holds, through torch.save / weights_only load."""
        buffer = io.BytesIO()
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "schedule": self.schedule.state_dict(),
            },
            buffer,
        )
        buffer.seek(0)
        return torch.load(buffer, weights_only=True)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


def _expected_trainable(mode: str, epoch: int, n: int, unfreeze_epoch: int = 1, every: int = 1):
    """Stage indices that should train, written out independently of the implementation."""
    head = [n - 1]
    everything = list(range(n))
    if mode == "full":
        return everything
    if mode == "linear_probe":
        return head
    if epoch < unfreeze_epoch:
        return head
    if mode == "freeze_unfreeze":
        return everything
    extra = 1 + (epoch - unfreeze_epoch) // every  # gradual: one more stage per step
    return list(range(max(0, n - 1 - extra), n))


def _bn_owner(schedule: FinetuneSchedule) -> dict[str, int]:
    """BatchNorm module name -> stage index (via the BN's own weight)."""
    stage_of = {name: i for i, s in enumerate(schedule.stages) for name, _ in s.params}
    return {
        name: stage_of[f"{name}.weight"]
        for name, module in schedule.model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    }


# ---------------------------------------------------------------- which stages train


@pytest.mark.parametrize(("unfreeze", "every"), [(1, 1), (2, 2), (1, 2), (3, 2), (0, 3)])
@pytest.mark.parametrize("mode", MODES)
def test_schedule_table(mode: str, unfreeze: int, every: int) -> None:
    schedule = FinetuneSchedule(
        _model("test_resnet"), mode=mode, unfreeze_epoch=unfreeze, gradual_every=every
    )
    n = schedule.num_stages
    for epoch in range(20):
        expected = _expected_trainable(mode, epoch, n, unfreeze_epoch=unfreeze, every=every)
        assert schedule.trainable_stages(epoch) == expected, epoch
        assert schedule.frozen_prefix(epoch) == n - len(expected)
        assert schedule.head_only(epoch) == (expected == [n - 1])
        for stage in range(n):
            assert schedule.is_trainable(stage, epoch) == (stage in expected)


def test_gradual_unfreezes_one_stage_per_step_from_the_top() -> None:
    schedule = FinetuneSchedule(_model("test_resnet"), mode="gradual", unfreeze_epoch=1)
    names = [[schedule.stage_names[i] for i in schedule.trainable_stages(e)] for e in range(7)]
    assert names[:3] == [["head"], ["stage4", "head"], ["stage3", "stage4", "head"]]
    assert names[6] == names[5] == schedule.stage_names  # everything, then it stays so


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("mode", MODES)
def test_exactly_the_scheduled_weights_and_bn_statistics_change(name: str, mode: str) -> None:
    run = Run.start(name, mode=mode, unfreeze_epoch=1, gradual_every=1)
    n = run.schedule.num_stages
    bn_owner = _bn_owner(run.schedule)
    for epoch in range(EPOCHS):
        before = _snapshot(run.model)
        run.epoch(epoch)
        changed = _changed(before, run.model)
        trainable = _expected_trainable(mode, epoch, n)
        expected_params = {p for i in trainable for p, _ in run.schedule.stages[i].params}
        assert {k for k in changed if k in dict(run.model.named_parameters())} == expected_params
        for bn, stage in bn_owner.items():  # smp's test: frozen BN statistics stay put
            stats = {f"{bn}.running_mean", f"{bn}.running_var", f"{bn}.num_batches_tracked"}
            assert (stats <= changed) == (stage in trainable), (epoch, bn)
            assert (stats & changed) == (stats if stage in trainable else set()), (epoch, bn)
        frozen = {p for p, param in run.model.named_parameters() if not param.requires_grad}
        assert frozen == {k for k in dict(run.model.named_parameters()) if k not in expected_params}


def test_test_models_have_batchnorm_to_check() -> None:
    assert len(_bn_owner(FinetuneSchedule(_model("test_resnet")))) > 5
    assert len(_bn_owner(FinetuneSchedule(_model("test_efficientnet")))) > 5


def test_norm_layers_of_frozen_stages_return_to_eval_after_train() -> None:
    model = _model("test_efficientnet")
    schedule = FinetuneSchedule(model, mode="gradual")
    schedule.apply(1)  # stem..stage4 frozen, stage5 + head train
    owner = _bn_owner(schedule)
    model.train()  # what Lightning does after every validation loop
    assert all(m.training for m in model.modules())
    schedule.set_frozen_norm_eval()
    frozen = schedule.frozen_prefix(1)
    for name, stage in owner.items():
        assert model.get_submodule(name).training == (stage >= frozen), name
    model.eval()
    schedule.set_frozen_norm_eval()
    assert not any(m.training for m in model.modules())


def test_set_frozen_norm_eval_needs_an_epoch() -> None:
    with pytest.raises(RuntimeError, match="apply"):
        FinetuneSchedule(_model("test_resnet")).set_frozen_norm_eval()


# ---------------------------------------------------------------- gates


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_lr_gate_keeps_requires_grad_and_freezes_by_learning_rate(name: str) -> None:
    run = Run.start(name, mode="freeze_unfreeze", unfreeze_epoch=2, gate="lr")
    n = run.schedule.num_stages
    head_params = {p for p, _ in run.schedule.stages[-1].params}
    for epoch in range(EPOCHS):
        before = _snapshot(run.model)
        lrs = run.epoch(epoch)
        assert all(p.requires_grad for p in run.model.parameters())
        names = dict(run.model.named_parameters())
        changed = _changed(before, run.model) & set(names)
        if epoch < 2:
            assert changed == head_params
            # frozen weights got gradients (DDP sees them used) but an LR of exactly 0
            assert all(names[p].grad is not None for p in names)
            for group, lr_row in zip(
                run.optimizer.param_groups, zip(*lrs, strict=True), strict=True
            ):
                assert (max(lr_row) == 0.0) == (group["stage"] != "head")
            for bn, stage in _bn_owner(run.schedule).items():
                assert torch.equal(
                    before[f"{bn}.running_mean"], run.model.state_dict()[f"{bn}.running_mean"]
                ) == (stage < n - 1)
        else:
            assert changed == set(names)
    assert not run.schedule.backbone_frozen(0) and run.schedule.head_only(0)


def test_requires_grad_gate_also_zeroes_the_learning_rate_of_frozen_groups() -> None:
    run = Run.start("test_resnet", mode="linear_probe")
    lrs = run.epoch(0)
    for group, row in zip(run.optimizer.param_groups, zip(*lrs, strict=True), strict=True):
        assert (max(row) > 0) == (group["stage"] == "head")
    assert run.schedule.backbone_frozen(0)


def test_adamw_skips_parameters_without_gradient_despite_weight_decay() -> None:
    """Why requires_grad=False alone already protects frozen weights from AdamW's decay."""
    frozen = nn.Parameter(torch.ones(3), requires_grad=False)
    zero_grad = nn.Parameter(torch.ones(3))
    zero_grad.grad = torch.zeros(3)
    optimizer = torch.optim.AdamW([frozen, zero_grad], lr=1.0, weight_decay=0.5)
    optimizer.step()
    assert torch.equal(frozen, torch.ones(3))  # grad None: skipped entirely
    assert not torch.equal(zero_grad.detach(), torch.ones(3))  # decayed although grad is zero


# ---------------------------------------------------------------- learning rates


def test_discriminative_learning_rates_per_group() -> None:
    model = _model("test_vit")
    schedule = FinetuneSchedule(model, mode="full", lr_decay=0.5)
    groups = schedule.param_groups(base_lr=1.0, weight_decay=0.1)
    n = schedule.num_stages
    assert [g["name"] for g in groups] == schedule.group_names
    seen = []
    for group in groups:
        index = schedule.stage_names.index(group["stage"])
        assert group["lr_scale"] == group["lr"] == 0.5 ** (n - 1 - index)
        for p in group["params"]:
            seen.append(id(p))
        if group["name"].endswith(".no_decay"):
            assert group["weight_decay"] == 0.0
        else:
            assert group["weight_decay"] == 0.1
            assert all(p.ndim >= 2 for p in group["params"])
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each once
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == 1.0 and by_name["stem"]["lr"] == 0.5 ** (n - 1)
    tokens = {id(model.cls_token), id(model.pos_embed)}
    assert tokens <= {id(p) for p in by_name["stem.no_decay"]["params"]}


def test_discriminative_ratios_hold_through_the_scheduler() -> None:
    run = Run.start("test_convnext", mode="freeze_unfreeze", lr_decay=0.8)
    lrs = [row for e in range(EPOCHS) for row in run.epoch(e)]
    scales = [g["lr_scale"] for g in run.optimizer.param_groups]
    for step, row in enumerate(lrs):
        head = warmup_cosine(step, EPOCHS * STEPS_PER_EPOCH, 2) * BASE_LR
        for lr, scale, group in zip(row, scales, run.optimizer.param_groups, strict=True):
            gate = 1.0 if group["stage"] == "head" or step >= STEPS_PER_EPOCH else 0.0
            assert lr == pytest.approx(head * scale * gate, rel=1e-12, abs=1e-15)


def test_learning_rate_is_continuous_across_an_unfreeze() -> None:
    spe, epochs, warmup, unfreeze = 4, 6, 3, 2
    total = spe * epochs
    staged = FinetuneSchedule(
        _model("test_resnet"), mode="freeze_unfreeze", unfreeze_epoch=unfreeze
    )
    full = FinetuneSchedule(_model("test_resnet"), mode="full")
    staged_lambdas = staged.lr_lambdas(total, warmup, spe)
    full_lambdas = full.lr_lambdas(total, warmup, spe)
    head = staged.group_names.index("head")
    stem = staged.group_names.index("stem")
    for step in range(total):
        curve = warmup_cosine(step, total, warmup)
        assert staged_lambdas[head](step) == full_lambdas[head](step) == curve  # no restart
        expected_stem = 0.0 if step < unfreeze * spe else curve
        assert staged_lambdas[stem](step) == expected_stem
    first = unfreeze * spe
    assert staged_lambdas[stem](first) == staged_lambdas[head](first) < 1.0  # joins mid-curve
    assert staged_lambdas[stem](first) == pytest.approx(staged_lambdas[head](first - 1), rel=0.2)


def test_warmup_cosine_shape() -> None:
    assert warmup_cosine(0, 10, 2) == 0.5 and warmup_cosine(1, 10, 2) == 1.0
    assert warmup_cosine(2, 10, 2) == 1.0
    assert warmup_cosine(6, 10, 2) == pytest.approx(0.5)
    assert warmup_cosine(10, 10, 2) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(50, 10, 2, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(0, 10, 0) == 1.0
    values = [warmup_cosine(s, 100, 10) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert not math.isnan(warmup_cosine(5, 5, 5))


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("test_resnet", {"mode": "gradual", "lr_decay": 0.8}),
        ("test_efficientnet", {"mode": "freeze_unfreeze", "unfreeze_epoch": 2}),
        ("test_vit", {"mode": "gradual", "gate": "lr", "lr_decay": 0.7}),
    ],
)
def test_resume_mid_schedule_continues_bit_for_bit(name: str, kwargs: dict) -> None:
    stop = 2
    straight = Run.start(name, **kwargs)
    for epoch in range(EPOCHS):
        straight.epoch(epoch)

    first = Run.start(name, **kwargs)
    for epoch in range(stop):
        first.epoch(epoch)
    saved = first.checkpoint()

    resumed = Run.start(name, seed=123, **kwargs)  # other init: everything must come from `saved`
    resumed.model.load_state_dict(saved["model"])
    resumed.schedule.load_state_dict(saved["schedule"])
    resumed.optimizer.load_state_dict(saved["optimizer"])  # Lightning's order: optimizer, then
    resumed.scheduler.load_state_dict(saved["scheduler"])  # scheduler, both already built
    assert resumed.schedule.describe(stop - 1) == first.schedule.describe(stop - 1)
    for epoch in range(stop, EPOCHS):
        resumed.epoch(epoch)

    final, expected = resumed.model.state_dict(), straight.model.state_dict()
    assert [k for k in expected if not torch.equal(expected[k], final[k])] == []
    assert resumed.scheduler.get_last_lr() == straight.scheduler.get_last_lr()


def test_schedule_state_restores_the_frozen_state() -> None:
    trained = FinetuneSchedule(_model("test_resnet"), mode="gradual")
    trained.apply(2)
    fresh_model = _model("test_resnet")
    fresh = FinetuneSchedule(fresh_model, mode="gradual")
    fresh.load_state_dict(trained.state_dict())
    assert [p.requires_grad for p in fresh_model.parameters()] == [
        p.requires_grad for p in trained.model.parameters()
    ]
    assert sum(not p.requires_grad for p in fresh_model.parameters()) > 0


@pytest.mark.parametrize(
    ("kwargs", "model", "match"),
    [
        ({"mode": "full"}, "test_resnet", "mode"),
        ({"mode": "gradual", "lr_decay": 0.5}, "test_resnet", "lr_decay"),
        ({"mode": "gradual", "gate": "lr"}, "test_resnet", "gate"),
        ({"mode": "gradual"}, "test_efficientnet", "stages"),
    ],
)
def test_resume_with_another_schedule_is_refused(kwargs: dict, model: str, match: str) -> None:
    saved = FinetuneSchedule(_model("test_resnet"), mode="gradual").state_dict()
    with pytest.raises(ConfigError, match=rf"cannot resume.*{match}"):
        FinetuneSchedule(_model(model), **kwargs).load_state_dict(saved)


# ---------------------------------------------------------------- reporting and validation


def test_describe_counts_trainable_parameters() -> None:
    model = _model("test_resnet")
    schedule = FinetuneSchedule(model, mode="gradual")
    total = sum(p.numel() for p in model.parameters())
    head = model.fc.weight.numel() + model.fc.bias.numel()
    summary = schedule.describe(0)
    assert summary["total_params"] == total and summary["trainable_params"] == head
    assert summary["stages"]["head"] and not summary["stages"]["stage4"]
    assert summary["groups"]["head"] and summary["groups"]["head.no_decay"]
    assert not summary["groups"]["stem"]
    assert schedule.describe(99)["trainable_params"] == total
    assert FinetuneSchedule(model, mode="full").describe(0)["frozen_stages"] == 0


def test_parameters_frozen_before_the_schedule_stay_frozen() -> None:
    model = _model("test_vit")
    model.pos_embed.requires_grad_(False)
    schedule = FinetuneSchedule(model, mode="full")
    schedule.apply(0)
    assert not model.pos_embed.requires_grad
    grouped = {id(p) for g in schedule.param_groups(1e-3, 0.0) for p in g["params"]}
    assert id(model.pos_embed) not in grouped and id(model.cls_token) in grouped
    assert schedule.describe(0)["trainable_params"] == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "partial"}, "freeze: 'partial' is not one of full, linear_probe"),
        ({"gate": "grad"}, "freeze_gate"),
        ({"unfreeze_epoch": -1}, "unfreeze_epoch"),
        ({"gradual_every": 0}, "gradual_every"),
        ({"lr_decay": 0.0}, "lr_decay"),
        ({"lr_decay": 1.5}, "lr_decay"),
    ],
)
def test_invalid_schedule_settings_name_the_key(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FinetuneSchedule(_model("test_resnet"), **kwargs)


def test_invalid_optimizer_settings() -> None:
    schedule = FinetuneSchedule(_model("test_resnet"))
    with pytest.raises(ConfigError):
        schedule.param_groups(0.0, 0.01)
    with pytest.raises(ConfigError):
        schedule.lr_lambdas(total_steps=10, warmup_steps=20, steps_per_epoch=2)
    with pytest.raises(ConfigError):
        schedule.lr_lambdas(total_steps=10, warmup_steps=2, steps_per_epoch=0)
    with pytest.raises(ValueError):
        schedule.trainable_stages(-1)
