"""The device host: the plain asyncio process in which a Locust worker's devices run (``python -m`` this module).

How this works: a Locust worker is a gevent process whose standard library is monkey-patched; gevent's patched
locks deadlock when two native threads contend for them (awscrt's callback threads, an asyncio thread and
``asyncio.to_thread`` all would), so the devices do not run inside it. Each worker starts one device host and
talks to it in JSON lines (``messages``): the host reads ``Config`` (the fleet plan as data, resolved against
this machine's manifest), then ``Run`` per device, and runs each with ``fleet.run_device``,
the very coroutine the single-process fleet runs (a jobs plan, ``fleet --jobs``: ``fleet.jobs.run_job_device``,
the device following its next OTA job, with the code-signing certificate of this machine's manifest unless the
plan names one), with the fleet's awscrt threads (``fleet_crt_resources``) and one S3 source cache.
Every device ends in exactly one ``Finished`` line carrying its ``DeviceMetrics``, also when it is stopped:
``Stop`` or the end of stdin (the worker quit or died) cancels every device, and those that had not started
report as ``cancelled``. ``Progress`` lines carry the live counters once a second. The protocol pipe is the
original stdout; ``sys.stdout`` is pointed at stderr so a stray print cannot corrupt it. Ctrl-C is ignored: the
worker decides when devices stop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from device_sim.device.device import DeviceCancelled
from device_sim.device.verify import S3Source
from device_sim.engine.machine import SharedRtt
from device_sim.fleet.jobs import STOPPED_IN_JOB, ota_plan, run_job_device
from device_sim.fleet.locust.messages import (
    Config,
    Finished,
    HostFailed,
    HostMessage,
    Progress,
    Ready,
    Run,
    Stop,
    WireError,
    decode_host_line,
    encode_host_line,
)
from device_sim.fleet.plan import FleetPlan, PlanError, s3_source
from device_sim.fleet.resources import OpenFilesLimit, drop_system_trust_env, ensure_open_files
from device_sim.fleet.runner import DeviceIdentity, FleetProgress, fleet_crt_resources, run_device
from device_sim.results.metrics import DeviceMetrics, FailureKind, failure_reason
from device_sim.transport import CrtResources

__all__ = ["DeviceHost", "main"]

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0
_NOT_STARTED = "the run stopped before this device started"


class DeviceHost:
    """Runs the devices one worker was granted; ``send`` delivers a message to the worker."""

    def __init__(self, send: Callable[[HostMessage], None]) -> None:
        self._send = send
        self._plan: FleetPlan | None = None
        self._resources: CrtResources | None = None
        self._identities: dict[str, DeviceIdentity] = {}
        self._source: S3Source | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reported: set[int] = set()  # indices of the devices whose Finished was sent
        self._progress = FleetProgress(0)
        self._shared_rtt = SharedRtt()  # this host's devices learn the service's round trip together
        self._files_checked = 0
        self._manifest = ""

    async def configure(self, config: Config) -> bool:
        """Parse the device options and get ready; False (and a ``HostFailed`` sent) if this host cannot run."""
        try:
            plan = FleetPlan.from_json(config.plan, manifest=Path(config.manifest) if config.manifest else None)
        except PlanError as exc:
            self._send(HostFailed(message=f"fleet plan: {exc}"))
            return False
        target = plan.target
        assert target is not None
        stream_id = target.stream_id
        if plan.jobs is not None:  # the OTA update's stream, and this machine's code-signing certificate
            ota = ota_plan(plan.manifest)  # read already by from_json: no new PlanError
            stream_id = ota.stream_id or stream_id
            if plan.jobs.signing_cert is None:
                plan = replace(plan, jobs=replace(plan.jobs, signing_cert=ota.signing_cert))
        self._plan = plan
        self._resources = fleet_crt_resources(plan.fleet.crt_threads)
        if not target.no_tls and target.ca is not None:
            drop_system_trust_env()  # every connection brings its CA: spare awscrt parsing the system bundle
        self._manifest = str(plan.manifest)
        self._identities = {identity.thing_name: identity for identity in plan.identities}
        if plan.verify_with_s3:
            source = s3_source(target)
            await asyncio.to_thread(source.prepare, stream_id)  # boto3 clients + file locations, once
            self._source = source
        self._send(Ready(pid=os.getpid(), identities=len(plan.identities)))
        return True

    def start(self, run: Run) -> None:
        loop = asyncio.get_running_loop()
        run_started = loop.time() - max(0.0, time.time() - run.epoch)  # device times count from the master's start
        task = loop.create_task(self._device(run, run_started))
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._ended, run, run_started))

    def _ended(self, run: Run, run_started: float, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if run.index not in self._reported:  # cancelled before its first step: the coroutine never ran
            self._progress.ended(False)
            self._finish(run, self._failed(run, None, _NOT_STARTED, asyncio.get_running_loop(), run_started))

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def drain(self) -> None:
        """Wait until every started device has reported."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def progress(self) -> Progress:
        p = self._progress
        return Progress(
            connecting=p.connecting, downloading=p.downloading, verified=p.verified, failed=p.failed, bytes=p.bytes
        )

    async def _device(self, run: Run, run_started: float) -> None:
        plan = self._plan
        assert plan is not None
        loop = asyncio.get_running_loop()
        identity = self._identities.get(run.thing_name)
        if identity is None:
            self._finish(run, self._failed(run, "unknown-thing", f"not in {self._manifest} on this machine", loop))
            return
        self._check_open_files(len(self._tasks))
        try:
            await asyncio.sleep(run.delay_s)  # connect pacing: spreads one step of Locust's spawn staircase
        except asyncio.CancelledError:
            self._progress.ended(False)
            self._finish(run, self._failed(run, None, _NOT_STARTED, loop, run_started))
            return
        assert plan.target is not None  # a configured host's plan is resolved
        try:
            if plan.jobs is not None:
                result = await run_job_device(
                    identity,
                    plan.target,
                    plan.download,
                    plan.jobs,
                    transport_options=plan.fleet.transport,
                    source=self._source,
                    run_started=run_started,
                    crt_threads=plan.fleet.crt_threads,
                    progress=self._progress,
                )
                record = result.metrics
            else:
                record = await run_device(
                    identity,
                    plan.target,
                    plan.download,
                    transport_options=plan.fleet.transport,
                    source=self._source,
                    resources=self._resources,
                    run_started=run_started,
                    label=plan.label,
                    progress=self._progress,
                    shared_rtt=self._shared_rtt,
                )
        except DeviceCancelled as exc:
            self._progress.ended(False)
            record = exc.result.metrics
        except asyncio.CancelledError:
            self._progress.ended(False)
            why = STOPPED_IN_JOB if plan.jobs is not None else _NOT_STARTED
            record = self._failed(run, None, why, loop, run_started)
        except Exception as exc:  # run_device reports its own failures: anything here is a bug, kept on the device
            log.exception("device %s", run.thing_name)
            self._progress.ended(False)
            record = self._failed(run, "host", repr(exc), loop, run_started)
        self._finish(run, record)

    def _finish(self, run: Run, record: DeviceMetrics) -> None:
        self._reported.add(run.index)
        self._send(Finished(index=run.index, record=record.to_dict()))

    def _failed(
        self,
        run: Run,
        detail: str | None,
        message: str,
        loop: asyncio.AbstractEventLoop,
        run_started: float | None = None,
    ) -> DeviceMetrics:
        at = 0.0 if run_started is None else max(0.0, loop.time() - run_started)
        kind = FailureKind.CANCELLED if detail is None else FailureKind.ERROR
        return DeviceMetrics(
            thing_name=run.thing_name,
            settings=self._plan.label if self._plan else "",
            verified=False,
            failure_reason=failure_reason(kind, detail),
            failure_message=message,
            started_at=at,
            ended_at=at,
        )

    def _check_open_files(self, running: int) -> None:
        if running <= self._files_checked:
            return
        self._files_checked = max(2 * running, 1024)
        try:
            ensure_open_files(self._files_checked)
        except OpenFilesLimit as exc:
            log.warning("%s", exc)


