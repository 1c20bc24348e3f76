"""Render the config-key reference (docs/reference/config.md) from ``medft fit --print_config``.

``python -m medft.config_docs > docs/reference/config.md`` regenerates the page from the
quickstart recipe as LightningCLI resolves it, with each ``model.*`` and ``data.*`` key
described by its ``Args:`` entry in the class docstring. A test fails when the committed page
and the code disagree, so the reference never drifts.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
from typing import Any

import yaml

from medft.lightning_cli import run_lightning
from medft.quickstart import recipe_path

HEADER = """# Config keys

Every `medft fit|validate|test|predict` option is a config key: the `__init__` arguments of
`XrayClassifier` (`model.*`) and `XrayDataModule` (`data.*`), Lightning's `Trainer`
(`trainer.*`), two `ModelCheckpoint` callbacks, medft's data-loader monitor and its
small-data callbacks (`ema.*`, `l2sp.*`, `forgetting.*`). Set them in
a YAML file (`--config`) or on the command line (`--model.lr 3e-4`); later values win.
This page is generated from `medft fit --config configs/quickstart.yaml --print_config`
(`python -m medft.config_docs > docs/reference/config.md`); a test keeps it in step with
the code. The *quickstart* column is the value after the recipe is applied; keys the recipe does
not set show the code's default.

`model.labels` and `model.task` are not set by hand: they are linked from the data module
(the manifest's label columns). `checkpoint.dirpath`, `last_checkpoint.dirpath` and
`data.run_dir` follow `trainer.default_root_dir`.
"""

SECTIONS = {
    "model": "`medft.model.module.XrayClassifier`: backbone, freezing schedule, optimiser, loss.",
    "data": "`medft.data.datamodule.XrayDataModule`: manifest, patient-level split, decoding, "
    "cache and augmentation.",
    "trainer": "Lightning's `Trainer` arguments (see Lightning's documentation for each). medft "
    "changes the defaults of `max_epochs`, `log_every_n_steps`, `gradient_clip_val`, "
    "`num_sanity_val_steps` and `default_root_dir`, and always adds a learning-rate monitor "
    "and the operating-point callback (thresholds and temperature stored in checkpoints).",
    "checkpoint": "The monitored checkpoint (`best-NN.ckpt`, highest `val/auroc`): Lightning's "
    "`ModelCheckpoint` arguments.",
    "loader_monitor": "`medft.data.loader_monitor.LoaderMonitor`: logs the share of training "
    "time spent waiting for batches and warns once when the data loader is the bottleneck.",
    "ema": "`medft.model.averaging.WeightEMA`: an exponential moving average of the weights, "
    "validated and checkpointed in their place (off by default; docs/finetuning.md).",
    "l2sp": "`medft.model.l2sp.L2SP`: pulls backbone weights toward their pretrained values "
    "(off at `alpha: 0`; docs/finetuning.md).",
    "forgetting": "`medft.model.forgetting.ForgettingMeter`: per-stage distance from the "
    "pretrained weights (and optional feature CKA), logged every epoch and plotted.",
    "last_checkpoint": "The unmonitored checkpoint that keeps `last.ckpt` current every epoch "
    "(for `--ckpt_path last` resumes): Lightning's `ModelCheckpoint` arguments.",
}

#: Sections whose keys are medft classes' ``__init__`` arguments, described from ``Args:``.
SECTION_CLASSES = {
    "model": "medft.model.module.XrayClassifier",
    "data": "medft.data.datamodule.XrayDataModule",
    "loader_monitor": "medft.data.loader_monitor.LoaderMonitor",
    "ema": "medft.model.averaging.WeightEMA",
    "l2sp": "medft.model.l2sp.L2SP",
    "forgetting": "medft.model.forgetting.ForgettingMeter",
}

TOP_LEVEL = {
    "seed_everything": "Seed for Python, NumPy and torch (medft seeds splits separately: "
    "`data.split_seed`).",
    "ckpt_path": "A checkpoint to resume from (`last` resumes the run's `last.ckpt`).",
    "weights_only": "Lightning's checkpoint-loading switch; medft checkpoints load with "
    "`weights_only=True`.",
}


def print_config() -> dict[str, Any]:
    """The quickstart recipe as ``medft fit --print_config`` resolves it (parsed YAML)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
        run_lightning("fit", ["--config", str(recipe_path()), "--print_config"])
    return yaml.safe_load(buffer.getvalue())


def docstring_args(cls: type) -> dict[str, str]:
    """``name -> description`` from the ``Args:`` section of a Google-style class docstring."""
    doc = inspect.getdoc(cls) or ""
    found: dict[str, str] = {}
    inside, current = False, None
    for line in doc.splitlines():
        if not inside:
            inside = line.strip() == "Args:"
            continue
        if line and not line.startswith(" "):
            break  # the next section (Returns:, Raises:, ...) ends Args
        entry = re.match(r"^    (\w+)(?: \([^)]*\))?:\s*(.*)$", line)
        if entry:
            current = entry.group(1)
            found[current] = entry.group(2).strip()
        elif current and line.strip():
            found[current] += " " + line.strip()
    return {name: text.replace("``", "`") for name, text in found.items()}


def _value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("...").strip()
    return f"`{text}`".replace("|", "\\|")


def _table(values: dict[str, Any], described: dict[str, str], prefix: str) -> str:
    if not described:  # Lightning's own keys: values only, its documentation has the meaning
        rows = ["| key | quickstart |", "|---|---|"]
        rows += [f"| `{prefix}.{key}` | {_value(value)} |" for key, value in values.items()]
        return "\n".join(rows)
    rows = ["| key | quickstart | meaning |", "|---|---|---|"]
    for key, value in values.items():
        meaning = described.get(key, "").replace("|", "\\|")
        rows.append(f"| `{prefix}.{key}` | {_value(value)} | {meaning} |")
    return "\n".join(rows)


def render(config: dict[str, Any] | None = None) -> str:
    """The Markdown page: one table per config section, then the full resolved YAML."""
    config = print_config() if config is None else config
    described = {}  # trainer.* and *checkpoint.* are Lightning's: its documentation has them
    for section, dotted in SECTION_CLASSES.items():
        module, _, name = dotted.rpartition(".")
        described[section] = docstring_args(getattr(importlib.import_module(module), name))
    parts = [HEADER]
    top = {key: value for key, value in config.items() if not isinstance(value, dict)}
    parts.append("## Top level\n")
    rows = ["| key | quickstart | meaning |", "|---|---|---|"]
    rows += [f"| `{k}` | {_value(v)} | {TOP_LEVEL.get(k, '')} |" for k, v in top.items()]
    parts.append("\n".join(rows) + "\n")
    for section, values in config.items():
        if not isinstance(values, dict):
            continue
        about = SECTIONS.get(section, "Settings added in `medft/lightning_cli.py`.")
        parts.append(f"## `{section}`\n\n{about}\n")
        parts.append(_table(values, described.get(section, {}), section) + "\n")
    full = yaml.safe_dump(config, sort_keys=False, width=100).rstrip()
    parts.append(f"## The whole resolved recipe\n\n```yaml\n{full}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
