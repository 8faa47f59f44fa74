"""Reports: files written atomically, JUnit XML parses with matching counts, CSV and JSON read back, the HTML has
one chart per plot and names the best settings; sweep ranking rules; the SVG helpers."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TextIO

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from device_sim.cli.rich_tables import rich_summary_table, rich_sweep_table
from device_sim.results.files import (
    CSV_COLUMNS,
    JUNIT_SUITE_NAME,
    REPORT_FILES,
    SUMMARY_FORMAT,
    ReportWriteError,
    SweepPoint,
    atomic_write,
    best_by_cost,
    best_by_time,
    read_devices_jsonl,
    render_junit,
    render_summary_text,
    render_sweep_table,
    write_reports,
)
from device_sim.results.metrics import DeviceMetrics, FleetSummary, aggregate
from device_sim.results.svg import Series, histogram, histogram_chart, line_chart, nice_ticks

NASTY = "bad <block> & \"quoted\" 'single' ünïcødé ✓ \x01\x1b end"
MIB = 1 << 20


def device(
    name: str, *, ok: bool = True, download_s: float = 2.0, settings: str = "4KiB x16", **kw: object
) -> DeviceMetrics:
    fields: dict[str, object] = {
        "thing_name": name,
        "settings": settings,
        "connect_s": 0.1,
        "first_block_s": 0.3,
        "download_s": download_s if ok else None,
        "bytes": MIB if ok else 4096,
        "blocks": 256 if ok else 1,
        "verified": ok,
        "failure_reason": None if ok else "rejected:ETagMismatch",
        "failure_message": None if ok else NASTY,
        "rejections": {} if ok else {"ETagMismatch": 1},
        "metered_messages_out": 16,
        "metered_messages_in": 256,
        "started_at": 0.05,
        "ended_at": 0.05 + download_s,
        "progress": [(0.05 + download_s * k / 4, MIB * k // 4) for k in range(5)] if ok else [(0.2, 4096)],
    }
    fields.update(kw)
    return DeviceMetrics(**fields)  # type: ignore[arg-type]


@pytest.fixture
def records() -> list[DeviceMetrics]:
    return [device(f"dev-{k:03d}", download_s=1.0 + k / 10) for k in range(12)] + [
        device("dev-bad-1", ok=False),
        device("dev-bad-2", ok=False, failure_reason="timeout", failure_message="no block for 10 s", rejections={}),
    ]


def sweep_point(
    block_size: int, wall_s: float, *, messages_in: int = 256, failed: int = 0, devices: int = 4
) -> SweepPoint:
    recs = [
        device(f"d{k}", ok=k >= failed, settings=str(block_size), metered_messages_in=messages_in)
        for k in range(devices)
    ]
    return SweepPoint(
        block_size=block_size,
        blocks_per_request=16,
        inflight=1,
        summary=aggregate(recs, wall_s=wall_s, settings={"block_size": block_size}),
    )


# --- write_reports --------------------------------------------------------------------------------------------


def test_write_reports_writes_every_file_and_no_temporaries(tmp_path: Path, records: list[DeviceMetrics]) -> None:
    summary = aggregate(records, wall_s=3.0, settings={"block_size": 4096, "devices": len(records)})
    paths = write_reports(tmp_path / "out", summary, records)
    assert set(paths) == set(REPORT_FILES)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(REPORT_FILES)
    assert all(p.stat().st_size > 0 for p in paths.values())


def test_junit_parses_and_counts_match(tmp_path: Path, records: list[DeviceMetrics]) -> None:
    summary = aggregate(records, wall_s=3.0)
    path = write_reports(tmp_path, summary, records)["junit.xml"]
    suite = ET.parse(path).getroot()
    assert suite.tag == "testsuite"
    assert suite.get("name") == JUNIT_SUITE_NAME
    cases = suite.findall("testcase")
    failures = suite.findall("testcase/failure")
    assert int(suite.get("tests", "-1")) == len(cases) == len(records)
    assert int(suite.get("failures", "-1")) == len(failures) == summary.failed == 2
    by_name = {c.get("name"): c for c in cases}
    bad = by_name["dev-bad-1 [4KiB x16]"].find("failure")
    assert bad is not None
    assert bad.get("type") == "rejected:ETagMismatch"
    # Markup characters, quotes and non-ASCII survive; control characters become visible escapes.
    assert bad.get("message") == "rejected:ETagMismatch: bad <block> & \"quoted\" 'single' ünïcødé ✓ \\x01\\x1b end"
    assert bad.text is not None and "ETagMismatch:1" in bad.text
    assert by_name["dev-bad-2 [4KiB x16]"].find("failure").get("message") == "timeout: no block for 10 s"  # type: ignore[union-attr]
    assert by_name["dev-000 [4KiB x16]"].find("failure") is None


@given(st.text(max_size=60))
def test_junit_parses_with_any_failure_message(message: str) -> None:
    rec = device("d1", ok=False, failure_message=message)
    root = ET.fromstring(render_junit(aggregate([rec], wall_s=1.0), [rec]).encode())
    failure = root.find("testcase/failure")
    assert failure is not None and root.get("failures") == "1"
    xml_chars = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")
    if xml_chars.fullmatch(message) and "\r" not in message:  # attributes normalise CR; the rest is kept
        expected = f"rejected:ETagMismatch: {message}" if message else "rejected:ETagMismatch"
        assert failure.get("message") == expected


def test_csv_reads_back(tmp_path: Path, records: list[DeviceMetrics]) -> None:
    path = write_reports(tmp_path, aggregate(records, wall_s=3.0), records)["devices.csv"]
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    assert [r["thing_name"] for r in rows] == [r.thing_name for r in records]
    for row, rec in zip(rows, records, strict=True):
        assert row["verified"] == ("true" if rec.verified else "false")
        assert int(row["bytes"]) == rec.bytes
        if rec.download_s is None:
            assert row["download_s"] == ""
        else:
            assert float(row["download_s"]) == pytest.approx(rec.download_s)
        assert dict(p.split(":") for p in row["rejections"].split(";") if p) == {c: str(n) for c, n in rec.rejections}
        assert row["failure_message"] == (rec.failure_message or "")


def test_summary_json_and_jsonl_round_trip(tmp_path: Path, records: list[DeviceMetrics]) -> None:
    summary = aggregate(records, wall_s=3.0, settings={"block_size": 4096, "format": "cbor"})
    paths = write_reports(tmp_path, summary, records)
    doc = json.loads(paths["summary.json"].read_text(encoding="utf-8"))
    assert doc["format"] == SUMMARY_FORMAT
    assert doc["sweep"] is None
    assert doc["summary"]["settings"] == {"block_size": 4096, "format": "cbor"}
    assert FleetSummary.from_dict(doc["summary"]) == summary
    assert read_devices_jsonl(paths["devices.jsonl"]) == records


def test_html_is_self_contained_with_a_chart_per_plot(tmp_path: Path, records: list[DeviceMetrics]) -> None:
    html = write_reports(tmp_path, aggregate(records, wall_s=3.0), records)["report.html"].read_text("utf-8")
    svgs = re.findall(r"<svg\b.*?</svg>", html, re.S)
    assert len(svgs) == 2  # download-time histogram, progress over time
    for svg in svgs:
        ET.fromstring(svg)  # well-formed
    assert svgs[0].count("<rect") >= 1
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", html)
    assert "2 of 14 devices failed" in html
    assert "bad &lt;block&gt; &amp; &quot;quoted&quot;" in html and NASTY not in html


def test_sweep_report_names_best_settings_and_plots_curves(tmp_path: Path, records: list[DeviceMetrics]) -> None:
    points = [
        sweep_point(1024, 9.0, messages_in=256),
        sweep_point(4096, 3.0, messages_in=260),
        sweep_point(16384, 2.0, messages_in=300, failed=1),  # fastest, but a device failed
        sweep_point(65536, 2.5, messages_in=520),
    ]
    fastest, cheapest = best_by_time(points), best_by_cost(points)
    assert fastest is points[3] and cheapest is points[0]
    summary = aggregate(records, wall_s=16.5)
    paths = write_reports(tmp_path, summary, records, sweep=points)
    html = paths["report.html"].read_text("utf-8")
    assert len(re.findall(r"<svg\b", html)) == 2 + 4  # + time with its spread, wall time, throughput, cost
    assert f"best by time: {points[3].label}" in html
    assert f"best by cost: {points[0].label}" in html
    for p in points:
        assert f"<td>{p.label}</td>" in html
    doc = json.loads(paths["summary.json"].read_text("utf-8"))
    assert (doc["sweep"]["best_by_time"], doc["sweep"]["best_by_cost"]) == (points[3].label, points[0].label)
    assert [SweepPoint.from_dict(p) for p in doc["sweep"]["points"]] == points
    text = render_sweep_table(points)
    assert text.splitlines()[0].split()[:2] == ["setting", "block"]
    assert f"best by time: {points[3].label}" in text and f"best by cost: {points[0].label}" in text


# --- ranking -------------------------------------------------------------------------------------------------


def test_ranking_ties_are_deterministic() -> None:
    a, b = sweep_point(4096, 3.0), sweep_point(1024, 3.0)
    assert best_by_time([a, b]) is b and best_by_time([b, a]) is b  # equal: the smaller block size
    assert best_by_cost([a, b]) is b and best_by_cost([b, a]) is b


def test_when_every_setting_failed_the_fewest_failures_win() -> None:
    many = sweep_point(1024, 1.0, failed=3, messages_in=1)
    few = sweep_point(4096, 5.0, failed=1, messages_in=900)
    assert best_by_time([many, few]) is few
    assert best_by_cost([many, few]) is few
    assert best_by_time([]) is None and best_by_cost([]) is None
    assert "every setting had failed devices" in render_sweep_table([many, few])


# --- atomic writes ---------------------------------------------------------------------------------------------


def test_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    atomic_write(target, lambda f: f.write("old"))

    def interrupted(f: TextIO) -> None:
        f.write("new, half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_unwritable_place_is_a_report_write_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReportWriteError, match="report directory"):
        write_reports(tmp_path / "file" / "sub", aggregate([], wall_s=0.0), [])
    with pytest.raises(ReportWriteError, match="cannot create"):
        atomic_write(tmp_path / "missing" / "a.txt", lambda f: f.write("x"))


# --- text and rich -----------------------------------------------------------------------------------------------


def test_summary_text_and_rich_tables(records: list[DeviceMetrics]) -> None:
    summary = aggregate(records, wall_s=3.0, settings={"block_size": 4096})
    text = render_summary_text(summary)
    assert "14: 12 verified, 2 failed" in text
    assert "rejected:ETagMismatch 1, timeout 1" in text
    assert f"{summary.metered_messages:,}" in text
    console = Console(file=io.StringIO(), width=200, color_system=None)
    points = [sweep_point(1024, 2.0, messages_in=200), sweep_point(4096, 1.0)]
    console.print(rich_summary_table(summary))
    console.print(rich_sweep_table(points))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "2 of 14 devices failed" in out
    assert f"best by time: {points[1].label}" in out and f"best by cost: {points[0].label}" in out


# --- SVG helpers ---------------------------------------------------------------------------------------------------


@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6))
def test_nice_ticks_cover_the_range_evenly(lo: float, hi: float) -> None:
    ticks = nice_ticks(lo, hi)
    assert 2 <= len(ticks) <= 12
    steps = [b - a for a, b in itertools.pairwise(ticks)]
    slack = 1e-6 * steps[0]  # float noise only
    assert ticks[0] <= min(lo, hi) + slack and ticks[-1] >= max(lo, hi) - slack
    assert all(math.isclose(s, steps[0], rel_tol=1e-6) for s in steps)


@given(st.lists(st.floats(0, 1e4), min_size=1, max_size=200), st.none() | st.integers(1, 40))
def test_histogram_counts_every_value_once(values: list[float], bins: int | None) -> None:
    counts = histogram(values, bins)
    assert sum(c for _, _, c in counts) == len(values)
    assert counts[0][0] <= min(values) and counts[-1][1] >= max(values)
    if max(values) > min(values):
        assert counts[-1][2] >= 1  # the maximum lands in the last bin


def test_charts_without_data_still_render_an_image() -> None:
    for svg in (
        histogram_chart([], title="t", x_label="x"),
        line_chart([Series(name="s", points=())], title="t", x_label="x", y_label="y"),
    ):
        assert ET.fromstring(svg).tag.endswith("svg") and "no data" in svg
    with pytest.raises(ValueError, match="log2"):
        line_chart([Series(name="s", points=((0.0, 1.0),))], title="t", x_label="x", y_label="y", log2_x=True)
