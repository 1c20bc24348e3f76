"""Tests for medft.demo: the inference service, the page's views, safety, and the served app.

A tiny multi-label checkpoint (timm ``test_efficientnet``, random init, 64 px) is trained
once per session on a few synthetic DICOMs; the app is started on a free local port and
driven with ``gradio_client`` like a browser would.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image

from medft.cli import parse_args
from medft.data.dicom import load_image
from medft.demo.examples import read_examples, synthesize_examples
from medft.demo.modelcard import load_metrics, model_card
from medft.demo.server import (
    NO_MODEL_MESSAGE,
    DemoServer,
    find_quickstart_checkpoint,
    start_demo,
)
from medft.demo.service import InferenceService, shrink
from medft.demo.settings import DemoSettings, parse_auth
from medft.demo.uploads import (
    UploadInbox,
    display_name,
    is_inside,
    read_limited,
    refuse_unsupported,
    user_message,
)
from medft.demo.views import (
    BatchEntry,
    batch_table,
    findings_table,
    headline,
    metadata_table,
    resolve_window,
    slider_setup,
    window_choices,
    write_predictions_csv,
)
from medft.errors import ConfigError, DicomReadError

LABELS = ["abnormal", "nodule", "opacity", "effusion"]
MARKERS = {
    "PatientName": "ZZMARKER^PHINAME",
    "PatientID": "ZZMARKERPID4711",
    "AccessionNumber": "ZZMARKERACC99",
    "InstitutionName": "ZZMARKER INSTITUTE",
    "ReferringPhysicianName": "ZZMARKER^DOCTOR",
    "PatientBirthDate": "19010203",
    "StudyDate": "19020304",
}
MARKER_STRINGS = [*MARKERS.values(), "ZZMARKER", "PHINAME", "19010203", "19020304"]


# --------------------------------------------------------------------------- fixtures


def train_tiny_checkpoint(out: Path) -> tuple[Path, Path]:
    """Fine-tune test_efficientnet (random init, 64 px) for one epoch; (checkpoint, data dir)."""
    from medft.data.synth import synthesize
    from medft.lightning_cli import run_lightning
    from medft.quickstart import recipe_path

    data = synthesize(out / "data", 20, size=96, seed=0, workers=1)
    args = [
        "--config", str(recipe_path()),
        "--data.manifest", str(data.labels_csv),
        "--data.labels", f"[{', '.join(LABELS)}]",
        "--data.image_size", "64",
        "--data.batch_size", "8",
        "--data.num_workers", "0",
        "--model.backbone", "test_efficientnet",
        "--model.pretrained", "false",
        "--trainer.default_root_dir", str(out / "run"),
        "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    cli = run_lightning("fit", args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    best = cli.trainer.checkpoint_callback.best_model_path or str(out / "run/checkpoints/last.ckpt")
    return Path(best), out / "data"


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train_tiny_checkpoint(tmp_path_factory.mktemp("demo-train"))


@pytest.fixture(scope="session")
def checkpoint(trained: tuple[Path, Path]) -> Path:
    return trained[0]


@pytest.fixture(scope="session")
def dicoms(trained: tuple[Path, Path]) -> list[Path]:
    return sorted((trained[1] / "images").rglob("*.dcm"))


@pytest.fixture(scope="session")
def service(checkpoint: Path) -> InferenceService:
    return InferenceService.from_checkpoint(checkpoint, max_bytes=2 * 2**20)


@pytest.fixture(scope="session")
def phi_dicom(dicoms: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic DICOM carrying marker strings in every identifying field."""
    ds = pydicom.dcmread(dicoms[0])
    for keyword, value in MARKERS.items():
        setattr(ds, keyword, value)
    path = tmp_path_factory.mktemp("phi") / "phi-case.dcm"
    ds.save_as(path)
    return path


