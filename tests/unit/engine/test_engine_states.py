"""Every (state, input) pair of the download engine, the error for inputs a state refuses, and settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from device_sim.engine.machine import (
    TRANSITIONS,
    Complete,
    DownloadEngine,
    EngineInput,
    EngineSettings,
    EngineState,
    EngineStateError,
    EngineUsageError,
    Failed,
    FailureReason,
    Redescribe,
    SendRequest,
)
from device_sim.protocol import DataBlock, LocalProtocolError, Rejection

S, In = EngineState, EngineInput
FILE_ID = 5
BLOCK = 1024
SIZE = 3 * BLOCK + 100  # four blocks, the last one 100 bytes
CONTENT = bytes(range(256)) * (SIZE // 256) + bytes(SIZE % 256)
VERSION = 3


def block(index: int, content: bytes = CONTENT, file_id: int = FILE_ID) -> DataBlock:
    payload = content[index * BLOCK : (index + 1) * BLOCK]
    return DataBlock(file_id=file_id, block_index=index, block_length=len(payload), payload=payload)


def new_engine(**settings: object) -> DownloadEngine:
    return DownloadEngine(
        file_id=FILE_ID,
        file_size=SIZE,
        stream_version=VERSION,
        now=10.0,
        settings=EngineSettings(block_size=BLOCK, **settings),  # type: ignore[arg-type]
    )


def in_state(state: EngineState) -> DownloadEngine:
    """An engine brought into ``state`` through its public inputs only."""
    engine = new_engine()
    if state is S.IDLE:
        return engine
    engine.start(10.0)
    if state is S.BACKOFF:
        engine.receive_rejection(Rejection(code="InternalError", message="busy"), 10.1)
    elif state is S.NEEDS_DESCRIBE:
        engine.receive_rejection(Rejection(code="VersionMismatch", message="new version"), 10.1)
    elif state is S.COMPLETE:
        for i in range(4):
            engine.receive_block(block(i), 10.1)
    elif state is S.FAILED:
        engine.receive_rejection(Rejection(code="ResourceNotFound", message="gone"), 10.1)
    assert engine.state is state
    engine.next_actions()
    return engine


def due(engine: DownloadEngine) -> float:
    timer = engine.get_timer()
    return timer if timer is not None else 20.0


INPUTS: dict[EngineInput, Callable[[DownloadEngine], None]] = {
    In.START: lambda e: e.start(11.0),
    In.RECEIVE_BLOCK: lambda e: e.receive_block(block(1), 11.0),
    In.RECEIVE_REJECTION: lambda e: e.receive_rejection(Rejection(code="InternalError", message="busy"), 11.0),
    In.TIMER: lambda e: e.handle_timer(due(e)),
    In.RESTART: lambda e: e.restart(SIZE, VERSION, 11.0),
    In.CANCEL: lambda e: e.cancel("the user stopped it", 11.0),
    In.REQUEST_SENT: lambda e: e.request_sent(1, 11.0),
    In.LINK_RESUMED: lambda e: e.link_resumed(11.0),
}

# The specification, written out independently of the engine's own table: the state each input leads to
# from each state (with the arguments in INPUTS), or None when the state must refuse the input.
EXPECTED: dict[EngineState, dict[EngineInput, EngineState | None]] = {
    S.IDLE: {
        In.START: S.RUNNING,
        In.RECEIVE_BLOCK: None,
        In.RECEIVE_REJECTION: None,
        In.TIMER: S.RUNNING,
        In.RESTART: None,
        In.CANCEL: S.FAILED,
        In.REQUEST_SENT: S.IDLE,
        In.LINK_RESUMED: S.IDLE,
    },
    S.RUNNING: {
        In.START: None,
        In.RECEIVE_BLOCK: S.RUNNING,
        In.RECEIVE_REJECTION: S.BACKOFF,
        In.TIMER: S.RUNNING,
        In.RESTART: S.RUNNING,
        In.CANCEL: S.FAILED,
        In.REQUEST_SENT: S.RUNNING,
        In.LINK_RESUMED: S.RUNNING,
    },
    S.BACKOFF: {
        In.START: None,
        In.RECEIVE_BLOCK: S.BACKOFF,
        In.RECEIVE_REJECTION: S.BACKOFF,
        In.TIMER: S.RUNNING,
        In.RESTART: S.RUNNING,
        In.CANCEL: S.FAILED,
        In.REQUEST_SENT: S.BACKOFF,
        In.LINK_RESUMED: S.BACKOFF,
    },
    S.NEEDS_DESCRIBE: {
        In.START: None,
        In.RECEIVE_BLOCK: S.NEEDS_DESCRIBE,
        In.RECEIVE_REJECTION: S.NEEDS_DESCRIBE,
        In.TIMER: S.NEEDS_DESCRIBE,
        In.RESTART: S.RUNNING,
        In.CANCEL: S.FAILED,
        In.REQUEST_SENT: S.NEEDS_DESCRIBE,
        In.LINK_RESUMED: S.NEEDS_DESCRIBE,
    },
    S.COMPLETE: {
        In.START: None,
        In.RECEIVE_BLOCK: S.COMPLETE,
        In.RECEIVE_REJECTION: S.COMPLETE,
        In.TIMER: None,
        In.RESTART: None,
        In.CANCEL: None,
        In.REQUEST_SENT: S.COMPLETE,
        In.LINK_RESUMED: S.COMPLETE,
    },
    S.FAILED: {
        In.START: None,
        In.RECEIVE_BLOCK: S.FAILED,
        In.RECEIVE_REJECTION: S.FAILED,
        In.TIMER: None,
        In.RESTART: None,
        In.CANCEL: None,
        In.REQUEST_SENT: S.FAILED,
        In.LINK_RESUMED: S.FAILED,
    },
}

PAIRS = [(state, engine_input) for state in EngineState for engine_input in EngineInput]


def test_the_specification_covers_every_pair_and_matches_the_engine_table() -> None:
    assert {(s, i) for s, row in EXPECTED.items() for i in row} == set(PAIRS)
    allowed = {(s, i) for s, row in EXPECTED.items() for i, to in row.items() if to is not None}
    assert set(TRANSITIONS) == allowed
    for (state, engine_input), targets in TRANSITIONS.items():
        assert EXPECTED[state][engine_input] in targets


@pytest.mark.parametrize(("state", "engine_input"), PAIRS, ids=[f"{s.name}-{i.name}" for s, i in PAIRS])
def test_every_state_input_pair(state: EngineState, engine_input: EngineInput) -> None:
    engine = in_state(state)
    expected = EXPECTED[state][engine_input]
    if expected is None:
        with pytest.raises(EngineStateError) as caught:
            INPUTS[engine_input](engine)
        assert caught.value.state is state and caught.value.input is engine_input
        assert engine_input.value in str(caught.value) and state.name in str(caught.value)
        assert isinstance(caught.value, LocalProtocolError)
        assert engine.state is state and engine.next_actions() == []
    else:
        INPUTS[engine_input](engine)
        assert engine.state is expected
    # Every non-terminal state has a timer; only terminal states have none.
    assert (engine.get_timer() is None) == engine.state.terminal


def test_refused_input_message_says_what_to_do() -> None:
    engine = new_engine()
    with pytest.raises(EngineStateError, match=r"receive_block is not allowed in state IDLE \(call start"):
        engine.receive_block(block(0), 10.0)


def test_idle_timer_is_due_at_creation_and_starts_the_download() -> None:
    engine = new_engine()
    assert engine.get_timer() == 10.0
    engine.handle_timer(10.0)
    assert engine.state is S.RUNNING
    assert [type(a) for a in engine.next_actions()] == [SendRequest]


def test_idle_engine_with_every_block_completes_on_start_without_requests() -> None:
    engine = DownloadEngine(
        file_id=FILE_ID, file_size=SIZE, stream_version=1, now=0.0, settings=EngineSettings(block_size=BLOCK),
        have={0, 1, 2, 3},
    )  # fmt: skip
    engine.start(0.0)
    assert engine.state is S.COMPLETE
    assert engine.next_actions() == [Complete()]
    assert engine.stats.requests_sent == 0


def test_empty_file_completes_at_once() -> None:
    engine = DownloadEngine(file_id=0, file_size=0, stream_version=1, now=0.0)
    engine.start(0.0)
    assert engine.next_actions() == [Complete()]
    assert engine.received_bitmap() == b""


def test_cancel_fails_with_the_callers_message() -> None:
    engine = in_state(S.RUNNING)
    engine.cancel("file 5 left the stream", 11.0)
    failed = Failed(reason=FailureReason.CANCELLED, code=None, message="file 5 left the stream")
    assert engine.next_actions() == [failed]
    assert engine.failure == failed


def test_late_traffic_after_the_end_changes_nothing() -> None:
    for state in (S.COMPLETE, S.FAILED):
        engine = in_state(state)
        before = engine.stats
        engine.receive_block(block(0), 12.0)
        engine.receive_block(block(0, file_id=9), 12.0)
        engine.receive_rejection(Rejection(code="VersionMismatch"), 12.0)
        assert engine.next_actions() == []
        assert engine.state is state
        after = engine.stats
        assert after.blocks_received == before.blocks_received
        assert after.invalid_blocks == before.invalid_blocks + 1
        assert after.ignored_rejections == before.ignored_rejections + 1


def test_needs_describe_retries_the_description_then_gives_up() -> None:
    engine = in_state(S.NEEDS_DESCRIBE)
    engine.next_actions()
    tries = 0
    while engine.state is S.NEEDS_DESCRIBE:
        engine.handle_timer(due(engine))
        actions = engine.next_actions()
        if engine.state is S.NEEDS_DESCRIBE:
            assert actions == [Redescribe()]
            tries += 1
    assert engine.state is S.FAILED
    assert engine.failure is not None and engine.failure.reason is FailureReason.TIMEOUT
    # The VersionMismatch counted as one round, each re-describe as another: max_retries rounds in all.
    assert tries == EngineSettings().max_retries - 1


def test_time_must_not_go_back() -> None:
    engine = in_state(S.RUNNING)
    with pytest.raises(EngineUsageError, match="time went backwards"):
        engine.receive_block(block(0), 9.0)
    assert engine.state is S.RUNNING and engine.stats.blocks_received == 0


def test_early_timer_is_harmless() -> None:
    for state in (S.RUNNING, S.BACKOFF, S.NEEDS_DESCRIBE):
        engine = in_state(state)
        timer = engine.get_timer()
        assert timer is not None
        engine.handle_timer(timer - 0.001)
        assert engine.state is state and engine.next_actions() == []


# ------------------------------------------------------------------------------------------------ settings


def test_default_settings() -> None:
    s = EngineSettings()
    assert (s.block_size, s.inflight, s.max_retries, s.request_timeout) == (4096, 1, 32, None)
    assert s.window == 32
    assert EngineSettings(block_size=256).window == 512
    assert EngineSettings(block_size=131072).window == 1
    assert EngineSettings(block_size=1000).window == 131
    assert EngineSettings(block_size=1000, blocks_per_request=131).window == 131


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"block_size": 255}, "block_size = 255"),
        ({"block_size": 131073}, "block_size"),
        ({"blocks_per_request": 33}, "blocks_per_request = 33"),
        ({"blocks_per_request": 0}, "blocks_per_request"),
        ({"inflight": 0}, "inflight"),
        ({"max_retries": -1}, "max_retries"),
        ({"block_size": 4096.0}, "must be an integer"),
        ({"inflight": True}, "must be an integer"),
        ({"request_timeout": 0}, "request_timeout"),
        ({"request_timeout": float("nan")}, "request_timeout"),
        ({"min_timeout": -1.0}, "min_timeout"),
        ({"max_timeout": float("inf")}, "max_timeout"),
        ({"min_timeout": 5.0, "max_timeout": 1.0}, "min_timeout 5.0 is above max_timeout"),
        ({"backoff_initial": 9.0, "backoff_max": 1.0}, "backoff_initial"),
        ({"client_token": "x" * 65}, "client_token"),
    ],
)
def test_bad_settings_are_refused_with_a_reason(changes: dict[str, object], words: str) -> None:
    with pytest.raises(EngineUsageError, match=words):
        EngineSettings(**changes)  # type: ignore[arg-type]


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        EngineSettings().inflight = 2  # type: ignore[misc]


def test_bad_engine_arguments() -> None:
    with pytest.raises(EngineUsageError, match="file_id 256"):
        DownloadEngine(file_id=256, file_size=1, stream_version=1, now=0.0)
    with pytest.raises(EngineUsageError, match="non-negative"):
        DownloadEngine(file_id=1, file_size=-1, stream_version=1, now=0.0)
    # 98305 blocks are reachable (offsets 0..98304); one more is not.
    DownloadEngine(file_id=1, file_size=98305 * 256, stream_version=1, now=0.0, settings=EngineSettings(block_size=256))
    with pytest.raises(EngineUsageError, match="block size of at least 257") as caught:
        DownloadEngine(
            file_id=1, file_size=98305 * 256 + 1, stream_version=1, now=0.0, settings=EngineSettings(block_size=256)
        )
    assert "GetStream reaches only 98305" in str(caught.value)
    with pytest.raises(EngineUsageError, match="resume data names block 4"):
        DownloadEngine(
            file_id=1, file_size=SIZE, stream_version=1, now=0.0, settings=EngineSettings(block_size=BLOCK), have={4}
        )
