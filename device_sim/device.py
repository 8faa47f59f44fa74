"""One simulated device: connect, DescribeStream, download each file with the engine, verify, report.

How this works: ``Device.run()`` opens an ``MqttTransport`` whose ``on_message`` runs in the event loop (the CRT
thread only hops). It subscribes to ``description``, ``data`` and ``rejected`` before publishing anything, sends
DescribeStream (re-sent on an idle timeout, a bounded number of times), then downloads the chosen files one after
the other. Per file a ``DownloadEngine`` decides what to request; the device only carries out its actions:
publish a request, write a block into the sink (keeping a CRC-32 per block for verification), discard blocks,
re-describe after a VersionMismatch, finish. One asyncio timer follows ``engine.get_timer()``: it is moved
earlier when needed and otherwise fires, lets the engine decide and is re-armed (so a block costs no timer
churn). After a file completes, its digest is compared with the source (``S3Source`` or ``--expect-sha256``)
and only then is a file sink committed to its final path. Everything a device did ends up in ``DeviceMetrics``.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .collect import MessageMeter, ProgressSampler
from .engine import DownloadEngine
from .engine_types import (
    Complete,
    DiscardBlocks,
    EngineSettings,
    EngineStats,
    Failed,
    FailureReason,
    Redescribe,
    SendRequest,
    WriteBlock,
)
from .metrics import DeviceMetrics, FailureKind, failure_reason
from .protocol import (
    DataBlock,
    DescribeStreamRequest,
    FileInfo,
    Format,
    Operation,
    Rejection,
    RemoteProtocolError,
    StreamDescription,
    build_topic,
    decode_answer,
    decode_data_block,
    encode_request,
    subscription_filters,
)
from .sinks import BlockSink, DigestSink, FileSink, MemorySink, ResumeKey, SinkError
from .transport import (
    ConnectError,
    ConnectionEvent,
    ConnectionEventKind,
    CrtResources,
    MqttTransport,
    TransportError,
    TransportSettings,
)
from .verify import S3Source, SourceError, Verdict, compare

__all__ = ["Device", "DeviceFailure", "DeviceResult", "DownloadSettings", "FileResult", "SinkKind"]

log = logging.getLogger(__name__)


class SinkKind:
    MEMORY = "memory"
    FILE = "file"
    DIGEST = "digest"


@dataclass(frozen=True, kw_only=True, slots=True)
class DownloadSettings:
    """How a device downloads (the CLI's download options)."""

    format: Format = Format.CBOR
    block_size: int = 4096
    blocks_per_request: int | None = None
    inflight: int = 1
    request_timeout: float | None = None  # None: adaptive idle timeout
    max_retries: int = 32
    send_version: bool = True
    client_token: bool = True
    file_ids: tuple[int, ...] | None = None  # None: every file of the stream
    describe_timeout: float = 5.0
    describe_retries: int = 5
    sink: str = SinkKind.DIGEST
    out: Path | None = None  # with sink FILE: the final path (several files: <out>.<fileId>)
    state_dir: Path | None = None  # with sink FILE: resumable
    verify_s3: bool = True
    expect_sha256: str | None = None

    def engine_settings(self, token: str | None) -> EngineSettings:
        return EngineSettings(
            block_size=self.block_size,
            blocks_per_request=self.blocks_per_request,
            inflight=self.inflight,
            request_timeout=self.request_timeout,
            max_retries=self.max_retries,
            send_version=self.send_version,
            client_token=token,
        )

    @property
    def label(self) -> str:
        parts = [f"{self.block_size}B", self.format.value]
        if self.blocks_per_request:
            parts.append(f"x{self.blocks_per_request}")
        if self.inflight != 1:
            parts.append(f"inflight {self.inflight}")
        return " ".join(parts)


class DeviceFailure(Exception):
    """A device could not finish; ``kind``/``detail`` make the ``failure_reason``."""

    def __init__(self, kind: FailureKind, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = detail
        self.message = message

    @property
    def reason(self) -> str:
        return failure_reason(self.kind, self.detail)


@dataclass(frozen=True, kw_only=True, slots=True)
class FileResult:
    file_id: int
    file_size: int
    sha256: str | None
    verified: bool
    seconds: float
    path: str | None = None
    verdict_message: str = ""
    resumed_blocks: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceResult:
    thing_name: str
    stream_id: str
    stream_version: int | None
    files: tuple[FileResult, ...]
    metrics: DeviceMetrics
    failure: DeviceFailure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and bool(self.files) and all(f.verified for f in self.files)


@dataclass
class _Totals:
    """Counters summed over the files of one run (engines are per file)."""

    blocks: int = 0
    bytes: int = 0
    duplicates: int = 0
    invalid: int = 0
    re_requests: int = 0
    requests: int = 0
    timeouts: int = 0
    rejections: dict[str, int] = field(default_factory=dict)

    def add(self, stats: EngineStats) -> None:
        self.blocks += stats.blocks_received
        self.bytes += stats.bytes_received
        self.duplicates += stats.duplicates
        self.invalid += stats.invalid_blocks
        self.re_requests += stats.re_requests
        self.requests += stats.requests_sent
        self.timeouts += stats.timeouts
        for code, n in stats.rejections.items():
            self.rejections[code] = self.rejections.get(code, 0) + n


class Device:
    """One thing downloading one stream. ``await Device(...).run()`` returns a ``DeviceResult``; never raises
    for a failed download (the failure is in the result), only for programming errors."""

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
    ) -> None:
        self.thing_name = thing_name
        self.stream_id = stream_id
        self.transport_settings = transport
        self.settings = settings
        self._source = source
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
        self._topic_get_len = len(self._topic_get.encode())
        self._token_seq = 0
        self._mqtt: MqttTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine: DownloadEngine | None = None
        self._sink: BlockSink | None = None
        self._crcs: array[int] = array("I")
        self._done: asyncio.Future[Complete | Failed] | None = None
        self._describe_waiter: asyncio.Future[StreamDescription | Rejection] | None = None
        self._describe_token: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._meter = MessageMeter()
        self._progress = ProgressSampler()
        self._totals = _Totals()
        self._disconnects = 0
        self._first_block_at: float | None = None
        self._started_at = 0.0
        self._bytes_done = 0  # bytes of files finished before the current one
        self._file_info: FileInfo | None = None
        self._stream_version: int | None = None
        self._files_chosen = 0

    # -------------------------------------------------------------------------------------------------- run

    async def run(self) -> DeviceResult:
        loop = self._loop = asyncio.get_running_loop()
        t0 = self._started_at = loop.time()
        run_started = self._run_started if self._run_started is not None else t0
        connect_s: float | None = None
        download_s: float | None = None
        files: list[FileResult] = []
        failure: DeviceFailure | None = None
        try:
            try:
                self._mqtt = MqttTransport(
                    self.transport_settings,
                    on_message=self._on_message,
                    on_connection_event=self._on_connection_event,
                    resources=self._resources,
                )
                await self._mqtt.connect()
            except ConnectError as exc:
                raise DeviceFailure(FailureKind.CONNECT, str(exc)) from exc
            connect_s = loop.time() - t0
            try:
                await self._mqtt.subscribe(subscription_filters(self.thing_name, self.stream_id, self.settings.format))
                description = await self._describe()
                chosen = self._choose_files(description)
                self._files_chosen = len(chosen)
                download_started = loop.time()
                for info in chosen:
                    files.append(await self._download(info, description))
                download_s = loop.time() - download_started
            except TransportError as exc:
                raise DeviceFailure(FailureKind.DISCONNECTED, str(exc)) from exc
        except DeviceFailure as exc:
            failure = exc
        except asyncio.CancelledError:
            failure = DeviceFailure(FailureKind.CANCELLED, "stopped before the download finished")
            self._cleanup_file(abort=False)
            await self._close()
            raise _Cancelled(self._result(files, failure, connect_s, download_s, run_started)) from None
        except Exception as exc:  # a bug: report it on this device, keep the fleet running
            log.exception("device %s failed unexpectedly", self.thing_name)
            failure = DeviceFailure(FailureKind.ERROR, f"{type(exc).__name__}: {exc}")
        finally:
            self._cancel_timer()
        self._cleanup_file(abort=False)
        await self._close()
        if failure is None and not all(f.verified for f in files):
            bad = next(f for f in files if not f.verified)
            failure = DeviceFailure(FailureKind.VERIFY_MISMATCH, f"file {bad.file_id}: {bad.verdict_message}")
        return self._result(files, failure, connect_s, download_s, run_started)

    def _result(
        self,
        files: list[FileResult],
        failure: DeviceFailure | None,
        connect_s: float | None,
        download_s: float | None,
        run_started: float,
    ) -> DeviceResult:
        loop_now = self._loop.time() if self._loop else self._started_at
        t = self._totals
        first_block_s = self._first_block_at - self._started_at if self._first_block_at is not None else None
        metrics = DeviceMetrics(
            thing_name=self.thing_name,
            settings=self._label,
            connect_s=connect_s,
            first_block_s=first_block_s,
            download_s=download_s if failure is None else None,
            bytes=t.bytes,
            blocks=t.blocks,
            duplicates=t.duplicates,
            invalid_blocks=t.invalid,
            re_requests=t.re_requests,
            requests=t.requests,
            timeouts=t.timeouts,
            rejections=t.rejections,
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
        for _attempt in range(self.settings.describe_retries + 1):
            token = self._describe_token = self._next_token("d")
            waiter = self._describe_waiter = self._loop.create_future()
            payload = encode_request(DescribeStreamRequest(client_token=token), self.settings.format)
            await self._publish(self._topic_describe, payload)
            try:
                answer = await asyncio.wait_for(waiter, self.settings.describe_timeout)
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
        raise DeviceFailure(
            FailureKind.TIMEOUT,
            f"no answer to DescribeStream after {self.settings.describe_retries + 1} tries "
            f"({self.settings.describe_timeout} s each): is the stream service running for this endpoint?",
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
                    FailureKind.ERROR, f"stream {self.stream_id} has no file id {file_id} (it has: {have})"
                )
            chosen.append(info)
        return chosen

    # --------------------------------------------------------------------------------------------- download

    def _make_sink(self, info: FileInfo, version: int) -> BlockSink:
        s = self.settings
        if s.sink == SinkKind.FILE:
            return FileSink(
                self._part_target(info.file_id),
                info.file_size,
                s.block_size,
                state_dir=s.state_dir,
                resume_key=ResumeKey(stream_id=self.stream_id, file_id=info.file_id, stream_version=version)
                if s.state_dir is not None
                else None,
            )
        if s.sink == SinkKind.MEMORY:
            return MemorySink(info.file_size, s.block_size)
        return DigestSink(info.file_size, s.block_size)

    def _part_target(self, file_id: int) -> Path:
        out = self.settings.out or Path(f"{self.thing_name}-{self.stream_id}.bin")
        if self._files_chosen == 1:
            return out
        return out.with_name(f"{out.name}.{file_id}")

    async def _download(self, info: FileInfo, description: StreamDescription) -> FileResult:
        assert self._loop is not None
        loop = self._loop
        started = loop.time()
        self._file_info = info
        version = description.stream_version
        try:
            self._sink = self._make_sink(info, version)
        except SinkError as exc:
            raise DeviceFailure(FailureKind.ERROR, f"cannot store file {info.file_id}: {exc}") from exc
        resumed = list(self._sink.received_blocks())
        self._crcs = array("I", bytes(4 * (-(-info.file_size // self.settings.block_size))))
        if resumed:
            self._rebuild_crcs(resumed)
        self._done = loop.create_future()
        token = self._next_token("g")
        engine = self._engine = DownloadEngine(
            file_id=info.file_id,
            file_size=info.file_size,
            stream_version=version if self.settings.send_version else None,
            now=loop.time(),
            settings=self.settings.engine_settings(token),
            have=resumed or None,
        )
        engine.start(loop.time())
        self._pump()
        outcome = await self._done
        self._cancel_timer()
        self._totals.add(engine.stats)
        self._engine = None
        if isinstance(outcome, Failed):
            self._cleanup_file(abort=False)
            raise _engine_failure(outcome, info.file_id)
        sink = self._sink
        assert sink is not None
        result = sink.finish()
        verdict = await self._verify(info, result.sha256, result.size)
        path: str | None = None
        if verdict.verified and isinstance(sink, FileSink):
            path = str(sink.commit())
        self._sink = None
        if not isinstance(sink, FileSink) or not verdict.verified:
            sink.close()
        self._bytes_done += info.file_size
        return FileResult(
            file_id=info.file_id,
            file_size=info.file_size,
            sha256=result.sha256,
            verified=verdict.verified,
            seconds=loop.time() - started,
            path=path,
            verdict_message=verdict.message,
            resumed_blocks=len(resumed),
        )

    def _rebuild_crcs(self, blocks: list[int]) -> None:
        """After a resume: CRCs of the trusted blocks, read back from the part file."""
        sink = self._sink
        if not isinstance(sink, FileSink):
            return
        size, bs = sink.file_size, sink.block_size
        with open(sink.part_path, "rb") as fh:
            for i in blocks:
                fh.seek(i * bs)
                self._crcs[i] = zlib.crc32(fh.read(min(bs, size - i * bs)))

    def _cleanup_file(self, *, abort: bool) -> None:
        sink, self._sink = self._sink, None
        if sink is None:
            return
        try:
            sink.abort() if abort else sink.close()
        except SinkError as exc:
            log.warning("device %s: closing the sink: %s", self.thing_name, exc)

    async def _verify(self, info: FileInfo, sha256: str, size: int) -> Verdict:
        s = self.settings
        if s.expect_sha256:
            return compare(sha256=sha256, size=size, expected_sha256=s.expect_sha256, expected_size=info.file_size)
        if not s.verify_s3 or self._source is None:
            # Nothing to compare with: the size and the engine's block checks are all we have.
            return Verdict(
                verified=size == info.file_size,
                expected_sha256=sha256,
                expected_size=info.file_size,
                message="" if size == info.file_size else "size differs from the description",
            )
        source = self._source
        try:
            location = await asyncio.to_thread(source.locate, self.stream_id, info.file_id)
            obj = await asyncio.to_thread(source.fetch, location)
        except SourceError as exc:
            raise DeviceFailure(FailureKind.ERROR, f"cannot verify against S3: {exc}") from exc
        verdict = compare(sha256=sha256, size=size, expected_sha256=obj.sha256, expected_size=obj.size)
        if not verdict.verified:
            source_crcs = await asyncio.to_thread(source.source_crcs, obj, s.block_size)
            verdict = compare(
                sha256=sha256,
                size=size,
                expected_sha256=obj.sha256,
                expected_size=obj.size,
                crcs=list(self._crcs),
                source_crcs=source_crcs,
            )
        return verdict

    # ---------------------------------------------------------------------------------- engine <-> device

    def _pump(self) -> None:
        """Carry out the engine's actions, then follow its timer."""
        engine = self._engine
        if engine is None:
            return
        loop = self._loop
        assert loop is not None
        for action in engine.next_actions():
            if isinstance(action, WriteBlock):
                self._write(action)
            elif isinstance(action, SendRequest):
                payload = encode_request(action.request, self.settings.format)
                self._spawn(self._publish(self._topic_get, payload))
            elif isinstance(action, DiscardBlocks):
                self._discard(action)
            elif isinstance(action, Redescribe):
                self._spawn(self._redescribe())
            elif isinstance(action, Complete | Failed) and self._done is not None and not self._done.done():
                self._done.set_result(action)
        self._arm_timer(engine.get_timer())

    def _write(self, action: WriteBlock) -> None:
        sink = self._sink
        assert sink is not None and self._loop is not None
        now = self._loop.time()
        if isinstance(sink, FileSink):
            sink.write(action.index, action.offset_bytes, action.payload, now)
        else:
            sink.write(action.index, action.offset_bytes, action.payload)
        self._crcs[action.index] = zlib.crc32(action.payload)
        if self._first_block_at is None:
            self._first_block_at = now
        engine = self._engine
        done = self._bytes_done + (engine.stats.bytes_received if engine is not None else 0)
        self._progress.add(now, done)
        if self._on_progress is not None:
            self._on_progress(len(action.payload))

    def _discard(self, action: DiscardBlocks) -> None:
        log.info(
            "device %s: discarding file %s blocks: %s",
            self.thing_name,
            self._file_info.file_id if self._file_info else "?",
            action.reason,
        )
        self._cleanup_file(abort=True)
        assert self._file_info is not None and self._engine is not None
        info = FileInfo(file_id=self._file_info.file_id, file_size=action.file_size)
        self._file_info = info
        self._sink = self._make_sink(info, self._stream_version or 0)
        self._crcs = array("I", bytes(4 * (-(-info.file_size // self.settings.block_size))))

    async def _redescribe(self) -> None:
        assert self._loop is not None
        try:
            description = await self._describe()
        except DeviceFailure as exc:
            if self._engine is not None:
                self._engine.cancel(f"re-describe failed: {exc.message}", self._loop.time())
                self._pump()
            return
        engine, info = self._engine, self._file_info
        if engine is None or info is None:
            return
        fresh = description.file(info.file_id)
        if fresh is None:
            engine.cancel(f"file {info.file_id} is no longer in stream {self.stream_id}", self._loop.time())
        else:
            version = description.stream_version if self.settings.send_version else None
            engine.restart(fresh.file_size, version, self._loop.time())
        self._pump()

    def _arm_timer(self, deadline: float | None) -> None:
        if deadline is None:
            self._cancel_timer()
            return
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return  # fires earlier or on time; _on_timer re-arms
            timer.cancel()
        assert self._loop is not None
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        engine = self._engine
        if engine is None or self._loop is None:
            return
        deadline = engine.get_timer()
        now = self._loop.time()
        if deadline is not None and deadline <= now:
            engine.handle_timer(now)
        self._pump()

    # ---------------------------------------------------------------------------------------- messages in/out

    async def _publish(self, topic: str, payload: bytes) -> None:
        assert self._mqtt is not None
        self._meter.sent(len(payload), len(topic))
        try:
            await self._mqtt.publish(topic, payload)
        except TransportError as exc:  # the engine's timer asks again; a dead connection ends the run elsewhere
            log.debug("device %s: publish failed: %s", self.thing_name, exc)

    def _spawn(self, coro: object) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("device %s: task failed", self.thing_name, exc_info=task.exception())
            if self._done is not None and not self._done.done():
                err = task.exception()
                self._done.set_result(Failed(reason=FailureReason.CANCELLED, code=None, message=f"internal: {err}"))

    def _on_message(self, topic: str, payload: bytes) -> None:
        """Runs in the event loop for every message on our three topics."""
        self._meter.received(len(payload), len(topic))
        loop = self._loop
        assert loop is not None
        fmt = self.settings.format
        if topic == self._topic_data:
            engine = self._engine
            if engine is None:
                return  # a late block after the file finished
            try:
                block: DataBlock = decode_data_block(payload, fmt)
            except RemoteProtocolError as exc:
                log.debug("device %s: bad data message: %s", self.thing_name, exc)
                return
            engine.receive_block(block, loop.time())
            self._pump()
            return
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
            if self._engine is not None:
                self._engine.receive_rejection(answer, loop.time())
                self._pump()

    def _on_connection_event(self, event: ConnectionEvent) -> None:
        if event.kind in (ConnectionEventKind.INTERRUPTED, ConnectionEventKind.LOST):
            self._disconnects += 1
            log.info("device %s: connection %s: %s", self.thing_name, event.kind.value, event.error)
        if event.kind is ConnectionEventKind.LOST:
            failure = Failed(reason=FailureReason.CANCELLED, code=None, message=f"connection lost: {event.error}")
            if self._done is not None and not self._done.done():
                self._done.set_result(failure)
            if self._describe_waiter is not None and not self._describe_waiter.done():
                self._describe_waiter.set_exception(DeviceFailure(FailureKind.DISCONNECTED, str(event.error)))


class _Cancelled(asyncio.CancelledError):
    """Cancellation that carries the partial result (the fleet still reports a stopped device)."""

    def __init__(self, result: DeviceResult) -> None:
        super().__init__("device cancelled")
        self.result = result


def _engine_failure(failed: Failed, file_id: int) -> DeviceFailure:
    if failed.reason is FailureReason.REJECTED:
        return DeviceFailure(
            FailureKind.REJECTED,
            f"file {file_id}: the service rejected the request: {failed.code}: {failed.message}",
            failed.code,
        )
    if failed.reason in (FailureReason.TIMEOUT, FailureReason.THROTTLED, FailureReason.VERSION_MISMATCH):
        return DeviceFailure(FailureKind.TIMEOUT, f"file {file_id}: {failed.message}", failed.reason.value)
    if failed.message.startswith("connection lost"):
        return DeviceFailure(FailureKind.DISCONNECTED, f"file {file_id}: {failed.message}")
    return DeviceFailure(FailureKind.CANCELLED, f"file {file_id}: {failed.message}")