def _dataset_like(template: Path, pixels: np.ndarray, photometric: str) -> bytes:
    ds = pydicom.dcmread(template)
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.set_pixel_data(pixels, photometric, bits)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _forward_counter(model: torch.nn.Module) -> tuple[list[int], object]:
    calls = [0]

    def hook(*_: object) -> None:
        calls[0] += 1

    return calls, model.register_forward_hook(hook)


# --------------------------------------------------------------------------- service


def test_predict_on_dicom_matches_medft_predict(service, dicoms, trained):
    """Same file, same probabilities as `medft predict` (same preprocessing and thresholds)."""
    from medft.data.manifest import load_manifest
    from medft.eval.predict import predict_manifest

    case = service.analyse_file(dicoms[0])
    assert [c.finding for c in case.findings] == LABELS
    assert all(0.0 <= c.probability <= 1.0 for c in case.findings)
    classifier = service.classifier
    assert [c.threshold for c in case.findings] == [classifier.thresholds[n] for n in LABELS]
    assert case.top.probability == max(c.probability for c in case.findings)

    manifest = load_manifest(trained[1] / "labels.csv", labels=LABELS)
    table = predict_manifest(service.predictor, manifest).table
    row = table[table["path"] == str(dicoms[0].resolve())].iloc[0]
    for call in case.findings:
        assert call.probability == pytest.approx(row[f"prob_{call.finding}"], abs=1e-5)
        assert int(call.positive) == row[f"call_{call.finding}"]


def test_cached_case_and_slider_changes_do_not_rerun_the_model(service, dicoms):
    calls, handle = _forward_counter(service.model)
    try:
        case = service.analyse_file(dicoms[1])
        assert calls[0] == 1
        assert service.analyse_file(dicoms[1]) is case  # same content: cached
        service.overlay(case, "nodule")  # saliency: one more forward pass
        after_saliency = calls[0]
        setup = slider_setup(case)
        service.view_image(case, (setup.center, setup.width / 2))
        service.overlay(case, "effusion", alpha=0.8, window=(setup.center, setup.width / 2))
        service.overlay(case, "abnormal", alpha=0.2)
        assert calls[0] == after_saliency == 2
    finally:
        handle.remove()


def test_window_is_rendered_by_the_reader_from_the_stored_values(service, dicoms):
    case = service.analyse_file(dicoms[2])
    low, high = service.value_range(case)
    window = ((low + high) / 2, (high - low) / 3)
    expected, _ = load_image(dicoms[2].read_bytes(), voi=window)
    np.testing.assert_allclose(service.view_image(case, window), expected, atol=1e-6)
    assert service.view_image(case, None) is case.view
    full = resolve_window(case, "full", 0, 1)
    assert full == pytest.approx(((low + high) / 2, high - low))


def test_saliency_maps_for_every_finding_and_method_are_cached(service, dicoms):
    case = service.analyse_file(dicoms[3])
    maps = service.saliency(case, "gradcam")
    assert set(maps.maps) == set(LABELS)
    assert all(m.shape == case.view.shape for m in maps.maps.values())
    assert service.saliency(case, "gradcam") is maps
    overlay = service.overlay(case, "opacity", method="hirescam", alpha=1.0)
    assert overlay.shape == (*case.view.shape, 3) and overlay.dtype == np.uint8
    with pytest.raises(ConfigError, match="method must be one of"):
        service.saliency(case, "magic")
    with pytest.raises(ConfigError, match="unknown finding"):
        service.overlay(case, "fracture")


def test_big_image_is_shown_at_view_size(service, dicoms):
    ds = pydicom.dcmread(dicoms[0])
    big = np.kron(ds.pixel_array, np.ones((12, 12), dtype=ds.pixel_array.dtype))  # 1152 px
    small_view = InferenceService(service.classifier, view_size=256)
    case = small_view.analyse_bytes(_dataset_like(dicoms[0], big, ds.PhotometricInterpretation))
    assert case.meta.original_shape == big.shape
    assert max(case.view.shape) == 256
    assert small_view.overlay(case, "abnormal").shape == (256, 256, 3)


