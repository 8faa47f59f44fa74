"""``device-sim report merge``: one report from the reports of several fleet processes or machines.

How this works: each part is a report directory that ``device-sim fleet --shard I/N`` (or ``sweep``) wrote.
``merge_parts`` takes every part's device records (``devices.jsonl``, the full records) and its ``summary.json``
(wall time, settings, price, sweep points), refuses parts that overlap (one thing in two parts under the same
setting: the shards were not disjoint) and aggregates the records again. The merged wall time is the longest
part's: the parts are meant to run at the same time, so the aggregate throughput is every verified byte over that
time. Sweep parts are merged setting by setting the same way. The result is written like a fleet's report.

Exit codes: 0 every device verified; 1 a device did not verify; 2 a part is missing, incomplete, unreadable or
overlaps another; 6 the merged report could not be written.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from device_sim.cli.options import ReportFailed
from device_sim.cli.rich_tables import print_summary_table, print_sweep_table
from device_sim.results.files import read_devices_jsonl, write_reports
from device_sim.results.metrics import DeviceMetrics, FleetSummary, MetricsFormatError, SettingValue, aggregate
from device_sim.results.sweep import SweepPoint

__all__ = ["MergeError", "ReportPart", "merge_parts", "read_part", "report_group"]

log = logging.getLogger(__name__)


class MergeError(Exception):
    """The parts cannot be merged; the message names the part and what to do."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ReportPart:
    """One report directory: its device records, its summary and, for a sweep, its points."""

    directory: Path
    records: tuple[DeviceMetrics, ...]
    summary: FleetSummary
    sweep: tuple[SweepPoint, ...] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class MergedReport:
    summary: FleetSummary
    records: tuple[DeviceMetrics, ...]
    sweep: tuple[SweepPoint, ...] | None = None


def read_part(directory: Path) -> ReportPart:
    """Read one report directory (``devices.jsonl`` and ``summary.json``). MergeError when it is not complete."""
    summary_path, jsonl = directory / "summary.json", directory / "devices.jsonl"
    if not summary_path.is_file():
        raise MergeError(
            f"{directory} has no summary.json: it is not a report directory, or its run is still going or was "
            "killed before writing it (summary.json is written last)"
        )
    if not jsonl.is_file():
        raise MergeError(f"{directory} has no devices.jsonl: merge needs reports written by this version of device-sim")
    try:
        doc = json.loads(summary_path.read_text(encoding="utf-8"))
        summary = FleetSummary.from_dict(doc["summary"])
        points = doc.get("sweep") and doc["sweep"].get("points")
        sweep = tuple(SweepPoint.from_dict(p) for p in points) if points else None
        records = tuple(read_devices_jsonl(jsonl))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, MetricsFormatError) as exc:
        raise MergeError(f"cannot read the report in {directory}: {exc}") from exc
    return ReportPart(directory=directory, records=records, summary=summary, sweep=sweep)


def _check_disjoint(parts: Sequence[ReportPart]) -> None:
    seen: dict[tuple[str, str], Path] = {}
    for part in parts:
        for r in part.records:
            key = (r.thing_name, r.settings)
            other = seen.get(key)
            if other is not None:
                raise MergeError(
                    f"thing {r.thing_name} is in {other} and in {part.directory}: the parts overlap; run them with "
                    "disjoint --shard I/N (or --offset/--devices) values, or merge each run separately"
                )
            seen[key] = part.directory


def _merged_settings(summaries: Sequence[FleetSummary], devices: int, parts: int) -> dict[str, SettingValue]:
    """The first part's settings; a setting the parts disagree on lists every value (``a|b``)."""
    merged: dict[str, SettingValue] = {}
    for summary in summaries:
        for name, value in summary.settings:
            if name not in merged:
                merged[name] = value
            elif name != "devices" and str(value) not in str(merged[name]).split("|"):
                merged[name] = f"{merged[name]}|{value}"
    if "devices" in merged:
        merged["devices"] = devices
    merged["parts"] = parts
    return merged


