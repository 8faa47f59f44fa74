"""What a person sees: report.html without Python reprs, titled with the run, wide tables in their own scroll box;
distinct chart tick labels; sweep tables that fit 80 columns on a terminal; the live line breaking between fields."""

from __future__ import annotations

import dataclasses
import io
import re
from dataclasses import dataclass, field

from rich.console import Console

from device_sim.cli.live import progress_line
from device_sim.cli.rich_tables import rich_sweep_table
from device_sim.results.html import render_html, report_title
from device_sim.results.metrics import DeviceMetrics, SettingValue, aggregate
from device_sim.results.svg import histogram_chart, nice_ticks, tick_labels
from device_sim.results.sweep import SweepPoint
from device_sim.results.tables import SWEEP_COLUMNS, render_sweep_table, summary_rows

MIB = 1 << 20


def device(name: str, *, ok: bool = True, download_s: float = 2.0, settings: str = "4KiB x1") -> DeviceMetrics:
    return DeviceMetrics(
        thing_name=name,
        settings=settings,
        verified=ok,
        failure_reason=None if ok else "timeout",
        failure_message=None if ok else "no block for 10 s",
        connect_s=0.05,
        first_block_s=None if not ok else 0.2,
        download_s=download_s if ok else None,
        bytes=MIB if ok else 0,
        blocks=256 if ok else 0,
        metered_messages_out=16,
        metered_messages_in=256,
        started_at=0.0,
        ended_at=download_s,
        progress=((0.1, 0), (download_s, MIB if ok else 0)),
    )


def point(block_size: int, n: int, wall_s: float) -> SweepPoint:
    records = [device(f"d{k}", download_s=wall_s - k * 0.01, settings=f"{block_size} x{n}") for k in range(3)]
    return SweepPoint(block_size=block_size, blocks_per_request=n, summary=aggregate(records, wall_s=wall_s))


def test_html_of_a_run_with_failed_devices_shows_no_python_values() -> None:
    records = [device("ok-1", download_s=2.0101), device("ok-2", download_s=2.0255), device("bad", ok=False)]
    settings: dict[str, SettingValue] = {
        "devices": 3,
        "block_size": 4096,
        "format": "cbor",
        "blocks_per_request": None,
        "jobs": False,
    }
    summary = aggregate(records, wall_s=3.0, settings=settings)
    html = render_html(summary, records)
    text = re.sub(r"<[^>]+>", " ", html)  # what the page shows, tooltips included
    for word in ("None", "nan", "True", "False", "inf"):
        assert not re.search(rf"\b{word}\b", text), word
    assert "blocks_per_request=-" in text and "jobs=no" in text
    assert "<h1>device-sim fleet: 3 devices, 4KiB blocks, cbor</h1>" in html
    assert "1 of 3 devices failed" in html and "no block for 10 s" in html


def test_titles_say_which_run() -> None:
    ok = [device("a")]
    assert report_title(aggregate(ok, wall_s=1.0)) == "device-sim fleet: 1 device"
    jobs = aggregate(ok, wall_s=1.0, settings={"block_size": 1024, "jobs": True})
    assert report_title(jobs) == "device-sim OTA job fleet: 1 device, 1KiB blocks"
    points = [point(1024, 1, 3.0), point(4096, 1, 2.0)]
    both = aggregate([], wall_s=5.0)
    assert report_title(both, points) == "device-sim block-size sweep: 2 settings, 0 device runs"


def test_wide_sweep_table_scrolls_in_its_own_box_and_leaves_out_empty_columns() -> None:
    points = [point(1024, 1, 3.0), point(4096, 1, 2.0), point(16384, 2, 1.0)]
    html = render_html(aggregate([], wall_s=6.0), [], sweep=points)
    table = re.search(r'<div class="scroll"><table class="sweep">.*?</table></div>', html)
    assert table, "the sweep table is not in a scroll box"
    assert "<th>stalls</th>" not in table.group(0) and "<th>verified/failed</th>" in table.group(0)
    assert "columns left out (- or 0 for every setting): inflight, retries, stalls" in html
    assert html.count('<tr class="best">') == 1  # 16KiB x2 is fastest and cheapest


def test_tick_labels_are_distinct_and_exact() -> None:
    ticks = nice_ticks(2.0101, 2.0255)  # 2.010 .. 2.030 in steps of 0.005
    labels = tick_labels(ticks)
    assert labels == ["2.010", "2.015", "2.020", "2.025", "2.030"]
    assert tick_labels(nice_ticks(0.278, 0.29))[:3] == ["0.2775", "0.2800", "0.2825"]
    assert tick_labels([0.0, 250000.0, 500000.0]) == ["0", "250,000", "500,000"]
    svg = histogram_chart([2.0101, 2.0155, 2.0201, 2.0255], title="t", x_label="seconds")
    x_labels = re.findall(r'text-anchor="middle" [^>]*>([0-9.,]+)</text>', svg)
    assert len(x_labels) == len(set(x_labels)) >= 3, x_labels


def test_plain_sweep_table_right_aligns_numbers() -> None:
    lines = render_sweep_table([point(1024, 1, 13.0), point(65536, 1, 0.5)]).splitlines()
    end = lines[0].index("wall s") + len("wall s")
    assert lines[2][:end].endswith("13.000") and lines[3][:end].endswith(" 0.500")


def test_rich_sweep_table_fits_80_columns_without_cutting_values() -> None:
    points = [point(1024, 1, 13.0), point(4096, 2, 2.0), point(65536, 1, 0.5)]
    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(rich_sweep_table(points, width=80))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    for column in ("setting", "median s", "cost US$", "verified/failed"):
        assert column in out
    assert "columns left out" in out and "3/0" in out
    assert set(SWEEP_COLUMNS) >= {"stalls"}


@dataclass
class Progress:
    waiting: int = 0
    connecting: int = 7
    downloading: int = 993
    verified: int = 1000
    failed: int = 0
    mb_per_s: float = 123.45
    executions: dict[str, int] = field(default_factory=lambda: {"SUCCEEDED": 1000})


def test_live_line_breaks_between_fields_to_fit_the_terminal() -> None:
    text = progress_line(Progress(), "jobs fleet of 2000", width=80)  # type: ignore[arg-type]
    plain = re.sub(r"\[/?[a-z ]*\]", "", text)
    assert all(len(line) <= 80 for line in plain.splitlines()) and len(plain.splitlines()) == 2
    assert "123.45 MB/s" in plain and plain.startswith("jobs fleet of 2000 waiting 0")
    assert "\n" not in progress_line(Progress(), "fleet", width=None)  # type: ignore[arg-type]


def test_job_executions_are_a_summary_row() -> None:
    summary = aggregate([device("a")], wall_s=1.0)
    assert "job executions" not in dict(summary_rows(summary))
    jobs = dataclasses.replace(summary, executions_by_status=(("SUCCEEDED", 1),))
    assert dict(summary_rows(jobs))["job executions"] == "SUCCEEDED 1"
