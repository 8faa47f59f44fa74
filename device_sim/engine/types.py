"""The download engine's vocabulary: settings, states, inputs, actions, statistics and errors.

Everything here is a value (frozen, keyword-only, slotted dataclasses and Enums), except ``EngineCounters``, the
engine's own tally that ``EngineStats`` snapshots. The state machine that uses them is ``device_sim.engine.machine``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from device_sim.protocol.errors import LocalProtocolError
from device_sim.protocol.limits import (
    CONNECTION_BYTES_PER_SECOND,
    MAX_BLOCK_SIZE,
    MAX_CLIENT_TOKEN_BYTES,
    MIN_BLOCK_SIZE,
    max_blocks_per_request,
)
from device_sim.protocol.messages import GetStreamRequest

# --------------------------------------------------------------------------------------------------- errors


class EngineUsageError(LocalProtocolError):
    """The caller used the engine wrongly: bad settings, bad arguments, or time running backwards."""


class EngineStateError(EngineUsageError):
    """An input that the engine's current state does not accept (``input`` and ``state`` say which)."""

    def __init__(self, engine_input: EngineInput, state: EngineState) -> None:
        super().__init__(
            f"{engine_input.value} is not allowed in state {state.name}",
            hint=_STATE_HINTS.get(state, "check engine.state before feeding inputs"),
        )
        self.input = engine_input
        self.state = state


# ---------------------------------------------------------------------------------------------- enums


class EngineState(Enum):
    """Where a download stands. COMPLETE and FAILED are terminal."""

    IDLE = "idle"  # created, start() not called yet
    RUNNING = "running"  # requests in flight
    BACKOFF = "backoff"  # the service throttled us; waiting before asking again
    NEEDS_DESCRIBE = "needs_describe"  # VersionMismatch: waiting for restart() after a new DescribeStream
    COMPLETE = "complete"
    FAILED = "failed"

    # Members are singletons compared by identity, so identity hashing is consistent; Enum's own __hash__ is
    # Python code (hash of the name), and the engine hashes a (state, input) pair for every input it takes.
    __hash__ = object.__hash__

    @property
    def terminal(self) -> bool:
        return self in (EngineState.COMPLETE, EngineState.FAILED)


class EngineInput(Enum):
    """The inputs of the state machine (values are the method names, for error messages)."""

    START = "start"
    RECEIVE_BLOCK = "receive_block"
    RECEIVE_REJECTION = "receive_rejection"
    TIMER = "handle_timer"
    RESTART = "restart"
    CANCEL = "cancel"
    REQUEST_SENT = "request_sent"
    LINK_RESUMED = "link_resumed"

    __hash__ = object.__hash__  # as EngineState's


class FailureReason(Enum):
    """Why a download failed."""

    REJECTED = "rejected"  # the service answered a code that retrying cannot fix (the code is in Failed.code)
    TIMEOUT = "timeout"  # the abort rule: no new block for max_retries timeout rounds
    THROTTLED = "throttled"  # the abort rule was reached while the service kept throttling
    VERSION_MISMATCH = "version_mismatch"  # the stream version kept changing under us
    CANCELLED = "cancelled"  # the caller called cancel()


_STATE_HINTS: Mapping[EngineState, str] = {
    EngineState.IDLE: "call start(now) first",
    EngineState.COMPLETE: "the download is complete; create a new engine for another download",
    EngineState.FAILED: "the download failed; create a new engine to try again",
    EngineState.NEEDS_DESCRIBE: "describe the stream again and call restart(file_size, stream_version, now)",
}

