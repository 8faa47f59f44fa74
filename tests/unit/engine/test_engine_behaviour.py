"""What the download engine asks for, what it accepts, and when it asks again."""

from __future__ import annotations

import pytest

from device_sim.engine.machine import (
    Complete,
    DownloadEngine,
    EngineSettings,
    EngineState,
    FailureReason,
    SendRequest,
    WriteBlock,
)
from device_sim.protocol import GetStreamRequest, decode_bitmap
from tests.support.fakes_service import BS, asked, blk, content_of, make, requests

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
    # probe=False: every timed-out request is asked again whole (probing: test_engine_probe.py)
    engine = make(64 * BS, max_retries=1, request_timeout=1.0, inflight=4, blocks_per_request=4, probe=False)
    engine.start(0.0)
    requests(engine)
    for i in range(4, 16):  # requests 2-4 are answered; request 1 (blocks 0-3) is lost
        engine.receive_block(blk(content, i), 0.5)
    assert len(requests(engine)) == 3  # their slots are refilled at 0.5, and those answers get lost too
    engine.handle_timer(1.0)  # request 1 is idle since 0, but the link only since 0.5: not yet
    assert requests(engine) == [] and engine.stats.timeouts == 0
    engine.handle_timer(1.5)  # all four time out: a quarter of a round each, one round, which max_retries allows
    assert engine.state is EngineState.RUNNING
    assert sorted(asked(r)[0] for r in requests(engine)) == [0, 4 * 4, 5 * 4, 6 * 4]
    assert engine.stats.timeouts == 4
    engine.handle_timer(2.5)  # a second round: over the limit
    assert engine.failure is not None and engine.failure.reason is FailureReason.TIMEOUT
    assert engine.stats.timeouts == 8


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
    assert stats.rttvar is not None and 4 * stats.rttvar < 0.01  # a steady link: RTTVAR decays towards 0 ...
    assert stats.timeout == pytest.approx(0.3 * 1.25, rel=0.01)  # ... but SRTT/4 of slack stays
    for rtt in [0.001] * 30:  # a very fast link: the lower bound holds
        for _ in range(4):
            engine.receive_block(blk(content, i), now + rtt)
            i += 1
        now += rtt
    assert engine.stats.timeout == 0.2
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
    # No block ever arrived, so there is no round-trip estimate: every expiry doubles the timeout (RFC 6298 5.5);
    # the grace rounds only apply once an estimate exists (see test_engine_recovery).
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0]


def test_a_fixed_timeout_never_changes() -> None:
    content = content_of(8 * BS)
    engine = make(8 * BS, request_timeout=3.0, blocks_per_request=1)
    engine.start(0.0)
    engine.receive_block(blk(content, 0), 0.01)
    for _ in range(5):
        engine.handle_timer(engine.get_timer())  # type: ignore[arg-type]
        assert engine.stats.timeout == 3.0


# ------------------------------------------------------------------------------------------ the hot path


def test_receive_data_stores_new_blocks_without_a_write_action_and_counts_like_receive_block() -> None:
    content = content_of(10 * BS + 17)
    fast, slow = make(len(content), blocks_per_request=4), make(len(content), blocks_per_request=4)
    for engine in (fast, slow):
        engine.start(0.0)
        engine.next_actions()
    stored: list[int] = []
    for t, index in enumerate([0, 2, 2, 1, 3, 99, 4], start=1):
        block = blk(content, index) if index < 11 else blk(content, 3, block_index=99)
        if fast.receive_data(index, block.payload, t * 0.01):
            stored.append(index)
        slow.receive_block(block, t * 0.01)
        fast_actions, slow_actions = fast.next_actions(), slow.next_actions()
        assert not any(isinstance(a, WriteBlock) for a in fast_actions)
        assert [a for a in slow_actions if not isinstance(a, WriteBlock)] == fast_actions
    assert stored == [0, 2, 1, 3, 4]
    assert fast.stats == slow.stats and fast.stats.duplicates == 1 and fast.stats.invalid_blocks == 1
    assert fast.get_timer() == slow.get_timer()


def test_receive_data_outside_running_goes_through_receive_block() -> None:
    content = content_of(3 * BS)
    engine = make(len(content))
    with pytest.raises(Exception, match="receive_block is not allowed in state IDLE"):
        engine.receive_data(0, blk(content, 0).payload, 0.0)
    engine.start(0.0)
    for index in range(3):
        assert engine.receive_data(index, blk(content, index).payload, 0.1)
    assert engine.state is EngineState.COMPLETE
    actions = engine.next_actions()
    assert isinstance(actions[-1], Complete) and not any(isinstance(a, WriteBlock) for a in actions)
    assert not engine.receive_data(1, blk(content, 1).payload, 0.2)  # late: counted, nothing to store
    assert engine.stats.duplicates == 1 and engine.next_actions() == []


def test_the_deadline_epoch_moves_when_a_deadline_may_come_earlier() -> None:
    content = content_of(8 * BS)
    engine = make(len(content), blocks_per_request=4)
    engine.start(0.0)
    epoch = engine.deadline_epoch
    assert engine.receive_data(0, blk(content, 0).payload, 0.05)  # the first block: a round-trip sample
    assert engine.deadline_epoch > epoch
    epoch, deadline = engine.deadline_epoch, engine.get_timer()
    assert engine.receive_data(1, blk(content, 1).payload, 0.06)  # nothing new: the deadline only moves later
    assert engine.deadline_epoch == epoch and engine.get_timer() >= deadline
    assert engine.receive_data(3, blk(content, 3).payload, 0.07)  # the highest, block 2 missing: fast re-request
    assert engine.deadline_epoch > epoch
