"""How the download engine reacts to rejections: back-off, re-describe and restart, failure, tokens."""

from __future__ import annotations

import pytest

from device_sim.engine.machine import (
    Complete,
    DiscardBlocks,
    EngineState,
    EngineUsageError,
    Failed,
    FailureReason,
    Redescribe,
    SendRequest,
    WriteBlock,
    classify_rejection,
)
from device_sim.protocol import Rejection
from tests.support.fakes_service import BS, asked, blk, content_of, make, requests

# -------------------------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("VersionMismatch", "version"),
        ("InternalError", "throttle"),
        ("ThrottlingException", "throttle"),
        ("Throttled", "throttle"),
        ("RequestLimitExceeded", "throttle"),
        ("ServiceUnavailable", "throttle"),
        ("BlockCountLimitExceeded", "fatal"),  # a known code: our request was wrong, waiting will not help
        ("BlockBitmapLimitExceeded", "fatal"),
        ("ResourceNotFound", "fatal"),
        ("ETagMismatch", "fatal"),
        ("Unauthorized", "fatal"),
        ("InvalidRequest", "fatal"),
        ("SomethingNew", "fatal"),
    ],
)
def test_rejection_codes_are_classified(code: str, kind: str) -> None:
    assert classify_rejection(code) == kind


def test_fatal_rejection_fails_with_code_and_message() -> None:
    engine = make(4 * BS)
    engine.start(0.0)
    requests(engine)
    engine.receive_rejection(Rejection(code="ETagMismatch", message="The object changed."), 0.1)
    (failed,) = engine.next_actions()
    assert isinstance(failed, Failed)
    assert failed.reason is FailureReason.REJECTED and failed.code == "ETagMismatch"
    assert "The object changed." in failed.message and "pin the object version" in failed.message
    assert engine.stats.rejections == {"ETagMismatch": 1}


def test_throttling_backs_off_exponentially_up_to_the_cap_then_retries() -> None:
    engine = make(4 * BS, backoff_initial=0.5, backoff_max=3.0, max_retries=50)
    engine.start(0.0)
    first = requests(engine)
    waits = []
    now = 0.0
    for _ in range(5):
        engine.receive_rejection(Rejection(code="InternalError", message="try later"), now)
        assert engine.state is EngineState.BACKOFF
        deadline = engine.get_timer()
        assert deadline is not None
        waits.append(deadline - now)
        engine.handle_timer(deadline)
        now = deadline
        assert engine.state is EngineState.RUNNING
        assert [asked(r) for r in requests(engine)] == [asked(r) for r in first]
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert engine.stats.backoffs == 5 and engine.stats.rejections == {"InternalError": 5}


def test_throttling_counts_towards_the_abort_rule() -> None:
    engine = make(4 * BS, max_retries=2)
    engine.start(0.0)
    now = 0.0
    for _ in range(2):
        engine.receive_rejection(Rejection(code="ThrottlingException"), now)
        now = engine.get_timer()  # type: ignore[assignment]
        engine.handle_timer(now)
    engine.receive_rejection(Rejection(code="ThrottlingException", message="slow down"), now)
    assert engine.failure is not None and engine.failure.reason is FailureReason.THROTTLED
    assert engine.failure.code == "ThrottlingException"


def test_blocks_still_count_while_backing_off() -> None:
    content = content_of(2 * BS)
    engine = make(2 * BS)
    engine.start(0.0)
    engine.receive_rejection(Rejection(code="InternalError"), 0.1)
    engine.receive_block(blk(content, 0), 0.2)
    assert engine.state is EngineState.BACKOFF and engine.has_block(0)
    engine.receive_block(blk(content, 1), 0.3)
    assert engine.state is EngineState.COMPLETE


def test_version_mismatch_asks_for_a_describe_and_restarts_on_the_new_version() -> None:
    old = content_of(6 * BS)
    engine = make(6 * BS, client_token="me")
    engine.start(0.0)
    requests(engine)
    engine.receive_block(blk(old, 0), 0.1)
    engine.receive_rejection(Rejection(client_token="me", code="VersionMismatch", message="v2"), 0.2)
    assert engine.state is EngineState.NEEDS_DESCRIBE
    assert [type(a) for a in engine.next_actions()] == [WriteBlock, Redescribe]
    engine.receive_block(blk(old, 1), 0.25)  # an old-version block in between is not kept
    assert engine.stats.stale_blocks == 1 and not engine.has_block(1)
    engine.restart(4 * BS, 2, 0.3)
    actions = engine.next_actions()
    assert actions[0] == DiscardBlocks(file_size=4 * BS, reason="stream version 1 -> 2")
    (request,) = [a.request for a in actions if isinstance(a, SendRequest)]
    assert request.stream_version == 2 and asked(request) == [0, 1, 2, 3]
    assert engine.blocks_have == 0 and engine.total_blocks == 4 and engine.file_size == 4 * BS