def test_corrupt_file_gives_a_clear_message(service, corpus_dir):
    for name, expected in [
        ("random_bytes.dcm", "neither a DICOM file nor a PNG, JPEG or TIFF"),
        ("truncated_pixeldata_native.dcm", "truncated"),
        ("zero_bytes.dcm", "empty"),
    ]:
        with pytest.raises(DicomReadError) as info:
            service.analyse_file(corpus_dir / "corrupt" / name)
        message = user_message(info.value)
        assert expected in message
        assert not message.startswith(("<bytes>", "/"))


def test_huge_file_is_refused_before_reading(service, tmp_path):
    huge = tmp_path / "huge.dcm"
    with huge.open("wb") as fh:
        fh.truncate(50 * 2**20)  # sparse: 50 MB claimed, nothing allocated
    with pytest.raises(DicomReadError, match="larger than the limit of 2 MB"):
        service.analyse_file(huge)
    with pytest.raises(DicomReadError, match="larger than the limit"):
        service.analyse_bytes(b"\0" * (2 * 2**20 + 1))


def test_multiframe_and_colour_dicoms_are_refused_colour_png_is_noted(service, dicoms):
    gray = pydicom.dcmread(dicoms[0]).pixel_array
    frames = np.stack([gray, gray])
    with pytest.raises(DicomReadError, match="2 frames"):
        service.analyse_bytes(_dataset_like(dicoms[0], frames, "MONOCHROME2"))
    rgb = np.stack([gray.astype(np.uint8)] * 3, axis=-1)
    with pytest.raises(DicomReadError, match="colour image"):
        service.analyse_bytes(_dataset_like(dicoms[0], rgb, "RGB"))
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    case = service.analyse_bytes(png.getvalue())
    assert case.notes and "grayscale" in case.notes[0]
    assert "Note:" in headline(case)


def test_refuse_unsupported_keeps_grayscale(service, dicoms):
    case = service.analyse_file(dicoms[0])
    assert refuse_unsupported(case.meta) == []


def test_no_patient_data_in_anything_the_page_shows(service, phi_dicom, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="medft")
    case = service.analyse_file(phi_dicom)
    entries = [BatchEntry(display_name("scan.dcm", "file 1"), case)]
    csv = write_predictions_csv(tmp_path / "predictions.csv", entries, service.labels)
    shown = [
        findings_table(case).to_csv(),
        metadata_table(case).to_csv(),
        headline(case),
        batch_table(entries, service.labels).to_csv(),
        csv.read_text(),
        json.dumps(window_choices(case)),
        caplog.text,
    ]
    for text in shown:
        for marker in MARKER_STRINGS:
            assert marker not in text
    fields = set(metadata_table(case)["Field"])
    assert {"Modality", "View position", "Photometric interpretation"} <= fields
    assert not any("patient" in field.lower() or "age" in field.lower() for field in fields)
    assert case.meta.patient_hash not in "".join(shown)  # the salted ID hash is not shown


def test_cache_stays_within_budget(service, dicoms):
    bounded = InferenceService(service.classifier)
    bounded.cache_bytes = 1  # smaller than any case: only the newest is kept
    for path in dicoms[:4]:
        bounded.analyse_file(path)
    assert len(bounded) == 1
    assert bounded.get(bounded.analyse_file(dicoms[3]).key) is not None


def test_concurrent_requests_give_the_serial_answers(service, dicoms):
    paths = dicoms[:6]
    serial = {p: [c.probability for c in service.analyse_file(p).findings] for p in paths}
    fresh = InferenceService(service.classifier)

    def work(path: Path) -> tuple[Path, list[float], tuple[int, ...]]:
        case = fresh.analyse_file(path)
        overlay = fresh.overlay(case, "nodule", method="gradcam++")
        return path, [c.probability for c in case.findings], overlay.shape

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(work, paths * 3))
    assert len(results) == 18
    for path, probabilities, shape in results:
        assert probabilities == pytest.approx(serial[path], abs=1e-6)
        assert shape[-1] == 3


