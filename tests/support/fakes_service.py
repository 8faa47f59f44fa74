"""An in-memory stream service and a lossy link with a virtual clock, to drive the download engine in tests.

``FakeStreamService`` answers GetStream requests per docs/protocol.md (check order, 128 KiB and ``n`` caps,
lowest blocks first, the range rules). ``LinkSimulation`` plays the device around one ``DownloadEngine``:
it carries the engine's requests to the service and the answers back through a priority queue ordered by
virtual time, with faults (drops, duplicates, jitter that reorders, reordering inside one answer as local_iot
does it, stalls, garbage blocks, throttling, stream updates, fatal rejections, foreign rejections, outages
followed by ``link_resumed``, client-side send pacing reported with ``request_sent``), reassembles the file from
``WriteBlock`` actions and records every protocol violation it sees. It is a test model, not the emulator
(``local_iot`` is).
At the end: small helpers for driving an engine by hand in unit tests.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from device_sim.engine.machine import (
    Complete,
    DiscardBlocks,
    DownloadEngine,
    EngineSettings,
    EngineState,
    EngineStats,
    Failed,
    Redescribe,
    SendRequest,
    WriteBlock,
)
from device_sim.protocol.bitmap import decode_bitmap
from device_sim.protocol.errors import OUT_OF_RANGE_MESSAGE, ErrorCode
from device_sim.protocol.limits import (
    MAX_BITMAP_BYTES,
    MAX_BLOCK_COUNT,
    MAX_BLOCK_SIZE,
    MAX_CLIENT_TOKEN_BYTES,
    MAX_OFFSET,
    MIN_BLOCK_SIZE,
    block_count,
    block_length,
    max_blocks_per_request,
)
from device_sim.protocol.messages import DataBlock, FileInfo, GetStreamRequest, Rejection, StreamDescription

Answer = list[DataBlock] | Rejection


class FakeStreamService:
    """The stream service's answer logic for one stream, in memory."""

    def __init__(self, files: Mapping[int, bytes], *, stream_version: int = 1) -> None:
        self.files = dict(files)
        self.stream_version = stream_version
        self.history: dict[int, dict[int, bytes]] = {stream_version: dict(files)}  # version -> files

    def update_file(self, file_id: int, content: bytes) -> None:
        """``update_stream``: new content, version + 1."""
        self.files[file_id] = content
        self.stream_version += 1
        self.history[self.stream_version] = dict(self.files)

    def describe(self, client_token: str | None = None) -> StreamDescription:
        return StreamDescription(
            client_token=client_token,
            stream_version=self.stream_version,
            files=tuple(FileInfo(file_id=f, file_size=len(c)) for f, c in sorted(self.files.items())),
        )

    def answer(self, request: GetStreamRequest) -> Answer:
        """The data blocks a request selects, or the rejection the service answers."""
        token = request.client_token
        if token is not None and len(token.encode()) > MAX_CLIENT_TOKEN_BYTES:
            return Rejection(code=ErrorCode.INVALID_REQUEST, message="client token too long")

        def reject(code: ErrorCode, message: str) -> Rejection:
            return Rejection(client_token=token, code=code, message=message)

        size = request.block_size
        if not MIN_BLOCK_SIZE <= size <= MAX_BLOCK_SIZE:
            return reject(ErrorCode.BLOCK_SIZE_OUT_OF_BOUNDS, f"block size {size}")
        if not 0 <= request.offset <= MAX_OFFSET:
            return reject(ErrorCode.OFFSET_OUT_OF_BOUNDS, f"offset {request.offset}")
        n = request.number_of_blocks
        if n is not None and n < 1:
            return reject(ErrorCode.INVALID_REQUEST, "n must be at least 1")
        if n is not None and n > MAX_BLOCK_COUNT:
            return reject(ErrorCode.BLOCK_COUNT_LIMIT_EXCEEDED, f"n = {n}")
        if request.bitmap is not None and len(request.bitmap) >= MAX_BITMAP_BYTES:
            return reject(ErrorCode.BLOCK_BITMAP_LIMIT_EXCEEDED, f"bitmap of {len(request.bitmap)} bytes")
        if request.stream_version is not None and request.stream_version != self.stream_version:
            return reject(ErrorCode.VERSION_MISMATCH, f"stream version is {self.stream_version}")
        content = self.files.get(request.file_id)
        if content is None:
            return reject(ErrorCode.RESOURCE_NOT_FOUND, f"no file {request.file_id}")
        total = block_count(len(content), size)
        # Select first, then range-check (docs/protocol.md 4): only the blocks within the n and 128 KiB caps count.
        if request.offset >= total:
            return reject(ErrorCode.INVALID_REQUEST, OUT_OF_RANGE_MESSAGE)
        if request.bitmap is None:
            count = n if n is not None else max_blocks_per_request(size)
            if request.offset + count > total:
                return reject(ErrorCode.INVALID_REQUEST, OUT_OF_RANGE_MESSAGE)
            selected = list(range(request.offset, request.offset + count))
        else:
            selected = decode_bitmap(request.bitmap, request.offset)
        cap = min(n if n is not None else len(selected), max_blocks_per_request(size))
        selected = selected[:cap]
        if not selected or selected[-1] >= total:
            return reject(ErrorCode.INVALID_REQUEST, OUT_OF_RANGE_MESSAGE)
        return [
            DataBlock(
                client_token=token,
                file_id=request.file_id,
                block_index=i,
                block_length=block_length(len(content), size, i),
                payload=content[i * size : i * size + block_length(len(content), size, i)],
            )
            for i in selected
        ]


