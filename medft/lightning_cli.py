"""LightningCLI wiring for ``medft fit|validate|test|predict``.

The config schema is the type signature of :class:`~medft.model.module.XrayClassifier`
and :class:`~medft.data.datamodule.XrayDataModule`; this module only adds the
links between them (labels and task come from the manifest, the run directory
from the trainer) and medft's default callbacks and loggers.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonargparse
from jsonargparse import Namespace
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from medft import signals
from medft._io import atomic_path, fsync_dir
from medft.data.datamodule import XrayDataModule, default_cache_dir
from medft.data.loader_monitor import LoaderMonitor
from medft.errors import CheckpointError, ConfigError
from medft.eval.callbacks import OperatingPointCallback
from medft.model.averaging import WeightEMA
from medft.model.checkpoint import is_remote, local_checkpoint, read_checkpoint, safe_torch_load
from medft.model.forgetting import ForgettingMeter
from medft.model.l2sp import L2SP
from medft.model.module import XrayClassifier
from medft.provenance import write_run_json
from medft.tracking import log_run_artifacts

DEFAULT_ROOT = "medft-runs/run"
_LIGHTNING_CKPT_NAMES = ("last", "best", "hpc")
"""``ckpt_path`` values Lightning resolves itself (to files of this run)."""


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with one change: loading is always ``weights_only=True``.

    Lightning unpickles a checkpoint given as a URL with ``weights_only=False`` (a crafted
    file runs code). Here a URL is refused unless the user opted in
    (``MEDFT_ALLOW_REMOTE_CHECKPOINTS=1``; then it is downloaded first), and every file is
    read by :func:`medft.model.checkpoint.safe_torch_load`, whatever ``weights_only`` the
    caller asked for.
    """

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load ``path`` safely (see the class docstring); errors are ``CheckpointError``."""
        local = local_checkpoint(path)
        if not local.is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return safe_torch_load(local, map_location or "cpu", label=str(path))

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write next to ``path``, ``fsync``, rename; a full disk keeps the old file.

        Lightning's own save stages the file in the system's temporary folder and moves
        it, so a full disk ends in a raw ``OSError`` from ``shutil.move``. Here the bytes go
        to a hidden file in the checkpoint folder (:func:`medft._io.atomic_path`), which is
        removed when the write fails, and the error says what happened in one line.

        Raises:
            CheckpointError: no space left (or no permission) to write the checkpoint.
        """
        if storage_options is not None or is_remote(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        import io

        import torch

        target = Path(path)
        buffer = io.BytesIO()  # serialise first: torch's file writer hides the errno
        torch.save(checkpoint, buffer)
        try:
            with atomic_path(target) as tmp, open(tmp, "wb") as fh:
                fh.write(buffer.getbuffer())
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
                raise
            previous = (
                f"the previous checkpoint {target.name} is intact"
                if target.is_file()
                else "no previous checkpoint of that name was overwritten"
            )
            raise CheckpointError(
                f"{target}: could not save a checkpoint ({exc.strerror.lower()}); {previous} and "
                "the partial file was removed. Free space (or fix the folder), then resume "
                f"with --ckpt_path {target.parent / 'last.ckpt'}"
            ) from None


def make_checkpoint_loading_safe(trainer: Trainer) -> None:
    """Give ``trainer`` the :class:`SafeCheckpointIO` (unless a custom plugin was chosen)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = SafeCheckpointIO()


def checked_ckpt_path(ckpt_path: str | None) -> str | None:
    """Check a ``--ckpt_path`` before Lightning touches it; return a safe local path.

    A URL is refused (or downloaded, with the opt-in); a local file must load with
    ``weights_only=True``. Lightning's own names (``last``, ``best``, ``hpc``,
    ``registry...``) pass through.

    Raises:
        CheckpointError: one line naming the file and what is wrong with it.
    """
    if not ckpt_path or ckpt_path in _LIGHTNING_CKPT_NAMES or ckpt_path.startswith("registry"):
        return ckpt_path
    local = local_checkpoint(ckpt_path)
    read_checkpoint(local)
    return str(local)


def trainer_defaults() -> dict[str, Any]:
    """Trainer settings every medft run starts from (callbacks here are always present).

    No ``LearningRateMonitor``: the model logs ``lr/<group>`` itself every epoch, and
    every callback costs Lightning's dispatch on each of a step's hooks.
    """
    return {
        "default_root_dir": DEFAULT_ROOT,
        "max_epochs": 10,
        "log_every_n_steps": 10,
        "gradient_clip_val": 1.0,
        "num_sanity_val_steps": 0,
        "callbacks": [
            OperatingPointCallback(),
            StopOnSignal(),
        ],
    }


def _checkpoint_dir(root: str | None) -> str:
    return os.path.join(root or DEFAULT_ROOT, "checkpoints")


class StopOnSignal(Callback):
    """On SIGTERM/SIGINT: save ``last.ckpt`` at the end of the current batch, then stop.

    The checkpoint is written where a periodic one would be (``on_train_batch_end``), so a
    resume continues from the next batch of the interrupted epoch. Under DDP the ranks
    agree first (any rank's signal stops all of them at the same batch). The run then ends
    with :class:`medft.signals.Interrupted` (exit status 143 or 130), never as a success.
    """

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        """From here on, a first signal waits for the batch to end."""
        signals.fit_running(True)

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        """Lightning has just registered its SIGTERM handler: SIGTERM is medft's again."""
        signals.take_back_sigterm()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        """Save and stop if a signal arrived (on any rank)."""
        stop = trainer.strategy.reduce_boolean_decision(signals.received() is not None, all=False)
        if not stop:
            return
        signum = signals.received() or signal.SIGTERM
        path = resume_checkpoint_path(trainer)
        detail = "no checkpoint saved (checkpointing is off)"
        if path is not None:
            save_checkpoint_atomically(trainer, path)
            detail = (
                f"saved {path} at epoch {trainer.current_epoch}, step {trainer.global_step}; "
                "resume with --ckpt_path (medft cv: --resume)"
            )
        signals.fit_running(False)
        raise signals.Interrupted(signum, detail)

    def on_fit_end(self, trainer: Trainer, pl_module: Any) -> None:
        """A signal after the last batch is handled by the caller (no DONE is written)."""
        signals.fit_running(False)

    def on_exception(self, trainer: Trainer, pl_module: Any, exception: BaseException) -> None:
        """The fit is over, one way or another."""
        signals.fit_running(False)


def resume_checkpoint_path(trainer: Trainer) -> Path | None:
    """Where ``last.ckpt`` goes: the folder of the checkpoint callback that keeps one."""
    callbacks = list(trainer.checkpoint_callbacks)
    keeping = [c for c in callbacks if getattr(c, "save_last", False)] or callbacks
    for callback in keeping:
        if getattr(callback, "dirpath", None):
            name = callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
            return Path(callback.dirpath) / name
    return None


def save_checkpoint_atomically(trainer: Trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` into a temporary name, then one rename over ``path``.

    A second kill while writing leaves the previous ``last.ckpt`` whole.
    """
    tmp = path.with_name(f".{path.name}.signal.tmp")
    trainer.save_checkpoint(tmp)
    if trainer.is_global_zero:
        os.replace(tmp, path)
        fsync_dir(path.parent)
    trainer.strategy.barrier("medft.save_checkpoint_atomically")


class MedftLightningCLI(LightningCLI):
    """LightningCLI with the links, checkpointing and loggers a medft run needs."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/auroc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,
                "checkpoint.filename": "best-{epoch:02d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.link_arguments(
            "trainer.default_root_dir", "checkpoint.dirpath", compute_fn=_checkpoint_dir
        )
        # last.ckpt comes from a second, unmonitored checkpoint: Lightning 2.6 refreshes
        # "last" only in a step where its callback also saved a top-k file, so a monitored
        # callback leaves it stale until the metric improves (a resume would repeat epochs),
        # and save_top_k=0 would write it only at the end. This one keeps the newest epoch.
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.monitor": None,
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.filename": "latest-{epoch:02d}",
                "last_checkpoint.auto_insert_metric_name": False,
                "last_checkpoint.save_last": True,
            }
        )
        parser.link_arguments(
            "trainer.default_root_dir", "last_checkpoint.dirpath", compute_fn=_checkpoint_dir
        )
        # Warns once when the model waits on the loader (--loader_monitor.enabled false: off).
        parser.add_lightning_class_args(LoaderMonitor, "loader_monitor")
        # Small-data regularisers and diagnostics (docs/finetuning.md): an EMA of the weights
        # (--ema.enabled true), L2-SP toward the pretrained weights (--l2sp.alpha), and the
        # per-stage forgetting meter.
        parser.add_lightning_class_args(WeightEMA, "ema")
        parser.add_lightning_class_args(L2SP, "l2sp")
        parser.add_lightning_class_args(ForgettingMeter, "forgetting")
        parser.link_arguments("data.labels", "model.labels", apply_on="instantiate")
        parser.link_arguments("data.task", "model.task", apply_on="instantiate")
        parser.link_arguments("trainer.default_root_dir", "data.run_dir")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then vet ``ckpt_path`` before Lightning reads hyper-parameters from it."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if config.get("weights_only") is False:
            raise ConfigError(
                "weights_only=false is not allowed: medft loads every checkpoint with "
                "weights_only=True (a checkpoint that needs more could run code)"
            )
        if "weights_only" in config:
            config["weights_only"] = True
        if "ckpt_path" in config:
            config["ckpt_path"] = checked_ckpt_path(config.get("ckpt_path"))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with checkpoint loading made safe (:class:`SafeCheckpointIO`)."""
        trainer = super().instantiate_trainer(**kwargs)
        make_checkpoint_loading_safe(trainer)
        # A leaking split must fail before the loggers make tensorboard/version_0 and
        # logs/version_0 (Lightning creates them before the data module's setup).
        check_split = getattr(self.datamodule, "check_split", None)
        if callable(check_split):
            check_split()
        return trainer

    def before_instantiate_classes(self) -> None:
        """Log to CSV and TensorBoard inside the run directory unless told otherwise."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir or DEFAULT_ROOT
        # subcommand is None when a test or script builds the CLI with run=False to fit.
        _check_writable(root, config, fit=self.subcommand in (None, "fit"))
        if config.trainer.logger in (None, True):
            config.trainer.logger = [
                Namespace(
                    class_path="lightning.pytorch.loggers.CSVLogger",
                    init_args=Namespace(save_dir=root, name="logs"),
                ),
                Namespace(
                    class_path="lightning.pytorch.loggers.TensorBoardLogger",
                    init_args=Namespace(save_dir=root, name="tensorboard"),
                ),
            ]

    def before_fit(self) -> None:
        """Record the run before training: ``run.json`` with the command line, the resolved
        config and the software stack, in ``trainer.default_root_dir`` (rank 0 only)."""
        if not self.trainer.is_global_zero:
            return
        import yaml

        resolved = yaml.safe_load(self.parser.dump(self.config, skip_check=True)) or {}
        config = resolved.get(self.subcommand, resolved) if self.subcommand else resolved
        write_run_json(self.trainer.default_root_dir, config=config)

    def after_fit(self) -> None:
        """Give MLflow loggers the run's config.yaml and run.json, and say which run it is."""
        for run_id in log_run_artifacts(self.trainer):
            print(f"MLflow run {run_id}: metrics, config.yaml and run.json logged")


def _check_writable(root: str, config: Namespace | None = None, *, fit: bool = True) -> None:
    """Fail before any decoding or training when the run folder cannot be written.

    With ``config``, also check that the disks can hold what the run will write (see
    :func:`_check_free_space`); ``fit`` says whether checkpoints will be saved.
    """
    probe = os.path.join(root, ".medft-write-test")
    try:
        os.makedirs(root, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(
            f"trainer.default_root_dir: cannot write to {root} ({exc.strerror or exc}); "
            "choose a writable folder with space for checkpoints and logs"
        ) from None
    if config is not None:
        _check_free_space(root, config, fit=fit)


LOG_MARGIN_BYTES = 32 * 2**20
"""Room kept free in the run folder for logs, config, splits and reports."""
_OPTIMIZER_STATES = 2
"""AdamW keeps two tensors per parameter (first and second moments) in every checkpoint."""
_CACHE_ITEM_BYTES = {"uint8": 1, "uint16": 2}


def _check_free_space(root: str, config: Namespace, *, fit: bool) -> None:
    """Refuse a run whose checkpoints and disk cache would not fit on their disks.

    The estimate is deliberately simple: checkpoint bytes ≈ parameters × 4 (float32) ×
    (1 + optimizer states) per file, times the files kept at once (top-k, ``last.ckpt``
    and one being written before an old one is removed), plus a margin for logs; the
    disk cache adds images × side² × pixel bytes, less what its folder already holds.
    Folders on the same disk are summed.

    Raises:
        ConfigError: Naming the folder, the free and the needed bytes.
    """
    needs: list[tuple[str, int, str]] = [(root, LOG_MARGIN_BYTES, "logs")]
    if fit:
        per_file = _checkpoint_bytes(config)
        files = _checkpoint_files(config)
        if per_file and files:
            what = f"{files} checkpoint(s) of ~{_size(per_file)} each"
            needs.append((root, per_file * files, what))
    if config.get("data.cache") == "disk":
        folder = config.get("data.cache_dir") or str(default_cache_dir())
        needs.append((folder, _disk_cache_bytes(config, folder), "the disk cache"))

    by_disk: dict[int, list[tuple[str, int, str]]] = {}
    for folder, size, what in needs:
        by_disk.setdefault(os.stat(_existing_parent(folder)).st_dev, []).append(
            (folder, size, what)
        )
    for items in by_disk.values():
        needed = sum(size for _, size, _ in items)
        folders = " and ".join(dict.fromkeys(folder for folder, _, _ in items))
        free = shutil.disk_usage(_existing_parent(items[0][0])).free
        if free < needed:
            parts = ", ".join(f"{what}: {_size(size)}" for _, size, what in items if size)
            raise ConfigError(
                f"not enough disk space for this run in {folders}: {_size(free)} free "
                f"({free} bytes), about {_size(needed)} needed ({needed} bytes: {parts}); "
                "free some space, choose another trainer.default_root_dir or data.cache_dir, "
                "or keep fewer checkpoints (checkpoint.save_top_k)"
            )


def _checkpoint_bytes(config: Namespace) -> int:
    """Approximate bytes of one training checkpoint (0 when the model is unknown)."""
    import timm
    import torch

    labels = config.get("model.labels") or [None]
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated or downloaded
            model = timm.create_model(
                config.get("model.backbone"),
                pretrained=False,
                num_classes=len(labels),
                in_chans=config.get("model.in_chans") or 3,
            )
    except Exception:  # an unknown name is reported, with suggestions, when the model is built
        return 0
    parameters = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    # An EMA run (--ema.enabled) saves the averaged and the raw weights.
    copies = 1 + _OPTIMIZER_STATES + (1 if config.get("ema.enabled") else 0)
    return 4 * (parameters * copies + buffers)


def _checkpoint_files(config: Namespace) -> int:
    """Checkpoint files on disk at once: kept top-k, ``last.ckpt``, one being written."""
    if config.get("trainer.enable_checkpointing") is False:
        return 0
    epochs = config.get("trainer.max_epochs") or 10
    epochs = epochs if epochs > 0 else 10
    files = 0
    for group in ("checkpoint", "last_checkpoint"):
        top_k = config.get(f"{group}.save_top_k")
        if top_k is None:
            continue
        files += epochs if top_k < 0 else top_k
        files += 1 if config.get(f"{group}.save_last") else 0
    return files + 1


def _disk_cache_bytes(config: Namespace, folder: str) -> int:
    """New bytes the disk cache may need: every manifest image, less what is cached."""
    side = int(config.get("data.image_size") or 224)
    item = _CACHE_ITEM_BYTES.get(config.get("data.cache_dtype") or "uint8", 2)
    wanted = _manifest_rows(config.get("data.manifest")) * side * side * item
    present = 0
    if os.path.isdir(folder):
        for parent, _, names in os.walk(folder):
            present += sum(os.path.getsize(os.path.join(parent, n)) for n in names)
    return max(0, wanted - present)


def _manifest_rows(manifest: str | None) -> int:
    """Images a manifest lists (CSV rows, or files of a ``CLASS/**/*`` folder)."""
    if not manifest or not os.path.exists(manifest):
        return 0
    if os.path.isdir(manifest):
        return sum(len(names) for _, _, names in os.walk(manifest))
    with open(manifest, encoding="utf-8", errors="replace") as fh:
        return max(0, sum(1 for line in fh if line.strip()) - 1)


def _existing_parent(folder: str) -> str:
    """The folder itself or its nearest existing ancestor (where it will be created)."""
    path = os.path.abspath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _size(n: float) -> str:
    """Bytes in a readable unit (KiB, MiB, GiB, TiB)."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB")
    step = 0
    while n >= 1024 and step < len(units) - 1:
        n /= 1024
        step += 1
    return f"{n:.0f} bytes" if step == 0 else f"{n:.1f} {units[step]}"


REPLACED_OPTIMIZER_OPTIONS = ("--optimizer", "--lr_scheduler")
"""LightningCLI's options that swap the model's optimizer; medft refuses them (see below)."""


def _refuse_optimizer_replacement(argv: Sequence[str]) -> None:
    """One clear line instead of a training that dies later with ``KeyError: 'name'``.

    LightningCLI's ``--optimizer``/``--lr_scheduler`` rebuild the optimizer over one flat
    parameter group, which throws away what medft's optimizer is made of: a group per stage
    with its own learning rate, the warm-up and cosine decay, and the freezing schedule.

    Raises:
        ConfigError: ``argv``, or a ``--config`` file it names, uses either option.
    """
    names = [str(arg).split("=", 1)[0] for arg in argv]
    for index, name in enumerate(names[:-1]):
        if name in ("--config", "-c") and os.path.isfile(argv[index + 1]):
            names += [f"--{key}" for key in _top_level_keys(argv[index + 1])]
    for name in names:
        for option in REPLACED_OPTIMIZER_OPTIONS:
            if name == option or name.startswith(option + "."):
                raise ConfigError(
                    f"{option} is not supported: medft trains AdamW over one parameter group per "
                    "stage (discriminative LRs, warm-up, cosine decay, freezing schedule), which "
                    "a replacement would discard; set --model.lr, --model.weight_decay, "
                    "--model.lr_decay, --model.warmup_epochs and --model.freeze instead"
                )


def _top_level_keys(path: str) -> list[str]:
    """Top-level keys of a YAML config (none when it is not a mapping or not YAML)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return []  # jsonargparse reports it with its own message
    return [str(key) for key in loaded] if isinstance(loaded, dict) else []


def int_first_trainer_limits() -> list[str]:
    """Put ``int`` before ``float`` again in the Trainer's ``Union[int, float]`` arguments.

    ``typing`` caches ``Optional[Union[...]]`` by an inner Union that compares equal in any
    order, so a library imported before Lightning (MONAI creates ``Optional[Union[float,
    int]]``) can leave ``Trainer(limit_train_batches=...)`` annotated float-first; jsonargparse
    then reads ``--trainer.limit_train_batches 1`` as ``1.0``, the whole epoch. A flat
    ``Union[int, float, None]`` is cached under its own order, so rebuilding it is exact.

    Returns:
        The names of the arguments that were repaired (empty when none needed it).
    """
    annotations = Trainer.__init__.__annotations__
    repaired = []
    for name, annotation in list(annotations.items()):
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) is typing.Union and args[:2] == (float, int):
            annotations[name] = typing.Union[(int, float, *args[2:])]
            repaired.append(name)
    return repaired


def run_lightning(
    subcommand: str, argv: Sequence[str], *, run: bool = True, extra_defaults: dict | None = None
) -> MedftLightningCLI:
    """Run ``fit``/``validate``/``test``/``predict`` in-process with the given CLI arguments."""
    _refuse_optimizer_replacement(argv)
    int_first_trainer_limits()
    defaults = trainer_defaults()
    if extra_defaults:
        defaults.update(extra_defaults)
    args = [subcommand, *argv] if run else list(argv)
    # medft passes its own argv explicitly; Lightning's "args and sys.argv" hint is noise here.
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within")
    try:
        return MedftLightningCLI(
            XrayClassifier,
            XrayDataModule,
            args=args,
            run=run,
            trainer_defaults=defaults,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            auto_configure_optimizers=False,  # no --optimizer/--lr_scheduler (see above)
            # A wrong key or value is one line naming it (below), not 100 lines of usage.
            parser_kwargs={"exit_on_error": False},
        )
    except jsonargparse.ArgumentError as exc:
        message = " ".join(str(exc).split())
        raise ConfigError(f"{message} (`medft {subcommand} --help` lists the options)") from None


def best_checkpoint_path(trainer: Any) -> Path | None:
    """The best checkpoint by the monitored metric (validation AUROC), if one was saved."""
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "monitor", None) and callback.best_model_path:
            return Path(callback.best_model_path)
    return None


def last_checkpoint_path(trainer: Any) -> Path | None:
    """The most recent ``last.ckpt`` (refreshed every epoch, for resuming)."""
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "last_model_path", ""):
            return Path(callback.last_model_path)
    return None
