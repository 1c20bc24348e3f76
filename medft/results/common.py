"""What every DICOM result needs: the findings, the model, and the source image's header.

A result written as DICOM files next to the image it describes, in the same study, so a
PACS viewer shows it beside the radiograph. The patient and study modules come from the
source file's header; they are copied into the DICOM outputs only and never into medft's
own CSV/JSON/log output (which names files by running numbers, see
:func:`medft.explain.batch.output_id`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, generate_uid

from medft import __version__
from medft.errors import ConfigError, DicomReadError
from medft.inference import checkpoint_sha256
from medft.model.checkpoint import read_checkpoint

#: Shown on every capture and in every result series' description.
RESEARCH_BANNER = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
#: Manufacturer written into the equipment module of every result.
MANUFACTURER = "medft (research software)"
#: Coding scheme designator of medft's own concepts (finding names, probability, threshold).
#: A ``99`` prefix marks a private scheme (DICOM PS3.16 section 8.2).
CODING_SCHEME = "99MEDFT"

# Type 2 patient/study attributes: present in a valid image, possibly empty. A file that
# lacks them (synthetic data, some exports) gets them empty, which the standard allows.
_TYPE2_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


@dataclass(frozen=True)
class FindingResult:
    """One finding of one image, as the model called it.

    Attributes:
        finding: the finding's name (a label of the checkpoint).
        probability: the (calibrated, where the checkpoint has a temperature) probability.
        threshold: the stored operating point the call was made at.
        positive: the call (``probability >= threshold``, decided by the caller's one rule).
        threshold_source: where the threshold came from (e.g. ``checkpoint``, ``default``).
        calibrated: whether ``probability`` went through the stored temperature.
    """

    finding: str
    probability: float
    threshold: float
    positive: bool
    threshold_source: str = "checkpoint"
    calibrated: bool = True

    def __post_init__(self) -> None:
        if not self.finding:
            raise ConfigError("a finding result needs a finding name")
        if not 0.0 <= float(self.probability) <= 1.0:
            raise ConfigError(
                f"finding {self.finding!r}: probability {self.probability} is not in [0, 1]"
            )

    def caption(self) -> str:
        """One line for a capture: ``name p=0.812 POSITIVE at 0.430``."""
        call = "POSITIVE" if self.positive else "negative"
        return f"{self.finding} p={self.probability:.3f} {call} at {self.threshold:.3f}"


@dataclass(frozen=True)
class ModelInfo:
    """The model that made a result, as named in the DICOM outputs (the observer device).

    Attributes:
        name: the backbone (timm model name) of the checkpoint.
        version: the medft version that wrote the result.
        checkpoint_sha256: SHA-256 of the checkpoint file (which weights, exactly); for an
            ensemble, the SHA-256 of its members' hashes (one per line, in order).
        members: an ensemble's member checkpoint hashes (empty for one model).
    """

    name: str
    version: str
    checkpoint_sha256: str
    members: tuple[str, ...] = ()

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, name: str | None = None) -> ModelInfo:
        """Hash the checkpoint file and read its backbone name (safe loading)."""
        path = Path(path)
        if name is None:
            hparams = read_checkpoint(path).get("hyper_parameters") or {}
            name = str(hparams.get("backbone") or "unknown")
        return cls(name=name, version=__version__, checkpoint_sha256=file_sha256(path))

    @classmethod
    def from_predictor_info(cls, info: Mapping[str, Any]) -> ModelInfo:
        """From ``Predictor.info()``: one checkpoint, or an ensemble of several.

        Raises:
            ConfigError: the info lists no checkpoint, or a checkpoint without its SHA-256.
        """
        members = list(info.get("checkpoints") or [])
        if not members:
            raise ConfigError("the predictor info lists no checkpoint to name the model by")
        hashes = [str(member.get("sha256") or "") for member in members]
        if not all(hashes):
            raise ConfigError(
                "the predictor info lacks checkpoint SHA-256 hashes (use info(hashes=True))"
            )
        backbones = [str(member.get("backbone") or "unknown") for member in members]
        if len(members) == 1:
            return cls(name=backbones[0], version=__version__, checkpoint_sha256=hashes[0])
        combined = hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()
        kinds = ", ".join(dict.fromkeys(backbones))
        return cls(
            name=f"ensemble of {len(members)} ({kinds})",
            version=__version__,
            checkpoint_sha256=combined,
            members=tuple(hashes),
        )

    @property
    def device_uid(self) -> str:
        """A UID for this exact model (same checkpoint bytes and medft version, same UID)."""
        return generate_uid(entropy_srcs=["medft", self.version, self.checkpoint_sha256])

    def describe(self) -> str:
        """``medft 0.1.0 tf_efficientnet_lite0 ckpt ab12cd34ef56`` (SHA-256 prefix)."""
        return f"medft {self.version} {self.name} ckpt {self.checkpoint_sha256[:12]}"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (the Predictor's checkpoint hash, so both name it alike)."""
    return checkpoint_sha256(path)


def read_source(path: str | Path) -> Dataset:
    """The source image's header (no pixel data), with empty Type 2 patient/study fields added.

    Raises:
        DicomReadError: the file is not DICOM, or lacks the UIDs a result must reference.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError) as exc:
        raise DicomReadError(f"{path}: not a readable DICOM file ({exc})") from None
    missing = [keyword for keyword in _REQUIRED_UIDS if not ds.get(keyword)]
    if missing:
        raise DicomReadError(
            f"{path}: cannot file a result next to this image: it has no {', '.join(missing)}"
        )
    if "Rows" not in ds or "Columns" not in ds:
        raise DicomReadError(f"{path}: not an image (no Rows/Columns); no result written")
    for keyword in _TYPE2_KEYWORDS:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def result_uid(*parts: Any) -> UID:
    """A UID derived from ``parts`` (the same parts give the same UID: re-runs replace)."""
    return generate_uid(entropy_srcs=["medft-results", *map(str, parts)])


def series_identity(
    kind: str,
    source: Dataset,
    model: ModelInfo,
    content_key: Any,
    series_number: int,
) -> dict[str, Any]:
    """Keyword arguments every result object shares: series, instance and device identity.

    ``kind`` (``"sr"`` or ``"sc"``) keeps the two result series apart; the UIDs derive from
    the source, the checkpoint and the content, so a re-run replaces instead of duplicating.
    """
    return {
        "series_instance_uid": result_uid(
            f"{kind}-series", source.StudyInstanceUID, model.checkpoint_sha256
        ),
        "series_number": series_number,
        "sop_instance_uid": result_uid(
            kind, source.SOPInstanceUID, model.checkpoint_sha256, content_key
        ),
        "instance_number": int(source.get("InstanceNumber") or 1),
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": model.name[:64],
        "software_versions": f"medft {model.version}",
        "series_description": f"{RESEARCH_BANNER} medft"[:64],
    }


def check_findings(findings: Sequence[FindingResult]) -> list[FindingResult]:
    """At least one finding, names unique; returns them as a list."""
    findings = list(findings)
    if not findings:
        raise ConfigError("a DICOM result needs at least one finding")
    names = [f.finding for f in findings]
    if len(set(names)) != len(names):
        raise ConfigError(f"finding names repeat: {names}")
    return findings
