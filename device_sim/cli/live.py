"""The live progress line of ``device-sim fleet``, ``fleet --jobs`` and ``sweep`` (drawn from a ``FleetProgress``).

On a terminal (stderr) it is one line redrawn four times a second and removed when the run ends; with ``--quiet``
or when stderr is not a terminal nothing is drawn, so piped or logged output stays plain lines without control
codes.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from device_sim.fleet.runner import FleetProgress

__all__ = ["live_progress", "progress_line"]


def progress_line(progress: FleetProgress, title: str) -> str:
    """The line, in rich markup: devices by state, throughput, and job executions by final status so far."""
    p = progress
    line = (
        f"[bold]{title}[/] waiting {p.waiting}  connecting {p.connecting}  "
        f"downloading {p.downloading}  [green]verified {p.verified}[/]  "
        f"[red]failed {p.failed}[/]  {p.mb_per_s:.2f} MB/s"
    )
    if p.executions:
        line += "  executions: " + ", ".join(f"{n} {status}" for status, n in sorted(p.executions.items()))
    return line


@contextlib.contextmanager
def live_progress(progress: FleetProgress, title: str, *, quiet: bool) -> Iterator[None]:
    """Draw ``progress`` while the block runs (see the module docstring for when)."""
    if quiet or not sys.stderr.isatty():
        yield
        return
    from rich.console import Console
    from rich.live import Live

    class View:
        def __rich__(self) -> str:
            return progress_line(progress, title)

    with Live(View(), console=Console(stderr=True), refresh_per_second=4, transient=True):
        yield
