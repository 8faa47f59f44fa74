"""Device profiles: the request strategies of real device libraries as sans-IO machines (docs/profiles.md).

How this works
--------------
A profile machine has the ``DownloadEngine``'s interface (``DownloadMachine``: the same inputs, the same actions,
``EngineStats``), so the device drives it exactly like the engine, on the same transport, sinks and verification.
``LibraryMachine`` holds what the three libraries share, taken from their sources: one request at a time; a
request asks for ``n`` blocks and sets a counter of blocks to receive; every block that passes the library's
checks (new or duplicate) counts one down, and the block that empties it starts the next request. A fixed request
wait (one-shot timer, restarted at every request) re-requests when the answer never completes; every request adds
one to the *momentum*, every new block resets it, and a request due when the momentum has reached its limit aborts
the download instead. Duplicates are dropped; a block with a wrong index or length either fails the download (the
OTA agent and rustot reject the image) or is ignored. Rejections are counted and otherwise ignored: none of the
libraries reads the ``rejected`` topic, so a rejected request ends in request waits, as on a real device.

Device-side work per block (``block_process``: decode, flash write) is a serial queue: a block is handled when the
one before it is done, and the next request leaves only once the batch's last block has been handled. A request
wait that expires while the device is still busy with blocks that came before it is handled after them (the
library's event queue is first-in, first-out).

What a subclass decides: the request (``_request``: the wire fields and the blocks the service will send for it,
lowest first), whether a block counts towards the batch (``_counts``), and what a new block changes (``_stored``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from device_sim.engine.types import (
    Action,
    Complete,
    EngineInput,
    EngineState,
    EngineStateError,
    EngineStats,
    EngineUsageError,
    Failed,
    FailureReason,
    SendRequest,
    WriteBlock,
)
from device_sim.protocol.bitmap import decode_bitmap
from device_sim.protocol.limits import MAX_FILE_ID, MIN_FILE_ID, block_count, block_length
from device_sim.protocol.messages import DataBlock, GetStreamRequest, Rejection

__all__ = [
    "DownloadMachine",
    "LibraryMachine",
    "PlannedRequest",
    "ProfileKind",
    "ProfileRefused",
    "ProfileSettings",
]


class ProfileKind(StrEnum):
    """Which client a simulated device runs (``--profile``)."""

    DEVICE_SIM = "device-sim"  # this project's engine (device_sim.engine.machine)
    FREERTOS_OTA = "freertos-ota"  # AWS's OTA agent with its library defaults (ota_config_defaults.h)
    FREERTOS_OTA_DEMO = "freertos-ota-demo"  # the same agent with the values of AWS's demo configuration
    MFS = "mfs"  # AWS's MQTT file streams library as its demos drive it
    RUSTOT = "rustot"  # FactbirdHQ/rustot's OTA agent


class ProfileRefused(EngineUsageError):
    """The library cannot take these settings (or this file): the message says why, as the library would."""


class DownloadMachine(Protocol):
    """What a device needs of a download machine: ``DownloadEngine`` and every profile machine have it."""

    @property
    def state(self) -> EngineState: ...
    @property
    def failure(self) -> Failed | None: ...
    @property
    def stats(self) -> EngineStats: ...
    @property
    def total_blocks(self) -> int: ...
    @property
    def blocks_have(self) -> int: ...
    def received_bitmap(self) -> bytes: ...
    def next_actions(self) -> list[Action]: ...
    def get_timer(self) -> float | None: ...
    def start(self, now: float) -> None: ...
    def receive_block(self, block: DataBlock, now: float) -> None: ...
    def receive_rejection(self, rejection: Rejection, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def restart(self, file_size: int, stream_version: int | None, now: float) -> None: ...
    def cancel(self, message: str, now: float) -> None: ...
    def request_sent(self, seq: int, now: float) -> None: ...
    def link_resumed(self, now: float) -> None: ...


# ------------------------------------------------------------------------------------------------- settings

#: The libraries' own defaults: block size, blocks per request, request wait (s), momentum, status frequency.
_DEFAULTS: dict[ProfileKind, tuple[int, int, float, int, int | None]] = {
    # ota_config_defaults.h: otaconfigLOG2_FILE_BLOCK_SIZE 12, otaconfigMAX_NUM_BLOCKS_REQUEST 1,
    # otaconfigFILE_REQUEST_WAIT_MS 10000, otaconfigMAX_NUM_REQUEST_MOMENTUM 32, otaconfigOTA_UPDATE_STATUS_FREQUENCY 64
    ProfileKind.FREERTOS_OTA: (4096, 1, 10.0, 32, 64),
    # AWS's demo ota_config.h: 8 blocks per request, a status update every 25 blocks
    ProfileKind.FREERTOS_OTA_DEMO: (4096, 8, 10.0, 32, 25),
    # mqttFileDownloader_CONFIG_BLOCK_SIZE 4096, one block per request; the wait and the give-up count belong to the
    # application (the library has no timer): 10 s and 32 here, like the OTA agent, until told otherwise
    ProfileKind.MFS: (4096, 1, 10.0, 32, None),
    # rustot Config::default(): block_size 1024, request_wait 5 s, max_request_momentum 3, status_update_frequency
    # 24; 16 blocks per request at most, from a 31-block window
    ProfileKind.RUSTOT: (1024, 16, 5.0, 3, 24),
}

#: otaconfigMAX_BLOCK_BITMAP_SIZE: the OTA agent's bitmap buffer (bytes).
FREERTOS_MAX_BITMAP_BYTES = 128
#: rustot's window: the bits of its 32-bit bitmap it uses.
RUSTOT_WINDOW = 31


@dataclass(frozen=True, kw_only=True, slots=True)
class ProfileSettings:
    """One profile's parameters, each the value of a library constant (docs/profiles.md lists which).

    Build it with ``ProfileSettings.for_profile(kind, ...)``: a None parameter takes the library's default.
    ``ProfileRefused`` says what the library cannot take.
    """

    kind: ProfileKind
    block_size: int
    blocks_per_request: int
    request_wait: float  # seconds
    momentum: int
    block_process: float = 0.0  # seconds of device-side work per block
    status_frequency: int | None = None  # blocks between job progress updates (None: the library sends none)
    json: bool = False  # the MQTT file streams library's JSON requests
    bitmap_max_bytes: int = field(default=FREERTOS_MAX_BITMAP_BYTES)
    #: Blocks the device can hold while it works (otaconfigMAX_NUM_OTA_DATA_BUFFERS): with ``block_process``, a block
    #: that arrives while this many are held (the one being handled included) is dropped. None: no limit.
    data_buffers: int | None = None

    @classmethod
    def for_profile(
        cls,
        kind: ProfileKind | str,
        *,
        block_size: int | None = None,
        blocks_per_request: int | None = None,
        request_wait: float | None = None,
        momentum: int | None = None,
        block_process: float = 0.0,
        status_frequency: int | None = None,
        json: bool = False,
        bitmap_max_bytes: int | None = None,
        data_buffers: int | None = None,
    ) -> ProfileSettings:
        kind = ProfileKind(kind)
        if kind is ProfileKind.DEVICE_SIM:
            raise ProfileRefused("device-sim is the engine, not a library profile", hint="use EngineSettings")
        d_block, d_n, d_wait, d_momentum, d_status = _DEFAULTS[kind]
        return cls(
            kind=kind,
            block_size=d_block if block_size is None else block_size,
            blocks_per_request=d_n if blocks_per_request is None else blocks_per_request,
            request_wait=d_wait if request_wait is None else request_wait,
            momentum=d_momentum if momentum is None else momentum,
            block_process=block_process,
            status_frequency=d_status if status_frequency is None else status_frequency,
            json=json,
            bitmap_max_bytes=FREERTOS_MAX_BITMAP_BYTES if bitmap_max_bytes is None else bitmap_max_bytes,
            data_buffers=data_buffers,
        )

    def __post_init__(self) -> None:
        kind = ProfileKind(self.kind)
        object.__setattr__(self, "kind", kind)
        for name, low in (("block_size", 1), ("blocks_per_request", 1), ("momentum", 1), ("bitmap_max_bytes", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ProfileRefused(f"{name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.request_wait, int | float) and 0 < self.request_wait < float("inf")):
            raise ProfileRefused(f"the request wait must be a positive number of seconds, got {self.request_wait!r}")
        if not (isinstance(self.block_process, int | float) and 0 <= self.block_process < float("inf")):
            raise ProfileRefused(f"the block processing time must be >= 0 seconds, got {self.block_process!r}")
        if self.data_buffers is not None and self.data_buffers < 1:
            raise ProfileRefused(f"the device needs at least 1 data buffer, got {self.data_buffers}")
        if self.status_frequency is not None and self.status_frequency < 1:
            raise ProfileRefused(f"the status frequency must be >= 1 block, got {self.status_frequency}")
        bs, n = self.block_size, self.blocks_per_request
        if kind in (ProfileKind.FREERTOS_OTA, ProfileKind.FREERTOS_OTA_DEMO) and bs & (bs - 1):
            raise ProfileRefused(
                f"the OTA agent's block size is 2^otaconfigLOG2_FILE_BLOCK_SIZE; {bs} is not a power of two",
                hint="use 1KiB, 2KiB, 4KiB, 8KiB ...",
            )
        if kind is ProfileKind.MFS and n != 1:
            raise ProfileRefused(
                f"the MQTT file streams library asks for one block per request (n = 1), not {n}",
                hint="leave --blocks-per-request out",
            )
        if kind is ProfileKind.RUSTOT and n > RUSTOT_WINDOW:
            raise ProfileRefused(f"rustot asks for at most its {RUSTOT_WINDOW}-block window per request, not {n}")
        if self.json and kind is not ProfileKind.MFS:
            raise ProfileRefused(f"{kind.value} sends CBOR requests only", hint="use --format cbor")
        if n * bs > 131072:
            raise ProfileRefused(
                f"{n} blocks of {bs} bytes is {n * bs} bytes per answer; AWS answers at most 131072 bytes and "
                f"rejects the request, which {kind.value} never reads: every request would wait out its "
                f"{self.request_wait:g} s until the momentum abort",
                hint="lower --blocks-per-request or --block-size",
            )

    def check_file(self, file_size: int) -> None:
        """ProfileRefused when the library cannot download a file of this size with these settings."""
        blocks = block_count(file_size, self.block_size)
        if self.kind in (ProfileKind.FREERTOS_OTA, ProfileKind.FREERTOS_OTA_DEMO):
            need = -(-blocks // 8)
            if need > self.bitmap_max_bytes:
                raise ProfileRefused(
                    f"a {file_size}-byte file is {blocks} blocks of {self.block_size} bytes; its bitmap needs "
                    f"{need} bytes, over otaconfigMAX_BLOCK_BITMAP_SIZE {self.bitmap_max_bytes} (the agent refuses "
                    "the job)",
                    hint=f"use blocks of at least {_smallest_power_of_two(file_size, self.bitmap_max_bytes * 8)} bytes",
                )
        if self.kind is ProfileKind.MFS and blocks > 0x10000:
            raise ProfileRefused(f"{blocks} blocks: the MQTT file streams library's offset is 16-bit")

    @property
    def label(self) -> str:
        """E.g. ``freertos-ota n8 wait 10s``."""
        parts = [self.kind.value, f"n{self.blocks_per_request}", f"wait {self.request_wait:g}s"]
        if self.block_process:
            parts.append(f"work {self.block_process * 1000:g}ms")
        return " ".join(parts)


def _smallest_power_of_two(file_size: int, max_blocks: int) -> int:
    size = 256
    while block_count(file_size, size) > max_blocks:
        size *= 2
    return size


# -------------------------------------------------------------------------------------------------- machine


@dataclass(frozen=True, kw_only=True, slots=True)
class PlannedRequest:
    """A request a profile is about to send: its wire form and the blocks the service will answer, lowest first."""

    request: GetStreamRequest
    blocks: tuple[int, ...]
    batch: int  # the count of blocks to receive before the next request (the library's n)


class LibraryMachine:
    """The shared rules of the library profiles (module docstring); subclasses choose the requests."""

    #: A block with a bad index or length fails the download (True: the OTA agent, rustot) or is ignored.
    bad_block_is_fatal = True

    def __init__(
        self,
        *,
        file_id: int,
        file_size: int,
        now: float,
        settings: ProfileSettings,
        have: Iterable[int] | bytes | None = None,
    ) -> None:
        if not isinstance(file_id, int) or not MIN_FILE_ID <= file_id <= MAX_FILE_ID:
            raise EngineUsageError(f"file_id {file_id!r} is not a file id", hint=f"use {MIN_FILE_ID}..{MAX_FILE_ID}")
        if not isinstance(file_size, int) or file_size < 0:
            raise EngineUsageError(f"file_size must be an integer >= 0, got {file_size!r}")
        settings.check_file(file_size)
        self.settings = settings
        self.file_id = file_id
        self.file_size = file_size
        self._total = block_count(file_size, settings.block_size)
        self._have = bytearray(self._total)
        self._have_count = 0
        if have is not None:
            for i in decode_bitmap(bytes(have), 0) if isinstance(have, bytes | bytearray) else have:
                if 0 <= i < self._total and not self._have[i]:
                    self._have[i] = 1
                    self._have_count += 1
        self._state = EngineState.IDLE
        self._now = now
        self._created_at = now
        self._actions: list[Action] = []
        self._counters = EngineStats()
        self._failure: Failed | None = None
        self._seq = 0
        self._momentum = 0
        self._to_receive = 0
        self._wait_until: float | None = None
        self._expected: tuple[int, ...] = ()
        self._last_activity = now  # the last request, or the last block since it (stall time starts there)
        self._queue: deque[tuple[float, float, DataBlock]] = deque()  # (arrived, handled at, block)
        self._busy_until = now
        self._since_status = 0

    # ------------------------------------------------------------------------------------------ public view

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def failure(self) -> Failed | None:
        return self._failure

    @property
    def total_blocks(self) -> int:
        return self._total

    @property
    def blocks_have(self) -> int:
        return self._have_count

    def has_block(self, index: int) -> bool:
        return 0 <= index < self._total and bool(self._have[index])

    def received_bitmap(self) -> bytes:
        out = bytearray(-(-self._total // 8))
        for i, have in enumerate(self._have):
            if have:
                out[i >> 3] |= 1 << (i & 7)
        return bytes(out)

    @property
    def stats(self) -> EngineStats:
        stats = self._counters.copy()
        stats.timeout = self.settings.request_wait
        return stats

    @property
    def momentum(self) -> int:
        """Requests since the last new block (the library's requestMomentum)."""
        return self._momentum

    def next_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def get_timer(self) -> float | None:
        if self._state is EngineState.IDLE:
            return self._created_at
        if self._state.terminal:
            return None
        times = [t for t in (self._wait_until, self._queue[0][1] if self._queue else None) if t is not None]
        return min(times) if times else self._now + self.settings.request_wait  # never without a timer

    # ----------------------------------------------------------------------------------------------- inputs

    def start(self, now: float) -> None:
        self._enter(EngineInput.START, now, {EngineState.IDLE})
        self._begin()

    def receive_block(self, block: DataBlock, now: float) -> None:
        self._enter(EngineInput.RECEIVE_BLOCK, now, None)
        if self._state is not EngineState.RUNNING:
            self._counters.stale_blocks += 1
            return
        if self.settings.block_process <= 0:
            self._ingest(block, now)
            return
        buffers = self.settings.data_buffers
        if buffers is not None and len(self._queue) >= buffers:
            return  # no free buffer: the block is dropped and shows as lost when the wait expires
        handled = max(now, self._busy_until) + self.settings.block_process
        self._busy_until = handled
        self._queue.append((now, handled, block))

    def receive_rejection(self, rejection: Rejection, now: float) -> None:
        self._enter(EngineInput.RECEIVE_REJECTION, now, None)
        rejections = self._counters.rejections
        rejections[rejection.code] = rejections.get(rejection.code, 0) + 1
        self._counters.ignored_rejections += 1  # the library does not read `rejected`

    def handle_timer(self, now: float) -> None:
        self._enter(EngineInput.TIMER, now, None)
        if self._state is EngineState.IDLE:
            if now >= self._created_at:
                self._begin()
            return
        while self._state is EngineState.RUNNING:
            handled = self._queue[0][1] if self._queue else None
            wait = self._wait_until
            if wait is not None and wait <= now and (handled is None or wait < self._queue[0][0]):
                self._expired(wait)  # no block that came before the expiry is still waiting to be handled
            elif handled is not None and handled <= now:
                _, at, block = self._queue.popleft()
                self._ingest(block, at)
            else:
                return

    def restart(self, file_size: int, stream_version: int | None, now: float) -> None:
        # A library profile never emits Redescribe, so nothing asks it to restart.
        raise EngineStateError(EngineInput.RESTART, self._state)

    def cancel(self, message: str, now: float) -> None:
        self._enter(EngineInput.CANCEL, now, {EngineState.IDLE, EngineState.RUNNING})
        self._fail(FailureReason.CANCELLED, None, message)

    def request_sent(self, seq: int, now: float) -> None:
        """Ignored: the libraries start their request timer when they hand the request to MQTT."""
        self._enter(EngineInput.REQUEST_SENT, now, None)

    def link_resumed(self, now: float) -> None:
        """Ignored: the libraries notice nothing and wait for their request timer."""
        self._enter(EngineInput.LINK_RESUMED, now, None)

    # ------------------------------------------------------------------------------------- subclass hooks

    def _request(self) -> PlannedRequest:
        raise NotImplementedError

    def _counts(self, index: int, new: bool) -> bool:
        """Whether this valid block counts one down towards the next request (the OTA agent: every one)."""
        return True

    def _stored(self, index: int) -> None:
        """A new block was stored (rustot slides its window here)."""

    # ---------------------------------------------------------------------------------------------- rules

    def _enter(self, engine_input: EngineInput, now: float, allowed: set[EngineState] | None) -> None:
        if allowed is not None and self._state not in allowed:
            raise EngineStateError(engine_input, self._state)
        if self._state is EngineState.IDLE and allowed is None and engine_input is not EngineInput.TIMER:
            raise EngineStateError(engine_input, self._state)
        if now < self._now:
            raise EngineUsageError(
                f"time went backwards ({now} after {self._now})", hint="pass a monotonic clock such as loop.time()"
            )
        self._now = now

    def _begin(self) -> None:
        self._state = EngineState.RUNNING
        if self._have_count == self._total:
            self._complete()
            return
        self._send(self._now)

    def _send(self, at: float) -> None:
        """The library's requestDataHandler: restart the wait, then request, or abort once momentum is spent."""
        if self._have_count == self._total:
            return
        s = self.settings
        self._wait_until = at + s.request_wait
        if self._momentum >= s.momentum:
            self._counters.aborts += 1
            self._fail(
                FailureReason.TIMEOUT,
                "MomentumAbort",
                f"{s.kind.value} aborted the download: {self._momentum} requests in a row brought no new block "
                f"(momentum limit {s.momentum}, {s.request_wait:g} s each)",
            )
            return
        planned = self._request()
        self._momentum += 1
        self._seq += 1
        self._to_receive = planned.batch
        self._expected = planned.blocks
        self._last_activity = at
        counters = self._counters
        counters.requests_sent += 1
        counters.blocks_requested += len(planned.blocks)
        self._actions.append(SendRequest(request=planned.request, seq=self._seq))

    def _expired(self, at: float) -> None:
        counters = self._counters
        counters.timeouts += 1
        counters.stalls += 1
        counters.stall_s += max(0.0, at - self._last_activity)
        missing = [i for i in self._expected if not self._have[i]]
        counters.lost_blocks += len(missing)
        tail = self._expected[-2:]
        if len(tail) == 2 and not any(self._have[i] for i in tail):
            # The answer's last two blocks or more never came: the service stopped sending (a publish-quota
            # discard cuts an answer's tail); a random loss of both is unlikely.
            counters.cut_answers += 1
        counters.re_requests += 1
        self._wait_until = None
        self._send(at)

    def _ingest(self, block: DataBlock, at: float) -> None:
        counters = self._counters
        index = block.block_index
        if block.file_id != self.file_id:
            counters.invalid_blocks += 1
            return
        size = block_length(self.file_size, self.settings.block_size, index) if 0 <= index < self._total else 0
        if size == 0 or len(block.payload) != size or block.block_length != size:
            counters.invalid_blocks += 1
            if self.bad_block_is_fatal:
                self._fail(
                    FailureReason.REJECTED,
                    "BlockOutOfRange",
                    f"{self.settings.kind.value} rejected the image: block {index} of {len(block.payload)} bytes "
                    f"is outside the file or not {size or 'a valid'} bytes long",
                )
            return
        new = not self._have[index]
        if new:
            self._have[index] = 1
            self._have_count += 1
            counters.blocks_received += 1
            counters.bytes_received += size
            self._actions.append(
                WriteBlock(index=index, offset_bytes=index * self.settings.block_size, payload=block.payload)
            )
            self._momentum = 0
            self._last_activity = at
            self._since_status += 1
            frequency = self.settings.status_frequency
            if frequency is not None and self._since_status >= frequency:
                self._since_status = 0
                counters.status_updates += 1
            if self._have_count == self._total:
                self._complete()
                return
            self._stored(index)
        else:
            counters.duplicates += 1
        if not self._counts(index, new):
            return
        if self._to_receive > 1:
            self._to_receive -= 1
        else:
            self._send(at)

    def _complete(self) -> None:
        self._wait_until = None
        self._queue.clear()
        self._actions.append(Complete())
        self._state = EngineState.COMPLETE

    def _fail(self, reason: FailureReason, code: str | None, message: str) -> None:
        self._wait_until = None
        self._queue.clear()
        self._failure = Failed(reason=reason, code=code, message=message)
        self._actions.append(self._failure)
        self._state = EngineState.FAILED
