"""A fleet: many devices of one manifest downloading one stream at once, in one asyncio process.

How this works: ``run_device(identity, target, download, ...)`` is the whole per-device job, a function of the
device identity and the settings that returns ``DeviceMetrics`` (the unit a distributed engine will run too).
``run_fleet`` starts one task per device at a paced time (``i / connect_rate`` plus seeded jitter, below AWS's
500 connects/s per account; each thing has its own client id, so 1 connect/s per client id holds), shares one
set of awscrt threads and one S3 source cache among them (the source learns where the stream's files are before
the first device starts, so boto3's setup is not paid per device), counts progress into a ``FleetProgress`` the
CLI draws, and stops early on a stop event (Ctrl-C) or a deadline: unfinished devices are cancelled and reported
as ``cancelled`` with what they had done (connect time, blocks, requests, and "stopped while downloading (n of m
blocks)"; devices still waiting for their start are "the run stopped before this device started"), so a report is
always written. ``FleetRun.memory`` holds the process's
resident memory when the devices started and its peak until they ended (see ``fleet_resources``).
``select_identities`` cuts one manifest into disjoint parts (``--shard``/``--offset``/``--devices``) so that
several processes or machines run one fleet together; ``device-sim report merge`` joins their reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from device_sim.device.device import Device, DeviceCancelled, DownloadSettings
from device_sim.device.verify import S3Source
from device_sim.engine.machine import SharedRtt
from device_sim.fleet.plan import DeviceIdentity, FleetPlan, FleetSettings, FleetTarget
from device_sim.fleet.resources import MemoryMeter, MemoryUse, fleet_gc
from device_sim.protocol.limits import ACCOUNT_CONNECTS_PER_SECOND
from device_sim.results.metrics import DeviceMetrics, FailureKind, FleetSummary, aggregate, failure_reason
from device_sim.transport import CrtResources, LoopHop, TransportSettings

__all__ = [
    "CONNECT_PHASE_TAIL_S",
    "DeviceIdentity",
    "FleetProgress",
    "FleetRun",
    "FleetSettings",
    "FleetTarget",
    "MemoryUse",
    "fleet_crt_resources",
    "fleet_crt_threads",
    "run_device",
    "run_fleet",
    "run_plan",
    "run_until_stopped",
    "settings_dict",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


def fleet_crt_threads(cores: int | None = None) -> int:
    """awscrt threads for a fleet: half the cores, 1 to 4. Every message still needs the GIL in the one event loop
    thread, so more awscrt threads than that only contend for it (and each holds its share of undelivered
    messages): on 2 cores one thread gave the same or better throughput and ~50 KiB less peak RSS per device."""
    return max(1, min(4, (cores if cores is not None else os.cpu_count() or 1) // 2))


def fleet_crt_resources(threads: int | None = None) -> CrtResources:
    """The awscrt threads a fleet's connections share (``threads`` None: ``fleet_crt_threads()``)."""
    return _crt_resources(threads or fleet_crt_threads())


@functools.cache
def _crt_resources(threads: int) -> CrtResources:
    """One set of awscrt threads per thread count, for the life of the process (like shared_crt_resources)."""
    return CrtResources.create(threads)


