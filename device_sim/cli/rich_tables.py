"""rich renderings of the summary and sweep tables, for the CLI only (the core report code stays rich-free)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text

from device_sim.results.metrics import FleetSummary
from device_sim.results.sweep import SweepPoint, best_by_cost, best_by_time
from device_sim.results.tables import (
    SWEEP_COLUMNS,
    render_summary_text,
    render_sweep_table,
    summary_rows,
    sweep_best_lines,
    sweep_rows,
)

__all__ = ["print_summary_table", "print_sweep_table", "rich_summary_table", "rich_sweep_table"]


def print_summary_table(summary: FleetSummary) -> None:
    """Print the fleet summary table on stdout (every command that ends a fleet prints it this way)."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or CI: plain aligned text, never cut to 80 columns
        click_echo(f"device-sim fleet: {_verdict(summary)}\n{render_summary_text(summary)}")
        return
    console.print(rich_summary_table(summary))


def print_sweep_table(points: Sequence[SweepPoint], *, title: str = "block-size sweep") -> None:
    """On a terminal a rich table; piped or in CI (where rich would cut every column to fit 80 characters) the
    plain full-width text table, so no value is ever lost."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        click_echo(f"{title}\n{render_sweep_table(points)}")
        return
    console.print(rich_sweep_table(points, title=title))


def click_echo(text: str) -> None:
    import sys

    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def rich_summary_table(summary: FleetSummary) -> Table:
    """The fleet summary as a two-column table, titled with the verdict."""
    table = Table(title=f"device-sim fleet: {_verdict(summary)}", show_header=False, title_style="bold")
    table.add_column("metric", style="bold")
    table.add_column("value")
    for name, value in summary_rows(summary):
        style = "red" if name == "failures" and summary.failed else None
        table.add_row(name, Text(value, style=style or ""))
    return table


def _verdict(summary: FleetSummary) -> str:
    if summary.all_verified:
        return f"all {summary.devices} devices verified"
    return f"{summary.failed} of {summary.devices} devices failed"


def rich_sweep_table(points: Sequence[SweepPoint], *, title: str = "block-size sweep") -> Group:
    """The sweep table (best settings highlighted) followed by the best-by-time and best-by-cost lines."""
    table = Table(title=title, title_style="bold")
    for k, column in enumerate(SWEEP_COLUMNS):
        table.add_column(column, justify="left" if k == 0 else "right", no_wrap=True)
    best = {id(p) for p in (best_by_time(points), best_by_cost(points)) if p is not None}
    for point, row in zip(points, sweep_rows(points), strict=True):
        table.add_row(*row, style="bold green" if id(point) in best else None)
    return Group(table, *(Text(line, style="bold") for line in sweep_best_lines(points)))
