"""A virtual-clock link between one profile machine and ``FakeStreamService``, with the faults that matter to a
library profile: lost blocks (chosen by index or by chance), duplicates, reordering inside an answer, and AWS's
per-connection publish quota (a token bucket; answers over it are discarded, as AWS does).

Requests travel as the bytes the library publishes: encoded with the device codec, decoded with the service's
(``decode_request``), answered by ``FakeStreamService``. Blocks go out one per ``per_block`` (the link carries one at a
time), then ``latency``.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from device_sim.engine.profiles import LibraryMachine
from device_sim.engine.types import Complete, EngineState, EngineStats, Failed, SendRequest, WriteBlock
from device_sim.protocol import Format, Operation, decode_request, encode_request
from device_sim.protocol.messages import DataBlock, GetStreamRequest, Rejection
from tests.support.fakes_service import FakeStreamService


@dataclass
class LinkRun:
    state: EngineState
    data: bytes
    stats: EngineStats
    elapsed: float  # virtual seconds from start to the end
    failure: Failed | None
    wire: list[bytes]  # every request as published
    sent_at: list[float]  # when each request was published
    decoded: list[GetStreamRequest]
    writes: list[int] = field(default_factory=list)  # block indices in the order written


class ProfileLink:
    def __init__(
        self,
        service: FakeStreamService,
        machine: LibraryMachine,
        *,
        fmt: Format = Format.CBOR,
        latency: float = 0.02,
        per_block: float = 0.0001,
        lose: set[tuple[int, int]] | None = None,  # (block index, nth time it is sent, from 1): lost
        drop: float = 0.0,
        duplicate: float = 0.0,
        reorder: bool = False,
        quota_per_s: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.service = service
        self.machine = machine
        self.fmt = fmt
        self.latency = latency
        self.per_block = per_block
        self.lose = lose or set()
        self.drop = drop
        self.duplicate = duplicate
        self.reorder = reorder
        self.quota_per_s = quota_per_s
        self._tokens = quota_per_s or 0.0
        self._refilled = 0.0
        self.rng = rng or random.Random(1)
        self.now = 0.0
        self._queue: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self._link_free = 0.0
        self._sent_count: dict[int, int] = {}
        content = service.files[machine.file_id]
        self.data = bytearray(b"\xee" * len(content))
        self.run_info = LinkRun(
            state=EngineState.IDLE, data=b"", stats=EngineStats(), elapsed=0.0, failure=None, wire=[], sent_at=[],
            decoded=[],
        )  # fmt: skip
        self.discarded = 0  # answers over the quota

    def run(self, *, max_steps: int = 100_000, until: float | None = None) -> LinkRun:
        m = self.machine
        m.start(self.now)
        self._carry_out()
        steps = 0
        while not m.state.terminal:
            steps += 1
            assert steps <= max_steps, f"no end after {max_steps} steps: {m.state} {m.stats}"
            timer = m.get_timer()
            assert timer is not None, f"no timer in {m.state}"
            if until is not None and min(timer, self._queue[0][0] if self._queue else timer) > until:
                break
            if self._queue and self._queue[0][0] <= timer:
                when, _, kind, item = heapq.heappop(self._queue)
                self.now = max(self.now, when)
                if kind == "request":
                    self._serve(item)
                elif kind == "block":
                    m.receive_block(item, self.now)
                else:
                    m.receive_rejection(item, self.now)
            else:
                self.now = max(self.now, timer)
                m.handle_timer(self.now)
            self._carry_out()
        info = self.run_info
        info.state, info.data, info.stats = m.state, bytes(self.data), m.stats
        info.elapsed, info.failure = self.now, m.failure
        return info

    def _carry_out(self) -> None:
        for action in self.machine.next_actions():
            if isinstance(action, SendRequest):
                payload = encode_request(action.request, self.fmt)
                self.run_info.wire.append(payload)
                self.run_info.sent_at.append(self.now)
                decoded = decode_request(Operation.GET, payload, self.fmt)
                assert isinstance(decoded, GetStreamRequest)
                self.run_info.decoded.append(decoded)
                self._push(self.now + self.latency, "request", decoded)
            elif isinstance(action, WriteBlock):
                self.run_info.writes.append(action.index)
                self.data[action.offset_bytes : action.offset_bytes + len(action.payload)] = action.payload
            else:
                assert isinstance(action, Complete | Failed), action

    def _push(self, when: float, kind: str, item: Any) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), kind, item))

    def _admit(self) -> bool:
        if self.quota_per_s is None:
            return True
        rate = self.quota_per_s
        self._tokens = min(rate, self._tokens + (self.now - self._refilled) * rate)
        self._refilled = self.now
        if self._tokens < 1:
            self.discarded += 1
            return False
        self._tokens -= 1
        return True

    def _serve(self, request: GetStreamRequest) -> None:
        answer = self.service.answer(request)
        if isinstance(answer, Rejection):
            if self._admit():
                self._push(self.now + self.latency, "rejection", answer)
            return
        blocks: list[DataBlock] = list(answer)
        if self.reorder and len(blocks) > 2:
            blocks.append(blocks.pop(0))  # the first block of the answer comes last
        for block in blocks:
            if not self._admit():
                continue
            n = self._sent_count[block.block_index] = self._sent_count.get(block.block_index, 0) + 1
            if (block.block_index, n) in self.lose or (self.drop and self.rng.random() < self.drop):
                continue
            self._link_free = max(self.now, self._link_free) + self.per_block
            self._push(self._link_free + self.latency, "block", block)
            if self.duplicate and self.rng.random() < self.duplicate:
                self._link_free += self.per_block
                self._push(self._link_free + self.latency, "block", block)
