"""A Locust worker's side of a fleet run (gevent): claims devices for its users, runs them in its device host.

How this works: each Locust user stands for one device. A user calls ``WorkerAgent.run_one()``, which queues a
ticket and claims a device from the master; the claims of all users spawned in one step go out as one message.
The master's ``Grant`` hands out devices in the order of the claims: each goes to the oldest waiting ticket and is
sent to the device host (``HostProcess``, a child process running plain asyncio, see ``host``); a grant shorter
than its claim (the fleet is used up) wakes the extra tickets with None and those users just park. When the host
reports a device finished, the agent fires Locust ``request`` events ("connect", "first block", "download" with
the device's own timings, failures named by ``failure_reason``) so Locust's statistics and web UI follow the run,
queues the record for the master (sent in batches twice a second, with the host's live counters) and wakes the
user. Devices belong to the agent, not to the user greenlets: Locust may kill and re-spawn users (it does when
a worker is lost), and a device still reports. Users claim only once the host is configured; if it cannot be
(say this machine has no copy of the manifest) or it dies, every device it had gets a record saying so and the
worker quits, so that Locust moves its users, and the devices they would claim, to the other workers. Everything
here runs in the worker's gevent thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import AsyncResult, Event

from device_sim.fleet.locust.messages import (
    CLAIM,
    GRANT,
    RECORDS,
    STOP,
    WORKER_FAILED,
    Claim,
    Config,
    Finished,
    Grant,
    HostFailed,
    HostMessage,
    Progress,
    Ready,
    Records,
    Run,
    Stop,
    WireError,
    decode_host_line,
    encode_host_line,
)
from device_sim.results.metrics import DeviceMetrics, FailureKind, MetricsFormatError, failure_reason

__all__ = ["DeviceFailed", "HostProcess", "WorkerAgent"]

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.5
RECORDS_PER_MESSAGE = 200
HOST_EXIT_TIMEOUT_S = 30.0
#: ``failure_reason`` of devices whose device host could not run them.
HOST_FAILED = failure_reason(FailureKind.ERROR, "device-host")


class DeviceFailed(Exception):
    """What Locust's statistics show for a failed device: its ``failure_reason`` (one row per reason)."""


class HostProcess:
    """The device host child process, spoken to in JSON lines over its stdin/stdout."""

    def __init__(self, on_message: Callable[[HostMessage], None], on_exit: Callable[[int], None]) -> None:
        self._on_message = on_message
        self._on_exit = on_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: gevent.Greenlet | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, log_level: str) -> None:
        env = {**os.environ, "DEVICE_SIM_HOST_LOG_LEVEL": log_level}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "device_sim.fleet.locust.host"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._reader = gevent.spawn(self._read)
        log.info("device host started (pid %d)", self._proc.pid)

    def send(self, message: HostMessage) -> None:
        if self._proc is None or self._proc.stdin is None or self._proc.stdin.closed:
            return
        try:
            self._proc.stdin.write(encode_host_line(message))
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            log.debug("device host input closed: %s", exc)

    def close(self, timeout: float = HOST_EXIT_TIMEOUT_S) -> None:
        """End of input: the host stops its devices, reports them and exits; killed if it takes too long."""
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if self._reader is not None:
            self._reader.join(timeout=timeout)
        if proc.poll() is None:
            log.warning("device host %d did not exit within %.0f s: killing it", proc.pid, timeout)
            proc.kill()
        proc.wait()

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            try:
                message = decode_host_line(line)
            except WireError as exc:
                log.error("bad line from the device host: %s", exc)
                continue
            self._on_message(message)
        self._on_exit(proc.wait())


