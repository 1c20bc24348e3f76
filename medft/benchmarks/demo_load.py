"""Demo under load: many clients at once, valid and invalid files, nothing lost.

Starts the demo (``medft demo``) in a child process on a free local port, then runs
``--clients`` gradio_client clients that together send ``--requests`` files to the
``/predict`` endpoint, half of them valid and half invalid, shuffled:

- valid: uncompressed synthetic chest DICOMs (:mod:`medft.data.synth`) at each of
  ``--sizes`` pixels (the smallest twice as often), and a grayscale PNG saved under a
  ``.dcm`` name (the demo decides the type by content, so this one must be analysed);
- invalid: random bytes, a DICOM cut at 60 % of its length, an empty file, a DICOM whose
  header claims 60000 x 60000 pixels, and a file over the upload limit (``--max-file-mb``).
  gradio_client refuses the last one itself before sending, so it is POSTed straight to
  Gradio's upload route instead, which is what a browser or a crafted request reaches.

Every valid request carries new content (Instance Number / pixel changed), so no cache
answers for the model. Each request is recorded with its outcome, its message and its
latency (submit to answer, upload included):

- ``result``: findings came back;
- ``error``: a refusal that says why (the JSON error, or the upload route's refusal);
- ``lost``: no answer within ``--timeout`` s, or an error with no usable message (empty,
  a bare "Error", Gradio's "raised an exception", the demo's "internal error").

The server's resident memory (psutil when installed, else /proc) is read before the load,
after every answer and at the end, and its peak (``VmHWM``); memory that grows without bound
shows as RSS after the last request far above RSS after the first quarter. Finally one
more valid request checks that the app still serves. Prints a table; ``--out`` writes JSON.

    nice -n 5 python -m medft.benchmarks.demo_load [--clients 20] [--requests 200]
        [--checkpoint CKPT | --backbone NAME] [--threads 1] [--out demo_load.json]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image

from medft._io import write_json
from medft.bench import machine_summary
from medft.data.synth import synthesize

# ``medft demo`` (what ``demo/app.py`` runs in a checkout), so an installed medft serves it too.
DEMO_COMMAND = (
    sys.executable, "-c", "import sys; from medft.cli import main; sys.exit(main(sys.argv[1:]))",
    "demo",
)  # fmt: skip
SIZES = (256, 1024, 2048)
INVALID_KINDS = ("random_bytes", "truncated_dicom", "empty", "oversize", "pixel_bomb")
TRUNCATE_AT = 0.6
BOMB_SIDE = 60_000
HTTP_TIMEOUT_S = 60.0
UNCLEAR = re.compile(
    r"^\s*(error|exception|none|null)?\s*$|internal error|raised an exception|something went wrong",
    re.IGNORECASE,
)


@dataclass
class Record:
    """One request: what was sent, what came back, how long it took."""

    index: int
    kind: str
    expected: str  # "result" or "error"
    outcome: str  # "result", "error" or "lost"
    message: str
    seconds: float
    client: int
    server_rss_mb: float | None


# --------------------------------------------------------------------------- files


def request_kinds(n_requests: int, sizes: Sequence[int], seed: int = 0) -> list[str]:
    """The kind of file each request sends, shuffled with ``seed``.

    Valid and invalid kinds take turns: with three sizes, half of the requests are valid.
    """
    smallest = min(sizes)
    valid = [f"dicom_{smallest}", *(f"dicom_{size}" for size in sizes), "png_named_dcm"]
    cycle = [*valid, *INVALID_KINDS]
    kinds = [cycle[i % len(cycle)] for i in range(n_requests)]
    random.Random(seed).shuffle(kinds)
    return kinds


def expected_outcome(kind: str) -> str:
    """``"error"`` for the invalid kinds, ``"result"`` for the rest."""
    return "error" if kind in INVALID_KINDS else "result"


class RequestFiles:
    """Writes the file each request uploads, with content no earlier request had.

    Args:
        folder: scratch folder (the files are deleted once sent).
        sizes: sides of the synthetic DICOMs, in pixels.
        max_file_bytes: the server's upload limit; the oversize file exceeds it by 1 MB.
    """

    def __init__(self, folder: Path, sizes: Sequence[int], max_file_bytes: int) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.base = {size: _plain_dicom(folder / f"base{size}", size) for size in sizes}
        self.smallest = self.base[min(sizes)]
        pixels = pydicom.dcmread(self.smallest).pixel_array.astype(np.float32)
        span = max(float(pixels.max() - pixels.min()), 1.0)
        self.png_pixels = np.round((pixels - pixels.min()) / span * 255).astype(np.uint8)
        self.oversize = folder / "oversize.dcm"
        self.oversize.write_bytes(os.urandom(max_file_bytes + 2**20))

    def make(self, kind: str, index: int) -> Path:
        """Write the file of request ``index`` (the oversize file is shared, not rewritten)."""
        if kind == "oversize":
            return self.oversize
        path = self.folder / f"{index:05d}-{kind}.dcm"
        if kind.startswith("dicom_"):
            self._variant(self.base[int(kind.split("_")[1])], index).save_as(path)
        elif kind == "png_named_dcm":
            pixels = self.png_pixels.copy()
            pixels[0, :3] = (index % 256, index // 256 % 256, 7)
            Image.fromarray(pixels).save(path, format="PNG")
        elif kind == "random_bytes":
            path.write_bytes(np.random.default_rng(index).bytes(64 * 1024))
        elif kind == "truncated_dicom":
            data = _dicom_bytes(self._variant(self.base[max(self.base)], index))
            path.write_bytes(data[: int(len(data) * TRUNCATE_AT)])
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "pixel_bomb":
            ds = self._variant(self.smallest, index)
            ds.Rows = ds.Columns = BOMB_SIDE
            ds.save_as(path)
        else:
            raise ValueError(f"unknown request kind {kind!r}")
        return path

    def discard(self, path: Path) -> None:
        """Delete a request's file once it was sent (never the shared oversize file)."""
        if path != self.oversize:
            path.unlink(missing_ok=True)

    @staticmethod
    def _variant(path: Path, index: int) -> pydicom.Dataset:
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = 10_000 + index
        return ds


