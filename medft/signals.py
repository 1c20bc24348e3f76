"""Stop cleanly on SIGTERM and SIGINT: exit 143 / 130, never as a success.

SLURM sends SIGTERM at a time limit or on preemption, a user presses Ctrl-C. While a
fit is running (see :class:`medft.lightning_cli.StopOnSignal`) the first signal is only
recorded: training stops at the end of the current batch, after saving ``last.ckpt``
there (the same state a periodic checkpoint holds, so ``--ckpt_path last.ckpt`` or
``medft cv --resume`` continue from that batch). Outside a fit, the signal raises
:class:`Interrupted` at once. A second Ctrl-C during a fit stops at once.

The shell convention for "killed by signal N" is exit status ``128 + N``: 143 for
SIGTERM, 130 for SIGINT; :func:`exit_status` gives it.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = [
    "Interrupted",
    "exit_status",
    "fit_running",
    "install",
    "raise_if_received",
    "received",
    "reset",
    "take_back_sigterm",
]

_state: dict[str, int | bool | None] = {"signum": None, "fit": False, "installed": False}


class Interrupted(BaseException):
    """The run was stopped by a signal (a BaseException: ordinary ``except Exception`` lets
    it through, so nothing half-finished is reported as done)."""

    def __init__(self, signum: int, detail: str = "") -> None:
        self.signum = int(signum)
        name = signal.Signals(self.signum).name
        super().__init__(f"stopped by {name}{'; ' + detail if detail else ''}")

    @property
    def exit_status(self) -> int:
        """``128 + signal number`` (143 for SIGTERM, 130 for SIGINT)."""
        return exit_status(self.signum)


def exit_status(signum: int) -> int:
    """The conventional exit status of a process stopped by ``signum``."""
    return 128 + int(signum)


def received() -> int | None:
    """The signal received since :func:`install` (or :func:`reset`), if any."""
    value = _state["signum"]
    return None if value is None else int(value)


def reset() -> None:
    """Forget a received signal (tests; a new run in the same process)."""
    _state["signum"] = None
    _state["fit"] = False


def fit_running(running: bool) -> None:
    """Say whether a fit is running (then a first signal waits for the batch to end)."""
    _state["fit"] = bool(running)


def raise_if_received(detail: str = "") -> None:
    """Raise :class:`Interrupted` if a signal arrived (call before writing a DONE marker)."""
    signum = received()
    if signum is not None:
        raise Interrupted(signum, detail)


def _handler(signum: int, frame: FrameType | None) -> None:
    first = _state["signum"] is None
    _state["signum"] = signum
    if _state["fit"] and (first or signum == signal.SIGTERM):
        return  # the fit stops at the end of this batch (StopOnSignal)
    if signum == signal.SIGINT and not first:
        raise KeyboardInterrupt
    raise Interrupted(signum)


def install() -> bool:
    """Handle SIGTERM and SIGINT as described above (main thread only).

    Returns:
        Whether the handlers were installed (not from a non-main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    reset()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _handler)
    _state["installed"] = True
    return True


def take_back_sigterm() -> bool:
    """Make SIGTERM medft's again after Lightning registered its own handler for a fit.

    Lightning's handler sets a flag that ends the fit at the next epoch end (or just after
    the batch hooks) with ``SIGTERMException``, before :class:`StopOnSignal
    <medft.lightning_cli.StopOnSignal>` can save ``last.ckpt`` at a batch: a SIGTERM during
    validation stopped the run with nothing saved. Only where :func:`install` ran (the
    ``medft`` command); Lightning restores the previous handler at the end of the fit.

    Returns:
        Whether SIGTERM was taken back.
    """
    if not _state["installed"] or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _handler)
    return True