async def serve(reader: asyncio.StreamReader, send: Callable[[HostMessage], None]) -> int:
    """The host's life: configure, run what is asked, stop on ``Stop`` or end of input. Returns the exit code."""
    host = DeviceHost(send)
    configured = False
    reporter = asyncio.get_running_loop().create_task(_report_progress(host, send))
    try:
        while line := await reader.readline():
            try:
                message = decode_host_line(line)
            except WireError as exc:
                log.error("bad message from the worker: %s", exc)
                continue
            match message:
                case Config():
                    configured = await host.configure(message)
                case Run() if configured:
                    host.start(message)
                case Run():
                    log.error("device %s: the host is not configured", message.thing_name)
                case Stop(reason=reason):
                    log.info("stopping every device: %s", reason)
                    host.stop()
                case _:
                    log.error("unexpected message from the worker: %r", message)
        host.stop()  # the worker closed our input: it quit or died
        await host.drain()
    finally:
        reporter.cancel()
    send(host.progress())
    return 0 if configured else 1


async def _report_progress(host: DeviceHost, send: Callable[[HostMessage], None]) -> None:
    last = None
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL_S)  # a reporting period, not synchronisation
        now = host.progress()
        if now != last:
            send(now)
            last = now


async def _serve_stdio(protocol_fd: int) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, pipe = await loop.connect_write_pipe(_Pipe, os.fdopen(protocol_fd, "wb", buffering=0))

    def send(message: HostMessage) -> None:
        if not transport.is_closing():
            transport.write(encode_host_line(message))

    try:
        return await serve(reader, send)
    finally:
        transport.close()  # after the buffered lines are written
        await asyncio.wait_for(pipe.closed, timeout=30)


class _Pipe(asyncio.Protocol):
    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=os.environ.get("DEVICE_SIM_HOST_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s device-host[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    sys.exit(asyncio.run(_serve_stdio(protocol_fd)))


if __name__ == "__main__":
    main()
