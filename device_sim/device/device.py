"""One simulated device: connect, DescribeStream, download each file, verify, report.

How this works: ``Device.run()`` opens a transport (``transport_factory``: ``MqttTransport`` over awscrt unless
a caller passes another, e.g. an in-memory link in tests) whose ``on_message`` runs in the event loop (the CRT
thread only hops). It subscribes to ``description``, ``data`` and ``rejected`` before publishing anything, sends
DescribeStream (re-sent after ``describe_timeout``, a bounded number of times), then downloads the chosen files
one after the other, each with a ``FileDownload`` (engine + sink + timer, see ``device_download``) to which it
routes the file's data blocks and rejections. After a file completes, its digest is compared with the source
(``S3Source`` or ``--expect-sha256``) and only then is a file sink committed to its final path. The S3 clients
are made ready in a thread while the device connects and describes, not while blocks arrive.
Everything a device did ends up in ``DeviceMetrics``; ``run()`` never raises for a failed download.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from device_sim.device.download import FileDownload
from device_sim.device.meters import MessageMeter, ProgressSampler, metrics_counts
from device_sim.device.types import DeviceFailure, DeviceResult, DownloadSettings, FileResult, SinkKind
from device_sim.device.verify import S3Source
from device_sim.engine.machine import SharedRtt
from device_sim.engine.types import EngineStats
from device_sim.protocol import (
    DescribeStreamRequest,
    FileInfo,
    GetStreamRequest,
    Operation,
    Rejection,
    RemoteProtocolError,
    StreamDescription,
    build_topic,
    decode_answer,
    encode_request,
    subscription_filters,
)
from device_sim.results.metrics import DeviceMetrics, FailureKind
from device_sim.transport import (
    ConnectError,
    ConnectionEvent,
    ConnectionEventKind,
    CrtResources,
    InvalidSettings,
    MessageRuns,
    MqttTransport,
    PublishError,
    SubscribeRejected,
    Transport,
    TransportError,
    TransportFactory,
    TransportSettings,
)

__all__ = [
    "BAD_SETTINGS",
    "NO_SUCH_FILE",
    "Device",
    "DeviceCancelled",
    "DeviceFailure",
    "DeviceResult",
    "DownloadSettings",
    "FileResult",
    "SinkKind",
]

log = logging.getLogger(__name__)

#: ``DeviceFailure.detail`` when a requested file id is not in the stream (a caller mistake).
NO_SUCH_FILE = "no-such-file"
#: ``DeviceFailure.detail`` when the transport refused its settings (TLS files that do not load): a caller mistake.
BAD_SETTINGS = "settings"


class Device:
    """One thing downloading one stream. ``await Device(...).run()`` returns a ``DeviceResult``; never raises
    for a failed download (the failure is in the result). Cancelled, it raises ``DeviceCancelled`` carrying the
    partial result."""

    def __init__(
        self,
        *,
        thing_name: str,
        stream_id: str,
        transport: TransportSettings,
        settings: DownloadSettings,
        source: S3Source | None = None,
        resources: CrtResources | None = None,
        run_started: float | None = None,
        settings_label: str | None = None,
        on_progress: Callable[[int], None] | None = None,
        transport_factory: TransportFactory = MqttTransport,
        shared_rtt: SharedRtt | None = None,
    ) -> None:
        self.thing_name = thing_name
        self._transport_factory = transport_factory
        self._shared_rtt = shared_rtt  # a fleet's devices share what they learn of the service's round trip
        self.stream_id = stream_id
        self.transport_settings = transport
        self.settings = settings
        self._source = source if settings.verify_s3 and not settings.expect_sha256 else None
        self._resources = resources
        self._run_started = run_started
        self._label = settings_label if settings_label is not None else settings.label
        self._on_progress = on_progress
        fmt = settings.format
        self._topic_data = build_topic(thing_name, stream_id, Operation.DATA, fmt)
        self._topic_description = build_topic(thing_name, stream_id, Operation.DESCRIPTION, fmt)
        self._topic_rejected = build_topic(thing_name, stream_id, Operation.REJECTED, fmt)
        self._topic_describe = build_topic(thing_name, stream_id, Operation.DESCRIBE, fmt)
        self._topic_get = build_topic(thing_name, stream_id, Operation.GET, fmt)
        self._token_seq = 0
        self._mqtt: Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._current: FileDownload | None = None
        self._describe_waiter: asyncio.Future[StreamDescription | Rejection] | None = None
        self._describe_token: str | None = None
        self._describe_request: bytes | None = None  # sent again at once when the link resumes
        self._tasks: set[asyncio.Task[None]] = set()
        self._meter = MessageMeter()
        self._progress = ProgressSampler()
        self._totals = EngineStats()  # summed over the files of this run (engines are per file)
        self._disconnects = 0
        self._first_block_at: float | None = None
        self._started_at = 0.0
        self._bytes_done = 0  # bytes stored in this run so far
        self._stream_version: int | None = None
        self._file_ids: tuple[int, ...] = ()
        self._phase = "connecting"  # what the device was doing, for the message of a stopped run
        self._last: FileDownload | None = None  # the file downloading (or last downloaded)

    # -------------------------------------------------------------------------------------------------- run

    async def run(self) -> DeviceResult:
        loop = self._loop = asyncio.get_running_loop()
        t0 = self._started_at = loop.time()
        run_started = self._run_started if self._run_started is not None else t0
        timing: dict[str, float] = {}
        files: list[FileResult] = []
        failure: DeviceFailure | None = None
        try:
            await self._connect_and_download(files, timing)
        except DeviceFailure as exc:
            failure = exc
        except asyncio.CancelledError:
            failure = DeviceFailure(FailureKind.CANCELLED, self._stopped_message(files))
            with contextlib.suppress(asyncio.CancelledError):  # cancelled again while closing: the result counts
                await self._close()
            raise DeviceCancelled(self._result(files, failure, timing, run_started)) from None
        except Exception as exc:  # a bug: report it on this device, keep the fleet running
            log.exception("device %s failed unexpectedly", self.thing_name)
            failure = DeviceFailure(FailureKind.ERROR, f"{type(exc).__name__}: {exc}")
        await self._close()
        if failure is None:
            bad = next((f for f in files if not f.verified), None)
            if bad is not None:
                failure = DeviceFailure(FailureKind.VERIFY_MISMATCH, f"file {bad.file_id}: {bad.verdict_message}")
        return self._result(files, failure, timing, run_started)

    async def _connect_and_download(self, files: list[FileResult], timing: dict[str, float]) -> None:
        loop = self._loop
        assert loop is not None
        # boto3's client setup (~0.3 s of CPU, holding the GIL) overlaps the connect and describe, and is over
        # before the first request: a thread busy during the download would delay blocks into spurious timeouts.
        warm_up = None
        if self._source is not None and not self._source.prepared(self.stream_id):  # a fleet's first devices
            warm_up = asyncio.ensure_future(asyncio.to_thread(self._source.prepare, self.stream_id))
        try:
            self._mqtt = self._transport_factory(
                self.transport_settings,
                on_message=MessageRuns(self._on_message, self._on_messages),
                on_connection_event=self._on_connection_event,
                resources=self._resources,
            )
            await self._mqtt.connect()
        except ConnectError as exc:
            raise DeviceFailure(FailureKind.CONNECT, str(exc)) from exc
        except InvalidSettings as exc:  # e.g. TLS files that do not load: the caller's to fix, not a bug
            raise DeviceFailure(FailureKind.ERROR, str(exc), BAD_SETTINGS) from exc
        timing["connect"] = loop.time() - self._started_at
        try:
            self._phase = "subscribing"
            try:
                await self._mqtt.subscribe(subscription_filters(self.thing_name, self.stream_id, self.settings.format))
            except SubscribeRejected as exc:
                raise DeviceFailure(FailureKind.REJECTED, str(exc), "SubscribeRejected") from exc
            self._phase = "describing the stream"
            description = await self._describe()
            chosen = self._choose_files(description)
            self._file_ids = tuple(f.file_id for f in chosen)
            if warm_up is not None:
                self._phase = "preparing the verification"
                await warm_up  # prepare() never raises; verification reports source errors
            for info in chosen:
                files.append(await self._download_file(info, description, len(chosen)))
            timing["download"] = sum(f.seconds for f in files)
        except TransportError as exc:
            raise DeviceFailure(FailureKind.DISCONNECTED, str(exc)) from exc

    def _stopped_message(self, files: list[FileResult]) -> str:
        """What a cancelled device was doing: "stopped while downloading (120 of 256 blocks)" ..."""
        last = self._last
        if self._phase not in ("downloading", "verifying") or last is None:
            return f"stopped while {self._phase}"
        have, total = last.blocks
        which = (
            f"file {last.info.file_id} ({len(files) + 1} of {len(self._file_ids)}), " if len(self._file_ids) > 1 else ""
        )
        return f"stopped while {self._phase} ({which}{have} of {total} blocks)"

    def _result(
        self, files: list[FileResult], failure: DeviceFailure | None, timing: dict[str, float], run_started: float
    ) -> DeviceResult:
        loop_now = self._loop.time() if self._loop else self._started_at
        first_block_s = self._first_block_at - self._started_at if self._first_block_at is not None else None
        metrics = DeviceMetrics(
            thing_name=self.thing_name,
            settings=self._label,
            connect_s=timing.get("connect"),
            first_block_s=first_block_s,
            download_s=timing.get("download") if failure is None else None,
            **metrics_counts(self._totals),
            disconnects=self._disconnects,
            verified=failure is None,
            failure_reason=failure.reason if failure else None,
            failure_message=failure.message if failure else None,
            sha256=files[0].sha256 if len(files) == 1 else None,
            metered_messages_out=self._meter.messages_out,
            metered_messages_in=self._meter.messages_in,
            started_at=max(0.0, self._started_at - run_started),
            ended_at=max(0.0, loop_now - run_started),
            progress=tuple((max(0.0, ts - run_started), b) for ts, b in self._progress.samples()),
        )
        return DeviceResult(
            thing_name=self.thing_name,
            stream_id=self.stream_id,
            stream_version=self._stream_version,
            files=tuple(files),
            metrics=metrics,
            failure=failure,
            file_ids=self._file_ids,
        )

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._mqtt is not None:
            try:
                await self._mqtt.close()
            except TransportError as exc:  # closing a broken connection: nothing left to do
                log.debug("device %s: close: %s", self.thing_name, exc)

    # --------------------------------------------------------------------------------------------- describe

    def _next_token(self, prefix: str) -> str | None:
        if not self.settings.client_token:
            return None
        self._token_seq += 1
        return f"{prefix}{self._token_seq}"

    async def _describe(self) -> StreamDescription:
        """DescribeStream, re-sent after ``describe_timeout`` up to ``describe_retries`` times."""
        assert self._loop is not None and self._mqtt is not None
        s = self.settings
        drops_before = self._disconnects
        for _attempt in range(s.describe_retries + 1):
            token = self._describe_token = self._next_token("d")
            waiter = self._describe_waiter = self._loop.create_future()
            try:
                request = self._describe_request = encode_request(DescribeStreamRequest(client_token=token), s.format)
                await self._publish(self._topic_describe, request)
                answer: StreamDescription | Rejection = await asyncio.wait_for(waiter, s.describe_timeout)
            except TimeoutError:
                continue
            finally:
                self._describe_waiter = None
            if isinstance(answer, Rejection):
                raise DeviceFailure(
                    FailureKind.REJECTED, f"DescribeStream rejected: {answer.code}: {answer.message}", answer.code
                )
            self._stream_version = answer.stream_version
            return answer
        drops = self._disconnects - drops_before
        dropped = (
            f"; the broker closed the connection {drops} times meanwhile (AWS IoT and mosquitto do that when the "
            "policy/ACL denies a topic)"
            if drops
            else ""
        )
        raise DeviceFailure(
            FailureKind.TIMEOUT,
            f"no answer to DescribeStream of {self.stream_id} after {s.describe_retries + 1} tries "
            f"({s.describe_timeout:g} s each): check that the stream service serves this endpoint and that the "
            f"certificate belongs to thing {self.thing_name} (a thing may only use its own stream topics){dropped}",
            "describe",
        )

    def _choose_files(self, description: StreamDescription) -> list[FileInfo]:
        if self.settings.file_ids is None:
            if not description.files:
                raise DeviceFailure(FailureKind.ERROR, f"stream {self.stream_id} describes no files")
            return list(description.files)
        chosen = []
        for file_id in self.settings.file_ids:
            info = description.file(file_id)
            if info is None:
                have = ", ".join(str(f.file_id) for f in description.files) or "none"
                raise DeviceFailure(
                    FailureKind.ERROR,
                    f"stream {self.stream_id} has no file id {file_id} (it has: {have}); fix --file-id",
                    NO_SUCH_FILE,
                )
            chosen.append(info)
        return chosen

    # --------------------------------------------------------------------------------------------- download

    def _target(self, file_id: int, files: int) -> Path:
        out = self.settings.out or Path(f"{self.thing_name}-{self.stream_id}.bin")
        return out if files == 1 else out.with_name(f"{out.name}.{file_id}")

    async def _download_file(self, info: FileInfo, description: StreamDescription, files: int) -> FileResult:
        assert self._loop is not None
        self._phase = "downloading"
        download = self._current = self._last = FileDownload(
            info=info,
            stream_id=self.stream_id,
            stream_version=description.stream_version,
            settings=self.settings,
            target=self._target(info.file_id, files),
            client_token=self._next_token("g"),
            send=self._send_request,
            redescribe=self._describe,
            on_block=self._on_block,
            label=f"device {self.thing_name}",
            # QoS 0 completes when the request is written (after flow control); QoS 1 only at the PUBACK, too late
            # to start a round-trip measurement from.
            send_and_report=self._send_and_report if self.transport_settings.qos == 0 else None,
            shared_rtt=self._shared_rtt,
            source=self._source,
        )
        try:
            result = await download.run()
            self._phase = "verifying"
            verify_started = self._loop.time()
            verdict = await download.verify(result, self._source)
            verify_s = self._loop.time() - verify_started
            path = download.commit() if verdict.verified else None
            if not verdict.verified:
                download.close(abort=True)  # the blocks are wrong or the source moved: never resume them
        finally:
            self._current = None
            self._totals.add(download.stats)
            download.close(abort=False)
        return FileResult(
            file_id=download.info.file_id,
            file_size=download.info.file_size,
            sha256=result.sha256,
            verified=verdict.verified,
            seconds=download.transfer_s,
            verify_seconds=verify_s,
            path=path,
            verdict_message=verdict.message,
            first_bad_block=verdict.first_bad_block,
            resumed_blocks=download.resumed_blocks,
        )

    def _on_block(self, now: float, nbytes: int) -> None:
        if self._first_block_at is None:
            self._first_block_at = now
        self._bytes_done += nbytes
        self._progress.add(now, self._bytes_done)
        if self._on_progress is not None:
            self._on_progress(nbytes)

    # ---------------------------------------------------------------------------------------- messages in/out

    def _send_request(self, request: GetStreamRequest) -> None:
        self._send_and_report(request, None)

    def _send_and_report(self, request: GetStreamRequest, sent: Callable[[], None] | None) -> None:
        """Publish a GetStream request without awaiting it; ``sent()`` once it left or its publish failed (a lost
        request is asked again by the engine's timers; a refused one ends the run)."""
        assert self._mqtt is not None and self._loop is not None
        payload = encode_request(request, self.settings.format)
        self._meter.sent(len(payload), len(self._topic_get))

        def done(error: TransportError | None) -> None:
            if sent is not None:
                sent()
            if error is not None:
                self._publish_failed(error)

        try:
            self._mqtt.publish_nowait(self._topic_get, payload, on_done=done)
        except TransportError as exc:  # not connected: reconnecting (RESUMED sends it again) or closing
            self._loop.call_soon(done, exc)

    def _publish_failed(self, exc: TransportError) -> None:
        refused = self._refused(exc)
        if refused is None:
            log.debug("device %s: publish failed: %s", self.thing_name, exc)
        elif self._current is not None:
            self._current.fail(refused)

    async def _publish(self, topic: str, payload: bytes) -> None:
        """Publish; a lost publish is asked again by a timer, a refused one ends the run (DeviceFailure)."""
        assert self._mqtt is not None
        self._meter.sent(len(payload), len(topic))
        try:
            await self._mqtt.publish(topic, payload)
        except TransportError as exc:  # reconnecting or dropped: the timers ask again, a LOST event ends the run
            refused = self._refused(exc)
            if refused is not None:
                raise refused from exc
            log.debug("device %s: publish failed: %s", self.thing_name, exc)

    def _refused(self, exc: TransportError) -> DeviceFailure | None:
        """The failure for a publish the broker refused (MQTT 5 PUBACK NOT_AUTHORIZED); None for other errors."""
        if not isinstance(exc, PublishError) or exc.reason_code is None:
            return None
        return DeviceFailure(
            FailureKind.REJECTED,
            f"{exc}; a thing may only use its own stream topics: is the certificate the one of {self.thing_name}?",
            "PublishRefused",
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        if not isinstance(error, DeviceFailure):
            log.error("device %s: task failed", self.thing_name, exc_info=error)
            error = DeviceFailure(FailureKind.ERROR, f"internal: {type(error).__name__}: {error}")
        if self._current is not None:
            self._current.fail(error)

    def _on_message(self, topic: str, payload: bytes) -> None:
        """Runs in the event loop for every message on our three topics (``_on_messages`` for a run of them)."""
        self._on_messages([(topic, payload)])

    def _on_messages(self, messages: list[tuple[str, bytes]]) -> None:
        """Messages on our three topics, in their order; consecutive data messages go to the download together."""
        received, data_topic = self._meter.received, self._topic_data
        data: list[bytes] = []
        for topic, payload in messages:
            received(len(payload), len(topic))
            if topic == data_topic:
                data.append(payload)
                continue
            if data:
                self._on_data(data)
                data = []
            self._on_answer(topic, payload)
        if data:
            self._on_data(data)

    def _on_data(self, payloads: list[bytes]) -> None:
        current = self._current
        if current is not None:  # else late blocks after the file finished
            current.receive_data(payloads)

    def _on_answer(self, topic: str, payload: bytes) -> None:
        fmt = self.settings.format
        try:
            if topic == self._topic_description:
                answer = decode_answer(Operation.DESCRIPTION, payload, fmt)
            elif topic == self._topic_rejected:
                answer = decode_answer(Operation.REJECTED, payload, fmt)
            else:
                return
        except RemoteProtocolError as exc:
            log.warning("device %s: malformed answer on %s: %s", self.thing_name, topic, exc)
            return
        waiter = self._describe_waiter
        if isinstance(answer, StreamDescription):
            if waiter is not None and not waiter.done() and answer.client_token == self._describe_token:
                waiter.set_result(answer)
            return
        if isinstance(answer, Rejection):
            if (
                waiter is not None
                and not waiter.done()
                and (answer.client_token is None or answer.client_token == self._describe_token)
            ):
                waiter.set_result(answer)
                return
            if self._current is not None:
                self._current.receive_rejection(answer)

    def _on_connection_event(self, event: ConnectionEvent) -> None:
        if event.kind in (ConnectionEventKind.INTERRUPTED, ConnectionEventKind.LOST):
            self._disconnects += 1
            log.info("device %s: connection %s: %s", self.thing_name, event.kind.value, event.error)
        if event.kind is ConnectionEventKind.RESUMED:
            # Whatever was on its way was lost with the connection: ask again now, not after a timeout.
            log.info("device %s: connection resumed", self.thing_name)
            waiter, request = self._describe_waiter, self._describe_request
            if waiter is not None and not waiter.done() and request is not None:
                self._spawn(self._publish(self._topic_describe, request))
            if self._current is not None:
                self._current.link_resumed()
        if event.kind is ConnectionEventKind.LOST:
            failure = DeviceFailure(FailureKind.DISCONNECTED, f"connection lost: {event.error}")
            if self._current is not None:
                self._current.fail(failure)
            if self._describe_waiter is not None and not self._describe_waiter.done():
                self._describe_waiter.set_exception(failure)


class DeviceCancelled(asyncio.CancelledError):
    """Cancellation that carries the partial result (the fleet still reports a stopped device)."""

    def __init__(self, result: DeviceResult) -> None:
        super().__init__("device cancelled")
        self.result = result