class WorkerAgent:
    def __init__(self, environment: Any, *, local_manifest: str | None = None) -> None:
        self._env = environment
        self._runner = environment.runner
        self._local_manifest = local_manifest
        self._host = HostProcess(self._on_host_message, self._on_host_exit)
        self._tickets: deque[AsyncResult] = deque()
        self._wanted = 0
        self._claim_scheduled = False
        self._running: dict[int, tuple[str, AsyncResult | None]] = {}
        self._outbox: list[tuple[int, dict[str, Any]]] = []
        self._progress = Progress()
        self._progress_sent: Progress | None = None
        self._host_failure: str | None = None
        self._host_ready = Event()  # set when the host is configured, or failed
        self._closing = False
        self._flusher: gevent.Greenlet | None = None
        self._runner.register_message(GRANT, self._on_grant)
        self._runner.register_message(STOP, self._on_stop)

    @property
    def host_failure(self) -> str | None:
        return self._host_failure

    def start(self) -> None:
        """Start the device host (before the run, so its imports are paid while workers connect)."""
        options = getattr(self._env, "parsed_options", None)
        level = "INFO" if getattr(options, "loglevel", "INFO") == "DEBUG" else "WARNING"
        self._host.start(level)
        self._flusher = gevent.spawn(self._flush_forever)

    def configure(self, plan: str) -> None:
        """The run starts: give the host the fleet plan (the master's, from Locust's spawn message)."""
        self._host.send(Config(plan=plan, manifest=self._local_manifest))

    def run_one(self) -> DeviceMetrics | None:
        """Claim one device and wait until it has finished (called by a user). None: no device was left, or
        this worker's device host cannot run devices (then it claims none: the other workers take them)."""
        self._host_ready.wait()
        if self._host_failure is not None:
            return None
        ticket = AsyncResult()
        self._tickets.append(ticket)
        self._wanted += 1
        if not self._claim_scheduled:
            self._claim_scheduled = True
            gevent.spawn(self._claim)  # runs after the other users of this spawn step queued their tickets
        result: DeviceMetrics | None = ticket.get()
        return result

    def close(self) -> None:
        """The worker quits: stop the host (its devices report), send what is left."""
        self._closing = True
        self._host.send(Stop(reason="the Locust worker is quitting"))
        self._host.close()
        self.flush()
        if self._flusher is not None:
            self._flusher.kill(block=False)

    # ------------------------------------------------------------------------------------------- master side

    def _claim(self) -> None:
        count, self._wanted, self._claim_scheduled = self._wanted, 0, False
        claim = Claim(count=count, pid=os.getpid(), hostname=socket.gethostname(), host_pid=self._host.pid or 0)
        self._runner.send_message(CLAIM, claim.to_wire())

    def _on_grant(self, environment: Any, msg: Any, **_: Any) -> None:
        try:
            grant = Grant.from_wire(msg.data)
        except WireError as exc:
            log.error("bad grant from the master: %s", exc)
            return
        for device in grant.devices:
            ticket = self._tickets.popleft() if self._tickets else None
            self._running[device.index] = (device.thing_name, ticket)
            if self._host_failure is not None:
                self._fail(device.index, self._host_failure)
                continue
            self._host.send(
                Run(index=device.index, thing_name=device.thing_name, delay_s=device.delay_s, epoch=grant.epoch)
            )
        for _extra in range(grant.asked - len(grant.devices)):
            if self._tickets:
                self._tickets.popleft().set(None)

    def _on_stop(self, environment: Any, msg: Any, **_: Any) -> None:
        try:
            reason = Stop.from_wire(msg.data).reason
        except WireError:
            reason = "asked by the master"
        self._host.send(Stop(reason=reason))

    def flush(self) -> None:
        while self._outbox or self._progress != self._progress_sent:
            batch, self._outbox = self._outbox[:RECORDS_PER_MESSAGE], self._outbox[RECORDS_PER_MESSAGE:]
            self._progress_sent = self._progress
            self._runner.send_message(RECORDS, Records(records=tuple(batch), progress=self._progress).to_wire())

    def _flush_forever(self) -> None:
        while True:
            gevent.sleep(FLUSH_INTERVAL_S)  # a batching period, not synchronisation
            try:
                self.flush()
            except Exception:  # the master went away: Locust itself reports that
                log.exception("sending device records to the master")

    # --------------------------------------------------------------------------------------------- host side

    def _on_host_message(self, message: HostMessage) -> None:
        match message:
            case Finished(index=index, record=record):
                self._finished(index, dict(record))
            case Progress():
                self._progress = message
            case Ready(pid=pid, identities=identities):
                self._host_ready.set()
                log.info("device host %d ready (%d identities in its manifest)", pid, identities)
            case HostFailed(message=text):
                self._host_failed(f"the device host cannot run devices: {text}")
            case _:
                log.error("unexpected message from the device host: %r", message)

    def _on_host_exit(self, code: int) -> None:
        if self._running or not self._closing:
            self._host_failed(f"the device host exited with code {code} before this device finished")

    def _host_failed(self, message: str) -> None:
        first = self._host_failure is None
        if first:
            then = "" if self._closing else ": this worker quits, the others take the devices it has not claimed"
            log.error("%s%s", message, then)
            self._host_failure = message
        for index in list(self._running):
            self._fail(index, message)
        self._host_ready.set()
        if first and not self._closing:
            self.flush()
            self._runner.send_message(WORKER_FAILED, Stop(reason=message).to_wire())
            gevent.spawn(self._runner.quit)  # not from the host reader: quitting joins greenlets

    def _fail(self, index: int, message: str) -> None:
        thing, _ = self._running[index]
        record = DeviceMetrics(thing_name=thing, verified=False, failure_reason=HOST_FAILED, failure_message=message)
        self._finished(index, record.to_dict())

    def _finished(self, index: int, data: dict[str, Any]) -> None:
        entry = self._running.pop(index, None)
        if entry is None:
            log.warning("the device host reported device #%d, which is not running here", index)
            return
        thing, ticket = entry
        self._outbox.append((index, data))
        try:
            record: DeviceMetrics | None = DeviceMetrics.from_dict(data)
        except (MetricsFormatError, TypeError) as exc:
            log.error("device %s: unreadable record from the device host: %s", thing, exc)
            record = None
        if record is not None:
            self._fire_requests(record)
        if ticket is not None:
            ticket.set(record)

    def _fire_requests(self, r: DeviceMetrics) -> None:
        failed = DeviceFailed(r.failure_reason) if r.failure_reason else None
        total_ms = (r.ended_at - r.started_at) * 1000
        if r.connect_s is not None:
            self._fire("connect", r.connect_s * 1000)
        elif r.failure_reason and r.failure_reason.startswith(FailureKind.CONNECT.value):
            self._fire("connect", total_ms, exception=failed)
        if r.first_block_s is not None:
            self._fire("first block", r.first_block_s * 1000)
        download_ms = r.download_s * 1000 if r.download_s is not None else total_ms
        self._fire("download", download_ms, length=r.bytes, exception=failed)

    def _fire(self, name: str, ms: float, *, length: int = 0, exception: Exception | None = None) -> None:
        self._env.events.request.fire(
            request_type="MQTT", name=name, response_time=ms, response_length=length, exception=exception, context={}
        )