# --------------------------------------------------------------------------- small pieces


def test_display_name_never_yields_a_path():
    assert display_name("../../etc/passwd", "x") == "passwd"
    assert display_name("C:\\Users\\a\\scan.dcm", "x") == "scan.dcm"
    assert display_name("a\x00b\nc.dcm", "x") == "abc.dcm"
    assert display_name("", "file 3") == "file 3"
    assert len(display_name("n" * 500, "x")) == 80


def test_is_inside_refuses_traversal(tmp_path):
    inside = tmp_path / "up" / "a.dcm"
    inside.parent.mkdir()
    inside.write_bytes(b"x")
    assert is_inside(inside, tmp_path / "up")
    assert not is_inside(tmp_path / "up" / ".." / "other.dcm", tmp_path / "up")
    assert not is_inside("/etc/passwd", tmp_path / "up")


def test_upload_inbox_deletes_on_read_and_serves_repeats_from_memory(tmp_path):
    folder = tmp_path / "uploads"
    upload = folder / "c0ffee" / "scan.dcm"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"DICM-ish")
    inbox = UploadInbox(folder, max_bytes=100)
    assert inbox.take(upload) == b"DICM-ish"
    assert not upload.exists() and not upload.parent.exists()  # deleted with its folder
    assert inbox.take(upload) == b"DICM-ish"  # same upload path again (another request)
    upload.parent.mkdir()
    upload.write_bytes(b"x" * 101)
    for _ in range(2):  # the refusal is remembered too
        with pytest.raises(DicomReadError, match="larger than the limit"):
            inbox.take(upload)
    with pytest.raises(DicomReadError, match="not a file uploaded to this page"):
        inbox.take(tmp_path / "elsewhere.dcm")
    expired = UploadInbox(folder, max_bytes=100, ttl_s=0.0)
    with pytest.raises(DicomReadError, match="no longer available"):
        expired.take(folder / "gone" / "scan.dcm")


