"""Predictions on a labelled manifest, for evaluation: the Predictor plus a label check.

``evaluate`` and the held-out part of a ``cv`` fold need the true labels beside each
prediction; everything else (reading, preprocessing, probabilities, calls) is the
:class:`~medft.inference.Predictor`'s, the same path ``medft predict`` takes.
"""

from __future__ import annotations

from collections.abc import Sequence

from medft.data.manifest import Manifest
from medft.errors import ConfigError
from medft.inference import Predictions, Predictor, predict_table

__all__ = ["predict_manifest"]


def predict_manifest(
    predictor: Predictor,
    manifest: Manifest,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    on_bad_file: str = "skip",
    calibrate: bool = False,
    extra_columns: Sequence[str] = (),
    include_patient_id: bool = False,
    salt: str | None = None,
    quiet: bool | None = None,
) -> Predictions:
    """Predict every image of a labelled ``manifest`` (see :func:`medft.inference.predict_table`).

    Raises:
        ConfigError: The manifest lacks a label column for one of the model's findings.
    """
    missing = [name for name in predictor.labels if name not in manifest.labels]
    if missing:
        raise ConfigError(
            f"{manifest.source or 'manifest'}: no label column for finding(s) {missing} "
            f"the checkpoint predicts; its labels are {list(manifest.labels)}. Evaluate on a "
            "manifest labelled with the checkpoint's findings"
        )
    return predict_table(
        predictor,
        manifest.table,
        labelled=True,
        batch_size=batch_size,
        num_workers=num_workers,
        on_bad_file=on_bad_file,
        calibrate=calibrate,
        extra_columns=extra_columns,
        include_patient_id=include_patient_id,
        salt=salt,
        quiet=quiet,
    )
