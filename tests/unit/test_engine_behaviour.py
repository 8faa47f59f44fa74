"""What the download engine asks for, what it accepts, when it re-asks, and how it reacts to rejections."""

from __future__ import annotations

import dataclasses

import pytest

from device_sim.engine import (
    Complete,
    DiscardBlocks,
    DownloadEngine,
    EngineSettings,
    EngineState,
    EngineUsageError,
    Failed,
    FailureReason,
    Redescribe,
    SendRequest,
    WriteBlock,
    classify_rejection,
)
from device_sim.protocol import DataBlock, GetStreamRequest, Rejection, decode_bitmap

BS = 256


def content_of(size: int) -> bytes:
    return bytes((i * 7 + i // 256) % 251 for i in range(size))


def make(size: int, *, now: float = 0.0, version: int | None = 1, have: object = None, **kw: object) -> DownloadEngine:
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


# ------------------------------------------------------------------------------------------------ requests


def test_first_request_names_exactly_the_window() -> None:
    engine = make(100 * BS, blocks_per_request=20, client_token="tok")
    engine.start(0.0)
    (request,) = requests(engine)
    assert request == GetStreamRequest(
        client_token="tok",
        stream_version=1,
        file_id=2,
        block_size=BS,
        offset=0,
        number_of_blocks=20,
        bitmap=b"\xff\xff\x0f",
    )


def test_small_file_bitmap_has_no_bit_past_the_end() -> None:
    engine = make(2 * BS + 1)  # three blocks
    engine.start(0.0)
    (request,) = requests(engine)
    assert (request.offset, request.number_of_blocks, request.bitmap) == (0, 3, b"\x07")


def test_no_version_sent_when_disabled_or_unknown() -> None:
    for engine in (make(BS, send_version=False), make(BS, version=None)):
        engine.start(0.0)
        assert requests(engine)[0].stream_version is None


def test_resume_asks_only_for_missing_blocks() -> None:
    engine = make(10 * BS, have={0, 2, 3, 9})
    engine.start(0.0)
    (request,) = requests(engine)
    assert request.offset == 1
    assert asked(request) == [1, 4, 5, 6, 7, 8]
    assert request.number_of_blocks == 6
    assert engine.blocks_have == 4


def test_resume_from_a_bitmap_round_trips() -> None:
    first = make(20 * BS)
    first.start(0.0)
    content = content_of(20 * BS)
    for i in (0, 5, 13, 19):
        first.receive_block(blk(content, i), 0.1)
    saved = first.received_bitmap()
    assert decode_bitmap(saved) == [0, 5, 13, 19]
    second = make(20 * BS, have=saved)
    assert [i for i in range(20) if second.has_block(i)] == [0, 5, 13, 19]


def test_inflight_requests_never_overlap() -> None:
    engine = make(100 * BS, blocks_per_request=8, inflight=3)
    engine.start(0.0)
    sent = requests(engine)
    assert [asked(r) for r in sent] == [list(range(0, 8)), list(range(8, 16)), list(range(16, 24))]
    assert engine.stats.requests_sent == 3


def test_a_finished_request_is_replaced_at_once() -> None:
    content = content_of(40 * BS)
    engine = make(40 * BS, blocks_per_request=8, inflight=2)
    engine.start(0.0)
    requests(engine)
    for i in range(7):
        engine.receive_block(blk(content, i), 0.1)
    assert requests(engine) == []  # block 7 is still outstanding
    engine.receive_block(blk(content, 7), 0.1)
    (follow_up,) = requests(engine)
    assert asked(follow_up) == list(range(16, 24))


def test_window_respects_the_128_kib_cap_at_every_block_size() -> None:
    for block_size in (256, 1000, 4096, 65536, 131072):
        engine = DownloadEngine(
            file_id=0, file_size=3 * 131072, stream_version=1, now=0.0, settings=EngineSettings(block_size=block_size)
        )
        engine.start(0.0)
        (request,) = [a.request for a in engine.next_actions() if isinstance(a, SendRequest)]
        assert request.number_of_blocks is not None
        assert request.number_of_blocks * block_size <= 131072
        assert request.number_of_blocks == 131072 // block_size


def test_last_reachable_block_of_the_largest_file() -> None:
    total = 98305  # offsets 0..98304
    engine = make(total * BS, have=range(total - 3))
    engine.start(0.0)
    (request,) = requests(engine)
    assert (request.offset, request.bitmap, request.number_of_blocks) == (98302, b"\x07", 3)


# ------------------------------------------------------------------------------------------------- blocks


def test_blocks_out_of_order_are_written_where_they_belong() -> None:
    size = 5 * BS + 17
    content = content_of(size)
    engine = make(size)
    engine.start(0.0)
    requests(engine)
    for i in (5, 2, 0, 4, 1, 3):
        engine.receive_block(blk(content, i), 0.1)
    actions = engine.next_actions()
    writes = [a for a in actions if isinstance(a, WriteBlock)]
    assert [w.index for w in writes] == [5, 2, 0, 4, 1, 3]
    assert all(w.offset_bytes == w.index * BS for w in writes)
    rebuilt = bytearray(size)
    for w in writes:
        rebuilt[w.offset_bytes : w.offset_bytes + len(w.payload)] = w.payload
    assert bytes(rebuilt) == content
    assert actions[-1] == Complete() and engine.state is EngineState.COMPLETE
    assert engine.stats.blocks_received == 6 and engine.stats.bytes_received == size


@pytest.mark.parametrize(
    "changes",
    [
        {"file_id": 3},
        {"block_index": 6},
        {"block_index": -1},
        {"block_length": BS},  # the last block is 17 bytes: a full-size block there is wrong
        {"payload": b"x" * 16, "block_length": 16},
        {"payload": b"x" * 18},  # payload longer than its own length field
    ],
)
def test_invalid_blocks_are_counted_and_ignored(changes: dict[str, object]) -> None:
    size = 5 * BS + 17
    content = content_of(size)
    engine = make(size)
    engine.start(0.0)
    requests(engine)
    bad = blk(content, 5, **changes)
    engine.receive_block(bad, 0.1)
    assert engine.next_actions() == []
    assert engine.stats.invalid_blocks == 1 and engine.stats.blocks_received == 0
    assert not engine.has_block(5)
    engine.receive_block(blk(content, 5), 0.2)
    assert engine.has_block(5)


def test_a_full_length_block_in_the_middle_is_accepted_but_a_short_one_is_not() -> None:
    content = content_of(3 * BS)
    engine = make(3 * BS)
    engine.start(0.0)
    short = blk(content, 1, payload=content[BS : 2 * BS - 1], block_length=BS - 1)
    engine.receive_block(short, 0.1)
    assert engine.stats.invalid_blocks == 1
    engine.receive_block(blk(content, 1), 0.1)
    assert engine.stats.blocks_received == 1


def test_duplicates_are_counted_and_not_written_twice() -> None:
    content = content_of(3 * BS)
    engine = make(3 * BS)
    engine.start(0.0)
    requests(engine)
    engine.receive_block(blk(content, 1), 0.1)
    engine.receive_block(blk(content, 1), 0.1)
    writes = [a for a in engine.next_actions() if isinstance(a, WriteBlock)]
    assert [w.index for w in writes] == [1]
    assert engine.stats.duplicates == 1


# ------------------------------------------------------------------------------------------- timers, retry


def test_timeout_re_requests_only_missing_blocks_and_fills_the_window() -> None:
    content = content_of(40 * BS)
    engine = make(40 * BS, blocks_per_request=8)
    engine.start(0.0)
    requests(engine)
    for i in (0, 1, 3, 4, 6):
        engine.receive_block(blk(content, i), 0.05)
    engine.next_actions()
    deadline = engine.get_timer()
    assert deadline == pytest.approx(0.05 + engine.stats.timeout)
    engine.handle_timer(deadline)  # type: ignore[arg-type]
    (again,) = requests(engine)
    assert asked(again) == [2, 5, 7, 8, 9, 10, 11, 12]
    assert again.offset == 2 and again.number_of_blocks == 8
    stats = engine.stats
    assert (stats.timeouts, stats.re_requests, stats.requests_sent) == (1, 1, 2)


def test_every_block_restarts_the_idle_timer() -> None:
    content = content_of(40 * BS)
    engine = make(40 * BS, blocks_per_request=8, request_timeout=1.0)
    engine.start(0.0)
    for i in range(7):
        now = 0.9 * (i + 1)
        engine.receive_block(blk(content, i), now)
        assert engine.get_timer() == pytest.approx(now + 1.0)
    engine.handle_timer(6.3 + 0.999)
    assert engine.stats.timeouts == 0


def test_abort_rule_after_max_retries_rounds_without_a_block() -> None:
    engine = make(10 * BS, max_retries=3, request_timeout=1.0)
    engine.start(0.0)
    assert len(requests(engine)) == 1
    re_requests = 0
    while engine.state is EngineState.RUNNING:
        engine.handle_timer(engine.get_timer())  # type: ignore[arg-type]
        re_requests += len(requests(engine))
    assert re_requests == 3
    failure = engine.failure
    assert failure is not None and failure.reason is FailureReason.TIMEOUT and failure.code is None
    assert "max_retries" in failure.message
    assert engine.stats.timeouts == 4


@pytest.mark.parametrize(("blocks", "inflight", "per_round"), [(4, 1, 1), (4, 4, 1), (40, 4, 4), (12, 3, 2)])
def test_abort_rule_counts_rounds_whatever_the_number_in_flight(blocks: int, inflight: int, per_round: int) -> None:
    # (4, 4): one small file, one request out of four slots; (12, 3): windows of 8 -> only two requests.
    engine = make(blocks * BS, max_retries=5, request_timeout=1.0, inflight=inflight, blocks_per_request=8)
    engine.start(0.0)
    assert len(requests(engine)) == per_round
    while engine.state is EngineState.RUNNING:
        engine.handle_timer(engine.get_timer())  # type: ignore[arg-type]
        requests(engine)
    assert engine.failure is not None and engine.failure.reason is FailureReason.TIMEOUT
    assert engine.get_timer() is None
    assert engine.stats.timeouts == per_round * 6  # five rounds of re-requests, the sixth round gives up
    assert engine.stats.requests_sent == per_round * 6


def test_one_lost_request_among_several_is_a_fraction_of_a_round() -> None:
    content = content_of(64 * BS)
    engine = make(64 * BS, max_retries=1, request_timeout=1.0, inflight=4, blocks_per_request=4)
    engine.start(0.0)
    requests(engine)
    for i in range(4, 16):  # requests 2-4 are answered; request 1 (blocks 0-3) is lost
        engine.receive_block(blk(content, i), 0.5)
    assert len(requests(engine)) == 3  # their slots are refilled at 0.5, and those answers get lost too
    engine.handle_timer(1.0)  # request 1 times out: a quarter of a round
    assert [asked(r) for r in requests(engine)] == [[0, 1, 2, 3]]
    engine.handle_timer(1.5)  # the three others: one full round in all, which max_retries=1 allows
    assert engine.state is EngineState.RUNNING and len(requests(engine)) == 3
    engine.handle_timer(2.0)  # a second round begins: over the limit
    assert engine.failure is not None and engine.failure.reason is FailureReason.TIMEOUT
    assert engine.stats.timeouts == 5


def test_a_new_block_resets_the_abort_rule() -> None:
    content = content_of(10 * BS)
    engine = make(10 * BS, blocks_per_request=1, max_retries=2, request_timeout=1.0)
    engine.start(0.0)
    for i in range(10):
        for _ in range(2):  # two timeouts per block: one short of giving up
            engine.handle_timer(engine.get_timer())  # type: ignore[arg-type]
        assert engine.state is EngineState.RUNNING
        engine.receive_block(blk(content, i), engine.get_timer() - 0.5)  # type: ignore[operator]
    assert engine.state is EngineState.COMPLETE


def test_adaptive_timeout_follows_the_round_trip_within_bounds() -> None:
    content = content_of(400 * BS)
    engine = make(400 * BS, blocks_per_request=4)
    engine.start(0.0)
    assert engine.stats.timeout == 1.0  # initial, before any sample
    now, i = 0.0, 0
    for rtt in [0.3] * 20:
        for _ in range(4):
            engine.receive_block(blk(content, i), now + rtt)
            i += 1
        now += rtt
    stats = engine.stats
    assert stats.srtt == pytest.approx(0.3, rel=0.01)
    assert stats.timeout == pytest.approx(0.3 + 4 * stats.rttvar, rel=0.01)  # type: ignore[operator]
    assert 0.3 <= stats.timeout < 0.4
    for rtt in [0.001] * 30:  # a very fast link: the lower bound holds
        for _ in range(4):
            engine.receive_block(blk(content, i), now + rtt)
            i += 1
        now += rtt
    assert engine.stats.timeout == 0.1
    for rtt in [30.0] * 3:  # a very slow one: the upper bound holds
        for _ in range(4):
            engine.receive_block(blk(content, i), now + rtt)
            i += 1
        now += rtt
    assert engine.stats.timeout == 10.0


def test_answers_to_re_requests_give_no_round_trip_sample() -> None:
    content = content_of(8 * BS)
    engine = make(8 * BS, blocks_per_request=8)
    engine.start(0.0)
    engine.handle_timer(1.0)  # the first request timed out
    engine.receive_block(blk(content, 0), 1.02)  # might answer the first request: ambiguous
    assert engine.stats.srtt is None


def test_timeouts_double_after_the_grace_rounds_up_to_the_maximum() -> None:
    engine = make(4 * BS, max_retries=20)
    engine.start(0.0)
    waits = []
    last = 0.0
    for _ in range(10):
        deadline = engine.get_timer()
        assert deadline is not None
        waits.append(round(deadline - last, 6))
        last = deadline
        engine.handle_timer(deadline)
    assert waits == [1.0, 1.0, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0]


def test_a_fixed_timeout_never_changes() -> None:
    content = content_of(8 * BS)
    engine = make(8 * BS, request_timeout=3.0, blocks_per_request=1)
    engine.start(0.0)
    engine.receive_block(blk(content, 0), 0.01)
    for _ in range(5):
        engine.handle_timer(engine.get_timer())  # type: ignore[arg-type]
        assert engine.stats.timeout == 3.0


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


def test_stats_snapshot_is_frozen_and_read_only() -> None:
    engine = make(4 * BS)
    engine.start(0.0)
    engine.receive_rejection(Rejection(code="InternalError"), 0.1)
    stats = engine.stats
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.timeouts = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        stats.rejections["x"] = 1  # type: ignore[index]
    engine.receive_rejection(Rejection(code="InternalError"), 0.2)
    assert stats.rejections == {"InternalError": 1}  # a snapshot does not move


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
