"""Reports of a fleet run or a sweep in ``--report-dir``: JSON, CSV, JSON lines, JUnit XML and HTML.

How this works: every file is rendered in memory, then written by ``atomic_write`` (a unique temporary file
in the same directory, fsync, ``os.replace``), so an interrupted run (Ctrl-C) leaves either the previous file or
the new one, never half of one, and no temporary files. ``summary.json`` is written last: when it is present,
the report is complete. OSError is translated once, into ``ReportWriteError``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from device_sim import fileio
from device_sim.results.html import render_html
from device_sim.results.metrics import DeviceMetrics, FleetSummary, MetricsFormatError
from device_sim.results.sweep import SweepPoint, best_by_cost, best_by_median, best_by_p90, best_by_time
from device_sim.results.tables import SWEEP_COLUMNS, render_summary_text, render_sweep_table, sweep_rows

__all__ = [
    "CSV_COLUMNS",
    "JUNIT_SUITE_NAME",
    "REPORT_FILES",
    "SUMMARY_FORMAT",
    "ReportWriteError",
    "SweepPoint",
    "atomic_write",
    "best_by_cost",
    "best_by_time",
    "read_devices_jsonl",
    "render_devices_csv",
    "render_junit",
    "render_summary_json",
    "render_summary_text",
    "render_sweep_csv",
    "render_sweep_table",
    "write_reports",
]

log = logging.getLogger(__name__)

SUMMARY_FORMAT = "device-sim-summary/1"
JUNIT_SUITE_NAME = "device-sim fleet"
#: Written in this order; summary.json last marks a complete report.
REPORT_FILES = ("devices.jsonl", "devices.csv", "junit.xml", "report.html", "summary.json")

CSV_COLUMNS: tuple[str, ...] = (
    "thing_name",
    "settings",
    "verified",
    "failure_reason",
    "failure_message",
    "connect_s",
    "first_block_s",
    "download_s",
    "bytes",
    "blocks",
    "duplicates",
    "invalid_blocks",
    "re_requests",
    "requests",
    "timeouts",
    "rejections",
    "disconnects",
    "metered_messages_out",
    "metered_messages_in",
    "sha256",
    "started_at",
    "ended_at",
    "job_id",
    "job_status",
    "job_reason",
)

# Characters XML 1.0 cannot carry at all (control characters, lone surrogates, U+FFFE/U+FFFF).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class ReportWriteError(Exception):
    """A report file could not be written (the message names the file and what to check)."""


def atomic_write(path: Path, write: Callable[[TextIO], None]) -> None:
    """Create or replace ``path`` with the UTF-8 text ``write`` writes (no newline translation), all or nothing.

    ReportWriteError names the file and what to check.
    """

    def text(binary: BinaryIO) -> None:
        f = io.TextIOWrapper(binary, encoding="utf-8", newline="", write_through=True)
        write(f)
        f.flush()
        f.detach()  # leave the binary file open: fileio.atomic_write syncs and closes it

    try:
        fileio.atomic_write(path, text)
    except OSError as exc:
        raise ReportWriteError(f"cannot create {path}: {exc.strerror}; check that the directory is writable") from exc


def _xml_safe(text: str) -> str:
    """Text XML 1.0 can hold: forbidden characters become ``\\xNN`` / ``\\uNNNN`` (ElementTree escapes the rest)."""
    return _NOT_XML.sub(lambda m: ascii(m.group())[1:-1], text)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def render_devices_csv(records: Iterable[DeviceMetrics]) -> str:
    """One row per device in ``CSV_COLUMNS`` order; rejections as ``code:count;...``, None as an empty cell."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        row: dict[str, object] = {name: getattr(r, name) for name in CSV_COLUMNS if name != "rejections"}
        for name in ("connect_s", "first_block_s", "download_s", "started_at", "ended_at"):
            row[name] = _seconds(getattr(r, name))
        row["verified"] = "true" if r.verified else "false"
        row["rejections"] = ";".join(f"{code}:{n}" for code, n in r.rejections)
        writer.writerow(["" if row[name] is None else row[name] for name in CSV_COLUMNS])
    return buf.getvalue()


def render_devices_jsonl(records: Iterable[DeviceMetrics]) -> str:
    """One JSON object per line (``DeviceMetrics.to_dict``): the full records, progress samples included."""
    return "".join(json.dumps(r.to_dict(), allow_nan=False, ensure_ascii=False) + "\n" for r in records)


def read_devices_jsonl(path: Path) -> list[DeviceMetrics]:
    """Read ``devices.jsonl`` back (e.g. to re-render a report or merge the records of several workers)."""
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(DeviceMetrics.from_dict(json.loads(line)))
            except (ValueError, TypeError) as exc:
                raise MetricsFormatError(f"{path}:{number}: not a device record: {exc}") from exc
    return records