def _price(parts: Sequence[ReportPart], price: float | None) -> float:
    if price is not None:
        return price
    prices = {p.summary.price_per_million_usd for p in parts}
    if len(prices) > 1:
        raise MergeError(f"the parts were priced differently ({sorted(prices)}): pass --price-per-million")
    return prices.pop()


def merge_parts(parts: Sequence[ReportPart], *, price_per_million: float | None = None) -> MergedReport:
    """One report from several parts of one run (see the module docstring)."""
    if not parts:
        raise MergeError("no reports to merge")
    _check_disjoint(parts)
    price = _price(parts, price_per_million)
    records = tuple(r for part in parts for r in part.records)
    sweeps = [part.sweep for part in parts]
    if all(s is None for s in sweeps):
        wall_s = max(part.summary.wall_s for part in parts)
        settings = _merged_settings([p.summary for p in parts], len(records), len(parts))
        summary = aggregate(records, wall_s=wall_s, settings=settings, price_per_million=price)
        return MergedReport(summary=summary, records=records)
    if any(s is None for s in sweeps):
        raise MergeError("some parts are sweeps and some are not: merge the reports of one command only")
    points = _merge_sweep([s for s in sweeps if s is not None], records, price, len(parts))
    overall = aggregate(
        records,
        wall_s=sum(p.summary.wall_s for p in points),
        settings={"sweep": ", ".join(p.label for p in points), "parts": len(parts)},
        price_per_million=price,
    )
    return MergedReport(summary=overall, records=records, sweep=points)


def _merge_sweep(
    sweeps: Sequence[tuple[SweepPoint, ...]], records: Sequence[DeviceMetrics], price: float, parts: int
) -> tuple[SweepPoint, ...]:
    labels = [p.label for p in sweeps[0]]
    for sweep in sweeps[1:]:
        if [p.label for p in sweep] != labels:
            raise MergeError(
                f"the parts swept different settings ({', '.join(labels)} vs {', '.join(p.label for p in sweep)}): "
                "merge parts of one sweep command only"
            )
    merged = []
    for k, label in enumerate(labels):
        same = [sweep[k] for sweep in sweeps]
        mine = [r for r in records if r.settings == label]
        settings = _merged_settings([p.summary for p in same], len(mine), parts)
        summary = aggregate(
            mine, wall_s=max(p.summary.wall_s for p in same), settings=settings, price_per_million=price
        )
        first = same[0]
        merged.append(
            SweepPoint(
                block_size=first.block_size,
                blocks_per_request=first.blocks_per_request,
                inflight=first.inflight,
                summary=summary,
            )
        )
    return tuple(merged)


class MergeFailed(click.ClickException):
    exit_code = 2


@click.group("report")
def report_group() -> None:
    """Work with the reports of earlier runs."""


@report_group.command("merge")
@click.argument("parts", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--report-dir",
    "--out",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where the merged summary.json, devices.csv, devices.jsonl, junit.xml and report.html go.",
)
@click.option(
    "--price-per-million",
    type=click.FloatRange(0),
    default=None,
    help="US$ per million metered messages [default: the parts' price].",
)
def merge_command(parts: tuple[Path, ...], report_dir: Path, price_per_million: float | None) -> None:
    """Merge the report directories PARTS of one fleet run split over processes or machines (--shard I/N).

    Run the parts at the same time: the merged wall time is the longest part's.
    """
    from device_sim.results.files import ReportWriteError

    try:
        merged = merge_parts([read_part(p) for p in parts], price_per_million=price_per_million)
    except MergeError as exc:
        raise MergeFailed(str(exc)) from None
    try:
        paths = write_reports(report_dir, merged.summary, merged.records, sweep=merged.sweep)
    except ReportWriteError as exc:
        raise ReportFailed(str(exc)) from exc
    if merged.sweep:
        print_sweep_table(merged.sweep)
    else:
        print_summary_table(merged.summary)
    click.echo(f"merged {len(parts)} reports: {', '.join(str(p) for p in paths.values())}")
    if not merged.summary.all_verified:
        sys.exit(1)
