"""The LightningModule: a timm backbone and head, the loss, metrics and the freezing schedule.

Inputs are display-space X-rays in [0, 1] with one channel (what the data layer
produces); the module normalises them with the backbone's own ``pretrained_cfg``
mean/std and replicates grey to RGB when the stem expects three channels, so a
checkpoint carries everything needed to preprocess an image.

Every ``__init__`` argument is a primitive: LightningCLI turns them into config
keys, and the saved hyper-parameters load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, Literal, get_args

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryAveragePrecision,
    MulticlassAUROC,
    MultilabelAUROC,
    MultilabelAveragePrecision,
)

from medft.errors import ConfigError
from medft.model.backbones import create_backbone, data_config
from medft.model.features import (
    FEATURE_CACHE_MODES,
    FeatureCacheMode,
    FrozenFeatureCache,
    augments,
    train_data_identity,
)
from medft.model.finetune import FinetuneSchedule, Gate, Mode
from medft.provenance import software_versions

Task = Literal["binary", "multilabel", "multiclass"]
"""Sigmoid per finding (``binary``, ``multilabel``) or one softmax over classes."""
TASKS: tuple[str, ...] = get_args(Task)
_COMPACT_SCALES = {torch.uint8: 255.0, torch.uint16: 65535.0}
"""Compact pixel types of training batches and the value that means display-space 1.0."""
Loss = Literal["bce", "focal", "ce"]
"""Masked binary cross-entropy, focal loss, or cross-entropy (multiclass only)."""
LOSSES: tuple[str, ...] = get_args(Loss)
FreezeMode = Mode
"""The freezing schedule (:data:`medft.model.finetune.Mode`, whose values it shares)."""
FREEZE_MODES: tuple[str, ...] = get_args(FreezeMode)
FreezeGate = Gate
"""How frozen stages are held still (:data:`medft.model.finetune.Gate`)."""
FREEZE_GATES: tuple[str, ...] = get_args(FreezeGate)


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"model.{key}: {value!r} is not one of {', '.join(allowed)}")
    return value


class XrayClassifier(L.LightningModule):
    """Fine-tune a timm backbone to classify X-ray findings.

    Takes float display-space images in [0, 1] and also the compact uint8/uint16 batches
    of :class:`~medft.data.datamodule.XrayDataModule` (``accepts_compact_batches``),
    which it converts and normalises on its own device.

    Args:
        backbone: any timm model name (``resnet50``, ``densenet121``, ``convnext_tiny``, …).
        labels: finding names, one output each (multiclass: one class each). Usually
            linked from the datamodule's manifest.
        task: ``binary``/``multilabel`` (sigmoid per finding) or ``multiclass`` (softmax).
        pretrained: load ImageNet weights (``False`` is the explicit way to get random init).
        pretrained_file: a local weights file tried when timm's cache has none.
        in_chans: 3 (grey replicated to RGB, default) or 1 (timm folds the stem to one channel).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, for backbones that support it.
        freeze: ``full``, ``linear_probe``, ``freeze_unfreeze`` or ``gradual``.
        unfreeze_epoch: with ``freeze_unfreeze``, the epoch at which the whole model trains.
        gradual_every: with ``gradual``, epochs between unfreezing successive stages.
        lr_decay: discriminative LR: each stage below the head gets this factor more.
        freeze_gate: ``requires_grad`` (skips backward through frozen stages) or ``lr``
            (LR 0 for frozen stages; needed under DDP).
        lr: peak learning rate of the head.
        weight_decay: AdamW weight decay (not applied to biases and norm layers).
        warmup_epochs: linear warm-up length before the cosine decay (fractions allowed).
        loss: ``bce`` (masks unknown labels), ``focal`` or ``ce`` (multiclass).
        label_smoothing: for ``ce``.
        focal_gamma: for ``focal``.
        pos_weight: per-finding positive weights for BCE; ``None`` takes them from the
            datamodule's training split when ``auto_pos_weight`` is set.
        auto_pos_weight: weight positives by the training split's negative/positive ratio.
        channels_last: use the channels-last memory format (about 1.5× faster on CPU).
        feature_cache: ``auto`` (default), ``on`` or ``off``: with ``linear_probe`` and
            un-augmented training data, compute each image's pooled backbone features once
            and train the head on them in later epochs (see ``medft.model.features``).
        compile: run the network through ``torch.compile`` during training (off by
            default: on this project's 2-core CPU a compile took 37-102 s and a training
            step got 1.04x faster; on a GPU it can pay). Checkpoints hold the plain weights,
            and models loaded for evaluation, prediction and the demo run eagerly.
    """

    accepts_compact_batches = True
    """Training/evaluation batches may hold uint8/uint16 images (see :meth:`normalize`)."""

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        labels: list[str] | None = None,
        task: Task = "multilabel",
        pretrained: bool = True,
        pretrained_file: str | None = None,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
        freeze: FreezeMode = "freeze_unfreeze",
        unfreeze_epoch: int = 1,
        gradual_every: int = 1,
        lr_decay: float = 1.0,
        freeze_gate: FreezeGate = "requires_grad",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 0.0,
        loss: Loss = "bce",
        label_smoothing: float = 0.0,
        focal_gamma: float = 2.0,
        pos_weight: list[float] | None = None,
        auto_pos_weight: bool = True,
        channels_last: bool = True,
        feature_cache: FeatureCacheMode = "auto",
        compile: bool = False,
    ) -> None:
        super().__init__()
        labels = list(labels) if labels else ["abnormal"]
        _choice("task", task, TASKS)
        _choice("loss", loss, LOSSES)
        _choice("freeze", freeze, FREEZE_MODES)
        _choice("freeze_gate", freeze_gate, FREEZE_GATES)
        _choice("feature_cache", feature_cache, FEATURE_CACHE_MODES)
        if task == "multiclass" and loss != "ce":
            raise ConfigError("model.loss: a multiclass task needs loss 'ce'")
        if task != "multiclass" and loss == "ce":
            raise ConfigError("model.loss: 'ce' is for task 'multiclass'; use 'bce' or 'focal'")
        if in_chans not in (1, 3):
            raise ConfigError(f"model.in_chans: {in_chans} is not 1 or 3")
        if pos_weight is not None and len(pos_weight) != len(labels):
            raise ConfigError(
                f"model.pos_weight: {len(pos_weight)} values for {len(labels)} labels {labels}"
            )
        self.save_hyperparameters()
        self.labels = labels
        self.task = task
        self.model = create_backbone(
            backbone,
            num_classes=len(labels),
            pretrained=pretrained,
            pretrained_file=pretrained_file,
            in_chans=in_chans,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
        )
        _reset_head(self.model)
        cfg = data_config(self.model)
        mean = torch.tensor(cfg["mean"], dtype=torch.float32)
        std = torch.tensor(cfg["std"], dtype=torch.float32)
        if in_chans == 1:
            mean, std = mean.mean(dim=0, keepdim=True), std.mean(dim=0, keepdim=True)
        self.register_buffer("input_mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", std.view(1, -1, 1, 1), persistent=False)
        pw = (
            torch.tensor(pos_weight, dtype=torch.float32) if pos_weight else torch.ones(len(labels))
        )
        self.register_buffer("pos_weight", pw)
        self.schedule = FinetuneSchedule(
            self.model,
            mode=freeze,
            unfreeze_epoch=unfreeze_epoch,
            gradual_every=gradual_every,
            lr_decay=lr_decay,
            gate=freeze_gate,
        )
        # Plain object, not a submodule: cached features never reach a checkpoint.
        self.feature_cache = FrozenFeatureCache(feature_cache)
        self._cache_val = False
        # Training loss summed on the device (see _track_loss): [interval, epoch] sums.
        self._loss_sums: torch.Tensor | None = None
        self._loss_counts = [0, 0]
        self._loss_logged = False
        self._log_every = 0  # Lightning's log_every_n_steps, read at each epoch start
        self._next_step = 0
        self._compact_affine: dict[tuple[float, torch.device], tuple[torch.Tensor, ...]] = {}
        self._trainable: dict[int, float] = {}  # trainable parameters by frozen prefix
        # A plain list, not a submodule: the compiled wrapper shares the parameters of
        # self.model, and the state dict keeps its plain keys (no "_orig_mod.").
        self._compiled: list[Callable[[torch.Tensor], torch.Tensor]] = []
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._build_metrics()

    # ------------------------------------------------------------------ model
    def _build_metrics(self) -> None:
        n = len(self.labels)
        if self.task == "multiclass":
            self.val_auroc = MulticlassAUROC(num_classes=n, average=None)
            self.test_auroc = MulticlassAUROC(num_classes=n, average=None)
            self.val_ap = self.test_ap = None
        elif n == 1:  # torchmetrics' multilabel metrics need two or more labels
            self.val_auroc = BinaryAUROC(ignore_index=-1)
            self.test_auroc = BinaryAUROC(ignore_index=-1)
            self.val_ap = BinaryAveragePrecision(ignore_index=-1)
            self.test_ap = BinaryAveragePrecision(ignore_index=-1)
        else:
            self.val_auroc = MultilabelAUROC(num_labels=n, average=None, ignore_index=-1)
            self.test_auroc = MultilabelAUROC(num_labels=n, average=None, ignore_index=-1)
            self.val_ap = MultilabelAveragePrecision(num_labels=n, average=None, ignore_index=-1)
            self.test_ap = MultilabelAveragePrecision(num_labels=n, average=None, ignore_index=-1)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map display-space images (B, 1, H, W) to the backbone's input space.

        ``images`` are float in [0, 1], or the compact uint8/uint16 batches the training
        loaders ship (0..255 or 0..65535 for the same range). A compact batch is converted,
        scaled, normalised and expanded to the stem's channels in one pass on its device,
        straight into the model's memory format.
        """
        scale = _COMPACT_SCALES.get(images.dtype)
        if scale is not None:
            return self._normalize_compact(images, scale)
        if images.shape[1] == 1 and self.input_mean.shape[1] == 3:
            images = images.expand(-1, 3, -1, -1)
        x = (images - self.input_mean) / self.input_std
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _normalize_compact(self, images: torch.Tensor, scale: float) -> torch.Tensor:
        # (x / scale - mean) / std as one multiply-add: x * gain + bias.
        key = (scale, self.input_mean.device)
        if key not in self._compact_affine:
            self._compact_affine = {  # one entry: the buffers' current device
                key: (1.0 / (scale * self.input_std), -self.input_mean / self.input_std)
            }
        gain, bias = self._compact_affine[key]
        channels = max(images.shape[1], self.input_mean.shape[1])
        shape = (images.shape[0], channels, *images.shape[2:])
        layout = (
            torch.channels_last if self.hparams.channels_last and len(shape) == 4
            else torch.contiguous_format
        )  # fmt: skip
        out = torch.empty(shape, dtype=gain.dtype, device=images.device, memory_format=layout)
        return torch.addcmul(bias, images, gain, out=out)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for display-space images (B, 1, H, W): float in [0, 1] or compact uint8/uint16."""
        return self.network()(self.normalize(images))

    def network(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The timm model, or its ``torch.compile`` wrapper when ``compile`` is set."""
        if not self.hparams.get("compile", False):
            return self.model
        if not self._compiled:
            self._compiled.append(torch.compile(self.model))
        return self._compiled[0]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid per finding, or softmax across classes for a multiclass task."""
        return logits.softmax(dim=1) if self.task == "multiclass" else logits.sigmoid()

    def _forward_train(
        self,
        images: torch.Tensor,
        rows: torch.Tensor | None = None,
        paths: list[str] | None = None,
    ) -> torch.Tensor:
        """Training forward; a frozen backbone runs without autograd (no backward through it).

        With the feature cache active, the frozen backbone runs only for manifest ``rows``
        whose features are not cached yet.
        """
        if not self.schedule.backbone_frozen(self.current_epoch):
            return self(images)
        if self.feature_cache.active:
            return self.feature_cache.logits(
                self.model, rows, paths, lambda: self.normalize(images)
            )
        with torch.no_grad():
            features = self.model.forward_features(self.normalize(images))
        return self.model.forward_head(features)

    # ------------------------------------------------------------------- loss
    def loss_fn(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss that ignores unknown (NaN) labels."""
        if self.task == "multiclass":
            known = ~torch.isnan(targets).any(dim=1)
            if not known.any():
                return logits.sum() * 0.0
            return F.cross_entropy(
                logits[known],
                targets[known].argmax(dim=1),
                label_smoothing=self.hparams.label_smoothing,
            )
        known = ~torch.isnan(targets)
        safe_targets = torch.where(known, targets, torch.zeros_like(targets))
        per_element = F.binary_cross_entropy_with_logits(
            logits, safe_targets, pos_weight=self.pos_weight, reduction="none"
        )
        if self.hparams.loss == "focal":
            p = logits.sigmoid()
            p_t = p * safe_targets + (1 - p) * (1 - safe_targets)
            per_element = per_element * (1 - p_t).pow(self.hparams.focal_gamma)
        weights = known.to(per_element.dtype)
        return (per_element * weights).sum() / weights.sum().clamp_min(1.0)

    # ---------------------------------------------------------------- hooks
    def setup(self, stage: str) -> None:
        """Take positive weights from the training split when asked to."""
        if stage != "fit" or self.hparams.pos_weight is not None:
            return
        if self.task == "multiclass" or not self.hparams.auto_pos_weight:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "pos_weight"):
            weights = torch.as_tensor(datamodule.pos_weight(), dtype=torch.float32)
            self.pos_weight.copy_(weights.to(self.pos_weight.device))

    def train(self, mode: bool = True) -> XrayClassifier:
        """Switch modes, keeping normalisation layers of frozen stages in eval mode."""
        super().train(mode)
        if mode and getattr(self, "_trainer", None) is not None:
            self.schedule.apply(self.current_epoch)
        return self

    def on_train_start(self) -> None:
        """Decide whether this fit caches backbone features (after any checkpoint restore)."""
        loader = self.trainer.train_dataloader
        self.feature_cache.prepare(
            self.model,
            linear_probe=self.schedule.mode == "linear_probe",
            backbone_frozen=self.schedule.backbone_frozen(self.current_epoch),
            drop_rate=self.hparams.drop_rate,
            drop_path_rate=self.hparams.drop_path_rate,
            data=train_data_identity(getattr(loader, "dataset", None)),
            identity={
                "backbone": self.hparams.backbone,
                "mean": self.input_mean.flatten().tolist(),
                "std": self.input_std.flatten().tolist(),
            },
        )

    def on_train_epoch_start(self) -> None:
        """Gate the stages for this epoch and log what trains."""
        self.schedule.apply(self.current_epoch)
        frozen = self.schedule.frozen_prefix(self.current_epoch)
        if frozen not in self._trainable:  # counting walks every parameter: once per state
            info = self.schedule.describe(self.current_epoch)
            self._trainable[frozen] = float(info["trainable_params"])
        metrics = {"train/trainable_params": self._trainable[frozen]}
        optimizer = self.optimizers()
        if not isinstance(optimizer, list):
            optimizer = [optimizer]
        for group in optimizer[0].param_groups:
            metrics[f"lr/{group['name']}"] = float(group["lr"])
        # Plain numbers straight to the loggers: self.log costs about a millisecond per key
        # (one per parameter group), paid inside the epoch.
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)
        self._log_every = int(self.trainer.log_every_n_steps or 0)
        self._next_step = int(self.trainer.global_step)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if len(batch["image"]) == 0:  # every file of this batch was unreadable and skipped
            return None
        logits = self._forward_train(batch["image"], batch.get("index"), batch.get("path"))
        loss = self.loss_fn(logits, batch["label"])
        self._track_loss(loss, len(logits))
        return loss

    def _track_loss(self, loss: torch.Tensor, n: int) -> None:
        """Sum the loss on its device; hand it to the loggers only every ``log_every_n_steps``.

        ``self.log`` costs about a millisecond of host time per call, and a progress-bar
        value is turned into a Python number (a device sync) after every step. So the
        per-step loss stays on the device: ``train/loss`` (logger only) is the mean over
        the steps since the previous logged step, at Lightning's logging steps, and
        ``train/loss_epoch`` (logger and progress bar) the epoch's mean.
        """
        sums = self._loss_sums
        if sums is None or sums.device != loss.device:
            sums = self._loss_sums = torch.zeros(2, device=loss.device)
            self._loss_counts = [0, 0]
        sums.add_(loss.detach().float(), alpha=n)  # [since the last logged step, this epoch]
        self._loss_counts[0] += n
        self._loss_counts[1] += n
        self._next_step += 1  # the optimizer step this loss leads to (global_step + 1)
        if self._log_every and self._next_step % self._log_every == 0:
            self.log("train/loss", sums[0] / self._loss_counts[0], batch_size=n)
            self._loss_logged = True
            sums[0] = 0.0
            self._loss_counts[0] = 0

    def on_train_epoch_end(self) -> None:
        """Log the epoch's mean training loss (also shown in the progress bar)."""
        sums, count = self._loss_sums, self._loss_counts[1]
        if sums is not None and count:
            mean = sums[1] / count
            self.log("train/loss_epoch", mean, prog_bar=True, on_epoch=True)
            if not self._loss_logged:  # an epoch shorter than log_every_n_steps
                self.log("train/loss", mean, on_epoch=True)
            sums[1] = 0.0
            self._loss_counts[1] = 0
        self._loss_logged = False

    def on_validation_epoch_start(self) -> None:
        """Validation reuses cached features when training does and its images are fixed."""
        trainer = self.trainer
        self._cache_val = (
            self.feature_cache.active
            and not trainer.sanity_checking
            and augments(getattr(trainer.val_dataloaders, "dataset", None)) is False
        )

    def _eval_step(self, batch: dict[str, Any], stage: str) -> dict[str, torch.Tensor]:
        if stage == "val" and self._cache_val and "index" in batch:
            images = batch["image"]
            logits = self.feature_cache.logits(
                self.model, batch["index"], batch.get("path"), lambda: self.normalize(images)
            )
        else:
            logits = self(batch["image"])
        targets = batch["label"]
        loss = self.loss_fn(logits, targets)
        probs = self.probabilities(logits.float())
        auroc = self.val_auroc if stage == "val" else self.test_auroc
        ap = self.val_ap if stage == "val" else self.test_ap
        if self.task == "multiclass":
            known = ~torch.isnan(targets).any(dim=1)
            if known.any():
                auroc.update(probs[known], targets[known].argmax(dim=1).long())
        else:
            int_targets = torch.nan_to_num(targets, nan=-1.0).long()
            if len(self.labels) == 1:
                probs_in, targets_in = probs[:, 0], int_targets[:, 0]
            else:
                probs_in, targets_in = probs, int_targets
            auroc.update(probs_in, targets_in)
            ap.update(probs_in, targets_in)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=len(logits))
        out = {"loss": loss, "probs": probs.detach(), "targets": targets.detach()}
        if "index" in batch:  # the manifest row: lets callbacks drop DDP's padded duplicates
            out["index"] = torch.as_tensor(batch["index"]).detach()
        return out

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def _log_epoch_metrics(self, stage: str) -> None:
        auroc = self.val_auroc if stage == "val" else self.test_auroc
        ap = self.val_ap if stage == "val" else self.test_ap
        per_class = _safe_compute(auroc, len(self.labels))
        self.log(f"{stage}/auroc", _nanmean(per_class), prog_bar=True)
        for name, value in zip(self.labels, per_class, strict=True):
            self.log(f"{stage}/auroc_{name}", value)
        if ap is not None:
            ap_values = _safe_compute(ap, len(self.labels))
            self.log(f"{stage}/ap", _nanmean(ap_values))
            ap.reset()
        auroc.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Per-image probabilities keyed by manifest path."""
        probs = self.probabilities(self(batch["image"]).float())
        return {"path": list(batch["path"]), "probs": probs.cpu()}

    # ------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over every stage from step 0, LR per step from the schedule's lambdas."""
        groups = self.schedule.param_groups(self.hparams.lr, self.hparams.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr)
        estimated = self.trainer.estimated_stepping_batches
        if not math.isfinite(estimated):  # max_epochs -1 and no max_steps: training without end
            raise ConfigError(
                "trainer.max_epochs: the warm-up and cosine schedule needs a finite run; set "
                "--trainer.max_epochs N (>= 1) or --trainer.max_steps N"
            )
        total_steps = max(1, int(estimated))
        max_epochs = max(1, int(self.trainer.max_epochs or 1))
        steps_per_epoch = max(1, math.ceil(total_steps / max_epochs))
        warmup_steps = round(self.hparams.warmup_epochs * steps_per_epoch)
        lambdas = self.schedule.lr_lambdas(total_steps, warmup_steps, steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambdas)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # ----------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store what inference needs beside the weights (primitives only)."""
        medft = checkpoint.setdefault("medft", {})
        medft.update(
            {
                "labels": list(self.labels),
                "task": self.task,
                "backbone": self.hparams.backbone,
                "mean": self.input_mean.flatten().tolist(),
                "std": self.input_std.flatten().tolist(),
                "freeze_schedule": self.schedule.state_dict(),
            }
        )
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        for key in ("image_size", "fit_mode", "cache_dtype"):
            if datamodule is not None and hasattr(datamodule, key):
                medft[key] = getattr(datamodule, key)
        seen = self._seen_patients(datamodule)
        if seen is not None:
            medft["seen_patients"] = seen
        medft["software"] = software_versions()
        warning = getattr(datamodule, "audit_warning", None) if datamodule is not None else None
        if warning:
            medft["audit"] = {"warnings": [str(warning)]}
        if datamodule is not None and hasattr(datamodule, "split_summary"):
            # A summary is informative, never worth failing a save over.
            with contextlib.suppress(Exception):
                medft["data_summary"] = datamodule.split_summary()

        # Random state (dropout, stochastic depth) so a resumed run continues the same draws.
        checkpoint["medft_rng"] = {"torch": torch.get_rng_state()}

    def _seen_patients(self, datamodule: Any) -> dict[str, Any] | None:
        """The datamodule's salted patient record, computed once per run (one salt per run)."""
        if datamodule is None or not hasattr(datamodule, "seen_patients"):
            return None
        cached = getattr(self, "_seen_record", None)
        if cached is None:
            try:
                cached = datamodule.seen_patients().to_checkpoint()
            except Exception:  # provenance is informative, never worth failing a save over
                return None
            self._seen_record = cached
        return cached

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the freezing schedule (checked against this config) and the RNG state."""
        saved = checkpoint.get("medft", {}).get("freeze_schedule")
        if saved is not None:
            self.schedule.load_state_dict(saved)
        rng = checkpoint.get("medft_rng", {}).get("torch")
        if isinstance(rng, torch.Tensor):
            torch.set_rng_state(rng)


def _reset_head(model: nn.Module) -> None:
    """Start the new classifier near zero.

    Some timm families initialise a Linear head with a range that depends on the
    number of outputs (EfficientNet: uniform(±1/sqrt(num_classes))); with one finding
    over 1280 pretrained features that gives logits of ±20 and a loss near 10 at
    step 0, which a head-only phase of a few epochs cannot undo.
    """
    head = model.get_classifier()
    for module in head.modules() if isinstance(head, nn.Module) else []:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _safe_compute(metric: Any, n: int) -> list[float]:
    """Per-class values of a torchmetrics metric; NaN where a class lacked both outcomes."""
    try:
        values = metric.compute()
    except (ValueError, RuntimeError):
        return [float("nan")] * n
    values = torch.atleast_1d(values.float()).tolist()
    return [float(v) for v in values]


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
