"""The model's findings for one image as a DICOM Comprehensive SR (TID 1500 measurement report).

Layout of the document (highdicom builds and checks it):

- observation context: the model as a *device observer* (TID 1004): UID derived from the
  checkpoint's SHA-256, name ``medft <backbone>``, model name = backbone, serial number =
  the checkpoint's SHA-256;
- procedure reported: SNOMED CT 363680008 "Radiographic imaging procedure";
- one measurement group (TID 1501) per finding, referencing the source image by SOP
  Instance UID, with

  - the finding (a code of medft's private scheme ``99MEDFT`` named after the label),
  - the algorithm (TID 4019): name, medft version, and parameters (checkpoint SHA-256,
    threshold source, whether the probability is calibrated),
  - two numeric measurements (unit: UCUM ``1``): the probability (*Calibrated probability*,
    or *Probability (not calibrated)* when the checkpoint has no temperature) and the
    threshold,
  - one qualitative evaluation: the finding, *Present* or *Absent* (the call).

The document is marked PARTIAL / PRELIMINARY / UNVERIFIED and its series description starts
with ``RESEARCH USE ONLY - NOT FOR DIAGNOSIS``: no one accountable has signed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from medft._io import atomic_path
from medft.errors import DicomReadError
from medft.results.common import (
    CODING_SCHEME,
    MANUFACTURER,
    FindingResult,
    ModelInfo,
    check_findings,
    read_source,
    result_uid,
    series_identity,
)

__all__ = ["SR_SERIES_NUMBER", "SrFinding", "build_sr", "read_sr", "write_sr"]

#: Series number of medft's SR series (captures use 9902); high, out of a modality's way.
SR_SERIES_NUMBER = 9901

_CALIBRATED = hd.sr.CodedConcept("PROBCAL", CODING_SCHEME, "Calibrated probability")
_UNCALIBRATED = hd.sr.CodedConcept("PROB", CODING_SCHEME, "Probability (not calibrated)")
_THRESHOLD = hd.sr.CodedConcept("THRESH", CODING_SCHEME, "Operating point threshold")
_UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
_PROCEDURE = hd.sr.CodedConcept("363680008", "SCT", "Radiographic imaging procedure")


@dataclass(frozen=True)
class SrFinding:
    """One finding as read back from an SR written by :func:`write_sr`.

    Attributes:
        finding: the finding's name.
        probability: the probability stored in the report.
        calibrated: whether it is the calibrated probability (temperature-scaled).
        threshold: the operating point stored in the report.
        positive: the call (*Present* = True).
        referenced_sop_instance_uids: the images the finding's group references.
        algorithm_parameters: the algorithm's parameter strings (checkpoint hash, ...).
    """

    finding: str
    probability: float
    calibrated: bool
    threshold: float
    positive: bool
    referenced_sop_instance_uids: tuple[str, ...]
    algorithm_parameters: tuple[str, ...]


def finding_concept(name: str) -> hd.sr.CodedConcept:
    """The private code of a finding name (value = the name, up to 64 characters)."""
    return hd.sr.CodedConcept(name[:64], CODING_SCHEME, name[:64])


def build_sr(
    source: Dataset,
    findings: Sequence[FindingResult],
    model: ModelInfo,
) -> hd.sr.ComprehensiveSR:
    """The SR document for one source image header (see the module docstring for its layout).

    Args:
        source: the source image's header, from :func:`medft.results.common.read_source`.
        findings: one result per finding.
        model: the model that made them.
    """
    findings = check_findings(findings)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=model.device_uid,
        name=f"medft {model.name}"[:64],
        manufacturer_name=MANUFACTURER,
        model_name=model.name[:64],
        serial_number=model.checkpoint_sha256,
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=device,
        )
    )
    groups = []
    for result in findings:
        algorithm = hd.sr.AlgorithmIdentification(
            name=f"medft {model.name}"[:64],
            version=model.version,
            parameters=[
                f"checkpoint sha256 {model.checkpoint_sha256}",
                *(f"member checkpoint sha256 {member}" for member in model.members),
                f"threshold source {result.threshold_source}",
                f"probability calibrated {'yes' if result.calibrated else 'no'}",
            ],
        )
        concept = finding_concept(result.finding)
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=result_uid(
                        "track", source.SOPInstanceUID, model.checkpoint_sha256, result.finding
                    ),
                    identifier=f"medft {result.finding}"[:64],
                ),
                finding_type=concept,
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(
                        name=_CALIBRATED if result.calibrated else _UNCALIBRATED,
                        value=float(result.probability),
                        unit=_UNITLESS,
                    ),
                    hd.sr.Measurement(
                        name=_THRESHOLD, value=float(result.threshold), unit=_UNITLESS
                    ),
                ],
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(
                        name=concept,
                        value=codes.SCT.Present if result.positive else codes.SCT.Absent,
                    )
                ],
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=_PROCEDURE,
        imaging_measurements=groups,
    )
    content_key = [
        (r.finding, repr(r.probability), repr(r.threshold), r.positive) for r in findings
    ]
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report[0],
        **series_identity("sr", source, model, content_key, SR_SERIES_NUMBER),
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    return sr


def write_sr(
    source_path: str | Path,
    findings: Sequence[FindingResult],
    model: ModelInfo,
    out_path: str | Path,
) -> Path:
    """Write the SR for the DICOM image at ``source_path`` to ``out_path`` (atomically).

    Args:
        source_path: the DICOM image the findings describe.
        findings: one :class:`~medft.results.common.FindingResult` per finding.
        model: the model (name, version, checkpoint SHA-256), see
            :meth:`~medft.results.common.ModelInfo.from_checkpoint`.
        out_path: the ``.dcm`` file to write.

    Returns:
        ``out_path``.

    Raises:
        DicomReadError: ``source_path`` is not a DICOM image a result can reference.
    """
    findings = check_findings(findings)  # before touching the file: cheap errors first
    sr = build_sr(read_source(source_path), findings, model)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    return out_path


def read_sr(source: str | Path | Dataset) -> list[SrFinding]:
    """The findings of an SR written by :func:`write_sr` (a file or a parsed dataset).

    Raises:
        DicomReadError: the file is not a TID 1500 report with medft's measurement groups.
    """
    import pydicom

    name = str(source) if not isinstance(source, Dataset) else "dataset"
    ds = source if isinstance(source, Dataset) else pydicom.dcmread(source)
    try:
        content = hd.sr.ComprehensiveSR.from_dataset(ds).content
        groups = hd.sr.MeasurementReport.from_sequence(content).get_image_measurement_groups()
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomReadError(f"{name}: not a medft measurement report ({exc})") from None
    found = []
    for group in groups:
        values = {m.name.value: float(m.value) for m in group.get_measurements()}
        evaluations = group.get_qualitative_evaluations()
        calibrated = _CALIBRATED.value in values
        probability = values.get(_CALIBRATED.value, values.get(_UNCALIBRATED.value))
        if probability is None or not evaluations:
            continue
        concept = group.finding_type
        parameters = [
            item.TextValue
            for item in group[0].ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue == "111002"  # Algorithm Parameters
        ]
        found.append(
            SrFinding(
                finding=concept.meaning if concept is not None else evaluations[0].name.meaning,
                probability=probability,
                calibrated=calibrated,
                threshold=values.get(_THRESHOLD.value, float("nan")),
                positive=evaluations[0].value == codes.SCT.Present,
                referenced_sop_instance_uids=tuple(
                    image.referenced_sop_instance_uid for image in group.source_images
                ),
                algorithm_parameters=tuple(parameters),
            )
        )
    return found
