"""The rows of the summary and sweep tables, shared by the text, HTML and rich renderings (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence

from device_sim.results.metrics import Distribution, FleetSummary
from device_sim.results.sweep import (
    SweepPoint,
    best_by_cost,
    best_by_median,
    best_by_p90,
    best_by_time,
    format_size,
)

__all__ = [
    "SWEEP_COLUMNS",
    "fmt_seconds",
    "fmt_usd",
    "hidden_columns_note",
    "render_summary_text",
    "render_sweep_table",
    "summary_rows",
    "sweep_best_lines",
    "sweep_columns_shown",
    "sweep_rows",
]

SWEEP_COLUMNS: tuple[str, ...] = (
    "setting",
    "block size",
    "blocks/request",
    "inflight",
    "devices",
    "wall s",
    "median s",
    "p90 s",
    "MB/s",
    "messages",
    "cost US$",
    "retries",
    "stalls",
    "stall s",
    "aborts",
    "lost",
    "cut",
    "verified/failed",
)


def fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def fmt_usd(value: float) -> str:
    """Dollars with enough digits for small fleets: ``0.013000``, ``12.35``."""
    return f"{value:.6f}" if value < 1 else f"{value:,.2f}"


def _setting_text(value: object) -> str:
    """A setting as a person reads it: ``yes``/``no``, ``-`` for none (never Python's ``True``/``None``)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _pairs_text(pairs: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{name} {count}" for name, count in pairs) or "none"


def _dist_text(d: Distribution | None) -> str:
    if d is None:
        return "-"
    return f"p50 {d.p50:.3f}  p90 {d.p90:.3f}  p99 {d.p99:.3f}  max {d.max:.3f}  (n={d.count})"


def summary_rows(summary: FleetSummary) -> list[tuple[str, str]]:
    """``(name, value)`` rows describing one run, in display order."""
    s = summary
    settings = ", ".join(f"{k}={_setting_text(v)}" for k, v in s.settings) or "-"
    rows = [
        ("settings", settings),
        ("devices", f"{s.devices}: {s.verified} verified, {s.failed} failed"),
        ("wall time", f"{s.wall_s:.3f} s"),
        ("throughput", f"{s.throughput_mb_s:.3f} MB/s of verified data ({s.bytes_verified:,} bytes)"),
        ("connect s", _dist_text(s.connect_s)),
        ("first block s", _dist_text(s.first_block_s)),
        ("download s", _dist_text(s.download_s)),
        ("blocks", f"{s.blocks:,} ({s.duplicates:,} duplicates, {s.invalid_blocks:,} invalid)"),
        ("requests", f"{s.requests:,} ({s.re_requests:,} re-requests, {s.timeouts:,} timeouts)"),
        (
            "stalls",
            f"{s.stalls:,} request waits expired ({s.stall_s:.1f} s lost), {s.aborts:,} momentum aborts, "
            f"{s.lost_blocks:,} blocks missing at expiry, {s.cut_answers:,} answers cut short",
        ),
        ("rejections", _pairs_text(s.rejections)),
        ("disconnects", f"{s.disconnects:,}"),
        ("failures", _pairs_text(s.failures_by_reason)),
        (
            "metered messages",
            f"{s.metered_messages:,} ({s.metered_messages_out:,} out, {s.metered_messages_in:,} in)",
        ),
        ("cost estimate", f"US${fmt_usd(s.cost_usd)} at US${s.price_per_million_usd:g} per million messages"),
    ]
    if s.executions_by_status:  # devices that followed an OTA job (fleet --jobs): their executions' final status
        rows.insert(2, ("job executions", _pairs_text(s.executions_by_status)))
    return rows


def render_summary_text(summary: FleetSummary) -> str:
    """The summary as aligned plain text (for logs and a terminal without rich)."""
    rows = summary_rows(summary)
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def sweep_rows(points: Sequence[SweepPoint]) -> list[tuple[str, ...]]:
    """One row of ``SWEEP_COLUMNS`` per point, in the given order."""
    rows: list[tuple[str, ...]] = []
    for p in points:
        s = p.summary
        d = s.download_s
        rows.append(
            (
                p.label,
                format_size(p.block_size),
                "-" if p.blocks_per_request is None else str(p.blocks_per_request),
                "-" if p.inflight is None else str(p.inflight),
                str(s.devices),
                f"{s.wall_s:.3f}",
                "-" if d is None else f"{d.p50:.3f}",
                "-" if d is None else f"{d.p90:.3f}",
                f"{s.throughput_mb_s:.3f}",
                f"{s.metered_messages:,}",
                fmt_usd(s.cost_usd),
                f"{p.retries:,}",
                f"{s.stalls:,}",
                f"{s.stall_s:.1f}",
                f"{s.aborts:,}",
                f"{s.lost_blocks:,}",
                f"{s.cut_answers:,}",
                f"{s.verified}/{s.failed}",
            )
        )
    return rows


#: Columns that always stay in a sweep table, even when they hold the same value in every row.
_KEEP_COLUMNS = frozenset(
    {
        "setting",
        "block size",
        "devices",
        "wall s",
        "median s",
        "p90 s",
        "MB/s",
        "messages",
        "cost US$",
        "verified/failed",
    }
)


def sweep_columns_shown(points: Sequence[SweepPoint]) -> tuple[list[int], list[str]]:
    """Indexes of the ``SWEEP_COLUMNS`` worth showing on a screen and the names of the ones left out: a column that
    says nothing (``-`` or zero in every row, e.g. the device profiles' stall columns in an engine sweep) is left
    out, so the table fits a terminal or a page. The plain text table and ``sweep.csv`` keep every column."""
    rows = sweep_rows(points)
    shown: list[int] = []
    hidden: list[str] = []
    for k, name in enumerate(SWEEP_COLUMNS):
        empty = bool(rows) and all(row[k] in ("-", "0", "0.0", "0.000") for row in rows)
        if empty and name not in _KEEP_COLUMNS:
            hidden.append(name)
        else:
            shown.append(k)
    return shown, hidden


def hidden_columns_note(hidden: Sequence[str]) -> str:
    """The sentence under a table that left columns out (empty when none)."""
    return f"columns left out (- or 0 for every setting): {', '.join(hidden)}" if hidden else ""


def sweep_best_lines(points: Sequence[SweepPoint]) -> list[str]:
    """``best by time: ...`` and ``best by cost: ...`` sentences (empty for no points)."""
    fastest, cheapest = best_by_time(points), best_by_cost(points)
    if fastest is None or cheapest is None:
        return []
    note = "" if any(p.summary.all_verified for p in points) else " (every setting had failed devices)"
    median, p90 = best_by_median(points), best_by_p90(points)
    assert median is not None and p90 is not None
    return [
        f"best by time: {fastest.label} ({fastest.summary.wall_s:.3f} s, "
        f"{fastest.summary.throughput_mb_s:.3f} MB/s){note}",
        f"best by median time: {median.label} ({_spread(median)}){note}",
        f"best by p90 time: {p90.label} ({_spread(p90)}){note}",
        f"best by cost: {cheapest.label} ({cheapest.metered_per_device:,.1f} metered messages per device, "
        f"US${fmt_usd(cheapest.summary.cost_usd)}){note}",
    ]


def _spread(p: SweepPoint) -> str:
    d = p.summary.download_s
    return "no download times" if d is None else f"median {d.p50:.3f} s, p90 {d.p90:.3f} s over {d.count} devices"


def render_sweep_table(points: Sequence[SweepPoint]) -> str:
    """The sweep as a fixed-width text table followed by the best settings (numbers right-aligned)."""
    rows = [SWEEP_COLUMNS, *sweep_rows(points)]
    widths = [max(len(row[k]) for row in rows) for k in range(len(SWEEP_COLUMNS))]
    lines = [
        "  ".join(
            cell.ljust(w) if k == 0 else cell.rjust(w) for k, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, *sweep_best_lines(points)])
