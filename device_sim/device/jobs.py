"""A device that follows an AWS IoT Job, as a device running AWS's OTA agent does (docs/ota.md).

How this works: ``JobDevice.run()`` opens one connection (from ``transport_factory``) and subscribes to its
thing's Jobs topics: ``notify-next`` and the ``accepted``/``rejected`` answers of ``start-next``, ``<job>/update``
and ``<job>/get``. It asks for the next pending execution (StartNextPendingJobExecution: QUEUED becomes
IN_PROGRESS); with none pending it waits for ``notify-next`` up to ``JobSettings.wait_s`` and asks again. The job
document is read as the AFR OTA document (``parse_ota_document``: stream name, file id, size, certificate path,
``sig-sha256-ecdsa``). Each file is then downloaded by a ``Device`` over the *same* connection (a ``_SharedLink``
hands the device a view of it), with IN_PROGRESS updates carrying ``{"receive": "<blocks>/<total>"}`` at most
every ``progress_interval_s``. After the download the device checks the size, the S3 source (as ``Device`` does)
and the ECDSA P-256/SHA-256 signature with the code-signing certificate (the document's ``certfile`` when that
file exists here, else ``JobSettings.signing_cert``), and reports SUCCEEDED, or FAILED/REJECTED with a ``reason``.

A ``notify-next`` that no longer names the job, or an update the service rejects (InvalidStateTransition,
ResourceNotFound), means the execution was cancelled, timed out or removed while the device worked on it: the
download stops and ``<job>/get`` tells which (TerminalStateReached carries the state; ResourceNotFound: removed).

Messages are built and read with awsiotsdk's Jobs model (``awsiot.iotjobs``: the request and event classes of
AWS's own samples) and published at QoS 1. The request/response *client* of awsiotsdk is not used: it owns the
raw awscrt client, while a device here talks through the ``Transport`` protocol (metered, testable in memory).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from awsiot import iotjobs  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from device_sim.device.device import Device, DeviceCancelled
from device_sim.device.types import DeviceResult, DownloadSettings
from device_sim.device.verify import S3Source
from device_sim.results.metrics import DeviceMetrics
from device_sim.transport import (
    ConnectError,
    ConnectionEvent,
    ConnectionEventKind,
    CrtResources,
    InvalidSettings,
    MqttTransport,
    Transport,
    TransportError,
    TransportFactory,
    TransportSettings,
)
from device_sim.transport.settings import QoS

__all__ = [
    "NO_JOB",
    "JobDevice",
    "JobDocumentError",
    "JobResult",
    "JobSettings",
    "OtaFile",
    "OtaJob",
    "jobs_filters",
    "parse_ota_document",
]

log = logging.getLogger(__name__)

#: ``JobResult.status`` when no job came within the wait.
NO_JOB = "NO_JOB"
SUCCEEDED = "SUCCEEDED"
MAX_REASON = 1000  # statusDetails values are at most 1024 characters


class JobDocumentError(ValueError):
    """The job document is not an AFR OTA document this device can follow (reported as REJECTED)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class OtaFile:
    file_id: int
    file_path: str
    file_size: int
    certfile: str | None
    signature: bytes | None  # DER ECDSA signature over the file (SHA-256)


@dataclass(frozen=True, kw_only=True, slots=True)
class OtaJob:
    stream_id: str
    protocols: tuple[str, ...]
    files: tuple[OtaFile, ...]