def test_restart_on_the_same_version_keeps_the_blocks() -> None:
    content = content_of(6 * BS)
    engine = make(6 * BS)
    engine.start(0.0)
    engine.receive_block(blk(content, 0), 0.1)
    engine.receive_rejection(Rejection(code="VersionMismatch"), 0.2)
    engine.next_actions()
    engine.restart(6 * BS, 1, 0.3)
    actions = engine.next_actions()
    assert not any(isinstance(a, DiscardBlocks) for a in actions)
    (request,) = [a.request for a in actions if isinstance(a, SendRequest)]
    assert asked(request) == [1, 2, 3, 4, 5]


def test_a_stream_that_keeps_changing_fails_with_version_mismatch() -> None:
    engine = make(4 * BS, max_retries=3)
    engine.start(0.0)
    for version in range(2, 6):
        engine.receive_rejection(Rejection(code="VersionMismatch"), float(version))
        if engine.state is EngineState.FAILED:
            break
        engine.restart(4 * BS, version, float(version))
    assert engine.failure is not None and engine.failure.reason is FailureReason.VERSION_MISMATCH


def test_rejections_for_another_client_token_are_ignored() -> None:
    engine = make(4 * BS, client_token="mine")
    engine.start(0.0)
    requests(engine)
    engine.receive_rejection(Rejection(client_token="theirs", code="ResourceNotFound"), 0.1)
    engine.receive_rejection(Rejection(client_token=None, code="ResourceNotFound"), 0.1)
    assert engine.state is EngineState.RUNNING and engine.next_actions() == []
    assert engine.stats.ignored_rejections == 2 and engine.stats.rejections == {"ResourceNotFound": 2}


def test_without_a_token_every_rejection_counts() -> None:
    engine = make(4 * BS)
    engine.start(0.0)
    engine.receive_rejection(Rejection(client_token="whatever", code="ResourceNotFound"), 0.1)
    assert engine.state is EngineState.FAILED


def test_fatal_rejection_while_waiting_for_the_description_fails() -> None:
    engine = make(4 * BS)
    engine.start(0.0)
    engine.receive_rejection(Rejection(code="VersionMismatch"), 0.1)
    engine.receive_rejection(Rejection(code="VersionMismatch"), 0.1)  # another in-flight request's answer
    assert engine.state is EngineState.NEEDS_DESCRIBE and engine.stats.ignored_rejections == 1
    engine.receive_rejection(Rejection(code="ResourceNotFound", message="stream deleted"), 0.2)
    assert engine.failure is not None and engine.failure.code == "ResourceNotFound"


def test_stats_are_a_copy_the_engine_does_not_share() -> None:
    engine = make(4 * BS)
    engine.start(0.0)
    engine.receive_rejection(Rejection(code="InternalError"), 0.1)
    stats = engine.stats
    stats.timeouts = 3
    stats.rejections["x"] = 1
    assert engine.stats.timeouts == 0 and engine.stats.rejections == {"InternalError": 1}  # the engine's are apart
    engine.receive_rejection(Rejection(code="InternalError"), 0.2)
    assert stats.rejections == {"InternalError": 1, "x": 1}  # a snapshot does not move with the engine
    assert engine.stats.rejections == {"InternalError": 2}


def test_restart_to_an_empty_file_discards_and_completes() -> None:
    engine = make(4 * BS)
    engine.start(0.0)
    engine.receive_rejection(Rejection(code="VersionMismatch"), 0.1)
    engine.next_actions()
    engine.restart(0, 2, 0.2)
    assert engine.next_actions() == [DiscardBlocks(file_size=0, reason="stream version 1 -> 2"), Complete()]


def test_restart_with_an_impossible_size_is_refused_and_changes_nothing() -> None:
    engine = make(4 * BS)
    engine.start(0.0)
    engine.receive_rejection(Rejection(code="VersionMismatch"), 0.1)
    engine.next_actions()
    with pytest.raises(EngineUsageError, match="block size of at least"):
        engine.restart(98306 * BS, 2, 0.2)
    assert engine.state is EngineState.NEEDS_DESCRIBE and engine.next_actions() == []
    assert engine.stream_version == 1 and engine.stats.restarts == 0


def test_redescribe_repeats_every_describe_timeout() -> None:
    engine = make(4 * BS, describe_timeout=2.5)
    engine.start(0.0)
    requests(engine)
    engine.receive_rejection(Rejection(code="VersionMismatch"), 1.0)
    assert engine.next_actions() == [Redescribe()]
    assert engine.get_timer() == 3.5
    engine.handle_timer(3.5)
    assert engine.next_actions() == [Redescribe()] and engine.get_timer() == 6.0
