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


def progress_line(progress: FleetProgress, title: str, *, width: int | None = None) -> str:
    """The line, in rich markup: devices by state, throughput, and job executions by final status so far.

    With ``width`` (the terminal's columns) a line that does not fit breaks between two fields, never inside one
    (``4.53`` and ``MB/s`` stay together).
    """
    from rich.markup import escape
    from rich.text import Text

    p = progress
    fields = [
        f"[bold]{escape(title)}[/] waiting {p.waiting}",
        f"connecting {p.connecting}",
        f"downloading {p.downloading}",
        f"[green]verified {p.verified}[/]",
        f"[red]failed {p.failed}[/]",
        f"{p.mb_per_s:.2f} MB/s",
    ]
    if p.executions:
        fields.append("executions: " + ", ".join(f"{n} {status}" for status, n in sorted(p.executions.items())))
    if width is None:
        return "  ".join(fields)
    lines: list[list[str]] = [[]]
    used = 0
    for field in fields:
        size = len(Text.from_markup(field))
        if lines[-1] and used + 2 + size > width:
            lines.append([])
            used = 0
        used += size + (2 if len(lines[-1]) else 0)
        lines[-1].append(field)
    return "\n".join("  ".join(line) for line in lines)


@contextlib.contextmanager
def live_progress(progress: FleetProgress, title: str, *, quiet: bool) -> Iterator[None]:
    """Draw ``progress`` while the block runs (see the module docstring for when)."""
    if quiet or not sys.stderr.isatty():
        yield
        return
    from rich.console import Console
    from rich.live import Live

    console = Console(stderr=True)

    class View:
        def __rich__(self) -> str:
            return progress_line(progress, title, width=console.width)

    with Live(View(), console=console, refresh_per_second=4, transient=True):
        yield
