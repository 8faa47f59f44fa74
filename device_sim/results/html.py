"""``report.html``: one self-contained page (inline CSS and SVG, no scripts, no external assets).

Sections: verdict, summary table, download-time histogram, fleet progress over time, failures and, for a
sweep, the best settings, the per-setting table and time / throughput / cost against block size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from html import escape

from device_sim.results.metrics import MEGABYTE, DeviceMetrics, FleetSummary, aggregate_progress
from device_sim.results.svg import Series, histogram_chart, line_chart
from device_sim.results.sweep import SweepPoint, best_by_cost, best_by_time, format_size
from device_sim.results.tables import (
    SWEEP_COLUMNS,
    fmt_usd,
    hidden_columns_note,
    summary_rows,
    sweep_best_lines,
    sweep_columns_shown,
    sweep_rows,
)

__all__ = ["MAX_FAILURE_ROWS", "render_html", "report_title"]

#: The failures table lists at most this many devices (devices.csv has them all).
MAX_FAILURE_ROWS = 500

_CSS = """
body { font-family: sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1000px; color: #222; }
.scroll { overflow-x: auto; margin: 0.5em 0 1.5em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td { overflow-wrap: anywhere; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.summary td:first-child { white-space: nowrap; }
table.sweep { font-size: 0.9em; }
table.sweep th { text-align: right; } table.sweep th:first-child { text-align: left; }
table.sweep td:first-child { white-space: nowrap; }
.verdict { font-size: 1.2em; font-weight: bold; padding: 0.5em; }
.ok { background: #e6f4e6; } .fail { background: #fbe3e3; }
.best { font-weight: bold; } tr.best { background: #e6f4e6; }
svg.chart { display: block; margin: 0.5em 0 1.5em; max-width: 100%; height: auto; }
"""


def _table(
    headers: Sequence[str] | None,
    rows: Sequence[Sequence[str]],
    *,
    numeric_from: int | None = None,
    css_class: str = "",
    row_classes: Sequence[str] = (),
) -> str:
    """A table in a horizontally scrolling box, so a wide table never widens the page."""
    head = "<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr></thead>" if headers else ""
    body = []
    for n, row in enumerate(rows):
        cells = []
        for k, cell in enumerate(row):
            cls = ' class="num"' if numeric_from is not None and k >= numeric_from else ""
            cells.append(f"<td{cls}>{escape(cell)}</td>")
        row_cls = f' class="{row_classes[n]}"' if n < len(row_classes) and row_classes[n] else ""
        body.append(f"<tr{row_cls}>{''.join(cells)}</tr>")
    table_cls = f' class="{css_class}"' if css_class else ""
    return f'<div class="scroll"><table{table_cls}>{head}<tbody>{"".join(body)}</tbody></table></div>'


def report_title(summary: FleetSummary, sweep: Sequence[SweepPoint] | None = None) -> str:
    """What run this is, in words: ``device-sim fleet: 12 devices, 4KiB blocks, cbor`` or
    ``device-sim block-size sweep: 8 settings, 96 device runs``."""
    settings = summary.settings_dict
    if sweep:
        return f"device-sim block-size sweep: {len(sweep)} settings, {summary.devices} device runs"
    kind = "OTA job fleet" if summary.executions_by_status or settings.get("jobs") is True else "fleet"
    parts = [f"{summary.devices} device{'' if summary.devices == 1 else 's'}"]
    block_size = settings.get("block_size")
    if isinstance(block_size, int) and not isinstance(block_size, bool):
        parts.append(f"{format_size(block_size)} blocks")
    for key in ("format", "profile"):
        value = settings.get(key)
        if isinstance(value, str) and value:
            parts.append(value)
    return f"device-sim {kind}: {', '.join(parts)}"


def _verdict(summary: FleetSummary) -> str:
    if summary.all_verified:
        return f'<p class="verdict ok">All {summary.devices} devices verified.</p>'
    if summary.devices == 0:
        return '<p class="verdict fail">No devices ran.</p>'
    return f'<p class="verdict fail">{summary.failed} of {summary.devices} devices failed.</p>'


def _failures(records: Sequence[DeviceMetrics]) -> str:
    failed = [r for r in records if not r.verified]
    if not failed:
        return "<p>None.</p>"
    rows = [
        (r.thing_name, r.settings, r.failure_reason or "", r.failure_message or "", f"{r.bytes:,}")
        for r in failed[:MAX_FAILURE_ROWS]
    ]
    note = ""
    if len(failed) > MAX_FAILURE_ROWS:
        note = f"<p>... and {len(failed) - MAX_FAILURE_ROWS} more (see devices.csv).</p>"
    return (
        _table(("device", "settings", "reason", "message", "bytes"), rows, numeric_from=4, css_class="failures") + note
    )


_SWEEP_CHARTS: tuple[tuple[str, str, Callable[[SweepPoint], float]], ...] = (
    ("Fleet wall time vs block size", "seconds", lambda p: p.summary.wall_s),
    ("Throughput vs block size", "MB/s", lambda p: p.summary.throughput_mb_s),
    ("Metered cost vs block size", "US$", lambda p: p.summary.cost_usd),
)


def _sweep_series(points: Sequence[SweepPoint], value: Callable[[SweepPoint], float]) -> list[Series]:
    """One line per (blocks per request, inflight) combination, block size on x."""
    groups: dict[tuple[int, int], list[SweepPoint]] = defaultdict(list)
    for p in points:
        groups[(p.blocks_per_request or 0, p.inflight or 0)].append(p)
    out = []
    for (bpr, inflight), pts in sorted(groups.items()):
        name = " ".join(part for part in (f"x{bpr}" if bpr else "", f"inflight {inflight}" if inflight else "") if part)
        out.append(Series(name=name or "fleet", points=tuple((p.block_size, value(p)) for p in pts)))
    return out


def _spread_series(points: Sequence[SweepPoint]) -> list[Series]:
    """Download time per setting with its spread: median and p90 lines per blocks-per-request group (min and max
    too when there is one group)."""
    groups: dict[str, list[SweepPoint]] = defaultdict(list)
    for p in points:
        if p.summary.download_s is not None:
            groups[_group_name(p)].append(p)
    out: list[Series] = []
    # One group: the whole spread (min .. max); several: median and p90 only, so the lines stay readable.
    stats: tuple[tuple[str, str], ...] = (("min", "min"), ("p50", "median"), ("p90", "p90"), ("max", "max"))
    if len(groups) > 1:
        stats = stats[1:3]
    for group, pts in sorted(groups.items()):
        for stat, name in stats:
            values = tuple((float(p.block_size), float(getattr(p.summary.download_s, stat))) for p in pts)
            out.append(Series(name=name if group == "fleet" else f"{group} {name}", points=values))
    return out


def _group_name(p: SweepPoint) -> str:
    parts = (f"x{p.blocks_per_request}" if p.blocks_per_request else "", f"inflight {p.inflight}" if p.inflight else "")
    return " ".join(part for part in parts if part) or "fleet"


def _sweep_section(points: Sequence[SweepPoint]) -> str:
    best = "".join(f'<p class="best">{escape(line)}</p>' for line in sweep_best_lines(points))
    winners = {id(p) for p in (best_by_time(points), best_by_cost(points)) if p is not None}
    row_classes = ["best" if id(p) in winners else "" for p in points]
    shown, hidden = sweep_columns_shown(points)
    headers = [SWEEP_COLUMNS[k] for k in shown]
    rows = [[row[k] for k in shown] for row in sweep_rows(points)]
    note = f"<p>{escape(hidden_columns_note(hidden))} (sweep.csv has every column).</p>" if hidden else ""
    spread = line_chart(
        _spread_series(points),
        title="Download time per setting over the devices (median and p90; one group: min to max)",
        x_label="block size",
        y_label="seconds",
        log2_x=True,
        x_tick_format=lambda x: format_size(int(x)),
    )
    charts = "".join(
        line_chart(
            _sweep_series(points, value),
            title=title,
            x_label="block size",
            y_label=y_label,
            log2_x=True,
            x_tick_format=lambda x: format_size(int(x)),
        )
        for title, y_label, value in _SWEEP_CHARTS
    )
    return (
        f"<h2>Block-size sweep</h2>{best}"
        + _table(headers, rows, numeric_from=1, css_class="sweep", row_classes=row_classes)
        + note
        + "<p>Rank settings on local_iot only with AWS-like latency and quotas (--latency-ms, --quotas aws); "
        "without them small blocks look better than they would on AWS.</p>" + spread + charts
    )


def render_html(
    summary: FleetSummary, records: Sequence[DeviceMetrics], *, sweep: Sequence[SweepPoint] | None = None
) -> str:
    """The whole page as text."""
    title = report_title(summary, sweep)
    downloads = [r.download_s for r in records if r.download_s is not None]
    progress = aggregate_progress(records)
    progress_chart = line_chart(
        [Series(name="fleet", points=tuple((t, b / MEGABYTE) for t, b in progress))],
        title="Fleet progress over time",
        x_label="seconds since start",
        y_label="MB received",
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        _verdict(summary),
        "<h2>Summary</h2>",
        _table(None, summary_rows(summary), css_class="summary"),
        f"<p>Cost estimate: US${escape(fmt_usd(summary.cost_usd))} for {summary.metered_messages:,} metered "
        "messages (5 KB steps of payload + topic, each message sent or received).</p>",
        "<h2>Download time</h2>",
        histogram_chart(downloads, title="Download time distribution", x_label="seconds"),
        "<h2>Progress</h2>",
        progress_chart,
        "<h2>Failures</h2>",
        _failures(records),
    ]
    if sweep:
        parts.append(_sweep_section(sweep))
    parts.append("</body></html>\n")
    return "\n".join(parts)
