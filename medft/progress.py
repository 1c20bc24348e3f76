"""Progress of long loops: a bar on a terminal, plain lines in logs, nothing when quiet.

Every command that may take more than a few seconds reports its progress through
:func:`progress` (or :func:`track`), so they all look and behave alike:

- on a terminal (stderr is a TTY): a rich bar with counts, rate and ETA, as Lightning shows;
- otherwise (a pipe, a CI log, a SLURM ``.out`` file): one plain line every few percent
  (and at least once a minute while something moves), each with counts, rate and ETA;
- with ``--quiet`` (:func:`set_quiet`) or ``MEDFT_QUIET=1``: nothing.

Progress goes to stderr, so a command's result on stdout (``--json``) stays clean. Only the
process that creates a :class:`Progress` prints; worker processes report through their results.

Example::

    with progress("reading files", total=len(paths), unit="files") as bar:
        for chunk in chunks:
            ...
            bar.advance(len(chunk))
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Literal, TypeVar

__all__ = ["Progress", "is_quiet", "progress", "set_quiet", "track"]

T = TypeVar("T")
Style = Literal["auto", "bar", "lines", "silent"]

_quiet = False
LINE_STEP_PERCENT = 5.0
"""Plain-line mode prints when the done share crosses each multiple of this many percent."""
LINE_HEARTBEAT_S = 60.0
"""... and at least this often while work advances (a 5% step of a big data set is long)."""
LINE_MIN_INTERVAL_S = 1.0
"""... but never more often than this (a small job prints its last line, not twenty)."""


def set_quiet(quiet: bool) -> None:
    """Silence (or restore) every progress report of this process (the CLI's ``--quiet``)."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    """Whether progress is silenced, by :func:`set_quiet` or the ``MEDFT_QUIET`` variable."""
    flag = os.environ.get("MEDFT_QUIET", "").strip().lower()
    return _quiet or flag in {"1", "true", "yes", "on"}


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """A counter of work done, shown according to the output it goes to.

    Args:
        description: What is being done, e.g. ``"reading files"``.
        total: Units of work in all; ``None`` when unknown (counts and rate, no ETA).
        unit: Name of one unit in plain lines (``files``, ``images``, ``folds``).
        quiet: ``True`` prints nothing; ``None`` follows :func:`is_quiet`.
        style: ``"auto"`` (bar on a terminal, else lines), or force ``"bar"``, ``"lines"``
            or ``"silent"``. Use ``"lines"`` around work that draws its own bar (a fit).
        stream: Where to write (default ``sys.stderr``).
    """

    def __init__(
        self,
        description: str,
        total: int | None = None,
        *,
        unit: str = "items",
        quiet: bool | None = None,
        style: Style = "auto",
        stream: IO[str] | None = None,
    ) -> None:
        self.description = description
        self.total = None if total is None else max(0, int(total))
        self.unit = unit
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        if quiet if quiet is not None else is_quiet():
            style = "silent"
        elif style == "auto":
            style = "bar" if _is_terminal(self._stream) else "lines"
        self.style: Style = style
        self._started = time.monotonic()
        self._last_line = self._started
        self._next_percent = LINE_STEP_PERCENT
        self._next_count = 100
        self._closed = False
        self._rich = None
        self._task = None
        if style == "bar":
            self._start_bar()
        elif style == "lines":
            self._write(self.line())  # a sign of life before the first step is done

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        self._rich = RichProgress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=self._stream),
            transient=False,
        )
        self._rich.start()
        self._task = self._rich.add_task(self.description, total=self.total)

    # ----------------------------------------------------------------------------------------

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units done (and show it when a report is due)."""
        if self._closed:
            return
        self.done += int(n)
        if self.style == "bar" and self._rich is not None:
            self._rich.update(self._task, completed=self.done)
        elif self.style == "lines":
            self._maybe_line()

    def _maybe_line(self) -> None:
        now = time.monotonic()
        due = now - self._last_line >= LINE_HEARTBEAT_S
        if self.total:
            percent = 100.0 * self.done / self.total
            if percent >= self._next_percent:
                due = True
                while self._next_percent <= percent:
                    self._next_percent += LINE_STEP_PERCENT
        elif self.done >= self._next_count:
            due = True
            while self._next_count <= self.done:
                self._next_count *= 10
        due = due and now - self._last_line >= LINE_MIN_INTERVAL_S
        if due and not (self.total and self.done >= self.total):  # the end line comes on close
            self._write(self.line())
            self._last_line = now

    def line(self, *, final: bool = False) -> str:
        """The plain-text report: counts, share, rate and ETA (or total time when final)."""
        elapsed = time.monotonic() - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        counts = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        parts = [f"{self.description}: {counts} {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.done / self.total:.0f}%)"
        parts.append(f"{rate:.1f} {self.unit}/s")
        if final:
            parts.append(f"done in {_duration(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        return ", ".join(parts)

    def _write(self, text: str) -> None:
        # A closed pipe must not kill the work being reported.
        with contextlib.suppress(OSError, ValueError):
            print(f"medft: {text}", file=self._stream, flush=True)

    def close(self) -> None:
        """End the report: stop the bar, or print the last line (with the time taken)."""
        if self._closed:
            return
        self._closed = True
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done)
            self._rich.stop()
        elif self.style == "lines":
            self._write(self.line(final=True))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    description: str,
    total: int | None = None,
    *,
    unit: str = "items",
    quiet: bool | None = None,
    style: Style = "auto",
) -> Progress:
    """Start a progress report; use it as a context manager and call ``advance(n)``.

    Args:
        description: What is being done (``"reading files"``).
        total: Units in all, or ``None`` when unknown.
        unit: Unit name for plain lines.
        quiet: Force silence (``True``) or follow ``--quiet``/``MEDFT_QUIET`` (``None``).
        style: ``"auto"``, ``"bar"``, ``"lines"`` or ``"silent"`` (see :class:`Progress`).

    Returns:
        The :class:`Progress`.
    """
    return Progress(description, total, unit=unit, quiet=quiet, style=style)


def track(
    items: Iterable[T],
    description: str,
    *,
    total: int | None = None,
    unit: str = "items",
    quiet: bool | None = None,
    style: Style = "auto",
) -> Iterator[T]:
    """Yield ``items`` while reporting one unit of progress per item.

    Args:
        items: The work items.
        description: What is being done.
        total: Number of items (default ``len(items)`` when it has one).
        unit: Unit name for plain lines.
        quiet: Force silence or follow ``--quiet`` (``None``).
        style: See :class:`Progress`.

    Yields:
        Each item, after the previous one was counted.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(description, total, unit=unit, quiet=quiet, style=style) as bar:
        for item in items:
            yield item
            bar.advance()
