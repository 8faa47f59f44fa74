"""``device-sim download --job`` and ``device-sim fleet --jobs``: devices that follow their OTA job (docs/ota.md).

A device subscribes to its Jobs topics, starts its next pending execution (waiting up to ``--job-wait`` for
``notify-next`` when none is pending), downloads the stream the job document names, checks size, S3 and the
code-signing signature, and reports SUCCEEDED or FAILED/REJECTED with a reason. The code-signing certificate is the
document's ``certfile`` when that path exists on this machine, else ``--signing-cert``, else the one the
manifest's last OTA update recorded.

Exit codes: 0 every device's execution SUCCEEDED; 1 any other final status (the devices are listed); 2 bad
arguments; 6 the reports could not be written (fleet); 130/143 interrupted (fleet: after writing the reports).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from device_sim.cli.errors import BadArguments, exit_code_of_signal
from device_sim.cli.live import live_progress
from device_sim.cli.options import ReportFailed
from device_sim.cli.rich_tables import print_summary_table
from device_sim.device.jobs import JobDevice, JobResult, JobSettings
from device_sim.device.types import DownloadSettings
from device_sim.device.verify import S3Source
from device_sim.fleet.jobs import JobsFleetRun, ota_plan, run_jobs_fleet
from device_sim.fleet.plan import FleetPlan, PlanError
from device_sim.fleet.runner import FleetProgress
from device_sim.results.files import ReportWriteError, write_reports
from device_sim.results.jobs import write_jobs_reports
from device_sim.transport import TransportSettings

__all__ = ["job_options", "job_settings", "jobs_line", "run_job_download", "run_jobs_fleet_command"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def job_options(func: Any) -> Any:
    """The options of a device that follows a job (``--job``/``--jobs`` turns it on)."""
    options = [
        click.option(
            "--job-wait",
            type=click.FloatRange(0),
            default=60.0,
            show_default=True,
            help="With --job(s): how long a device with no pending job waits for notify-next.",
        ),
        click.option(
            "--signing-cert",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="With --job(s): the code-signing certificate when the job's certfile is not on this machine.",
        ),
        click.option(
            "--step-timeout-minutes",
            type=click.IntRange(1, 10080),
            default=None,
            help="With --job(s): stepTimeoutInMinutes sent with start-next and every IN_PROGRESS update.",
        ),
        click.option(
            "--progress-interval",
            type=click.FloatRange(0.1),
            default=1.0,
            show_default=True,
            help="With --job(s): at most one IN_PROGRESS update this often, in seconds.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def job_settings(params: dict[str, Any], manifest: Path | None) -> JobSettings:
    signing = params.get("signing_cert")
    if signing is None and manifest is not None:
        try:
            signing = ota_plan(manifest).signing_cert
        except PlanError as exc:
            raise BadArguments(str(exc)) from None
    return JobSettings(
        wait_s=params["job_wait"],
        progress_interval_s=params["progress_interval"],
        step_timeout_minutes=params["step_timeout_minutes"],
        signing_cert=signing,
    )


def _line(result: JobResult) -> str:
    return f"{result.thing_name}: job {result.job_id or '-'} {result.status}: {result.reason}"


def run_job_download(
    params: dict[str, Any],
    *,
    thing: str,
    transport: TransportSettings,
    settings: DownloadSettings,
    source: S3Source | None,
) -> None:
    """One device follows its next job; prints the outcome (``--json``: one line) and exits 0 only on SUCCEEDED."""
    device = JobDevice(
        thing_name=thing,
        transport=transport,
        settings=settings,
        jobs=job_settings(params, params.get("manifest")),
        source=source,
    )
    result = asyncio.run(device.run())
    if params.get("as_json"):
        download = result.download
        click.echo(
            json.dumps(
                {
                    "thing": thing,
                    "job_id": result.job_id,
                    "status": result.status,
                    "reason": result.reason,
                    "stream": download.stream_id if download else None,
                    "bytes": result.metrics.bytes,
                    "sha256": result.metrics.sha256,
                },
                separators=(",", ":"),
            )
        )
    else:
        click.echo(_line(result), err=not result.ok)
    if not result.ok:
        sys.exit(1)


def jobs_line(job_ids: Sequence[str], devices: int, by_status: Mapping[str, int], wall_s: float) -> str:
    """The last line of a jobs fleet, e.g. ``jobs AFR_OTA-x: 50 devices: 2 FAILED, 48 SUCCEEDED in 9.31 s``."""
    counts = ", ".join(f"{n} {status}" for status, n in by_status.items())
    return f"jobs {', '.join(job_ids) or '-'}: {devices} devices: {counts} in {wall_s:.2f} s"


def run_jobs_fleet_command(
    params: dict[str, Any], prepare: Callable[[dict[str, Any]], tuple[FleetPlan, S3Source | None]]
) -> None:
    """``fleet --jobs``: every thing of the plan follows its next job; reports with the jobs' outcomes.
    ``prepare`` is the fleet command's (plan from the options, checked; the S3 source)."""
    plan, source = prepare(params)
    target = plan.target
    assert target is not None
    jobs = job_settings(params, plan.manifest)
    stream_id = ota_plan(plan.manifest).stream_id
    params["report_dir"].mkdir(parents=True, exist_ok=True)
    progress = FleetProgress(len(plan.identities))
    caught: list[int] = []

    async def run() -> JobsFleetRun:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal(signum: int) -> None:
            caught.append(signum)
            stop.set()

        for sig in SIGNALS:  # stop the devices, still write the reports
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            with live_progress(progress, f"jobs fleet of {len(plan.identities)}", quiet=params["quiet"]):
                return await run_jobs_fleet(
                    target,
                    plan.identities,
                    plan.download,
                    plan.fleet,
                    jobs,
                    stream_id=stream_id,
                    source=source,
                    progress=progress,
                    stop=stop,
                )
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)

    outcome = asyncio.run(run())
    print_summary_table(outcome.summary)
    for record in outcome.jobs:
        if record.status != "SUCCEEDED":
            click.echo(f"{record.thing_name}: job {record.job_id or '-'} {record.status}: {record.reason}", err=True)
    job_ids = sorted({j.job_id for j in outcome.jobs if j.job_id})
    click.echo(jobs_line(job_ids, len(outcome.jobs), outcome.by_status, outcome.wall_s))
    try:
        paths = write_reports(params["report_dir"], outcome.summary, list(outcome.records))
        extra = write_jobs_reports(params["report_dir"], [j.to_dict() for j in outcome.jobs])
    except (ReportWriteError, OSError) as exc:
        raise ReportFailed(str(exc)) from exc
    click.echo(f"reports: {', '.join(str(p) for p in [*paths.values(), *extra])}")
    if caught:
        sys.exit(exit_code_of_signal(caught[0]))
    if not outcome.ok or outcome.interrupted:
        sys.exit(1)