def test_read_limited_refuses_empty_and_missing(tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(DicomReadError, match="empty"):
        read_limited(tmp_path / "empty.dcm", 100)
    with pytest.raises(DicomReadError, match="could not be read"):
        read_limited(tmp_path / "missing.dcm", 100)


def test_window_presets_and_sliders(service, dicoms):
    case = next(c for c in map(service.analyse_file, dicoms) if c.meta.window_presets)
    choices = dict((value, label) for label, value in window_choices(case))
    assert {"auto", "full", "custom", "header:0"} <= set(choices)
    center, width = case.meta.window_presets[0]
    assert resolve_window(case, "header:0", 0, 1) == (center, width)
    assert resolve_window(case, "header:9", 0, 1) is None
    assert resolve_window(case, "auto", 0, 1) is None
    assert resolve_window(case, "custom", 5.0, 0.0)[1] > 0
    setup = slider_setup(case)
    assert setup.low <= setup.center <= setup.high and setup.width_min <= setup.width


def test_batch_table_lists_refused_files(service, dicoms):
    entries = [
        BatchEntry("a.dcm", service.analyse_file(dicoms[0])),
        BatchEntry("bad.dcm", None, "not a DICOM file"),
    ]
    table = batch_table(entries, LABELS)
    assert list(table["status"]) == ["ok", "not analysed: not a DICOM file"]
    assert table["call_nodule"].isna().tolist() == [False, True]
    assert {f"prob_{n}" for n in LABELS} <= set(table.columns)


def test_model_card_states_use_data_and_operating_points(service, tmp_path):
    classifier = service.classifier
    card = model_card(classifier)
    assert "Research tool, not for diagnosis" in card
    assert "test_efficientnet" in card
    assert f"{classifier.thresholds['abnormal']:.3f}" in card
    train = classifier.meta["data_summary"]["train"]
    assert f"| train | {train['images']} | {train['patients']} |" in card
    metrics = {
        "n_images": 40,
        "n_patients": 40,
        "bootstrap": {"ci": 0.95},
        "auroc": {"per_class": {"abnormal": {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9}}},
        "at_operating_point": {
            "abnormal": {"sensitivity": {"value": 0.75, "ci_low": 0.5, "ci_high": 0.9}}
        },
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    card = model_card(classifier, load_metrics(tmp_path / "metrics.json"))
    assert "0.800 (0.700–0.900)" in card and "0.750 (0.500–0.900)" in card
    with pytest.raises(ConfigError, match="not found"):
        load_metrics(tmp_path / "nope.json")


def test_find_quickstart_checkpoint_prefers_best(tmp_path):
    assert find_quickstart_checkpoint(tmp_path) is None
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"x")
    assert find_quickstart_checkpoint(tmp_path) == folder / "last.ckpt"
    (folder / "best-03.ckpt").write_bytes(b"x")
    assert find_quickstart_checkpoint(tmp_path) == folder / "best-03.ckpt"


def test_settings_and_auth_parsing():
    assert parse_auth("ann:s3cret:x") == ("ann", "s3cret:x")
    assert parse_auth(None) is None
    with pytest.raises(ConfigError, match="USER:PASSWORD"):
        parse_auth("nopassword")
    with pytest.raises(ConfigError, match="max_file_mb"):
        DemoSettings(max_file_mb=0)
    assert DemoSettings().host == "127.0.0.1"
    assert DemoSettings(max_file_mb=1.5).max_file_bytes == 1572864


def test_cli_has_a_demo_command():
    args = parse_args(["demo", "--port", "0", "--auth", "a:b", "--max-file-mb", "8"])
    assert args.command == "demo"
    assert (args.port, args.auth, args.max_file_mb, args.host) == (0, "a:b", 8.0, "127.0.0.1")


def test_examples_prefer_held_out_cases(tmp_path):
    cases = synthesize_examples(tmp_path / "ex", count=4)
    assert len(cases) == 4 and all(c.path.is_file() for c in cases)
    assert cases[0].title.startswith("Example 1: ")
    last = cases[-1].path
    splits = tmp_path / "splits.csv"
    pd.DataFrame({"path": [str(last)], "split": ["test"]}).to_csv(splits, index=False)
    assert read_examples(tmp_path / "ex", splits_csv=splits, count=1)[0].path == last
    assert read_examples(tmp_path / "missing") == []


def test_an_unexpected_error_becomes_a_message_not_a_traceback(service, dicoms, tmp_path, caplog):
    from medft.demo.ui import ReviewPage

    page = ReviewPage(
        InferenceService(service.classifier),
        examples=[],
        card="card",
        upload_dir=tmp_path / "uploads",
        downloads_dir=tmp_path / "downloads",
        title="t",
    )
    page.build()
    case = page.service.analyse_file(dicoms[0])
    session = {"entries": [], "csv": None, "current": case.key}

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError(f"boom in {dicoms[0]}")

    page.service.saliency = broken  # type: ignore[method-assign]
    caplog.set_level(logging.DEBUG, logger="medft")
    out = page._event(page.on_overlay)(session, "nodule", "gradcam", 0.5, "auto", 0.0, 1.0)
    assert list(out) == [page.status]
    assert (
        out[page.status].startswith("**Something went wrong**") and "incident" in out[page.status]
    )
    assert "RuntimeError" in caplog.records[0].getMessage()
    assert str(dicoms[0]) not in caplog.records[0].getMessage()
    out = page._event(page.on_overlay)({}, "nodule", "gradcam", 0.5, "auto", 0.0, 1.0)
    assert "upload a file or pick an example case first" in out[page.status]
    assert "on_overlay" in caplog.records[0].getMessage()  # the log names the handler


def test_the_view_state_starts_as_the_page_shows_its_controls(service, tmp_path):
    """The window values upload events get are the controls' values on a fresh page."""
    from medft.demo.ui import INITIAL, ReviewPage
    from medft.demo.views import ViewState

    page = ReviewPage(
        InferenceService(service.classifier),
        examples=[],
        card="card",
        upload_dir=tmp_path / "uploads",
        downloads_dir=tmp_path / "downloads",
        title="t",
    )
    page.build()
    controls = (page.method, page.alpha, page.preset, page.center, page.width)
    assert [c.value for c in controls] == [
        INITIAL.method,
        INITIAL.alpha,
        INITIAL.preset,
        INITIAL.center,
        INITIAL.width,
    ]
    view = ViewState({}, "nodule", "gradcam", 0.5)
    assert (view.preset, view.center, view.width) == (INITIAL.preset, 0.5, 1.0)
    with pytest.raises(AttributeError):
        view.alpha = 1.0  # type: ignore[misc]


# --------------------------------------------------------------------------- served app


@pytest.fixture(scope="module")
def server(checkpoint: Path, trained: tuple[Path, Path]) -> DemoServer:
    settings = DemoSettings(
        checkpoint=checkpoint, port=0, max_file_mb=1, examples=trained[1], cache_mb=64
    )
    with start_demo(settings) as running:
        yield running


@pytest.fixture
def client(server: DemoServer):
    from gradio_client import Client

    return Client(server.url, verbose=False, download_files=False)


def _upload_dir(server: DemoServer) -> Path:
    return server.workdir / "gradio"


def _files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_server_binds_localhost_with_limits(server):
    assert server.url.startswith("http://127.0.0.1:")
    assert server.blocks.max_file_size == 2**20
    assert server.blocks.analytics_enabled is False
    assert server.blocks.share is False
    assert oct(server.workdir.stat().st_mode & 0o777) == "0o700"


def test_api_predict_returns_findings(client, dicoms):
    from gradio_client import handle_file

    result = client.predict(handle_file(str(dicoms[0])), api_name="/predict")
    assert result["ok"] is True
    assert result["top_finding"] in LABELS
    assert result["findings"][0]["Finding"] == result["top_finding"]
    assert result["metadata"]["Modality"] in ("CR", "DX")


def test_api_predict_refuses_corrupt_and_oversized(client, corpus_dir, tmp_path):
    from gradio_client import handle_file

    result = client.predict(
        handle_file(str(corpus_dir / "corrupt/text_file.dcm")), api_name="/predict"
    )
    assert result == {
        "ok": False,
        "error": "neither a DICOM file nor a PNG, JPEG or TIFF image (unrecognised content)",
    }
    big = tmp_path / "big.dcm"
    big.write_bytes(os.urandom(2 * 2**20))
    with pytest.raises(Exception, match=r"(?i)size|large|413"):
        client.predict(handle_file(str(big)), api_name="/predict")
    # still serving afterwards
    assert (
        client.predict(
            handle_file(str(corpus_dir / "corrupt/random_bytes.dcm")), api_name="/predict"
        )["ok"]
        is False
    )


def test_api_file_type_comes_from_content_not_name(client, dicoms, tmp_path):
    from gradio_client import handle_file

    disguised = tmp_path / "scan.png"
    disguised.write_bytes(dicoms[0].read_bytes())
    png = tmp_path / "image.dcm"
    Image.fromarray(np.full((64, 48), 128, dtype=np.uint8)).save(png, format="PNG")
    as_dicom = client.predict(handle_file(str(disguised)), api_name="/predict")
    as_png = client.predict(handle_file(str(png)), api_name="/predict")
    assert as_dicom["ok"] and as_dicom["metadata"]["Modality"] in ("CR", "DX")
    assert as_png["ok"] and as_png["metadata"]["Encoding"] == "PNG"


def test_api_refuses_server_paths_outside_the_upload_folder(server):
    import httpx

    secret = server.workdir.parent / f"{server.workdir.name}-secret.dcm"
    secret.write_bytes(b"not for the demo")
    try:
        for path in (str(secret), f"{server.workdir}/gradio/../../{secret.name}"):
            payload = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}]}
            event = httpx.post(server.url + "gradio_api/call/predict", json=payload).json()
            stream = httpx.get(
                server.url + f"gradio_api/call/predict/{event['event_id']}", timeout=60
            )
            assert "event: error" in stream.text and '"ok"' not in stream.text
        assert secret.read_bytes() == b"not for the demo"
    finally:
        secret.unlink()


