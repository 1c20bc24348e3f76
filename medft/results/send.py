"""Store written DICOM results in a PACS: DICOMweb STOW-RS or DIMSE C-STORE, with retries.

``medft send DIR --to URL`` stores every ``*.dcm`` under DIR and reports, file by file,
what the PACS said. Nothing is silently half-done: :class:`SendReport` lists every file as
``stored`` or ``failed`` with the reason, and the command exits non-zero when any failed.

Destinations:

- ``http(s)://host:port/dicom-web`` (the DICOMweb root; ``user:password@`` in the URL is
  sent as HTTP basic authentication and never printed): one STOW-RS request per file;
- ``dicom://AET@host:port``: one DIMSE association (calling AE title ``--aet``, default
  ``MEDFT``) carrying a C-STORE per file.

Connection failures and HTTP 408/429/503/504 are retried with exponential back-off; a
refused association, another HTTP status, or a failure status from the PACS is reported
as it is, with the server's words where it gives any.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medft._io import write_json
from medft.errors import ConfigError, PacsError

__all__ = ["SendReport", "collect_results", "parse_destination", "send_results"]

_RETRIABLE_HTTP = (408, 429, 503, 504)


@dataclass
class SendReport:
    """What happened to each file of one ``medft send``.

    Attributes:
        destination: the PACS, without credentials.
        protocol: ``dicomweb`` or ``dimse``.
        rows: one dict per file: ``file`` (relative to the folder sent), ``sop_class``,
            ``status`` (``stored`` / ``failed``), ``detail`` (the PACS's words), ``attempts``.
    """

    destination: str
    protocol: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stored(self) -> int:
        """Number of files the PACS confirmed."""
        return sum(row["status"] == "stored" for row in self.rows)

    @property
    def failed(self) -> int:
        """Number of files not stored."""
        return len(self.rows) - self.stored

    @property
    def ok(self) -> bool:
        """True when every file was stored."""
        return bool(self.rows) and self.failed == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary and rows (no patient data: file names and SOP class names)."""
        return {
            "destination": self.destination,
            "protocol": self.protocol,
            "n_files": len(self.rows),
            "stored": self.stored,
            "failed": self.failed,
            "rows": self.rows,
        }

    def format(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"stored {self.stored} of {len(self.rows)} files in {self.destination} "
            f"({self.protocol})"
        ]
        for row in self.rows:
            if row["status"] != "stored":
                lines.append(f"  FAILED {row['file']}: {row['detail']}")
        if self.failed:
            lines.append(f"{self.failed} files were NOT stored; nothing was retried after this")
        return "\n".join(lines)


@dataclass(frozen=True)
class Destination:
    """A parsed ``--to`` URL (credentials kept out of :attr:`display`)."""

    protocol: str  # "dicomweb" or "dimse"
    url: str = ""  # dicomweb: the root URL without credentials
    username: str | None = None
    password: str | None = None
    host: str = ""
    port: int = 0
    called_aet: str = ""

    @property
    def display(self) -> str:
        """The destination as it may be printed and logged."""
        if self.protocol == "dicomweb":
            return self.url
        return f"dicom://{self.called_aet}@{self.host}:{self.port}"


def parse_destination(url: str) -> Destination:
    """``http(s)://[user:pass@]host[:port]/root`` or ``dicom://AET@host:port``.

    Raises:
        ConfigError: any other form, naming what was expected.
    """
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ConfigError(f"--to {url!r}: no host in the DICOMweb URL")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        clean = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))
        return Destination(
            protocol="dicomweb",
            url=clean,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )
    if parts.scheme == "dicom":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.username or not parts.hostname or not port:
            raise ConfigError(
                f"--to {url!r}: a DIMSE destination is dicom://CALLED_AET@host:port "
                "(e.g. dicom://ORTHANC@pacs.example.org:4242)"
            )
        aet = unquote(parts.username)
        if len(aet) > 16:
            raise ConfigError(f"--to {url!r}: AE title {aet!r} is longer than 16 characters")
        return Destination(protocol="dimse", host=parts.hostname, port=port, called_aet=aet)
    raise ConfigError(
        f"--to {url!r}: expected a DICOMweb root (http://host:port/dicom-web) or a DIMSE "
        "address (dicom://AET@host:port)"
    )