def _case_name(r: DeviceMetrics) -> str:
    return f"{r.thing_name} [{r.settings}]" if r.settings else r.thing_name


def render_junit(summary: FleetSummary, records: Sequence[DeviceMetrics]) -> str:
    """One ``<testsuite>`` with one ``<testcase>`` per device; a device that did not verify is a ``<failure>``."""
    failed = sum(1 for r in records if not r.verified)
    suite = ET.Element(
        "testsuite",
        {
            "name": JUNIT_SUITE_NAME,
            "tests": str(len(records)),
            "failures": str(failed),
            "errors": "0",
            "skipped": "0",
            "time": f"{summary.wall_s:.3f}",
        },
    )
    if summary.settings:
        props = ET.SubElement(suite, "properties")
        for name, value in summary.settings:
            ET.SubElement(props, "property", {"name": _xml_safe(name), "value": _xml_safe(str(value))})
    for r in records:
        case = ET.SubElement(
            suite,
            "testcase",
            {
                "classname": "device_sim.fleet",
                "name": _xml_safe(_case_name(r)),
                "time": f"{r.ended_at - r.started_at:.3f}",
            },
        )
        if r.verified:
            continue
        reason = r.failure_reason or "unknown"
        message = f"{reason}: {r.failure_message}" if r.failure_message else reason
        failure = ET.SubElement(case, "failure", {"type": _xml_safe(reason), "message": _xml_safe(message)})
        failure.text = _xml_safe(
            f"{message}\nbytes={r.bytes} blocks={r.blocks} requests={r.requests} re_requests={r.re_requests} "
            f"timeouts={r.timeouts} disconnects={r.disconnects} "
            f"rejections={';'.join(f'{c}:{n}' for c, n in r.rejections) or 'none'}"
        )
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def render_sweep_csv(points: Sequence[SweepPoint]) -> str:
    """The sweep table as CSV (one row per setting, the columns of the printed table)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SWEEP_COLUMNS)
    writer.writerows(sweep_rows(points))
    return buf.getvalue()


def render_summary_json(summary: FleetSummary, sweep: Sequence[SweepPoint] | None = None) -> str:
    """``{"format", "summary" (settings inside), "sweep": null | {"points", "best_by_time", "best_by_cost"}}``."""
    doc: dict[str, Any] = {"format": SUMMARY_FORMAT, "summary": summary.to_dict(), "sweep": None}
    if sweep:
        fastest, cheapest = best_by_time(sweep), best_by_cost(sweep)
        doc["sweep"] = {
            "points": [p.to_dict() for p in sweep],
            "best_by_time": fastest.label if fastest else None,
            "best_by_cost": cheapest.label if cheapest else None,
            "best_by_median": _label(best_by_median(sweep)),
            "best_by_p90": _label(best_by_p90(sweep)),
        }
    return json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _label(point: SweepPoint | None) -> str | None:
    return point.label if point is not None else None


def _writer(text: str) -> Callable[[TextIO], None]:
    def write(f: TextIO) -> None:
        f.write(text)

    return write


def write_reports(
    report_dir: Path | str,
    summary: FleetSummary,
    records: Sequence[DeviceMetrics],
    *,
    sweep: Sequence[SweepPoint] | None = None,
) -> dict[str, Path]:
    """Write every report file into ``report_dir`` (created if missing); returns ``{file name: path}``.

    For a sweep pass the records of every setting (their ``settings`` label tells them apart), a summary over
    all of them, and the points.
    """
    directory = Path(report_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportWriteError(f"cannot create the report directory {directory}: {exc.strerror}") from exc
    records = list(records)
    renderers: dict[str, Callable[[], str]] = {
        "devices.jsonl": lambda: render_devices_jsonl(records),
        "devices.csv": lambda: render_devices_csv(records),
        "junit.xml": lambda: render_junit(summary, records),
        "report.html": lambda: render_html(summary, records, sweep=sweep),
        "summary.json": lambda: render_summary_json(summary, sweep),
    }
    names = list(REPORT_FILES)
    if sweep:
        renderers["sweep.csv"] = lambda: render_sweep_csv(sweep)
        renderers["sweep.txt"] = lambda: render_sweep_table(sweep) + "\n"
        names += ["sweep.csv", "sweep.txt"]
    paths: dict[str, Path] = {}
    for name in names:
        text = renderers[name]()
        path = directory / name
        atomic_write(path, _writer(text))
        paths[name] = path
    log.info("wrote reports to %s (%d devices)", directory, len(records))
    return paths
