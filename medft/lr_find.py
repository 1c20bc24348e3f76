"""Learning-rate range tests for the head-only and the unfrozen phase (``medft lr-find``).

Lightning's learning-rate finder (``LearningRateFinder``, the callback behind
``Tuner.lr_find``) trains for ``steps`` optimizer steps while the learning rate grows
exponentially from ``min_lr`` to ``max_lr``, records the smoothed training loss, stops early
when the loss diverges and restores the model. medft debiases Lightning's smoothed loss
(:func:`debias`) and suggests the rate of the steepest fall per decade (:func:`suggest`).
It runs the test for the two phases of a fine-tuning recipe:

- ``head``: only the classifier trains on the frozen pretrained backbone (what
  ``freeze_unfreeze``/``gradual`` do for ``unfreeze_epoch`` epochs, and ``linear_probe``
  always). The suggestion is a value for ``model.lr``.
- ``unfrozen``: the whole network trains. The classifier is first trained alone for
  ``head_epochs`` epochs at the config's ``model.lr`` (as the recipe would), then the range
  test runs with every stage trainable. The rates are the head's; lower stages get
  ``lr · lr_decay^i`` during the test as in training (discriminative rates are kept).

The same ``model.lr`` is the head's peak rate in both phases of a ``freeze_unfreeze`` run, so
when the two suggestions differ the smaller one is the safe choice (see docs/finetuning.md).
Writes ``lr_find.json`` (rates, losses, suggestions) and ``lr_find_<phase>.png`` into ``out``.
"""

from __future__ import annotations

import io
import math
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from lightning.pytorch.callbacks import LearningRateFinder

from medft._io import write_bytes, write_json
from medft.errors import ConfigError
from medft.lightning_cli import run_lightning

__all__ = ["PHASES", "LrFindResult", "debias", "find_learning_rates", "format_results", "suggest"]

Phase = Literal["head", "unfrozen"]
"""A sweep: the head alone (backbone frozen), or the whole network after the head."""
PHASES: tuple[str, ...] = get_args(Phase)


class LrFindResult(dict):
    """One phase's range test: ``phase``, ``lrs``, ``losses``, ``suggestion``, ``plot``."""


class _DiscriminativeFinder(LearningRateFinder):
    """Lightning's finder, keeping each optimizer group's ``lr_scale`` during the sweep.

    Lightning gives every group the same swept rate; medft's groups carry their
    discriminative factor (``lr_scale``), applied here for the duration of each step.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._early_exit = True  # stop the fit after the test, as Tuner.lr_find does

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Scale each group's swept rate by its ``lr_scale``, then run Lightning's test."""
        for optimizer in trainer.strategy.optimizers:
            _scale_steps(optimizer)
        super().on_fit_start(trainer, pl_module)