@dataclass(frozen=True, kw_only=True)
class Faults:
    """Fault probabilities (per message unless said otherwise) and delivery timing of a LinkSimulation."""

    drop: float = 0.0  # any message, either way (requests, blocks, rejections, descriptions)
    drop_at_source: bool = False  # lost blocks never reach the link (else they are lost after crossing it)
    duplicate: float = 0.0  # a block is delivered twice
    jitter: float = 0.0  # extra uniform delay (seconds) per message: reorders (ignored when fifo)
    garbage: float = 0.0  # a bad block (wrong file, wrong length, bad index) is injected next to a real one
    throttle: float = 0.0  # a request is answered InternalError
    update: float = 0.0  # the stream is updated (new version and content) just before serving a request
    max_updates: int = 3
    fatal: float = 0.0  # a request is answered ETagMismatch
    foreign: float = 0.0  # an extra rejection carrying another client's token (only when the engine sends one)
    reorder: float = 0.0  # a block moves behind a random later block of its answer (local_iot's reorder)
    late: float = 0.0  # a block comes late_s later, overtaken by the messages behind it (local_iot's delay fault)
    late_s: float = 0.15
    stall: float = 0.0  # a message waits stall_s longer, and (FIFO) everything behind it too: a hiccup
    stall_s: float = 0.0
    outage: float = 0.0  # per request: the link goes down, everything on the way is lost, link_resumed follows
    outage_s: float = 0.5
    send_gap: float = 0.0  # client-side pacing: requests leave one per send_gap (reported with settings.report_sends)
    latency: float = 0.025  # one way, seconds
    per_block: float = 0.0001  # transmission time of one block on the device's link (one at a time), seconds

    @property
    def fifo(self) -> bool:
        # Blocks carry no stream version: only the link's order separates old-version blocks (published
        # before the VersionMismatch) from new ones, as on one MQTT connection. Updates therefore need FIFO.
        return self.update > 0 or self.jitter == 0


@dataclass(kw_only=True)
class Outcome:
    state: EngineState
    data: bytes  # reassembled from WriteBlock actions
    expected: bytes  # the file's content in the stream version the engine ended on
    failure: Failed | None
    stats: EngineStats
    elapsed: float  # virtual seconds
    steps: int
    requests: list[GetStreamRequest]
    violations: list[str] = field(default_factory=list)


