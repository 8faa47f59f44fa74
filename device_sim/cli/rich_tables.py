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
    hidden_columns_note,
    render_summary_text,
    render_sweep_table,
    summary_rows,
    sweep_best_lines,
    sweep_columns_shown,
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
    console.print(rich_sweep_table(points, title=title, width=console.width))


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


def rich_sweep_table(
    points: Sequence[SweepPoint], *, title: str = "block-size sweep", width: int | None = None
) -> Group:
    """The sweep table (best settings highlighted) followed by the best-by-time and best-by-cost lines.

    Columns that are ``-`` or 0 for every setting are left out (a line says which). With ``width`` (the terminal's
    columns) a table wider than that is split into several tables stacked, each starting with the setting, so
    rich never has to cut a value to ``…``.
    """
    shown, hidden = sweep_columns_shown(points)
    rows = sweep_rows(points)
    best = {id(p) for p in (best_by_time(points), best_by_cost(points)) if p is not None}
    styles = ["bold green" if id(point) in best else None for point in points]
    parts: list[Table | Text] = []
    for n, group in enumerate(_column_groups(shown, rows, width)):
        table = Table(title=title if n == 0 else None, title_style="bold")
        for k in group:
            table.add_column(SWEEP_COLUMNS[k], justify="left" if k == 0 else "right", no_wrap=True)
        for row, style in zip(rows, styles, strict=True):
            table.add_row(*(row[k] for k in group), style=style)
        parts.append(table)
    if hidden:
        parts.append(Text(hidden_columns_note(hidden), style="dim"))
    return Group(*parts, *(Text(line, style="bold") for line in sweep_best_lines(points)))


def _column_groups(shown: Sequence[int], rows: Sequence[Sequence[str]], width: int | None) -> list[list[int]]:
    """``shown`` split into runs that fit ``width`` characters as a boxed table, each led by column 0."""
    if width is None:
        return [list(shown)]

    def cells(k: int) -> int:  # the column's text, its padding and its left border
        return max(len(SWEEP_COLUMNS[k]), *(len(row[k]) for row in rows)) + 3

    first, rest = shown[0], shown[1:]
    groups: list[list[int]] = [[first]]
    used = cells(first) + 1  # + the table's right border
    for k in rest:
        if used + cells(k) > width and len(groups[-1]) > 1:
            groups.append([first])
            used = cells(first) + 1
        groups[-1].append(k)
        used += cells(k)
    return groups