# -------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineSettings:
    """How the engine downloads. Validated on construction (EngineUsageError says what to change).

    ``request_timeout=None`` (the default) is the adaptive idle timeout: it starts at ``initial_timeout``,
    then follows the measured round trip (request sent -> first block of its answer) smoothed like TCP
    (RFC 6298): SRTT + max(4 * RTTVAR, SRTT / 4), kept within ``min_timeout .. max_timeout``, and doubled for
    every round of timeouts without a new block past the first two (up to ``max_timeout``). A number fixes the
    timeout (no adaptation, no doubling). The SRTT/4 slack and the 0.2 s floor keep event-loop jitter and
    AWS's byte pacing from looking like losses; on a 50 ms link a lost block still costs about 0.2 s, not the
    FreeRTOS agent's 10 s. A request times out only once the link is quiet: no data block at all (of any
    request, duplicates included) arrived for the timeout, because answers queue behind earlier answers.

    ``probe``: an idle timeout of a request still waiting for several blocks first asks again for its lowest
    missing block alone (TCP's answer to a retransmission timeout: one segment, RFC 5681 3.1) and keeps waiting
    for the others. If that block's answer comes before theirs, they were lost (one connection answers in order)
    and are asked again at once; if theirs come first, the timeout was only a late answer (a busy service or event
    loop), and it cost one duplicate block instead of a whole request's. A lost request costs one round trip more.

    ``fast_retry``: when the highest block a request asked for arrives while lower ones are missing, those are
    taken for lost (one MQTT connection delivers an answer in order) and asked again after a short grace (a
    quarter of SRTT, two gaps between the request's blocks, at least 20 ms) instead of the idle timeout.

    Abort rule: the download fails after ``max_retries`` consecutive rounds of timeouts, back-offs or
    re-describes without a new block between them. With one request in flight a round is one timed-out
    request, as in the FreeRTOS OTA agent ("32 requests with no block between them"); with k requests in
    flight each timed-out request counts 1/k of a round.
    """

    block_size: int = 4096
    #: None: the maximum, floor(131072 / block_size).
    blocks_per_request: int | None = None
    inflight: int = 1
    request_timeout: float | None = None
    initial_timeout: float = 1.0  # RFC 6298's initial RTO
    min_timeout: float = 0.2
    max_timeout: float = 10.0
    max_retries: int = 32
    send_version: bool = True
    client_token: str | None = None
    #: First wait after a throttling-like rejection; doubles per consecutive one, up to backoff_max.
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    #: After Redescribe, how long to wait for restart() before emitting Redescribe again.
    describe_timeout: float = 5.0
    #: Re-request the missing blocks of a request soon after its highest block arrived (see above).
    fast_retry: bool = True
    #: After an idle timeout, ask again for one block first (see above).
    probe: bool = True
    #: The caller reports every request's departure with request_sent(seq, now): once it left after client-side
    #: flow control, or once its publish failed. A request's idle timer then starts only there (a request never
    #: reported still times out after max(timeout, max_timeout)). False: the timer starts at emission.
    report_sends: bool = False
    #: Bytes per second at which the service may pace one connection's answers (AWS IoT Core's per-connection
    #: throughput quota, 512 KiB/s; the excess is delayed, not dropped). Idle deadlines grow by one block's
    #: worth of it (the longest silence pacing alone causes), so a paced 128 KiB block (250 ms of quota) is not
    #: taken for a lost one. None: no allowance.
    answer_rate: float | None = CONNECTION_BYTES_PER_SECOND

    def __post_init__(self) -> None:
        _check_int("block_size", self.block_size, MIN_BLOCK_SIZE, MAX_BLOCK_SIZE)
        most = max_blocks_per_request(self.block_size)
        if self.blocks_per_request is not None:
            _check_int("blocks_per_request", self.blocks_per_request, 1, most)
        _check_int("inflight", self.inflight, 1, None)
        _check_int("max_retries", self.max_retries, 0, None)
        for flag in ("fast_retry", "probe", "report_sends"):
            if not isinstance(getattr(self, flag), bool):
                raise EngineUsageError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        for name in (
            "initial_timeout",
            "min_timeout",
            "max_timeout",
            "backoff_initial",
            "backoff_max",
            "describe_timeout",
        ):
            _check_positive(name, getattr(self, name))
        if self.request_timeout is not None:
            _check_positive("request_timeout", self.request_timeout)
        if self.answer_rate is not None:
            _check_positive("answer_rate", self.answer_rate)
        if not self.min_timeout <= self.max_timeout:
            raise EngineUsageError(
                f"min_timeout {self.min_timeout} is above max_timeout {self.max_timeout}",
                hint="choose min_timeout <= max_timeout",
            )
        if self.backoff_initial > self.backoff_max:
            raise EngineUsageError(
                f"backoff_initial {self.backoff_initial} is above backoff_max {self.backoff_max}",
                hint="choose backoff_initial <= backoff_max",
            )
        if self.client_token is not None and len(self.client_token.encode()) > MAX_CLIENT_TOKEN_BYTES:
            raise EngineUsageError(
                f"client_token is longer than {MAX_CLIENT_TOKEN_BYTES} bytes",
                hint="AWS answers such a request without echoing the token; use a shorter token",
            )

    @property
    def window(self) -> int:
        """Blocks asked per request: blocks_per_request, or the maximum that fits one answer."""
        if self.blocks_per_request is None:
            return max_blocks_per_request(self.block_size)
        return self.blocks_per_request