class LinkSimulation:
    """One device downloading one file over an unreliable in-memory link, in virtual time."""

    def __init__(
        self,
        service: FakeStreamService,
        *,
        file_id: int,
        settings: EngineSettings,
        faults: Faults,
        rng: random.Random,
        have: set[int] | None = None,
        fast_share: float = 0.5,
    ) -> None:
        """``fast_share``: the share of this file's data blocks fed through ``receive_data`` (the device's hot path,
        the block written at once when it returns True) instead of ``receive_block``; chosen by a generator of its
        own, so the link's schedule does not change with it."""
        self.service = service
        self._fast_share = fast_share
        self._paths = random.Random(len(service.files[file_id]) * 7919 + settings.block_size)
        self.file_id = file_id
        self.settings = settings
        self.faults = faults
        self.rng = rng
        self.now = 0.0
        self._queue: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self._last_delivery = 0.0
        self._next_send = 0.0
        self._link_free = 0.0
        self._outages = 0
        self._down_until = 0.0
        self.requests: list[GetStreamRequest] = []
        self.violations: list[str] = []
        content = service.files[file_id]
        self.data = bytearray(content)  # resume: the blocks in `have` are already on disk
        self.written: set[int] = set(have or ())
        for i in range(block_count(len(content), settings.block_size)):
            if i not in self.written:
                self._blank(i)
        # block -> the engine's "something expired" counter when the block was last requested
        self._asked_at: dict[int, int] = {}
        self.engine = DownloadEngine(
            file_id=file_id,
            file_size=len(content),
            stream_version=service.stream_version,
            settings=settings,
            now=0.0,
            have=have,
        )

    # ------------------------------------------------------------------------------------------- driving

    def run(self, *, max_steps: int) -> Outcome:
        engine = self.engine
        engine.start(self.now)
        self._carry_out()
        steps = 0
        armed, armed_epoch = 0.0, -1
        while not engine.state.terminal:
            steps += 1
            if steps > max_steps:
                raise AssertionError(f"no end after {max_steps} steps: {engine.state} {engine.stats}")
            timer = engine.get_timer()
            if timer is None:
                raise AssertionError(f"no timer in non-terminal state {engine.state}")
            if engine.deadline_epoch == armed_epoch and timer < armed - 1e-9:
                self.violations.append(
                    f"the deadline moved earlier ({armed} -> {timer}) in deadline_epoch {armed_epoch}"
                )
            armed, armed_epoch = timer, engine.deadline_epoch
            if self._queue and self._queue[0][0] <= timer:
                when, _, kind, item = heapq.heappop(self._queue)
                self.now = max(self.now, when)
                self._deliver(kind, item)
            else:
                self.now = max(self.now, timer)
                engine.handle_timer(self.now)
            self._carry_out()
        elapsed = self.now
        version = engine.stream_version
        expected = self.service.history[version if version is not None else self.service.stream_version]
        # Late traffic after the end is accepted and changes nothing.
        while self._queue:
            when, _, kind, item = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            if kind != "description":
                self._deliver(kind, item)
            if engine.next_actions():
                self.violations.append(f"actions after the end ({kind})")
        return Outcome(
            state=engine.state,
            data=bytes(self.data),
            expected=expected[self.file_id],
            failure=engine.failure,
            stats=engine.stats,
            elapsed=elapsed,
            steps=steps,
            requests=self.requests,
            violations=self.violations,
        )

    def _deliver(self, kind: str, item: Any) -> None:
        engine = self.engine
        if kind == "request":
            self._serve(item)
        elif kind == "sent":
            seq, request = item
            if self.settings.report_sends:
                engine.request_sent(seq, self.now)
            self._send("request", request, self.faults.latency)
        elif kind == "resumed":
            engine.link_resumed(self.now)
        elif kind == "block":
            block: DataBlock = item
            fits = block.file_id == self.file_id and block.block_length == len(block.payload)
            if fits and self._paths.random() < self._fast_share:
                if engine.receive_data(block.block_index, block.payload, self.now):
                    index = block.block_index
                    self._write(
                        WriteBlock(index=index, offset_bytes=index * self.settings.block_size, payload=block.payload)
                    )
            else:
                engine.receive_block(block, self.now)
        elif kind == "rejection":
            engine.receive_rejection(item, self.now)
        elif kind == "description" and engine.state is EngineState.NEEDS_DESCRIBE:
            info: StreamDescription = item
            entry = info.file(self.file_id)
            assert entry is not None
            engine.restart(entry.file_size, info.stream_version, self.now)

    def _carry_out(self) -> None:
        ended = False
        for action in self.engine.next_actions():
            if ended:
                self.violations.append(f"{action} after the end")
            ended = isinstance(action, Complete | Failed)
            if isinstance(action, SendRequest):
                self._check_request(action.request)
                self.requests.append(action.request)
                if self.faults.send_gap or self.settings.report_sends:  # paced on the device; reported when it leaves
                    self._next_send = max(self.now, self._next_send) + self.faults.send_gap
                    heapq.heappush(
                        self._queue, (self._next_send, next(self._seq), "sent", (action.seq, action.request))
                    )
                else:
                    self._send("request", action.request, self.faults.latency)
            elif isinstance(action, WriteBlock):
                self._write(action)
            elif isinstance(action, DiscardBlocks):
                self.data = bytearray(b"\xee" * action.file_size)
                self.written.clear()
                self._asked_at.clear()
            elif isinstance(action, Redescribe):
                self._send("description", self.service.describe(), 2 * self.faults.latency)

    # -------------------------------------------------------------------------------------------- service

    def _serve(self, request: GetStreamRequest) -> None:
        f, rng = self.faults, self.rng
        token = request.client_token
        if self.now < self._down_until:
            return  # the connection is down: the request never reached the service
        if f.outage and self._outages < 3 and not self.engine.state.terminal and rng.random() < f.outage:
            # The connection drops: whatever is on its way is lost, nothing passes until it is back (link_resumed).
            self._outages += 1
            self._down_until = self.now + f.outage_s
            self._queue = [entry for entry in self._queue if entry[2] == "sent"]
            heapq.heapify(self._queue)
            # The blocks that were waiting for the device's link went with it: later answers wait for none of them.
            self._link_free = self._last_delivery = self.now
            heapq.heappush(self._queue, (self._down_until, next(self._seq), "resumed", None))
            return
        updates = self.service.stream_version - min(self.service.history)
        if f.update and updates < f.max_updates and not self.engine.state.terminal and rng.random() < f.update:
            old = self.service.files[self.file_id]
            size = max(0, len(old) + rng.randint(-2 * self.settings.block_size, 2 * self.settings.block_size))
            self.service.update_file(self.file_id, rng.randbytes(size))
        if f.foreign and self.settings.client_token is not None and rng.random() < f.foreign:
            self._send("rejection", Rejection(client_token="someone-else", code="ETagMismatch"), f.latency)
        answer: Answer
        if f.throttle and rng.random() < f.throttle:
            answer = Rejection(client_token=token, code=ErrorCode.INTERNAL_ERROR, message="throttled (fault)")
        elif f.fatal and rng.random() < f.fatal:
            answer = Rejection(client_token=token, code=ErrorCode.ETAG_MISMATCH, message="object changed (fault)")
        else:
            answer = self.service.answer(request)
        if isinstance(answer, Rejection):
            if answer.code not in (ErrorCode.VERSION_MISMATCH, ErrorCode.INTERNAL_ERROR, ErrorCode.ETAG_MISMATCH):
                self.violations.append(f"the service rejected {request}: {answer}")
            self._send("rejection", answer, f.latency)
            return
        order = list(range(len(answer)))
        if f.reorder:  # as local_iot: a block moves behind a random later block of the same answer
            keys = [float(k) for k in order]
            for k in order[:-1]:
                if rng.random() < f.reorder:
                    keys[k] = rng.uniform(k + 1, len(answer))
            order.sort(key=lambda k: keys[k])
        for k in order:
            block = answer[k]
            if f.drop_at_source and f.drop and rng.random() < f.drop:
                continue  # discarded by the service (as AWS discards over quota): takes no time on the link
            delay = self._transmit()
            self._send("block", block, delay)
            if f.duplicate and rng.random() < f.duplicate:
                self._send("block", block, self._transmit())
            if f.garbage and rng.random() < f.garbage:
                self._send("block", self._garbage(block), delay)

    def _transmit(self) -> float:
        """The delay of the next block to the device: the link carries one block per ``per_block``, in turn
        (so an answer waits behind the answers before it, as under AWS's byte pacing), then ``latency``."""
        self._link_free = max(self.now, self._link_free) + self.faults.per_block
        return self._link_free - self.now + self.faults.latency

    def _garbage(self, block: DataBlock) -> DataBlock:
        total = block_count(len(self.service.files[self.file_id]), self.settings.block_size)
        kind = self.rng.randrange(5)
        if kind == 0:
            return DataBlock(file_id=(block.file_id + 1) % 256, block_index=block.block_index,
                             block_length=block.block_length, payload=block.payload)  # fmt: skip
        if kind == 1:
            return DataBlock(file_id=block.file_id, block_index=total + self.rng.randrange(3),
                             block_length=block.block_length, payload=block.payload)  # fmt: skip
        if kind == 2:
            return DataBlock(file_id=block.file_id, block_index=-1 - self.rng.randrange(3),
                             block_length=block.block_length, payload=block.payload)  # fmt: skip
        if kind == 3:  # consistent but wrong length (e.g. a short block that is not the last)
            payload = block.payload[:-1] if block.payload else b"x"
            return DataBlock(file_id=block.file_id, block_index=block.block_index,
                             block_length=len(payload), payload=payload)  # fmt: skip
        return DataBlock(file_id=block.file_id, block_index=block.block_index,
                         block_length=block.block_length, payload=block.payload + b"!")  # fmt: skip

    def _send(self, kind: str, item: Any, delay: float) -> None:
        f = self.faults
        dropped = f.drop and not (kind == "block" and f.drop_at_source) and self.rng.random() < f.drop
        if dropped or self.now < self._down_until:
            return
        when = self.now + delay
        if kind == "block" and f.late and not f.update and self.rng.random() < f.late:  # updates need FIFO
            heapq.heappush(self._queue, (max(when, self._last_delivery) + f.late_s, next(self._seq), kind, item))
            return
        if f.stall and self.rng.random() < f.stall:
            when += f.stall_s
        if f.fifo:
            when = max(when, self._last_delivery)
            self._last_delivery = when
        else:
            when += self.rng.uniform(0, f.jitter)
        heapq.heappush(self._queue, (when, next(self._seq), kind, item))

    # ------------------------------------------------------------------------------------------- checking

    def _check_request(self, request: GetStreamRequest) -> None:
        engine, s = self.engine, self.settings
        bad = self.violations.append
        total = engine.total_blocks
        if request.file_id != self.file_id or request.block_size != s.block_size:
            bad(f"wrong file id or block size in {request}")
        if request.client_token != s.client_token:
            bad(f"wrong client token in {request}")
        if request.stream_version != (engine.stream_version if s.send_version else None):
            bad(f"wrong stream version in {request}")
        if request.bitmap is None or request.number_of_blocks is None:
            bad(f"request without n and b: {request}")
            return
        if not 0 <= request.offset <= MAX_OFFSET or len(request.bitmap) >= MAX_BITMAP_BYTES:
            bad(f"offset or bitmap out of bounds in {request}")
        blocks = decode_bitmap(request.bitmap, request.offset)
        if not blocks or blocks[0] != request.offset or blocks[-1] >= total:
            bad(f"bitmap selects nothing, does not start at o, or reaches past block {total - 1}: {request}")
        if request.bitmap and request.bitmap[-1] == 0:
            bad(f"bitmap with trailing zero bytes: {request}")
        if not 1 <= request.number_of_blocks <= s.window or request.number_of_blocks != len(blocks):
            bad(f"n = {request.number_of_blocks} for {len(blocks)} blocks (window {s.window})")
        if len(blocks) * s.block_size > 131072:
            bad(f"request for more than 128 KiB: {request}")
        stats = engine.stats
        expiries = (
            stats.timeouts + stats.fast_retries + stats.resends + stats.backoffs + stats.redescribes + stats.restarts
        )
        for b in blocks:
            if b in self.written:
                bad(f"block {b} requested although it was written")
            if self._asked_at.get(b) == expiries:
                bad(f"block {b} requested twice with no timeout, back-off or restart in between")
            self._asked_at[b] = expiries

    def _write(self, action: WriteBlock) -> None:
        size = self.settings.block_size
        i = action.index
        if i in self.written:
            self.violations.append(f"block {i} written twice")
        expected = block_length(self.engine.file_size, size, i)
        if action.offset_bytes != i * size or len(action.payload) != expected:
            self.violations.append(f"bad WriteBlock {i}: offset {action.offset_bytes}, {len(action.payload)} bytes")
        self.written.add(i)
        self.data[action.offset_bytes : action.offset_bytes + len(action.payload)] = action.payload

    def _blank(self, index: int) -> None:
        """Scribble over a block not on disk yet, so a block the engine never wrote shows in the result."""
        size = self.settings.block_size
        length = block_length(len(self.data), size, index)
        self.data[index * size : index * size + length] = b"\xee" * length