def test_api_batch_upload_shows_table_csv_and_deletes_uploads(client, server, dicoms, corpus_dir):
    from gradio_client import handle_file

    files = [
        handle_file(str(dicoms[4])),
        handle_file(str(corpus_dir / "corrupt/random_bytes.dcm")),
        handle_file(str(dicoms[5])),
    ]
    out = client.predict(files, LABELS[0], "gradcam", 0.5, api_name="/analyse")
    status, choices, head, original, overlay = out[0], out[1], out[2], out[3], out[4]
    assert "Analysed 2 files" in status
    assert "**Could not use `random_bytes.dcm`:** neither a DICOM file" in status
    assert [label for label, _ in choices["choices"]] == ["000.dcm", "000.dcm"]
    assert head.startswith("Top finding: **")
    assert original is not None and overlay is not None
    batch, download = out[-2], out[-1]
    assert len(batch["data"]) == 3 and batch["data"][1][2].startswith("not analysed")
    csv_path = Path(download["value"]["path"])
    table = pd.read_csv(csv_path)
    assert list(table["file"]) == ["000.dcm", "random_bytes.dcm", "000.dcm"]
    assert table["status"].tolist()[0] == "ok"
    uploaded = [p for p in _files_in(_upload_dir(server)) if p.suffix == ".dcm"]
    assert uploaded == []  # every upload was deleted once read