def _plain_dicom(folder: Path, size: int) -> Path:
    """One synthetic chest DICOM of ``size`` pixels, uncompressed (file size = matrix size)."""
    root = synthesize(folder, 1, size=size, seed=size, workers=1).root
    path = next((root / "images").rglob("*.dcm"))
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds.save_as(path, enforce_file_format=True)
    return path


def _dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------- server


def server_memory_mb(pid: int) -> tuple[float | None, float | None]:
    """``(rss, peak rss)`` of process ``pid`` in MB (psutil when installed, else /proc).

    The peak is the kernel's high-water mark (``VmHWM``), so it catches spikes between
    samples; it is ``None`` where /proc is not available.
    """
    fields: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = float(value.split()[0]) / 1024.0  # kB -> MB
    except OSError:
        pass
    rss = fields.get("VmRSS")
    try:
        import psutil

        rss = psutil.Process(pid).memory_info().rss / 2**20
    except Exception:  # no psutil, or the process is gone: keep what /proc said
        pass
    return rss, fields.get("VmHWM")


class DemoProcess:
    """The demo served by ``medft demo`` in a child process (so its memory is its own).

    Args:
        checkpoint: the checkpoint to serve.
        max_file_mb: the upload limit.
        cache_mb: the case cache's memory budget.
        threads: torch threads of the server.
        start_timeout_s: how long to wait for the "running at" line.
    """

    def __init__(
        self,
        checkpoint: Path,
        *,
        max_file_mb: float,
        cache_mb: int,
        threads: int,
        start_timeout_s: float = 240.0,
    ) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="medft-demo-load-")
        command = [
            *DEMO_COMMAND, "--checkpoint", str(checkpoint), "--port", "0",
            "--threads", str(threads), "--max-file-mb", str(max_file_mb),
            "--cache-mb", str(cache_mb),
            "--quickstart-dir", str(Path(self._scratch.name) / "no-quickstart"),
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        self.log: deque[str] = deque(maxlen=400)
        self.url: str | None = None
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        threading.Thread(target=self._read_output, daemon=True).start()
        if not self._ready.wait(start_timeout_s) or self.url is None:
            self.close()
            tail = "".join(list(self.log)[-20:])
            raise RuntimeError(f"the demo did not start within {start_timeout_s:.0f} s:\n{tail}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)
            found = re.search(r"running at (http://\S+)", line)
            if found:
                self.url = found.group(1)
                self._ready.set()
        self._ready.set()  # the process ended: stop waiting

    def close(self) -> int | None:
        """Stop the server with SIGTERM (it deletes its temporary files); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._scratch.cleanup()
        return self.proc.returncode

    def __enter__(self) -> DemoProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- requests


def is_clear(message: str) -> bool:
    """Whether an error message tells the user something (not empty, generic or internal)."""
    return len(message.strip()) >= 12 and not UNCLEAR.search(message)


def classify_response(response: Any) -> tuple[str, str]:
    """``(outcome, message)`` of a ``/predict`` answer."""
    if isinstance(response, dict) and response.get("ok") is True:
        return "result", str(response.get("top_finding", ""))
    if isinstance(response, dict) and response.get("ok") is False:
        message = str(response.get("error") or "")
        return ("error" if is_clear(message) else "lost"), message
    return "lost", f"unexpected answer: {str(response)[:200]}"


def classify_exception(exc: BaseException, timeout_s: float) -> tuple[str, str]:
    """``(outcome, message)`` of a request that raised (upload refused, timeout, crash).

    A transport failure (timeout, refused or dropped connection) is lost whatever its text
    says: it is the absence of an answer, not the app's reason.
    """
    import httpx

    message = " ".join(str(exc).split())
    label = f"{type(exc).__name__}{_request_path(exc)}: {message}"[:300]
    if isinstance(exc, TimeoutError) and not isinstance(exc, httpx.TimeoutException):
        return "lost", f"no answer within {timeout_s:.0f} s"
    if isinstance(exc, httpx.TransportError):
        return "lost", label
    return ("error" if is_clear(message) else "lost"), label


def _request_path(exc: BaseException) -> str:
    """`` on /route`` for an HTTP error that knows its request (which step failed)."""
    try:
        return f" on {exc.request.url.path}"  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        return ""


def send(client: Any, path: Path, timeout_s: float) -> tuple[str, str, float]:
    """Upload one file to ``/predict``; ``(outcome, message, seconds)``."""
    from gradio_client import handle_file

    start = time.perf_counter()
    try:
        job = client.submit(handle_file(str(path)), api_name="/predict")
        outcome, message = classify_response(job.result(timeout=timeout_s))
    except Exception as exc:
        outcome, message = classify_exception(exc, timeout_s)
    return outcome, message, time.perf_counter() - start


def send_raw_upload(url: str, path: Path, timeout_s: float) -> tuple[str, str, float]:
    """POST a file straight to Gradio's upload route; ``(outcome, message, seconds)``.

    gradio_client refuses a file over the app's limit before sending it, so the server's
    own check is only reached by other clients (a script, a crafted request): this is one.
    A refusal must be an HTTP 4xx whose body says why; a dropped connection counts as lost.
    """
    import httpx

    start = time.perf_counter()
    try:
        with path.open("rb") as fh:
            response = httpx.post(
                f"{url.rstrip('/')}/gradio_api/upload",
                files={"files": (path.name, fh, "application/octet-stream")},
                timeout=timeout_s,
            )
        body = " ".join(response.text.split())[:300]
        if response.status_code == 200:
            outcome, message = "result", f"upload accepted: {body}"
        elif 400 <= response.status_code < 500 and is_clear(body):
            outcome, message = "error", f"HTTP {response.status_code}: {body}"
        else:
            outcome, message = "lost", f"HTTP {response.status_code}: {body}"
    except httpx.TimeoutException:
        outcome, message = "lost", f"no answer within {timeout_s:.0f} s"
    except httpx.HTTPError as exc:
        outcome, message = "lost", f"{type(exc).__name__}: {exc}"[:300]
    return outcome, message, time.perf_counter() - start


def connect(url: str, http_timeout_s: float = HTTP_TIMEOUT_S) -> Any:
    """A gradio_client Client for ``url`` (quiet, no downloads, no analytics).

    ``http_timeout_s`` bounds each HTTP call the client makes (connect, upload, joining the
    queue); gradio_client's own default is httpx's 5 s, which a burst of uploads on a busy
    machine can exceed before the server has even queued the request.
    """
    from gradio_client import Client

    return Client(
        url,
        verbose=False,
        download_files=False,
        analytics_enabled=False,
        httpx_kwargs={"timeout": http_timeout_s} if http_timeout_s else None,
    )


def run_clients(
    url: str,
    files: RequestFiles,
    kinds: Sequence[str],
    *,
    clients: int,
    timeout_s: float,
    pid: int,
    http_timeout_s: float = HTTP_TIMEOUT_S,
) -> list[Record]:
    """Send every request from ``clients`` concurrent clients; one record per request.

    Requests are taken in order from a shared list, so a slow request delays only its own
    client. A client that cannot connect marks its request lost and stops.
    """
    lock = threading.Lock()
    next_index = iter(range(len(kinds)))
    records: list[Record] = []

    def take() -> int | None:
        with lock:
            return next(next_index, None)

    def record(index: int, outcome: str, message: str, seconds: float, number: int) -> None:
        rss, _ = server_memory_mb(pid)
        kind = kinds[index]
        with lock:
            records.append(
                Record(index, kind, expected_outcome(kind), outcome, message, seconds, number, rss)
            )

    def client_loop(number: int) -> None:
        try:
            client = connect(url, http_timeout_s)
        except Exception as exc:
            index = take()
            if index is not None:
                reason = f"could not connect: {type(exc).__name__}: {exc}"
                record(index, "lost", reason, 0.0, number)
            return
        while (index := take()) is not None:
            path = files.make(kinds[index], index)
            try:
                if kinds[index] == "oversize":
                    outcome, message, seconds = send_raw_upload(url, path, timeout_s)
                else:
                    outcome, message, seconds = send(client, path, timeout_s)
            finally:
                files.discard(path)
            record(index, outcome, message, seconds, number)

    threads = [
        threading.Thread(target=client_loop, args=(number,), name=f"load-client-{number}")
        for number in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    missing = sorted(set(range(len(kinds))) - {r.index for r in records})
    for index in missing:  # a request no client took (all of them failed to connect)
        records.append(
            Record(index, kinds[index], expected_outcome(kinds[index]), "lost",
                   "never sent: no client could connect", 0.0, -1, None)
        )  # fmt: skip
    return records


# --------------------------------------------------------------------------- summary


def latency_row(name: str, records: Sequence[Record]) -> dict[str, Any]:
    """Counts and p50/p95/max latency (seconds) of a group of requests."""
    seconds = np.array([r.seconds for r in records], dtype=float)
    return {
        "group": name,
        "requests": len(records),
        "result": sum(r.outcome == "result" for r in records),
        "error": sum(r.outcome == "error" for r in records),
        "lost": sum(r.outcome == "lost" for r in records),
        "unexpected": sum(r.outcome != r.expected for r in records),
        "p50_s": float(np.percentile(seconds, 50)) if len(seconds) else None,
        "p95_s": float(np.percentile(seconds, 95)) if len(seconds) else None,
        "max_s": float(seconds.max()) if len(seconds) else None,
    }


def summarise(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Rows for valid, invalid and all requests, then one per kind of file."""
    rows = [
        latency_row("valid", [r for r in records if r.expected == "result"]),
        latency_row("invalid", [r for r in records if r.expected == "error"]),
        latency_row("all", records),
    ]
    for kind in dict.fromkeys(sorted(r.kind for r in records)):
        rows.append(latency_row(kind, [r for r in records if r.kind == kind]))
    return rows


def memory_after(records: Sequence[Record], count: int) -> float | None:
    """Server RSS (MB) read when the ``count``-th answer arrived (answers in arrival order)."""
    readings = [r.server_rss_mb for r in records[:count] if r.server_rss_mb is not None]
    return readings[-1] if readings else None


# --------------------------------------------------------------------------- the test


def load_test(
    checkpoint: Path,
    *,
    clients: int = 20,
    requests: int = 200,
    sizes: Sequence[int] = SIZES,
    max_file_mb: float = 16.0,
    cache_mb: int = 512,
    threads: int = 1,
    timeout_s: float = 300.0,
    http_timeout_s: float = HTTP_TIMEOUT_S,
    seed: int = 0,
) -> dict[str, Any]:
    """Serve ``checkpoint``, run the load, check the app afterwards; the report as a dict."""
    kinds = request_kinds(requests, sizes, seed)
    with tempfile.TemporaryDirectory(prefix="medft-load-files-") as folder:
        files = RequestFiles(Path(folder), sizes, int(max_file_mb * 2**20))
        with DemoProcess(
            checkpoint, max_file_mb=max_file_mb, cache_mb=cache_mb, threads=threads
        ) as server:
            assert server.url is not None
            warm = send(connect(server.url), files.make(f"dicom_{min(sizes)}", -1), timeout_s)
            rss_before, _ = server_memory_mb(server.pid)
            started = time.perf_counter()
            records = run_clients(
                server.url,
                files,
                kinds,
                clients=clients,
                timeout_s=timeout_s,
                pid=server.pid,
                http_timeout_s=http_timeout_s,
            )
            wall = time.perf_counter() - started
            after = send(
                connect(server.url), files.make(f"dicom_{max(sizes)}", requests), timeout_s
            )
            rss_end, peak = server_memory_mb(server.pid)
            quarter = max(1, requests // 4)
            memory = {
                "before_load_mb": rss_before,
                f"after_{quarter}_mb": memory_after(records, quarter),
                f"after_{requests}_mb": memory_after(records, requests),
                "at_end_mb": rss_end,
                "peak_mb": peak
                if peak is not None
                else max(r.server_rss_mb or 0.0 for r in records),
                "quarter": quarter,
            }
            exit_code = server.close()
    return {
        "benchmark": "demo_load",
        "clients": clients,
        "requests": requests,
        "sizes": list(sizes),
        "max_file_mb": max_file_mb,
        "cache_mb": cache_mb,
        "server_threads": threads,
        "timeout_s": timeout_s,
        "http_timeout_s": http_timeout_s,
        "wall_s": wall,
        "throughput_per_s": requests / wall if wall > 0 else None,
        "warmup": {"outcome": warm[0], "message": warm[1], "seconds": warm[2]},
        "serves_afterwards": {"outcome": after[0], "message": after[1], "seconds": after[2]},
        "server_exit_code": exit_code,
        "memory": memory,
        "rows": summarise(records),
        "records": [asdict(r) for r in records],
        "machine": machine_summary(),
    }


def format_report(report: dict[str, Any]) -> str:
    """The table and the memory and health lines, as printed."""
    header = (
        f"{'group':<16s}{'n':>5s}{'result':>8s}{'error':>7s}{'lost':>6s}{'unexp.':>8s}"
        f"{'p50 s':>8s}{'p95 s':>8s}{'max s':>8s}"
    )
    lines = [header, "-" * len(header)]
    for row in report["rows"]:
        timings = "".join(
            f"{row[key]:8.2f}" if row[key] is not None else f"{'-':>8s}"
            for key in ("p50_s", "p95_s", "max_s")
        )
        lines.append(
            f"{row['group']:<16s}{row['requests']:5d}{row['result']:8d}{row['error']:7d}"
            f"{row['lost']:6d}{row['unexpected']:8d}{timings}"
        )
    memory, quarter, n = report["memory"], report["memory"]["quarter"], report["requests"]

    def mb(value: float | None) -> str:
        return f"{value:.0f}" if value is not None else "?"

    growth = (
        memory[f"after_{n}_mb"] - memory[f"after_{quarter}_mb"]
        if memory[f"after_{n}_mb"] is not None and memory[f"after_{quarter}_mb"] is not None
        else None
    )
    after = report["serves_afterwards"]
    machine = report["machine"]
    lines += [
        f"server RSS MB: before load {mb(memory['before_load_mb'])}, after {quarter} "
        f"{mb(memory[f'after_{quarter}_mb'])}, after {n} {mb(memory[f'after_{n}_mb'])} "
        f"(growth {mb(growth)}), peak {mb(memory['peak_mb'])}",
        f"serves afterwards: {after['outcome']} in {after['seconds']:.2f} s; "
        f"{report['clients']} clients, {n} requests in {report['wall_s']:.0f} s "
        f"({report['throughput_per_s']:.2f}/s); cache {report['cache_mb']} MB, "
        f"upload limit {report['max_file_mb']:g} MB, server threads {report['server_threads']}, "
        f"client HTTP timeout {report['http_timeout_s'] or 5:g} s",
        f"machine: {machine['cpu_count']} CPUs, load average {machine.get('load_average')}, "
        f"{machine['date_utc']}",
    ]
    lost = [r for r in report["records"] if r["outcome"] == "lost"]
    unexpected = [r for r in report["records"] if r["outcome"] != r["expected"]]
    for r in (lost + [r for r in unexpected if r not in lost])[:10]:
        lines.append(f"  #{r['index']} {r['kind']}: {r['outcome']}: {r['message']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: random weights")
    parser.add_argument(
        "--backbone",
        default="tf_efficientnet_lite0",
        help="timm model of the random-weight checkpoint (without --checkpoint)",
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--max-file-mb", type=float, default=16.0)
    parser.add_argument("--cache-mb", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument(
        "--http-timeout",
        type=float,
        default=HTTP_TIMEOUT_S,
        help="seconds for each HTTP call of a client (0: gradio_client's default, 5 s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the report as JSON to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    warnings.filterwarnings("ignore", category=UserWarning)

    from medft.benchmarks import demo_latency  # only for the random checkpoint

    with tempfile.TemporaryDirectory(prefix="medft-load-ckpt-") as folder:
        checkpoint = args.checkpoint or demo_latency.write_checkpoint(
            Path(folder) / "random.ckpt", args.backbone, args.image_size
        )
        report = load_test(
            checkpoint,
            clients=args.clients,
            requests=args.requests,
            sizes=args.sizes,
            max_file_mb=args.max_file_mb,
            cache_mb=args.cache_mb,
            threads=args.threads,
            timeout_s=args.timeout,
            http_timeout_s=args.http_timeout,
            seed=args.seed,
        )
    report["checkpoint"] = str(args.checkpoint) if args.checkpoint else f"random {args.backbone}"
    print(format_report(report))
    if args.out is not None:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