# ------------------------------------------------------------------------------ driving an engine by hand

BS = 256  # block size of the hand-driven engines (file id 2)


def content_of(size: int) -> bytes:
    return bytes((i * 7 + i // 256) % 251 for i in range(size))


def make(size: int, *, now: float = 0.0, version: int | None = 1, have: object = None, **kw: object) -> DownloadEngine:
    """An engine for the unit tests' exact timer arithmetic: no pacing allowance unless ``answer_rate`` is given."""
    kw.setdefault("answer_rate", None)
    settings = EngineSettings(block_size=BS, **kw)  # type: ignore[arg-type]
    return DownloadEngine(file_id=2, file_size=size, stream_version=version, now=now, settings=settings, have=have)  # type: ignore[arg-type]


def blk(content: bytes, index: int, **changes: object) -> DataBlock:
    payload = content[index * BS : (index + 1) * BS]
    block = DataBlock(file_id=2, block_index=index, block_length=len(payload), payload=payload)
    return dataclasses.replace(block, **changes)  # type: ignore[arg-type]


def requests(engine: DownloadEngine) -> list[GetStreamRequest]:
    return [a.request for a in engine.next_actions() if isinstance(a, SendRequest)]


def asked(request: GetStreamRequest) -> list[int]:
    assert request.bitmap is not None
    return decode_bitmap(request.bitmap, request.offset)