def parse_ota_document(document: Any) -> OtaJob:
    """The ``afr_ota`` part of a job document (the keys AWS's OTA agents read). Raises JobDocumentError."""
    if not isinstance(document, dict) or not isinstance(document.get("afr_ota"), dict):
        raise JobDocumentError("the job document has no afr_ota object: not an OTA job")
    ota = document["afr_ota"]
    protocols = ota.get("protocols", ["MQTT"])
    if not isinstance(protocols, list) or "MQTT" not in protocols:
        raise JobDocumentError(f"protocols {protocols!r} do not include MQTT")
    stream = ota.get("streamname")
    if not isinstance(stream, str) or not stream:
        raise JobDocumentError("afr_ota.streamname is missing")
    files = ota.get("files")
    if not isinstance(files, list) or not files:
        raise JobDocumentError("afr_ota.files is missing or empty")
    parsed = []
    for index, entry in enumerate(files):
        if not isinstance(entry, dict):
            raise JobDocumentError(f"afr_ota.files[{index}] is not an object")
        file_id, size = entry.get("fileid"), entry.get("filesize")
        if not isinstance(file_id, int) or isinstance(file_id, bool) or not 0 <= file_id <= 255:
            raise JobDocumentError(f"afr_ota.files[{index}].fileid {file_id!r} is not 0..255")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise JobDocumentError(f"afr_ota.files[{index}].filesize {size!r} is not a size")
        signature = entry.get("sig-sha256-ecdsa")
        raw: bytes | None = None
        if signature is not None:
            try:
                raw = base64.b64decode(str(signature), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise JobDocumentError(f"afr_ota.files[{index}].sig-sha256-ecdsa is not base64") from exc
        certfile = entry.get("certfile")
        parsed.append(
            OtaFile(
                file_id=file_id,
                file_path=str(entry.get("filepath", "")),
                file_size=size,
                certfile=certfile if isinstance(certfile, str) and certfile else None,
                signature=raw,
            )
        )
    return OtaJob(stream_id=stream, protocols=tuple(str(p) for p in protocols), files=tuple(parsed))


def jobs_filters(thing_name: str) -> list[str]:
    """The Jobs topics a device subscribes to (AWS also delivers answers unsubscribed; mosquitto does not)."""
    prefix = f"$aws/things/{thing_name}/jobs/"
    return [
        prefix + "notify-next",
        prefix + "start-next/accepted",
        prefix + "start-next/rejected",
        prefix + "+/update/accepted",
        prefix + "+/update/rejected",
        prefix + "+/get/accepted",
        prefix + "+/get/rejected",
    ]


@dataclass(frozen=True, kw_only=True, slots=True)
class JobSettings:
    wait_s: float = 60.0  # how long a device without a pending job waits for notify-next
    progress_interval_s: float = 1.0  # at most one IN_PROGRESS update this often
    request_timeout_s: float = 10.0  # for an answer on accepted/rejected
    step_timeout_minutes: int | None = None  # sent with every IN_PROGRESS update
    signing_cert: Path | None = None  # the code-signing certificate when the document's certfile is not here
    verify_signature: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class JobResult:
    """How a device's job ended: the execution's final ``status`` (or NO_JOB) and the ``reason`` it gave."""

    thing_name: str
    job_id: str | None
    status: str
    reason: str
    download: DeviceResult | None
    metrics: DeviceMetrics

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED


class _Refused(Exception):
    """The service refused StartNextPendingJobExecution (the message says with which code)."""


class _SharedLink:
    """A ``Transport`` for a ``Device`` over the job device's open connection: connect and close do nothing, the
    device's messages and connection events are passed on while it is attached."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self.on_message: Callable[[str, bytes], None] | None = None
        self.on_event: Callable[[ConnectionEvent], None] | None = None

    def factory(
        self,
        settings: TransportSettings,
        *,
        on_message: Callable[[str, bytes], None],
        on_connection_event: Callable[[ConnectionEvent], None] | None = None,
        resources: CrtResources | None = None,
    ) -> Transport:
        self.on_message, self.on_event = on_message, on_connection_event
        return self

    async def connect(self) -> None:
        return None

    async def subscribe(self, filters: Sequence[str], qos: QoS | int | None = None) -> list[int]:
        return await self._transport.subscribe(filters, qos)

    async def publish(self, topic: str, payload: bytes, qos: QoS | int | None = None) -> None:
        await self._transport.publish(topic, payload, qos)

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        qos: QoS | int | None = None,
        *,
        on_done: Callable[[TransportError | None], None] | None = None,
    ) -> None:
        self._transport.publish_nowait(topic, payload, qos, on_done=on_done)

    async def close(self) -> None:
        self.on_message = self.on_event = None


class JobDevice:
    """One thing following its next OTA job. ``await JobDevice(...).run()`` returns a ``JobResult``; never raises
    for a failed job."""

    def __init__(
        self,
        *,
        thing_name: str,
        transport: TransportSettings,
        settings: DownloadSettings,
        jobs: JobSettings,
        source: S3Source | None = None,
        resources: CrtResources | None = None,
        run_started: float | None = None,
        on_progress: Callable[[int], None] | None = None,
        transport_factory: TransportFactory = MqttTransport,
    ) -> None:
        self.thing_name = thing_name
        self.transport_settings = transport
        self.settings = settings
        self.jobs = jobs
        self._source = source
        self._resources = resources
        self._run_started = run_started
        self._on_progress = on_progress
        self._factory = transport_factory
        self._prefix = f"$aws/things/{thing_name}/jobs/"
        self._mqtt: Transport | None = None
        self._link: _SharedLink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, asyncio.Future[tuple[bool, dict[str, Any]]]] = {}
        self._next_changed: asyncio.Event = asyncio.Event()
        self._next_execution: dict[str, Any] | None = None
        self._job_id: str | None = None
        self._stopped: asyncio.Event = asyncio.Event()
        self._progress_done: asyncio.Event = asyncio.Event()
        self._seq = 0
        self._bytes = 0
        self._started_at = 0.0
        self._connect_s: float | None = None  # the device's own connection (a download's is the shared one)

    # -- run ----------------------------------------------------------------------------------------------------

    async def run(self) -> JobResult:
        loop = self._loop = asyncio.get_running_loop()
        self._started_at = loop.time()
        try:
            return await self._run()
        except (ConnectError, InvalidSettings) as exc:
            return self._result(None, "CONNECT", f"cannot connect: {exc}", None)
        except TransportError as exc:
            return self._result(self._job_id, "DISCONNECTED", f"connection failed: {exc}", None)
        except TimeoutError:
            return self._result(self._job_id, "UNKNOWN", "no answer from the Jobs service (timeout)", None)
        except _Refused as exc:
            return self._result(self._job_id, "REFUSED", str(exc), None)
        finally:
            if self._mqtt is not None:
                with contextlib.suppress(TransportError):
                    await self._mqtt.close()

    async def _run(self) -> JobResult:
        mqtt = self._mqtt = self._factory(
            self.transport_settings,
            on_message=self._on_message,
            on_connection_event=self._on_connection_event,
            resources=self._resources,
        )
        await mqtt.connect()
        assert self._loop is not None
        self._connect_s = self._loop.time() - self._started_at
        await mqtt.subscribe(jobs_filters(self.thing_name))
        self._link = _SharedLink(mqtt)
        execution = await self._start_next()
        assert self._loop is not None
        deadline = self._loop.time() + self.jobs.wait_s
        while execution is None:
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return self._result(None, NO_JOB, f"no pending job within {self.jobs.wait_s:g} s", None)
            self._next_changed.clear()
            if self._next_execution is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._next_changed.wait(), remaining)
            if self._next_execution is not None:
                execution = await self._start_next()
        job_id = self._job_id = str(execution["jobId"])
        try:
            job = parse_ota_document(execution.get("jobDocument"))
        except JobDocumentError as exc:
            return await self._finish(job_id, "REJECTED", f"bad job document: {exc}", None)
        return await self._follow(job_id, job, int(execution.get("versionNumber") or 0))

    async def _follow(self, job_id: str, job: OtaJob, version: int) -> JobResult:
        results: list[DeviceResult] = []
        total_blocks = sum(-(-f.file_size // self.settings.block_size) for f in job.files)
        progress = asyncio.ensure_future(self._report_progress(job_id, total_blocks))
        try:
            for ota_file in job.files:
                result = await self._download(job.stream_id, ota_file)
                if result is None:  # the execution ended on the service's side
                    status, reason = await self._final_status(job_id)
                    return self._result(job_id, status, reason, results[-1] if results else None)
                results.append(result)
                problem = self._check(ota_file, result)
                if problem is not None:
                    self._progress_done.set()
                    progress.cancel()
                    return await self._finish(job_id, "FAILED", problem, result)
        finally:
            self._progress_done.set()
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
        details = f"{total_blocks}/{total_blocks}"
        return await self._finish(job_id, SUCCEEDED, "accepted", results[-1], receive=details)

    async def _download(self, stream_id: str, ota_file: OtaFile) -> DeviceResult | None:
        """One file over the shared connection; None when the execution ended meanwhile (the download stopped)."""
        assert self._link is not None and self._loop is not None
        device = Device(
            thing_name=self.thing_name,
            stream_id=stream_id,
            transport=self.transport_settings,
            settings=dataclasses.replace(self.settings, file_ids=(ota_file.file_id,)),
            source=self._source,
            resources=self._resources,
            run_started=self._run_started,
            on_progress=self._progressed,
            transport_factory=self._link.factory,
        )
        task = self._loop.create_task(device.run())
        stopped = self._loop.create_task(self._stopped.wait())
        try:
            await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(DeviceCancelled, asyncio.CancelledError):
            await task
        return None

    def _check(self, ota_file: OtaFile, result: DeviceResult) -> str | None:
        """Why the file must not be accepted (None: size, S3 and signature are right)."""
        if not result.ok or not result.files:
            failure = result.failure
            why = f"{failure.reason}: {failure.message}" if failure else "the file did not verify"
            return f"download failed: {why}"
        file = result.files[0]
        if file.file_size != ota_file.file_size:
            return f"size mismatch: the job says {ota_file.file_size} bytes, the stream has {file.file_size}"
        if not self.jobs.verify_signature:
            return None
        if ota_file.signature is None:
            return "the job document carries no sig-sha256-ecdsa signature"
        cert_path = Path(ota_file.certfile) if ota_file.certfile else None
        if cert_path is None or not cert_path.is_file():
            cert_path = self.jobs.signing_cert
        if cert_path is None or not cert_path.is_file():
            return f"code-signing certificate {ota_file.certfile!r} not found on the device"
        if file.sha256 is None:
            return "no digest of the received file to check the signature against"
        try:
            public = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_key()
        except (OSError, ValueError) as exc:
            return f"cannot load the code-signing certificate {cert_path}: {exc}"
        if not isinstance(public, ec.EllipticCurvePublicKey):
            return f"the code-signing certificate {cert_path} is not an EC key"
        try:
            public.verify(ota_file.signature, bytes.fromhex(file.sha256), ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        except InvalidSignature:
            return "signature check failed: sig-sha256-ecdsa does not verify with the code-signing certificate"
        return None

    # -- Jobs requests ------------------------------------------------------------------------------------------

    def _token(self) -> str:
        self._seq += 1
        return f"{self._seq}:{self.thing_name}"[:64]

    async def _request(self, suffix: str, payload: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Publish a Jobs request with a fresh clientToken; (accepted?, answer). TimeoutError without an answer."""
        assert self._mqtt is not None and self._loop is not None
        token = payload["clientToken"] = self._token()
        waiter: asyncio.Future[tuple[bool, dict[str, Any]]] = self._loop.create_future()
        self._waiters[token] = waiter
        try:
            await self._mqtt.publish(self._prefix + suffix, json.dumps(payload).encode(), QoS.AT_LEAST_ONCE)
            return await asyncio.wait_for(waiter, self.jobs.request_timeout_s)
        finally:
            self._waiters.pop(token, None)

    async def _start_next(self) -> dict[str, Any] | None:
        request = iotjobs.StartNextPendingJobExecutionRequest(
            thing_name=self.thing_name, step_timeout_in_minutes=self.jobs.step_timeout_minutes
        )
        accepted, answer = await self._request("start-next", request.to_payload())
        if not accepted:
            raise _Refused(f"StartNextPendingJobExecution rejected: {answer.get('code')}: {answer.get('message')}")
        execution = answer.get("execution")
        return execution if isinstance(execution, dict) else None

    async def _update(self, job_id: str, status: str, details: dict[str, str]) -> tuple[bool, dict[str, Any]]:
        request = iotjobs.UpdateJobExecutionRequest(
            thing_name=self.thing_name,
            job_id=job_id,
            status=status,
            status_details=details,
            include_job_execution_state=True,
            step_timeout_in_minutes=self.jobs.step_timeout_minutes if status == "IN_PROGRESS" else None,
        )
        payload = {k: v for k, v in request.to_payload().items() if k not in ("thingName", "jobId")}
        return await self._request(f"{job_id}/update", payload)

    async def _finish(
        self, job_id: str, status: str, reason: str, download: DeviceResult | None, *, receive: str | None = None
    ) -> JobResult:
        """Report the outcome; the execution's status as the service answered (it may have ended meanwhile)."""
        details = {"reason": reason[:MAX_REASON] or status}
        if receive is not None:
            details["receive"] = receive
        try:
            accepted, _answer = await self._update(job_id, status, details)
        except TimeoutError:
            return self._result(job_id, "UNKNOWN", f"no answer to the {status} update: {reason}", download)
        if not accepted:
            final, why = await self._final_status(job_id)
            return self._result(job_id, final, f"{reason}; the {status} update was refused: {why}", download)
        return self._result(job_id, status, reason, download)

    async def _final_status(self, job_id: str) -> tuple[str, str]:
        """The status of an execution that ended on the service's side, and why (``<job>/get``)."""
        try:
            accepted, answer = await self._request(f"{job_id}/get", {"includeJobDocument": False})
        except TimeoutError:
            return "UNKNOWN", "the execution ended on the service's side; no answer to DescribeJobExecution"
        if accepted:
            execution = answer.get("execution") or {}
            return str(execution.get("status", "UNKNOWN")), "the service changed the execution while downloading"
        code = answer.get("code")
        if code == "ResourceNotFound":
            return "REMOVED", "the execution was deleted while the device worked on it"
        state = answer.get("executionState") or {}
        status = str(state.get("status", "UNKNOWN"))
        return status, f"the execution became {status} while the device worked on it"

    async def _report_progress(self, job_id: str, total_blocks: int) -> None:
        """IN_PROGRESS with {"receive": "<blocks>/<total>"}, at most every progress_interval_s, when changed."""
        reported = -1
        while not self._progress_done.is_set():
            # The reporting rate. Ends at once when the download is over: a flag, because asyncio.wait_for in
            # Python 3.11 can swallow a cancellation that races with its answer, and this loop would then go on.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress_done.wait(), self.jobs.progress_interval_s)
            if self._progress_done.is_set():
                return
            blocks = min(total_blocks, self._bytes // self.settings.block_size)
            if blocks == reported:
                continue
            reported = blocks
            try:
                accepted, answer = await self._update(job_id, "IN_PROGRESS", {"receive": f"{blocks}/{total_blocks}"})
            except TimeoutError:
                continue
            if not accepted and answer.get("code") in ("InvalidStateTransition", "ResourceNotFound"):
                self._stopped.set()
                return

    def _progressed(self, nbytes: int) -> None:
        self._bytes += nbytes
        if self._on_progress is not None:
            self._on_progress(nbytes)

    # -- messages -----------------------------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        if not topic.startswith(self._prefix):
            link = self._link
            if link is not None and link.on_message is not None:
                link.on_message(topic, payload)
            return
        try:
            answer = json.loads(payload)
        except ValueError:
            log.warning("device %s: Jobs message on %s is not JSON", self.thing_name, topic)
            return
        if not isinstance(answer, dict):
            return
        if topic == self._prefix + "notify-next":
            event = iotjobs.NextJobExecutionChangedEvent.from_payload(answer)
            execution = answer.get("execution") if event.execution is not None else None
            self._next_execution = execution if isinstance(execution, dict) else None
            self._next_changed.set()
            if self._job_id is not None and (execution is None or execution.get("jobId") != self._job_id):
                log.info("device %s: job %s is no longer the next execution", self.thing_name, self._job_id)
                self._stopped.set()
            return
        accepted = topic.endswith("/accepted")
        if not accepted and not topic.endswith("/rejected"):
            return
        if not accepted:
            error = iotjobs.RejectedError.from_payload(answer)
            log.info("device %s: %s rejected: %s: %s", self.thing_name, topic, error.code, error.message)
        waiter = self._waiters.get(str(answer.get("clientToken")))
        if waiter is not None and not waiter.done():
            waiter.set_result((accepted, answer))

    def _on_connection_event(self, event: ConnectionEvent) -> None:
        link = self._link
        if link is not None and link.on_event is not None:
            link.on_event(event)
        if event.kind is ConnectionEventKind.LOST:
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_exception(TransportError(f"connection lost: {event.error}"))

    # -- result -------------------------------------------------------------------------------------------------

    def _result(self, job_id: str | None, status: str, reason: str, download: DeviceResult | None) -> JobResult:
        ok = status == SUCCEEDED
        if download is not None:
            metrics = download.metrics
        else:
            assert self._loop is not None
            started = self._run_started if self._run_started is not None else self._started_at
            metrics = DeviceMetrics(
                thing_name=self.thing_name,
                verified=False,
                failure_reason="job",
                started_at=max(0.0, self._started_at - started),
                ended_at=max(0.0, self._loop.time() - started),
            )
        metrics = dataclasses.replace(
            metrics,
            verified=ok,
            failure_reason=None if ok else f"job:{status}",
            failure_message=None if ok else reason,
            connect_s=self._connect_s,
            job_id=job_id,
            job_status=status,
            job_reason=reason,
        )
        return JobResult(
            thing_name=self.thing_name, job_id=job_id, status=status, reason=reason, download=download, metrics=metrics
        )
