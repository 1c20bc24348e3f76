"""A real Orthanc PACS for the results tests: free localhost ports, its own storage and config.

Orthanc and its DICOMweb plugin come from the Debian packages ``orthanc`` and
``orthanc-dicomweb`` (``.ci/run`` installs them when it runs as root). Tests that need it
skip, saying so, only where the server binary or the plugin is not installed; a server
that is installed but does not start fails the test.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ORTHANC_AET = "MEDFTPACS"


def _dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin's .so as the Debian package installed it."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, timeout=30
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        listing = []
    candidates = [Path(line) for line in listing if "DicomWeb" in line and ".so" in line]
    candidates += sorted(Path("/usr/share/orthanc/plugins").glob("libOrthancDicomWeb.so*"))
    return next((path for path in candidates if path.is_file()), None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class OrthancServer:
    """A running Orthanc: where to reach it."""

    http_port: int
    dicom_port: int
    storage: Path
    log: Path

    @property
    def rest_url(self) -> str:
        """Orthanc's own REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS, STOW-RS)."""
        return f"{self.rest_url}/dicom-web"

    @property
    def dimse_url(self) -> str:
        """The DIMSE address medft send understands."""
        return f"dicom://{ORTHANC_AET}@127.0.0.1:{self.dicom_port}"

    def get_json(self, path: str):
        """GET a REST resource as JSON."""
        with urllib.request.urlopen(f"{self.rest_url}{path}", timeout=10) as response:
            return json.loads(response.read())

    def reset(self) -> None:
        """Delete every stored instance (tests share one server)."""
        for study in self.get_json("/studies"):
            request = urllib.request.Request(f"{self.rest_url}/studies/{study}", method="DELETE")
            urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    """Start Orthanc (DICOMweb enabled, called AE title checked) and stop it after the session."""
    binary = shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).is_file()), None
    )
    plugin = _dicomweb_plugin()
    if binary is None or plugin is None:
        pytest.skip(
            "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does "
            f"this as root): server {binary or 'missing'}, DICOMweb plugin {plugin or 'missing'}"
        )
    root = tmp_path_factory.mktemp("orthanc")
    storage = root / "storage"
    storage.mkdir()
    server = OrthancServer(_free_port(), _free_port(), storage, root / "orthanc.log")
    config = {
        "Name": "medft-test-pacs",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": server.http_port,
        "DicomPort": server.dicom_port,
        "DicomAet": ORTHANC_AET,
        "DicomCheckCalledAet": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "StorageCompression": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (root / "orthanc.json").write_text(json.dumps(config, indent=2))
    with open(server.log, "wb") as log:
        process = subprocess.Popen(
            [binary, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, cwd=root
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if server.get_json("/plugins/dicom-web")["ID"] == "dicom-web":
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not start; its log:\n{server.log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def empty_orthanc(orthanc: OrthancServer) -> OrthancServer:
    """The session's Orthanc with nothing stored in it."""
    orthanc.reset()
    return orthanc