def test_api_window_finding_and_method_controls(client, dicoms):
    from gradio_client import handle_file

    out = client.predict(
        [handle_file(str(dicoms[6]))], LABELS[0], "gradcam", 0.5, api_name="/analyse"
    )
    first_original = Path(out[3]["path"] if isinstance(out[3], dict) else out[3]).read_bytes()
    center, width = out[9], out[10]
    narrow = (center["value"], max(width["minimum"], width["value"] / 4))
    _, original, _, preset = client.predict(
        LABELS[1], "gradcam", 0.5, "custom", *narrow, api_name="/center"
    )
    assert preset["value"] == "custom"
    new_original = Path(original["path"] if isinstance(original, dict) else original).read_bytes()
    assert new_original != first_original
    _status, overlay, note = client.predict(
        LABELS[2], "occlusion", 0.7, "auto", *narrow, api_name="/method"
    )
    assert "occlusion" in note and overlay is not None
    _, original, overlay, center, _ = client.predict(
        LABELS[2], "gradcam", 0.7, "full", *narrow, api_name="/preset"
    )
    assert center["value"] == pytest.approx((center["minimum"] + center["maximum"]) / 2)


def test_api_controls_before_any_upload_say_what_to_do(client):
    status, _, _ = client.predict("abnormal", "gradcam", 0.5, "auto", 0, 1, api_name="/finding")
    assert "upload a file or pick an example case first" in status


def test_api_example_case(client):
    out = client.predict(0, "abnormal", "gradcam", 0.5, api_name="/example")
    assert out[0].startswith("Analysed 1 file")
    assert out[1]["choices"][0][0].startswith("Example 1: ")


def test_no_patient_data_in_demo_temp_files_or_responses(client, server, phi_dicom):
    from gradio_client import handle_file

    response = client.predict(
        [handle_file(str(phi_dicom))], "abnormal", "gradcam", 0.5, api_name="/analyse"
    )
    api = client.predict(handle_file(str(phi_dicom)), api_name="/predict")
    text = json.dumps(response, default=str) + json.dumps(api)
    for marker in MARKER_STRINGS:
        assert marker not in text
    for path in _files_in(server.workdir):
        data = path.read_bytes()
        for marker in MARKER_STRINGS:
            assert marker.encode() not in data, f"{marker} found in {path.name}"


