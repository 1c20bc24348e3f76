"""Start and stop the demo with safe defaults; find the quickstart model when none is given.

Safety settings applied on every start, whatever the caller passes:

- bound to ``settings.host`` (127.0.0.1 by default), never a share link, Gradio analytics
  and version checks off, no monitoring endpoint, no run history in the browser, no MCP,
  no server-side rendering (nothing needs Node or the network to render);
- a private temporary folder (``mkdtemp``, mode 0700) holds Gradio's uploads and cache,
  the example cases and the predictions.csv downloads; uploads are deleted as soon as
  they are read, uploads no request reads after ``upload_ttl_s`` (a janitor thread),
  rendered images leave Gradio's cache after 30 minutes, and the folder is removed on
  close; folders of demos that were killed are removed at the next start;
- uploads are limited by Gradio (``max_file_size``) and again when read, each request's
  files together by ``max_request_mb``, decoded frames by ``max_pixels`` and a request's
  frames together by ``max_request_pixels``, all from the headers before any pixel is
  allocated;
- optional login (``auth``) through :class:`LoginGuard`: constant-time comparison, at most
  :data:`LOGIN_ATTEMPTS` failed attempts per minute, each failure logged; a non-local
  ``host`` without a login is refused unless ``allow_unauthenticated``;
- fonts are the system's own (no web fonts are fetched).
"""

from __future__ import annotations

import atexit
import collections
import hmac
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medft.errors import ConfigError

from .settings import DemoSettings, is_local
from .uploads import WORKDIR_PREFIX, claim_workdir, sweep_stale_workdirs, sweep_uploads

log = logging.getLogger("medft.demo")

_ENV_KEYS = ("GRADIO_TEMP_DIR", "GRADIO_ANALYTICS_ENABLED", "HF_HUB_DISABLE_TELEMETRY")
NO_MODEL_MESSAGE = (
    "No model to serve: no --checkpoint was given and no quickstart model was found in "
    "{where}. Make one in a few minutes, offline, with `medft quickstart`, then run "
    "`medft demo` again (or pass `--checkpoint path/to/best.ckpt`)."
)