def _scale_steps(optimizer: torch.optim.Optimizer) -> None:
    """Make ``optimizer.step`` use ``lr · lr_scale`` per group, restoring ``lr`` afterwards."""
    original = optimizer.step

    def step(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        swept = [group["lr"] for group in self.param_groups]
        for group in self.param_groups:
            group["lr"] = group["lr"] * float(group.get("lr_scale", 1.0))
        try:
            return original(*args, **kwargs)
        finally:
            for group, lr in zip(self.param_groups, swept, strict=True):
                group["lr"] = lr

    optimizer.step = types.MethodType(step, optimizer)  # type: ignore[method-assign]


SMOOTHING = 0.98
"""The loss smoothing of Lightning's range test (its ``_LRCallback.beta``)."""


def debias(smoothed: list[float], start_step: int = 0, beta: float = SMOOTHING) -> list[float]:
    """Undo an off-by-one in the bias correction of Lightning's smoothed loss.

    Lightning divides its running average after ``k + 1`` updates by ``1 − β^(k + 2)``
    (it reads ``global_step`` after the optimizer step has counted), not ``1 − β^(k + 1)``,
    so the first points read about half the loss and the curve climbs for ~1/(1 − β) = 50
    steps whatever the rate, which the steepest-descent suggestion mistakes for signal. This
    rescales each point to the usual correction. ``start_step`` is the trainer's step count
    before the sweep (0 for a fresh trainer). Non-finite points are kept as they are.
    """
    out = []
    for index, value in enumerate(smoothed):
        updates = index + 1 + start_step
        wrong = 1.0 - beta ** (updates + 1)
        right = 1.0 - beta**updates
        out.append(value * wrong / right if math.isfinite(value) else value)
    return out


def _range_test(
    cli: Any, *, min_lr: float, max_lr: float, steps: int, early_stop: float | None
) -> tuple[list[float], list[float], float | None]:
    finder = _DiscriminativeFinder(
        min_lr=min_lr,
        max_lr=max_lr,
        num_training_steps=steps,
        mode="exponential",
        early_stop_threshold=early_stop,
        update_attr=False,
    )
    cli.trainer.callbacks = [finder, *cli.trainer.callbacks]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    result = finder.optimal_lr
    if result is None:
        raise ConfigError("the learning-rate finder did not run (no training batches?)")
    lrs = [float(v) for v in result.results.get("lr", [])]
    losses = debias(
        [float(v) for v in result.results.get("loss", [])], start_step=cli.trainer.global_step
    )
    return lrs, losses, suggest(lrs, losses)


def suggest(
    lrs: Sequence[float], losses: Sequence[float], skip_begin: int = 10, skip_end: int = 1
) -> float | None:
    """The rate where the loss falls fastest against ``log(lr)`` (None with too few points).

    Lightning's own suggestion differentiates against the rate itself, whose tiny spacing at
    the low end lets noise there win; per decade of rate the steepest fall is where
    training speeds up most. The first ``skip_begin`` and last ``skip_end`` points are
    left out, as Lightning does.
    """
    points = [
        (math.log10(lr), loss)
        for lr, loss in list(zip(lrs, losses, strict=True))[skip_begin : len(lrs) - skip_end]
        if lr > 0 and math.isfinite(loss)
    ]
    if len(points) < 3:
        return None
    x = torch.tensor([p[0] for p in points], dtype=torch.float64)
    y = torch.tensor([p[1] for p in points], dtype=torch.float64)
    slope = torch.gradient(y, spacing=[x])[0]
    return float(10 ** x[int(torch.argmin(slope))])


def find_learning_rates(
    config: str | Path,
    out: str | Path,
    *,
    phases: Sequence[Phase] = PHASES,  # type: ignore[assignment]
    overrides: Sequence[str] = (),
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    steps: int = 100,
    head_epochs: int | None = None,
    early_stop: float | None = 4.0,
    say: Callable[[str], object] = print,
) -> list[LrFindResult]:
    """Run the range test for each phase of ``config`` (a ``medft fit`` YAML) into ``out``.

    Args:
        config: The fit config; ``overrides`` are LightningCLI arguments applied after it.
        out: Folder for ``lr_find.json`` and the plots (and the head-phase run's logs).
        phases: ``head`` and/or ``unfrozen``.
        min_lr: First rate of the sweep.
        max_lr: Last rate of the sweep.
        steps: Optimizer steps of each sweep (several epochs on a small data set).
        head_epochs: Epochs of head-only training before the ``unfrozen`` sweep
            (default: the config's ``model.unfreeze_epoch``, at least 1).
        early_stop: Stop a sweep when the smoothed loss exceeds this multiple of its best.
        say: Progress printer.

    Returns:
        One :class:`LrFindResult` per phase.

    Raises:
        ConfigError: An unknown phase or an impossible range.
    """
    unknown = [p for p in phases if p not in PHASES]
    if unknown or not phases:
        raise ConfigError(f"lr-find: phases must be among {', '.join(PHASES)}, got {unknown}")
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"lr-find: need 0 < min_lr < max_lr, got {min_lr} and {max_lr}")
    if steps < 5:
        raise ConfigError(f"lr-find: --steps {steps} is too few for a suggestion (>= 5)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = ["--config", str(config), *overrides, "--trainer.enable_progress_bar", "false"]
    base += ["--forgetting.plot", "false"]
    results: list[LrFindResult] = []
    for phase in phases:
        folder = out / phase
        # max_steps (= steps) ends the sweep, never the config's epoch count.
        argv = [*base, "--trainer.default_root_dir", str(folder), "--trainer.max_epochs", "100000"]
        if phase == "head":
            cli = run_lightning("fit", [*argv, "--model.freeze", "linear_probe"], run=False)
        else:
            cli = run_lightning("fit", [*argv, "--model.freeze", "full"], run=False)
            epochs = head_epochs
            if epochs is None:
                epochs = max(1, int(cli.model.hparams.get("unfreeze_epoch", 1)))
            if epochs > 0:
                say(f"lr-find unfrozen: training the head alone for {epochs} epoch(s) first")
                head = run_lightning(
                    "fit",
                    [
                        *base,
                        "--trainer.default_root_dir",
                        str(out / "head_warmup"),
                        "--model.freeze",
                        "linear_probe",
                        "--trainer.max_epochs",
                        str(epochs),
                    ],
                    run=False,
                )
                head.trainer.fit(head.model, datamodule=head.datamodule)
                cli.model.load_state_dict(head.model.state_dict())
                del head
        say(f"lr-find {phase}: {steps} steps from {min_lr:g} to {max_lr:g}")
        lrs, losses, suggestion = _range_test(
            cli, min_lr=min_lr, max_lr=max_lr, steps=steps, early_stop=early_stop
        )
        plot = f"lr_find_{phase}.png"
        write_bytes(out / plot, range_test_figure(lrs, losses, suggestion, phase))
        results.append(
            LrFindResult(
                phase=phase, lrs=lrs, losses=losses, suggestion=suggestion, plot=plot,
                steps_run=len(lrs),
            )
        )  # fmt: skip
        del cli
    write_json(
        out / "lr_find.json",
        {"config": str(config), "overrides": list(overrides), "phases": results},
    )
    return results


def format_results(results: Sequence[LrFindResult], out: str | Path) -> str:
    """Suggested rates, one line per phase, and what to do with them."""
    lines = []
    for result in results:
        value = result["suggestion"]
        text = f"{value:.2g}" if value is not None else "none (too few points; more --steps)"
        lines.append(
            f"{result['phase']:9} suggested lr {text}  ({result['steps_run']} steps; "
            f"plot {Path(out) / result['plot']})"
        )
    suggestions = [r["suggestion"] for r in results if r["suggestion"] is not None]
    if len(suggestions) == 2:
        lines.append(
            f"freeze_unfreeze/gradual use one model.lr for both phases: the smaller, "
            f"{min(suggestions):.2g}, is the safe choice; linear_probe: the head's."
        )
    return "\n".join(lines)


def range_test_figure(
    lrs: Sequence[float], losses: Sequence[float], suggestion: float | None, phase: str
) -> bytes:
    """PNG of the smoothed training loss against the learning rate, suggestion marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    finite = [(lr, loss) for lr, loss in zip(lrs, losses, strict=True) if math.isfinite(loss)]
    if finite:
        axis.plot([p[0] for p in finite], [p[1] for p in finite], color="C0")
    if suggestion is not None and finite:
        nearest = min(finite, key=lambda p: abs(math.log(p[0]) - math.log(suggestion)))
        axis.plot([nearest[0]], [nearest[1]], "o", color="C3", label=f"suggested {suggestion:.2g}")
        axis.legend()
    axis.set_xscale("log")
    axis.set_xlabel("learning rate (head; lower stages × lr_decay^i)")
    axis.set_ylabel("smoothed training loss")
    axis.set_title(f"learning-rate range test: {phase} phase")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
