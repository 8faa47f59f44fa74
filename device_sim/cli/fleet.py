"""``device-sim fleet`` and ``device-sim sweep``: many devices from a manifest, reports, block-size sweeps.

Exit codes: 0 every device verified; 1 a device failed (or ``--deadline`` stopped the run); 2 bad arguments (also a
device's TLS files that do not load or a key that does not belong to its certificate, and a ``--report-dir`` that
cannot be written: both checked before any device starts), or the process may not open enough files for the devices
(the message says how to raise ``ulimit -n``); 6 the reports could not be written; 130 stopped by SIGINT (Ctrl-C),
143 by SIGTERM (the reports are written first, with what every device had done).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import click

from device_sim.cli.errors import BadArguments, exit_code_of_signal
from device_sim.cli.jobs import job_options, job_settings, run_jobs_fleet_command
from device_sim.cli.live import live_progress
from device_sim.cli.locust import locust_options, locust_topology_given, run_locust
from device_sim.cli.options import (
    ReportFailed,
    SizeListType,
    build_download_settings,
    download_options,
    transport_choices,
)
from device_sim.cli.outputs import check_output_dir, ensure_output_dir
from device_sim.cli.rich_tables import print_summary_table, print_sweep_table
from device_sim.device.device import DownloadSettings, SinkKind
from device_sim.device.verify import S3Source
from device_sim.engine.profiles import ProfileKind, ProfileRefused
from device_sim.fleet.plan import FleetPlan, FleetSettings, PlanError, Shard, s3_source, stream_file_sizes
from device_sim.fleet.resources import OpenFilesLimit, ensure_open_files, system_trust_env_dropped
from device_sim.fleet.runner import FleetProgress, FleetRun, run_plan, transport_for
from device_sim.protocol.limits import DEFAULT_PRICE_PER_MILLION_MESSAGES_USD
from device_sim.results.files import ReportWriteError, write_reports
from device_sim.results.metrics import DeviceMetrics, aggregate
from device_sim.results.sweep import (
    SweepPoint,
    best_by_cost,
    best_by_median,
    best_by_p90,
    format_size,
    recommended_config,
)
from device_sim.transport import InvalidSettings
from device_sim.transport.tls_files import TlsFileChecker


class TooFewOpenFiles(click.ClickException):
    exit_code = 2


class ShardType(click.ParamType):  # type: ignore[type-arg]  # generic in click >= 8.2 stubs only
    name = "I/N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Shard:
        if isinstance(value, Shard):
            return value
        try:
            return Shard.parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def fleet_options(func: Any) -> Any:
    options = [
        click.option(
            "--manifest",
            type=click.Path(dir_okay=False, path_type=Path),
            required=True,
            help="The manifest `provisioner up` wrote (endpoint, stream, things and certificates).",
        ),
        click.option(
            "--devices",
            type=click.IntRange(1),
            default=None,
            help="How many of the manifest's things to run [default: all].",
        ),
        click.option(
            "--shard",
            type=ShardType(),
            default=None,
            help="Run part I of N equal parts of the manifest's things (1-based, e.g. 2/4): one part per machine.",
        ),
        click.option(
            "--offset",
            type=click.IntRange(0),
            default=0,
            show_default=True,
            help="Skip this many things first (after --shard); with --devices picks things OFFSET..OFFSET+N-1.",
        ),
        click.option(
            "--connect-rate",
            type=click.FloatRange(0.01, 100000),
            default=100.0,
            show_default=True,
            help="Connects per second (AWS allows 500/s per account).",
        ),
        click.option(
            "--start-jitter",
            type=click.FloatRange(0),
            default=0.0,
            show_default=True,
            help="Extra random delay per device, in seconds.",
        ),
        click.option(
            "--deadline",
            type=click.FloatRange(0.1),
            default=None,
            help="Stop after this many seconds and report unfinished devices as cancelled.",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for the start jitter."),
        click.option(
            "--crt-threads",
            type=click.IntRange(1, 64),
            default=None,
            help="awscrt network threads [default: half the cores, 1 to 4].",
        ),
        click.option(
            "--report-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path("reports"),
            show_default=True,
            help="Where summary.json, devices.csv, junit.xml and report.html go.",
        ),
        click.option(
            "--price-per-million",
            type=click.FloatRange(0),
            default=DEFAULT_PRICE_PER_MILLION_MESSAGES_USD,
            show_default=True,
            help="US$ per million metered messages, for the cost estimate.",
        ),
        click.option("--no-tls", is_flag=True, help="Use the broker's plain port (local benches only)."),
        click.option("--quiet", is_flag=True, help="No live progress display."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_plan(params: dict[str, Any], *, manifest: Path | None = None) -> FleetPlan:
    """The fleet plan from the parsed options (click errors naming the option); ``manifest`` replaces --manifest.

    Checked here, before any device starts: the report directory can be written, and every device's TLS files load
    (``check_fleet_tls``)."""
    download = build_download_settings(params, sink=SinkKind.DIGEST)
    check_output_dir(params["report_dir"], "--report-dir", "report directory")
    try:
        fleet = FleetSettings(
            connect_rate=params["connect_rate"],
            start_jitter=params["start_jitter"],
            deadline_s=params["deadline"],
            seed=params["seed"],
            price_per_million=params["price_per_million"],
            transport=transport_choices(params),
            crt_threads=params["crt_threads"],
        )
        plan = FleetPlan.load(
            manifest or params["manifest"],
            no_tls=params["no_tls"],
            shard=params["shard"],
            offset=params["offset"],
            devices=params["devices"],
            download=download,
            fleet=fleet,
            report_dir=params["report_dir"],
            jobs=job_settings(params, None) if params.get("jobs") else None,
        )
    except (PlanError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    check_fleet_tls(plan)
    return plan


def check_fleet_tls(plan: FleetPlan) -> None:
    """Every device's certificate, key and CA load and belong together (each distinct file read once), so a bad
    file is one line naming it and the thing, not a traceback per device after the fleet started."""
    target = plan.target
    if target is None or target.no_tls:
        return
    checker = TlsFileChecker()
    for identity in plan.identities:
        try:
            checker.check(transport_for(identity, target, plan.fleet.transport))
        except InvalidSettings as exc:
            raise BadArguments(f"thing {identity.thing_name}: {exc}") from None


def _prepare(params: dict[str, Any]) -> tuple[FleetPlan, S3Source | None]:
    plan = build_plan(params)
    try:
        ensure_open_files(len(plan.identities))
    except OpenFilesLimit as exc:
        raise TooFewOpenFiles(str(exc)) from None
    assert plan.target is not None
    return plan, s3_source(plan.target) if plan.verify_with_s3 else None


@contextlib.contextmanager
def _stop_on_signals(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, caught: list[int] | None = None
) -> Iterator[None]:
    def on_signal(signum: int) -> None:
        if caught is not None:
            caught.append(signum)
        stop.set()

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        loop.add_signal_handler(sig, on_signal, sig)
    if caught:  # a signal noted before the loop ran (``_note_signals``): stop at once
        stop.set()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)  # back to what was there (``_note_signals``' handler), not the default


def _note_signals() -> list[int]:
    """Outside the event loop (loading the plan, between sweep points, writing the reports) SIGINT and SIGTERM are
    noted, not fatal: the run stops at its next chance and its reports are still written. Returns the list the
    signal numbers go into; the previous handlers come back when the command ends."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        return caught

    def note(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    click.get_current_context().call_on_close(restore)
    return caught


def _stop_if_signalled(signals: list[int]) -> None:
    """A signal before any device started: one line, exit 130/143, nothing ran."""
    if signals:
        name = signal.Signals(signals[0]).name
        click.echo(f"Error: interrupted by {name} before any device started: nothing ran, no reports written", err=True)
        sys.exit(exit_code_of_signal(signals[0]))


async def run_with_display(
    plan: FleetPlan,
    source: S3Source | None,
    *,
    quiet: bool,
    title: str,
    download: DownloadSettings | None = None,
    signals: list[int] | None = None,
) -> FleetRun:
    """run_fleet with Ctrl-C handling and, on a terminal, a live progress line; ``signals`` collects the numbers
    of the signals (SIGINT, SIGTERM) that stopped the run.

    When every connection brings its CA, SSL_CERT_FILE/SSL_CERT_DIR are unset during the run (fleet_resources:
    awscrt would parse that bundle for each device's TLS context, ~5 ms each with the GIL held).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    target = plan.target
    assert target is not None
    progress = FleetProgress(len(plan.identities))
    own_ca = not target.no_tls and target.ca is not None
    with (
        _stop_on_signals(loop, stop, signals),
        system_trust_env_dropped(own_ca),
        live_progress(progress, title, quiet=quiet),
    ):
        return await run_plan(plan, source=source, progress=progress, stop=stop, download=download)


def print_summary(run: FleetRun) -> None:
    print_summary_table(run.summary)
    if run.memory is not None:
        m = run.memory
        click.echo(
            f"memory: {m.start_kib / 1024:.0f} MiB when the devices started, peak {m.peak_kib / 1024:.0f} MiB "
            f"({m.per_device_kib:.0f} KiB per device)",
            err=True,
        )
    if run.interrupted:
        click.echo("the run was stopped before every device finished", err=True)


def _write(report_dir: Path, summary: Any, records: list[DeviceMetrics], sweep: list[SweepPoint] | None) -> None:
    try:
        paths = write_reports(report_dir, summary, records, sweep=sweep)
    except ReportWriteError as exc:
        raise ReportFailed(str(exc)) from exc
    click.echo(f"reports: {', '.join(str(p) for p in paths.values())}")


@click.command("fleet")
@fleet_options
@click.option(
    "--engine",
    type=click.Choice(["asyncio", "locust"]),
    default="asyncio",
    show_default=True,
    help="asyncio: every device in this process; locust: several processes or machines (docs/locust.md).",
)
@locust_options
@click.option("--jobs", is_flag=True, help="Every device follows its next OTA job (AWS IoT Jobs): docs/ota.md.")
@job_options
@download_options
def fleet_command(**params: Any) -> None:
    """Run many devices from a manifest at once, verify every one, write reports."""
    if params["jobs"] and params["engine"] == "asyncio":
        run_jobs_fleet_command(params, _prepare)
        return
    if params["engine"] == "locust":
        sys.exit(run_locust(params, build_plan))
    if locust_topology_given(params):
        raise click.UsageError("--processes/--master/--worker/--web-ui/--locust-arg need --engine locust")
    signals = _note_signals()
    plan, source = _prepare(params)
    _stop_if_signalled(signals)
    ensure_output_dir(params["report_dir"], "--report-dir", "report directory")  # every check passed: create it
    title = f"fleet of {len(plan.identities)}"
    run = asyncio.run(run_with_display(plan, source, quiet=params["quiet"], title=title, signals=signals))
    print_summary(run)
    _write(params["report_dir"], run.summary, list(run.records), None)
    if signals:
        sys.exit(exit_code_of_signal(signals[0]))
    if not run.summary.all_verified or run.interrupted:
        sys.exit(1)


@click.command("sweep")
@fleet_options
@click.option(
    "--block-sizes",
    type=SizeListType(),
    default="1KiB,4KiB,16KiB,64KiB,128KiB",
    show_default=True,
    help="Comma-separated block sizes to try.",
)
@click.option(
    "--blocks-per-request-list",
    "bpr_list",
    default=None,
    help="Comma-separated blocks-per-request values to try [default: the maximum for each size].",
)
@click.option("--inflight-list", default=None, help="Comma-separated requests-in-flight values to try.")
@download_options
def sweep_command(**params: Any) -> None:
    """Run the fleet once per setting and compare time, throughput, messages and cost.

    Against local_iot, start it with --latency-ms and --quotas aws: without AWS's per-connection limits
    (100 publishes/s, 512 KiB/s) small blocks look far better than they are on AWS.
    """
    signals = _note_signals()
    plan, source = _prepare(params)
    base, fleet = plan.download, plan.fleet
    bprs = _int_list(params["bpr_list"], "--blocks-per-request-list") or [None]
    inflights = _int_list(params["inflight_list"], "--inflight-list") or [None]
    combos = _settings_the_device_takes(
        list(itertools.product(params["block_sizes"], bprs, inflights)), params, base, plan
    )
    _stop_if_signalled(signals)
    ensure_output_dir(params["report_dir"], "--report-dir", "report directory")  # every check passed: create it
    points: list[SweepPoint] = []
    records: list[DeviceMetrics] = []
    interrupted = False
    for n, (block_size, bpr, inflight) in enumerate(combos, 1):
        if signals:  # between two points: stop, and write what the points so far measured
            interrupted = True
            break
        settings = replace(base, block_size=block_size, blocks_per_request=bpr, inflight=inflight or base.inflight)
        point_label = SweepPoint(
            block_size=block_size, blocks_per_request=bpr, inflight=inflight, summary=aggregate([], wall_s=0)
        ).label
        if base.profile is not ProfileKind.DEVICE_SIM:
            point_label = f"{base.profile.value} {point_label}"
        title = f"[{n}/{len(combos)}] {point_label}"
        run = asyncio.run(
            run_with_display(plan, source, quiet=params["quiet"], title=title, download=settings, signals=signals)
        )
        relabelled = [replace(r, settings=point_label) for r in run.records]
        records.extend(relabelled)
        profile = None if base.profile is ProfileKind.DEVICE_SIM else base.profile.value
        point = SweepPoint(
            block_size=block_size, blocks_per_request=bpr, inflight=inflight, summary=run.summary, profile=profile
        )
        points.append(point)
        click.echo(f"{title}: {run.summary.verified}/{run.summary.devices} verified in {run.wall_s:.2f} s", err=True)
        if run.interrupted:
            interrupted = True
            break
    print_sweep_table(points, title=f"block-size sweep: {base.profile.value}")
    _print_recommendation(points, base)
    overall = aggregate(
        records,
        wall_s=sum(p.summary.wall_s for p in points),
        settings={"sweep": ", ".join(p.label for p in points)},
        price_per_million=fleet.price_per_million,
    )
    _write(params["report_dir"], overall, records, points)
    if signals:
        sys.exit(exit_code_of_signal(signals[0]))
    if interrupted or not all(p.summary.all_verified for p in points):
        sys.exit(1)


Combo = tuple[int, int | None, int | None]


def _settings_the_device_takes(
    combos: list[Combo], params: dict[str, Any], base: DownloadSettings, plan: FleetPlan
) -> list[Combo]:
    """Validate every setting before running any. A setting the device's library cannot take (profiles: a block
    size that is not a power of two, a bitmap over 128 bytes for the stream's files, ...) is left out with the
    reason; an invalid option value for every setting is a usage error."""
    sizes = stream_file_sizes(plan.manifest) if base.profile is not ProfileKind.DEVICE_SIM else {}
    kept: list[Combo] = []
    for block_size, bpr, inflight in combos:
        label = f"{format_size(block_size)} x{bpr or '-'}"
        try:
            settings = build_download_settings(
                {**params, "block_size": block_size, "blocks_per_request": bpr, "inflight": inflight or base.inflight}
            )
            profile = settings.profile_settings()
            if profile is not None:
                for file_id, size in sorted(sizes.items()):
                    if base.file_ids is None or file_id in base.file_ids:
                        profile.check_file(size)
        except click.BadParameter as exc:
            if base.profile is ProfileKind.DEVICE_SIM:
                raise
            click.echo(f"refused {label}: {exc.message}", err=True)
            continue
        except ProfileRefused as exc:
            click.echo(f"refused {label}: {exc}", err=True)
            continue
        kept.append((block_size, bpr, inflight))
    if not kept:
        raise click.BadParameter(f"{base.profile.value} can take none of these settings", param_hint="--block-sizes")
    return kept


def _print_recommendation(points: list[SweepPoint], base: DownloadSettings) -> None:
    """The best settings by median time, by p90 and by cost, written as the device's configuration."""
    chosen = [
        ("median time", best_by_median(points)),
        ("p90 time", best_by_p90(points)),
        ("cost", best_by_cost(points)),
    ]
    for what, point in chosen:
        if point is None:
            continue
        click.echo(f"recommended configuration by {what} ({point.label}):")
        config = recommended_config(
            point, request_wait_ms=base.request_wait_ms, momentum=base.momentum, max_bitmap_bytes=base.max_bitmap_bytes
        )
        for line in config:
            click.echo(f"    {line}")


def _int_list(text: str | None, option: str) -> list[int | None]:
    if not text:
        return []
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter("give comma-separated whole numbers", param_hint=option) from None
    if any(v < 1 for v in values):
        raise click.BadParameter("values must be >= 1", param_hint=option)
    return list(values)