def find_quickstart_checkpoint(quickstart_dir: str | Path) -> Path | None:
    """The newest ``best-*.ckpt`` (else ``last.ckpt``) that ``medft quickstart`` wrote."""
    folder = Path(quickstart_dir) / "run" / "checkpoints"
    if not folder.is_dir():
        return None
    best = sorted(folder.glob("best*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    if best:
        return best[0]
    last = folder / "last.ckpt"
    return last if last.is_file() else None


LOGIN_ATTEMPTS = 5
"""Failed logins allowed per :data:`LOGIN_WINDOW_S`; past that every attempt is refused."""
LOGIN_WINDOW_S = 60.0


class LoginGuard:
    """Gradio's ``auth`` callable: one account, rate-limited, failures logged.

    Passwords are compared in constant time. After :data:`LOGIN_ATTEMPTS` failures within
    :data:`LOGIN_WINDOW_S` seconds every attempt (even a correct one) is refused until the
    oldest failure leaves the window, so guessing runs at a few passwords a minute instead
    of about 80 a second. Each failure is logged with the user name tried (never the
    password); the lockout is logged once when it starts.

    Args:
        user: the account name.
        password: its password.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self, user: str, password: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._user = user.encode()
        self._password = password.encode()
        self._clock = clock
        self._failures: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        self.refused = 0

    def __call__(self, user: str, password: str) -> bool:
        """Whether this login is accepted (Gradio calls it for every attempt)."""
        with self._lock:
            now = self._clock()
            while self._failures and now - self._failures[0] > LOGIN_WINDOW_S:
                self._failures.popleft()
            if len(self._failures) >= LOGIN_ATTEMPTS:
                self.refused += 1
                return False
            ok_user = hmac.compare_digest(str(user).encode(), self._user)
            ok_password = hmac.compare_digest(str(password).encode(), self._password)
            if ok_user and ok_password:
                return True
            self._failures.append(now)
            log.warning(
                "failed login for user %r (%d in the last %.0f s)",
                str(user)[:64],
                len(self._failures),
                LOGIN_WINDOW_S,
            )
            if len(self._failures) == LOGIN_ATTEMPTS:
                log.warning(
                    "%d failed logins within %.0f s: refusing every login for up to %.0f s",
                    LOGIN_ATTEMPTS,
                    LOGIN_WINDOW_S,
                    LOGIN_WINDOW_S,
                )
            return False


class _UploadJanitor:
    """Delete uploads no request reads within ``ttl_s`` (checked every ``ttl_s / 4``)."""

    def __init__(self, folder: Path, ttl_s: float) -> None:
        self.folder = folder
        self.ttl_s = ttl_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medft-upload-janitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(max(1.0, min(30.0, self.ttl_s / 4))):
            try:
                sweep_uploads(self.folder, self.ttl_s)
            except Exception as exc:  # never let the janitor die silently
                log.error("upload sweep failed: %s", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class DemoServer:
    """A running demo: its URL, its service (``None`` on the no-model page), and cleanup."""

    url: str
    workdir: Path
    blocks: Any = field(repr=False)
    service: Any = field(default=None, repr=False)
    _saved_env: dict[str, str | None] = field(default_factory=dict, repr=False)
    _closed: bool = field(default=False, repr=False)
    _janitor: Any = field(default=None, repr=False)

    def close(self) -> None:
        """Stop the server, delete every temporary file, restore the environment."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._janitor is not None:
            self._janitor.stop()
        try:
            self.blocks.close()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
            _restore_env(self._saved_env)

    def __enter__(self) -> DemoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_demo(settings: DemoSettings, *, quiet: bool = True) -> DemoServer:
    """Load the model, build the page and start serving in a background thread.

    With no checkpoint and no quickstart model, a page saying how to make one is served
    instead (see :data:`NO_MODEL_MESSAGE`).

    Raises:
        CheckpointError: the checkpoint cannot be loaded safely.
        ConfigError: the port is taken or a setting is invalid.
    """
    _require_gradio()
    checkpoint = settings.checkpoint or find_quickstart_checkpoint(settings.quickstart_dir)
    if settings.checkpoint is not None and not Path(settings.checkpoint).is_file():
        raise ConfigError(f"{settings.checkpoint}: no such checkpoint file; pass --checkpoint PATH")
    sweep_stale_workdirs()  # what a demo killed with kill -9 left behind
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
    claim_workdir(workdir)
    saved = _private_environment(workdir)
    try:
        if checkpoint is None:
            blocks, service = _missing_model_page(settings), None
        else:
            blocks, service = _review_page(settings, Path(checkpoint), workdir)
        blocks.queue(default_concurrency_limit=settings.concurrency, max_size=256)
        port = settings.port or free_port(settings.host)
        _, url, _ = blocks.launch(**_launch_options(settings, port, quiet))
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        _restore_env(saved)
        raise
    janitor = _UploadJanitor(workdir / "gradio", settings.upload_ttl_s)
    server = DemoServer(
        url=url, workdir=workdir, blocks=blocks, service=service, _saved_env=saved,
        _janitor=janitor,
    )  # fmt: skip
    atexit.register(server.close)  # temporary files go even if the caller forgets to close
    return server


def _say(message: str) -> None:
    """Print a status line at once: behind a pipe or a service manager, stdout is buffered."""
    print(message, flush=True)


def run_demo(settings: DemoSettings) -> int:
    """Serve until interrupted (Ctrl-C), then clean up; the ``medft demo`` entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(settings.threads or default_threads())
    checkpoint = settings.checkpoint or find_quickstart_checkpoint(settings.quickstart_dir)
    if checkpoint is None:
        _say(NO_MODEL_MESSAGE.format(where=settings.quickstart_dir))
    elif settings.checkpoint is None:
        _say(f"Using the quickstart model: {checkpoint}")
    if not is_local(settings.host) and settings.auth is None:  # --allow-unauthenticated
        _say(
            f"warning: serving on {settings.host} without a login (--allow-unauthenticated); "
            "anyone who can reach this machine can open the page."
        )
    if checkpoint is not None:
        _say(f"loading {Path(checkpoint).name} and building the page (up to a minute) ...")
    server = start_demo(settings, quiet=True)
    _say(f"medft demo running at {server.url}  (Ctrl-C to stop)")
    _stop_on_signals()
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        _say("stopping")
    finally:
        server.close()
        _say("temporary files removed")
    return 0


def _stop_on_signals() -> None:
    """Turn SIGINT and SIGTERM into KeyboardInterrupt, so every stop cleans up.

    SIGINT is re-armed explicitly because a process started in the background by a shell
    inherits it ignored; SIGTERM is what service managers and ``docker stop`` send.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)


def default_threads() -> int:
    """Torch threads for serving: half the cores (at least one).

    The model runs one request at a time while other requests decode and render, and an
    oversubscribed CPU makes torch's threads wait on each other: on a busy 2-core machine
    one thread ran a forward pass in 0.3 s where two took 2 to 4 s.
    """
    return max(1, (os.cpu_count() or 2) // 2)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host if host != "0.0.0.0" else "", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- internals


def _require_gradio() -> None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the demo needs Gradio, which is not installed: pip install -e '.[demo]' in a "
            "clone of medft (pip install 'medft[demo]' otherwise)"
        ) from None


def _review_page(settings: DemoSettings, checkpoint: Path, workdir: Path) -> tuple[Any, Any]:
    from .examples import read_examples, synthesize_examples
    from .modelcard import load_metrics, model_card
    from .service import InferenceService
    from .ui import ReviewPage

    service = InferenceService.from_checkpoint(
        checkpoint,
        max_bytes=settings.max_file_bytes,
        max_pixels=settings.max_pixels,
        view_size=settings.view_size,
        cache_mb=settings.cache_mb,
    )
    metrics_path = settings.metrics
    quickstart = Path(settings.quickstart_dir)
    if metrics_path is None and checkpoint.resolve().is_relative_to(quickstart.resolve()):
        candidate = quickstart / "metrics.json"
        metrics_path = candidate if candidate.is_file() else None
    metrics = load_metrics(metrics_path) if metrics_path else None
    if settings.examples is not None:
        examples = read_examples(settings.examples)
    else:
        examples = read_examples(
            quickstart / "data", splits_csv=quickstart / "run" / "splits.csv"
        ) or synthesize_examples(workdir / "examples")
    classifier = service.classifier
    backbone = classifier.meta.get("backbone", "model")
    page = ReviewPage(
        service,
        examples=examples,
        card=model_card(classifier, metrics),
        upload_dir=Path(os.environ["GRADIO_TEMP_DIR"]),
        # Inside Gradio's folder, so it serves the CSV as it is (no copy for the sweep to take).
        downloads_dir=Path(os.environ["GRADIO_TEMP_DIR"]) / "downloads",
        max_request_bytes=settings.max_request_bytes,
        max_request_pixels=settings.max_request_pixels,
        title=f"Model: `{backbone}` ({checkpoint.name}) · findings: {', '.join(service.labels)}",
    )
    return page.build(), service


def _missing_model_page(settings: DemoSettings) -> Any:
    import gradio as gr

    with gr.Blocks(title="medft · no model", analytics_enabled=False) as blocks:
        gr.Markdown("# medft · X-ray review")
        gr.Markdown(NO_MODEL_MESSAGE.format(where=f"`{settings.quickstart_dir}`"), elem_id="status")
    return blocks


def _launch_options(settings: DemoSettings, port: int, quiet: bool) -> dict[str, Any]:
    import gradio as gr

    from .ui import CSS

    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )
    return {
        "server_name": settings.host,
        "server_port": port,
        "auth": None if settings.auth is None else LoginGuard(*settings.auth),
        "share": False,
        "max_file_size": settings.max_file_bytes,
        "prevent_thread_lock": True,
        "show_error": False,
        "quiet": quiet,
        "inbrowser": False,
        "ssr_mode": False,
        "enable_monitoring": False,
        "run_history": False,
        "mcp_server": False,
        "pwa": False,
        "footer_links": ["api", "settings"],
        "theme": theme,
        "css": CSS,
    }


def _private_environment(workdir: Path) -> dict[str, str | None]:
    """Point Gradio's uploads and cache into ``workdir`` and switch telemetry off."""
    saved = {key: os.environ.get(key) for key in _ENV_KEYS}
    uploads = workdir / "gradio"
    uploads.mkdir(mode=0o700)
    os.environ["GRADIO_TEMP_DIR"] = str(uploads)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return saved


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
