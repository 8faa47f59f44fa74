"""One file of a stream, downloaded by a device: engine + sink + one timer, then verification and commit.

How this works: ``FileDownload.run()`` opens the sink (a resumable file sink trusts the blocks it persisted, and
the engine starts with them), starts a ``DownloadEngine`` and waits for its outcome. The device routes this file's
data blocks and rejections to ``receive_block``/``receive_rejection``; after every input the download carries out
the engine's actions (``_pump``): publish a request, write a block into the sink (keeping a CRC-32 per block, so a
verification mismatch can name the first bad block), discard everything after the stream changed, re-describe
after a VersionMismatch. One asyncio timer follows ``engine.get_timer()``: it is moved earlier when needed and
otherwise fires, lets the engine decide and is re-armed, so a block costs no timer churn. (When to time a request
out, only once the link is quiet, or soon after its highest block: the engine decides.) With ``send_and_report``
the device tells the engine when each request actually left (``request_sent``); ``link_resumed()`` after a
reconnect has the engine send its requests in flight again at once. ``verify()`` compares the digest with the
source (S3, ``--expect-sha256``, or only the size); ``commit()`` renames a verified file sink into place. A lost
connection or a failed re-describe ends the wait with a ``DeviceFailure``, and so does an exception in any input
handler (a bug in the engine or in a caller's callback): it would otherwise go to the event loop's exception
handler, and the download would wait for a block or a timer that never comes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import zlib
from array import array
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Concatenate, ParamSpec

from device_sim.device.types import DeviceFailure, DownloadSettings, SinkKind
from device_sim.device.verify import S3Source, SourceError, SourceObject, Verdict, compare
from device_sim.engine.machine import DownloadEngine, SharedRtt
from device_sim.engine.profiles import DownloadMachine, ProfileRefused, make_profile_machine
from device_sim.engine.types import (
    Complete,
    DiscardBlocks,
    EngineStats,
    Failed,
    FailureReason,
    Redescribe,
    SendRequest,
    WriteBlock,
)
from device_sim.protocol import (
    DataBlock,
    DataLayout,
    FileInfo,
    GetStreamRequest,
    Rejection,
    RemoteProtocolError,
    StreamDescription,
    decode_data_block,
)
from device_sim.results.metrics import FailureKind
from device_sim.sinks import (
    BlockSink,
    DigestSink,
    FileSink,
    MemorySink,
    ReferenceSink,
    ResumeKey,
    SinkError,
    SinkResult,
)

__all__ = ["FileDownload", "engine_failure"]

log = logging.getLogger(__name__)

Outcome = Complete | Failed | DeviceFailure

P = ParamSpec("P")


def _fails_on_error(
    method: Callable[Concatenate[FileDownload, P], None],
) -> Callable[Concatenate[FileDownload, P], None]:
    """An input of the download (a message, the timer, a report): an exception in it fails this download (as an
    internal error, logged with its traceback) instead of leaving it waiting, and the inputs that still come are
    ignored (the engine may be half-way through an update)."""

    def guarded(self: FileDownload, /, *args: P.args, **kwargs: P.kwargs) -> None:
        if self._crashed:
            return
        try:
            method(self, *args, **kwargs)
        except Exception as exc:
            self.crashed(method.__name__, exc)

    guarded.__name__, guarded.__qualname__, guarded.__doc__ = method.__name__, method.__qualname__, method.__doc__
    return guarded


class FileDownload:
    """Downloads one file; ``await run()`` returns when every block is stored, raises DeviceFailure otherwise."""

    def __init__(
        self,
        *,
        info: FileInfo,
        stream_id: str,
        stream_version: int,
        settings: DownloadSettings,
        target: Path,
        client_token: str | None,
        send: Callable[[GetStreamRequest], None],
        redescribe: Callable[[], Awaitable[StreamDescription]],
        on_block: Callable[[float, int], None],
        label: str,
        send_and_report: Callable[[GetStreamRequest, Callable[[], None]], None] | None = None,
        shared_rtt: SharedRtt | None = None,
        source: S3Source | None = None,
    ) -> None:
        """``send`` publishes a request. ``send_and_report``, when given, is used instead: it also calls its second
        argument once the request has left (after client-side flow control) or its publish failed, and the
        engine's idle timer for the request starts only then. ``source``: the S3 objects the download will be
        verified against; with a digest sink, each block is compared with the object instead (``ReferenceSink``)."""
        self.info = info
        self.stream_id = stream_id
        self.stream_version = stream_version
        self.settings = settings
        self.target = target
        self._shared_rtt = shared_rtt  # round-trip knowledge shared with the fleet's other devices
        self.resumed_blocks = 0
        self.transfer_s = 0.0
        self._token = client_token
        self._send = send
        self._send_and_report = send_and_report
        self._redescribe_call = redescribe
        self._on_block = on_block
        self._label = label
        self._loop = asyncio.get_running_loop()
        self._engine: DownloadMachine | None = None
        self._fast: DownloadEngine | None = None  # the engine, when it is this project's (it has receive_data)
        self._layout = DataLayout(client_token, info.file_id, settings.block_size)
        self._armed_epoch = -1  # the engine's deadline_epoch when the timer was last armed
        self._source = source
        self._reference: tuple[bytes, str] | None = None  # (bytes, SHA-256) of the S3 object, for ReferenceSink
        self._sink: BlockSink | None = None
        self._crcs: array[int] = array("I")
        self._done: asyncio.Future[Outcome] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._redescribing: asyncio.Task[None] | None = None
        self._crashed = False  # an input handler raised: the download failed, later inputs are ignored

    # ------------------------------------------------------------------------------------------------ lifecycle

    @property
    def stats(self) -> EngineStats:
        return self._engine.stats if self._engine is not None else EngineStats()

    @property
    def sink(self) -> BlockSink | None:
        return self._sink

    @property
    def blocks(self) -> tuple[int, int]:
        """(blocks held, blocks of the file): what a stopped download had, resumed blocks included."""
        engine = self._engine
        if engine is not None:
            return engine.blocks_have, engine.total_blocks
        return 0, -(-self.info.file_size // self.settings.block_size)

    async def run(self) -> SinkResult:
        """Download until complete; the sink's digest and size. DeviceFailure when the download gives up."""
        loop = self._loop
        if self._source is not None and self.settings.sink == SinkKind.DIGEST:
            self._reference = await self._fetch_reference(self._source)
        self._sink = self._open_sink(self.info, self.stream_version)
        resumed = list(self._sink.received_blocks())
        self.resumed_blocks = len(resumed)
        self._reset_crcs(self.info.file_size)
        if resumed:
            self._rebuild_crcs(resumed)
        started = loop.time()
        engine = self._engine = self._make_machine(started, resumed)
        self._fast = engine if isinstance(engine, DownloadEngine) else None
        engine.start(started)
        self._pump()
        try:
            outcome = await self._done
        finally:
            self._cancel_timer()
            if self._redescribing is not None:
                self._redescribing.cancel()
            self.transfer_s = loop.time() - started
        if isinstance(outcome, DeviceFailure):
            raise outcome
        if isinstance(outcome, Failed):
            raise engine_failure(outcome, self.info.file_id)
        try:
            return self._sink.finish()
        except SinkError as exc:
            raise DeviceFailure(FailureKind.ERROR, f"file {self.info.file_id}: {exc}") from exc

    def _make_machine(self, now: float, resumed: list[int]) -> DownloadMachine:
        """The settings' profile: this project's engine, or a real library's strategy (docs/profiles.md)."""
        profile = self.settings.profile_settings()
        if profile is None:
            return DownloadEngine(
                file_id=self.info.file_id,
                file_size=self.info.file_size,
                stream_version=self.stream_version if self.settings.send_version else None,
                now=now,
                settings=self.settings.engine_settings(self._token, report_sends=self._send_and_report is not None),
                have=resumed or None,
                shared=self._shared_rtt,
            )
        try:
            return make_profile_machine(
                profile, file_id=self.info.file_id, file_size=self.info.file_size, now=now, have=resumed or None
            )
        except ProfileRefused as exc:
            raise DeviceFailure(FailureKind.ERROR, f"file {self.info.file_id}: {exc}", "ProfileRefused") from exc

    def fail(self, failure: DeviceFailure) -> None:
        """End the download now (connection lost, a publish task crashed)."""
        if not self._done.done():
            self._done.set_result(failure)

    def crashed(self, where: str, exc: Exception) -> None:
        """An exception escaped an input handler: end the download with it (a DeviceFailure as it is)."""
        self._crashed = True
        self._cancel_timer()
        if isinstance(exc, DeviceFailure):
            self.fail(exc)
            return
        if not self._done.done():
            log.error("%s: file %d: internal error in %s", self._label, self.info.file_id, where, exc_info=exc)
        self.fail(DeviceFailure(FailureKind.ERROR, f"file {self.info.file_id}: internal: {type(exc).__name__}: {exc}"))

    def commit(self) -> str | None:
        """Move a verified file sink into place; its path (None for other sinks)."""
        sink, self._sink = self._sink, None
        if isinstance(sink, FileSink):
            try:
                return str(sink.commit())
            except SinkError as exc:
                raise DeviceFailure(FailureKind.ERROR, f"cannot store file {self.info.file_id}: {exc}") from exc
        if sink is not None:
            sink.close()
        return None

    def close(self, *, abort: bool) -> None:
        """Release the sink; a resumable file sink keeps its partial unless ``abort``."""
        self._cancel_timer()
        sink, self._sink = self._sink, None
        if sink is None:
            return
        try:
            sink.abort() if abort else sink.close()
        except SinkError as exc:
            log.warning("%s: closing the sink: %s", self._label, exc)

    # -------------------------------------------------------------------------------------------- verification

    async def verify(self, result: SinkResult, source: S3Source | None) -> Verdict:
        """Compare the download with ``--expect-sha256``, the S3 object, or (neither) the described size."""
        s, info = self.settings, self.info
        if s.expect_sha256:
            return compare(
                sha256=result.sha256, size=result.size, expected_sha256=s.expect_sha256, expected_size=info.file_size
            )
        if not s.verify_s3 or source is None:
            ok = result.size == info.file_size
            return Verdict(
                verified=ok,
                expected_sha256=result.sha256,
                expected_size=info.file_size,
                message="" if ok else "size differs from the description",
            )
        try:
            obj = await self._source_object(source, pinned_only=False)
        except SourceError as exc:
            raise DeviceFailure(FailureKind.ERROR, f"cannot verify file {info.file_id} against S3: {exc}") from exc
        assert obj is not None  # pinned_only=False always fetches
        against = functools.partial(
            compare, sha256=result.sha256, size=result.size, expected_sha256=obj.sha256, expected_size=obj.size
        )
        verdict = against()
        if verdict.verified:
            return verdict
        sink = self._sink
        if isinstance(sink, ReferenceSink) and self._reference is not None and obj.sha256 == self._reference[1]:
            return against(first_bad_block=sink.first_mismatch)
        source_crcs = await asyncio.to_thread(source.source_crcs, obj, s.block_size)
        return against(crcs=list(self._crcs), source_crcs=source_crcs)

    # ----------------------------------------------------------------------------------------- network inputs

    @_fails_on_error
    def receive_data(self, payloads: Sequence[bytes]) -> None:
        """Data messages on this download's topic, in their order (a run of them as they arrived together).

        The hot path: a full block of this download in AWS's layout (``DataLayout``) goes straight to the engine
        and the sink, and the clock, the progress and the timer are followed once for the run (the timer only when
        a deadline may have moved earlier: ``deadline_epoch``). Anything else is decoded and goes through
        ``receive_block``, in its place in the order."""
        engine, layout = self._fast, self._layout
        if engine is None:  # a library profile's machine (or none yet): the general path only
            for payload in payloads:
                self._receive_message(payload, self._loop.time())
            return
        now = self._loop.time()  # one reading for the run's hot blocks
        stored = 0
        for payload in payloads:
            fields = layout.full_block(payload)
            if fields is None:
                self._receive_message(payload, now)
                # The general path carries out the engine's actions, and a request reported sent there gives the
                # engine a later reading: the engine refuses time going backwards, so read the clock again.
                now = self._loop.time()
                continue
            index, data = fields
            if engine.receive_data(index, data, now) and self._store(index, data, now):
                stored += len(data)
        if stored:
            self._on_block(now, stored)
        if engine.has_actions or engine.deadline_epoch != self._armed_epoch:
            self._pump()

    def _receive_message(self, payload: bytes, now: float) -> None:
        try:
            block = decode_data_block(payload, self.settings.format)
        except RemoteProtocolError as exc:
            log.debug("%s: bad data message: %s", self._label, exc)
            return
        self._receive_block(block, now)

    @_fails_on_error
    def receive_block(self, block: DataBlock) -> None:
        self._receive_block(block, self._loop.time())

    def _receive_block(self, block: DataBlock, now: float) -> None:
        engine = self._engine
        if engine is not None:
            engine.receive_block(block, now)
            self._pump()

    @_fails_on_error
    def receive_rejection(self, rejection: Rejection) -> None:
        engine = self._engine
        if engine is not None:
            engine.receive_rejection(rejection, self._loop.time())
            self._pump()

    @_fails_on_error
    def link_resumed(self) -> None:
        """The connection came back after a drop: the requests in flight were lost, send them again now."""
        engine = self._engine
        if engine is not None:
            engine.link_resumed(self._loop.time())
            self._pump()

    @_fails_on_error
    def _request_sent(self, seq: int) -> None:
        engine = self._engine
        if engine is not None and not self._done.done():
            engine.request_sent(seq, self._loop.time())
            self._pump()

    # ------------------------------------------------------------------------------------------ engine actions

    def _pump(self) -> None:
        """Carry out the engine's actions, then follow its timer."""
        engine = self._engine
        if engine is None:
            return
        for action in engine.next_actions():
            if isinstance(action, WriteBlock):
                self._write(action)
            elif isinstance(action, SendRequest):
                if self._send_and_report is not None:
                    self._send_and_report(action.request, functools.partial(self._request_sent, action.seq))
                else:
                    self._send(action.request)
            elif isinstance(action, DiscardBlocks):
                self._discard(action)
            elif isinstance(action, Redescribe):
                if self._redescribing is None or self._redescribing.done():
                    self._redescribing = self._loop.create_task(self._redescribe())
            elif isinstance(action, Complete | Failed) and not self._done.done():
                self._done.set_result(action)
        if not self._done.done():
            if self._fast is not None:
                self._armed_epoch = self._fast.deadline_epoch
            self._arm_timer(engine.get_timer())

    def _write(self, action: WriteBlock) -> None:
        now = self._loop.time()
        if self._store(action.index, action.payload, now):
            self._on_block(now, len(action.payload))

    def _store(self, index: int, data: bytes, now: float) -> bool:
        """Write a new block to the sink; False when it failed (the download then fails)."""
        sink = self._sink
        assert sink is not None
        offset = index * self.settings.block_size  # the sinks' block size is the settings'
        try:
            if isinstance(sink, FileSink):
                sink.write(index, offset, data, now)
            else:
                sink.write(index, offset, data)
        except SinkError as exc:
            self.fail(DeviceFailure(FailureKind.ERROR, f"cannot store file {self.info.file_id}: {exc}"))
            return False
        if not isinstance(sink, ReferenceSink):  # it names the first bad block itself
            self._crcs[index] = zlib.crc32(data)
        return True

    def _discard(self, action: DiscardBlocks) -> None:
        log.info("%s: discarding the blocks of file %d: %s", self._label, self.info.file_id, action.reason)
        self.close(abort=True)
        self.info = FileInfo(file_id=self.info.file_id, file_size=action.file_size)
        try:
            self._reference = None  # the stream changed: its file may no longer be the object fetched
            self._sink = self._open_sink(self.info, self.stream_version)
        except DeviceFailure as failure:
            self.fail(failure)
            return
        self._reset_crcs(action.file_size)

    async def _redescribe(self) -> None:
        try:
            await self._redescribe_and_restart()
        except Exception as exc:  # the task's exception would otherwise never be seen
            self.crashed("_redescribe", exc)

    async def _redescribe_and_restart(self) -> None:
        description = await self._redescribe_call()
        engine = self._engine
        if engine is None or engine.state.terminal:
            return
        fresh = description.file(self.info.file_id)
        now = self._loop.time()
        if fresh is None:
            self.fail(
                DeviceFailure(FailureKind.ERROR, f"file {self.info.file_id} is no longer in stream {self.stream_id}")
            )
            return
        self.stream_version = description.stream_version
        engine.restart(fresh.file_size, description.stream_version if self.settings.send_version else None, now)
        self._pump()

    # ------------------------------------------------------------------------------------------------- timer

    def _arm_timer(self, deadline: float | None) -> None:
        if deadline is None:
            self._cancel_timer()
            return
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return  # fires earlier or on time; _on_timer re-arms
            timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @_fails_on_error
    def _on_timer(self) -> None:
        self._timer = None
        engine = self._engine
        if engine is None or engine.state.terminal:
            return
        deadline = engine.get_timer()
        now = self._loop.time()
        if deadline is not None and deadline <= now:
            engine.handle_timer(now)
        self._pump()

    # ------------------------------------------------------------------------------------------------- sinks

    def _open_sink(self, info: FileInfo, version: int) -> BlockSink:
        s = self.settings
        try:
            if s.sink == SinkKind.FILE:
                key = None
                if s.state_dir is not None:
                    key = ResumeKey(stream_id=self.stream_id, file_id=info.file_id, stream_version=version)
                return FileSink(self.target, info.file_size, s.block_size, state_dir=s.state_dir, resume_key=key)
            if s.sink == SinkKind.MEMORY:
                return MemorySink(info.file_size, s.block_size)
            reference = self._reference
            if reference is not None and len(reference[0]) == info.file_size:
                return ReferenceSink(reference[0], reference[1], s.block_size)
            return DigestSink(info.file_size, s.block_size)
        except SinkError as exc:
            raise DeviceFailure(FailureKind.ERROR, f"cannot store file {info.file_id}: {exc}") from exc

    async def _fetch_reference(self, source: S3Source) -> tuple[bytes, str] | None:
        """The S3 object of this file (fetched once per process, shared by a fleet's devices); None when the stream
        does not pin the object's version (the object may change while the download runs: it is fetched after it,
        as before), when it cannot be read now (``verify`` reports that) or is not the described size. A digest
        sink then hashes the blocks instead."""
        try:
            obj = await self._source_object(source, pinned_only=True)
        except SourceError as exc:
            log.debug("%s: no reference for file %d before the download: %s", self._label, self.info.file_id, exc)
            return None
        return (obj.data, obj.sha256) if obj is not None and obj.size == self.info.file_size else None

    async def _source_object(self, source: S3Source, *, pinned_only: bool) -> SourceObject | None:
        """This file's S3 object: from the source's cache without a thread hop (a fleet's devices after the first),
        else located and fetched in threads (boto3 blocks). ``pinned_only``: None, without fetching, for an object
        the stream does not pin to a version. Raises SourceError."""
        obj = source.fetched(self.stream_id, self.info.file_id)
        if obj is None:
            location = await asyncio.to_thread(source.locate, self.stream_id, self.info.file_id)
            if pinned_only and location.version is None:
                return None
            return await asyncio.to_thread(source.fetch, location)
        return None if pinned_only and obj.location.version is None else obj

    def _reset_crcs(self, file_size: int) -> None:
        self._crcs = array("I", bytes(4 * (-(-file_size // self.settings.block_size))))

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


def engine_failure(failed: Failed, file_id: int) -> DeviceFailure:
    """The engine's Failed as a DeviceFailure (its message already names the code and what to do)."""
    message = f"file {file_id}: {failed.message}"
    if failed.reason is FailureReason.REJECTED:
        return DeviceFailure(FailureKind.REJECTED, message, failed.code)
    if failed.reason in (FailureReason.TIMEOUT, FailureReason.THROTTLED, FailureReason.VERSION_MISMATCH):
        # A library profile's momentum abort names itself ("timeout:MomentumAbort"), as the library logs it.
        detail = failed.code if failed.code == "MomentumAbort" else failed.reason.value
        return DeviceFailure(FailureKind.TIMEOUT, message, detail)
    return DeviceFailure(FailureKind.CANCELLED, message)