def test_app_survives_many_concurrent_clients(server, dicoms, corpus_dir):
    from gradio_client import Client, handle_file

    files = [
        *dicoms[:3],
        dicoms[0],  # the same content twice at once: one upload path, read once
        corpus_dir / "corrupt/zero_bytes.dcm",
        corpus_dir / "corrupt/text_file.dcm",
    ]
    errors: list[BaseException] = []
    answers: list[dict] = []
    lock = threading.Lock()

    def one(path: Path) -> None:
        try:
            result = Client(server.url, verbose=False).predict(
                handle_file(str(path)), api_name="/predict"
            )
            with lock:
                answers.append(result)
        except BaseException as exc:  # collected, asserted below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=one, args=(path,)) for path in files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(answers) == len(files)
    assert sum(a["ok"] for a in answers) == 4


def test_auth_is_required_when_set(checkpoint, server):
    from gradio_client import Client, handle_file

    settings = DemoSettings(checkpoint=checkpoint, port=0, auth=("clinician", "pw-123"))
    with start_demo(settings) as guarded:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(guarded.url + "config", timeout=30)
        assert info.value.code in (401, 403)
        client = Client(guarded.url, auth=("clinician", "pw-123"), verbose=False)
        assert client.predict(handle_file(__file__), api_name="/predict")["ok"] is False
        workdir = guarded.workdir
    assert not workdir.exists()
    assert os.environ["GRADIO_TEMP_DIR"] == str(server.workdir / "gradio")  # restored


def test_no_model_page_says_how_to_make_one(tmp_path):
    with start_demo(DemoSettings(port=0, quickstart_dir=tmp_path / "none")) as page:
        assert page.service is None
        config = urllib.request.urlopen(page.url + "config", timeout=30).read().decode()
    assert "medft quickstart" in config
    assert "No model to serve" in NO_MODEL_MESSAGE


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such checkpoint"):
        start_demo(DemoSettings(checkpoint=tmp_path / "gone.ckpt", port=0))


def test_shrink_keeps_range():
    image = np.random.default_rng(0).random((100, 60), dtype=np.float32)
    small = shrink(image, (50, 30))
    assert small.shape == (50, 30) and small.min() >= 0.0 and small.max() <= 1.0


def test_model_card_repeats_the_training_audit_warning(service):
    import dataclasses

    classifier = service.classifier
    clean = dataclasses.replace(
        classifier, meta={k: v for k, v in classifier.meta.items() if k != "audit"}
    )
    assert "Data bias warning" not in model_card(clean)
    warned = dataclasses.replace(
        classifier,
        meta={**classifier.meta, "audit": {"warnings": ["manufacturer predicts abnormal"]}},
    )
    card = model_card(warned)
    assert "Data bias warning" in card and "manufacturer predicts abnormal" in card


@pytest.mark.slow
def test_medft_demo_reports_progress_through_a_pipe(checkpoint: Path) -> None:
    """Behind a pipe (a service manager, `| tee`) stdout is block-buffered: the status
    lines must still arrive while the demo runs, not only when it exits."""
    import queue
    import signal
    import subprocess
    import sys

    from medft.demo.server import free_port

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("PYTHONUNBUFFERED", None)  # CI sets it; a service manager does not
    process = subprocess.Popen(
        [sys.executable, "-m", "medft.cli", "demo", "--checkpoint", str(checkpoint),
         "--port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in process.stdout], daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        while not any("running at" in line for line in seen):
            seen.append(lines.get(timeout=240))  # queue.Empty fails the test
        assert process.poll() is None  # still serving: the lines were not flushed by exit
        assert any(line.startswith("loading ") and checkpoint.name in line for line in seen)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=30)
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    assert any("temporary files removed" in line for line in rest)
