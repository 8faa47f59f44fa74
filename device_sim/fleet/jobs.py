"""A fleet that follows its OTA job: every thing of a manifest runs a ``JobDevice`` (``device-sim fleet --jobs``).

How this works: like ``run_fleet``, devices start at a paced time (``i / connect_rate`` plus seeded jitter), share
one set of awscrt threads and one S3 source (prepared once for the OTA update's stream), and the run stops early
on a stop event or a deadline; an unfinished device is reported as cancelled. Each device's ``JobResult`` gives
one ``DeviceMetrics`` (a device is verified only when its execution ended SUCCEEDED; otherwise
``failure_reason`` is ``job:<status>`` and ``failure_message`` the reason) and one ``JobRecord`` (thing, job id,
final status, reason) for the jobs report; ``JobsFleetRun.by_status`` counts executions by status.

``ota_plan`` reads what a device needs from the manifest: the last OTA update's stream (for S3 verification) and
the code-signing certificate the provisioner recorded (used when the job document's ``certfile`` path is not on
this machine).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from device_sim.device.device import DownloadSettings
from device_sim.device.jobs import JobDevice, JobResult, JobSettings
from device_sim.device.verify import S3Source
from device_sim.fleet.plan import DeviceIdentity, FleetSettings, FleetTarget, PlanError, _load
from device_sim.fleet.runner import (
    CONNECT_PHASE_TAIL_S,
    FleetProgress,
    fleet_crt_resources,
    run_until_stopped,
    settings_dict,
    transport_for,
)
from device_sim.results.metrics import DeviceMetrics, FailureKind, FleetSummary, aggregate, failure_reason

__all__ = [
    "STOPPED_IN_JOB",
    "JobRecord",
    "JobsFleetRun",
    "OtaPlan",
    "job_record",
    "ota_plan",
    "run_job_device",
    "run_jobs_fleet",
    "with_job",
]

#: Why a device that was stopped while it followed its job (or before it started) has no outcome.
STOPPED_IN_JOB = "the run stopped before this device finished its job"


@dataclass(frozen=True, kw_only=True, slots=True)
class JobRecord:
    thing_name: str
    job_id: str | None
    status: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"thing_name": self.thing_name, "job_id": self.job_id, "status": self.status, "reason": self.reason}


@dataclass(frozen=True, kw_only=True, slots=True)
class JobsFleetRun:
    records: tuple[DeviceMetrics, ...]
    jobs: tuple[JobRecord, ...]
    summary: FleetSummary
    wall_s: float
    interrupted: bool

    @property
    def by_status(self) -> dict[str, int]:
        return dict(sorted(Counter(j.status for j in self.jobs).items()))

    @property
    def ok(self) -> bool:
        return bool(self.jobs) and all(j.status == "SUCCEEDED" for j in self.jobs)


@dataclass(frozen=True, kw_only=True, slots=True)
class OtaPlan:
    """From the manifest's last OTA update: its stream, job, targets and code-signing certificate (all optional:
    a device follows whatever job it is given)."""

    stream_id: str | None = None
    job_id: str | None = None
    targets: tuple[str, ...] = ()
    signing_cert: Path | None = None


def ota_plan(manifest: Path) -> OtaPlan:
    m = _load(manifest)
    if not m.ota_updates:
        return OtaPlan(stream_id=m.stream.stream_id if m.stream else None)
    last = m.ota_updates[-1]
    return OtaPlan(stream_id=last.stream_id, job_id=last.job_id, targets=last.targets, signing_cert=last.signing_cert)


def _cancelled(identity: DeviceIdentity, label: str, at: float, message: str) -> DeviceMetrics:
    return DeviceMetrics(
        thing_name=identity.thing_name,
        settings=label,
        verified=False,
        failure_reason=failure_reason(FailureKind.CANCELLED),
        failure_message=message,
        started_at=at,
        ended_at=at,
    )


def with_job(metrics: DeviceMetrics) -> DeviceMetrics:
    """A jobs fleet's device record: one that never reported a job (stopped before it started, its Locust worker
    lost) is CANCELLED, with its failure message as the reason."""
    if metrics.job_status is not None:
        return metrics
    return replace(metrics, job_status="CANCELLED", job_reason=metrics.failure_message or "")


def job_record(metrics: DeviceMetrics) -> JobRecord:
    """The jobs report's row of a device (``with_job``'s record)."""
    metrics = with_job(metrics)
    return JobRecord(
        thing_name=metrics.thing_name,
        job_id=metrics.job_id,
        status=str(metrics.job_status),
        reason=metrics.job_reason or "",
    )


async def run_job_device(
    identity: DeviceIdentity,
    target: FleetTarget,
    download: DownloadSettings,
    jobs: JobSettings,
    *,
    transport_options: Any = None,
    source: S3Source | None = None,
    run_started: float | None = None,
    crt_threads: int | None = None,
    progress: FleetProgress | None = None,
) -> JobResult:
    """One device following its job, with the fleet's progress counters (and its execution's final status)."""
    if progress is None:
        progress = FleetProgress()  # counted, not shown
    with progress.device() as on_progress:
        device = JobDevice(
            thing_name=identity.thing_name,
            transport=transport_for(identity, target, transport_options),
            settings=download,
            jobs=jobs,
            source=source,
            resources=fleet_crt_resources(crt_threads),
            run_started=run_started,
            on_progress=on_progress,
        )
        result = await device.run()
    progress.ended(result.ok, result.status)
    return result


async def run_jobs_fleet(
    target: FleetTarget,
    identities: Sequence[DeviceIdentity],
    download: DownloadSettings,
    settings: FleetSettings,
    jobs: JobSettings,
    *,
    stream_id: str | None = None,
    source: S3Source | None = None,
    progress: FleetProgress | None = None,
    stop: asyncio.Event | None = None,
) -> JobsFleetRun:
    """Every identity follows its next job; records in identity order, the summary, and the jobs' outcomes."""
    if not identities:
        raise PlanError("no devices to run")
    loop = asyncio.get_running_loop()
    label = f"jobs {download.label}"
    if source is not None and stream_id is not None and download.verify_s3 and not download.expect_sha256:
        await asyncio.to_thread(source.prepare, stream_id)
    rng = random.Random(settings.seed)
    offsets = [i / settings.connect_rate + rng.uniform(0, settings.start_jitter) for i in range(len(identities))]
    started = loop.time()
    if progress is not None:
        progress.begin(len(identities))

    async def one(identity: DeviceIdentity, offset: float) -> JobResult:
        await asyncio.sleep(max(0.0, started + offset - loop.time()))  # connect pacing, not synchronisation
        return await run_job_device(
            identity,
            target,
            download,
            jobs,
            transport_options=settings.transport,
            source=source,
            run_started=started,
            crt_threads=settings.crt_threads,
            progress=progress,
        )

    tasks = [loop.create_task(one(identity, offset)) for identity, offset in zip(identities, offsets, strict=True)]
    outcomes, interrupted = await run_until_stopped(
        tasks, stop=stop, deadline_s=settings.deadline_s, connecting_until=started + max(offsets) + CONNECT_PHASE_TAIL_S
    )
    wall_s = loop.time() - started
    records: list[DeviceMetrics] = []
    for identity, outcome in zip(identities, outcomes, strict=True):
        if isinstance(outcome, JobResult):
            records.append(outcome.metrics)
            continue
        message = STOPPED_IN_JOB
        if not isinstance(outcome, asyncio.CancelledError):
            message = f"internal error: {outcome!r}"
        metrics = with_job(_cancelled(identity, label, wall_s, message))
        if progress is not None:
            progress.ended(False, metrics.job_status)
        records.append(metrics)
    job_records = [job_record(m) for m in records]
    summary = aggregate(
        records,
        wall_s=wall_s,
        settings={**settings_dict(download, settings, len(identities)), "jobs": True},
        price_per_million=settings.price_per_million,
    )
    return JobsFleetRun(
        records=tuple(records), jobs=tuple(job_records), summary=summary, wall_s=wall_s, interrupted=interrupted
    )