def collect_results(folder: str | Path) -> list[Path]:
    """Every ``*.dcm`` file under ``folder`` (recursive, sorted; hidden files skipped)."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder")
    files = [
        path
        for path in sorted(root.rglob("*.dcm"))
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(root).parts)
    ]
    if not files:
        raise ConfigError(f"{root}: no .dcm files to send")
    return files


def send_results(
    folder: str | Path,
    to: str,
    *,
    calling_aet: str = "MEDFT",
    retries: int = 3,
    backoff: float = 0.5,
    timeout: float = 30.0,
    report_path: str | Path | None = None,
) -> SendReport:
    """Store every DICOM file under ``folder`` in the PACS at ``to``; report each file.

    Args:
        folder: a folder of results (e.g. written by :func:`medft.results.write_results`).
        to: ``http(s)://host:port/dicom-web`` (STOW-RS) or ``dicom://AET@host:port``
            (C-STORE).
        calling_aet: our AE title for DIMSE.
        retries: attempts per request (connection failures, HTTP 408/429/503/504).
        backoff: first wait between attempts in seconds (doubles each time).
        timeout: seconds per request / network operation.
        report_path: also write the report as JSON here.

    Returns:
        The report; ``report.ok`` is False when any file was not stored.

    Raises:
        PacsError: nothing was stored: the PACS could not be reached after ``retries``
            attempts, refused the association, or refused every file (the report is
            still written to ``report_path`` first).
        ConfigError: a bad ``to`` or an empty folder.
    """
    if retries < 1:
        raise ConfigError(f"--retries must be at least 1; got {retries}")
    destination = parse_destination(to)
    root = Path(folder)
    files = collect_results(root)
    datasets = []
    for path in files:
        try:
            datasets.append(pydicom.dcmread(path))
        except (InvalidDicomError, OSError, ValueError) as exc:
            raise PacsError(f"{path}: not a readable DICOM file, nothing sent ({exc})") from None
    names = [path.relative_to(root).as_posix() for path in files]
    report = SendReport(destination=destination.display, protocol=destination.protocol)
    if destination.protocol == "dicomweb":
        _send_dicomweb(destination, names, datasets, report, retries, backoff, timeout)
    else:
        _send_dimse(destination, names, datasets, report, calling_aet, retries, backoff, timeout)
    if report_path is not None:
        write_json(report_path, report.to_dict())
    if report.stored == 0:
        raise PacsError(
            f"{destination.display}: nothing was stored ({len(report.rows)} files); "
            f"first answer: {report.rows[0]['detail']}"
        )
    return report


# --------------------------------------------------------------------------- DICOMweb


def _send_dicomweb(
    destination: Destination,
    names: Sequence[str],
    datasets: Sequence[Dataset],
    report: SendReport,
    retries: int,
    backoff: float,
    timeout: float,
) -> None:
    import requests
    from dicomweb_client.api import DICOMwebClient
    from retrying import RetryError

    session = requests.Session()
    if destination.username is not None:
        session.auth = (destination.username, destination.password or "")
    client = DICOMwebClient(url=destination.url, session=session, timeout=timeout)
    client.set_http_retry_params(
        retry=True,
        max_attempts=retries,
        wait_exponential_multiplier=max(1, int(backoff * 1000)),
        retriable_error_codes=_RETRIABLE_HTTP,  # type: ignore[arg-type]
    )
    for number, (name, ds) in enumerate(zip(names, datasets, strict=True)):
        row = _row(name, ds)
        try:
            answer, row["attempts"] = _with_retries(
                lambda ds=ds: client.store_instances([ds]),
                retries,
                backoff,
                retry_on=(requests.ConnectionError, requests.Timeout),
                what=f"DICOMweb server {destination.display}",
            )
        except requests.HTTPError as exc:
            row.update(status="failed", detail=_http_detail(exc))
        except RetryError as exc:
            response = getattr(getattr(exc, "last_attempt", None), "value", None)
            status = getattr(response, "status_code", "?")
            row.update(status="failed", detail=f"HTTP {status} after {retries} attempts")
        except PacsError as exc:  # unreachable: the rest are not attempted
            row.update(status="failed", detail=str(exc), attempts=retries)
            report.rows.append(row)
            for rest_name, rest in zip(names[number + 1 :], datasets[number + 1 :], strict=True):
                report.rows.append(_row(rest_name, rest) | {"detail": "not sent: " + str(exc)})
            break
        else:
            row.update(_stow_outcome(answer, ds))
        report.rows.append(row)


def _http_detail(exc: Any) -> str:
    response = getattr(exc, "response", None)
    if response is None:
        return f"HTTP error ({exc})"
    text = (response.text or "").strip().replace("\n", " ")[:300]
    return f"HTTP {response.status_code} {response.reason}" + (f": {text}" if text else "")


def _stow_outcome(answer: Dataset, ds: Dataset) -> dict[str, Any]:
    """Read the STOW-RS response: the instance must be in ReferencedSOPSequence."""
    failed = answer.get("FailedSOPSequence") or []
    for item in failed:
        if item.get("ReferencedSOPInstanceUID") == ds.SOPInstanceUID:
            reason = item.get("FailureReason")
            return {"status": "failed", "detail": f"PACS refused it (failure reason {reason})"}
    stored = answer.get("ReferencedSOPSequence") or []
    if any(item.get("ReferencedSOPInstanceUID") == ds.SOPInstanceUID for item in stored):
        warning = next(
            (item.get("WarningReason") for item in stored if "WarningReason" in item), None
        )
        detail = "stored" if warning is None else f"stored with warning {warning}"
        return {"status": "stored", "detail": detail}
    return {"status": "failed", "detail": "the STOW-RS answer does not list this instance"}


# --------------------------------------------------------------------------- DIMSE


def _send_dimse(
    destination: Destination,
    names: Sequence[str],
    datasets: Sequence[Dataset],
    report: SendReport,
    calling_aet: str,
    retries: int,
    backoff: float,
    timeout: float,
) -> None:
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    contexts = sorted(
        {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    )
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax])

    def associate():
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.called_aet)
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            primitive = getattr(assoc.acceptor, "primitive", None)
            reason = getattr(primitive, "reason_str", "no reason given")
            result = getattr(primitive, "result_str", "rejected")
            raise PacsError(
                f"{destination.display} refused the association ({result}: {reason}); check "
                f"the called AE title {destination.called_aet!r} and that the PACS knows our "
                f"AE title {calling_aet!r}"
            )
        raise ConnectionError(f"no association with {destination.display}")

    try:
        assoc, _attempts = _with_retries(
            associate,
            retries,
            backoff,
            retry_on=(ConnectionError,),
            what=f"DICOM node {destination.display}",
        )
    except PacsError as exc:
        rows = zip(names, datasets, strict=True)
        report.rows += [_row(name, ds) | {"detail": str(exc)} for name, ds in rows]
        return
    try:
        accepted = {ctx.abstract_syntax for ctx in assoc.accepted_contexts}
        for name, ds in zip(names, datasets, strict=True):
            row = _row(name, ds)
            if str(ds.SOPClassUID) not in accepted:
                row.update(status="failed", detail=f"the PACS does not accept {row['sop_class']}")
            elif not assoc.is_established:
                row.update(status="failed", detail="the association ended before this file")
            else:
                row.update(_c_store_outcome(assoc.send_c_store(ds)))
            report.rows.append(row)
    finally:
        if assoc.is_established:
            assoc.release()


def _c_store_outcome(status: Dataset) -> dict[str, Any]:
    if "Status" not in status:
        return {"status": "failed", "detail": "no answer to C-STORE (timeout or abort)"}
    code = int(status.Status)
    comment = str(status.get("ErrorComment", "")).strip()
    suffix = f": {comment}" if comment else ""
    if code == 0x0000:
        return {"status": "stored", "detail": "stored"}
    if code in (0xB000, 0xB006, 0xB007):
        return {"status": "stored", "detail": f"stored with warning 0x{code:04X}{suffix}"}
    return {"status": "failed", "detail": f"C-STORE status 0x{code:04X}{suffix}"}


# --------------------------------------------------------------------------- shared


def _row(name: str, ds: Dataset) -> dict[str, Any]:
    return {
        "file": name,
        "sop_class": getattr(ds.SOPClassUID, "name", str(ds.SOPClassUID)),
        "status": "failed",
        "detail": "",
        "attempts": 1,
    }


def _with_retries(
    call: Callable[[], Any],
    retries: int,
    backoff: float,
    *,
    retry_on: tuple[type[BaseException], ...],
    what: str,
) -> tuple[Any, int]:
    """``call()`` up to ``retries`` times on ``retry_on`` errors; (result, attempts)."""
    for attempt in range(1, retries + 1):
        try:
            return call(), attempt
        except retry_on as exc:
            if attempt == retries:
                raise PacsError(
                    f"{what}: unreachable after {retries} attempts ({_first_line(exc)})"
                ) from None
            time.sleep(backoff * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
