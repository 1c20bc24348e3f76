"""medft.inference: one way from a trained checkpoint to calibrated probabilities and calls.

:class:`Predictor` is the only place where pixels become model input after training and
where a probability becomes a call; ``medft predict``, ``evaluate``, ``cv``, ``explain``, the
demo and the exporter all go through it.
"""

from medft.inference.batch import (
    BAD_FILE_POLICIES,
    META_COLUMNS,
    Predictions,
    SkippedFile,
    call_column,
    predict_table,
    prob_column,
    probcal_column,
    skipped_table,
    threshold_column,
)
from medft.inference.inputs import INPUT_SUFFIXES, collect_inputs, input_table, output_id
from medft.inference.predictor import (
    CHECKPOINT_DEFAULTS,
    Predictor,
    Preprocessing,
    checkpoint_sha256,
)
from medft.inference.tta import TTA_VIEWS

__all__ = [
    "BAD_FILE_POLICIES",
    "CHECKPOINT_DEFAULTS",
    "INPUT_SUFFIXES",
    "META_COLUMNS",
    "TTA_VIEWS",
    "Predictions",
    "Predictor",
    "Preprocessing",
    "SkippedFile",
    "call_column",
    "checkpoint_sha256",
    "collect_inputs",
    "input_table",
    "output_id",
    "predict_table",
    "prob_column",
    "probcal_column",
    "skipped_table",
    "threshold_column",
]