class FleetProgress:
    """Live counters of a fleet run (mutated only in the event loop; read by the progress display).

    The runners count through the methods: ``begin`` when the devices start, ``device()`` around each device's
    run (connecting until its first bytes, then downloading), ``ended`` with its verdict (and, for a device
    following a job, its execution's final status, counted in ``executions``)."""

    __slots__ = ("bytes", "connecting", "devices", "downloading", "executions", "failed", "started_at", "verified")

    def __init__(self, devices: int = 0) -> None:
        self.devices = devices
        self.connecting = 0  # started, no block yet
        self.downloading = 0  # at least one block
        self.verified = 0
        self.failed = 0
        self.bytes = 0
        self.executions: Counter[str] = Counter()  # job executions by final status so far (fleet --jobs)
        self.started_at = time.monotonic()

    @property
    def waiting(self) -> int:
        return self.devices - self.connecting - self.downloading - self.verified - self.failed

    @property
    def mb_per_s(self) -> float:
        elapsed = time.monotonic() - self.started_at
        return self.bytes / 1e6 / elapsed if elapsed > 0 else 0.0

    def begin(self, devices: int) -> None:
        """The fleet's devices start now (the throughput counts from here)."""
        self.devices = devices
        self.started_at = time.monotonic()

    @contextlib.contextmanager
    def device(self) -> Iterator[Callable[[int], None]]:
        """One device's run: connecting until its first bytes, then downloading, until the block ends (however
        it ends). Yields the device's ``on_progress`` callback; the verdict is counted by ``ended``."""
        downloading = False

        def received(nbytes: int) -> None:
            nonlocal downloading
            self.bytes += nbytes
            if not downloading:
                downloading = True
                self.connecting -= 1
                self.downloading += 1

        self.connecting += 1
        try:
            yield received
        finally:
            if downloading:
                self.downloading -= 1
            else:
                self.connecting -= 1

    def ended(self, ok: bool, execution_status: str | None = None) -> None:
        """A device's verdict (a device cancelled or never started is not ok)."""
        if ok:
            self.verified += 1
        else:
            self.failed += 1
        if execution_status is not None:
            self.executions[execution_status] += 1


@dataclass(frozen=True, kw_only=True, slots=True)
class FleetRun:
    records: tuple[DeviceMetrics, ...]
    summary: FleetSummary
    wall_s: float
    interrupted: bool  # stopped by the stop event or the deadline
    memory: MemoryUse | None = None  # the process's RSS when the devices started and its peak (Linux only)


#: How long after its last paced start a fleet's connect phase is taken to last (fleet_gc freezes until then).
CONNECT_PHASE_TAIL_S = 10.0

#: While a fleet of at least FLEET_HOP_TICK_DEVICES devices runs, awscrt's messages are drained into the event loop
#: every this many seconds while they keep coming (``LoopHop.tick_s``), instead of a wake-up of the loop per burst:
#: at most this much later, for far fewer wake-ups (each a self-pipe write on awscrt's thread, a read and a turn of
#: the loop). A smaller fleet (a sweep's 10 devices, say) keeps waking per burst: it gains little and its round
#: trips are what it measures. docs/fleet.md has figures.
FLEET_HOP_TICK_S = 0.002
FLEET_HOP_TICK_DEVICES = 100

#: A fleet's connects queue behind each other's TLS handshakes: a connect slower than the transport's default 1 s
#: is normal there, and a Python TLS probe per slow device would add one more handshake each (see tls_probe).
FLEET_TLS_PROBE_AFTER_S = 5.0

#: A fleet's connects also queue behind the broker's TLS handshakes: 10,000 devices at 500 connects/s against a local
#: mosquitto sharing a 2-core machine took up to 11-12 s to connect (mosquitto spent 3.3 ms of CPU per mutual-TLS
#: handshake), so the transport's single-device 10 s would fail devices that a real one, retrying, would connect.
#: awscrt's own CONNACK timeout is 20 s; a fleet waits 30 s.
FLEET_CONNECT_TIMEOUT_S = 30.0


def transport_for(
    identity: DeviceIdentity, target: FleetTarget, options: Mapping[str, Any] | None
) -> TransportSettings:
    return TransportSettings(
        endpoint=target.endpoint,
        port=target.port,
        cert=identity.cert,
        key=identity.key,
        ca=target.ca,
        no_tls=target.no_tls,
        client_id=identity.thing_name,
        **{
            "tls_probe_after_s": FLEET_TLS_PROBE_AFTER_S,
            "connect_timeout_s": FLEET_CONNECT_TIMEOUT_S,
            **(options or {}),
        },
    )


