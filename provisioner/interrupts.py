"""SIGINT/SIGTERM: stop a run between two AWS calls, so the manifest records everything that was created.

How this works: ``catch_signals`` installs handlers for SIGINT and SIGTERM that only *set* a ``StopSignal``. The
``Api`` checks it before every call (and sleeps through ``StopSignal.sleep``, which wakes up at once), long local
loops (hashing, generating, uploading parts) call ``check`` between chunks. A call that AWS already answered is
therefore always recorded before the run stops: the next check comes after the manifest was written. The check
raises ``Interrupted`` (exit 130) or ``Terminated`` (exit 143). A second signal while the first is being honoured
raises at once (for a call that hangs); the message then says that the last call may be missing.

Handlers can only be installed in the main thread; elsewhere (a CliRunner in a worker thread) the signals keep
their previous handlers and ``StopSignal`` is only set by ``set``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from .errors import Interrupted, Terminated

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_error(signum: int, message: str | None = None) -> Interrupted:
    """``Terminated`` for SIGTERM, ``Interrupted`` for SIGINT (and anything else)."""
    name = signal.Signals(signum).name
    text = message or f"stopped by {name}"
    return Terminated(text) if signum == signal.SIGTERM else Interrupted(text)


class StopSignal:
    """Set by a signal handler; checked between calls. Thread-safe."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
        self._event.set()

    def check(self) -> None:
        """Raise ``Interrupted``/``Terminated`` when a signal arrived."""
        if self.signum is not None:
            raise signal_error(self.signum)

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up and raise at once when a signal arrives."""
        self.check()
        if seconds > 0 and self._event.wait(seconds):
            self.check()


@contextmanager
def catch_signals(stop: StopSignal) -> Iterator[StopSignal]:
    """SIGINT/SIGTERM set ``stop`` while the block runs (main thread only); the old handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set:
            raise signal_error(
                signum, f"stopped at once by a second {signal.Signals(signum).name}; the last call may be unrecorded"
            )
        stop.set(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


__all__ = ["SIGNALS", "StopSignal", "catch_signals", "signal_error"]
