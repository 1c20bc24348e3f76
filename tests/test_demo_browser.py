"""End-to-end test of the demo in a real headless browser (Debian's Chromium + Playwright).

Uploads a synthetic DICOM, waits for the result, checks the top finding and that the overlay
image rendered, uploads a corrupt file and an oversized one and checks the messages, and
saves a screenshot (to ``tmp_path`` and, when ``MEDFT_SCREENSHOT_DIR`` is set, there too).
It also checks that the page loads nothing from any host but the demo itself (it must work
offline). Never runs ``playwright install``: it drives ``/usr/bin/chromium``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 90_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="/usr/bin/chromium is missing (CI installs Debian's chromium with apt-get)",
    ),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("playwright.sync_api")
    from test_demo import train_tiny_checkpoint

    from medft.data.synth import synthesize
    from medft.demo import DemoSettings, start_demo

    root = tmp_path_factory.mktemp("demo-browser")
    checkpoint, data = train_tiny_checkpoint(root)
    cases = synthesize(root / "cases", 2, size=256, seed=7, workers=1).root
    settings = DemoSettings(checkpoint=checkpoint, port=0, examples=data, max_file_mb=1)
    with start_demo(settings) as server:
        yield server, sorted((cases / "images").rglob("*.dcm"))


@pytest.fixture
def page(served):
    from playwright.sync_api import sync_playwright

    server, _ = served
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_page(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(TIMEOUT_MS)
        hosts: set[str] = set()
        context.on("request", lambda request: hosts.add(_host(request.url)))
        context.goto(server.url)
        context.wait_for_selector("#upload input[type=file]", state="attached")
        yield context
        browser.close()
    assert hosts <= {urlparse(server.url).netloc, ""}, f"the page fetched from {hosts}"


def _host(url: str) -> str:
    parsed = urlparse(url)
    return "" if parsed.scheme in ("data", "blob") else parsed.netloc


def _wait_for_text(page, selector: str, text: str) -> str:
    page.wait_for_function(
        "([sel, text]) => { const el = document.querySelector(sel);"
        " return el !== null && el.innerText.includes(text); }",
        arg=[selector, text],
        timeout=TIMEOUT_MS,
    )
    return page.locator(selector).inner_text()


def _image_size(page, selector: str) -> tuple[int, int]:
    page.wait_for_function(
        "sel => { const img = document.querySelector(sel);"
        " return img !== null && img.complete && img.naturalWidth > 0; }",
        arg=selector,
        timeout=TIMEOUT_MS,
    )
    return tuple(
        page.evaluate(
            "sel => { const img = document.querySelector(sel);"
            " return [img.naturalWidth, img.naturalHeight]; }",
            selector,
        )
    )


def _clear_uploads(page) -> None:
    page.locator("#upload").get_by_label("Clear").first.click()
    page.wait_for_function(
        "() => document.querySelectorAll('#upload tr, #upload .file').length == 0"
    )


def test_review_a_dicom_then_refuse_bad_files(served, page, tmp_path, corpus_dir):
    server, cases = served
    expected = server.service.analyse_file(cases[0]).top.finding

    page.set_input_files("#upload input[type=file]", str(cases[0]))
    headline = _wait_for_text(page, "#headline", "Top finding")
    assert f"Top finding: {expected}" in headline
    assert _image_size(page, "#overlay img") == _image_size(page, "#original img") == (256, 256)
    findings = page.locator("#findings").inner_text()
    assert expected in findings and ("POSITIVE" in findings or "negative" in findings)
    metadata = page.locator("#metadata").inner_text()
    assert "Photometric interpretation" in metadata and "256 × 256" in metadata
    _wait_for_text(page, "#colour-note", "Colour:")
    _save_screenshot(page, tmp_path)

    _clear_uploads(page)
    page.set_input_files("#upload input[type=file]", str(corpus_dir / "corrupt/random_bytes.dcm"))
    status = _wait_for_text(page, "#status", "Could not use")
    assert "random_bytes.dcm" in status and "neither a DICOM file nor a PNG" in status
    assert "Traceback" not in page.content()

    _clear_uploads(page)
    big = tmp_path / "big.dcm"
    big.write_bytes(os.urandom(2 * 2**20))  # over the 1 MB limit
    page.set_input_files("#upload input[type=file]", str(big))
    _wait_for_text(page, "body", "exceed the maximum allowed size")  # Gradio refuses it

    # still serving: an example case opens with one click
    page.get_by_text("Example 1:").first.click()
    _wait_for_text(page, "#status", "Analysed 1 file")


def _save_screenshot(page, tmp_path: Path) -> None:
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    target = os.environ.get("MEDFT_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / "demo.png")