async def run_device(
    identity: DeviceIdentity,
    target: FleetTarget,
    download: DownloadSettings,
    *,
    transport_options: Mapping[str, Any] | None = None,
    source: S3Source | None = None,
    resources: CrtResources | None = None,
    run_started: float | None = None,
    label: str | None = None,
    progress: FleetProgress | None = None,
    shared_rtt: SharedRtt | None = None,
) -> DeviceMetrics:
    """One device of a fleet from start to verdict. Cancellation still yields the device's metrics.
    ``shared_rtt``: the round-trip knowledge this fleet's devices share (one per fleet, see ``SharedRtt``)."""
    if progress is None:
        progress = FleetProgress()  # counted, not shown
    with progress.device() as on_progress:
        device = Device(
            thing_name=identity.thing_name,
            stream_id=target.stream_id,
            transport=transport_for(identity, target, transport_options),
            settings=download,
            source=source,
            resources=resources,
            run_started=run_started,
            settings_label=label,
            on_progress=on_progress,
            shared_rtt=shared_rtt,
        )
        result = await device.run()
    progress.ended(result.ok)
    return result.metrics


def _never_started(identity: DeviceIdentity, label: str, at: float) -> DeviceMetrics:
    return DeviceMetrics(
        thing_name=identity.thing_name,
        settings=label,
        verified=False,
        failure_reason=failure_reason(FailureKind.CANCELLED),
        failure_message="the run stopped before this device started",
        started_at=at,
        ended_at=at,
    )


async def run_fleet(
    target: FleetTarget,
    identities: Sequence[DeviceIdentity],
    download: DownloadSettings,
    settings: FleetSettings,
    *,
    source: S3Source | None = None,
    progress: FleetProgress | None = None,
    stop: asyncio.Event | None = None,
    label: str | None = None,
) -> FleetRun:
    """Run every identity's download; returns records in identity order and the summary."""
    if not identities:
        raise ValueError("no devices to run")
    loop = asyncio.get_running_loop()
    resources = fleet_crt_resources(settings.crt_threads)
    label = label if label is not None else download.label
    if source is not None and download.verify_s3 and not download.expect_sha256:
        await asyncio.to_thread(source.prepare, target.stream_id)  # boto3 clients + file locations, once
    rng = random.Random(settings.seed)
    offsets = [i / settings.connect_rate + rng.uniform(0, settings.start_jitter) for i in range(len(identities))]
    if settings.connect_rate > ACCOUNT_CONNECTS_PER_SECOND:
        log.warning(
            "connect rate %.0f/s is above AWS's default %d connects/s per account",
            settings.connect_rate,
            ACCOUNT_CONNECTS_PER_SECOND,
        )
    shared_rtt = SharedRtt()  # the fleet's devices wait in the same service queue: they learn its round trip together
    meter = MemoryMeter()
    meter.start()
    started = loop.time()
    if progress is not None:
        progress.begin(len(identities))

    async def one(identity: DeviceIdentity, offset: float) -> DeviceMetrics:
        await asyncio.sleep(max(0.0, started + offset - loop.time()))  # connect pacing, not synchronisation
        try:
            return await run_device(
                identity,
                target,
                download,
                transport_options=settings.transport,
                source=source,
                resources=resources,
                run_started=started,
                label=label,
                progress=progress,
                shared_rtt=shared_rtt,
            )
        except DeviceCancelled as exc:
            # Returned, not raised: a task that ends in a CancelledError (subclass or not) is merely "cancelled"
            # to gather(), which then hands out a bare CancelledError, and the device's partial metrics are lost.
            if progress is not None:
                progress.ended(False)
            return exc.result.metrics

    tasks = [loop.create_task(one(identity, offset)) for identity, offset in zip(identities, offsets, strict=True)]
    outcomes, interrupted = await run_until_stopped(
        tasks, stop=stop, deadline_s=settings.deadline_s, connecting_until=started + max(offsets) + CONNECT_PHASE_TAIL_S
    )
    wall_s = loop.time() - started
    memory = meter.stop(len(identities))
    records: list[DeviceMetrics] = []
    for identity, outcome in zip(identities, outcomes, strict=True):
        if isinstance(outcome, DeviceMetrics):
            records.append(outcome)
        elif isinstance(outcome, asyncio.CancelledError):  # cancelled in the pacing sleep, before run_device
            if progress is not None:
                progress.ended(False)
            records.append(_never_started(identity, label, wall_s))
        else:  # run_device reports its own failures; anything here is a bug, reported on the device
            log.error("device %s: %r", identity.thing_name, outcome)
            if progress is not None:
                progress.ended(False)
            records.append(
                DeviceMetrics(
                    thing_name=identity.thing_name,
                    settings=label,
                    verified=False,
                    failure_reason=failure_reason(FailureKind.ERROR),
                    failure_message=repr(outcome),
                    ended_at=wall_s,
                )
            )
    summary = aggregate(
        records,
        wall_s=wall_s,
        settings=settings_dict(download, settings, len(identities)),
        price_per_million=settings.price_per_million,
    )
    return FleetRun(records=tuple(records), summary=summary, wall_s=wall_s, interrupted=interrupted, memory=memory)