def _check_int(name: str, value: int, low: int, high: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise EngineUsageError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise EngineUsageError(f"{name} = {value} is out of range", hint=f"use a value in {allowed}")


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or value == float("inf"):
        raise EngineUsageError(f"{name} must be a positive number of seconds, got {value!r}")


# --------------------------------------------------------------------------------------------- actions


@dataclass(frozen=True, kw_only=True, slots=True)
class SendRequest:
    """Publish this GetStream request on ``get/<fmt>``. ``seq`` numbers the requests of an engine (from 1); pass
    it to ``request_sent(seq, now)`` once the request has actually left (after client-side flow control)."""

    request: GetStreamRequest
    seq: int


@dataclass(frozen=True, kw_only=True, slots=True)
class WriteBlock:
    """Store a new, validated block: ``payload`` goes at byte ``offset_bytes`` of the file."""

    index: int
    offset_bytes: int
    payload: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class DiscardBlocks:
    """Forget every block written so far: the file changed (new stream version or size) after a restart."""

    file_size: int
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Redescribe:
    """Describe the stream again, then call ``restart(file_size, stream_version, now)`` with the answer (or
    ``cancel`` when the file is gone). Emitted again every ``describe_timeout`` seconds until restart() is
    called; a caller whose describe is still under way may ignore the repeats."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Complete:
    """Every block of the file has been written."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Failed:
    """The download gave up. ``code`` is the service's error code when a rejection caused it."""

    reason: FailureReason
    code: str | None
    message: str


Action = SendRequest | WriteBlock | DiscardBlocks | Redescribe | Complete | Failed

# ------------------------------------------------------------------------------------------- statistics


#: The counters of ``EngineStats`` that add up across files and devices (all but the round-trip fields).
COUNTER_FIELDS = (
    "blocks_received",
    "bytes_received",
    "duplicates",
    "invalid_blocks",
    "stale_blocks",
    "requests_sent",
    "re_requests",
    "blocks_requested",
    "timeouts",
    "fast_retries",
    "spurious_fast_retries",
    "spurious_timeouts",
    "resends",
    "backoffs",
    "redescribes",
    "restarts",
    "ignored_rejections",
    "stalls",
    "stall_s",
    "aborts",
    "lost_blocks",
    "cut_answers",
    "status_updates",
)


@dataclass(kw_only=True, slots=True)
class EngineStats:
    """The download counters: the engine's own running counts, and what ``engine.stats`` hands out (a copy).

    The one counter type of a download: a device adds the stats of its files (``add``) and maps the sum into its
    ``DeviceMetrics`` with one function (``device.meters.metrics_counts``).
    """

    blocks_received: int = 0  # new valid blocks written
    bytes_received: int = 0
    duplicates: int = 0  # valid blocks we already had
    invalid_blocks: int = 0  # wrong file id, index outside the file, wrong length: ignored
    stale_blocks: int = 0  # valid new blocks ignored while waiting for a re-describe or after failing
    requests_sent: int = 0
    re_requests: int = 0  # requests that ask again for a block asked before
    blocks_requested: int = 0
    timeouts: int = 0  # requests whose idle timer expired
    fast_retries: int = 0  # requests whose missing blocks were asked again soon after their highest block came
    spurious_fast_retries: int = 0  # ... of which a block then arrived twice (it was late, not lost)
    spurious_timeouts: int = 0  # idle timeouts whose given-up blocks then arrived twice (late, not lost)
    resends: int = 0  # requests sent again at once because the link resumed (link_resumed)
    backoffs: int = 0
    redescribes: int = 0
    restarts: int = 0
    rejections: dict[str, int] = field(default_factory=dict)  # by code, ignored ones included
    ignored_rejections: int = 0  # another client token, or harmless in the current state
    # Device profiles (docs/profiles.md; the default engine leaves them 0):
    stalls: int = 0  # fixed request waits that expired with blocks missing
    stall_s: float = 0.0  # time spent in those waits after the last block came (the time a loss cost)
    aborts: int = 0  # downloads given up by the library's momentum rule
    lost_blocks: int = 0  # blocks an answer should have brought that had not come when the wait expired
    cut_answers: int = 0  # expired waits whose missing blocks were the tail of the answer (a quota discard's mark)
    status_updates: int = 0  # job progress updates the library would have published
    srtt: float | None = None  # smoothed round trip (seconds), None before the first sample
    rttvar: float | None = None
    timeout: float = 0.0  # the idle timeout the engine would use now (seconds)

    def add(self, other: EngineStats) -> None:
        """Add ``other``'s counters to these (the round-trip fields are not summed)."""
        for name in COUNTER_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for code, n in other.rejections.items():
            self.rejections[code] = self.rejections.get(code, 0) + n

    def copy(self) -> EngineStats:
        return replace(self, rejections=dict(self.rejections))
