"""`medft send`: results stored in a real PACS (Orthanc) and read back; refusals reported."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medft.cli import main
from medft.errors import ConfigError, PacsError
from medft.results import (
    FindingResult,
    ModelInfo,
    parse_destination,
    read_sr,
    render_capture,
    send_results,
    write_results,
)

MODEL = ModelInfo(name="test_resnet", version="0.1.0", checkpoint_sha256="0f" * 32)
FINDINGS = [FindingResult("abnormal", 0.75, 0.4, True), FindingResult("effusion", 0.25, 0.3, False)]


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, dict]:
    """Two synthetic images' SRs and captures: (folder, ResultFiles, overlays by id)."""
    from medft.data.synth import synthesize

    root = tmp_path_factory.mktemp("send")
    synthesize(root / "synth", 2, size=64, seed=11, patient_info=True, workers=1)
    out = root / "dicom-out"
    written, overlays = [], {}
    for i, path in enumerate(sorted((root / "synth").rglob("*.dcm"))):
        rng = np.random.default_rng(i)
        overlay = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        name = f"{i:04d}_abcdef"
        overlays[name] = overlay
        written.append(
            write_results(
                path,
                FINDINGS,
                MODEL,
                out,
                name=name,
                overlays={"abnormal": overlay},
                method="gradcam",
            )
        )
    return out, written, overlays


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_destinations_parse_and_hide_credentials():
    web = parse_destination("https://user:s%40cret@pacs.example.org:8443/dicom-web/")
    assert (web.protocol, web.url, web.username, web.password) == (
        "dicomweb",
        "https://pacs.example.org:8443/dicom-web",
        "user",
        "s@cret",
    )
    assert "cret" not in web.display
    dimse = parse_destination("dicom://ORTHANC@10.0.0.5:4242")
    assert (dimse.protocol, dimse.called_aet, dimse.host, dimse.port) == (
        "dimse",
        "ORTHANC",
        "10.0.0.5",
        4242,
    )
    for bad in ("ftp://x", "dicom://host:4242", "dicom://A@host", "dicom://" + "A" * 17 + "@h:1"):
        with pytest.raises(ConfigError, match="--to"):
            parse_destination(bad)


def test_unreachable_pacs_is_retried_then_a_clear_error(results_dir, tmp_path):
    out, _, _ = results_dir
    port = _closed_port()
    report = tmp_path / "report.json"
    with pytest.raises(PacsError, match=r"nothing was stored.*unreachable after 2 attempts"):
        send_results(
            out, f"http://127.0.0.1:{port}/dicom-web", retries=2, backoff=0.01, report_path=report
        )
    rows = json.loads(report.read_text())["rows"]
    assert len(rows) == 4 and {row["status"] for row in rows} == {"failed"}
    assert rows[0]["attempts"] == 2 and rows[1]["detail"].startswith("not sent")
    with pytest.raises(PacsError, match="unreachable after 2 attempts"):
        send_results(out, f"dicom://ANY@127.0.0.1:{port}", retries=2, backoff=0.01)


def test_a_partly_refused_send_is_reported_file_by_file(results_dir, tmp_path, capsys):
    """A DIMSE node that takes SRs but not Secondary Captures: no silent partial success."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ComprehensiveSRStorage

    out, _, _ = results_dir
    received = []

    def on_store(event):
        received.append(event.dataset.SOPInstanceUID)
        return 0x0000

    scp = AE(ae_title="SRONLY")
    scp.add_supported_context(ComprehensiveSRStorage)
    port = _closed_port()
    server = scp.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        report = send_results(out, f"dicom://SRONLY@127.0.0.1:{port}", retries=1)
        code = main(
            [
                "send",
                str(out),
                "--to",
                f"dicom://SRONLY@127.0.0.1:{port}",
                "--report",
                str(tmp_path / "r.json"),
            ]
        )
    finally:
        server.shutdown()
    assert (report.stored, report.failed, report.ok) == (2, 2, False)
    by_status = {row["file"]: row for row in report.rows}
    assert all(
        by_status[name]["status"] == "stored" for name in by_status if name.endswith("_sr.dcm")
    )
    refused = [row for row in report.rows if row["file"].endswith("_sc.dcm")]
    assert all("does not accept Secondary Capture" in row["detail"] for row in refused)
    assert len(received) == 4  # the library call and the CLI each stored the two SRs
    printed = capsys.readouterr().out
    assert (
        code == 1
        and "stored 2 of 4 files" in printed
        and "FAILED 0000_abcdef_abnormal_sc.dcm" in printed
    )


def test_stow_rs_round_trip_through_orthanc(results_dir, empty_orthanc):
    """STOW-RS → QIDO-RS → WADO-RS: what comes back equals what was written."""
    from dicomweb_client.api import DICOMwebClient

    out, written, overlays = results_dir
    report = send_results(out, empty_orthanc.dicomweb_url)
    assert report.ok and report.stored == 4, report.format()

    client = DICOMwebClient(url=empty_orthanc.dicomweb_url)
    found = client.search_for_instances(search_filters={"Modality": "SR"})
    assert len(found) == 2
    for result in written:
        local_sr = pydicom.dcmread(out / result.sr)
        local_sc = pydicom.dcmread(out / result.captures[0])
        study = local_sr.StudyInstanceUID
        instances = client.search_for_instances(study_instance_uid=study)
        uids = {pydicom.Dataset.from_json(item).SOPInstanceUID for item in instances}
        assert uids == {local_sr.SOPInstanceUID, local_sc.SOPInstanceUID}

        sr = client.retrieve_instance(study, local_sr.SeriesInstanceUID, local_sr.SOPInstanceUID)
        back = read_sr(sr)
        assert [(f.finding, f.probability, f.threshold, f.positive) for f in back] == [
            (f.finding, f.probability, f.threshold, f.positive) for f in FINDINGS
        ]
        evidence = local_sr.CurrentRequestedProcedureEvidenceSequence[0]
        series = evidence.ReferencedSeriesSequence[0]
        source_uid = series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        assert all(f.referenced_sop_instance_uids == (source_uid,) for f in back)

        sc = client.retrieve_instance(study, local_sc.SeriesInstanceUID, local_sc.SOPInstanceUID)
        overlay = overlays[result.id]
        layout = render_capture(overlay, ["x"])
        enlarged = np.repeat(np.repeat(overlay, layout.scale, 0), layout.scale, 1)
        area = sc.pixel_array[layout.top : layout.top + enlarged.shape[0], : enlarged.shape[1]]
        np.testing.assert_array_equal(area, enlarged)


def test_c_store_to_orthanc_and_a_refused_association(results_dir, empty_orthanc):
    out, _, _ = results_dir
    report = send_results(out, empty_orthanc.dimse_url)
    assert report.ok and report.stored == 4
    assert len(empty_orthanc.get_json("/instances")) == 4

    wrong = empty_orthanc.dimse_url.replace("MEDFTPACS@", "NOTTHEPACS@")
    with pytest.raises(PacsError, match=r"refused the association.*Called AE title not recognised"):
        send_results(out, wrong, retries=3, backoff=0.01)


def test_http_error_status_is_named(results_dir, orthanc):
    out, _, _ = results_dir
    with pytest.raises(PacsError, match=r"nothing was stored.*HTTP 404"):
        send_results(out, f"{orthanc.rest_url}/no-such-root", retries=1)
