"""What the demo is started with: one settings object, shared by ``medft demo`` and demo/app.py.

This module is deliberately light (no torch, no Gradio) so the ``medft`` command can
build its parser quickly.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from medft.errors import ConfigError
from medft.options import FunctionOptions, add_function_options

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_FILE_MB = 64.0
DEFAULT_MAX_PIXELS = 25_000_000  # 5000 x 5000 samples: above any radiograph or mammogram
DEFAULT_MAX_REQUEST_MB = 256.0
DEFAULT_MAX_REQUEST_PIXELS = 50_000_000  # decoded samples of one request, from the headers
DEFAULT_UPLOAD_TTL_S = 120.0
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_VIEW_SIZE = 1024
AUTH_ENV = "MEDFT_DEMO_AUTH"
QUICKSTART_DIR = Path("medft-quickstart")


@dataclass(frozen=True)
class DemoSettings:
    """How to start the demo.

    Attributes:
        checkpoint: medft checkpoint to serve; ``None`` looks for the quickstart model.
        host: interface to bind; 127.0.0.1 (this machine only) unless told otherwise.
        port: TCP port; 0 picks a free one.
        auth: ``(user, password)`` required to open the page, or ``None``.
        max_file_mb: largest upload accepted, in MB (enforced by Gradio and again on read).
        max_pixels: largest decoded frame, in samples (refused from the header, before
            decoding; a 7000² frame costs about 300 MB while it is analysed).
        max_request_mb: total upload size of one request (several files), in MB.
        max_request_pixels: decoded samples of one request, summed from the files' headers
            before any is decoded (files past the budget are refused).
        upload_ttl_s: an upload no request has read is deleted after this many seconds.
        allow_unauthenticated: serve on a non-local address without a login (refused
            unless this is set: the page shows patient images).
        view_size: longest side of the images sent to the browser, in pixels.
        metrics: a ``metrics.json`` written by ``medft evaluate``, shown on the model card.
        examples: folder with ``labels.csv`` and DICOMs for the example cases; ``None``
            uses the quickstart data or synthesises a few cases.
        quickstart_dir: where ``medft quickstart`` wrote its output.
        cache_mb: memory budget of the case cache (decoded images and maps).
        concurrency: requests of one kind processed at once (the model itself runs one
            request at a time; decoding and rendering overlap).
        threads: torch intra-op threads (``None``: half the CPU cores, at least one).
    """

    checkpoint: Path | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    auth: tuple[str, str] | None = None
    max_file_mb: float = DEFAULT_MAX_FILE_MB
    max_pixels: int = DEFAULT_MAX_PIXELS
    view_size: int = DEFAULT_VIEW_SIZE
    metrics: Path | None = None
    examples: Path | None = None
    quickstart_dir: Path = QUICKSTART_DIR
    cache_mb: int = 512
    concurrency: int = 2
    threads: int | None = None
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    upload_ttl_s: float = DEFAULT_UPLOAD_TTL_S
    allow_unauthenticated: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.max_file_mb <= 4096:
            raise ConfigError(f"max_file_mb={self.max_file_mb} must lie in (0, 4096] MB")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port={self.port} is not a TCP port (0-65535)")
        if self.max_pixels < 1 or self.view_size < 64 or self.cache_mb < 16:
            raise ConfigError(
                "max_pixels must be positive, view_size at least 64 and cache_mb at least 16"
            )
        if self.concurrency < 1 or (self.threads is not None and self.threads < 1):
            raise ConfigError("concurrency and threads must be positive integers")
        if self.max_request_mb < self.max_file_mb or self.max_request_pixels < self.max_pixels:
            raise ConfigError(
                "max_request_mb and max_request_pixels must be at least the per-file limits "
                "(max_file_mb, max_pixels)"
            )
        if self.upload_ttl_s <= 0:
            raise ConfigError(f"upload_ttl_s={self.upload_ttl_s} must be positive")
        if not is_local(self.host) and self.auth is None and not self.allow_unauthenticated:
            raise ConfigError(
                f"refusing to serve on {self.host} without a login: anyone who can reach this "
                f"machine could open the page and its patient images. Use --auth USER:PASS (or "
                f"{AUTH_ENV}=USER:PASS), or pass --allow-unauthenticated to accept that"
            )

    @property
    def max_file_bytes(self) -> int:
        """The upload limit in bytes."""
        return int(self.max_file_mb * 1024 * 1024)

    @property
    def max_request_bytes(self) -> int:
        """The per-request upload quota in bytes."""
        return int(self.max_request_mb * 1024 * 1024)


def is_local(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (loopback)."""
    return host in LOCAL_HOSTS or host.startswith("127.")


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``"user:password"`` -> ``("user", "password")``; ``None``/empty -> ``None``."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigError(
            "--auth must look like USER:PASSWORD (both non-empty); or set "
            f"{AUTH_ENV}=USER:PASSWORD to keep the password out of the process list"
        )
    return user, password


DEMO_OPTIONS = FunctionOptions(DemoSettings, skip=frozenset({"checkpoint", "auth"}))
"""The demo's options: the fields of :class:`DemoSettings`, documented by its docstring."""


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` (``medft demo`` and ``python demo/app.py``).

    Two are written by hand because the command line gives them as text: the checkpoint
    may be a URL (refused unless allowed), and the login is ``USER:PASS`` or an
    environment variable. The rest are derived from :class:`DemoSettings`.
    """
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="medft checkpoint (.ckpt); default: the quickstart model if there is one "
        "(a URL only with MEDFT_ALLOW_REMOTE_CHECKPOINTS=1)",
    )
    parser.add_argument(
        "--auth",
        default=None,
        metavar="USER:PASS",
        help=f"require this login (or set {AUTH_ENV}=USER:PASS in the environment)",
    )
    add_function_options(parser, DEMO_OPTIONS)


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """Build :class:`DemoSettings` from parsed arguments (auth may come from the environment)."""
    auth = parse_auth(args.auth or os.environ.get(AUTH_ENV))
    checkpoint = args.checkpoint
    if checkpoint is not None and "://" in str(checkpoint):
        from medft.model.checkpoint import local_checkpoint  # refused, or downloaded and checked

        checkpoint = local_checkpoint(str(checkpoint))
    return DemoSettings(
        checkpoint=None if checkpoint is None else Path(checkpoint),
        auth=auth,
        **DEMO_OPTIONS.kwargs(args),
    )