async def run_until_stopped(
    tasks: Sequence[asyncio.Task[T]],
    *,
    stop: asyncio.Event | None,
    deadline_s: float | None,
    connecting_until: float | None = None,
) -> tuple[list[T | BaseException], bool]:
    """Wait for every device task, or until ``stop`` is set or ``deadline_s`` passed: then the unfinished ones are
    cancelled (and end as they do when cancelled). Returns the outcomes in task order (a result or the exception)
    and whether the run was stopped early. The garbage collector has its fleet settings meanwhile (``fleet_gc``;
    ``connecting_until``, on the loop's clock: when the last device should have connected), and the loop's hop
    drains on a tick when there are at least ``FLEET_HOP_TICK_DEVICES`` tasks."""
    hop = LoopHop.for_loop(asyncio.get_running_loop())
    previous, hop.tick_s = hop.tick_s, FLEET_HOP_TICK_S if len(tasks) >= FLEET_HOP_TICK_DEVICES else hop.tick_s
    try:
        with fleet_gc(freeze_until=connecting_until):
            return await _wait_for_devices(tasks, stop=stop, deadline_s=deadline_s)
    finally:
        hop.tick_s = previous


async def _wait_for_devices(
    tasks: Sequence[asyncio.Task[T]], *, stop: asyncio.Event | None, deadline_s: float | None
) -> tuple[list[T | BaseException], bool]:
    loop = asyncio.get_running_loop()
    everything = asyncio.gather(*tasks, return_exceptions=True)
    waiters: list[asyncio.Future[Any]] = [everything]
    stop_task = loop.create_task(stop.wait()) if stop is not None else None
    if stop_task is not None:
        waiters.append(stop_task)
    done, _ = await asyncio.wait(waiters, timeout=deadline_s, return_when=asyncio.FIRST_COMPLETED)
    interrupted = everything not in done
    if interrupted:
        log.warning("stopping the fleet: %d devices unfinished", sum(not t.done() for t in tasks))
        for task in tasks:
            task.cancel()
    if stop_task is not None:
        stop_task.cancel()
    return list(await everything), interrupted


def settings_dict(download: DownloadSettings, settings: FleetSettings, devices: int) -> dict[str, Any]:
    return {
        "devices": devices,
        "format": download.format.value,
        "block_size": download.block_size,
        "blocks_per_request": download.blocks_per_request or "max",
        "inflight": download.inflight,
        "connect_rate": settings.connect_rate,
        "start_jitter": settings.start_jitter,
        "crt_threads": settings.crt_threads or fleet_crt_threads(),
    }


async def run_plan(
    plan: FleetPlan,
    *,
    source: S3Source | None = None,
    progress: FleetProgress | None = None,
    stop: asyncio.Event | None = None,
    download: DownloadSettings | None = None,
) -> FleetRun:
    """``run_fleet`` over a resolved plan (``FleetPlan.load``); ``download`` overrides the plan's (a sweep point)."""
    if plan.target is None:
        raise ValueError("the plan is not resolved: use FleetPlan.load(manifest, ...)")
    return await run_fleet(
        plan.target,
        plan.identities,
        download or plan.download,
        plan.fleet,
        source=source,
        progress=progress,
        stop=stop,
    )
